"""The ``xdeepfm`` command: ``export`` a trained ranking model as an artifact directory, ``serve`` one over HTTP.

    python -m xdeepfm export --checkpoint runs/ml100k/best.safetensors --out artifacts/ranker
    python -m xdeepfm serve --artifact artifacts/ranker --host 127.0.0.1 --port 8000

``--checkpoint`` is a ranking checkpoint or a run directory (its ``best.safetensors``), exported by
``xdeepfm.export``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import pandas as pd

from mmcore.runtime import setup_logging
from xdeepfm.app import Limits
from xdeepfm.catalog import build_store, default_store_path
from xdeepfm.data import load_splits
from xdeepfm.experiment import load_experiment
from xdeepfm.export import export_checkpoint
from xdeepfm.recall_eval import load_recall_experiment
from xdeepfm.recommend import build_recommender, default_recommender_path
from xdeepfm.server import serve
from xdeepfm.serving import ScoringEngine

log = logging.getLogger("xdeepfm")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: expected an integer >= 1")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value}: expected an integer >= 0")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text}: expected a number of seconds > 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xdeepfm", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    export = commands.add_parser("export", help="write a self-contained artifact directory from a checkpoint")
    export.add_argument("--checkpoint", required=True, type=Path,
                        help="a ranking run's best.safetensors, or the run directory")
    export.add_argument("--out", required=True, type=Path, help="artifact directory to create")
    export.add_argument("--item-field", help="ranking: the input column that identifies an item in /v1/rank "
                                             "responses (default: item_id or video_id when present)")
    export.add_argument("--overwrite", action="store_true", help="replace an existing non-empty --out")
    export.add_argument("--log-level", default="INFO")

    serve = commands.add_parser("serve", help="serve a ranking artifact over HTTP (FastAPI + uvicorn)")
    add_serve_arguments(serve)
    serve.add_argument("--log-level", default="INFO")
    return parser


def add_serve_arguments(serve: argparse.ArgumentParser) -> None:
    """The service's options (``python -m xdeepfm serve`` and ``mmfusion serve``)."""
    serve.add_argument("--artifact", required=True, type=Path, help="directory written by `xdeepfm export`")
    serve.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    serve.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    serve.add_argument("--max-candidates", type=_positive, default=1000,
                       help="candidates per /v1/rank and rows per /v1/score request (default 1000)")
    serve.add_argument("--max-body-bytes", type=_positive, default=2_000_000, help="request body limit (default 2 MB)")
    serve.add_argument("--text-cache", type=Path, help="text-vector cache directory (default: the feature spec's)")
    serve.add_argument("--threads", type=_positive, default=1,
                       help="torch intra-op threads per process (default 1: the scoring and encoding threads leave a core "
                            "to the server)")
    serve.add_argument("--processes", type=_positive, default=1,
                       help="server processes sharing the port (default 1; e.g. one per core: each loads the artifact)")
    serve.add_argument("--store", type=Path,
                       help="the item/user store (SQLite) for ranking by id and POST /v1/items "
                            "(default: <artifact>.store.sqlite when it exists)")
    serve.add_argument("--recommender", type=Path,
                       help="the recall stage of POST /v1/recommend, written by `mmfusion recommender` "
                            "(default: <artifact>.recall when it exists and a store is served)")
    serve.add_argument("--ingest", action="store_true",
                       help="accept POST /v1/items (writes to the store); without it the service is read-only")
    d = Limits()
    limits = serve.add_argument_group("limits", "per-request and per-connection bounds (docs/security.md, 'HTTP service')")
    limits.add_argument("--workers", type=_positive, default=d.workers,
                        help=f"scoring threads (default {d.workers})")
    limits.add_argument("--queue", type=_count, default=d.queue,
                        help=f"requests that may wait for a scoring thread; beyond them 503 + Retry-After (default {d.queue})")
    limits.add_argument("--encode-queue", type=_count, default=d.encode_queue,
                        help=f"requests that may wait for the text-encoding thread (default {d.encode_queue})")
    limits.add_argument("--request-timeout", type=_seconds, default=d.request_timeout_s,
                        help=f"seconds from a request's body to its answer; past it 504 (default {d.request_timeout_s:g})")
    limits.add_argument("--body-timeout", type=_seconds, default=d.body_timeout_s,
                        help=f"seconds for a request's body to arrive; past it 408 (default {d.body_timeout_s:g})")
    limits.add_argument("--header-timeout", type=_seconds, default=d.header_timeout_s,
                        help=f"seconds for a connection to send a complete request head; past it closed "
                             f"(default {d.header_timeout_s:g})")
    limits.add_argument("--keep-alive", type=_seconds, default=d.keep_alive_s,
                        help=f"seconds an idle keep-alive connection stays open (default {d.keep_alive_s:g})")
    limits.add_argument("--max-connections", type=_positive, default=d.max_connections,
                        help=f"open connections / requests in progress; beyond them 503 (default {d.max_connections})")
    limits.add_argument("--text-lru", type=_count, default=d.text_lru,
                        help=f"request-time text vectors kept in memory per text field (default {d.text_lru}; "
                             "about entries x (hidden x 4 + 400) bytes)")


def add_store_arguments(p: argparse.ArgumentParser) -> None:
    """``mmfusion store``: build the item/user store of an exported ranker from its training data."""
    p.add_argument("--artifact", required=True, type=Path, help="the exported ranker (`mmfusion export`)")
    p.add_argument("--config", required=True, type=Path,
                   help="the ranking YAML the ranker was trained with: its data section gives every item and user")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a key of --config (repeatable)")
    p.add_argument("--out", type=Path, help="the store file to create (default: <artifact>.store.sqlite)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store file")
    p.add_argument("--text-cache", type=Path, help="text-vector cache directory (default: the ranker's)")


def run_store(args: argparse.Namespace) -> int:
    out = args.out or default_store_path(args.artifact)
    if out.exists() and not args.overwrite:
        raise FileExistsError(f"{out}: exists (pass --overwrite to rebuild it)")
    cfg = load_experiment(args.config, args.set)
    engine = ScoringEngine.load(args.artifact, args.text_cache)
    splits = load_splits(cfg.data)
    frame = pd.concat(list(splits.values()), ignore_index=True)
    store = build_store(engine, frame, out, overwrite=args.overwrite, history=cfg.history)
    layout = store.layout
    print(f"wrote {out}: {store.count('item')} items ({', '.join(layout.item.columns)}), {store.count('user')} users "
          f"({', '.join(layout.user.columns)})" + (f"; per-request context: {', '.join(layout.context)}" if layout.context else ""))
    return 0


def add_recommender_arguments(p: argparse.ArgumentParser) -> None:
    """``mmfusion recommender``: fit the recall channels of an exported ranker's recommender."""
    p.add_argument("--artifact", required=True, type=Path, help="the exported ranker (`mmfusion export`): its fitted "
                                                                "feature pipeline encodes the two-tower model's fields")
    p.add_argument("--config", required=True, type=Path,
                   help="a recall YAML (configs/recall_*.yaml): data, channels, two_tower, merge")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a key of --config (repeatable)")
    p.add_argument("--out", type=Path, help="the recommender directory (default: <artifact>.recall)")
    p.add_argument("--seed", type=int, default=0, help="the two-tower model's seed (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")


def run_recommender(args: argparse.Namespace) -> int:
    out = args.out or default_recommender_path(args.artifact)
    if out.exists() and not args.overwrite:
        raise FileExistsError(f"{out}: exists (pass --overwrite to rebuild it)")
    cfg = load_recall_experiment(args.config, args.set)
    engine = ScoringEngine.load(args.artifact)
    recommender = build_recommender(cfg, engine.artifact.pipeline, load_splits(cfg.data), out, seed=args.seed)
    print(f"wrote {out}: channels {', '.join(recommender.channels)}; {recommender.merge.n} candidates, quotas "
          f"{recommender.merge.quotas}")
    return 0


def run_serve(args: argparse.Namespace, ingestor=None) -> int:
    """Serve until interrupted (the options of :func:`add_serve_arguments`); ``ingestor``: see ``xdeepfm.server.serve``."""
    limits = Limits(max_candidates=args.max_candidates, max_body_bytes=args.max_body_bytes, workers=args.workers,
                    queue=args.queue, encode_queue=args.encode_queue, request_timeout_s=args.request_timeout,
                    body_timeout_s=args.body_timeout, header_timeout_s=args.header_timeout,
                    keep_alive_s=args.keep_alive, max_connections=args.max_connections, text_lru=args.text_lru)
    store = args.store
    if store is None and default_store_path(args.artifact).is_file():
        store = default_store_path(args.artifact)
    elif store is not None and not Path(store).is_file():
        raise FileNotFoundError(f"--store {store}: no such file (build one with `mmfusion store`)")
    recommender = args.recommender
    if recommender is None and store is not None and default_recommender_path(args.artifact).is_dir():
        recommender = default_recommender_path(args.artifact)
    serve(args.artifact, args.host, args.port, args.max_candidates, args.max_body_bytes, args.text_cache,
          args.threads, args.log_level, limits=limits, store=store, ingestor=ingestor, processes=args.processes,
          writable=args.ingest, recommender=recommender)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level.upper())
    try:
        if args.command == "export":
            export_checkpoint(args.checkpoint, args.out, args.item_field, args.overwrite)
            print(f"wrote {args.out}")
        else:
            return run_serve(args)
    except (FileNotFoundError, FileExistsError, ValueError, KeyError) as exc:  # ArtifactError is a ValueError
        log.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
