"""mmfusion.export: the sentiment model as a checksummed artifact directory, read by mmfusion.predict."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mmcore.artifact import ArtifactError
from mmfusion.export import export_checkpoint as export_sentiment
from mmfusion.predict import main as predict_main
from mmfusion.predict import predict_semantics

ROOT = Path(__file__).resolve().parents[2]



@pytest.fixture(scope="module")
def sentiment_checkpoint(tiny_sentiment_run) -> Path:
    return tiny_sentiment_run / "best.safetensors"


def test_mmfusion_export_feeds_predict(sentiment_checkpoint, tiny_synthmosi, tmp_path, monkeypatch):
    artifact = export_sentiment(sentiment_checkpoint, tmp_path / "sentiment")
    assert sorted(p.name for p in artifact.iterdir()) == ["config.json", "manifest.json", "norm.json", "weights.safetensors"]
    expected = predict_semantics(sentiment_checkpoint, tiny_synthmosi, ["test"])
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("artifact loading must not call torch.load"))
    got = predict_semantics(artifact, tiny_synthmosi, ["test"])
    assert list(got["ids"]) == list(expected["ids"])
    np.testing.assert_allclose(got["sentiment"], expected["sentiment"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(got["embedding"], expected["embedding"], rtol=0, atol=1e-6)
    assert predict_main(["--checkpoint", str(artifact), "--data", str(tiny_synthmosi), "--splits", "test",
                         "--out", str(tmp_path / "sem.npz")]) == 0
    data = bytearray((artifact / "weights.safetensors").read_bytes())
    data[-3] ^= 0x01
    (artifact / "weights.safetensors").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"weights\.safetensors: sha256"):
        predict_semantics(artifact, tiny_synthmosi, ["test"])
    assert predict_main(["--checkpoint", str(artifact), "--data", str(tiny_synthmosi), "--out", str(tmp_path / "x.npz")]) == 2
