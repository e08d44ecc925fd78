"""The ablation command on the tiny preset: runs, late average, markdown with mean ± std, resumability."""

from pathlib import Path

import yaml

from mmcore.config import load_yaml, merge
from mmfusion import ablate
from mmfusion.worlds_study import load_study

ROOT = Path(__file__).resolve().parents[2]


def test_ablation_table_and_late_average(tmp_path, tiny_synthmosi):
    data = tiny_synthmosi
    raw = yaml.safe_load((ROOT / "configs" / "synthmosi_tiny.yaml").read_text())
    raw["data"] = {"path": str(data), "batch_size": 32}
    raw["model"]["text"] = {"source": "features"}
    raw["train"].update(epochs=1, attention_clips=0)
    config = tmp_path / "ablation.yaml"
    config.write_text(yaml.safe_dump(raw))
    doc = tmp_path / "results.md"
    args = ["--config", str(config), "--seeds", "0", "1", "--variants", "no_uff", "text_only", "audio_only", "vision_only",
            "--out", str(tmp_path / "runs"), "--doc", str(doc)]
    assert ablate.main(args) == 0
    text = doc.read_text()
    for variant in ("no_uff", "text_only", "audio_only", "vision_only", "late_average"):
        assert f"| {variant} |" in text
    assert " ± " in text and "python -m mmfusion.ablate --config" in text and "--seeds 0 1" in text
    assert (tmp_path / "runs" / "results.md").read_text() == text  # the study's own copy, always written
    assert (tmp_path / "runs" / "vision_only" / "seed1" / "predictions_test.csv").exists()

    # a second call reuses finished runs and keeps hand-written notes
    doc.write_text(doc.read_text() + "\nWhy the variants differ.\n")
    mtime = (tmp_path / "runs" / "no_uff" / "seed0" / "best.safetensors").stat().st_mtime
    assert ablate.main(args) == 0
    assert (tmp_path / "runs" / "no_uff" / "seed0" / "best.safetensors").stat().st_mtime == mtime
    assert "Why the variants differ." in doc.read_text()


def test_ablation_base_is_the_default_model():
    load = lambda name: load_yaml(ROOT / "configs" / name)  # noqa: E731
    assert load("synthmosi_ablation.yaml") == load("synthmosi_default.yaml")


def test_the_default_recipe_is_the_recipe_of_before_plus_the_worlds_study_winner():
    study, recipe = load_study(ROOT / "configs" / "worlds_study.yaml")
    assert study.recipe == "synthmosi_v1.yaml" and study.shipped is not None
    assert load_yaml(ROOT / "configs" / "synthmosi_default.yaml") == merge(recipe, study.candidates[study.shipped])
    assert study.candidates[study.previous] == {}  # the previous default is the recipe itself


def test_ablation_touches_docs_only_with_doc(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a relative docs/ that must stay untouched
    (tmp_path / "docs").mkdir()
    parser = ablate.argparse.ArgumentParser()
    ablate.add_arguments(parser)
    args = parser.parse_args(["--config", "x.yaml"])
    assert args.doc is None and args.out == Path("runs/ablation") and args.seeds == [0, 1, 2, 3, 4]
    assert ablate.main(["--config", "x.yaml", "--out", str(tmp_path / "o"), "--doc", str(tmp_path)]) == 2  # fails first
    assert not (tmp_path / "o").exists() and list((tmp_path / "docs").iterdir()) == []
