"""Metrics against hand-computed values, pyproj and scikit-learn."""

import math

import numpy as np
import pandas as pd
import pytest
from pyproj import Geod
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

from geopak_lib.metrics import (accuracy_within, confusion_matrix, coverage, error_radius,
                                expected_calibration_error, fit_radius_scale, fit_temperature, nll,
                                per_class_accuracy, per_group_summary, province_accuracy_columns,
                                reliability_bins, summarize_errors, topk_accuracy)
from geopak_lib.metrics import error_km as error_km_fn

KARACHI, LAHORE = (24.8607, 67.0011), (31.5204, 74.3587)


def test_error_km_karachi_lahore():
    e = error_km_fn([KARACHI[0]], [KARACHI[1]], [LAHORE[0]], [LAHORE[1]])[0]
    geodesic = Geod(ellps="WGS84").inv(KARACHI[1], KARACHI[0], LAHORE[1], LAHORE[0])[2] / 1000  # ~1032 km
    assert abs(e - geodesic) / geodesic < 0.005
    assert 1020 < e < 1045
    assert error_km_fn([10.0], [20.0], [10.0], [20.0])[0] == 0.0


ERRORS = [0.5, 1.0, 3.0, 30.0, 800.0]


def test_accuracy_within_by_hand():
    acc = accuracy_within(ERRORS)
    assert acc == {"acc_1km": 0.4, "acc_5km": 0.6, "acc_25km": 0.6, "acc_200km": 0.8, "acc_750km": 0.8}
    assert accuracy_within(ERRORS, thresholds=(2500,)) == {"acc_2500km": 1.0}


def test_summarize_errors_by_hand():
    s = summarize_errors(ERRORS)
    assert s["median_km"] == 3.0 and s["n"] == 5
    assert s["mean_km"] == pytest.approx(834.5 / 5)
    assert s["p90_km"] == pytest.approx(30 + 0.6 * 770)  # rank 0.9 * 4 = 3.6, linear between 30 and 800
    assert s["acc_5km"] == 0.6
    empty = summarize_errors([])
    assert empty["n"] == 0 and math.isnan(empty["median_km"])


def test_per_group_summary():
    df = pd.DataFrame({"province": ["Sindh"] * 3 + ["Punjab"] * 2, "error_km": [1.0, 2.0, 9.0, 100.0, 300.0]})
    out = per_group_summary(df, "province").set_index("province")
    assert out.loc["Sindh", "median_km"] == 2.0 and out.loc["Sindh", "n"] == 3
    assert out.loc["Punjab", "mean_km"] == 200.0 and out.loc["Punjab", "acc_200km"] == 0.5
    with pytest.raises(KeyError, match="urban"):
        per_group_summary(df, "urban")


def test_topk_accuracy_probs_and_ranked():
    probs = np.array([[0.1, 0.6, 0.3], [0.5, 0.2, 0.3], [0.2, 0.3, 0.5]])
    true = np.array([2, 0, 0])
    assert topk_accuracy(probs, true, 1) == pytest.approx(1 / 3)  # only sample 2
    assert topk_accuracy(probs, true, 2) == pytest.approx(2 / 3)  # sample 1 (2nd best) too
    assert topk_accuracy(probs, true, 3) == 1.0
    ranked = np.array([[1, 2, 0], [0, 2, 1], [2, 1, 0]])
    assert topk_accuracy(ranked, true, 2) == pytest.approx(2 / 3)


def test_confusion_and_per_class_accuracy():
    true, pred = [0, 0, 1, 1, 1, 6], [0, 1, 1, 1, 0, 6]
    np.testing.assert_array_equal(confusion_matrix(true, pred), sk_confusion_matrix(true, pred, labels=range(7)))
    acc = per_class_accuracy(true, pred)
    assert acc[0] == 0.5 and acc[1] == pytest.approx(2 / 3) and acc[6] == 1.0 and np.isnan(acc[2])
    cols = province_accuracy_columns(true, pred)
    assert list(cols)[:2] == ["sindh_acc", "punjab_acc"] and cols["ajk_acc"] == 1.0


def test_fit_temperature_binary_case_by_hand():
    # every sample has logits (2, 0); 75% are class 0. NLL is minimal where sigmoid(2 / T) = 0.75,
    # i.e. 2 / T = ln 3, T = 2 / ln 3 = 1.8205
    logits = np.tile([2.0, 0.0], (8, 1))
    labels = np.array([0, 0, 0, 0, 0, 0, 1, 1])
    assert fit_temperature(logits, labels) == pytest.approx(2 / math.log(3), rel=1e-3)
    assert nll(logits, labels, 1.0) == pytest.approx(-(0.75 * math.log(1 / (1 + math.exp(-2)))
                                                       + 0.25 * math.log(1 / (1 + math.exp(2)))))


def test_fit_temperature_recovers_overconfidence():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 1.5, (4000, 7))
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    labels = np.array([rng.choice(7, p=row) for row in p])
    t = fit_temperature(3.0 * z, labels)  # logits three times too sharp
    assert t == pytest.approx(3.0, rel=0.1)
    assert nll(3.0 * z, labels, t) <= min(nll(3.0 * z, labels, t * 0.95), nll(3.0 * z, labels, t * 1.05))


def test_ece_and_reliability_bins_by_hand():
    probs = np.array([[0.95, 0.05], [0.25, 0.75], [0.65, 0.35], [0.62, 0.38], [0.55, 0.45]])
    labels = np.array([0, 0, 0, 1, 1])  # right, wrong, right, wrong, wrong
    # bins: 0.95 -> |1 - 0.95|; 0.75 -> |0 - 0.75|; {0.65, 0.62} -> acc 0.5, conf 0.635; 0.55 -> 0.55
    want = (0.05 + 0.75 + 2 * 0.135 + 0.55) / 5
    assert expected_calibration_error(probs, labels) == pytest.approx(want)
    bins = reliability_bins(probs, labels)
    assert bins["n"].tolist() == [0, 0, 0, 0, 0, 1, 2, 1, 0, 1]
    assert bins.loc[6, "confidence"] == pytest.approx(0.635) and bins.loc[6, "accuracy"] == 0.5
    perfect = np.eye(3)
    assert expected_calibration_error(perfect, [0, 1, 2]) == 0.0


def test_radius_scale_and_coverage_by_hand():
    spread, errors = np.array([0.0, 1.0, 3.0, 9.0]), np.array([2.0, 2.0, 2.0, 2.0])
    # errors / (spread + 1 km floor) = 2, 1, 0.5, 0.2; sorted 0.2, 0.5, 1, 2
    assert fit_radius_scale(spread, errors, coverage=0.5) == 1.0  # rank 1.5 -> the higher one
    assert fit_radius_scale(spread, errors, coverage=0.8) == 2.0  # rank 2.4 -> 2.0
    radius = error_radius(spread, 1.0)
    np.testing.assert_array_equal(radius, [1.0, 2.0, 4.0, 10.0])
    assert coverage(radius, errors) == 0.75
    assert coverage(error_radius(spread, 2.0), errors) == 1.0
    rng = np.random.default_rng(1)
    s, e = rng.gamma(2, 10, 500), rng.gamma(2, 10, 500)
    assert coverage(error_radius(s, fit_radius_scale(s, e, 0.8)), e) >= 0.8  # at least the target on its own fit
    with pytest.raises(ValueError):
        fit_radius_scale(spread, errors, coverage=0.0)


def test_group_radius_scales_use_the_conformal_rank_and_fall_back_below_n_min():
    from geopak_lib.metrics import fit_group_radius_scales, group_error_radius

    # group 0: ratios 1..9 (spread 0, floor 1 -> ratio = error); n = 9, k = ceil(10 * 0.8) = 8 -> scale 8
    # group 1: ratios 10, 20, 30, 40; k = ceil(5 * 0.8) = 4 -> 40; group 2: 2 samples, k = ceil(2.4) = 3 > 2 -> left out
    err = np.r_[np.arange(1, 10), [10, 20, 30, 40], [5, 7]].astype(float)
    grp = np.r_[[0] * 9, [1] * 4, [2] * 2]
    spread = np.zeros_like(err)
    assert fit_group_radius_scales(spread, err, grp, coverage=0.8, n_min=1) == {0: 8.0, 1: 40.0}
    assert fit_group_radius_scales(spread, err, grp, coverage=0.8, n_min=5) == {0: 8.0}  # group 1 has 4 < 5 samples
    # spread shifts the ratio: error 6 with spread 2 -> ratio 6 / 3 = 2
    assert fit_group_radius_scales([2.0, 2.0], [6.0, 3.0], ["a", "a"], coverage=0.5, n_min=1) == {"a": 2.0}
    radius = group_error_radius([0.0, 1.0, 4.0], [0, 1, 2], {0: 8.0, 1: 40.0}, default_scale=3.0)
    np.testing.assert_allclose(radius, [8.0, 80.0, 15.0])  # group 2 takes the default: 3 * (4 + 1)
    with pytest.raises(ValueError):
        fit_group_radius_scales(spread, err, grp, coverage=1.0)
