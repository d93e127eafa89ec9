"""Evaluation metrics (spec 000 §13, spec 002's wider thresholds): pure numpy.

Distances in km, probabilities in [0, 1], accuracies as fractions (not percent).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from geopak_lib import geo
from geopak_lib.constants import NUM_PROVINCES, PROVINCE_SHORT, PROVINCES

THRESHOLDS_KM = (1, 5, 25, 200, 750)


def error_km(pred_lat, pred_lon, true_lat, true_lon) -> np.ndarray:
    """Great-circle error per sample, km. Arrays (N,) in degrees."""
    return np.asarray(geo.haversine_km(np.asarray(pred_lat, float), np.asarray(pred_lon, float),
                                       np.asarray(true_lat, float), np.asarray(true_lon, float)))


def accuracy_within(errors_km, thresholds=THRESHOLDS_KM) -> dict:
    """{"acc_{t}km": fraction of errors <= t} for each threshold (NaN when there are no errors)."""
    e = np.asarray(errors_km, float)
    return {f"acc_{t:g}km": float(np.mean(e <= t)) if e.size else float("nan") for t in thresholds}


def summarize_errors(errors_km, thresholds=THRESHOLDS_KM) -> dict:
    """median_km, mean_km, p90_km, acc_*km and n of an array of errors (km)."""
    e = np.asarray(errors_km, float)
    stats = (np.median(e), e.mean(), np.percentile(e, 90)) if e.size else (float("nan"),) * 3
    out = dict(zip(("median_km", "mean_km", "p90_km"), map(float, stats)))
    return {**out, **accuracy_within(e, thresholds), "n": int(e.size)}


def per_group_summary(df: pd.DataFrame, group_col: str, error_col: str = "error_km",
                      thresholds=THRESHOLDS_KM) -> pd.DataFrame:
    """One summarize_errors row per value of ``group_col`` (e.g. province, urban/rural)."""
    for col in (group_col, error_col):
        if col not in df.columns:
            raise KeyError(f"per_group_summary: column {col!r} not in {list(df.columns)}")
    rows = [{group_col: g, **summarize_errors(grp[error_col], thresholds)}
            for g, grp in df.groupby(group_col, sort=True)]
    return pd.DataFrame(rows)


def topk_accuracy(probs_or_ranked, true, k: int) -> float:
    """Fraction of samples whose true class is among the top k.

    probs_or_ranked: (N, C) float scores, or (N, K) int class ids already ranked best first.
    """
    a, true = np.asarray(probs_or_ranked), np.asarray(true)
    ranked = a[:, :k] if np.issubdtype(a.dtype, np.integer) else np.argsort(-a, 1, kind="stable")[:, :k]
    return float(np.mean((ranked == true[:, None]).any(1)))


def confusion_matrix(true, pred, n_classes: int = NUM_PROVINCES) -> np.ndarray:
    """Counts (n_classes, n_classes): row = true class, column = predicted (sklearn's layout)."""
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(true, int), np.asarray(pred, int)), 1)
    return cm


def per_class_accuracy(true, pred, n_classes: int = NUM_PROVINCES) -> np.ndarray:
    """Recall per class (n_classes,), NaN for a class with no samples."""
    cm = confusion_matrix(true, pred, n_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.diag(cm) / cm.sum(1)


def province_accuracy_columns(true, pred) -> dict:
    """{"sindh_acc": ..., "punjab_acc": ..., ...} (spec 003 losses.csv columns), fractions."""
    acc = per_class_accuracy(true, pred, NUM_PROVINCES)
    return {f"{PROVINCE_SHORT[p]}_acc": float(a) for p, a in zip(PROVINCES, acc)}


def nll(logits, labels, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of softmax(logits / T). logits (N, C), labels (N,)."""
    z = np.asarray(logits, float) / temperature
    z = z - z.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    return float(-logp[np.arange(len(z)), np.asarray(labels, int)].mean())


TEMPERATURE_BOUNDS = (0.05, 20.0)


def temperature_at_bound(t: float, bounds=TEMPERATURE_BOUNDS, rel: float = 0.02) -> bool:
    """True when a fitted T lies within ``rel`` (in log scale: 2%) of an end of its search range:
    the logits then carry (almost) no information about which class is right, or too much."""
    lo, hi = np.log(bounds)
    return bool(np.log(t) < lo + rel * (hi - lo) or np.log(t) > hi - rel * (hi - lo))


def fit_temperature(logits, labels, bounds=TEMPERATURE_BOUNDS) -> float:
    """Temperature T minimising validation NLL of softmax(logits / T) (bounded 1-D search on log T).

    NLL is convex in 1/T, hence unimodal in log T, so a bounded scalar search finds the minimum.
    """
    from scipy.optimize import minimize_scalar

    res = minimize_scalar(lambda s: nll(logits, labels, np.exp(s)), bounds=np.log(bounds), method="bounded",
                          options={"xatol": 1e-5})
    return float(np.exp(res.x))


def reliability_bins(probs, labels, n_bins: int = 10) -> pd.DataFrame:
    """Confidence (max prob) vs accuracy in equal-width bins (lo, hi]; columns bin_lo, bin_hi, n,
    confidence, accuracy (NaN for empty bins)."""
    p = np.asarray(probs, float)
    conf, correct = p.max(1), p.argmax(1) == np.asarray(labels, int)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)  # (lo, hi]
    rows = []
    for b in range(n_bins):
        m = idx == b
        rows.append({"bin_lo": edges[b], "bin_hi": edges[b + 1], "n": int(m.sum()),
                     "confidence": conf[m].mean() if m.any() else np.nan,
                     "accuracy": correct[m].mean() if m.any() else np.nan})
    return pd.DataFrame(rows)


def expected_calibration_error(probs, labels, n_bins: int = 10) -> float:
    """ECE = sum_b |B_b| / N * |accuracy_b - confidence_b| over equal-width confidence bins."""
    bins = reliability_bins(probs, labels, n_bins)
    full = bins[bins["n"] > 0]
    return float((full["n"] * (full["accuracy"] - full["confidence"]).abs()).sum() / bins["n"].sum())


def error_radius(spread_km, scale: float, floor_km: float = 1.0) -> np.ndarray:
    """Calibrated error radius, km: scale * (spread_km + floor_km); the floor keeps it > 0."""
    return scale * (np.asarray(spread_km, float) + floor_km)


def fit_radius_scale(spread_km, errors_km, coverage: float = 0.8, floor_km: float = 1.0) -> float:
    """Scale s such that errors <= s * (spread + floor) for a ``coverage`` fraction of validation samples.

    s is the ``coverage`` quantile of errors / (spread + floor), taken with method "higher" so the
    fitted set's coverage is at least the target.
    """
    if not 0.0 < coverage <= 1.0:
        raise ValueError(f"coverage must be in (0, 1], got {coverage}")
    ratio = np.asarray(errors_km, float) / (np.asarray(spread_km, float) + floor_km)
    return float(np.quantile(ratio, coverage, method="higher"))


def coverage(radius_km, errors_km) -> float:
    """Fraction of samples whose error is within their radius (km)."""
    return float(np.mean(np.asarray(errors_km, float) <= np.asarray(radius_km, float)))


def fit_group_radius_scales(spread_km, errors_km, group, *, coverage: float = 0.8, floor_km: float = 1.0,
                            n_min: int = 20) -> dict:
    """Group-conditional radius scales: {group: scale} for each group with at least ``n_min`` samples.

    Within a group of n samples the scale is the k-th smallest ratio error / (spread + floor) with
    k = ceil((n + 1) × coverage), the split-conformal rank that keeps the group's coverage on new
    exchangeable data at least ``coverage``; a group where k > n (too few samples for that coverage)
    is left out, like a group under n_min. Left-out groups use the global scale (see group_error_radius).
    spread_km, errors_km, group: (N,).
    """
    if not 0.0 < coverage < 1.0:
        raise ValueError(f"coverage must be in (0, 1), got {coverage}")
    ratio = np.asarray(errors_km, float) / (np.asarray(spread_km, float) + floor_km)
    group = np.asarray(group)
    scales = {}
    for g in np.unique(group):
        r = np.sort(ratio[group == g])
        k = int(np.ceil((len(r) + 1) * coverage - 1e-9))
        if len(r) >= n_min and k <= len(r):
            scales[g.item() if hasattr(g, "item") else g] = float(r[k - 1])
    return scales


def group_error_radius(spread_km, group, scales: dict, default_scale: float, *, floor_km: float = 1.0) -> np.ndarray:
    """Error radius (km) with each sample's group scale, ``default_scale`` for groups not in ``scales``.
    spread_km, group (N,) -> (N,)."""
    s = np.array([scales.get(g, default_scale) for g in np.asarray(group).tolist()], float)
    return s * (np.asarray(spread_km, float) + floor_km)
