"""Score a model on a labelled table it has never seen: what `geopak evaluate` and
``GeopakPredictor.evaluate`` compute.

The table goes through the same validation as ``geopak validate`` (data/validate.py): rows with a
problem are returned as rejects with their reasons, never dropped silently, and a blank province is
filled from the polygons. The valid rows are predicted in streamed batches (memory flat in the
number of images) and scored as notebook 06 scores the test split: median, mean and p90 error,
accuracy within 1/5/25/200/750 km, province accuracy, per province, urban/rural and district. The
headline figures carry 95% block-bootstrap intervals (bootstrap.headline_ci) over geographic
blocks of ``block_km`` (data/splits.py): photos of one place are not independent.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from geopak_lib import bootstrap, geo
from geopak_lib.constants import PROVINCE_ID, PROVINCES
from geopak_lib.data.places import name_places, nearest_town, pakistan_towns
from geopak_lib.data.splits import block_ids
from geopak_lib.data.validate import validate_dataset
from geopak_lib.metrics import per_class_accuracy, per_group_summary, summarize_errors

BLOCK_KM = 30.0  # the book's default block (geopak_lib/config.py DataConfig.block_km)
URBAN_MIN_POPULATION, URBAN_RADIUS_KM = 100_000, 10.0  # as 06 (analysis/regions.py)
PREDICTION_COLUMNS = ["id", "image", "latitude", "longitude", "province", "pred_lat", "pred_lon",
                      "province_pred", "confidence", "radius_km", "radius_calibrated", "error_km", "block_id", "error"]


@dataclass
class Evaluation:
    predictions: pd.DataFrame   # PREDICTION_COLUMNS, one row per valid table row (error: why not predicted)
    rejects: pd.DataFrame       # validate's rejects (row, id, reason, detail)
    metrics: dict = field(default_factory=dict)  # headline, intervals, n, settings
    per_province: pd.DataFrame = field(default_factory=pd.DataFrame)
    settings: pd.DataFrame = field(default_factory=pd.DataFrame)  # urban / rural


def score(pred: pd.DataFrame, *, block_km: float = BLOCK_KM, n_resamples: int = bootstrap.N_RESAMPLES,
          seed: int = 0) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    """(metrics, per-province table, urban/rural table) of predicted rows (``error`` == "")."""
    ok = pred[pred["error"] == ""]
    e = ok["error_km"].to_numpy(float)
    true_id = ok["province"].map(PROVINCE_ID).to_numpy(int)
    pred_id = ok["province_pred"].map(PROVINCE_ID).to_numpy(int)
    head = {**summarize_errors(e), "province_acc": float(np.mean(true_id == pred_id)) if len(e) else float("nan")}
    ci = bootstrap.headline_ci(e, true_id, pred_id, ok["block_id"].to_numpy(), n_resamples=n_resamples, seed=seed) \
        if len(e) else {}
    head["ci95"] = {k: [v.lo, v.hi] for k, v in ci.items()}
    head["n_blocks"], head["block_km"] = int(ok["block_id"].nunique()), float(block_km)
    districts = district_accuracy(ok)
    head.update(districts)
    provinces = per_group_summary(ok, "province") if len(ok) else pd.DataFrame()
    if len(provinces):
        recall = per_class_accuracy(true_id, pred_id)
        provinces["province_recall"] = [recall[PROVINCES.index(p)] for p in provinces["province"]]
    setting = urban_rural(ok["latitude"], ok["longitude"])
    settings = per_group_summary(ok.assign(setting=setting.to_numpy()), "setting") if len(ok) else pd.DataFrame()
    return head, provinces, settings


def urban_rural(lat, lon) -> pd.Series:
    """'urban' within URBAN_RADIUS_KM of a GeoNames town of URBAN_MIN_POPULATION+ people, else 'rural'."""
    _, dist = nearest_town(np.asarray(lat, float), np.asarray(lon, float), pakistan_towns(URBAN_MIN_POPULATION))
    return pd.Series(np.where(np.asarray(dist) <= URBAN_RADIUS_KM, "urban", "rural"))


def district_accuracy(ok: pd.DataFrame) -> dict:
    """Share of images whose predicted point lies in the true point's district; images whose true
    point has no district are left out and counted (as 06)."""
    if not len(ok):
        return {"district_acc": float("nan"), "district_n": 0, "district_excluded": 0}
    true = name_places(ok["latitude"], ok["longitude"])
    pred = name_places(ok["pred_lat"], ok["pred_lon"])
    has = (true["district"] != "").to_numpy()
    hit = ((pred["district"] == true["district"]) & (pred["province"] == true["province"])).to_numpy()
    return {"district_acc": float(hit[has].mean()) if has.any() else float("nan"),
            "district_n": int(has.sum()), "district_excluded": int((~has).sum())}


def predict_rows(predictor, manifest: pd.DataFrame, *, batch_size: int = 32, progress: bool = True,
                 block_km: float = BLOCK_KM) -> pd.DataFrame:
    """PREDICTION_COLUMNS for every manifest row, predicted in streamed batches."""
    rows = []
    paths = manifest["image_path"].tolist()
    it = iter(manifest.itertuples(index=False))
    for batch in predictor.iter_predictions(paths, batch_size=batch_size, progress=progress):
        for rec in batch:
            m = next(it)
            bad = rec.get("error", "")
            rows.append((m.id, m.image, m.latitude, m.longitude, m.province,
                         np.nan if bad else rec["lat"], np.nan if bad else rec["lon"], "" if bad else rec["province"],
                         np.nan if bad else rec["confidence"], np.nan if bad else rec.get("radius_km", np.nan),
                         False if bad else rec["radius_calibrated"], np.nan, "", bad))
    pred = pd.DataFrame(rows, columns=PREDICTION_COLUMNS)
    pred["error_km"] = geo.haversine_km(pred["latitude"].to_numpy(float), pred["longitude"].to_numpy(float),
                                        pred["pred_lat"].to_numpy(float), pred["pred_lon"].to_numpy(float))
    pred["block_id"] = block_ids(pred["latitude"].to_numpy(float), pred["longitude"].to_numpy(float), block_km)
    return pred


def evaluate_table(predictor, table, images_dir, *, block_km: float = BLOCK_KM, batch_size: int = 32,
                   progress: bool = True, n_resamples: int = bootstrap.N_RESAMPLES) -> Evaluation:
    """Validate ``table`` against ``images_dir``, predict its valid rows with ``predictor`` and score them."""
    checked = validate_dataset(table, images_dir, progress=progress)
    pred = predict_rows(predictor, checked.manifest, batch_size=batch_size, progress=progress, block_km=block_km)
    metrics, provinces, settings = score(pred, block_km=block_km, n_resamples=n_resamples)
    metrics.update({"n_rows": int(len(checked.manifest) + checked.rejects["row"].nunique())
                    if len(checked.rejects) else int(len(checked.manifest)),
                    "n_rejected": int(checked.rejects["row"].nunique()) if len(checked.rejects) else 0,
                    "n_unreadable": int((pred["error"] != "").sum()),
                    "model": str(predictor.info.get("checkpoint", "")),
                    "encoders": {slot: e.get("weight_status", "") for slot, e in predictor.info.get("encoders", {}).items()},
                    "warnings": list(predictor.warnings), "radius_calibrated": predictor.calibration_block() is not None})
    return Evaluation(pred, checked.rejects, metrics, provinces, settings)
