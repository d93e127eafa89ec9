"""The error radius per predicted province (inference/calibration.py, analysis/calibration_fit.py): per-province scales hold
their coverage in each province where one global scale does not; the table by hand."""

import numpy as np
import pandas as pd
import pytest

from geopak_lib.analysis import calibration_fit
from geopak_lib.inference import calibration


def frame(n_sindh, n_balochistan, rng):
    """Sindh's errors are half-normal × (spread + 1); Balochistan's three times larger."""
    spread = rng.uniform(5, 100, n_sindh + n_balochistan)
    mult = np.r_[np.ones(n_sindh), 3 * np.ones(n_balochistan)]
    err = mult * (spread + 1) * np.abs(rng.normal(size=len(spread)))
    prov = np.r_[np.zeros(n_sindh, int), 5 * np.ones(n_balochistan, int)]
    logits = np.zeros((len(spread), 7))
    return pd.DataFrame({"spread_km": spread, "error_km": err, "province_pred": prov, "province_id": prov,
                         "province": np.where(prov == 0, "Sindh", "Balochistan"),
                         **{f"logit_{p}": logits[:, p] for p in range(7)}})


def test_per_province_scales_hold_coverage_in_each_province():
    rng = np.random.default_rng(0)
    val, test = frame(4000, 400, rng), frame(2000, 2000, rng)  # test spread evenly over the two provinces
    cal, _, radius = calibration_fit.fit_calibration(val, test)
    by, glob = cal["radius_scales_by_province"]["0.8"], cal["radius_scales"]["0.8"]
    assert by["0"] == glob > 1.2816  # Sindh's own scale (half-normal 80%: 1.2816) is below the global one
    assert by["5"] == pytest.approx(3 * 1.2816, rel=0.1)  # Balochistan's own, larger scale
    table = calibration_fit.province_coverage(test, cal)
    assert table.loc["Balochistan", "coverage, global scale"] < 0.6  # the global scale is mostly Sindh's
    assert table.loc["Balochistan", "coverage, per-province scale"] == pytest.approx(0.8, abs=0.03)
    assert table.loc["Sindh", "coverage, per-province scale"] == table.loc["Sindh", "coverage, global scale"] > 0.8
    assert table.loc["province-balanced", "coverage, per-province scale"] > 0.8
    assert table.loc["province-balanced", "n"] == 4000
    assert radius.loc[0.8, "test coverage, per-province scales"] > radius.loc[0.8, "test coverage"]


def test_small_provinces_are_pooled_and_scales_never_fall_below_the_global_one():
    # errors = ratios (spread 0, floor 1). Sindh: 1..20 -> own conformal scale: rank ceil(21 * 0.8) = 17 -> 17.
    # Balochistan 101..110 and Gilgit-Baltistan 111..120 have 10 images each (< 20): pooled, 20 images,
    # rank 17 -> 117. Global: np.quantile(method="higher") of all 40 at 0.8 -> index ceil(39 * 0.8) = 32 -> 113.
    err = np.r_[np.arange(1, 21), np.arange(101, 121)].astype(float)
    prov = np.r_[[0] * 20, [5] * 10, [4] * 10]
    val = pd.DataFrame({"spread_km": np.zeros(40), "error_km": err, "province_pred": prov})
    scales = calibration_fit.province_radius_scales(val, coverages=(0.8,))["0.8"]
    assert scales == {"0": 113.0, "5": 117.0, "4": 117.0}  # Sindh: max(113, 17); the pool: max(113, 117)


def test_province_with_few_validation_images_uses_the_global_scale():
    rng = np.random.default_rng(1)
    val = frame(200, 5, rng)  # 5 Balochistan images < PROVINCE_N_MIN
    cal = calibration_fit.fit_calibration(val, val)[0]
    assert set(cal["radius_scales_by_province"]["0.8"]) == {"0"}
    r = calibration.calibrated_radius([9.0, 9.0], [0, 5], cal)
    assert r[0] == pytest.approx(10 * cal["radius_scales_by_province"]["0.8"]["0"])
    assert r[1] == pytest.approx(10 * cal["radius_scales"]["0.8"])  # (spread 9 + floor 1) × the global scale


def test_province_coverage_by_hand():
    f = pd.DataFrame({"province": ["Sindh", "Sindh", "Punjab"], "province_pred": [0, 0, 1],
                      "spread_km": [1.0, 3.0, 1.0], "error_km": [3.0, 10.0, 3.0]})
    cal = {"radius_scales": {"0.8": 2.0}, "radius_scales_by_province": {"0.8": {"1": 1.0}}, "radius_floor_km": 1.0}
    t = calibration_fit.province_coverage(f, cal)
    # global radii 4, 8, 4 -> Sindh covers 1 of 2, Punjab 1 of 1; Punjab's own scale 1 -> radius 2 < 3
    assert t.loc["Sindh", "coverage, global scale"] == 0.5 and t.loc["Punjab", "coverage, global scale"] == 1.0
    assert t.loc["Punjab", "coverage, per-province scale"] == 0.0
    assert list(t.index) == ["Sindh", "Punjab", "province-balanced"]  # PROVINCES order, then the mean
    assert t.loc["province-balanced", "coverage, global scale"] == 0.75
