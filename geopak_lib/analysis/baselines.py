"""Baselines the model must beat, on the frozen features and the training positions: the training
centroid, the centroid of the predicted province, and k nearest neighbours (cosine on the cached
features). Outcome check of 03_phase1_geography, reused by the evaluation report."""

from __future__ import annotations

import numpy as np
import pandas as pd

from geopak_lib import geo
from geopak_lib.constants import NUM_PROVINCES
from geopak_lib.metrics import summarize_errors
from geopak_lib.training.cache import FeatureCache
from geopak_lib.utils import l2_normalize


def province_centroids(lat, lon, province_id) -> np.ndarray:
    """(7, 2) spherical mean (lat, lon) of each province's points; the overall centroid for a
    province without points. lat, lon (N,) degrees; province_id (N,) ints."""
    lat, lon, province_id = np.asarray(lat, float), np.asarray(lon, float), np.asarray(province_id, int)
    out = np.tile(np.array(geo.spherical_mean(lat, lon), float), (NUM_PROVINCES, 1))
    for p in range(NUM_PROVINCES):
        m = province_id == p
        if m.any():
            out[p] = geo.spherical_mean(lat[m], lon[m])
    return out


def knn_indices(train_feats: np.ndarray, query_feats: np.ndarray, k: int, chunk: int = 2048) -> np.ndarray:
    """Cosine k nearest neighbours: (N, D), (Q, D) -> (Q, k) indices into train, nearest first."""
    k = min(k, len(train_feats))
    t, q = l2_normalize(train_feats), l2_normalize(query_feats)
    out = []
    for s in range(0, len(q), chunk):
        sim = q[s:s + chunk] @ t.T
        part = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sim, part, 1), axis=1, kind="stable")
        out.append(np.take_along_axis(part, order, 1))
    return np.concatenate(out) if out else np.zeros((0, k), int)


def joint_features(cache: FeatureCache, rows) -> np.ndarray:
    """Clean-view features for kNN: L2-normalised clip and scene, concatenated (B, Dc + Ds).

    Normalising each part first gives both encoders an equal say whatever their widths.
    """
    clip, scene = (np.asarray(a[np.asarray(rows)], np.float32) for a in (cache.clip, cache.scene))
    return np.concatenate([l2_normalize(clip), l2_normalize(scene)], 1)


def baseline_predictions(cache: FeatureCache, table: pd.DataFrame, *, split: str = "val", k: int = 10,
                         province_pred=None) -> pd.DataFrame:
    """Per-sample predictions of three baselines on ``split``; table rows align with the cache.

    train_centroid: the spherical mean of all training positions, for everyone.
    province_centroid: the spherical mean of the training positions of the predicted province
    (``province_pred`` (Q,) ids, e.g. the model's; default: the majority province of the k
    nearest neighbours, so the baseline needs no model). knn: the spherical mean of the k
    nearest training images' positions (cosine on joint_features).
    Returns id, province_id, latitude, longitude, <method>_lat, <method>_lon, <method>_error_km.
    """
    if not np.array_equal(table["id"].astype(str).to_numpy(), cache.ids.astype(str)):
        raise ValueError("table rows do not match the feature cache rows (ids differ); "
                         "build the cache from the same manifest")
    train, query = np.flatnonzero(table["split"] == "train"), np.flatnonzero(table["split"] == split)
    if len(train) == 0:
        raise ValueError("no training rows: baselines need split == 'train' samples")
    lat, lon = table["latitude"].to_numpy(float), table["longitude"].to_numpy(float)
    prov = table["province_id"].to_numpy(int)
    nn_idx = train[knn_indices(joint_features(cache, train), joint_features(cache, query), k)]  # (Q, k)
    if province_pred is None:
        province_pred = np.array([np.bincount(prov[r], minlength=NUM_PROVINCES).argmax() for r in nn_idx], int)
    out = table.iloc[query][["id", "province_id", "latitude", "longitude"]].reset_index(drop=True)
    c_lat, c_lon = geo.spherical_mean(lat[train], lon[train])
    preds = {"train_centroid": (np.full(len(query), c_lat), np.full(len(query), c_lon)),
             "knn": geo.spherical_mean(lat[nn_idx], lon[nn_idx])}
    cents = province_centroids(lat[train], lon[train], prov[train])
    preds["province_centroid"] = (cents[province_pred, 0], cents[province_pred, 1])
    for name, (plat, plon) in preds.items():
        out[f"{name}_lat"], out[f"{name}_lon"] = plat, plon
        out[f"{name}_error_km"] = geo.haversine_km(plat, plon, lat[query], lon[query])
    return out


def baseline_summary(pred: pd.DataFrame) -> pd.DataFrame:
    """One row per baseline of baseline_predictions' frame: method, n and the summarize_errors figures (km)."""
    return pd.DataFrame([{"method": m, "n": len(pred), **summarize_errors(pred[f"{m}_error_km"].to_numpy())}
                         for m in ("train_centroid", "province_centroid", "knn")])


def baseline_errors(cache: FeatureCache, table: pd.DataFrame, *, split: str = "val", k: int = 10,
                    province_pred=None) -> pd.DataFrame:
    """baseline_summary of baseline_predictions."""
    return baseline_summary(baseline_predictions(cache, table, split=split, k=k, province_pred=province_pred))
