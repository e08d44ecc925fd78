"""MMSA metric conventions against values computed by hand."""

import math

import pytest

from mmfusion.metrics import format_metrics, is_better, mmsa_metrics

PRED = [-1.4, 0.3, 0.0, 2.6, -0.2, 1.1]
LABEL = [-1.0, -0.4, 0.0, 3.0, 0.6, 1.4]


def test_hand_computed_values():
    m = mmsa_metrics(PRED, LABEL)
    # Has0 (>= 0 is positive): pred [F,T,T,T,F,T], label [F,F,T,T,T,T] -> 4/6 right.
    assert m["Has0_acc_2"] == pytest.approx(4 / 6)
    # weighted F1: class F (support 2): tp=1 fp=1 fn=1 -> 0.5; class T (support 4): tp=3 fp=1 fn=1 -> 0.75
    assert m["Has0_F1"] == pytest.approx((2 * 0.5 + 4 * 0.75) / 6)
    # Non0 drops sample 2 (label 0): pred>0 [F,T,T,F,T] vs label>0 [F,F,T,T,T] -> 3/5.
    assert m["Non0_acc_2"] == pytest.approx(3 / 5)
    # class F (support 2): tp=1 fp=1 fn=1 -> 0.5; class T (support 3): tp=2 fp=1 fn=1 -> 2/3
    assert m["Non0_F1"] == pytest.approx((2 * 0.5 + 3 * (2 / 3)) / 5)
    # Acc_7: round(clip(pred,-3,3)) = [-1,0,0,3,-0,1]; round(label) = [-1,-0,0,3,1,1] -> 5/6
    assert m["Acc_7"] == pytest.approx(5 / 6)
    # Acc_5: clip to 2 first: pred [-1,0,0,2,0,1]; label [-1,0,0,2,1,1] -> 5/6
    assert m["Acc_5"] == pytest.approx(5 / 6)
    # MAE: |.| = 0.4,0.7,0,0.4,0.8,0.3 -> 2.6/6
    assert m["MAE"] == pytest.approx(2.6 / 6)
    mp, ml = sum(PRED) / 6, sum(LABEL) / 6
    cov = sum((p - mp) * (l - ml) for p, l in zip(PRED, LABEL))
    sp = math.sqrt(sum((p - mp) ** 2 for p in PRED))
    sl = math.sqrt(sum((l - ml) ** 2 for l in LABEL))
    assert m["Corr"] == pytest.approx(cov / (sp * sl))


def test_rounding_and_clipping_into_classes():
    # 2.6 clips to 2 for Acc_5 (label 3 -> 2: right) but rounds to 3 for Acc_7 (label 2.4 -> 2: wrong)
    m = mmsa_metrics([2.6], [2.4])
    assert m["Acc_5"] == 1.0 and m["Acc_7"] == 0.0


def test_all_zero_labels_give_undefined_non0_not_nan(caplog):
    m = mmsa_metrics([0.5, -0.5, 0.1], [0.0, 0.0, 0.0])
    assert m["Non0_acc_2"] is None and m["Non0_F1"] is None
    assert m["Corr"] is None  # constant labels
    assert m["Has0_acc_2"] == pytest.approx(2 / 3)
    assert "Non0_acc_2 and Non0_F1 are undefined" in caplog.text
    assert "n/a" in format_metrics(m)


def test_single_class_is_defined():
    m = mmsa_metrics([1.0, 2.0, 0.5], [1.0, 3.0, 1.0])
    assert m["Has0_acc_2"] == 1.0 and m["Non0_acc_2"] == 1.0
    assert m["Has0_F1"] == 1.0 and m["Non0_F1"] == 1.0
    # deviations: pred [-1/6, 5/6, -2/3], label [-2/3, 4/3, -2/3] -> cov 15/9, sums of squares 42/36 and 24/9
    assert m["Corr"] == pytest.approx((15 / 9) / math.sqrt(42 / 36 * 24 / 9))
    wrong = mmsa_metrics([-1.0, -2.0], [1.0, 2.0])
    assert wrong["Non0_acc_2"] == 0.0 and wrong["Non0_F1"] == 0.0


def test_constant_predictions_have_no_correlation():
    m = mmsa_metrics([0.0, 0.0, 0.0], [1.0, -1.0, 2.0])
    assert m["Corr"] is None
    assert all(not (isinstance(v, float) and math.isnan(v)) for v in m.values())


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="pred: non-finite value nan at sample 1"):
        mmsa_metrics([0.0, float("nan")], [0.0, 1.0])
    with pytest.raises(ValueError, match="pred has 2 values but label has 3"):
        mmsa_metrics([0.0, 1.0], [0.0, 1.0, 2.0])
    with pytest.raises(ValueError, match="zero samples"):
        mmsa_metrics([], [])


def test_is_better_direction():
    assert is_better("MAE", 0.5, 0.6) and not is_better("MAE", 0.7, 0.6)
    assert is_better("Non0_acc_2", 0.8, 0.7) and not is_better("Non0_acc_2", None, 0.7)
    assert is_better("Corr", 0.1, None)
