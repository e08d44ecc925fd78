"""xdeepfm.compare configs mode: one variant per config file, runs per seed, the marked doc section."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import yaml

from mmapp.catalogue import generate_catalogue, write_catalogue
from xdeepfm.compare import add_arguments, main, recovered_gain, replace_marked_section, write_doc


def test_recovered_gain():
    assert recovered_gain(0.70, 0.75, 0.80) == pytest.approx(0.5)
    assert recovered_gain(0.70, 0.68, 0.80) == pytest.approx(-0.2)
    assert recovered_gain(0.70, 0.75, 0.70) is None


def test_replace_marked_section_appends_then_replaces():
    text = replace_marked_section("# Title\n\nbody\n", "## A\nold")
    assert text == "# Title\n\nbody\n\n<!-- ecommerce:start -->\n## A\nold\n<!-- ecommerce:end -->\n"
    again = replace_marked_section(text + "tail\n", "## A\nnew")
    assert again == "# Title\n\nbody\n\n<!-- ecommerce:start -->\n## A\nnew\n<!-- ecommerce:end -->\ntail\n"


def _config(path: Path, data_dir: Path, vector_array: str | None) -> Path:
    fields = [{"name": n, "kind": "categorical"} for n in ("user_id", "video_id", "category", "user_segment")]
    fields.append({"name": "price", "kind": "numeric"})
    if vector_array is not None:
        fields.append({"name": "truth", "kind": "vector", "path": str(data_dir / "oracle_sentiment.npz"),
                       "key_column": "video_id", "array": vector_array})
    raw = {
        "task": "ranking",
        "data": {"kind": "ecommerce", "path": str(data_dir), "split": "random", "split_seed": 1},
        "features": {"text_cache_dir": str(path.parent / "cache"), "fields": fields},
        "model": {"implementation": "ours", "embedding_dim": 4, "cin_layer_sizes": [4], "dnn_hidden_units": [8]},
        "train": {"epochs": 1, "batch_size": 256, "seed": 0},
        "eval": {"k": 10},
    }
    path.write_text(yaml.safe_dump(raw))
    return path


def test_configs_mode_end_to_end(tmp_path):
    data_dir = tmp_path / "ec"
    write_catalogue(generate_catalogue(2, n_videos=30, n_users=40, impressions_per_user=10, preset="tiny"), data_dir)
    configs = [str(_config(tmp_path / f"{name}.yaml", data_dir, array))
               for name, array in (("none", None), ("unimodal", "unimodal"), ("oracle", "sentiment"))]
    doc = tmp_path / "results.md"
    write_doc(doc, tmp_path / "no_runs", ["random"], [0], "movielens command")  # the MovieLens part
    movielens = doc.read_text()
    out = tmp_path / "runs"
    args = ["--configs", *configs, "--labels", "none", "uni", "oracle", "--seeds", "0", "1", "--out", str(out),
            "--doc", str(doc), "--note", "Tiny catalogue."]
    assert main(args) == 0
    for stem in ("none", "unimodal", "oracle"):
        for seed in (0, 1):
            metrics = json.loads((out / stem / f"seed{seed}" / "metrics.json").read_text())
            assert metrics["seed"] == seed
    text = doc.read_text()
    assert text.startswith(movielens.rstrip())
    section = text[text.index("<!-- ecommerce:start -->"):]
    assert "## E-commerce catalogue: video semantics" in section and "n_videos=30" in section
    assert "impressions=400" in section
    assert "Tiny catalogue." in section and "--labels none uni oracle" in section
    assert "--note 'Tiny catalogue.'" in section
    rows = [line for line in section.splitlines() if line.startswith("| none |") or line.startswith("| uni |")
            or line.startswith("| oracle |")]
    assert [row.split(" | ")[1] for row in rows] == ["2", "2", "2"]
    assert "Gain recovered by *uni*: (AUC[uni] − AUC[none]) / (AUC[oracle] − AUC[none])" in section

    # a second call reuses every run; the MovieLens writer keeps the section; no duplicated markers
    mtime = (out / "none" / "seed0" / "metrics.json").stat().st_mtime_ns
    assert main(args) == 0
    assert (out / "none" / "seed0" / "metrics.json").stat().st_mtime_ns == mtime
    doc.write_text(doc.read_text() + "\n## Reading the tables\n\nhand-written text\n")
    write_doc(doc, tmp_path / "no_runs", ["random"], [0], "movielens command")
    assert doc.read_text().count("<!-- ecommerce:start -->") == 1
    assert section.rstrip() in doc.read_text()
    assert doc.read_text().rstrip().endswith("## Reading the tables\n\nhand-written text")  # kept too


def test_configs_mode_bad_labels(tmp_path, caplog):
    assert main(["--configs", "x/a.yaml", "y/b.yaml", "--labels", "a", "--out", str(tmp_path)]) == 2
    assert "--labels ['a']: expected 2 labels, one per --configs file" in caplog.text
    assert main(["--configs", "x/a.yaml", "y/a.yaml", "--out", str(tmp_path)]) == 2
    assert "config file stems must be distinct" in caplog.text


def test_compare_touches_docs_only_with_doc(tmp_path):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args([])
    assert args.doc is None and args.out == Path("runs/compare") and args.seeds == [0, 1, 2]


def test_gain_line_values_and_noise_caveat():
    from xdeepfm.compare import _gain_line

    def runs(*aucs):
        return [{"seed": s, "test": {"auc": a}} for s, a in enumerate(aucs)]

    clear = {"lo": runs(0.70, 0.72), "x": runs(0.75, 0.75), "hi": runs(0.80, 0.82)}
    line = _gain_line(clear, "lo", "x", "hi", "none", "sem", "oracle", [0, 1])
    # means: lo 0.71, x 0.75, hi 0.81 -> 0.04 / 0.10; per seed 0.05/0.10 and 0.03/0.10
    assert "= 0.400 on the mean AUCs of seeds [0, 1]" in line and "seed 0: 0.500, seed 1: 0.300" in line
    assert "Not meaningful" not in line
    noisy = {"lo": runs(0.70, 0.72), "x": runs(0.75, 0.75), "hi": runs(0.69, 0.74)}
    assert "**Not meaningful**: the gap AUC[oracle] − AUC[none] = 0.0050" in _gain_line(
        noisy, "lo", "x", "hi", "none", "sem", "oracle", [0, 1])
