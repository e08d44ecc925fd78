"""Export the multimodal sentiment model as an artifact directory (``python -m mmfusion.export``)::

    DIR/config.json         {"model": the complete mmfusion.model.SentimentModelConfig, "data_dims": ..., "training_config": ...}
    DIR/norm.json           the train-split normalisation statistics (NormStats.to_dict), or null
    DIR/weights.safetensors the model's state dict
    DIR/manifest.json       (``mmcore.artifact``: format, versions, metrics, every file's sha256)

``load_model_artifact`` rebuilds the model from it without the trainer; ``python -m mmfusion.predict
--checkpoint DIR`` accepts such a directory in place of a training checkpoint. (The ranking model's
export is ``xdeepfm.export``.)

Usage::

    python -m mmfusion.export --checkpoint runs/default/best.safetensors --out artifacts/sentiment
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from mmcore.artifact import (
    MANIFEST,
    WEIGHTS,
    ArtifactError,
    export_manifest,
    json_bytes,
    library_versions,
    read_json,
    read_manifest,
    read_weights,
    state_dict_bytes,
    write_artifact,
)
from mmcore.config import ConfigError, build, to_dict
from mmcore.loop import checkpoint_file
from mmcore.runtime import setup_logging
from mmfusion.data.mmsa import NormStats
from mmfusion.evaluate import load_model
from mmfusion.model import MultimodalSentimentModel, SentimentModelConfig

log = logging.getLogger(__name__)

MMFUSION_FORMAT = "mmfusion-artifact-v1"
CONFIG, NORM = "config.json", "norm.json"


def export_checkpoint(checkpoint: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """Export an mmfusion training checkpoint (or a run directory's best) as an artifact directory."""
    checkpoint = checkpoint_file(checkpoint)
    model, norm, meta = load_model(checkpoint, device="cpu")  # validates the checkpoint by rebuilding its model
    return export_model(model, norm, meta, out, overwrite=overwrite, source=checkpoint)


def export_model(model: MultimodalSentimentModel, norm: NormStats | None, meta: dict, out: str | Path, *,
                 overwrite: bool = False, source: Path | None = None) -> Path:
    """Write a loaded model (``meta``: its checkpoint's or artifact's config, data_dims and metrics) as an artifact."""
    weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    files = {
        CONFIG: json_bytes({"model": to_dict(model.cfg), "data_dims": meta["data_dims"],
                            "training_config": meta.get("config"), "extraction": meta.get("extraction")}),
        NORM: json_bytes(norm.to_dict() if norm is not None else None),
        WEIGHTS: state_dict_bytes(weights),
    }
    metrics = {"epoch": meta.get("epoch"), "valid": meta.get("valid_metrics")}
    manifest = export_manifest(MMFUSION_FORMAT, source, metrics,
                               library_versions(("torch", "numpy", "safetensors", "transformers")), tasks=list(model.tasks))
    write_artifact(out, files, manifest, overwrite)
    log.info("exported %s to %s", source or "the model", out)
    return Path(out)


def load_model_artifact(directory: str | Path):
    """(model in eval mode, NormStats or None, {"config", "data_dims", "norm"}) from an artifact directory."""
    directory = Path(directory)
    read_manifest(directory, MMFUSION_FORMAT, (CONFIG, NORM, WEIGHTS))
    config = read_json(directory, CONFIG)
    try:
        cfg = build(SentimentModelConfig, config["model"], where=f"{directory / CONFIG}:model")
        dims = config["data_dims"]
    except (ConfigError, KeyError, TypeError) as exc:
        raise ArtifactError(f"{directory / CONFIG}: {exc}") from None
    norm_dict = read_json(directory, NORM)
    try:
        norm = NormStats.from_dict(norm_dict) if norm_dict else None
    except (ValueError, TypeError) as exc:
        raise ArtifactError(f"{directory / NORM}: {exc}") from None
    model = MultimodalSentimentModel(cfg)
    try:
        model.load_state_dict(read_weights(directory))
    except RuntimeError as exc:
        raise ArtifactError(f"{directory / WEIGHTS}: does not fit the model of {CONFIG} ({exc})") from None
    model.eval()
    manifest = read_json(directory, MANIFEST)
    metrics = manifest.get("metrics") if isinstance(manifest.get("metrics"), dict) else {}
    return model, norm, {"config": config.get("training_config"), "data_dims": dims, "norm": norm_dict,
                         "extraction": config.get("extraction"),
                         "epoch": metrics.get("epoch"), "valid_metrics": metrics.get("valid")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mmfusion.export",
                                     description="Export a trained mmfusion checkpoint as a self-contained artifact directory.")
    parser.add_argument("--checkpoint", required=True, type=Path, help="a run directory, or its best.safetensors")
    parser.add_argument("--out", required=True, type=Path, help="artifact directory to create")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing non-empty --out")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    try:
        export_checkpoint(args.checkpoint, args.out, args.overwrite)
    except (FileNotFoundError, FileExistsError, ValueError, KeyError) as exc:
        log.error("%s", exc)
        return 2
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
