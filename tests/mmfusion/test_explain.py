"""Explanations of the sentiment model (mmfusion/explain.py): what they read off the forward pass, and
whether it holds up (outputs equal predict's, attention normalised, SynthMOSI's cue segments)."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from mmfusion import SentimentModel
from mmfusion import explain as ex
from mmfusion.data.mmsa import load_mmsa, make_loader
from mmfusion.data.synthetic import SPLITS, generate, write_pickle
from mmfusion.model import MultimodalSentimentModel, SentimentModelConfig, TextEncoderConfig
from mmfusion.predict import main as predict_main


@pytest.fixture(scope="module")
def segmented(tiny_synthmosi, tmp_path_factory):
    """The session's tiny SynthMOSI pickle plus the segment keys of ``generate(..., segments=True)``."""
    with open(tiny_synthmosi, "rb") as handle:
        data = pickle.load(handle)
    with_segments = generate("tiny", 0, segments=True)
    path = tmp_path_factory.mktemp("explain") / "tiny_segments.pkl"
    for split in SPLITS:
        for key in ("synth_segment_audio", "synth_segment_vision"):
            data[split][key] = with_segments[split][key]
    write_pickle(data, path)
    return path, with_segments


def test_segment_keys_leave_every_other_array_byte_identical(segmented, tiny_synthmosi):
    _, with_segments = segmented
    with open(tiny_synthmosi, "rb") as handle:
        plain = pickle.load(handle)  # generate("tiny", 0, text_features=True): without the segment keys
    for split in SPLITS:
        new = set(with_segments[split]) - set(plain[split])
        assert new == {"synth_segment_audio", "synth_segment_vision"}
        for key, value in with_segments[split].items():
            if key in plain[split]:
                assert value.dtype == plain[split][key].dtype and value.tobytes() == plain[split][key].tobytes(), (split, key)
        for modality in ("audio", "vision"):
            seg, lengths = with_segments[split][f"synth_segment_{modality}"], with_segments[split][f"{modality}_lengths"]
            assert seg.shape == (len(lengths), 2) and seg.dtype == np.int64
            assert (seg[:, 0] >= 0).all() and (seg[:, 1] <= lengths).all() and (seg[:, 1] - seg[:, 0] >= 2).all()
            # the segment is where the generator put the cue: 25-50 % of the clip (rounded, at least 2 frames)
            frac = (seg[:, 1] - seg[:, 0]) / lengths
            assert (frac > 0.15).all() and (frac < 0.6).all()


def test_return_attention_changes_no_output_and_weights_are_normalised(tiny_sentiment_run, tiny_synthmosi):
    model, norm, _ = ex.load(tiny_sentiment_run, "cpu")
    split = load_mmsa(tiny_synthmosi).splits["test"]
    batch = next(iter(make_loader(split, norm, 16, shuffle=False, text_source=model.cfg.text.source)))
    with torch.inference_mode():
        plain, traced = model(batch), model(batch, return_attention=True)
    assert plain.slot_attention is None and plain.attention is None
    for task in plain.preds:
        torch.testing.assert_close(traced.preds[task], plain.preds[task], rtol=0, atol=1e-5)
    torch.testing.assert_close(traced.modality_weights, plain.modality_weights, rtol=0, atol=1e-6)
    readout = ex.read_batch(model, batch)
    torch.testing.assert_close(readout.shares.sum(1), torch.ones(len(batch)), rtol=0, atol=1e-5)
    for m, flow in readout.flows.items():
        p = traced.slot_attention[m]  # (B, K, L): every slot is a distribution over the real positions
        torch.testing.assert_close(p.sum(-1), torch.ones(p.shape[:2]), rtol=0, atol=1e-5)
        assert float(p.masked_select(~flow.stream_mask[:, None, :].expand_as(p)).abs().max()) == 0.0
        torch.testing.assert_close(flow.stream_weight.sum(1), torch.ones(len(batch)), rtol=0, atol=1e-5)
        torch.testing.assert_close(flow.key_weight.sum(1), torch.ones(len(batch)), rtol=0, atol=1e-5)
        assert float(flow.key_weight.masked_select(~flow.key_mask).abs().max()) <= 1e-6  # nothing on padding
        assert flow.stream_is_text  # guided LGT: every stream has the text positions


def test_explanations_equal_predict_and_stay_in_range(tiny_sentiment_run, tiny_synthmosi):
    model = SentimentModel.from_pretrained(tiny_sentiment_run, device="cpu")
    explanations = model.explain_file(tiny_synthmosi, ["test"], rates={"audio": 100.0, "vision": 5.0})
    semantics = model.predict_file(tiny_synthmosi, ["test"])
    assert [e["id"] for e in explanations] == list(semantics["ids"]) and {e["split"] for e in explanations} == {"test"}
    for j, task in enumerate(semantics["tasks"]):
        got = np.array([e["outputs"][task] for e in explanations])
        np.testing.assert_allclose(got, semantics["sentiment"][:, j], rtol=0, atol=1e-5)
    split = load_mmsa(tiny_synthmosi).splits["test"]
    for row, e in enumerate(explanations):
        assert e["shares_kind"] == "soft_mapping" and abs(sum(e["shares"].values()) - 1) < 1e-5
        text = split.raw_text[row].lower()
        for m in ("text", "audio", "vision"):
            words = e[m]["words"]
            assert 0 < len(words) <= 5 and sum(w["weight"] for w in words) <= 1 + 1e-5
            assert all(w["word"] in text for w in words)  # whole words of the narration, pieces merged
            assert [w["weight"] for w in words] == sorted((w["weight"] for w in words), reverse=True)
        for m, rate in (("audio", 100.0), ("vision", 5.0)):
            frames = int(getattr(split, f"{m}_lengths")[row])
            assert e[m]["frames"] == frames
            for seg in [*e[m]["segments"], e[m]["peak"]]:
                assert 0 <= seg["start_frame"] < seg["end_frame"] <= frames and 0 < seg["weight"] <= 1 + 1e-6
                assert seg["start_s"] == seg["start_frame"] / rate and seg["end_s"] == seg["end_frame"] / rate
            assert sum(s["weight"] for s in e[m]["segments"]) <= 1 + 1e-5
    # arrays give the same explanations as the file
    with open(tiny_synthmosi, "rb") as handle:
        test = pickle.load(handle)["test"]
    arrays = {k: test[k][:4] for k in ("text_bert", "text", "audio", "vision", "audio_lengths", "vision_lengths")}
    from_arrays = model.explain(arrays, rates={"audio": 100.0, "vision": 5.0})
    for got, expected in zip(from_arrays, explanations[:4]):
        assert got["audio"]["words"] == expected["audio"]["words"] or all(
            abs(a["weight"] - b["weight"]) < 1e-5 for a, b in zip(got["audio"]["words"], expected["audio"]["words"]))
        assert got["vision"]["peak"]["start_frame"] == expected["vision"]["peak"]["start_frame"]
        assert abs(got["outputs"]["M"] - expected["outputs"]["M"]) < 1e-5


def test_word_pieces_segments_and_peak():
    tokens = ["[CLS]", "un", "##box", "##ing", "is", "great", "[SEP]", "[PAD]"]
    weights = np.array([0.2, 0.1, 0.05, 0.05, 0.1, 0.4, 0.1, 0.0])
    words = ex.merge_word_pieces(tokens, weights, {"[CLS]", "[SEP]", "[PAD]"})
    assert [w["word"] for w in words] == ["unboxing", "is", "great"]
    assert words[0]["position"] == 1 and words[0]["weight"] == pytest.approx(0.2)
    assert [w["word"] for w in ex.top_words(tokens, weights, {"[CLS]", "[SEP]", "[PAD]"}, 2)] == ["great", "unboxing"]
    r = np.array([0.05, 0.3, 0.25, 0.05, 0.05, 0.3])  # uniform = 1/6: runs [1, 3) and [5, 6)
    got = ex.segments(r, frame_stride=4, n_frames=22, k=3, rate=10.0)
    assert [(s["start_frame"], s["end_frame"]) for s in got] == [(4, 12), (20, 22)]
    assert got[0]["weight"] == pytest.approx(0.55) and got[1]["end_s"] == pytest.approx(2.2)
    assert ex.peak(r, 4, 22) == {"start_frame": 4, "end_frame": 8, "weight": pytest.approx(0.3)}


def test_report_and_jsonl_from_the_command(tiny_sentiment_run, segmented, tmp_path):
    path, with_segments = segmented
    report, out = tmp_path / "explanations.md", tmp_path / "explanations.jsonl"
    report.write_text("old\n<!-- notes -->\nkept notes\n")
    assert ex.main(["--checkpoint", str(tiny_sentiment_run), "--data", str(path), "--split", "test",
                    "--report", str(report), "--out", str(out), "--threads", "1"]) == 0
    text = report.read_text()
    assert "| audio (all) | 32 |" in text and "| vision (cue present) |" in text and text.endswith("kept notes\n")
    assert "--report" in text and "1 thread(s)" in text and "| audio | " in text  # command, threads, share table
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 32 and all(set(e) >= {"id", "split", "outputs", "shares", "audio", "vision"} for e in lines)
    # the chance rate of the mass measure is the segment's share of the clip
    model, norm, _ = ex.load(tiny_sentiment_run, "cpu")
    split = load_mmsa(path).splits["test"]
    cue = ex.read_cue_segments(path, "test")
    hits = ex.segment_hits(model, split, norm, cue)
    seg, lengths = with_segments["test"]["synth_segment_audio"], with_segments["test"]["audio_lengths"]
    np.testing.assert_allclose(hits["audio"]["mass_chance"], (seg[:, 1] - seg[:, 0]) / lengths)
    for m in ("audio", "vision"):
        assert set(np.unique(hits[m]["peak_in"])) <= {0.0, 1.0}
        assert ((hits[m]["mass_in"] >= -1e-9) & (hits[m]["mass_in"] <= 1 + 1e-6)).all()
    with pytest.raises(ValueError, match="generate it with"):
        ex.read_cue_segments(_plain_pickle(tmp_path), "test")


def _plain_pickle(tmp_path):
    path = tmp_path / "plain.pkl"
    write_pickle({s: {"id": np.array(["a"])} for s in SPLITS}, path)
    return path


@pytest.mark.xfail(strict=True, raises=AssertionError, reason="the soft-mapping share is ||s_m|| / sum ||s_m'||: an uninformative input "
                   "can make s_m larger (docs/explanations.md measures it on the MOSI-sized model)")
def test_share_drops_when_a_modality_is_uninformative(tiny_sentiment_run, tiny_synthmosi):
    model, norm, _ = ex.load(tiny_sentiment_run, "cpu")
    split = load_mmsa(tiny_synthmosi).splits["test"]
    base = ex.mean_shares(model, split, norm)
    for m in model.modalities:
        replaced = ex.mean_shares(model, ex.uninformative(split, m, norm, "zeros"), norm)
        assert replaced[m] < base[m], (m, base[m], replaced[m])


def test_predict_explain_writes_jsonl_and_refuses_other_formats(tiny_sentiment_run, tiny_synthmosi, tmp_path, caplog):
    out = tmp_path / "semantics.jsonl"
    assert predict_main(["--checkpoint", str(tiny_sentiment_run), "--data", str(tiny_synthmosi), "--splits", "test",
                         "--out", str(out), "--explain"]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 32 and set(records[0]) == {"id", "split", "sentiment", "embedding", "explanation"}
    assert records[0]["explanation"]["outputs"]["M"] == pytest.approx(records[0]["sentiment"]["M"], abs=1e-5)
    assert predict_main(["--checkpoint", str(tmp_path / "missing"), "--data", str(tiny_synthmosi),
                         "--out", str(tmp_path / "x.npz"), "--explain"]) == 2  # refused before the model is read
    assert "--explain writes .jsonl" in caplog.text


@pytest.mark.parametrize("switches", [{"use_lgt": False}, {"use_soft_mapping": False}])
def test_ablated_models_explain_too(tiny_synthmosi, switches):
    data = load_mmsa(tiny_synthmosi)
    cfg = SentimentModelConfig(d_model=16, n_heads=2, ffn_dim=16, frame_stride=4, fusion_dim=4, head_hidden=8,
                               text=TextEncoderConfig(source="features", feature_dim=data.text_dim),
                               audio_dim=data.audio_dim, vision_dim=data.vision_dim, **switches)
    torch.manual_seed(0)
    model = MultimodalSentimentModel(cfg).eval()
    split = data.splits["test"]
    explanations = ex.explain_split(model, split, None, ex.Explainer(model, ex.text_tokenizer(model)), batch_size=8)
    first = explanations[0]
    assert first["shares_kind"] == ("soft_mapping" if cfg.use_soft_mapping else "weighted_average")
    assert abs(sum(first["shares"].values()) - 1) < 1e-5
    assert first["text"]["words"]  # the text stream's positions are its tokens in every variant
    # without the text-guided LGT the audio stream has its own (pooled frame) positions: no words to name
    assert ("words" in first["audio"]) == cfg.use_lgt
    frames = int(split.audio_lengths[0])
    assert 0 <= first["audio"]["peak"]["start_frame"] < first["audio"]["peak"]["end_frame"] <= frames


def test_the_decisive_share_drops_when_a_modality_is_uninformative(tiny_sentiment_run, tiny_synthmosi):
    """The occlusion share (how far M moves when a modality alone says nothing) is faithful where the
    soft-mapping share above is not: a modality whose input already carries nothing gets ~0 of it."""
    model, norm, _ = ex.load(tiny_sentiment_run, "cpu")
    split = load_mmsa(tiny_synthmosi).splits["test"]
    base = ex.mean_shares(model, split, norm, kind="decisive")
    assert sum(base.values()) == pytest.approx(1.0, abs=1e-5) and min(base.values()) > 0
    for m in model.modalities:
        replaced = ex.mean_shares(model, ex.uninformative(split, m, norm, "mean"), norm, kind="decisive")
        assert replaced[m] < base[m] and replaced[m] < 1e-3, (m, base[m], replaced[m])


def test_an_explanation_carries_the_decisive_shares(tiny_sentiment_run, tiny_synthmosi):
    model, norm, _ = ex.load(tiny_sentiment_run, "cpu")
    split = load_mmsa(tiny_synthmosi).splits["test"]
    (first, *_) = ex.explain_split(model, split, norm, ex.Explainer(model), batch_size=8)
    assert set(first["decisive"]) == set(model.modalities) and sum(first["decisive"].values()) == pytest.approx(1.0, abs=1e-5)
    changes = first["decisive_change"]
    assert all(v >= 0 for v in changes.values())
    total = sum(changes.values())
    assert first["decisive"] == pytest.approx({m: v / total for m, v in changes.items()}, abs=1e-6)
