"""Fitting the calibration on validation and checking it on test (06_evaluation): temperature for
the province confidence, global and per-province radius scales. The record it makes, and how the predictor
applies it: geopak_lib/inference/calibration.py. Decisions: docs/decisions/evaluation.md."""

from __future__ import annotations

import numpy as np
import pandas as pd

from geopak_lib.constants import NUM_PROVINCES, PROVINCES
from geopak_lib.inference.calibration import RADIUS_COVERAGE, RADIUS_FLOOR_KM, SMALL_PROVINCES, calibrated_radius
from geopak_lib.metrics import (coverage, error_radius, expected_calibration_error, fit_group_radius_scales,
                                fit_radius_scale, fit_temperature, nll, reliability_bins)
from geopak_lib.utils import softmax


COVERAGES = (0.5, 0.8, 0.95)


PROVINCE_N_MIN = 20  # validation images a predicted province needs for its own radius scale


def province_logits(frame: pd.DataFrame) -> np.ndarray:
    return frame[[f"logit_{p}" for p in range(NUM_PROVINCES)]].to_numpy(float)


def temperature_calibration(val_logits, val_labels, test_logits, test_labels, *, n_bins: int = 10) -> dict:
    """Fit T on validation; ECE/NLL on test before (T = 1) and after. Returns temperature, ece_before,
    ece_after, nll_before, nll_after, bins_before, bins_after (reliability_bins frames, test)."""
    t = fit_temperature(val_logits, val_labels)
    before, after = softmax(test_logits), softmax(np.asarray(test_logits, float) / t)
    return {"temperature": t, "ece_before": expected_calibration_error(before, test_labels, n_bins),
            "ece_after": expected_calibration_error(after, test_labels, n_bins),
            "nll_before": nll(test_logits, test_labels), "nll_after": nll(test_logits, test_labels, t),
            "bins_before": reliability_bins(before, test_labels, n_bins),
            "bins_after": reliability_bins(after, test_labels, n_bins)}


def radius_calibration(val_spread, val_err, test_spread, test_err, *, coverages=COVERAGES,
                       floor_km: float = RADIUS_FLOOR_KM):
    """Fit one radius scale per target coverage on validation; measure coverage on test.
    Returns ({str(coverage): scale}, table: target, scale, val coverage, test coverage, median radius km)."""
    scales, rows = {}, []
    for c in coverages:
        s = fit_radius_scale(val_spread, val_err, c, floor_km)
        r_test = error_radius(test_spread, s, floor_km)
        scales[str(c)] = s
        rows.append({"target coverage": c, "scale": s,
                     "val coverage": coverage(error_radius(val_spread, s, floor_km), val_err),
                     "test coverage": coverage(r_test, test_err), "test median radius km": float(np.median(r_test))})
    return scales, pd.DataFrame(rows).set_index("target coverage")


def province_radius_scales(val: pd.DataFrame, coverages=COVERAGES, n_min: int = PROVINCE_N_MIN,
                           floor_km: float = RADIUS_FLOOR_KM) -> dict:
    """{str(coverage): {str(predicted province_id): scale}} fitted on val (spread_km, error_km,
    province_pred). A predicted province with at least n_min validation images is its own group; the
    others are pooled into one group. Each group's scale is its split-conformal scale
    (metrics.fit_group_radius_scales), but never below the global one: the radius is a promise of at
    least the coverage, and the global scale already keeps it where a group's own is lower. A group
    too small even when pooled keeps the global scale (docs/decisions/refinement.md)."""
    pred = val["province_pred"].to_numpy(int)
    counts = pd.Series(pred).value_counts()
    group = np.where(np.isin(pred, counts.index[counts >= n_min]), pred.astype(str), SMALL_PROVINCES)
    out = {}
    for c in coverages:
        glob = fit_radius_scale(val["spread_km"], val["error_km"], c, floor_km)
        own = fit_group_radius_scales(val["spread_km"], val["error_km"], group, coverage=c, floor_km=floor_km,
                                      n_min=n_min)
        scale = {g: max(glob, s) for g, s in own.items()}
        out[str(c)] = {str(p): scale[g] for p, g in dict(zip(pred.tolist(), group.tolist())).items() if g in scale}
    return out


def fit_calibration(val: pd.DataFrame, test: pd.DataFrame, *, coverages=COVERAGES, n_min: int = PROVINCE_N_MIN,
                    fitted_on: str = "val"):
    """Temperature (province confidence), global radius scales and per-province radius scales,
    fitted on ``val`` (named by ``fitted_on`` in the record: 06 passes the calibration part of
    validation, which no choice saw), checked on test.
    Returns (calibration dict for save_calibration, temperature report, radius table)."""
    temp = temperature_calibration(province_logits(val), val["province_id"], province_logits(test), test["province_id"])
    scales, radius = radius_calibration(val["spread_km"], val["error_km"], test["spread_km"], test["error_km"],
                                        coverages=coverages)
    cal = {"temperature": temp["temperature"], "radius_scales": scales, "fitted_on": fitted_on, "n_val": len(val),
           "n_val_blocks": int(val["block_id"].nunique()) if "block_id" in val.columns else len(val),
           "radius_scales_by_province": province_radius_scales(val, coverages, n_min), "province_n_min": n_min,
           "test_ece_before": temp["ece_before"], "test_ece_after": temp["ece_after"],
           "test_coverage": {str(c): float(v) for c, v in radius["test coverage"].items()}}
    radius["test coverage, per-province scales"] = [
        coverage(calibrated_radius(test["spread_km"], test["province_pred"], cal, c), test["error_km"])
        for c in radius.index]
    return cal, temp, radius


def province_coverage(frame: pd.DataFrame, calibration: dict, coverage_target: float = RADIUS_COVERAGE) -> pd.DataFrame:
    """Coverage of the radius at ``coverage_target`` per TRUE province of ``frame`` (e.g. test), with
    the global scale and with the per-province scales, and their median radii; a last row
    'province-balanced' averages the provinces equally (what a set spread evenly over provinces sees)."""
    f = frame.assign(r_global=error_radius(frame["spread_km"], calibration["radius_scales"][str(coverage_target)],
                                           calibration.get("radius_floor_km", RADIUS_FLOOR_KM)),
                     r_province=calibrated_radius(frame["spread_km"], frame["province_pred"], calibration,
                                                  coverage_target))
    rows = [{"province": p, "n": len(g), "coverage, global scale": coverage(g["r_global"], g["error_km"]),
             "coverage, per-province scale": coverage(g["r_province"], g["error_km"]),
             "median radius km, global": float(g["r_global"].median()),
             "median radius km, per-province": float(g["r_province"].median())}
            for p, g in f.groupby("province", sort=False)]
    order = {p: i for i, p in enumerate(PROVINCES)}
    t = pd.DataFrame(rows).sort_values("province", key=lambda c: c.map(order)).set_index("province")
    t = t.astype({"n": float})
    t.loc["province-balanced"] = t.mean()
    t.loc["province-balanced", "n"] = t["n"].iloc[:-1].sum()
    return t.astype({"n": int})
