"""The worlds study: the gap arithmetic on hand numbers, and a tiny 2-world study that runs and resumes."""

import json
import pickle
from pathlib import Path

import pytest
import torch
import yaml

from mmcore.config import ConfigError
from mmfusion import worlds_study
from mmfusion.metrics import METRIC_KEYS
from mmfusion.model import MultimodalSentimentModel
from mmfusion.reference import read_reference_markdown, render_markdown
from mmfusion.worlds_study import gap_recovered
from tests.mmfusion.test_model import make_batch, tiny_cfg

ROOT = Path(__file__).resolve().parents[2]


def write_reference(path: Path, text_ridge: dict, late: dict, oracle: dict) -> None:
    """A reference report as ``python -m mmfusion.reference`` writes it, from hand numbers."""
    rows = {"(a) text-only ridge": text_ridge, "(d) late average": late, "(f) oracle on hidden s_t, s_a, s_v": oracle}
    results = {name: {"metrics": {k: metrics.get(k) for k in METRIC_KEYS}, "choice": "hand"} for name, metrics in rows.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    data = path.with_suffix(".pkl")  # render_markdown reads the world's name from the data file: none here
    data.write_bytes(pickle.dumps({"train": {}, "valid": {}, "test": {}}))
    path.write_text(render_markdown(results, "by hand", str(data), 0))


def write_study(tmp_path: Path, recipe: dict, candidates: dict, worlds: list[str], **extra) -> Path:
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    study = {"task": "worlds_study", "recipe": "recipe.yaml", "candidates": candidates, "worlds": worlds,
             "references": str(tmp_path / "refs" / "{world}.md"), "compute_references": False, **extra}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))  # candidates in the order given
    return path


def test_gap_recovered_on_hand_numbers():
    assert gap_recovered(0.90, 0.80, 1.00, "Non0_acc_2") == pytest.approx(0.5)
    assert gap_recovered(0.60, 0.80, 0.40, "MAE") == pytest.approx(0.5)  # lower is better: the signs turn
    assert gap_recovered(0.75, 0.80, 1.00, "Non0_acc_2") == pytest.approx(-0.25)  # worse than text alone
    assert gap_recovered(1.00, 0.80, 1.00, "Non0_acc_2") == pytest.approx(1.0)
    assert gap_recovered(0.90, 0.80, 0.80, "Non0_acc_2") is None  # no headroom: undefined, not infinite
    assert gap_recovered(0.50, 0.80, 0.90, "MAE") is None


def test_reference_report_reads_back(tmp_path):
    write_reference(tmp_path / "r.md", {"Non0_acc_2": 0.7815, "MAE": 0.831}, {"Non0_acc_2": 0.8612, "MAE": None},
                    {"Non0_acc_2": 0.9904, "MAE": 0.229})
    rows = read_reference_markdown(tmp_path / "r.md")
    assert rows["(a) text-only ridge"]["Non0_acc_2"] == pytest.approx(0.7815)
    assert rows["(d) late average"]["MAE"] is None and rows["(f) oracle on hidden s_t, s_a, s_v"]["MAE"] == 0.229


def test_objective_is_the_mean_over_worlds_of_the_gap(tmp_path):
    """Finished runs written by hand: per world (full - text) / (oracle - text), averaged over seeds, then worlds."""
    recipe = {"data": {"path": "x.pkl", "synthetic": {"size": "tiny"}}}  # no run.json: nothing to check it against
    path = write_study(tmp_path, recipe, {"previous": {}, "other": {"train": {"lr": 0.01}}}, ["default", "trend"],
                       seeds=[0, 1], shipped="other")
    oracle = {"default": (1.0, 0.2), "trend": (0.9, 0.4)}  # Non0_acc_2, MAE
    runs = {  # world -> seed -> (full, text_only) as (Non0_acc_2, MAE)
        "default": {0: ((0.9, 0.5), (0.8, 0.8)), 1: ((0.95, 0.4), (0.8, 0.8))},
        "trend": {0: ((0.85, 0.6), (0.8, 0.8)), 1: ((0.8, 0.8), (0.8, 0.8))},
    }
    for world, seeds in runs.items():
        write_reference(tmp_path / "refs" / f"{world}.md", {"Non0_acc_2": 0.8}, {"Non0_acc_2": 0.85},
                        {"Non0_acc_2": oracle[world][0], "MAE": oracle[world][1]})
        for seed, pair in seeds.items():
            for variant, (acc, mae) in zip(("full", "text_only"), pair):
                run = tmp_path / "out" / world / "previous" / variant / f"seed{seed}"
                run.mkdir(parents=True)
                (run / "metrics.json").write_text(json.dumps({"test": {"Non0_acc_2": acc, "MAE": mae}}))
    other = tmp_path / "out" / "default" / "other"  # the other candidate has finished one world, seed 0 only
    for variant, acc in (("full", 0.98), ("text_only", 0.8)):
        (other / variant / "seed0").mkdir(parents=True)
        (other / variant / "seed0" / "metrics.json").write_text(json.dumps({"test": {"Non0_acc_2": acc, "MAE": 0.5}}))
    study, recipe = worlds_study.load_study(path)
    references = {w: worlds_study.reference(study, recipe, tmp_path / "out", w, compute=False) for w in study.worlds}
    table = worlds_study.collect(study, recipe, tmp_path / "out", references)
    assert table["default"]["previous"].gaps["Non0_acc_2"] == pytest.approx([0.5, 0.75])
    assert table["trend"]["previous"].gaps["Non0_acc_2"] == pytest.approx([0.5, 0.0])
    assert table["default"]["previous"].gaps["MAE"] == pytest.approx([0.5, 4 / 6])
    score, n = worlds_study.objective(table, "previous")
    assert n == 2 and score == pytest.approx((0.625 + 0.25) / 2)
    mae_score, _ = worlds_study.objective(table, "previous", "MAE")
    assert mae_score == pytest.approx(((0.5 + 4 / 6) / 2 + (0.5 + 0.0) / 2) / 2)
    doc = tmp_path / "doc.md"
    worlds_study.write_doc(doc, "cmd", path, study, table, references)
    # over all its own worlds, then like with like: the previous default on the other's world and seed
    assert worlds_study.against_previous(study, table, "other") == (pytest.approx(0.9), pytest.approx(0.5), ["default"])
    assert "| previous | `(the recipe as it is)` | 43.75 (2) | 2 | 43.75 | 43.75 |" in doc.read_text()
    assert '| **other** (shipped) | `{"train": {"lr": 0.01}}` | 90.00 (1) | 1 | 90.00 | 50.00 |' in doc.read_text()
    # the shipped default against its own text-only model, the reference late average and the previous default
    assert ("| default | 1 | 98.00 | +18.00 | n/a | +13.00 | 92.50 ± 2.50 | +5.50 | 0.500 | +0.000 | n/a | n/a | "
            "0.450 ± 0.050 | +0.050 |") in doc.read_text()
    assert worlds_study.objective(table, "previous", worlds=["trend"]) == (pytest.approx(0.25), 1)


def test_a_text_only_run_is_shared_by_worlds_and_candidates_it_cannot_tell_apart(tmp_path):
    recipe = yaml.safe_load((ROOT / "configs" / "synthmosi_tiny.yaml").read_text())
    candidates = {"previous": {}, "longer": {"train": {"epochs": 4}},
                  "inputs": {"train": {"epochs": 4}, "model": {"input_norm": "both", "modality_dropout": 0.2}}}
    study, raw = worlds_study.load_study(write_study(tmp_path, recipe, candidates, ["default", "segment", "sarcasm"]))
    home = lambda c, w, v="text_only": worlds_study.run_home(study, raw, c, w, v)  # noqa: E731
    assert home("previous", "segment") == ("default", "previous")  # same text and labels as the default world
    assert home("previous", "sarcasm") == ("sarcasm", "previous")  # its labels differ
    assert home("inputs", "segment") == ("default", "longer")  # differs from "longer" only in audio/vision keys
    assert home("longer", "default") == ("default", "longer")  # other training: a model of its own
    assert home("inputs", "segment", "full") == ("segment", "inputs")  # only text-only runs are shared


def test_the_audio_vision_keys_do_not_change_a_text_only_model():
    """What makes sharing a text-only run sound: every key of AUDIO_VISION_KEYS set away from its default
    gives the same parameters and the same training-mode predictions."""
    changed = {"audio_encoder": "lstm", "vision_encoder": "transformer", "encoder_layers": 2, "conv_kernel": 3,
               "conv_dilations": [1, 4], "frame_stride": 2, "input_norm": "both", "input_deltas": True,
               "modality_dropout": 0.5}
    assert set(changed) == set(worlds_study.AUDIO_VISION_KEYS)
    outputs = []
    for overrides in ({}, changed):
        torch.manual_seed(0)
        model = MultimodalSentimentModel(tiny_cfg(modalities=["text"], use_slgm=False, **overrides)).train()
        torch.manual_seed(1)
        outputs.append((model.state_dict(), model(make_batch()).preds["M"].detach()))
    (before, pred_before), (after, pred_after) = outputs
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(pred_before, pred_after)


def test_a_bad_candidate_fails_before_any_training(tmp_path):
    recipe = yaml.safe_load((ROOT / "configs" / "synthmosi_tiny.yaml").read_text())
    path = write_study(tmp_path, recipe, {"previous": {}, "typo": {"model": {"n_layrs": 2}}}, ["default"])
    with pytest.raises(ConfigError, match=r"candidates.typo .*model.n_layrs: unknown key"):
        worlds_study.load_study(path)
    with pytest.raises(ConfigError, match=r"previous: 'old' is not one of the candidates"):
        worlds_study.load_study(write_study(tmp_path, recipe, {"new": {}}, ["default"], previous="old"))
    with pytest.raises(ConfigError, match=r"worlds\[0\]: 'mars' is not one of"):
        worlds_study.load_study(write_study(tmp_path, recipe, {"previous": {}}, ["mars"]))


def test_tiny_study_runs_and_resumes(tmp_path, tiny_synthmosi):
    recipe = yaml.safe_load((ROOT / "configs" / "synthmosi_tiny.yaml").read_text())
    recipe["data"] = {"path": str(tiny_synthmosi), "batch_size": 32,
                      "synthetic": {"size": "tiny", "seed": 0, "text_features": True}}
    recipe["model"]["text"] = {"source": "features"}
    recipe["train"].update(epochs=1, attention_clips=0)
    data_path = str(tmp_path / "data" / "tiny_{world}_s{seed}.pkl")
    path = write_study(tmp_path, recipe, {"previous": {}}, ["default", "level"], data_path=data_path)
    for world in ("default", "level"):
        write_reference(tmp_path / "refs" / f"{world}.md", {"Non0_acc_2": 0.6, "MAE": 1.2}, {"Non0_acc_2": 0.7, "MAE": 1.1},
                        {"Non0_acc_2": 0.99, "MAE": 0.3})
    out, doc = tmp_path / "out", tmp_path / "results_worlds.md"
    args = ["--config", str(path), "--out", str(out), "--doc", str(doc)]
    assert worlds_study.main(args) == 0
    assert (tmp_path / "data" / "tiny_level_s0.pkl").exists()  # the non-default world was generated
    for world, variant in (("default", "full"), ("default", "text_only"), ("level", "full")):
        run = out / world / "previous" / variant / "seed0"
        assert (run / "metrics.json").exists() and json.loads((run / "study_run.json").read_text())["wall_s"] > 0
        stored = json.loads((run / "run.json").read_text())["config"]
        assert stored["model"]["modalities"] == (["text", "audio", "vision"] if variant == "full" else ["text"])
        assert stored["data"]["synthetic"]["world"] == world
    assert not (out / "level" / "previous" / "text_only").exists()  # level reads the default world's text model
    text = doc.read_text()
    assert "| default | previous | 1 |" in text and "| level | previous | 1 |" in text
    assert (out / "results.md").read_text() == text

    # a second call reads the finished runs back and keeps the notes
    doc.write_text(text + "\nWhy.\n")
    mtime = (out / "level" / "previous" / "full" / "seed0" / "best.safetensors").stat().st_mtime
    assert worlds_study.main(args) == 0
    assert (out / "level" / "previous" / "full" / "seed0" / "best.safetensors").stat().st_mtime == mtime
    assert "Why." in doc.read_text()

    # a candidate whose overrides changed does not pass its old runs off as its own
    changed = write_study(tmp_path, recipe, {"previous": {"train": {"lr": 1.0e-3}}}, ["default", "level"],
                          data_path=data_path)
    for extra in ([], ["--report-only"]):  # neither trained over nor reported as the changed candidate's
        assert worlds_study.main(["--config", str(changed), "--out", str(out), *extra]) == 2
