"""xdeepfm.features: label encoding with OOV, normalisation, text cache, round trip, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mmcore.config import ConfigError
from tests.xdeepfm_factory import make_tiny_bert, small_frame
from xdeepfm.features import FeatureError, FeaturePipeline, SentenceVectorCache, load_spec


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    return make_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


def spec_mapping(cache_dir, model_path=None, extra=()):
    fields = [
        {"name": "user_id", "kind": "categorical"},
        {"name": "sex", "kind": "categorical", "column": "gender"},
        {"name": "age", "kind": "numeric"},
        {"name": "genres", "kind": "multi_valued", "sep": "|", "max_len": 2},
        *extra,
    ]
    if model_path is not None:
        fields.append({"name": "title", "kind": "text", "model_path": str(model_path), "max_tokens": 16, "batch_size": 2})
    return {"fields": fields, "text_cache_dir": str(cache_dir)}


def test_label_encoding_reserves_zero_for_oov_and_missing(tmp_path):
    pipe = FeaturePipeline(load_spec(spec_mapping(tmp_path))).fit(small_frame())
    assert pipe.fitted["sex"].vocabulary == ["F", "M"]  # sorted -> F=1, M=2
    assert pipe.fitted["sex"].vocabulary_size == 3
    new = small_frame().iloc[:3].copy()
    new["gender"] = ["M", "X", None]
    new["user_id"] = [3, 99, 1]
    new["genres"] = ["War|Unknown|Drama", None, "Comedy|Action|Drama"]
    out = pipe.transform(new, "test")
    np.testing.assert_array_equal(out["sex"], [2, 0, 0])
    np.testing.assert_array_equal(out["user_id"], [3, 0, 1])  # vocabulary "1","2","3" -> 1,2,3
    # genre vocabulary: Action=1, Comedy=2, Drama=3, War=4; unknown tokens -> 0; truncated at max_len=2
    np.testing.assert_array_equal(out["genres"], [[4, 0], [0, 0], [2, 1]])


def test_numeric_normalisation_uses_train_statistics(tmp_path):
    pipe = FeaturePipeline(load_spec(spec_mapping(tmp_path))).fit(small_frame())
    ages = np.array([20.0, 30.0, 40.0, 20.0, 30.0])
    assert pipe.fitted["age"].mean == pytest.approx(ages.mean())
    assert pipe.fitted["age"].std == pytest.approx(ages.std())
    frame = small_frame().iloc[:1].copy()
    frame["age"] = [50.0]
    assert pipe.transform(frame)["age"][0] == pytest.approx((50 - ages.mean()) / ages.std())


def test_round_trip_through_json_and_safetensors(tmp_path, tiny_bert):
    ids = np.array([1, 2, 3])
    vectors = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.savez(tmp_path / "sem.npz", ids=ids, vectors=vectors)
    vec = {"name": "sem", "kind": "vector", "path": str(tmp_path / "sem.npz"), "key_column": "user_id"}
    pipe = FeaturePipeline(load_spec(spec_mapping(tmp_path / "cache", tiny_bert, [vec]))).fit(small_frame())
    before = pipe.transform(small_frame())
    pipe.save(tmp_path / "fitted")
    (tmp_path / "sem.npz").unlink()  # the reloaded pipeline must not need the original file
    assert not list((tmp_path / "fitted").glob("*.pkl"))
    json.loads((tmp_path / "fitted" / "features.json").read_text())
    again = FeaturePipeline.load(tmp_path / "fitted")
    assert again.to_json_dict() == pipe.to_json_dict()
    after = again.transform(small_frame())
    assert set(after) == set(before)
    for name in before:
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)
    np.testing.assert_array_equal(after["sem"][3], vectors[0])  # row 3 is user 1


def test_vector_field_missing_id_gets_zeros(tmp_path):
    np.savez(tmp_path / "sem.npz", ids=np.array(["1", "2"]), vectors=np.ones((2, 3), np.float32))
    vec = {"name": "sem", "kind": "vector", "path": str(tmp_path / "sem.npz"), "key_column": "user_id"}
    pipe = FeaturePipeline(load_spec(spec_mapping(tmp_path, extra=[vec]))).fit(small_frame())
    out = pipe.transform(small_frame())["sem"]
    np.testing.assert_array_equal(out[:, 0], [1, 1, 0, 1, 1])  # user 3 is not in the file


def test_text_cache_hit_on_second_run_counts_encoder_calls(tmp_path, tiny_bert):
    spec = load_spec(spec_mapping(tmp_path / "cache", tiny_bert))
    first = FeaturePipeline(spec).fit(small_frame())
    vectors = first.transform(small_frame())["title"]
    encoder = first.sentence_cache(spec.fields[-1])
    assert encoder.encoder_calls == 2  # 4 unique titles, batch_size 2
    assert vectors.shape == (5, 32)
    np.testing.assert_array_equal(vectors[0], vectors[3])  # same title, same vector
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)

    second = FeaturePipeline(spec).fit(small_frame())  # fresh encoder: everything from disk
    np.testing.assert_array_equal(second.transform(small_frame())["title"], vectors)
    assert second.sentence_cache(spec.fields[-1]).encoder_calls == 0

    frame = small_frame()
    frame.loc[0, "title"] = "A brand new title"
    second.transform(frame)
    assert second.sentence_cache(spec.fields[-1]).encoder_calls == 1  # only the new text


def test_mean_pooling_ignores_padding(tmp_path, tiny_bert):
    encoder = SentenceVectorCache(str(tiny_bert), tmp_path, max_tokens=16, batch_size=8, normalize=False)
    alone = encoder._encode_batch(["heat"])
    padded = encoder._encode_batch(["heat", "a much longer title with many more word pieces"])
    np.testing.assert_allclose(padded[0], alone[0], rtol=1e-4, atol=1e-5)


def test_cache_key_depends_on_model_weights(tmp_path, tiny_bert):
    other = make_tiny_bert(tmp_path / "other_bert", seed=1)
    a = SentenceVectorCache(str(tiny_bert), tmp_path / "cache")
    b = SentenceVectorCache(str(other), tmp_path / "cache")
    assert a.model_key != b.model_key
    a.encode(["Heat"])
    b.encode(["Heat"])
    assert b.encoder_calls == 1


def test_bundled_minilm_gives_384_dim_vectors(tmp_path):
    encoder = SentenceVectorCache(None, tmp_path, max_tokens=16)
    out = encoder.encode(["Toy Story", "GoldenEye"])
    assert out.shape == (2, 384) and out.dtype == np.float32
    assert float(out[0] @ out[1]) < 0.99


def test_missing_column_names_the_column(tmp_path):
    pipe = FeaturePipeline(load_spec(spec_mapping(tmp_path)))
    with pytest.raises(FeatureError, match=r"train: column 'age' \(field 'age', numeric\) is missing"):
        pipe.fit(small_frame().drop(columns=["age"]))
    pipe.fit(small_frame())
    with pytest.raises(FeatureError, match=r"valid: column 'gender' \(field 'sex', categorical\) is missing"):
        pipe.transform(small_frame().drop(columns=["gender"]), "valid")


def test_strings_in_numeric_column_name_column_and_row(tmp_path):
    frame = small_frame().astype({"age": object})
    frame.loc[2, "age"] = "forty"
    with pytest.raises(FeatureError, match=r"train: column 'age' \(numeric\): row 2 .* not a number: 'forty'"):
        FeaturePipeline(load_spec(spec_mapping(tmp_path))).fit(frame)


def test_nan_in_numeric_column_name_column_and_row(tmp_path):
    pipe = FeaturePipeline(load_spec(spec_mapping(tmp_path))).fit(small_frame())
    frame = small_frame()
    frame.loc[3, "age"] = np.nan
    with pytest.raises(FeatureError, match=r"test: column 'age' \(numeric\): row 3 .* NaN/missing"):
        pipe.transform(frame, "test")
    frame = small_frame()
    frame["age"] = frame["age"] > 25
    with pytest.raises(FeatureError, match=r"column 'age' \(numeric\): expected numbers, got dtype bool"):
        pipe.transform(frame, "test")


def test_spec_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"features.fields\[0\].kind: 'embedding' is not one of"):
        load_spec({"fields": [{"name": "x", "kind": "embedding"}]})
    with pytest.raises(ConfigError, match="vector fields need 'path'"):
        load_spec({"fields": [{"name": "x", "kind": "vector"}]})
    with pytest.raises(ConfigError, match=r"duplicate field names \['x'\]"):
        load_spec({"fields": [{"name": "x", "kind": "numeric"}, {"name": "x", "kind": "categorical"}]})


def _files(directory) -> dict:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(directory.iterdir())}


def test_text_cache_appends_segments_and_never_rewrites_a_file(tmp_path, tiny_bert):
    cache_dir = tmp_path / "cache"
    first = SentenceVectorCache(str(tiny_bert), cache_dir, batch_size=8)
    a = first.encode(["Heat", "Casino"])
    before = _files(cache_dir)
    assert len(before) == 1
    first.encode(["Heat", "Fargo"])  # one new text
    after = _files(cache_dir)
    assert len(after) == 2 and {name: after[name] for name in before} == before  # the first file untouched
    first.encode(["Fargo", "Casino"])  # nothing new: nothing written
    assert _files(cache_dir) == after and first.encoder_calls == 2
    again = SentenceVectorCache(str(tiny_bert), cache_dir, batch_size=8)  # loading merges the segments
    np.testing.assert_array_equal(again.encode(["Heat", "Casino", "Fargo"])[:2], a)
    assert again.encoder_calls == 0 and again.cached_count == 3


def test_serving_mode_keeps_request_texts_in_a_bounded_lru_only(tmp_path, tiny_bert):
    cache_dir = tmp_path / "cache"
    SentenceVectorCache(str(tiny_bert), cache_dir).encode(["Heat"])  # training wrote one text
    before = _files(cache_dir)
    serving = SentenceVectorCache(str(tiny_bert), cache_dir).for_serving(lru_entries=2)
    serving.encode(["Heat"])
    assert serving.encoder_calls == 0  # from the disk cache
    fresh = serving.encode(["x", "y", "z"])
    assert serving.encoder_calls == 1 and serving.lru_count == 2 and _files(cache_dir) == before
    np.testing.assert_array_equal(serving.encode(["z", "y"]), fresh[[2, 1]])
    assert serving.encoder_calls == 1
    serving.encode(["x"])  # the least recently used: evicted
    assert serving.encoder_calls == 2 and serving.lru_count == 2
    vectors, missing = serving.lookup(["Heat", "x", "never"])
    assert missing.tolist() == [False, False, True] and not vectors[2].any()
    none = SentenceVectorCache(str(tiny_bert), cache_dir).for_serving(lru_entries=0)
    none.encode(["q"])
    none.encode(["q"])
    assert none.encoder_calls == 2 and none.lru_count == 0 and _files(cache_dir) == before


def test_single_file_cache_of_earlier_versions_is_read_and_compacted(tmp_path, tiny_bert):
    from safetensors.numpy import save_file

    from xdeepfm.features import _text_hash

    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    writer = SentenceVectorCache(str(tiny_bert), tmp_path / "elsewhere")
    vectors = writer.encode(["Heat", "Casino"])
    key = writer.model_key
    save_file({"vectors": vectors}, str(cache_dir / f"{key}.safetensors"))
    (cache_dir / f"{key}.json").write_text(json.dumps({"text_sha256": [_text_hash("Heat"), _text_hash("Casino")]}))
    reader = SentenceVectorCache(str(tiny_bert), cache_dir)
    np.testing.assert_array_equal(reader.encode(["Casino", "Heat"]), vectors[[1, 0]])
    assert reader.encoder_calls == 0
    reader.encode(["Fargo"])
    merged = reader.compact()
    assert [p.name for p in cache_dir.iterdir()] == [merged.name]
    again = SentenceVectorCache(str(tiny_bert), cache_dir)
    np.testing.assert_array_equal(again.encode(["Heat", "Casino"]), vectors)
    assert again.encoder_calls == 0 and again.cached_count == 3


def test_a_damaged_cache_file_costs_re_encoding_only(tmp_path, tiny_bert, caplog):
    cache = SentenceVectorCache(str(tiny_bert), tmp_path)
    expected = cache.encode(["Heat"])
    segment = cache.segment_paths()[0]
    segment.write_bytes(b"not a safetensors file")
    again = SentenceVectorCache(str(tiny_bert), tmp_path)
    np.testing.assert_allclose(again.encode(["Heat"]), expected, rtol=1e-6, atol=1e-6)
    assert again.encoder_calls == 1 and "unreadable" in caplog.text


def test_encoding_stops_at_a_batch_boundary_past_the_deadline(tmp_path, tiny_bert):
    import time

    cache = SentenceVectorCache(str(tiny_bert), tmp_path, batch_size=2).for_serving()
    with pytest.raises(TimeoutError, match=r"text encoding stopped after 0 of 5 texts"):
        cache.encode(list("abcde"), deadline=time.monotonic() - 1)
    assert cache.encoder_calls == 0 and cache.lru_count == 0


def test_concurrent_encodes_give_the_sequential_vectors(tmp_path, tiny_bert):
    from concurrent.futures import ThreadPoolExecutor

    texts = [[f"title {i} {j}" for j in range(i, i + 30)] for i in range(8)]  # overlapping sets
    expected = [SentenceVectorCache(str(tiny_bert), tmp_path / "seq", batch_size=4).for_serving().encode(t) for t in texts]
    shared = SentenceVectorCache(str(tiny_bert), tmp_path / "par", batch_size=4).for_serving()
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(shared.encode, texts))
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
