"""Artifact export: export -> load -> score equals the trained model; tampered or incomplete artifacts are refused."""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from mmcore.artifact import MANIFEST, ArtifactError
from mmcore.config import build
from tests.serving_factory import records, tiny_ranking
from xdeepfm.checkpoint import load_ranking_checkpoint
from xdeepfm.export import FILES, build_model, export_checkpoint, load_artifact
from xdeepfm.model import RankerConfig, stack_inputs
from xdeepfm.serving import ScoringEngine
from xdeepfm.train import predict

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny():
    return tiny_ranking()


def trained_scores(checkpoint: Path, frame) -> np.ndarray:
    """The trained model's probabilities, straight from the training checkpoint."""
    ckpt = load_ranking_checkpoint(checkpoint)
    model = build_model(ckpt.features, build(RankerConfig, ckpt.config["model"]))
    model.load_state_dict(ckpt.model_state)
    return predict(model, torch.from_numpy(stack_inputs(ckpt.features.transform(frame), model.columns)))


def test_export_load_score_equals_trained_model(tiny, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the serving path must not unpickle")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    engine = ScoringEngine.load(tiny.artifact, text_cache_dir=tiny.text_cache)
    result = engine.score(records(tiny.frame))
    monkeypatch.undo()
    expected = trained_scores(tiny.checkpoint, tiny.frame)
    assert result.scores.shape == (len(tiny.frame),) and result.unknown == {}
    np.testing.assert_allclose(result.scores, expected, rtol=0, atol=1e-6)
    assert expected.std() > 0.01  # a trained model, not a constant


def test_artifact_files_and_manifest(tiny):
    files = sorted(p.name for p in tiny.artifact.iterdir())
    assert files == sorted([*FILES, MANIFEST])
    manifest = json.loads((tiny.artifact / MANIFEST).read_text())
    assert manifest["format"] == "xdeepfm-artifact-v1"
    assert set(manifest["files"]) == set(FILES)
    for name, entry in manifest["files"].items():
        data = (tiny.artifact / name).read_bytes()
        assert entry == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    assert manifest["metrics"] == {"valid": {"auc": 0.5}, "best_epoch": 3}
    assert manifest["source"]["sha256"] == hashlib.sha256(tiny.checkpoint.read_bytes()).hexdigest()
    assert {"python", "torch", "numpy", "safetensors", "deepctr-torch"} <= set(manifest["versions"])
    info = json.loads((tiny.artifact / "model.json").read_text())
    assert info["item_field"] == "item_id" and info["model"]["embedding_dim"] == 4
    assert [i["kind"] for i in info["inputs"]] == ["categorical"] * 3 + ["multi_valued", "numeric", "numeric", "text", "vector"]
    features = json.loads((tiny.artifact / "features.json").read_text())
    assert features["fitted"]["item_id"]["vocabulary"][:2] == ["i1", "i10"]
    loaded = load_artifact(tiny.artifact, tiny.text_cache)
    assert loaded.pipeline.vector_tables["semantics"][1].shape == (30, 3)  # from the artifact, not sem.npz


def _copy(tiny, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny.artifact, tmp_path / "artifact"))


@pytest.mark.parametrize("damage, message", [
    ("flip weights", r"weights\.safetensors: sha256 .* does not match manifest\.json .*corrupted or was modified"),
    ("truncate features", r"features\.json: \d+ bytes but manifest\.json lists \d+: the file is truncated"),
    ("delete model", r"model\.json: missing \(listed in manifest\.json\); the artifact is incomplete"),
    ("delete manifest", r"manifest\.json: missing; .* is not a complete artifact"),
    ("garble manifest", r"manifest\.json: not valid JSON"),
    ("unlist weights", r"weights\.safetensors: not listed in .*manifest\.json; the artifact is incomplete"),
])
def test_damaged_artifact_is_refused_naming_the_file(tiny, tmp_path, damage, message):
    artifact = _copy(tiny, tmp_path)
    if damage == "flip weights":
        data = bytearray((artifact / "weights.safetensors").read_bytes())
        data[-5] ^= 0x01  # one bit of one weight
        (artifact / "weights.safetensors").write_bytes(bytes(data))
    elif damage == "truncate features":
        (artifact / "features.json").write_bytes((artifact / "features.json").read_bytes()[:-10])
    elif damage == "delete model":
        (artifact / "model.json").unlink()
    elif damage == "delete manifest":
        (artifact / MANIFEST).unlink()
    elif damage == "garble manifest":
        (artifact / MANIFEST).write_text("{not json")
    else:
        manifest = json.loads((artifact / MANIFEST).read_text())
        del manifest["files"]["weights.safetensors"]
        (artifact / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=message):
        load_artifact(artifact, tiny.text_cache)


def test_export_refuses_to_overwrite_unless_asked(tiny, tmp_path):
    out = tmp_path / "art"
    export_checkpoint(tiny.checkpoint, out)
    before = (out / MANIFEST).read_text()
    with pytest.raises(FileExistsError, match="exists and is not empty"):
        export_checkpoint(tiny.checkpoint, out)
    export_checkpoint(tiny.checkpoint, out, item_field="user_id", overwrite=True)
    assert json.loads((out / "model.json").read_text())["item_field"] == "user_id"
    assert (out / MANIFEST).read_text() != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]  # no temp directories left behind
    with pytest.raises(ValueError, match="--item-field 'sku': not an input column"):
        export_checkpoint(tiny.checkpoint, tmp_path / "other", item_field="sku")


def test_export_command_line(tiny, tmp_path, capsys):
    from xdeepfm.cli import main

    assert main(["export", "--checkpoint", str(tiny.checkpoint), "--out", str(tmp_path / "a")]) == 0
    assert "wrote" in capsys.readouterr().out
    load_artifact(tmp_path / "a", tiny.text_cache)
    assert main(["export", "--checkpoint", str(tmp_path / "missing.safetensors"), "--out", str(tmp_path / "b")]) == 2
    assert not (tmp_path / "b").exists()
