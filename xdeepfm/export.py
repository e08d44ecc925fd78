"""Export a ranking checkpoint as a self-contained artifact directory, and load it for serving.

``xdeepfm export --checkpoint RUN/best.safetensors --out DIR`` writes::

    DIR/model.json            {"model": RankerConfig, "seed", "item_field", "inputs": [{name, kind, column}, ...]}
    DIR/features.json         the fitted FeaturePipeline: feature spec, vocabularies, numeric statistics,
                              text-model identities, vector-field ids (FeaturePipeline.to_payload)
    DIR/features.safetensors  the vector-field tables (e.g. video semantics), float32
    DIR/weights.safetensors   the XDeepFMRanker state dict
    DIR/manifest.json         format, source checkpoint + sha256, library versions, training metrics,
                              sha256 and size of every file above (mmcore.artifact.write_artifact)

``load_artifact`` verifies every checksum first (a missing, truncated or modified file is refused
with its name), then checks that every number the model will compute with is finite (numeric
means, standard deviations > 0, vector tables, every weight tensor: an error names the file and
the field or tensor), then rebuilds the feature pipeline and the model from JSON and safetensors only:
no pickle, no ``torch.load``, no training code and no training data. Text fields still need
their BERT-family encoder at the path the spec names (the bundled MiniLM by default); its
identity (a hash of its weights) must equal the one recorded when the pipeline was fitted.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmcore.artifact import (
    ArtifactError,
    export_manifest,
    library_versions,
    read_json,
    read_manifest,
    read_weights,
    state_dict_bytes,
    write_artifact,
)
from mmcore.config import ConfigError, build, to_dict
from mmcore.loop import checkpoint_file
from xdeepfm.checkpoint import load_ranking_checkpoint
from xdeepfm.features import FeatureError, FeaturePipeline
from xdeepfm.model import RankerConfig, XDeepFMRanker

log = logging.getLogger(__name__)

RANKING_FORMAT = "xdeepfm-artifact-v1"
MODEL_JSON, FEATURES_JSON, FEATURES_ARRAYS, WEIGHTS = "model.json", "features.json", "features.safetensors", "weights.safetensors"
FILES = (MODEL_JSON, FEATURES_JSON, FEATURES_ARRAYS, WEIGHTS)
ITEM_FIELD_GUESSES = ("item_id", "video_id")
VERSIONED = ("torch", "numpy", "pandas", "safetensors", "deepctr-torch", "transformers")


@dataclass
class RankingArtifact:
    """A loaded, verified ranking artifact."""

    directory: Path
    manifest: dict[str, Any]
    info: dict[str, Any]  # model.json
    pipeline: FeaturePipeline
    model: XDeepFMRanker  # eval mode, CPU


def _inputs(pipeline: FeaturePipeline) -> list[dict[str, str]]:
    return [{"name": f.name, "kind": f.kind, "column": f.column} for f in pipeline.spec.fields]


def build_model(pipeline: FeaturePipeline, config: RankerConfig, seed: int = 0) -> XDeepFMRanker:
    """The ranker for a fitted pipeline, in the field order of its spec."""
    return XDeepFMRanker([pipeline.fitted[f.name] for f in pipeline.spec.fields], config, seed=seed)


def export_checkpoint(checkpoint: str | Path, out: str | Path, item_field: str | None = None,
                      overwrite: bool = False) -> Path:
    """Write the artifact of a ranking checkpoint (``best.safetensors``, or a run directory: its best) to directory ``out``."""
    from safetensors.numpy import save

    checkpoint = checkpoint_file(checkpoint)
    ckpt = load_ranking_checkpoint(checkpoint)
    model_dict = ckpt.config.get("model", {})
    config = build(RankerConfig, model_dict, f"{checkpoint}:config.model")
    if config.implementation != "ours":
        raise ValueError(f"{checkpoint}: model.implementation is {config.implementation!r}; only the 'ours' ranker "
                         "(XDeepFMRanker) is exported for serving (the stock deepctr-torch model is a training baseline)")
    pipeline = ckpt.features
    columns = {f.column for f in pipeline.spec.fields}
    if item_field is None:
        item_field = next((c for c in ITEM_FIELD_GUESSES if c in columns), None)
    elif item_field not in columns:
        raise ValueError(f"--item-field {item_field!r}: not an input column of {checkpoint} (columns: {sorted(columns)})")
    seed = int(ckpt.config.get("train", {}).get("seed", 0))
    model = build_model(pipeline, config, seed)
    try:
        model.load_state_dict(ckpt.model_state)
    except RuntimeError as exc:
        raise ValueError(f"{checkpoint}: the weights do not fit the model of its config ({exc})") from None
    meta, arrays = pipeline.to_payload()
    info = {"model": to_dict(config), "seed": seed, "item_field": item_field, "inputs": _inputs(pipeline)}
    files = {
        MODEL_JSON: (json.dumps(info, indent=1) + "\n").encode(),
        FEATURES_JSON: (json.dumps(meta, indent=1) + "\n").encode(),
        FEATURES_ARRAYS: save(arrays or {"_empty": np.zeros(0, np.float32)}),
        WEIGHTS: state_dict_bytes(model.state_dict()),
    }
    manifest = export_manifest(RANKING_FORMAT, checkpoint, ckpt.metrics, library_versions(VERSIONED))
    write_artifact(out, files, manifest, overwrite)
    log.info("exported %s to %s (%d fields, item field %r)", checkpoint, out, len(pipeline.spec.fields), item_field)
    return Path(out)


def _finite_number(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


def _check_statistics(pipeline: FeaturePipeline, features_path: Path, arrays_path: Path) -> None:
    """Numeric means finite, standard deviations finite and > 0, vector tables finite (else ArtifactError)."""
    for spec in pipeline.spec.of_kind("numeric"):
        fit = pipeline.fitted[spec.name]
        if not _finite_number(fit.mean):
            raise ArtifactError(f"{features_path}: numeric field {spec.name!r}: mean is {fit.mean!r}; expected a finite number")
        if not _finite_number(fit.std) or fit.std <= 0:
            raise ArtifactError(f"{features_path}: numeric field {spec.name!r}: std is {fit.std!r}; "
                                "expected a finite number > 0")
    for name, (_, vectors) in pipeline.vector_tables.items():
        bad = ~np.isfinite(vectors)
        if bad.any():
            raise ArtifactError(f"{arrays_path}: tensor '{name}.vectors' (vector field {name!r}) has {int(bad.sum())} "
                                f"non-finite values (first in row {int(np.flatnonzero(bad.any(axis=1))[0])})")


def _check_weights(weights: dict, path: Path) -> None:
    """Every floating-point weight tensor finite (else ArtifactError naming the tensor)."""
    for name, tensor in weights.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            count = int((~torch.isfinite(tensor)).sum())
            raise ArtifactError(f"{path}: tensor {name!r} has {count} non-finite values (NaN or infinity) of {tensor.numel()}")


def load_artifact(directory: str | Path, text_cache_dir: str | Path | None = None) -> RankingArtifact:
    """Verify and load a ranking artifact. ``text_cache_dir`` replaces the spec's text-vector cache."""
    from safetensors import SafetensorError
    from safetensors.numpy import load

    directory = Path(directory)
    manifest = read_manifest(directory, RANKING_FORMAT, FILES)
    info = read_json(directory, MODEL_JSON)
    features_path = directory / FEATURES_JSON
    try:
        arrays = load((directory / FEATURES_ARRAYS).read_bytes())
    except (SafetensorError, ValueError) as exc:
        raise ArtifactError(f"{directory / FEATURES_ARRAYS}: not a readable safetensors file ({exc})") from None
    try:
        pipeline = FeaturePipeline.from_payload(read_json(directory, FEATURES_JSON), arrays, str(features_path))
    except (ConfigError, FeatureError, KeyError, TypeError) as exc:
        raise ArtifactError(f"{features_path}: not a fitted feature pipeline ({exc})") from None
    try:
        config = build(RankerConfig, info["model"], f"{directory / MODEL_JSON}:model")
    except (ConfigError, KeyError, TypeError) as exc:
        raise ArtifactError(f"{directory / MODEL_JSON}: no valid model config ({exc})") from None
    if not pipeline.is_fitted:
        raise ArtifactError(f"{features_path}: the pipeline is not fitted for every field of its spec")
    _check_statistics(pipeline, features_path, directory / FEATURES_ARRAYS)
    if text_cache_dir is not None:
        pipeline.spec.text_cache_dir = str(text_cache_dir)
    for spec in pipeline.spec.of_kind("text"):
        encoder = pipeline.sentence_cache(spec)  # FileNotFoundError names a missing model directory
        if encoder.model_key != pipeline.fitted[spec.name].text_model_key:
            raise ArtifactError(f"{features_path}: text field {spec.name!r} was fitted with text model key "
                                f"{pipeline.fitted[spec.name].text_model_key}, but {encoder.model_path} has key "
                                f"{encoder.model_key}: a different model")
    model = build_model(pipeline, config, int(info.get("seed", 0)))
    weights = read_weights(directory, WEIGHTS)
    _check_weights(weights, directory / WEIGHTS)
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        raise ArtifactError(f"{directory / WEIGHTS}: does not fit the model of {MODEL_JSON} ({exc})") from None
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return RankingArtifact(directory, manifest, info, pipeline, model)

