"""The mmfusion model: shapes, masking, LGT routing, soft mapping, UFF algebra, ablation switches, text encoders."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from mmcore.config import ConfigError, build
from mmcore.hf import default_model_path, load_model
from mmfusion.data.batch import MMSABatch
from mmfusion.fusion import ConcatFusion, FullTensorFusion, LowRankFusion, outer_product
from mmfusion.lgt import LGT, MultiHeadAttention
from mmfusion.model import MultimodalSentimentModel, SentimentModelConfig, TextEncoderConfig
from mmfusion.sequence_encoder import SequenceEncoder, temporal_pool
from mmfusion.soft_mapping import SoftMapping, SoftMappingFusion, WeightedAverage, masked_mean
from mmfusion.text_encoder import BertTextEncoder

DA, DV, DT = 5, 20, 8


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: with 2 OpenMP threads on a shared 2-core machine every op waits ~10 ms on the other thread."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
LENGTHS = {"text": [6, 3, 1], "audio": [9, 4, 2], "vision": [7, 7, 3]}


def _mask(lengths: list[int], total: int) -> torch.Tensor:
    return torch.arange(total)[None, :] < torch.tensor(lengths)[:, None]


def make_batch(extra_pad: int = 0, seed: int = 0, text: str = "features") -> MMSABatch:
    """A batch of 3 clips, padded to max length + ``extra_pad``; padded positions hold random garbage."""
    g = torch.Generator().manual_seed(seed)
    lt, la, lv = (max(LENGTHS[m]) for m in ("text", "audio", "vision"))
    b = 3
    text_feats = torch.randn(b, lt, DT, generator=g)
    ids = torch.randint(1000, 2000, (b, lt), generator=g)  # MiniLM vocab ids
    audio = torch.randn(b, la, DA, generator=g)
    vision = torch.randn(b, lv, DV, generator=g)

    def pad(x: torch.Tensor) -> torch.Tensor:
        if extra_pad == 0:
            return x
        garbage_shape = (x.shape[0], extra_pad, *x.shape[2:])
        garbage = torch.randn(garbage_shape, generator=g) if x.is_floating_point() else torch.randint(1000, 2000, garbage_shape, generator=g)
        return torch.cat([x, garbage.to(x.dtype)], dim=1)

    text_mask = _mask(LENGTHS["text"], lt + extra_pad)
    ids = pad(ids) if text == "bert" else None
    return MMSABatch(
        index=torch.arange(b),
        ids=[f"clip{i}" for i in range(b)],
        text_mask=text_mask,
        audio=pad(audio),
        audio_mask=_mask(LENGTHS["audio"], la + extra_pad),
        vision=pad(vision),
        vision_mask=_mask(LENGTHS["vision"], lv + extra_pad),
        label=torch.tensor([1.5, -0.5, 0.0]),
        text_ids=ids,
        text_segment=torch.zeros_like(ids) if ids is not None else None,
        text_feats=pad(text_feats) if text == "features" else None,
    )


def tiny_cfg(**overrides) -> SentimentModelConfig:
    base = dict(
        d_model=16, n_heads=2, n_layers=2, ffn_dim=32, dropout=0.1, fusion_dim=4, fusion_rank=3, head_hidden=8,
        sm_slots=2, audio_dim=DA, vision_dim=DV, text=TextEncoderConfig(source="features", feature_dim=DT),
    )
    base.update(overrides)
    return SentimentModelConfig(**base)


def build_model(**overrides) -> MultimodalSentimentModel:
    torch.manual_seed(0)
    return MultimodalSentimentModel(tiny_cfg(**overrides)).eval()


CONFIGS = {
    "default": {},
    "no_lgt": {"use_lgt": False},
    "no_sm": {"use_soft_mapping": False},
    "neither": {"use_lgt": False, "use_soft_mapping": False},
    "uff_full": {"fusion": "uff_full"},
    "concat": {"fusion": "concat"},
    "no_slgm": {"use_slgm": False},
    "lstm_transformer": {"audio_encoder": "lstm", "vision_encoder": "transformer"},
    "transformer_lstm": {"audio_encoder": "transformer", "vision_encoder": "lstm", "encoder_layers": 2},
    "text_only": {"modalities": ["text"]},
    "audio_only": {"modalities": ["audio"]},
    "audio_vision": {"modalities": ["audio", "vision"]},
    "stride3_no_lgt": {"frame_stride": 3, "use_lgt": False},
}


# ---------------------------------------------------------------- shapes and masking


@pytest.mark.parametrize("name", CONFIGS)
def test_output_shapes(name):
    overrides = CONFIGS[name]
    model = build_model(**overrides)
    out = model(make_batch(), return_attention=True)
    mods = model.modalities
    tasks = {"text": "T", "audio": "A", "vision": "V"}
    expected_tasks = {"M"} if overrides.get("use_slgm") is False else {"M", *(tasks[m] for m in mods)}
    assert set(out.preds) == expected_tasks
    assert all(p.shape == (3,) for p in out.preds.values())
    assert out.features["M"].shape == (3, 32)
    assert set(out.features) == {"M", *(tasks[m] for m in mods)}
    assert all(out.features[tasks[m]].shape == (3, 16) for m in mods)
    guided = overrides.get("use_lgt", True) and "text" in mods
    stride = overrides.get("frame_stride", 1)
    length = {m: max(LENGTHS[m]) if m == "text" else -(-max(LENGTHS[m]) // stride) for m in mods}  # pooled frames
    for m in mods:
        lq = max(LENGTHS["text"]) if guided else length[m]
        assert out.attention[m].shape == (3, 2, lq, length[m])
    n = len(mods)
    assert out.modality_weights.shape == ((n,) if overrides.get("use_soft_mapping") is False else (3, n))
    torch.testing.assert_close(out.modality_weights.sum(-1), torch.ones(out.modality_weights.shape[:-1]))
    assert model(make_batch()).attention is None


@pytest.mark.parametrize("name", ["default", "neither", "lstm_transformer", "transformer_lstm", "audio_only", "stride3_no_lgt"])
def test_extra_padding_does_not_change_outputs(name):
    model = build_model(**{"encoder_layers": 3, **CONFIGS[name]})
    with torch.no_grad():
        a = model(make_batch(extra_pad=0), return_attention=True)
        b = model(make_batch(extra_pad=5), return_attention=True)
    for task in a.preds:
        torch.testing.assert_close(a.preds[task], b.preds[task], atol=1e-5, rtol=1e-5)
    for key in a.features:
        torch.testing.assert_close(a.features[key], b.features[key], atol=1e-5, rtol=1e-5)
    for m, w in a.attention.items():  # the extra (padded) keys get exactly zero weight
        wb = b.attention[m]
        assert torch.all(wb[..., w.shape[-1] :] == 0)


@pytest.mark.parametrize("kind", ["conv", "lstm", "transformer"])
def test_sequence_encoder_masks_padding(kind):
    torch.manual_seed(0)
    enc = SequenceEncoder(DA, 16, kind, n_layers=3, kernel_size=5, n_heads=2, ffn_dim=32, dropout=0.0).eval()
    x = torch.randn(2, 6, DA)
    mask = _mask([6, 3], 6)
    garbage = torch.randn(2, 4, DA) * 100
    x_long, mask_long = torch.cat([x, garbage], 1), _mask([6, 3], 10)
    x_dirty = x.clone()
    x_dirty[1, 3:] = 1e3  # garbage in the padded frames of clip 1
    with torch.no_grad():
        h, h_long, h_dirty = enc(x, mask), enc(x_long, mask_long), enc(x_dirty, mask)
    torch.testing.assert_close(h_long[:, :6], h, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(h_dirty, h, atol=1e-5, rtol=1e-5)
    assert torch.all(h[1, 3:] == 0) and torch.all(h_long[:, 6:] == 0)
    # the real frames do matter
    x_changed = x.clone()
    x_changed[1, 2] += 1.0
    assert not torch.allclose(enc(x_changed, mask)[1, :3], h[1, :3])


def test_model_rejects_missing_inputs():
    with pytest.raises(ValueError, match=r"model.audio_dim is None: set it from the data \(batch.audio.shape\[-1\]\)"):
        MultimodalSentimentModel(tiny_cfg(audio_dim=None))
    model = build_model()
    batch = dataclasses.replace(make_batch(), text_feats=None)
    with pytest.raises(ValueError, match=r"batch.text_feats is None but the model's text.source is 'features'"):
        model(batch)


# ---------------------------------------------------------------- LGT


def _lgt_streams(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    streams = {"text": torch.randn(2, 4, 8, generator=g), "audio": torch.randn(2, 6, 8, generator=g), "vision": torch.randn(2, 5, 8, generator=g)}
    masks = {"text": _mask([4, 2], 4), "audio": _mask([6, 3], 6), "vision": _mask([5, 5], 5)}
    return streams, masks


def test_lgt_queries_come_from_text():
    torch.manual_seed(0)
    lgt = LGT(["text", "audio", "vision"], 8, 2, 16, 0.0, n_layers=2, guided=True).eval()
    streams, masks = _lgt_streams()
    out, out_masks, attn = lgt(streams, masks, need_weights=True)
    assert out["audio"].shape == (2, 4, 8) and out["vision"].shape == (2, 4, 8)  # text length
    assert torch.equal(out_masks["audio"], masks["text"])
    assert attn["audio"].shape == (2, 2, 4, 6) and attn["text"].shape == (2, 2, 4, 4)
    assert torch.all(attn["audio"][1, :, :, 3:] == 0)  # padded audio keys get no weight

    perturbed = dict(streams, audio=streams["audio"] + torch.randn_like(streams["audio"]))
    out_p, _, _ = lgt(perturbed, masks)
    assert not torch.allclose(out_p["audio"], out["audio"])
    torch.testing.assert_close(out_p["text"], out["text"])
    torch.testing.assert_close(out_p["vision"], out["vision"])

    text_perturbed = dict(streams, text=streams["text"] + torch.randn_like(streams["text"]))
    out_t, _, _ = lgt(text_perturbed, masks)
    for m in ("text", "audio", "vision"):
        assert not torch.allclose(out_t[m], out[m])


def test_lgt_without_guidance_is_self_attention():
    torch.manual_seed(0)
    lgt = LGT(["text", "audio", "vision"], 8, 2, 16, 0.0, n_layers=2, guided=False).eval()
    streams, masks = _lgt_streams()
    out, out_masks, attn = lgt(streams, masks, need_weights=True)
    assert out["audio"].shape == (2, 6, 8) and torch.equal(out_masks["audio"], masks["audio"])
    assert attn["audio"].shape == (2, 2, 6, 6)
    perturbed = dict(streams, text=streams["text"] + 1.0)
    torch.testing.assert_close(lgt(perturbed, masks)[0]["audio"], out["audio"])  # no text in the audio branch


def test_attention_weights_path_matches_fused_path():
    torch.manual_seed(0)
    mha = MultiHeadAttention(8, 2).eval()
    q, kv = torch.randn(2, 3, 8), torch.randn(2, 5, 8)
    mask = _mask([5, 2], 5)
    fast, none = mha(q, kv, mask)
    slow, w = mha(q, kv, mask, need_weights=True)
    assert none is None
    torch.testing.assert_close(fast, slow)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 2, 3))


# ---------------------------------------------------------------- soft mapping


def test_soft_mapping_matches_equations():
    torch.manual_seed(0)
    sm = SoftMapping(d_model=4, hidden_dim=6, n_slots=2).eval()
    m = torch.randn(2, 5, 4)
    mask = _mask([5, 3], 5)
    s, seq, p = sm(m, mask)
    # explicit eq. 8-11 for clip 1 (3 real positions)
    new = m[1, :3] @ sm.expand.weight.T + sm.expand.bias  # (3, 6)
    p1 = torch.softmax(sm.queries @ new.T, dim=-1)  # (2, 3)
    slots = p1 @ m[1, :3]  # (2, 4)
    s1 = sm.stack(slots.reshape(-1))
    torch.testing.assert_close(p[1, :, :3], p1)
    assert torch.all(p[1, :, 3:] == 0)
    torch.testing.assert_close(s[1], s1)
    torch.testing.assert_close(seq, sm.norm(m + s.unsqueeze(1)))  # eq. 12, s broadcast over positions


def test_soft_mapping_residual_path_with_zero_s():
    torch.manual_seed(0)
    sm = SoftMapping(d_model=4, hidden_dim=8, n_slots=3).eval()
    with torch.no_grad():
        sm.stack.weight.zero_()
        sm.stack.bias.zero_()
    m = torch.randn(2, 5, 4)
    s, seq, _ = sm(m, _mask([5, 2], 5))
    assert torch.all(s == 0)
    torch.testing.assert_close(seq, nn.functional.layer_norm(m, (4,), sm.norm.weight, sm.norm.bias))


def test_soft_mapping_fusion_and_weighted_average():
    torch.manual_seed(0)
    streams, masks = _lgt_streams()
    fusion = SoftMappingFusion(["text", "audio", "vision"], 8, 16, 2).eval()
    out = fusion(streams, masks)
    s = [fusion.maps[m](streams[m], masks[m])[0] for m in ("text", "audio", "vision")]
    torch.testing.assert_close(out.fused, fusion.norm(s[0] + s[1] + s[2]))  # eq. 13
    norms = torch.stack([x.norm(dim=-1) for x in s], 1)
    torch.testing.assert_close(out.weights, norms / norms.sum(1, keepdim=True))

    avg = WeightedAverage(["text", "audio"])
    with torch.no_grad():
        avg.logits.copy_(torch.tensor([0.0, torch.log(torch.tensor(3.0))]))  # softmax → (0.25, 0.75)
    res = avg(streams, masks)
    torch.testing.assert_close(res.weights, torch.tensor([0.25, 0.75]))
    expected = 0.25 * masked_mean(streams["text"], masks["text"]) + 0.75 * masked_mean(streams["audio"], masks["audio"])
    torch.testing.assert_close(res.fused, expected)
    # masked mean over real positions only: clip 1 of text has 2 real positions
    torch.testing.assert_close(res.pooled["text"][1], streams["text"][1, :2].mean(0))


# ---------------------------------------------------------------- UFF


def test_uff_full_equals_explicit_outer_product():
    torch.manual_seed(0)
    fusion = FullTensorFusion(3, in_dim=5, fusion_dim=2, out_dim=4).eval()
    u = [torch.randn(2, 5) for _ in range(3)]
    z = [torch.cat([p(x), torch.ones(2, 1)], -1) for p, x in zip(fusion.project.proj, u)]
    explicit = torch.einsum("bi,bj,bk->bijk", *z).reshape(2, 27)
    torch.testing.assert_close(outer_product(z), explicit)
    # kron of the three vectors, sample by sample, gives the same flattening
    torch.testing.assert_close(explicit[1], torch.kron(torch.kron(z[0][1], z[1][1]), z[2][1]))
    torch.testing.assert_close(fusion(u), explicit @ fusion.out.weight.T + fusion.out.bias)
    # the product holds the unimodal and bimodal terms: entry (i, f, f) (the appended 1s) is z_t[i]
    torch.testing.assert_close(explicit.reshape(2, 3, 3, 3)[:, :2, 2, 2], z[0][:, :2])


def test_uff_lowrank_equals_full_weight_of_rank_r():
    torch.manual_seed(0)
    rank, f, out_dim = 3, 2, 4
    fusion = LowRankFusion(3, in_dim=5, fusion_dim=f, out_dim=out_dim, rank=rank).eval()
    with torch.no_grad():
        fusion.rank_weights.copy_(torch.tensor([0.5, -1.0, 2.0]))
        fusion.bias.copy_(torch.randn(out_dim))
    u = [torch.randn(2, 5) for _ in range(3)]
    z = [torch.cat([p(x), torch.ones(2, 1)], -1) for p, x in zip(fusion.project.proj, u)]
    a1, a2, a3 = (fac.detach() for fac in fusion.factors)  # (rank, f+1, out)
    # W[i,j,k,o] = sum_r w_r A1[r,i,o] A2[r,j,o] A3[r,k,o]: a rank-3 weight on the full (f+1)^3 product
    full_w = torch.einsum("r,rio,rjo,rko->ijko", fusion.rank_weights.detach(), a1, a2, a3)
    expected = torch.einsum("bijk,ijko->bo", torch.einsum("bi,bj,bk->bijk", *z), full_w) + fusion.bias
    torch.testing.assert_close(fusion(u), expected, atol=1e-5, rtol=1e-5)


def test_concat_fusion():
    torch.manual_seed(0)
    fusion = ConcatFusion(3, in_dim=5, fusion_dim=2, out_dim=4).eval()
    u = [torch.randn(2, 5) for _ in range(3)]
    z = torch.cat([p(x) for p, x in zip(fusion.project.proj, u)], -1)
    torch.testing.assert_close(fusion(u), fusion.out(z))


# ---------------------------------------------------------------- ablation switches remove modules


def _names(model: nn.Module) -> list[str]:
    return [name for name, _ in model.named_parameters()]


def _has(model: nn.Module, cls: type) -> bool:
    return any(isinstance(m, cls) for m in model.modules())


def test_ablation_flags_remove_modules():
    full = build_model()
    assert any(".cross_audio." in n for n in _names(full)) and any(".cross_vision." in n for n in _names(full))
    assert _has(full, SoftMapping) and _has(full, LowRankFusion)
    assert full.tasks == ["M", "T", "A", "V"]

    no_lgt = build_model(use_lgt=False)
    assert not any("cross_" in n for n in _names(no_lgt))
    assert any(".self_audio." in n for n in _names(no_lgt))

    no_sm = build_model(use_soft_mapping=False)
    assert not _has(no_sm, SoftMapping) and _has(no_sm, WeightedAverage)

    no_slgm = build_model(use_slgm=False)
    assert no_slgm.tasks == ["M"]
    assert not any(n.startswith(("heads.heads.T", "heads.heads.A", "heads.heads.V")) for n in _names(no_slgm))

    concat = build_model(fusion="concat")
    assert _has(concat, ConcatFusion)
    assert not _has(concat, FullTensorFusion) and not _has(concat, LowRankFusion)
    assert _has(build_model(fusion="uff_full"), FullTensorFusion)

    audio_only = build_model(modalities=["audio"], use_lgt=True)
    assert audio_only.text_encoder is None and list(audio_only.encoders) == ["audio"]
    assert not any("cross_" in n for n in _names(audio_only))  # no text to guide: self-attention


def test_config_validation():
    with pytest.raises(ValueError, match=r"model.d_model=10 must be divisible by model.n_heads=4"):
        SentimentModelConfig(d_model=10, n_heads=4)
    with pytest.raises(ValueError, match=r"model.modalities\[1\]='speech': expected one of"):
        SentimentModelConfig(modalities=["text", "speech"])
    with pytest.raises(ValueError, match=r"model.modalities is empty"):
        SentimentModelConfig(modalities=[])
    with pytest.raises(ValueError, match=r"fusion='uff_full' with fusion_dim=64"):
        SentimentModelConfig(fusion="uff_full", fusion_dim=64, d_model=256)
    with pytest.raises(ConfigError, match=r"model.fusion: 'tfn' is not one of"):
        build(SentimentModelConfig, {"fusion": "tfn"}, "model")
    with pytest.raises(ConfigError, match=r"model.text.finetune: 'some' is not one of"):
        build(SentimentModelConfig, {"text": {"finetune": "some"}}, "model")
    cfg = build(SentimentModelConfig, {"d_model": 32, "n_heads": 4, "text": {"source": "features", "feature_dim": 8}}, "model")
    assert cfg.d_model == 32 and cfg.text.feature_dim == 8


def test_backward_and_param_groups_without_bert():
    model = build_model().train()
    out = model(make_batch())
    sum(p.sum() for p in out.preds.values()).backward()
    assert model.text_encoder.pretrained is None
    assert not any("bert" in n for n in _names(model))
    groups = model.param_groups(lr_text=1e-5, lr_other=1e-3, weight_decay=0.01)
    assert {g["name"] for g in groups} == {"other_decay", "other_no_decay"}
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None for g in grads)


# ---------------------------------------------------------------- BERT text encoder (bundled MiniLM)


@pytest.fixture(scope="module")
def minilm_path() -> str:
    path = default_model_path()
    load_model(path)  # the one slow (cold) load; later loads of the same files are fast
    return path


def test_bad_model_path_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=rf"model_path '{tmp_path}' is not a Hugging Face model directory"):
        BertTextEncoder(tmp_path, 16)


def test_bert_finetune_none_is_frozen_and_deterministic(minilm_path):
    enc = BertTextEncoder(minilm_path, 16, finetune="none")
    assert not any(p.requires_grad for p in enc.bert.parameters())
    assert all(p.requires_grad for p in enc.proj.parameters())
    enc.train()
    assert not enc.bert.training and enc.proj.training
    batch = make_batch(text="bert")
    a = enc(batch.text_ids, batch.text_mask, batch.text_segment)
    b = enc(batch.text_ids, batch.text_mask, batch.text_segment)
    torch.testing.assert_close(a, b)  # no dropout in the frozen encoder
    assert a.shape == (3, 6, 16)


def test_bert_finetune_top_and_full_model(minilm_path):
    cfg = tiny_cfg(text=TextEncoderConfig(source="bert", model_path=minilm_path, finetune="top", top_layers=2))
    torch.manual_seed(0)
    model = MultimodalSentimentModel(cfg)
    bert = model.text_encoder.pretrained
    trainable = {n.split(".")[2] for n, p in bert.named_parameters() if p.requires_grad}
    assert trainable == {"4", "5"}  # encoder.layer.4 and encoder.layer.5 of 6
    assert not any(p.requires_grad for p in bert.embeddings.parameters())
    model.train()
    assert not bert.embeddings.training and not bert.encoder.layer[0].training and bert.encoder.layer[5].training

    out = model(make_batch(text="bert"))
    out.preds["M"].sum().backward()
    assert bert.encoder.layer[5].attention.self.query.weight.grad is not None
    assert bert.encoder.layer[0].attention.self.query.weight.grad is None

    groups = {g["name"]: g for g in model.param_groups(lr_text=2e-5, lr_other=1e-3, weight_decay=0.01)}
    assert groups["text_decay"]["lr"] == 2e-5 and groups["other_decay"]["lr"] == 1e-3
    assert groups["text_no_decay"]["weight_decay"] == 0.0
    n_text = sum(p.numel() for g in ("text_decay", "text_no_decay") for p in groups[g]["params"])
    assert n_text == sum(p.numel() for p in bert.encoder.layer[4:].parameters())

    model.eval()
    with torch.no_grad():
        a = model(make_batch(text="bert"))
        b = model(make_batch(text="bert", extra_pad=4))
    torch.testing.assert_close(a.preds["M"], b.preds["M"], atol=1e-5, rtol=1e-5)


def test_bert_finetune_top_rejects_too_many_layers(minilm_path):
    with pytest.raises(ValueError, match=r"text.top_layers=7: must be between 1 and the model's 6 layers"):
        BertTextEncoder(minilm_path, 16, finetune="top", top_layers=7)


@pytest.mark.parametrize("source, audio_sees_text",
                         [("encoder", False), ("subnet", False), ("lgt", True), ("lgt_pooled", True)])
def test_unimodal_features_source(source, audio_sees_text):
    """"encoder" unimodal features are modality-pure: changing the text leaves A and V untouched."""
    model = build_model(unimodal_features=source)
    batch = make_batch()
    out = model(batch)
    changed = model(dataclasses.replace(batch, text_feats=batch.text_feats + 1.0))
    assert not torch.allclose(changed.features["T"], out.features["T"])
    assert not torch.allclose(changed.preds["M"], out.preds["M"])
    for task in ("A", "V"):
        assert torch.allclose(changed.features[task], out.features[task]) is not audio_sees_text


def test_subnet_features_join_the_fused_vector():
    model = build_model(unimodal_features="subnet")
    assert model.feature_dims == {"M": 32 + 3 * 16, "T": 16, "A": 16, "V": 16}
    out = model(make_batch())
    assert out.features["M"].shape == (3, 80)
    torch.testing.assert_close(out.features["M"][:, 32:48], out.features["T"])  # [h_sm ; h_uff ; e_t ; e_a ; e_v]
    torch.testing.assert_close(out.features["M"][:, 64:], out.features["V"])
    assert len(build_model().subnets) == 0  # other settings build no subnets (checkpoints unchanged)


def test_masked_max_known_values():
    from mmfusion.soft_mapping import masked_max

    x = torch.tensor([[[1.0, -5.0], [3.0, -1.0], [100.0, 100.0]], [[2.0, 2.0], [0.0, 0.0], [0.0, 0.0]]])
    mask = torch.tensor([[True, True, False], [False, False, False]])
    torch.testing.assert_close(masked_max(x, mask), torch.tensor([[3.0, -1.0], [0.0, 0.0]]))


def test_temporal_pool_known_values():
    h = torch.tensor([[[1.0], [3.0], [5.0], [7.0], [100.0]]])  # last frame is padding
    mask = torch.tensor([[True, True, True, True, False]])
    pooled, pooled_mask = temporal_pool(h, mask, 2)
    assert pooled.squeeze(-1).tolist() == [[2.0, 6.0, 0.0]]  # (1+3)/2, (5+7)/2, an all-padding window
    assert pooled_mask.tolist() == [[True, True, False]]
    pooled3, mask3 = temporal_pool(h, mask, 3)
    assert pooled3.squeeze(-1).tolist() == [[3.0, 7.0]]  # (1+3+5)/3, 7 alone (100 is padding)
    assert mask3.tolist() == [[True, True]]
