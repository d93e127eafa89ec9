"""The evaluation report's computations (06_evaluation): per-sample predictions of the mixture and
its ablations, headline figures, urban/rural, calibration of confidence and error radius, TTA.

Every headline figure comes from the model's own predicted provinces and cells. Columns that use
a true label (``true_province_*``, ``true_cell_*``) are diagnostics and are labelled so wherever
they are shown. Plots and maps: eval_plots.py. Decisions: docs/decisions/evaluation.md.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from geopak_lib import geo
from geopak_lib.constants import NUM_PROVINCES, PROVINCES
from geopak_lib.data.places import nearest_town, pakistan_towns
from geopak_lib.training.cache import manifest_hash, spherical_mean
from geopak_lib.model.inference import argmax_predict, aux_predict, cell_conditional_probs, hypothesis_points, mixture_predict
from geopak_lib.metrics import (coverage, error_km, error_radius, expected_calibration_error, fit_radius_scale, fit_temperature,
                      nll, per_class_accuracy, per_group_summary, reliability_bins, summarize_errors)
from geopak_lib.evaluation.predictor import RADIUS_FLOOR_KM, outputs_to

METHODS = {  # column prefix -> what the ablation table calls it
    "mixture": "GEOPAK mixture (top-2 provinces × top-5 cells)",
    "argmax": "argmax province → argmax cell + offset",
    "aux": "auxiliary regression head alone",
    "province_centroid": "centroid of the predicted province (training samples)",
    "train_centroid": "baseline: training-set centroid",
}
DIAGNOSTICS = {
    "true_province": "mixture within the TRUE province (diagnostic: uses the true label; not a prediction)",
    "true_cell": "TRUE cell centre + offset (diagnostic: uses the true label; not a prediction)",
}
BASELINE_NAMES = {"train_centroid": "baseline: training-set centroid",
                  "province_centroid": "baseline: centroid of phase-1's predicted province",
                  "knn": "baseline: kNN on frozen features"}
COVERAGES = (0.5, 0.8, 0.95)
URBAN_MIN_POPULATION = 100_000
URBAN_RADIUS_KM = 10.0


# --- model outputs for a split ----------------------------------------------------------------

def split_outputs(predictor, table: pd.DataFrame, split: str, tta: bool = False, batch_size: int = 64,
                  num_workers: int = 0, progress: bool = True) -> dict:
    """Model outputs (CPU) for every ``split`` row of ``table`` (image_path column), in table order."""
    rows = table[table["split"] == split]
    saved, predictor.tta = predictor.tta, tta
    try:
        out, ok, errors = predictor.raw_outputs(rows["image_path"].tolist(), batch_size, progress, num_workers)
    finally:
        predictor.tta = saved
    if errors:
        i, msg = next(iter(errors.items()))
        raise ValueError(f"{len(errors)} {split} images could not be read (e.g. {rows['image_path'].iloc[i]}: {msg}); "
                         "the manifest from 00_data_audit lists only readable images: re-run it")
    return out


def cell_ranking(model, outputs: dict, k: int = 5) -> np.ndarray:
    """Global cell ids ranked by P(province) × P(cell | province), best first: (B, k)."""
    p_province = torch.softmax(outputs["province_logits"], -1)[:, model.cell_province_id]  # (B, N)
    joint = p_province * cell_conditional_probs(model, outputs)
    return joint.topk(min(k, joint.shape[1]), -1).indices.cpu().numpy()


def _true_province_outputs(outputs: dict, province_id: torch.Tensor) -> dict:
    """Outputs whose province head is certain of the true province (for the diagnostic)."""
    logits = torch.full_like(outputs["province_logits"], -1e4)
    logits[torch.arange(len(logits)), province_id] = 0.0
    return {**outputs, "province_logits": logits}


@torch.no_grad()
def predictions_frame(model, outputs: dict, rows: pd.DataFrame, train: pd.DataFrame, top_provinces: int = 2,
                      top_cells: int = 5) -> pd.DataFrame:
    """Per sample: truth, the mixture (lat, lon, error_km, province_pred, confidence, spread_km),
    the ablations and the diagnostics as ``<method>_lat/_lon/_error_km``, cell ranks, α and the
    province logits (``logit_0..6``). rows: the split's table rows (latitude, longitude,
    province_id, cell_id), aligned with outputs; train: training rows (for province centroids)."""
    device = next(model.parameters()).device
    out = outputs_to(outputs, device)
    prov = torch.tensor(rows["province_id"].to_numpy(int), device=device)
    mix = mixture_predict(model, out, top_provinces, top_cells)
    arg, aux = argmax_predict(model, out), aux_predict(out)
    diag = mixture_predict(model, _true_province_outputs(out, prov), 1, top_cells)
    cell = torch.tensor(rows["cell_id"].to_numpy(int), device=device)
    tc_lat, tc_lon = hypothesis_points(model, out["fused"], cell.clamp(min=0).unsqueeze(1))
    np_ = lambda t: t.detach().cpu().numpy()  # noqa: E731
    f = rows[["id", "image_path", "province", "province_id", "cell_id", "latitude", "longitude"]].reset_index(drop=True)
    f["province_pred"], f["confidence"] = np_(mix["province_id"]), np_(mix["confidence"])
    f["spread_km"], f["alpha"] = np_(mix["spread_km"]), np_(out["alpha"])
    ranked = cell_ranking(model, out, 5)
    f["cell_pred"], f["cell_in_top5"] = ranked[:, 0], (ranked == f["cell_id"].to_numpy()[:, None]).any(1)
    cents = province_centroids(train)
    t_lat, t_lon = spherical_mean(train["latitude"].to_numpy(float), train["longitude"].to_numpy(float))
    pts = {"mixture": (mix["lat"], mix["lon"]), "train_centroid": (np.full(len(f), t_lat), np.full(len(f), t_lon)),
           "argmax": (arg["lat"], arg["lon"]), "aux": (aux["lat"], aux["lon"]),
           "province_centroid": (cents[f["province_pred"], 0], cents[f["province_pred"], 1]),
           "true_province": (diag["lat"], diag["lon"]), "true_cell": (tc_lat[:, 0], tc_lon[:, 0])}
    for name, (la, lo) in pts.items():
        la, lo = (np_(v) if isinstance(v, torch.Tensor) else v for v in (la, lo))
        f[f"{name}_lat"], f[f"{name}_lon"] = la, lo
        f[f"{name}_error_km"] = error_km(la, lo, f["latitude"], f["longitude"])
    f.loc[f["cell_id"] < 0, ["true_cell_lat", "true_cell_lon", "true_cell_error_km"]] = np.nan
    f["error_km"] = f["mixture_error_km"]
    logits = np_(out["province_logits"])
    for p in range(NUM_PROVINCES):
        f[f"logit_{p}"] = logits[:, p]
    return f


def province_logits(frame: pd.DataFrame) -> np.ndarray:
    return frame[[f"logit_{p}" for p in range(NUM_PROVINCES)]].to_numpy(float)


def province_centroids(train: pd.DataFrame) -> np.ndarray:
    """(7, 2) spherical mean (lat, lon) of each province's training samples; the overall training
    centroid for a province without training samples."""
    lat, lon = train["latitude"].to_numpy(float), train["longitude"].to_numpy(float)
    out = np.tile(np.array(spherical_mean(lat, lon), float), (NUM_PROVINCES, 1))
    for p in range(NUM_PROVINCES):
        m = train["province_id"].to_numpy(int) == p
        if m.any():
            out[p] = spherical_mean(lat[m], lon[m])
    return out


# --- tables ------------------------------------------------------------------------------------

def headline(frame: pd.DataFrame) -> dict:
    """median/mean/p90 km, accuracy within 1/5/25/200/750 km, province accuracy, cell top-1/top-5."""
    s = summarize_errors(frame["error_km"].to_numpy(float))
    has_cell = frame["cell_id"] >= 0
    return {**s, "province_acc": float((frame["province_pred"] == frame["province_id"]).mean()),
            "cell_top1_acc": float((frame["cell_pred"] == frame["cell_id"])[has_cell].mean()),
            "cell_top5_acc": float(frame["cell_in_top5"][has_cell].mean())}


def method_table(frame: pd.DataFrame, methods: dict, extra: dict | None = None,
                 baselines: pd.DataFrame | None = None) -> pd.DataFrame:
    """One summarize_errors row per method (frame columns ``<key>_error_km``), plus ``extra``
    {name: errors} and ``baselines`` (rows of features.baseline_errors), sorted by median."""
    rows = [{"method": label, **summarize_errors(frame[f"{key}_error_km"].to_numpy(float))}
            for key, label in methods.items()]
    rows += [{"method": name, **summarize_errors(np.asarray(e, float))} for name, e in (extra or {}).items()]
    if baselines is not None and len(baselines):
        b = baselines[baselines["method"] != "train_centroid"].copy()  # computed here already
        b["method"] = b["method"].map(lambda m: BASELINE_NAMES.get(m, f"baseline: {m}"))
        rows += b.to_dict("records")
    return pd.DataFrame(rows).sort_values("median_km", kind="stable").set_index("method")


def province_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per true province: n, error figures of the mixture, and province recall."""
    t = per_group_summary(frame, "province")
    recall = per_class_accuracy(frame["province_id"], frame["province_pred"])
    t["province_recall"] = [recall[PROVINCES.index(p)] for p in t["province"]]
    order = {p: i for i, p in enumerate(PROVINCES)}
    return t.sort_values("province", key=lambda c: c.map(order)).set_index("province")


def urban_rural(lat, lon, min_population: int = URBAN_MIN_POPULATION,
                radius_km: float = URBAN_RADIUS_KM) -> pd.DataFrame:
    """'urban' within radius_km of a GeoNames town of min_population+ people, else 'rural'.
    Returns town, town_km, setting (N rows)."""
    name, dist = nearest_town(lat, lon, pakistan_towns(min_population))
    return pd.DataFrame({"town": name, "town_km": dist, "setting": np.where(dist <= radius_km, "urban", "rural")})


# --- calibration ---------------------------------------------------------------------------------

def _softmax(z):
    z = np.asarray(z, float) - np.max(z, 1, keepdims=True)
    return np.exp(z) / np.exp(z).sum(1, keepdims=True)


def temperature_calibration(val_logits, val_labels, test_logits, test_labels, n_bins: int = 10) -> dict:
    """Fit T on validation; ECE/NLL on test before (T = 1) and after. Returns temperature, ece_before,
    ece_after, nll_before, nll_after, bins_before, bins_after (reliability_bins frames, test)."""
    t = fit_temperature(val_logits, val_labels)
    before, after = _softmax(test_logits), _softmax(np.asarray(test_logits, float) / t)
    return {"temperature": t, "ece_before": expected_calibration_error(before, test_labels, n_bins),
            "ece_after": expected_calibration_error(after, test_labels, n_bins),
            "nll_before": nll(test_logits, test_labels), "nll_after": nll(test_logits, test_labels, t),
            "bins_before": reliability_bins(before, test_labels, n_bins),
            "bins_after": reliability_bins(after, test_labels, n_bins)}


def radius_calibration(val_spread, val_err, test_spread, test_err, coverages=COVERAGES,
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


def fit_calibration(val: pd.DataFrame, test: pd.DataFrame, coverages=COVERAGES):
    """Temperature (province confidence) and radius scales fitted on val, checked on test.
    Returns (calibration dict for predict.save_calibration, temperature report, radius table)."""
    temp = temperature_calibration(province_logits(val), val["province_id"], province_logits(test), test["province_id"])
    scales, radius = radius_calibration(val["spread_km"], val["error_km"], test["spread_km"], test["error_km"],
                                        coverages)
    cal = {"temperature": temp["temperature"], "radius_scales": scales, "fitted_on": "val", "n_val": len(val),
           "test_ece_before": temp["ece_before"], "test_ece_after": temp["ece_after"],
           "test_coverage": {str(c): float(v) for c, v in radius["test coverage"].items()}}
    return cal, temp, radius


def tta_comparison(plain: pd.DataFrame, tta: pd.DataFrame) -> pd.DataFrame:
    """Headline figures without and with test-time augmentation, same images."""
    return pd.DataFrame([{"predictor": "single view", **headline(plain)},
                         {"predictor": "TTA (5 views)", **headline(tta)}]).set_index("predictor")


def province_names(ids) -> list[str]:
    return [PROVINCES[int(i)] for i in ids]


def read_baselines(run_dir) -> pd.DataFrame | None:
    """baselines_test.csv written by 03_phase1_geography, or None."""
    path = Path(run_dir) / "baselines_test.csv"
    return pd.read_csv(path) if path.is_file() else None
