"""Exported artifacts: a self-contained directory per trained model, verified file by file on load.

An artifact directory holds JSON (configs, statistics, vocabularies), weights as safetensors and
``manifest.json``: the format name, when and from what it was exported, the library versions,
the training metrics and the SHA-256 and size of every other file. ``write_artifact`` builds the
directory under a temp name beside the target and renames it into place, so a reader never sees
half an artifact; ``read_manifest`` refuses a missing, truncated or modified file with a message
that names it. Nothing in an artifact is pickled, and loading one never calls ``torch.load``.

This module also exports the multimodal sentiment model (``python -m mmfusion.export``)::

    DIR/config.json         {"model": the complete mmfusion.model.ModelConfig, "data_dims": ..., "training_config": ...}
    DIR/norm.json           the train-split normalisation statistics (NormStats.to_dict), or null
    DIR/weights.safetensors the model's state dict
    DIR/manifest.json

``load_model_artifact`` rebuilds the model from it without the trainer; ``python -m mmfusion.predict
--checkpoint DIR`` accepts such a directory in place of a ``model.pt``. (The ranking model's
export is ``xdeepfm.export``.)

Usage::

    python -m mmfusion.export --checkpoint runs/default/model.pt --out artifacts/sentiment
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import logging
import os
import platform
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable

from mmfusion.files import sha256_file

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
MMFUSION_FORMAT = "mmfusion-artifact-v1"
CONFIG, NORM, WEIGHTS = "config.json", "norm.json", "weights.safetensors"


class ArtifactError(ValueError):
    """An artifact directory is incomplete, corrupted or of another kind (the message names the file)."""


# --------------------------------------------------------------------------------------------
# Artifact directories: write, verify
# --------------------------------------------------------------------------------------------


def library_versions(names: Iterable[str] = ("torch", "numpy", "safetensors")) -> dict[str, str]:
    """Installed versions of ``names`` plus Python and this project (``mmfusion``)."""
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for name in ("mmfusion", *names):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _json_bytes(data: Any) -> bytes:
    return (json.dumps(data, indent=1, default=float) + "\n").encode()


def write_artifact(out: str | Path, files: dict[str, bytes], manifest: dict[str, Any], overwrite: bool = False) -> Path:
    """Write ``files`` and ``manifest.json`` (with every file's sha256 and size) as directory ``out``.

    The directory is built under a temp name beside ``out`` and renamed into place; an existing
    non-empty ``out`` is replaced only with ``overwrite``.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out}: exists and is not empty (pass --overwrite to replace it)")
    bad = [name for name in files if name == MANIFEST or "/" in name or name.startswith(".")]
    if bad:
        raise ValueError(f"artifact file names {bad}: must be plain names other than {MANIFEST}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        entries = {}
        for name, data in files.items():
            (tmp / name).write_bytes(data)
            entries[name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
        (tmp / MANIFEST).write_bytes(_json_bytes({**manifest, "files": entries}))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private (0700)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.replace(out, old / "previous")
            os.replace(tmp, out)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def read_manifest(directory: str | Path, expected_format: str, required: Iterable[str]) -> dict[str, Any]:
    """The manifest of an artifact, after checking every listed file's size and sha256.

    Raises ``FileNotFoundError`` (no such directory) or ``ArtifactError`` naming the bad file.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: artifact directory not found")
    path = directory / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{path}: missing; {directory} is not a complete artifact (the export writes it last)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != expected_format:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise ArtifactError(f"{path}: format {found!r}, expected {expected_format!r}")
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise ArtifactError(f"{path}: 'files' must map file names to their sha256 and size")
    for name in required:
        if name not in files:
            raise ArtifactError(f"{directory / name}: not listed in {path}; the artifact is incomplete")
    for name, entry in files.items():
        file = directory / name
        if "/" in name or name.startswith(".") or not isinstance(entry, dict):
            raise ArtifactError(f"{path}: bad entry for {name!r}")
        if not file.is_file():
            raise ArtifactError(f"{file}: missing (listed in {MANIFEST}); the artifact is incomplete")
        size = file.stat().st_size
        if size != entry.get("bytes"):
            raise ArtifactError(f"{file}: {size} bytes but {MANIFEST} lists {entry.get('bytes')}: "
                                "the file is truncated or was modified")
        digest = sha256_file(file)
        if digest != entry.get("sha256"):
            raise ArtifactError(f"{file}: sha256 {digest[:16]}... does not match {MANIFEST} "
                                f"({str(entry.get('sha256'))[:16]}...): the file is corrupted or was modified")
    return manifest


def read_json(directory: Path, name: str) -> Any:
    """A JSON file of a verified artifact (the error names the file)."""
    path = directory / name
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path}: not valid JSON ({exc})") from None


def read_weights(directory: Path, name: str = WEIGHTS) -> dict:
    """The tensors of a safetensors file of a verified artifact (no pickle)."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = directory / name
    try:
        return load(path.read_bytes())
    except (SafetensorError, ValueError) as exc:
        raise ArtifactError(f"{path}: not a readable safetensors file ({exc})") from None


def state_dict_bytes(state: dict) -> bytes:
    """A state dict as safetensors bytes (each tensor copied: no shared storage, CPU, contiguous)."""
    from safetensors.torch import save

    return save({k: v.detach().cpu().contiguous().clone() for k, v in state.items()})


def export_manifest(fmt: str, source: Path, metrics: Any, versions: dict[str, str], **extra: Any) -> dict[str, Any]:
    """The common manifest fields (``files`` is added by ``write_artifact``)."""
    return {
        "format": fmt,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "source": {"path": str(source), "sha256": sha256_file(source)},
        "versions": versions,
        "metrics": metrics,
        **extra,
    }


# --------------------------------------------------------------------------------------------
# The multimodal sentiment model
# --------------------------------------------------------------------------------------------


def export_checkpoint(checkpoint: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """Export an mmfusion ``model.pt`` (a trusted training checkpoint) as an artifact directory."""
    from mmfusion.config import to_dict
    from mmfusion.evaluate import load_model

    checkpoint = Path(checkpoint)
    model, _, state = load_model(checkpoint)  # validates the checkpoint by rebuilding its model
    files = {
        CONFIG: _json_bytes({"model": to_dict(model.cfg), "data_dims": state["data_dims"], "training_config": state["config"]}),
        NORM: _json_bytes(state.get("norm")),
        WEIGHTS: state_dict_bytes(model.state_dict()),
    }
    metrics = {"epoch": state.get("epoch"), "valid": state.get("valid_metrics")}
    manifest = export_manifest(MMFUSION_FORMAT, checkpoint, metrics, library_versions(("torch", "numpy", "safetensors", "transformers")),
                               tasks=list(model.tasks))
    write_artifact(out, files, manifest, overwrite)
    log.info("exported %s to %s", checkpoint, out)
    return Path(out)


def load_model_artifact(directory: str | Path):
    """(model in eval mode, NormStats or None, {"config", "data_dims", "norm"}) from an artifact directory."""
    from mmfusion.config import ConfigError, build
    from mmfusion.data.mmsa import NormStats
    from mmfusion.model import ModelConfig, MultimodalSentimentModel

    directory = Path(directory)
    read_manifest(directory, MMFUSION_FORMAT, (CONFIG, NORM, WEIGHTS))
    config = read_json(directory, CONFIG)
    try:
        cfg = build(ModelConfig, config["model"], where=f"{directory / CONFIG}:model")
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
    return model, norm, {"config": config.get("training_config"), "data_dims": dims, "norm": norm_dict}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mmfusion.export",
                                     description="Export a trained mmfusion checkpoint as a self-contained artifact directory.")
    parser.add_argument("--checkpoint", required=True, type=Path, help="RUN/model.pt")
    parser.add_argument("--out", required=True, type=Path, help="artifact directory to create")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing non-empty --out")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    from mmfusion.cli import setup_logging

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
