"""SLGM (the source paper's eq. 18-22, docs/references.md) on a 6-sample toy case computed by hand."""

import math

import pytest
import torch

from mmfusion.losses import multitask_loss
from mmfusion.model import ModelOutput
from mmfusion.slgm import SLGM

# y_m: samples 0-2 positive, 3-4 negative, 5 zero (in neither class).
Y_M = torch.tensor([2.0, 1.0, 0.5, -1.0, -2.0, 0.0])
# Fused (2-D) features: positive centre mean((4,0),(2,2),(0,-2)) = (2,0); negative mean((-2,0),(-4,0)) = (-3,0).
# Sample 5 at (6,6) has label 0 and must not enter either centre.
F_M = torch.tensor([[4.0, 0.0], [2.0, 2.0], [0.0, -2.0], [-2.0, 0.0], [-4.0, 0.0], [6.0, 6.0]])
# Text (1-D): positive centre mean(3,1,2) = 2, negative mean(-1,-3) = -2 (sample 5 = 4 excluded at first).
F_T = torch.tensor([[3.0], [1.0], [2.0], [-1.0], [-3.0], [4.0]])
# Audio (1-D): positive centre mean(0,1,2) = 1, negative mean(-1,1) = 0.
F_A = torch.tensor([[0.0], [1.0], [2.0], [-1.0], [1.0], [0.5]])
BATCH = torch.tensor([0, 3, 5])


@pytest.fixture
def slgm() -> SLGM:
    module = SLGM(6, {"M": 2, "T": 1, "A": 1}, Y_M)
    module.update_features(torch.arange(6), {"M": F_M, "T": F_T, "A": F_A})
    return module


def test_initial_labels_equal_multimodal(slgm):
    labels = slgm.labels(torch.arange(6))
    for task in ("M", "T", "A"):
        torch.testing.assert_close(labels[task], Y_M)
    assert sorted(name for name, _ in slgm.named_buffers()) == [
        "features_A", "features_M", "features_T", "labels_A", "labels_M", "labels_T"
    ]


def test_centres(slgm):
    c = slgm.centres()
    torch.testing.assert_close(c["M"][0], torch.tensor([2.0, 0.0]))
    torch.testing.assert_close(c["M"][1], torch.tensor([-3.0, 0.0]))
    torch.testing.assert_close(c["T"][0], torch.tensor([2.0]))
    torch.testing.assert_close(c["T"][1], torch.tensor([-2.0]))
    torch.testing.assert_close(c["A"][0], torch.tensor([1.0]))
    torch.testing.assert_close(c["A"][1], torch.tensor([0.0]))


def test_alphas(slgm):
    a = slgm.alphas(BATCH)
    # M: s0 (4,0): d_p = 2, d_n = 7 → (7-2)/2 = 2.5;  s3 (-2,0): d_p = 4, d_n = 1 → (1-4)/4 = -0.75;
    #    s5 (6,6): d_p = sqrt(16+36) = sqrt(52), d_n = sqrt(81+36) = sqrt(117) = 1.5 sqrt(52) → 0.5
    torch.testing.assert_close(a["M"], torch.tensor([2.5, -0.75, 0.5]))
    # T: s0 = 3: d_p = 1, d_n = 5 → 4;  s3 = -1: d_p = 3, d_n = 1 → -2/3;  s5 = 4: d_p = 2, d_n = 6 → 2
    torch.testing.assert_close(a["T"], torch.tensor([4.0, -2.0 / 3.0, 2.0]))
    # A: s0 = 0: d_p = 1, d_n = 0 → -1;  s3 = -1: d_p = 2, d_n = 1 → -0.5;  s5 = 0.5: d_p = d_n = 0.5 → 0
    torch.testing.assert_close(a["A"], torch.tensor([-1.0, -0.5, 0.0]))


def test_update_two_epochs(slgm):
    # Epoch 1, y_s = y_m + (a_s - a_m)(y_m + a_m) / (2 a_m), momentum 0/2 * old + 2/2 * new:
    # T s0: 2 + (4 - 2.5)(2 + 2.5)/5 = 2 + 1.35 = 3.35 → clipped to 3.0
    # T s3: -1 + (-2/3 + 0.75)(-1 - 0.75)/(-1.5) = -1 + 0.083333 * 1.166667 = -0.9027778
    # T s5: 0 + (2 - 0.5)(0 + 0.5)/1 = 0.75
    # A s0: 2 + (-1 - 2.5)(4.5)/5 = 2 - 3.15 = -1.15
    # A s3: -1 + (-0.5 + 0.75)(-1.75)/(-1.5) = -1 + 0.2916667 = -0.7083333
    # A s5: 0 + (0 - 0.5)(0.5)/1 = -0.25
    slgm.update_labels(BATCH, epoch=1)
    labels = slgm.labels(torch.arange(6))
    torch.testing.assert_close(labels["T"], torch.tensor([3.0, 1.0, 0.5, -0.9027778, -2.0, 0.75]))
    torch.testing.assert_close(labels["A"], torch.tensor([-1.15, 1.0, 0.5, -0.7083333, -2.0, -0.25]))
    torch.testing.assert_close(labels["M"], Y_M)  # the multimodal label never moves

    # Epoch 2: T labels changed, so sample 5 (label 0.75 > 0) now joins the positive T centre:
    # c_p = mean(3, 1, 2, 4) = 2.5, c_n = mean(-1, -3) = -2 (M centres and alphas unchanged).
    # T s0 = 3: d_p = 0.5, d_n = 5 → a = 9;     new = 2 + (9 - 2.5)(4.5)/5 = 7.85 → 3.0
    #           momentum 1/3 * 3.0 + 2/3 * 3.0 = 3.0
    # T s3 = -1: d_p = 3.5, d_n = 1 → a = -2.5/3.5 = -0.7142857;
    #           new = -1 + (-0.7142857 + 0.75)(-1.75)/(-1.5) = -0.9583333
    #           momentum 1/3 * (-0.9027778) + 2/3 * (-0.9583333) = -0.9398148
    # T s5 = 4: d_p = 1.5, d_n = 6 → a = 3;      new = (3 - 0.5)(0.5)/1 = 1.25
    #           momentum 1/3 * 0.75 + 2/3 * 1.25 = 1.0833333
    torch.testing.assert_close(slgm.centres()["T"][0], torch.tensor([2.5]))
    slgm.update_labels(BATCH, epoch=2)
    torch.testing.assert_close(slgm.labels(BATCH)["T"], torch.tensor([3.0, -0.9398148, 1.0833333]))
    # samples outside the batch are untouched
    torch.testing.assert_close(slgm.labels(torch.tensor([1, 2, 4]))["T"], torch.tensor([1.0, 0.5, -2.0]))


def test_loss_weights_and_stats(slgm):
    slgm.update_labels(BATCH, epoch=1)
    w = slgm.loss_weights(BATCH)
    torch.testing.assert_close(w["M"], torch.ones(3))
    # tanh(|3.0 - 2|) = tanh(1) = 0.7615942; tanh(|-0.9027778 + 1|) = tanh(0.0972222) = 0.0969171; tanh(0.75) = 0.6351490
    torch.testing.assert_close(w["T"], torch.tensor([0.7615942, 0.0969171, 0.6351490]))
    # tanh(3.15) = 0.9963341; tanh(0.2916667) = 0.2836681; tanh(0.25) = 0.2449187
    torch.testing.assert_close(w["A"], torch.tensor([0.9963341, 0.2836681, 0.2449187]))
    stats = slgm.label_stats()
    # T: |diff| = (1 + 0 + 0 + 0.0972222 + 0 + 0.75)/6 = 0.3078704; sign differs only at s5 (0.75 vs 0) → 5/6
    assert stats["T/mean_abs_diff"] == pytest.approx(0.3078704, abs=1e-6)
    assert stats["T/sign_agreement"] == pytest.approx(5 / 6)
    # A: |diff| = (3.15 + 0.2916667 + 0.25)/6 = 0.6152778; signs differ at s0 and s5 → 4/6
    assert stats["A/mean_abs_diff"] == pytest.approx(0.6152778, abs=1e-6)
    assert stats["A/sign_agreement"] == pytest.approx(4 / 6)


def test_alpha_m_zero_is_guarded():
    # Fused centres: positive mean((2,-1),(0,1)) = (1,0), negative (-1,0). Sample 2 at (0,1) is at
    # distance sqrt(2) from both, so a_m = 0 exactly; the label must stay finite and be clipped.
    y = torch.tensor([1.0, -1.0, 1.0])
    module = SLGM(3, {"M": 2, "T": 1}, y)
    module.update_features(
        torch.arange(3),
        {"M": torch.tensor([[2.0, -1.0], [-1.0, 0.0], [0.0, 1.0]]), "T": torch.tensor([[1.0], [-1.0], [3.0]])},
    )
    assert module.alphas(torch.tensor([2]))["M"].item() == 0.0
    module.update_labels(torch.tensor([2]), epoch=1)
    # T: c_p = 2, c_n = -1, sample 2 = 3: a_s = (4 - 1)/1 = 3; (3 - 0)(1 + 0)/(2 eps) is huge → clipped to 3
    assert module.labels(torch.tensor([2]))["T"].item() == 3.0


def test_state_dict_round_trip(slgm):
    slgm.update_labels(BATCH, epoch=1)
    restored = SLGM(6, {"M": 2, "T": 1, "A": 1}, torch.zeros(6))
    restored.load_state_dict(slgm.state_dict())
    for task in ("M", "T", "A"):
        torch.testing.assert_close(restored.labels(torch.arange(6))[task], slgm.labels(torch.arange(6))[task])
        torch.testing.assert_close(restored.feature_map(task), slgm.feature_map(task))


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"train_labels has 5 values, expected n_samples=6"):
        SLGM(6, {"M": 2}, torch.zeros(5))
    with pytest.raises(ValueError, match=r"must include the multimodal task 'M'"):
        SLGM(6, {"T": 2}, torch.zeros(6))
    module = SLGM(6, {"M": 2, "T": 1}, torch.zeros(6))
    with pytest.raises(ValueError, match=r"features\['T'\] has shape \(2, 3\), expected \(2, 1\)"):
        module.update_features(torch.tensor([0, 1]), {"M": torch.zeros(2, 2), "T": torch.zeros(2, 3)})
    with pytest.raises(ValueError, match=r"epoch=0, expected >= 1"):
        module.update_labels(torch.tensor([0]), epoch=0)


def test_multitask_loss():
    out = ModelOutput(preds={"M": torch.tensor([1.0, -1.0]), "T": torch.tensor([1.0, 1.0])}, features={})
    labels = {"M": torch.tensor([0.0, 0.0]), "T": torch.tensor([0.0, 2.0])}
    weights = {"M": torch.tensor([5.0, 5.0]), "T": torch.tensor([0.5, 1.0])}
    total, per_task = multitask_loss(out, labels, weights)
    # M unweighted: (1 + 1)/2 = 1;  T: (0.5 * 1 + 1.0 * 1)/2 = 0.75
    assert per_task["M"].item() == pytest.approx(1.0)
    assert per_task["T"].item() == pytest.approx(0.75)
    assert total.item() == pytest.approx(1.75)
    with pytest.raises(KeyError, match=r"no label for task 'T'"):
        multitask_loss(out, {"M": labels["M"]}, weights)
    assert math.isfinite(total.item())


def test_axis_distance_known_values():
    module = SLGM(6, {"M": 2, "T": 1, "A": 1}, Y_M, distance="axis")
    module.update_features(torch.arange(6), {"M": F_M, "T": F_T, "A": F_A})
    a = module.alphas(BATCH)
    # M: C_p = (2,0), C_n = (-3,0), midpoint (-0.5,0), axis (5,0), |axis|^2 = 25:
    #    s0 (4,0): 2 * 4.5*5 / 25 = 1.8;  s3 (-2,0): 2 * (-1.5)*5 / 25 = -0.6;  s5 (6,6): 2 * 6.5*5 / 25 = 2.6
    torch.testing.assert_close(a["M"], torch.tensor([1.8, -0.6, 2.6]))
    # T: C_p = 2, C_n = -2 (midpoint 0, axis 4): alpha = 2 * x * 4 / 16 = x / 2 -> 1.5, -0.5, 2.0
    # (the ratio gives s5 = 4, beyond C_p, a smaller alpha (2) than s0 = 3 (4); the axis keeps the order)
    torch.testing.assert_close(a["T"], torch.tensor([1.5, -0.5, 2.0]))
    # A: C_p = 1, C_n = 0 (midpoint 0.5, axis 1): alpha = 2 (x - 0.5) -> -1, -3, 0
    torch.testing.assert_close(a["A"], torch.tensor([-1.0, -3.0, 0.0]))
    with pytest.raises(ValueError, match="SLGM distance='cosine': expected 'ratio' or 'axis'"):
        SLGM(6, {"M": 2}, Y_M, distance="cosine")
