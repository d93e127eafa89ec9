"""The evaluation report's computations (06_evaluation): per-sample predictions of the mixture and
its ablations, headline figures, urban/rural, calibration of confidence and error radius, TTA.

Every headline figure comes from the model's own predicted provinces and cells. Columns that use
a true label (``true_province_*``, ``true_cell_*``) are diagnostics and are labelled so wherever
they are shown. Plots and maps: geopak_lib/book/figures.py. Decisions: docs/decisions/evaluation.md.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from geopak_lib import geo
from geopak_lib.constants import NUM_PROVINCES, PROVINCES
from geopak_lib.data.places import name_places, nearest_town, pakistan_towns
from geopak_lib.evaluation.baselines import province_centroids
from geopak_lib.evaluation.concepts_eval import concept_frame
from geopak_lib.metrics import error_km, per_class_accuracy, per_group_summary, summarize_errors
from geopak_lib.model.inference import (argmax_predict, aux_predict, cell_conditional_probs, hypothesis_points,
                                        mixture_predict, outputs_to)
from geopak_lib.training.passes import PassSettings, model_outputs
from geopak_lib.data.rundir import RunDir
from geopak_lib.training.cache import FeatureCache, encoder_fingerprint
from geopak_lib.training.inputs import TrainData
from geopak_lib.training.checkpoints import build_model_from_checkpoint
from geopak_lib.training.selection import PHASE_NAMES, best_val_row
from geopak_lib.utils import file_sha256, pick_device, quiet_rebuild

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
URBAN_MIN_POPULATION = 100_000
URBAN_RADIUS_KM = 10.0
PREDICTIONS_FILE = "predictions_test.csv"


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


FEATURE_SOURCES = {"cache": "cache", "clip_cache": "cache+scene", "images": "images"}  # 05's `features` column


def feature_source(model, table: pd.DataFrame, cache_root="cache") -> tuple[str, FeatureCache | None]:
    """How a model can be evaluated on ``table``'s rows (the manifest, or load_data's table in its
    order): 'cache' (a complete feature cache of exactly both its encoders: the heads alone),
    'clip_cache' (one of its CLIP encoder, which phases 2-3 left frozen: only the scene encoder
    runs on the images) or 'images' (no cache fits), with that cache. Weights sha256 decide (each
    encoder's weights are hashed once)."""
    prints = {"clip": encoder_fingerprint(model.clip_encoder), "scene": encoder_fingerprint(model.scene_encoder)}
    for source, slots in (("cache", ("clip", "scene")), ("clip_cache", ("clip",))):
        cache = FeatureCache.find_matching(table, {s: prints[s] for s in slots}, cache_root)
        if cache is not None:
            return source, cache
    return "images", None


def cached_outputs(model, table: pd.DataFrame, split: str, *, cache_root="cache",
                   batch_size: int = 256) -> tuple[dict | None, str]:
    """(model outputs (CPU) for the ``split`` rows of ``table``, source) with what the feature cache
    holds of this model's encoders (feature_source): the same numbers as split_outputs up to the
    cache's float16 rounding, with one encoder's pass over the images or none; (None, 'images')
    when no cache fits."""
    source, cache = feature_source(model, table, cache_root)
    if cache is None:
        return None, source
    return outputs_from_cache(model, table, split, source, cache=cache, batch_size=batch_size), source


def outputs_from_cache(model, table: pd.DataFrame, split: str, source: str, *, cache: FeatureCache,
                       batch_size: int = 256) -> dict:
    """cached_outputs with feature_source's answer already in hand (several splits, one lookup)."""
    data = TrainData(table.reset_index(drop=True), cache)
    device, was_training = next(model.parameters()).device, model.training
    try:
        return model_outputs(model, data, data.rows(split), PassSettings(source=source, batch_size=batch_size),
                             device=device)
    finally:
        model.train(was_training)


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


def save_test_predictions(run_dir, frame: pd.DataFrame, checkpoint) -> Path:
    """06's test predictions_frame as ``predictions_test.csv``, stamped with the checkpoint that made
    it, by path and by the sha256 of its file (08_explore picks the worst and the most confidently
    wrong images from it)."""
    return RunDir(run_dir).write_table(PREDICTIONS_FILE, frame.assign(checkpoint=str(checkpoint),
                                                                      checkpoint_sha256=file_sha256(checkpoint)))


def read_test_predictions(run_dir, checkpoint) -> pd.DataFrame | None:
    """The saved test predictions if they were made by ``checkpoint``, else None. Matched by content
    (the sha256 of the checkpoint file), not by its path: a checkpoint retrained in place keeps its path."""
    run = RunDir(run_dir)
    if not run.file(PREDICTIONS_FILE).is_file():
        return None
    frame = run.read_table(PREDICTIONS_FILE)
    if not len(frame) or "checkpoint_sha256" not in frame or not Path(checkpoint).is_file():
        return None
    return frame if (frame["checkpoint_sha256"] == file_sha256(checkpoint)).all() else None


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


def method_table(frame: pd.DataFrame, methods: dict, extra: dict | None = None,
                 baselines: pd.DataFrame | None = None) -> pd.DataFrame:
    """One summarize_errors row per method (frame columns ``<key>_error_km``), plus ``extra``
    {name: errors} and ``baselines`` (rows of baselines.baseline_errors), sorted by median."""
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


def district_accuracy(frame: pd.DataFrame, lat_col: str = "mixture_lat", lon_col: str = "mixture_lon") -> dict:
    """Share of images whose predicted point lies in the true point's district (both named by
    data.places.name_places). Images whose true point has no district (outside Pakistan, or farther
    than PLACE_MAX_KM from any place) are left out and counted: district_acc (fraction, NaN if
    none has a district), district_n (images counted), district_excluded."""
    true = name_places(frame["latitude"], frame["longitude"])
    pred = name_places(frame[lat_col], frame[lon_col])
    has = (true["district"] != "").to_numpy()
    hit = ((pred["district"] == true["district"]) & (pred["province"] == true["province"])).to_numpy()
    return {"district_acc": float(hit[has].mean()) if has.any() else float("nan"),
            "district_n": int(has.sum()), "district_excluded": int((~has).sum())}


def tta_comparison(plain: pd.DataFrame, tta: pd.DataFrame) -> pd.DataFrame:
    """Headline figures without and with test-time augmentation, same images."""
    return pd.DataFrame([{"predictor": "single view", **headline(plain)},
                         {"predictor": "TTA (5 views)", **headline(tta)}]).set_index("predictor")


def phase_comparison(run_dir, data, *, batch_size: int = 64, device="cpu", num_workers: int = 0,
                     progress: bool = False, cache_root="cache") -> pd.DataFrame:
    """What each phase adds: the best checkpoint of every phase that has run, evaluated end to end
    on val and test. Rows (phase, split) with median/p90 km, accuracy at 25/200 km, province
    accuracy and cell top-5 (fractions), and ``features`` (FEATURE_SOURCES). Phases 0-1 never
    change the encoders, so their clean-view features are read from the feature cache they were
    trained on when one under ``cache_root`` matches the checkpoint's encoders and the manifest;
    phases 2-3 read the CLIP slot's from it when they left that encoder frozen (feature_source).
    The numbers are those of the encoders up to float16 storage (84.65 km either way on the demo).
    Phase 0's location figures come from untrained location heads."""
    run, rows = RunDir(run_dir), []
    manifest = run.read_manifest()
    for phase in range(4):
        path, losses = run.best_checkpoint(phase), run.losses(phase)
        if not path.is_file():
            continue
        best = best_val_row(phase, losses) if losses is not None else None
        if rows and best is not None and int(best["epoch"]) == 0:  # kept its start: the previous phase's weights
            rows += [{**r, "phase": phase, "name": PHASE_NAMES[phase]} for r in rows[-2:]]
            continue
        with quiet_rebuild():  # the encoders' status was reported by the notebooks that trained them
            model = build_model_from_checkpoint(path, with_encoders=True)
        source, cache = feature_source(model, manifest, cache_root)
        split_data = replace(data, cache=cache) if cache is not None else data
        for split in ("val", "test"):
            h = headline(split_frame(model, split_data, split, source=source, batch_size=batch_size, device=device,
                                     num_workers=num_workers,
                                     progress=progress))
            rows.append({"phase": phase, "name": PHASE_NAMES[phase], "split": split, "n": h["n"],
                         "median_km": h["median_km"], "p90_km": h["p90_km"], "acc_25km": h["acc_25km"],
                         "acc_200km": h["acc_200km"], "province_acc": h["province_acc"],
                         "cell_top5_acc": h["cell_top5_acc"], "features": FEATURE_SOURCES[source]})
    return pd.DataFrame(rows)
