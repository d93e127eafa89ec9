"""Fitting refinement inside the cells (06_evaluation): the gallery built from training images,
the settings chosen on validation, the adoption rule. The record and how it is applied:
geopak_lib/inference/refinement.py. Decisions: docs/decisions/refinement.md."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from geopak_lib import geo
from geopak_lib.bootstrap import adopt
from geopak_lib.inference.refinement import (RefineSettings, mixture_numpy, refine_prediction, refined_predict,
                                             save_gallery)
from geopak_lib.metrics import error_km, summarize_errors
from geopak_lib.model.refine import Gallery

# The grid 06_evaluation searches on validation: both gallery kinds, best image vs top-5, half or
# full step, weights kept or re-scored (docs/decisions/refinement.md has the measurements).
SELECTION_GRID = tuple(RefineSettings(kind, k, 0.05, step, rescore) for kind in ("images", "prototypes")
                       for k in (1, 5) for step in (0.5, 1.0) for rescore in (None, 0.1))

EMBEDDINGS_FROM = {"cache": "the feature cache of these very encoders",
                   "clip_cache": "the feature cache (CLIP slot, frozen) and the images through the tuned scene encoder",
                   "images": "the images through the model"}


def prototypes(embedding, lat, lon, cell_id, *, min_cluster_size: int = 3):
    """Per cell, HDBSCAN on the images' positions (km, local plane): each cluster becomes one item
    (mean embedding of unit rows, spherical mean position); unclustered images stay single items.
    (M, D), (M,) x 3 -> embedding (P, D), lat, lon, cell_id (P,)."""
    import hdbscan

    emb = embedding / np.maximum(np.linalg.norm(embedding, axis=1, keepdims=True), 1e-12)
    out = ([], [], [], [])
    for c in np.unique(cell_id[cell_id >= 0]):
        idx = np.flatnonzero(cell_id == c)
        labels = np.full(len(idx), -1)
        if len(idx) > min_cluster_size:
            north = (lat[idx] - lat[idx].mean()) * geo.KM_PER_DEG_LAT
            east = (lon[idx] - lon[idx].mean()) * geo.KM_PER_DEG_LAT * np.cos(np.radians(lat[idx].mean()))
            labels = hdbscan.HDBSCAN(min_cluster_size=min_cluster_size).fit_predict(np.c_[north, east])
        groups = [idx[labels == g] for g in np.unique(labels[labels >= 0])] + [idx[[i]] for i in
                                                                             np.flatnonzero(labels < 0)]
        for g in groups:
            la, lo = geo.spherical_mean(lat[g], lon[g])
            for lst, v in zip(out, (emb[g].mean(0), la, lo, c)):
                lst.append(v)
    return np.array(out[0]), np.array(out[1], float), np.array(out[2], float), np.array(out[3], int)


def build_gallery(embedding, lat, lon, cell_id, *, n_cells: int, kind: str = "images") -> Gallery:
    """The gallery from training images: embedding (M, D) (the model's fused embedding), lat, lon,
    cell_id (M,) (their assigned cells); kind 'images' or 'prototypes'."""
    embedding, lat, lon, cell_id = (np.asarray(embedding, np.float32), np.asarray(lat, float),
                                    np.asarray(lon, float), np.asarray(cell_id, int))
    if kind == "prototypes":
        embedding, lat, lon, cell_id = prototypes(embedding, lat, lon, cell_id)
    elif kind != "images":
        raise ValueError(f"gallery kind must be 'images' or 'prototypes', got {kind!r}")
    return Gallery.from_items(embedding, lat, lon, cell_id, n_cells=n_cells)


def with_refinement(frame: pd.DataFrame, model, outputs: dict, gallery: Gallery, *, settings: RefineSettings,
                    top_provinces: int = 2, top_cells: int = 5) -> pd.DataFrame:
    """A predictions_frame (rows aligned with outputs) plus ``refined_lat/_lon/_error_km`` and
    ``refined_spread_km``, ``refined_moved_km`` (mean move of the hypotheses, weighted)."""
    p = refined_predict(model, outputs, gallery, settings, top_provinces=top_provinces, top_cells=top_cells)
    f = frame.copy()
    f["refined_lat"], f["refined_lon"], f["refined_spread_km"] = p["lat"], p["lon"], p["spread_km"]
    f["refined_error_km"] = error_km(p["lat"], p["lon"], f["latitude"], f["longitude"])
    f["refined_moved_km"] = (p["hyp_weight"] * p["hyp_moved_km"]).sum(-1)
    return f


def as_refined(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with the refined prediction as its prediction (error_km, spread_km, mixture
    columns), e.g. to fit the radius calibration of the refined predictor."""
    return frame.assign(error_km=frame["refined_error_km"], spread_km=frame["refined_spread_km"])


def selection_table(model, val_frame: pd.DataFrame, val_outputs: dict, galleries: dict, *, grid, top_provinces: int = 2,
                    top_cells: int = 5) -> pd.DataFrame:
    """Each RefineSettings in ``grid`` on validation (galleries: {kind: Gallery}): the error figures
    against the plain mixture (first row), in the order listed."""
    pred = mixture_numpy(model, val_outputs, top_provinces, top_cells)
    radius = model.cell_radius_km.cpu().numpy()
    rows = [{"settings": "plain mixture (no refinement)", **summarize_errors(val_frame["error_km"])}]
    for s in grid:
        p = refine_prediction(pred, pred["query"], galleries[s.kind], radius, settings=s)
        rows.append({"settings": s.label(),
                     **summarize_errors(error_km(p["lat"], p["lon"], val_frame["latitude"], val_frame["longitude"]))})
    return pd.DataFrame(rows).set_index("settings")


def choose_settings(table: pd.DataFrame, grid) -> tuple[RefineSettings, bool]:
    """The settings with the lowest validation median, and whether refinement beats the plain
    mixture's validation median (then it is the predictor's default)."""
    medians = table["median_km"].to_numpy()
    best = int(np.argmin(medians[1:]))
    return list(grid)[best], bool(medians[1 + best] < medians[0])


def frames_with_outputs(predictor, table: pd.DataFrame, *, splits=("val", "test"), batch_size: int = 64,
                        num_workers: int = 0) -> tuple[dict, dict]:
    """predictor_frames, also handing back the model outputs they came from: ({split: frame},
    {split: outputs}) (refinement needs the fused embeddings)."""
    from geopak_lib.analysis.frame import predictions_frame, split_outputs

    train = table[table["split"] == "train"]
    outputs = {s: split_outputs(predictor, table, s, batch_size=batch_size, num_workers=num_workers) for s in splits}
    frames = {s: predictions_frame(predictor.model, outputs[s], table[table["split"] == s], train,
                                   top_provinces=predictor.top_provinces,
                                   top_cells=predictor.top_cells) for s in splits}
    return frames, outputs


def fit_refinement(predictor, table: pd.DataFrame, outputs: dict, val: pd.DataFrame, *, test: pd.DataFrame, checkpoint,
                   batch_size: int = 64, num_workers: int = 0, grid=SELECTION_GRID, cache_root="cache",
                   also: dict | None = None) -> dict:
    """06's refinement step: the training images through the model (their fused embeddings), a
    gallery of each kind, the grid on validation, the best settings saved beside the checkpoint
    with ``default`` = the adoption rule took it (its paired block-bootstrap interval of the
    validation median difference lies below zero). ``also``: {name: frame} more frames (with
    outputs[name]) to refine, e.g. the calibration part of validation. Returns settings, default,
    selection (the validation table), val and test (frames with refined_* columns), path, memory_mb,
    embeddings_from (the cache when it was made by these encoders, else the images)."""
    from geopak_lib.analysis.cached_outputs import cached_outputs
    from geopak_lib.analysis.frame import split_outputs

    model, train = predictor.model, table[table["split"] == "train"]
    out, source = cached_outputs(model, table, "train", cache_root=cache_root)
    source = EMBEDDINGS_FROM[source]
    if out is None:
        out = split_outputs(predictor, table, "train", batch_size=batch_size, num_workers=num_workers)
    fused = out["fused"]
    galleries = {kind: build_gallery(fused.float().numpy(), train["latitude"], train["longitude"], train["cell_id"],
                                     n_cells=len(model.cells),
                                     kind=kind) for kind in dict.fromkeys(s.kind for s in grid)}
    selection = selection_table(model, val, outputs["val"], galleries, grid=grid, top_provinces=predictor.top_provinces,
                                top_cells=predictor.top_cells)
    settings, _ = choose_settings(selection, grid)
    medians = {"plain": float(selection["median_km"].iloc[0]), "refined": float(selection.loc[settings.label(),
                                                                                              "median_km"])}
    gallery = galleries[settings.kind]
    frames = {s: with_refinement(f, model, outputs[s], gallery, settings=settings,
                                 top_provinces=predictor.top_provinces, top_cells=predictor.top_cells)
              for s, f in (("val", val), ("test", test), *(also or {}).items())}
    default, val_ci = adopt(frames["val"]["error_km"], frames["val"]["refined_error_km"],
                            blocks=frames["val"]["block_id"] if "block_id" in val else np.arange(len(val)))
    path = save_gallery(checkpoint, gallery, settings, {"default": default, "chosen_on": "val",
                                                        "val_median_km": medians, "n_train_images": len(train),
                                                        "val_diff_km_ci95": [val_ci.value, val_ci.lo, val_ci.hi]})
    return {"settings": settings, "default": default, "val_ci": val_ci, "selection": selection, "val_median_km": medians,
            "path": path, "memory_mb": gallery.nbytes / 2 ** 20, "embeddings_from": source, **frames}


def summary_text(result: dict) -> str:
    """Markdown: what was chosen on validation and whether the predictor refines by default."""
    m, s = result["val_median_km"], result["settings"]
    ci = result["val_ci"]
    on = ("**on** by default in the predictor (`geopak predict --refine off` turns it off)" if result["default"] else
          "**off** by default (its validation gain is inside the noise; `geopak predict --refine on` uses it)")
    on += (f"; paired validation difference {ci.value:+.1f} km, 95% block-bootstrap interval "
           f"[{ci.lo:+.1f}, {ci.hi:+.1f}] km")
    return (f"Best refinement on validation: {s.label()}; validation median {m['plain']:.1f} km plain, "
            f"{m['refined']:.1f} km refined. Refinement is {on}. The gallery (`{Path(result['path']).name}`, "
            f"{result['memory_mb']:.1f} MB; training embeddings from {result['embeddings_from']}) is saved beside "
            "the checkpoint.")
