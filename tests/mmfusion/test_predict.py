"""mmfusion.predict: per-clip semantics from a tiny trained checkpoint, file formats, CLI, errors."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mmfusion.checkpoint import load_sentiment_checkpoint, save_sentiment_checkpoint
from mmfusion.data.mmsa import load_mmsa
from mmfusion.evaluate import load_model, predict
from mmfusion.predict import main, predict_semantics, write_semantics

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "synthmosi_tiny.yaml"


@pytest.fixture(scope="module")
def tiny_data(tiny_synthmosi) -> Path:
    return tiny_synthmosi


@pytest.fixture(scope="module")
def checkpoint(tiny_sentiment_run) -> Path:
    return tiny_sentiment_run / "best.safetensors"


def test_outputs_match_evaluate_predict(checkpoint, tiny_data):
    sem = predict_semantics(checkpoint, tiny_data, ["valid", "test"], batch_size=7)
    model, norm, _ = load_model(checkpoint)
    data = load_mmsa(tiny_data)
    reference = [predict(model, data.splits[s], norm) for s in ("valid", "test")]
    assert list(sem["tasks"]) == ["M", "T", "A", "V"]
    assert list(sem["ids"]) == [i for r in reference for i in r.ids]
    assert list(sem["split"]) == ["valid"] * 32 + ["test"] * 32
    for j, task in enumerate(sem["tasks"]):
        expected = np.concatenate([r.outputs[task] for r in reference])
        np.testing.assert_allclose(sem["sentiment"][:, j], expected, rtol=1e-5, atol=1e-5)
    assert sem["embedding"].shape == (64, 2 * model.cfg.d_model) and sem["embedding"].dtype == np.float32
    # the embedding is the fused representation F_M that the M head reads (eq. 16-17)
    with torch.inference_mode():
        m_from_embedding = model.heads.heads["M"](torch.from_numpy(sem["embedding"])).numpy()
    np.testing.assert_allclose(m_from_embedding, sem["sentiment"][:, 0], rtol=1e-5, atol=1e-5)


def test_npz_and_csv_round_trip(checkpoint, tiny_data, tmp_path):
    sem = predict_semantics(checkpoint, tiny_data, ["test"])
    write_semantics(sem, tmp_path / "sem.npz")
    with np.load(tmp_path / "sem.npz", allow_pickle=False) as saved:  # no pickled objects inside
        assert set(saved.files) == {"ids", "split", "tasks", "sentiment", "embedding"}
        for key in saved.files:
            np.testing.assert_array_equal(saved[key], sem[key])
    write_semantics(sem, tmp_path / "sem.csv")
    frame = pd.read_csv(tmp_path / "sem.csv")
    d = sem["embedding"].shape[1]
    assert list(frame.columns) == ["id", "split", "M", "T", "A", "V", *(f"emb_{j}" for j in range(d))]
    assert frame["id"].tolist() == sem["ids"].tolist()
    np.testing.assert_allclose(frame[["M", "T", "A", "V"]].to_numpy(), sem["sentiment"], rtol=1e-5, atol=1e-6)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left behind
    with pytest.raises(ValueError, match=r"sem\.json: unknown output format '\.json'"):
        write_semantics(sem, tmp_path / "sem.json")
    duplicated = {**sem, "ids": np.array(["a", "a", *sem["ids"][2:]])}
    with pytest.raises(ValueError, match="clip id 'a' occurs 2 times"):
        write_semantics(duplicated, tmp_path / "dup.npz")


def test_single_task_model_writes_only_m(checkpoint, tiny_data, tmp_path):
    state = load_sentiment_checkpoint(checkpoint)
    state.meta["config"]["model"]["use_slgm"] = False
    weights = {k: v for k, v in state.group("model").items() if not k.startswith(("heads.heads.T", "heads.heads.A", "heads.heads.V"))}
    save_sentiment_checkpoint(tmp_path / "m_only.safetensors", state.meta, weights)
    sem = predict_semantics(tmp_path / "m_only.safetensors", tiny_data, ["test"])
    assert list(sem["tasks"]) == ["M"] and sem["sentiment"].shape == (32, 1)
    full = predict_semantics(checkpoint, tiny_data, ["test"])
    np.testing.assert_allclose(sem["sentiment"][:, 0], full["sentiment"][:, 0], rtol=1e-6, atol=1e-6)


def test_cli(checkpoint, tiny_data, tmp_path, capsys):
    out = tmp_path / "semantics.npz"
    assert main(["--checkpoint", str(checkpoint), "--data", str(tiny_data), "--splits", "train", "test",
                 "--out", str(out), "--log-level", "WARNING"]) == 0
    assert "128 clips, tasks M/T/A/V" in capsys.readouterr().out
    with np.load(out) as saved:
        assert saved["ids"].shape == (128,) and set(saved["split"]) == {"train", "test"}
    with pytest.raises(SystemExit) as exit_:
        main(["--checkpoint", str(checkpoint), "--data", str(tiny_data), "--splits", "dev",
              "--out", str(tmp_path / "x.npz"), "--log-level", "CRITICAL"])
    assert exit_.value.code == 2
    assert not (tmp_path / "x.npz").exists()


def test_errors_name_the_problem(checkpoint, tiny_data, tmp_path):
    with pytest.raises(ValueError, match=r"splits \['dev'\]: expected a non-empty subset"):
        predict_semantics(checkpoint, tiny_data, ["dev"])
    with open(tiny_data, "rb") as handle:
        raw = pickle.load(handle)
    narrow = {s: {**raw[s], "audio": raw[s]["audio"][:, :, :4]} for s in raw}
    with open(tmp_path / "narrow.pkl", "wb") as handle:
        pickle.dump(narrow, handle)
    with pytest.raises(ValueError, match="narrow.pkl: audio_dim is 4 but the checkpoint was trained with 5"):
        predict_semantics(checkpoint, tmp_path / "narrow.pkl", ["test"])
    no_text = {s: {k: v for k, v in raw[s].items() if k != "text"} for s in raw}
    with open(tmp_path / "no_text.pkl", "wb") as handle:
        pickle.dump(no_text, handle)
    with pytest.raises(ValueError, match="no_text.pkl: key 'text' is missing"):
        predict_semantics(checkpoint, tmp_path / "no_text.pkl", ["test"])


def test_a_bad_output_format_is_refused_before_any_inference(checkpoint, tiny_data, tmp_path, monkeypatch, caplog):
    import mmfusion.predict as predict_module

    monkeypatch.setattr(predict_module, "predict_semantics", lambda *a, **k: pytest.fail("inference ran first"))
    assert main(["--checkpoint", str(checkpoint), "--data", str(tiny_data), "--out", str(tmp_path / "x.json")]) == 2
    assert "x.json: unknown output format '.json'" in caplog.text
