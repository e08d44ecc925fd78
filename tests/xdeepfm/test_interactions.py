"""The generic data source (``kind: interactions``): a MovieLens-latest style log trained from a YAML
only, ML-100K and the e-commerce impressions as configs of it (the same frames as the dedicated
readers), the derive transforms on hand cases, and errors naming file, line, column and keys."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mmapp.catalogue import generate_catalogue, write_catalogue
from mmcore.config import ConfigError, build, load_yaml
from xdeepfm.data import DataFileError, load_splits
from xdeepfm.data.ecommerce import IMPRESSION_DTYPES, EcommerceConfig, load_impressions
from xdeepfm.data.interactions import InteractionsConfig, load_interactions
from xdeepfm.data.movielens import MovieLensConfig, default_root, load_movielens_100k
from xdeepfm.experiment import RankingExperiment, load_experiment
from xdeepfm.train import train

ROOT = Path(__file__).resolve().parents[2]
RATINGS = """userId,movieId,rating,timestamp
1,1,4.0,964982703
1,3,4.5,964981247
1,6,2.0,964982224
1,10,5.0,964983815
2,1,2.5,835355493
2,3,3.0,835355681
2,6,5.0,835355552
2,10,0.5,835355604
3,1,4.0,1106635946
3,3,3.5,1106635976
3,10,1.0,1106636001
"""
MOVIES = """movieId,title,genres
1,Toy Story (1995),Adventure|Animation|Children|Comedy|Fantasy
3,Grumpier Old Men (1995),Comedy|Romance
6,"Heat, The (1995)",Action|Crime|Thriller
10,Untitled,(no genres listed)
"""


def latest_files(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ratings.csv").write_text(RATINGS)
    (folder / "movies.csv").write_text(MOVIES)
    return folder


def example(root: Path, *overrides: str) -> RankingExperiment:
    return load_experiment(ROOT / "configs" / "movielens_latest_example.yaml", [f"data.root={root}", *overrides])


def test_movielens_latest_example_frame(tmp_path):
    config = example(latest_files(tmp_path / "ml"))
    frame = load_interactions(config.data)
    assert frame["title"].tolist()[:3] == ["Toy Story", "Grumpier Old Men", "Heat, The"]
    assert frame["genres"].tolist()[2] == "Action|Crime|Thriller"
    # 'Untitled' has no year: the median of the items' years (1995)
    assert frame["release_year"].tolist() == [1995.0] * 11
    assert frame["label"].tolist() == [1, 1, 0, 1, 0, 0, 1, 0, 1, 0, 0]
    stamps = [datetime.fromtimestamp(int(line.split(",")[3]), timezone.utc) for line in RATINGS.splitlines()[1:]]
    assert frame["hour"].tolist() == [str(t.hour) for t in stamps] and frame["hour"].tolist()[:2] == ["18", "18"]
    assert frame["weekday"].tolist() == [str(t.weekday()) for t in stamps] and frame["weekday"][0] == "6"  # Sunday
    assert frame["user_id"].tolist() == [1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3]


def test_movielens_latest_trains_from_the_yaml_only(tmp_path):
    """The worked example of docs/data.md: a tiny temporal split, one epoch, through the trainer."""
    config = example(latest_files(tmp_path / "ml"), "data.leave_last=1", f"features.text_cache_dir={tmp_path / 'cache'}",
                     "model.embedding_dim=4", "model.cin_layer_sizes=[4]", "model.dnn_hidden_units=[8]",
                     "train.epochs=1", "train.progress=false", "train.device=cpu")
    splits = load_splits(config.data)
    assert {k: len(v) for k, v in splits.items()} == {"train": 5, "valid": 3, "test": 3}
    result = train(config, tmp_path / "run")
    assert 0.0 <= result["test"]["auc"] <= 1.0 and (tmp_path / "run" / "best.safetensors").is_file()


def test_ml100k_as_a_config_is_the_dedicated_reader(tmp_path):
    config = load_experiment(ROOT / "configs" / "ml100k_xdeepfm_interactions.yaml", [f"data.root={default_root()}"])
    generic = load_interactions(config.data)
    pd.testing.assert_frame_equal(generic, load_movielens_100k(MovieLensConfig(root=str(default_root()))))
    # the splits too (same rows, same order), temporal included
    for split in ("cold_item", "temporal"):
        config.data.split = split
        a = load_splits(config.data)
        b = load_splits(MovieLensConfig(root=str(default_root()), split=split))
        for name in a:
            pd.testing.assert_frame_equal(a[name], b[name])


def test_ecommerce_impressions_as_a_config(tmp_path):
    folder = tmp_path / "ec"
    write_catalogue(generate_catalogue(2, n_videos=30, n_users=20, impressions_per_user=10, preset="tiny"), folder)
    generic = build(InteractionsConfig, {
        "kind": "interactions", "root": str(folder), "item": "video_id", "split": "temporal", "leave_last": 2,
        "interactions": {"path": "impressions.csv", "na": [], "dtypes": dict.fromkeys(IMPRESSION_DTYPES, "str")},
        "label": {"column": "click"}}, "data")
    dedicated = EcommerceConfig(kind="ecommerce", path=str(folder), split="temporal", leave_last=2)
    pd.testing.assert_frame_equal(load_interactions(generic), load_impressions(dedicated))
    for split in ("random", "cold_item"):
        generic.split = split
        dedicated.split = "cold_video" if split == "cold_item" else split
        a, b = load_splits(generic), load_splits(dedicated)
        for name in a:
            pd.testing.assert_frame_equal(a[name], b[name])


def tiny(tmp_path: Path, **data) -> InteractionsConfig:
    latest_files(tmp_path)
    raw = {"kind": "interactions", "root": str(tmp_path), "interactions": {"path": "ratings.csv"},
           "user": "userId", "item": "movieId", "label": {"column": "rating", "at_least": 4}, **data}
    return build(InteractionsConfig, raw, "data")


def test_transforms_on_hand_cases(tmp_path):
    frame = load_interactions(tiny(tmp_path, interactions={"path": "ratings.csv", "derive": [
        {"name": "band", "source": "rating", "bins": [2, 4], "labels": ["low", "mid", "high"]},
        {"name": "year", "source": "timestamp", "time_part": "year", "dtype": "int"},
        {"name": "stars", "source": "rating", "regex": r"^(\d)", "dtype": "int"}]},
        items={"path": "movies.csv", "key": "movieId", "derive": [
            {"name": "genres", "source": "genres", "split": "|", "join": ","},
            {"name": "first_word", "source": "title", "regex": r"^(\w+)", "case": "lower"}]}))
    assert frame["band"].tolist()[:5] == ["high", "high", "mid", "high", "mid"]  # 4.0 is high; [2, 4) is mid
    assert frame["year"].tolist() == [2000] * 4 + [1996] * 4 + [2005] * 3
    assert frame["stars"].tolist()[:4] == [4, 4, 2, 5]
    assert frame["genres"].tolist()[1] == "Comedy,Romance" and frame["first_word"].tolist()[0] == "toy"
    assert "user_id" in frame.columns and "userId" not in frame.columns  # the user column is written as user_id


def test_cold_user_and_global_time_cut(tmp_path):
    cut = load_splits(tiny(tmp_path, split="temporal", time_cut=[900_000_000, 1_000_000_000]))
    assert [len(cut[s]) for s in ("train", "valid", "test")] == [4, 4, 3]  # user 2 (1996), user 1 (2000), user 3 (2005)
    cold = load_splits(tiny(tmp_path, split="cold_user"))
    assert len(set(cold["test"]["user_id"])) == 1 and not set(cold["test"]["user_id"]) & set(cold["train"]["user_id"])


def test_errors_name_the_file_line_column_and_keys(tmp_path):
    with pytest.raises(ConfigError, match=r"data.interactions.sepp: unknown key \(expected one of \['derive', 'dtypes'"):
        tiny(tmp_path, interactions={"path": "ratings.csv", "sepp": ";"})
    with pytest.raises(ConfigError, match=r"derive 'x': expected exactly one of \['regex', 'replace'"):
        tiny(tmp_path, interactions={"path": "ratings.csv", "derive": [{"name": "x", "source": "rating"}]})
    with pytest.raises(ConfigError, match=r"regex '\\\\d\+' has no capture group"):
        tiny(tmp_path, interactions={"path": "ratings.csv", "derive": [{"name": "x", "source": "rating", "regex": r"\d+"}]})
    with pytest.raises(FileNotFoundError, match=r"ratings.csv: data.interactions file not found"):
        load_interactions(tiny(tmp_path / "empty", interactions={"path": "nope/ratings.csv"}))
    with pytest.raises(FileNotFoundError, match=r"data.interactions.path: no file matches .*part-\*.csv"):
        load_interactions(tiny(tmp_path, interactions={"path": "part-*.csv"}))
    with pytest.raises(DataFileError, match=r"ratings.csv: column 'userid' not found \(data.user\); the data.interactions "
                                            r"table has \['userId'"):
        load_interactions(tiny(tmp_path, user="userid"))
    typed = tiny(tmp_path, interactions={"path": "ratings.csv", "dtypes": {"rating": "float"}})
    (tmp_path / "ratings.csv").write_text(RATINGS.replace("1,6,2.0,", "1,6,two,"))
    with pytest.raises(DataFileError, match=r"ratings.csv:4: column 'rating': row 2 is 'two'; expected a number"):
        load_interactions(typed)
    joined = tiny(tmp_path, items={"path": "movies.csv", "key": "movieId"})
    (tmp_path / "ratings.csv").write_text(RATINGS + "3,99,4.0,1106636002\n")
    with pytest.raises(DataFileError, match=r"ratings.csv:13: column 'movieId': row 11 is 99; expected a movieId of "
                                            r".*movies.csv \(4 rows\)"):
        load_interactions(joined)
    with pytest.raises(ConfigError, match=r"data.items.key: required"):
        tiny(tmp_path, items={"path": "movies.csv"}).check()


def test_a_wrong_data_section_lists_every_kind_and_its_keys(tmp_path):
    raw = load_yaml(ROOT / "configs" / "ml100k_xdeepfm.yaml")
    with pytest.raises(ConfigError) as caught:
        build(RankingExperiment, dict(raw, data={"kind": "interaction", "path": "x"}), "c.yaml")
    lines = str(caught.value).splitlines()
    assert lines[0] == ("c.yaml.data: matches none of MovieLensConfig | EcommerceConfig | InteractionsConfig | "
                        "ParquetConfig (kind 'interaction' is none of theirs)")
    assert lines[3].startswith("  - InteractionsConfig (kind: interactions): keys ['interactions', 'item', 'items', "
                               "'keep', 'kind'") and lines[3].endswith("failed: path: unknown key")
    assert "failed: kind: unknown key" in lines[1] and "'like_threshold'" in lines[1]
    # a section whose kind names one alternative gets that alternative's own error
    with pytest.raises(ConfigError, match=r"^c.yaml.data.lable: unknown key \(expected one of \["):
        build(RankingExperiment, dict(raw, data={"kind": "interactions", "lable": 1}), "c.yaml")


def test_parquet_glob(tmp_path):
    frame = pd.read_csv(latest_files(tmp_path) / "ratings.csv")
    frame.iloc[:6].to_parquet(tmp_path / "part-0.parquet")
    frame.iloc[6:].to_parquet(tmp_path / "part-1.parquet")
    loaded = load_interactions(tiny(tmp_path, interactions={"path": "part-*.parquet"}))
    assert loaded["movieId"].tolist() == frame["movieId"].tolist()
    assert np.array_equal(loaded["label"].to_numpy(), (frame["rating"] >= 4).to_numpy(np.float32))
