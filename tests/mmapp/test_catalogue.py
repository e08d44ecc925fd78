"""The synthetic e-commerce catalogue (``mmapp.catalogue``): determinism, the documented click model, files,
the reader and its splits (``xdeepfm.data.ecommerce``), and a tiny end-to-end run (catalogue -> mmfusion
checkpoint -> predict -> three ranking configs)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from mmapp.catalogue import CATEGORIES, PRODUCT_INFO, START_TIME, ClickModel, generate_catalogue, write_catalogue
from mmcore.config import build, load_yaml
from mmfusion.data.mmsa import load_mmsa
from mmfusion.data.synthetic import PRODUCTS
from tests.xdeepfm_factory import make_tiny_bert
from xdeepfm.checkpoint import load_ranking_checkpoint
from xdeepfm.data.ecommerce import EcommerceConfig, load_ecommerce_splits
from xdeepfm.experiment import RankingExperiment, load_experiment
from xdeepfm.train import train as train_ranking

ROOT = Path(__file__).resolve().parents[2]
SMALL = dict(n_videos=40, n_users=30, impressions_per_user=10, preset="tiny")


@pytest.fixture(scope="module")
def medium():
    """Enough impressions (18,000) for the click-model statistics; tiny clips keep it fast."""
    return generate_catalogue(1, n_videos=200, n_users=600, impressions_per_user=30, preset="tiny")


def test_product_info_covers_every_synthmosi_product():
    assert set(PRODUCT_INFO) == {name for name, _ in PRODUCTS}
    assert {category for category, _ in PRODUCT_INFO.values()} == set(CATEGORIES)


def test_same_seed_same_catalogue():
    a, b = generate_catalogue(5, **SMALL), generate_catalogue(5, **SMALL)
    for name in ("videos", "users", "impressions"):
        pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name))
    for split in a.mmsa:
        for key, value in a.mmsa[split].items():
            np.testing.assert_array_equal(value, b.mmsa[split][key], err_msg=f"{split}/{key}")
    c = generate_catalogue(6, **SMALL)
    assert not np.array_equal(a.mmsa["train"]["audio"], c.mmsa["train"]["audio"])
    assert not a.impressions["video_id"].equals(c.impressions["video_id"])


def test_catalogue_columns(medium):
    videos, users, imp = medium.videos, medium.users, medium.impressions
    assert len(imp) == 600 * 30 and imp.groupby("user_id").size().eq(30).all()
    assert videos["video_id"].tolist() == [f"video_{i:06d}" for i in range(200)]
    # each video's category is that of the product its presenter talks about
    raw_text = np.concatenate([medium.mmsa[s]["raw_text"] for s in ("train", "valid", "test")])
    for text, product, category in zip(raw_text[:20], videos["product"], videos["category"]):
        raw = next(name for name, (_, noun) in PRODUCT_INFO.items() if noun == product)
        assert raw in text and PRODUCT_INFO[raw][0] == category
    assert set(videos["price_band"]) <= {"budget", "mid", "premium", "luxury"}
    assert (videos["title"].str.split().str[0] == videos["brand"]).all()
    # impressions carry the video's and the user's observable columns
    merged = imp.merge(videos, on="video_id", suffixes=("", "_v")).merge(users, on="user_id", suffixes=("", "_u"))
    assert (merged["brand"] == merged["brand_v"]).all() and (merged["user_segment"] == merged["user_segment_u"]).all()
    # the recall stage favours tastes: a user's favourite category gets more than 1/6 of the impressions
    assert (imp["category"] == imp["user_fav_category"]).mean() > 0.25


def test_click_probability_is_the_documented_logistic(medium):
    """logit(p) minus the documented deterministic terms leaves eps ~ N(0, noise_sd^2)."""
    click = ClickModel()
    m = medium.impressions.merge(medium.videos, on="video_id", suffixes=("", "_v")).merge(medium.users, on="user_id",
                                                                                         suffixes=("", "_u"))
    affinity = m[[f"affinity_{c}" for c in CATEGORIES]].to_numpy()[np.arange(len(m)), pd.Index(CATEGORIES).get_indexer(m["category"])]
    eta = (click.bias + click.w_affinity * affinity + m["brand_quality"]
           - m["price_sensitivity"] * (m["price_level"] - 1.5) / 1.5
           + click.w_sentiment * m["sentiment_sensitivity"] * m["true_sentiment"])
    p = m["hidden_click_prob"].to_numpy()
    residual = np.log(p / (1 - p)) - eta.to_numpy()
    assert abs(residual.mean()) < 0.03
    assert residual.std() == pytest.approx(click.noise_sd, abs=0.03)
    assert m["click"].mean() == pytest.approx(p.mean(), abs=0.012)  # clicks ~ Bernoulli(p)


def test_click_rate_rises_with_true_sentiment_for_sensitive_users(medium):
    m = medium.impressions.merge(medium.videos[["video_id", "true_sentiment"]], on="video_id").merge(
        medium.users[["user_id", "sentiment_sensitivity"]], on="user_id")

    def lift(users: pd.Series) -> float:
        part = m[users]
        return part.loc[part["true_sentiment"] > 1, "click"].mean() - part.loc[part["true_sentiment"] < -1, "click"].mean()

    sensitive, indifferent = lift(m["sentiment_sensitivity"] > 1.2), lift(m["sentiment_sensitivity"] < 0.4)
    assert sensitive > 0.3
    assert indifferent < sensitive / 2


def frame_of(paths) -> pd.DataFrame:
    return pd.read_csv(paths["impressions.csv"])


def test_write_files_and_load_ecommerce_splits(tmp_path):
    catalogue = generate_catalogue(2, **SMALL)
    paths = write_catalogue(catalogue, tmp_path / "ec")
    assert all(p.is_file() for p in paths.values())
    assert not [p.name for p in (tmp_path / "ec").iterdir() if p.name.startswith(".")]
    data = load_mmsa(paths["videos.pkl"])
    ids = np.concatenate([data.splits[s].ids for s in ("train", "valid", "test")])
    assert ids.tolist() == catalogue.videos["video_id"].tolist()
    assert [len(data.splits[s]) for s in ("train", "valid", "test")] == [28, 6, 6]
    with np.load(paths["oracle_sentiment.npz"], allow_pickle=False) as oracle:
        assert oracle["ids"].tolist() == ids.tolist()
        np.testing.assert_allclose(oracle["sentiment"][:, 0], catalogue.videos["true_sentiment"], rtol=1e-6)
    assert json.loads(paths["catalogue.json"].read_text())["seed"] == 2

    splits = load_ecommerce_splits(EcommerceConfig(kind="ecommerce", path=str(tmp_path / "ec"), split_seed=0))
    assert [len(splits[s]) for s in ("train", "valid", "test")] == [240, 30, 30]
    joined = pd.concat(splits.values())
    assert len(joined.drop_duplicates()) == 300
    assert (joined["label"] == joined["click"]).all() and joined["label"].dtype == np.float32
    assert joined["user_id"].str.startswith("user_").all()

    cold = load_ecommerce_splits(EcommerceConfig(kind="ecommerce", path=str(tmp_path / "ec"), split="cold_video", split_seed=0))
    test_videos = set(cold["test"]["video_id"])
    assert len(test_videos) == 4  # 10% of the 40 videos, with every impression of theirs
    assert not test_videos & set(cold["train"]["video_id"]) and not test_videos & set(cold["valid"]["video_id"])
    assert sum(len(f) for f in cold.values()) == 300
    assert len(cold["test"]) == int(frame_of(paths)["video_id"].isin(test_videos).sum())

    with pytest.raises(FileNotFoundError, match=r"nowhere/impressions.csv: e-commerce impressions not found"):
        load_ecommerce_splits(EcommerceConfig(kind="ecommerce", path=str(tmp_path / "nowhere")))
    frame = pd.read_csv(paths["impressions.csv"])
    frame.loc[7, "click"] = 2
    frame.to_csv(paths["impressions.csv"], index=False)
    with pytest.raises(ValueError, match=r"impressions.csv: column 'click': row 7 is 2; expected 0 or 1"):
        load_ecommerce_splits(EcommerceConfig(kind="ecommerce", path=str(tmp_path / "ec")))


def test_bad_arguments():
    with pytest.raises(ValueError, match="n_videos=2: must be >= 3"):
        generate_catalogue(0, n_videos=2)
    with pytest.raises(ValueError, match="preset 'huge'"):
        generate_catalogue(0, preset="huge")


def _ranking_config(name: str, data_dir: Path, semantics: Path, bert: Path, cache: Path) -> RankingExperiment:
    """configs/<name>.yaml pointed at the test's files, with a small model and one epoch."""
    raw = load_yaml(ROOT / "configs" / f"{name}.yaml")
    raw["data"]["path"] = str(data_dir)
    raw["features"]["text_cache_dir"] = str(cache)
    for spec in raw["features"]["fields"]:
        if spec["kind"] == "text":
            spec.update(model_path=str(bert), max_tokens=12)
        if spec["kind"] == "vector":
            spec["path"] = str(semantics if spec["path"].endswith("semantics.npz") else data_dir / Path(spec["path"]).name)
    raw["model"].update(embedding_dim=4, cin_layer_sizes=[4, 4], dnn_hidden_units=[8])
    raw["train"].update(epochs=1, batch_size=128, progress=False)
    return build(RankingExperiment, raw, name)


def test_end_to_end_catalogue_to_ranking(tmp_path):
    """Catalogue -> 1-epoch mmfusion on its clips -> predict -> the three ranking configs."""
    from mmfusion.experiment import SentimentExperiment
    from mmfusion.predict import predict_semantics, write_semantics
    from mmfusion.train import train

    data_dir = tmp_path / "ec"
    write_catalogue(generate_catalogue(3, n_videos=60, n_users=40, impressions_per_user=15, preset="tiny",
                                       text_features=True), data_dir)
    tiny = yaml.safe_load((ROOT / "configs" / "synthmosi_tiny.yaml").read_text())
    tiny["data"] = {"path": str(data_dir / "videos.pkl"), "batch_size": 16}
    tiny["model"]["text"] = {"source": "features"}
    tiny["train"].update(epochs=1, attention_clips=0)
    train(build(SentimentExperiment, tiny, "tiny"), tmp_path / "mm")
    semantics = tmp_path / "semantics.npz"
    write_semantics(predict_semantics(tmp_path / "mm" / "best.safetensors", data_dir / "videos.pkl"), semantics)

    bert = make_tiny_bert(tmp_path / "bert")
    vector_dims = {}
    for name in ("ecommerce_xdeepfm", "ecommerce_xdeepfm_nosemantics", "ecommerce_xdeepfm_oracle"):
        config = _ranking_config(name, data_dir, semantics, bert, tmp_path / "cache")
        assert isinstance(config.data, EcommerceConfig)
        result = train_ranking(config, tmp_path / name)
        assert 0.0 <= result["test"]["auc"] <= 1.0 and result["test"]["logloss"] > 0
        fitted = load_ranking_checkpoint(tmp_path / name / "best.safetensors").features.fitted
        vector_dims[name] = {n: f.dim for n, f in fitted.items() if f.spec.kind == "vector"}
    assert vector_dims == {
        "ecommerce_xdeepfm": {"video_sentiment": 4, "video_embedding": 64},  # M/T/A/V and F_M (2 x d_model 32)
        "ecommerce_xdeepfm_nosemantics": {},
        "ecommerce_xdeepfm_oracle": {"true_sentiment": 1},
    }


def test_configs_load():
    for name in ("ecommerce_xdeepfm", "ecommerce_xdeepfm_nosemantics", "ecommerce_xdeepfm_oracle"):
        config = load_experiment(ROOT / "configs" / f"{name}.yaml")
        assert isinstance(config.data, EcommerceConfig) and config.data.path == "datasets/ecommerce"
    assert not isinstance(load_experiment(ROOT / "configs" / "ml100k_xdeepfm.yaml").data, EcommerceConfig)


def test_clips_share_the_synthmosi_world(monkeypatch):
    """The catalogue's audio/vision mixing is that of generate(preset, world_seed), so a checkpoint
    trained on that SynthMOSI file sees the catalogue's clips as new clips of the same world."""
    import mmfusion.data.synthetic as synthetic
    from mmapp.catalogue import _world_mixing

    made = []
    original = synthetic.make_mixing
    monkeypatch.setattr(synthetic, "make_mixing", lambda *args: made.append(original(*args)) or made[-1])
    synthetic.generate("tiny", 4)
    for ours, theirs in zip(_world_mixing(4, "tiny"), made, strict=True):
        for key in ("matrix", "offset", "scale"):
            np.testing.assert_array_equal(getattr(ours, key), getattr(theirs, key))
    assert not np.array_equal(_world_mixing(5, "tiny")[0].matrix, made[0].matrix)


def test_vector_fields_read_the_named_array(tmp_path):
    """features.py ``array:``: one predict file feeds a sentiment and an embedding field."""
    from xdeepfm.features import FeatureError, FeaturePipeline, load_spec

    np.savez(tmp_path / "sem.npz", ids=np.array(["v1", "v2"]), sentiment=np.array([[1.0, 2.0], [3.0, 4.0]]),
             embedding=np.arange(6.0).reshape(2, 3))
    spec = load_spec({"fields": [
        {"name": "s", "kind": "vector", "path": str(tmp_path / "sem.npz"), "key_column": "video_id", "array": "sentiment"},
        {"name": "e", "kind": "vector", "path": str(tmp_path / "sem.npz"), "key_column": "video_id", "array": "embedding"},
    ]})
    out = FeaturePipeline(spec).fit_transform(pd.DataFrame({"video_id": ["v2", "v9", "v1"]}))
    np.testing.assert_array_equal(out["s"], [[3.0, 4.0], [0.0, 0.0], [1.0, 2.0]])  # unknown id -> zeros
    np.testing.assert_array_equal(out["e"], [[3.0, 4.0, 5.0], [0.0, 0.0, 0.0], [0.0, 1.0, 2.0]])
    bad = load_spec({"fields": [{"name": "x", "kind": "vector", "path": str(tmp_path / "sem.npz"),
                                 "key_column": "video_id", "array": "fused"}]})
    with pytest.raises(FeatureError, match=r"sem.npz: vector field 'x' needs arrays 'ids' and 'fused', found \['embedding', 'ids', 'sentiment'\]"):
        FeaturePipeline(bad).fit(pd.DataFrame({"video_id": ["v1"]}))


def test_impression_timestamps_are_seeded_sessions_and_leave_the_rest_unchanged(tmp_path):
    """Integer seconds, strictly increasing per user, deterministic; drawn from their own seed stream,
    so every other column is what the generator gave before the column existed (the same draws)."""
    a, b = generate_catalogue(4, **SMALL), generate_catalogue(4, **SMALL)
    times = a.impressions["timestamp"]
    assert times.dtype == np.int64 and times.equals(b.impressions["timestamp"])
    assert (a.impressions.groupby("user_id", sort=False)["timestamp"].diff().dropna() >= 1).all()
    assert times.min() >= START_TIME and not times.equals(generate_catalogue(5, **SMALL).impressions["timestamp"])
    for x, y in zip(np.random.SeedSequence(4).spawn(5)[:4], np.random.SeedSequence(4).spawn(4)):
        np.testing.assert_array_equal(x.generate_state(4), y.generate_state(4))

    paths = write_catalogue(a, tmp_path / "ec")
    config = EcommerceConfig(kind="ecommerce", path=str(tmp_path / "ec"), split="temporal", leave_last=2)
    splits = load_ecommerce_splits(config)
    assert [len(splits[s]) for s in ("train", "valid", "test")] == [30 * 6, 30 * 2, 30 * 2]  # 10 per user
    latest = splits["train"].groupby("user_id")["timestamp"].max()
    assert (splits["valid"].groupby("user_id")["timestamp"].min() > latest).all()
    # a catalogue written before the column existed: random still loads, temporal is refused clearly
    pd.read_csv(paths["impressions.csv"]).drop(columns="timestamp").to_csv(paths["impressions.csv"], index=False)
    assert len(load_ecommerce_splits(EcommerceConfig(kind="ecommerce", path=str(tmp_path / "ec")))["test"]) == 30
    with pytest.raises(ValueError, match=r"impressions.csv: split temporal needs a 'timestamp' column.*regenerate"):
        load_ecommerce_splits(config)
