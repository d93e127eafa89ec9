"""The evaluation report's computations (06_evaluation): per-sample predictions of the mixture and
its ablations, the headline figures, the method table and the TTA comparison.

Every headline figure comes from the model's own predicted provinces and cells. Columns that use
a true label (``true_province_*``, ``true_cell_*``) are diagnostics and are labelled so wherever
they are shown. Plots and maps: geopak_lib/book/figures.py. Decisions: docs/decisions/evaluation.md.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from geopak_lib import geo
from geopak_lib.constants import NUM_PROVINCES
from geopak_lib.analysis.baselines import province_centroids
from geopak_lib.analysis.concepts_eval import concept_frame
from geopak_lib.metrics import error_km, summarize_errors
from geopak_lib.model.inference import (argmax_predict, aux_predict, cell_conditional_probs, hypothesis_points,
                                        mixture_predict, outputs_to)
from geopak_lib.training.passes import PassSettings, model_outputs
from geopak_lib.utils import pick_device

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


# --- model outputs for a split ----------------------------------------------------------------

def split_frame(model, data, split: str, *, source: str = "cache", batch_size: int = 256, device="cpu",
                top_provinces: int = 2, top_cells: int = 5, num_workers: int = 0, progress: bool = False):
    """predictions_frame for the ``split`` rows of data (a TrainData), the model run through the
    trainer's own pass: source 'cache' (heads on frozen features) or 'images' (encoders inside)."""
    device = pick_device(device)
    model.to(device)
    rows = data.rows(split)
    settings = PassSettings(source=source, batch_size=batch_size, num_workers=num_workers)
    outputs = model_outputs(model, data, rows, settings, device=device, progress=progress)
    return predictions_frame(model, outputs, data.table.iloc[rows], data.table.iloc[data.rows("train")],
                             top_provinces=top_provinces, top_cells=top_cells)


def split_outputs(predictor, table: pd.DataFrame, split: str, *, tta: bool = False, batch_size: int = 64,
                  num_workers: int = 0, progress: bool = True, identity: dict | None = None) -> dict:
    """Model outputs (CPU) for every ``split`` row of ``table`` (image_path column), in table order.
    identity (with tta): the same rows' plain outputs, reused as the identity view."""
    rows = table[table["split"] == split]
    saved, predictor.tta = predictor.tta, tta
    try:
        out, ok, errors = predictor.raw_outputs(rows["image_path"].tolist(), batch_size=batch_size, progress=progress,
                                                num_workers=num_workers,
                                                identity=identity)
    finally:
        predictor.tta = saved
    if errors:
        i, msg = next(iter(errors.items()))
        raise ValueError(f"{len(errors)} {split} images could not be read (e.g. {rows['image_path'].iloc[i]}: {msg}); "
                         "the manifest from 00_data_audit lists only readable images: re-run it")
    return out


def predictor_frames(predictor, table: pd.DataFrame, *, splits=("val", "test"), tta: bool = False,
                     batch_size: int = 64, num_workers: int = 0, plain: dict | None = None) -> dict:
    """{split: predictions_frame} through the predictor (what `geopak predict` computes). plain
    (with tta): {split: outputs without TTA} already computed, so the identity view is not re-run."""
    train = table[table["split"] == "train"]
    return {s: predictions_frame(predictor.model, split_outputs(predictor, table, s, tta=tta, batch_size=batch_size,
                                                                num_workers=num_workers,
                                                                identity=(plain or {}).get(s) if tta else None),
                                 table[table["split"] == s], train, top_provinces=predictor.top_provinces,
                                 top_cells=predictor.top_cells)
            for s in splits}


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
def predictions_frame(model, outputs: dict, rows: pd.DataFrame, train: pd.DataFrame, *, top_provinces: int = 2,
                      top_cells: int = 5) -> pd.DataFrame:
    """Per sample: truth, the mixture (lat, lon, error_km, province_pred, confidence, spread_km),
    the ablations and the diagnostics as ``<method>_lat/_lon/_error_km``, cell ranks, α and the
    province logits (``logit_0..6``), and with concept heads concepts_eval.concept_frame's columns. rows: the split's table rows (latitude, longitude,
    province_id, cell_id), aligned with outputs; train: training rows (for province centroids)."""
    device = next(model.parameters()).device
    out = outputs_to(outputs, device)
    prov = torch.tensor(rows["province_id"].to_numpy(int), device=device)
    mix = mixture_predict(model, out, top_provinces=top_provinces, top_cells=top_cells)
    arg, aux = argmax_predict(model, out), aux_predict(out)
    diag = mixture_predict(model, _true_province_outputs(out, prov), top_provinces=1, top_cells=top_cells)
    cell = torch.tensor(rows["cell_id"].to_numpy(int), device=device)
    tc_lat, tc_lon = hypothesis_points(model, out["fused"], cell.clamp(min=0).unsqueeze(1))
    np_ = lambda t: t.detach().cpu().numpy()  # noqa: E731
    keep = ["id", "image_path", "province", "province_id", "cell_id", "latitude", "longitude"]
    keep += [c for c in ("block_id",) if c in rows.columns]  # the block bootstrap resamples blocks
    f = rows[keep].reset_index(drop=True)
    f["province_pred"], f["confidence"] = np_(mix["province_id"]), np_(mix["confidence"])
    f["spread_km"], f["alpha"] = np_(mix["spread_km"]), np_(out["alpha"])
    ranked = cell_ranking(model, out, 5)
    f["cell_pred"], f["cell_in_top5"] = ranked[:, 0], (ranked == f["cell_id"].to_numpy()[:, None]).any(1)
    cents = province_centroids(train["latitude"], train["longitude"], train["province_id"])
    t_lat, t_lon = geo.spherical_mean(train["latitude"].to_numpy(float), train["longitude"].to_numpy(float))
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
    return f.join(concept_frame(model, out, rows))  # <concept>_pred, _p, _true with concept heads


# --- tables ------------------------------------------------------------------------------------

def headline(frame: pd.DataFrame) -> dict:
    """median/mean/p90 km, accuracy within 1/5/25/200/750 km, province accuracy, cell top-1/top-5."""
    s = summarize_errors(frame["error_km"].to_numpy(float))
    has_cell = frame["cell_id"] >= 0
    return {**s, "province_acc": float((frame["province_pred"] == frame["province_id"]).mean()),
            "cell_top1_acc": float((frame["cell_pred"] == frame["cell_id"])[has_cell].mean()),
            "cell_top5_acc": float(frame["cell_in_top5"][has_cell].mean())}


INTERVAL_COLUMNS = ["median 95% lo", "median 95% hi", "Δ median vs mixture km", "Δ 95% lo", "Δ 95% hi"]


def _intervals(errors, mixture, blocks, seed: int) -> dict:
    """The median's 95% block-bootstrap interval, and the paired interval of its difference from
    the mixture on the same resampled images (negative: better than the mixture)."""
    from geopak_lib import bootstrap

    med = bootstrap.block_ci(np.median, errors, blocks=blocks, seed=seed)
    diff = bootstrap.paired_median_diff(mixture, errors, blocks=blocks, seed=seed)
    return dict(zip(INTERVAL_COLUMNS, (med.lo, med.hi, diff.value, diff.lo, diff.hi)))


def method_table(frame: pd.DataFrame, methods: dict, *, extra: dict | None = None,
                 baselines: pd.DataFrame | None = None, seed: int = 0) -> pd.DataFrame:
    """One summarize_errors row per method (frame columns ``<key>_error_km``), plus ``extra``
    {name: errors} and ``baselines`` (03's per-image baseline errors: id and ``<m>_error_km``; or,
    from a run made before those were kept, the summary rows of baselines.baseline_errors), sorted
    by median. With a ``block_id`` column every row whose errors are per test image gets
    INTERVAL_COLUMNS (_intervals); rows on other images (the multi-view places) or with summaries
    only get none."""
    blocks = frame["block_id"].to_numpy() if "block_id" in frame.columns else None
    mixture = frame["mixture_error_km"].to_numpy(float) if "mixture_error_km" in frame.columns else None

    def row(name, errors, aligned=True):
        e = np.asarray(errors, float)
        ci = _intervals(e, mixture, blocks, seed) if aligned and blocks is not None and mixture is not None else {}
        return {"method": name, **summarize_errors(e), **ci}

    rows = [row(label, frame[f"{key}_error_km"]) for key, label in methods.items()]
    rows += [row(name, e, isinstance(e, pd.Series) and e.index.equals(frame.index)) for name, e in (extra or {}).items()]
    if baselines is not None and len(baselines) and "id" in baselines.columns:
        b = baselines.set_index(baselines["id"].astype(str)).reindex(frame["id"].astype(str))
        for m, name in BASELINE_NAMES.items():
            col = f"{m}_error_km"
            if m != "train_centroid" and col in b.columns and b[col].notna().all():  # train centroid: computed here
                rows.append(row(name, b[col].to_numpy(float)))
    elif baselines is not None and len(baselines):
        b = baselines[baselines["method"] != "train_centroid"].copy()  # computed here already
        b["method"] = b["method"].map(lambda m: BASELINE_NAMES.get(m, f"baseline: {m}"))
        rows += b.to_dict("records")
    return pd.DataFrame(rows).sort_values("median_km", kind="stable").set_index("method")


def tta_comparison(plain: pd.DataFrame, tta: pd.DataFrame) -> pd.DataFrame:
    """Headline figures without and with test-time augmentation, same images."""
    return pd.DataFrame([{"predictor": "single view", **headline(plain)},
                         {"predictor": "TTA (5 views)", **headline(tta)}]).set_index("predictor")


