"""Video semantics from a trained checkpoint: per-clip sentiment outputs and the fused embedding.

For every clip of the chosen splits of an MMSA pickle, ``predict_semantics`` runs the model of a
checkpoint (rebuilt with ``mmfusion.evaluate.load_model``, the training normalisation applied) or
of an exported artifact directory (``mmfusion.export``: safetensors weights, no pickle)
in eval mode under ``torch.inference_mode`` and keeps

- ``sentiment`` (N, n_tasks): the head outputs, columns in ``tasks`` order -- ``M`` (the
  multimodal sentiment, eq. 16-17) always, then ``T``, ``A``, ``V`` for multi-task models;
- ``embedding`` (N, 2 d_model): the fused representation ``F_M = [h_sm ; h_uff]`` that feeds
  the M head (``ModelOutput.features["M"]``).

``write_semantics`` stores them keyed by clip id, atomically (temp file, then rename):

- ``.npz`` (no pickle): arrays ``ids`` (N,) str, ``split`` (N,) str, ``tasks`` (n_tasks,) str,
  ``sentiment``, ``embedding``. The ranking model reads it directly as ``vector`` fields
  (``xdeepfm.features``: ``{kind: vector, path: semantics.npz, key_column: video_id,
  array: sentiment}``, or ``array: embedding``);
- ``.csv`` / ``.parquet``: one row per clip, columns ``id, split, M[, T, A, V], emb_0 ...``;
- ``.jsonl``: one JSON object per line and clip, ``{"id", "split", "sentiment": {task: value},
  "embedding": [...]}``, and with ``--explain`` its ``explanation`` (``mmfusion.explain``: the
  modalities' soft-mapping shares, the words and time segments the attention weighted most, the
  M/T/A/V outputs of that pass). ``--explain`` needs a ``.jsonl`` output, checked before inference.

Usage::

    mmfusion predict --checkpoint runs/synthmosi --data clips.pkl --splits train valid test --out semantics.npz
    mmfusion predict --checkpoint runs/synthmosi --data clips.pkl --splits test --out semantics.jsonl --explain
"""

from __future__ import annotations

import argparse
import io
import json
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from mmcore.files import atomic_write
from mmcore.runtime import command_main
from mmfusion.data.mmsa import SPLITS
from mmfusion.pretrained import SentimentModel

log = logging.getLogger(__name__)

FORMATS = (".npz", ".csv", ".parquet", ".jsonl")
EXPLAIN_FORMATS = (".jsonl",)


def predict_semantics(
    checkpoint: str | Path,
    data_path: str | Path,
    splits: Sequence[str] = SPLITS,
    batch_size: int = 128,
) -> dict[str, np.ndarray]:
    """Sentiment outputs and fused embeddings of every clip of ``splits``, in file order.

    ``checkpoint``: a run directory, a checkpoint file or an exported artifact directory. Returns
    ``{"ids": (N,) str, "split": (N,) str, "tasks": (n_tasks,) str, "sentiment": (N, n_tasks)
    float32, "embedding": (N, 2 d_model) float32}`` (``SentimentModel.predict_file``).
    """
    semantics = SentimentModel.from_pretrained(checkpoint).predict_file(data_path, list(splits), batch_size)
    log.info("%s: semantics of %d clips (%s) from %s", data_path, len(semantics["ids"]), ", ".join(splits), checkpoint)
    return semantics


def semantics_frame(semantics: dict[str, np.ndarray]) -> pd.DataFrame:
    """One row per clip: ``id, split``, one column per task, then ``emb_0 .. emb_{D-1}``."""
    frame = pd.DataFrame({"id": semantics["ids"], "split": semantics["split"]})
    tasks = pd.DataFrame(semantics["sentiment"], columns=[str(t) for t in semantics["tasks"]])
    emb = semantics["embedding"]
    embedding = pd.DataFrame(emb, columns=[f"emb_{j}" for j in range(emb.shape[1])])
    return pd.concat([frame, tasks, embedding], axis=1)


def semantics_records(semantics: dict[str, np.ndarray], explanations: list[dict] | None = None) -> list[dict]:
    """One JSON-ready dict per clip: ``id, split, sentiment {task: value}, embedding`` (+ ``explanation``)."""
    if explanations is not None and [e["id"] for e in explanations] != [str(i) for i in semantics["ids"]]:
        raise ValueError("explanations and semantics cover different clips (or another order)")
    tasks = [str(t) for t in semantics["tasks"]]
    records = []
    for i, clip in enumerate(semantics["ids"]):
        record = {"id": str(clip), "split": str(semantics["split"][i]),
                  "sentiment": {t: float(v) for t, v in zip(tasks, semantics["sentiment"][i])},
                  "embedding": [float(v) for v in semantics["embedding"][i]]}
        if explanations is not None:
            record["explanation"] = {k: v for k, v in explanations[i].items() if k not in ("id", "split")}
        records.append(record)
    return records


def write_semantics(semantics: dict[str, np.ndarray], path: str | Path, explanations: list[dict] | None = None) -> None:
    """Write to ``.npz`` (arrays as returned), ``.csv``, ``.parquet`` or ``.jsonl``, atomically;
    ``explanations`` (``SentimentModel.explain_file``, same clips and order) go into ``.jsonl`` only."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(f"{path}: unknown output format {suffix!r}; expected one of {list(FORMATS)}")
    if len(np.unique(semantics["ids"])) != len(semantics["ids"]):
        values, counts = np.unique(semantics["ids"], return_counts=True)
        raise ValueError(f"{path}: clip id {str(values[counts > 1][0])!r} occurs {counts.max()} times; ids must be unique")
    if explanations is not None and suffix not in EXPLAIN_FORMATS:
        raise ValueError(f"{path}: explanations are written to {' or '.join(EXPLAIN_FORMATS)}, not {suffix!r}")
    if suffix == ".jsonl":
        def write(tmp: str) -> None:
            Path(tmp).write_text("".join(json.dumps(r) + "\n" for r in semantics_records(semantics, explanations)))
    elif suffix == ".npz":
        def write(tmp: str) -> None:
            with open(tmp, "wb") as handle:  # a file object: np.savez would append ".npz" to a name
                np.savez(handle, **semantics)
    elif suffix == ".csv":
        def write(tmp: str) -> None:
            buffer = io.StringIO()
            semantics_frame(semantics).to_csv(buffer, index=False, float_format="%.7g")
            Path(tmp).write_text(buffer.getvalue())
    else:
        def write(tmp: str) -> None:
            semantics_frame(semantics).to_parquet(tmp, index=False)  # needs pyarrow or fastparquet
    atomic_write(path, write)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, type=Path,
                        help="a run directory (its best checkpoint), a checkpoint file, or an exported artifact directory")
    parser.add_argument("--data", required=True, type=Path, help="MMSA pickle of the clips")
    parser.add_argument("--splits", nargs="+", default=list(SPLITS), choices=list(SPLITS),
                        help="splits to predict (default: train valid test)")
    parser.add_argument("--out", required=True, type=Path, help="semantics.npz | .csv | .parquet | .jsonl")
    parser.add_argument("--batch-size", type=int, default=128, help="clips per forward pass (default 128)")
    parser.add_argument("--explain", action="store_true",
                        help="add an explanation per clip (modality shares, words, time segments; needs a .jsonl --out)")


def run(args: argparse.Namespace) -> int:
    check_output(args.out, args.explain)  # before any inference
    explanations = None
    if args.explain:
        model = SentimentModel.from_pretrained(args.checkpoint)
        semantics = model.predict_file(args.data, list(args.splits), args.batch_size)
        explanations = model.explain_file(args.data, list(args.splits), batch_size=args.batch_size)
        log.info("%s: semantics and explanations of %d clips from %s", args.data, len(semantics["ids"]), args.checkpoint)
    else:
        semantics = predict_semantics(args.checkpoint, args.data, args.splits, args.batch_size)
    write_semantics(semantics, args.out, explanations)
    n, d = semantics["embedding"].shape
    print(f"wrote {args.out}: {n} clips, tasks {'/'.join(semantics['tasks'])}, embedding dim {d}")
    return 0


def check_output(path: Path, explain: bool = False) -> None:
    """Refuse an output path ``write_semantics`` cannot write (with explanations: not a .jsonl), before any work."""
    if path.suffix.lower() not in FORMATS:
        raise ValueError(f"{path}: unknown output format {path.suffix.lower()!r}; expected one of {list(FORMATS)}")
    if explain and path.suffix.lower() not in EXPLAIN_FORMATS:
        raise ValueError(f"{path}: --explain writes {' or '.join(EXPLAIN_FORMATS)} (one JSON object per clip), "
                         f"not {path.suffix.lower()!r}")
    if path.is_dir():
        raise ValueError(f"{path}: is a directory, expected a file")


def main(argv: list[str] | None = None) -> int:
    return command_main("python -m mmfusion.predict", "Write per-clip video semantics (M/T/A/V outputs, fused embedding).",
                        add_arguments, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
