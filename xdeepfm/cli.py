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

from mmcore.runtime import setup_logging
from xdeepfm.export import export_checkpoint
from xdeepfm.server import serve

log = logging.getLogger("xdeepfm")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: expected an integer >= 1")
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
    serve.add_argument("--artifact", required=True, type=Path, help="directory written by `xdeepfm export`")
    serve.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--max-candidates", type=_positive, default=1000,
                       help="candidates per /v1/rank and rows per /v1/score request (default 1000)")
    serve.add_argument("--max-body-bytes", type=_positive, default=2_000_000, help="request body limit (default 2 MB)")
    serve.add_argument("--text-cache", type=Path, help="text-vector cache directory (default: the feature spec's)")
    serve.add_argument("--threads", type=_positive, help="torch intra-op threads (default: torch's choice)")
    serve.add_argument("--log-level", default="INFO")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level.upper())
    try:
        if args.command == "export":
            export_checkpoint(args.checkpoint, args.out, args.item_field, args.overwrite)
            print(f"wrote {args.out}")
        else:
            serve(args.artifact, args.host, args.port, args.max_candidates, args.max_body_bytes, args.text_cache,
                  args.threads, args.log_level)
    except (FileNotFoundError, FileExistsError, ValueError, KeyError) as exc:  # ArtifactError is a ValueError
        log.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
