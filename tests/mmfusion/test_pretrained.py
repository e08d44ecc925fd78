"""The sentiment model's Python API: from_pretrained / predict (arrays, file) / save_pretrained."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from mmcore.artifact import ArtifactError
from mmfusion import SentimentModel
from mmfusion.data.mmsa import MMSAFormatError
from mmfusion.predict import predict_semantics


def test_run_directory_checkpoint_and_artifact_predict_alike(tiny_sentiment_run, tiny_synthmosi, tmp_path):
    from_run = SentimentModel.from_pretrained(tiny_sentiment_run).predict_file(tiny_synthmosi, ["test"])
    from_file = SentimentModel.from_pretrained(tiny_sentiment_run / "best.safetensors").predict_file(tiny_synthmosi, ["test"])
    artifact = SentimentModel.from_pretrained(tiny_sentiment_run).save_pretrained(tmp_path / "artifact")
    from_artifact = SentimentModel.from_pretrained(artifact).predict_file(tiny_synthmosi, ["test"])
    assert list(from_run["tasks"]) == ["M", "T", "A", "V"] and from_run["sentiment"].shape == (32, 4)
    for other in (from_file, from_artifact):
        assert list(other["ids"]) == list(from_run["ids"])
        np.testing.assert_allclose(other["sentiment"], from_run["sentiment"], rtol=0, atol=1e-6)
        np.testing.assert_allclose(other["embedding"], from_run["embedding"], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(predict_semantics(tiny_sentiment_run, tiny_synthmosi, ["test"])["sentiment"],
                                  from_run["sentiment"])
    again = SentimentModel.from_pretrained(artifact)  # an artifact saved from an artifact is the same model
    resaved = SentimentModel.from_pretrained(again.save_pretrained(tmp_path / "again"))
    np.testing.assert_allclose(resaved.predict_file(tiny_synthmosi, ["test"])["sentiment"], from_run["sentiment"],
                               rtol=0, atol=1e-6)
    assert resaved.meta["valid_metrics"] == again.meta["valid_metrics"] is not None  # the metrics travel along
    with pytest.raises(FileExistsError, match="exists and is not empty"):
        again.save_pretrained(artifact)


def test_predict_from_arrays_equals_the_file(tiny_sentiment_run, tiny_synthmosi):
    model = SentimentModel.from_pretrained(tiny_sentiment_run)
    with open(tiny_synthmosi, "rb") as handle:
        test = pickle.load(handle)["test"]
    keys = ("text_bert", "text", "audio", "vision", "audio_lengths", "vision_lengths")
    arrays = {key: test[key][:5] for key in keys}
    got = model.predict(arrays)
    expected = model.predict_file(tiny_synthmosi, ["test"])
    assert list(got["ids"]) == [f"clip_{i}" for i in range(5)] and list(got["split"]) == ["clips"] * 5
    np.testing.assert_allclose(got["sentiment"], expected["sentiment"][:5], rtol=0, atol=1e-5)
    # text features are computed from the token ids when a model that reads them is given only ids
    without_features = model.predict({key: arrays[key] for key in keys if key != "text"})
    np.testing.assert_allclose(without_features["sentiment"], got["sentiment"], rtol=0, atol=1e-4)


def test_bad_arrays_are_named(tiny_sentiment_run, tiny_synthmosi):
    model = SentimentModel.from_pretrained(tiny_sentiment_run)
    with open(tiny_synthmosi, "rb") as handle:
        test = pickle.load(handle)["test"]
    arrays = {key: test[key][:2].copy() for key in ("text_bert", "text", "audio", "vision", "audio_lengths", "vision_lengths")}
    with pytest.raises(ValueError, match="predict: audio_dim is 4 but the model was trained with 5"):
        model.predict({**arrays, "audio": arrays["audio"][:, :, :4]})
    ids = arrays["text_bert"].copy()
    ids[1, 0, 1] = 10**6
    with pytest.raises(MMSAFormatError, match=r"key 'text_bert': sample 1: expected token ids .* in \[0, 30522\)"):
        model.predict({key: value for key, value in {**arrays, "text_bert": ids}.items() if key != "text"})
    with pytest.raises(ValueError, match=r"splits \['dev'\]: expected a non-empty subset"):
        model.predict_file(tiny_synthmosi, ["dev"])


def test_a_damaged_artifact_is_refused(tiny_sentiment_run, tmp_path):
    artifact = SentimentModel.from_pretrained(tiny_sentiment_run).save_pretrained(tmp_path / "artifact")
    weights = artifact / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"weights\.safetensors: sha256"):
        SentimentModel.from_pretrained(artifact)
