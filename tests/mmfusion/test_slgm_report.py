"""The SLGM report: relative distances by hand, and the figures on a hand-built SLGM state."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmfusion.checkpoint import save_sentiment_checkpoint
from mmfusion.data.synthetic import generate, write_pickle
from mmfusion.slgm_report import format_report, main, relative_distance, slgm_report

META = {"config": {}, "data_dims": {}, "norm": None, "epoch": 1}  # a run's config without slgm_distance


def save_last(run, slgm=None):
    save_sentiment_checkpoint(run / "last.safetensors", META, {}, {"slgm": slgm} if slgm else None)


def test_relative_distance_known_values():
    features = np.array([[0.0, 0.0], [2.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    labels = np.array([1.0, -1.0, 0.0, 1.0])
    alpha, separation = relative_distance(features, labels)
    # C_p = (0, 1), C_n = (2, 0); sample 0: d_p = 1, d_n = 2 -> alpha = 1
    assert alpha[0] == pytest.approx(1.0)
    # sample 1 sits on C_n: d_p = sqrt(5), d_n = 0 -> alpha = -1
    assert alpha[1] == pytest.approx(-1.0)
    d_p = np.array([1.0, np.sqrt(5), np.sqrt(2), 1.0])
    assert separation == pytest.approx(np.sqrt(5) / d_p.mean())


def test_report_on_a_known_state(tmp_path):
    data = generate("tiny", seed=3)
    path = tmp_path / "tiny.pkl"
    write_pickle(data, path)
    train = data["train"]
    y_m = torch.tensor(train["regression_labels"], dtype=torch.float32)
    rng = np.random.default_rng(0)
    slgm = {"labels_M": y_m, "features_M": torch.tensor(np.c_[train["regression_labels"], rng.normal(size=(len(y_m), 3))])}
    for task in ("T", "A", "V"):
        truth = train[f"regression_labels_{task}"]
        slgm[f"labels_{task}"] = torch.tensor(truth)  # perfect labels
        slgm[f"features_{task}"] = torch.tensor(np.c_[truth, 0.01 * rng.normal(size=(len(truth), 2))])
    run = tmp_path / "run"
    run.mkdir()
    save_last(run, slgm)

    report = slgm_report(run, path)
    assert list(report) == ["T", "A", "V"]
    for task, row in report.items():
        truth = train[f"regression_labels_{task}"].astype(np.float64)
        assert row["generated"] == pytest.approx(1.0)
        assert row["copied"] == pytest.approx(np.corrcoef(train["regression_labels"], truth)[0, 1])
        assert row["probe"] > 0.99  # the representation is the truth plus tiny noise
    assert report["T"]["inputs"] is None and -1.0 <= report["A"]["inputs"] <= 1.0
    assert "| A | 1.000 |" in format_report(report, run, path)

    assert main(["--checkpoint", str(run), "--data", str(path), "--out", str(tmp_path / "r.md")]) == 0
    assert (tmp_path / "r.md").read_text().startswith("SLGM labels of")

    # The run's config has no slgm_distance (a checkpoint from before the option): the ratio. The
    # same features read with the centre-line distance: alpha is linear in the first coordinate,
    # which is the truth plus nothing else, so it correlates (almost) perfectly; the ratio does not.
    axis = slgm_report(run, path, distance="axis")
    for task in ("T", "A", "V"):
        assert axis[task]["corr_alpha_s"] > 0.99
        assert report[task]["corr_alpha_s"] < axis[task]["corr_alpha_s"] - 0.01
        assert axis[task]["generated"] == report[task]["generated"]  # the stored labels are what they are
    assert main(["--checkpoint", str(run), "--data", str(path), "--distance", "axis", "--out", str(tmp_path / "a.md")]) == 0
    assert "alpha with distance='axis'" in (tmp_path / "a.md").read_text().splitlines()[0]
    with pytest.raises(ValueError, match="distance='cosine', expected 'ratio' or 'axis'"):
        slgm_report(run, path, distance="cosine")

    slgm["labels_M"] = y_m + 1.0
    save_last(run, slgm)
    with pytest.raises(ValueError, match="do not match the train split"):
        slgm_report(run, path)
    save_last(run)
    with pytest.raises(ValueError, match="has no SLGM state"):
        slgm_report(run, path)
