"""Spatial-block train/val/test splits and the leak check.

Samples are binned into square blocks of ``block_km`` on one azimuthal-equidistant projection
centred on Pakistan (fixed, so a block id never depends on which samples arrived). Whole blocks
are assigned to splits, province by province, so no block lies on two sides and each province
gets roughly the requested fractions. See docs/decisions/data.md.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pandas as pd

from geopak_lib.constants import EARTH_RADIUS_KM, PROVINCE_ID, PROVINCES
from geopak_lib.data.validate import MANIFEST_COLUMNS  # canonical order, extra columns after

SPLITS = ("train", "val", "test")
# Projection centre (lat, lon) in degrees: roughly the middle of Pakistan. Distances from it are
# true; block sides stretch by < 2% at the country's far corners (~900 km away).
BLOCK_CENTER = (30.0, 70.0)


@lru_cache(maxsize=1)
def _aeqd():
    from pyproj import Transformer

    lat0, lon0 = BLOCK_CENTER
    return Transformer.from_crs(4326, f"+proj=aeqd +lat_0={lat0} +lon_0={lon0} +datum=WGS84 +units=m",
                                always_xy=True)


def block_ids(lat, lon, block_km: float) -> np.ndarray:
    """Block id 'ix_iy' of each point: the ``block_km`` square holding it on the AEQD plane.

    lat, lon: (N,) degrees. Returns an object array (N,) of strings, e.g. '-3_12'.
    """
    x, y = _aeqd().transform(np.asarray(lon, float), np.asarray(lat, float))
    ix = np.floor(np.asarray(x) / (block_km * 1000.0)).astype(int)
    iy = np.floor(np.asarray(y) / (block_km * 1000.0)).astype(int)
    return np.array([f"{a}_{b}" for a, b in zip(np.atleast_1d(ix), np.atleast_1d(iy))], dtype=object)


def _assign_province(sizes: pd.Series, fractions: dict, rng: np.random.Generator) -> dict:
    """Assign one province's blocks (sizes: block_id -> n samples) to splits. Returns {block_id: split}.

    Blocks come in a seeded random order; the first goes to train (so every province trains), each
    later one to the split furthest below its target sample count (ties: test, val, train). One
    block -> train only; two -> train + test.
    """
    order = rng.permutation(np.sort(sizes.index.to_numpy().astype(str)))
    target = {s: f * sizes.sum() for s, f in fractions.items()}
    count = dict.fromkeys(SPLITS, 0)
    out = {}
    for k, block in enumerate(order):
        split = "train" if k == 0 else max(("test", "val", "train"), key=lambda s: target[s] - count[s])
        out[block] = split
        count[split] += sizes[block]
    return out


def spatial_block_split(manifest: pd.DataFrame, *, block_km: float = 25.0, val_frac: float = 0.15,
                        test_frac: float = 0.15, seed: int = 0, buffer_km: float = 0.0) -> pd.DataFrame:
    """Return a copy of ``manifest`` with ``block_id`` and ``split`` (train/val/test/buffer) columns.

    A block is a grid square within one province (a square crossing a border is one block per
    province, so even Islamabad's few squares can be stratified); the blocks of each province
    are split to approximate (1 - val - test, val, test) of its samples. Blocks alone cannot keep
    samples on either side of a block edge apart, so with ``buffer_km`` > 0 every training sample
    within that distance of a validation or test sample becomes ``buffer``: kept in the
    manifest, used neither for training nor for scoring, and counted in the audit. Then no
    training sample lies within ``buffer_km`` of a held-out one. Deterministic for a seed and
    independent of row order.
    """
    if buffer_km < 0:
        raise ValueError(f"buffer_km must be >= 0, got {buffer_km}")
    if not (0 <= val_frac and 0 <= test_frac and val_frac + test_frac < 1):
        raise ValueError(f"need val_frac, test_frac >= 0 and val_frac + test_frac < 1, got {val_frac}, {test_frac}")
    if manifest[["latitude", "longitude"]].isna().any().any():
        raise ValueError("manifest has missing latitude/longitude: validate the dataset first")
    out = manifest.copy()
    pid = out["province"].map(PROVINCE_ID)
    if pid.isna().any():
        raise ValueError(f"unknown province(s) {sorted(set(out['province'][pid.isna()]))}; expected {PROVINCES}")
    cell = block_ids(out["latitude"], out["longitude"], block_km)
    out["block_id"] = [f"{c}_p{int(p)}" for c, p in zip(cell, pid)]
    counts = pd.DataFrame({"block_id": out["block_id"], "pid": pid}).value_counts().reset_index(name="n")
    # home province: most samples, then lower id (value_counts order is not a tie-break we control)
    home = counts.sort_values(["block_id", "n", "pid"], ascending=[True, False, True]).drop_duplicates("block_id")
    block_n = out["block_id"].value_counts()
    fractions = {"train": 1 - val_frac - test_frac, "val": val_frac, "test": test_frac}
    split_of = {}
    for p, blocks in home.groupby("pid")["block_id"]:
        rng = np.random.default_rng([seed, int(p)])
        split_of.update(_assign_province(block_n[blocks.to_numpy()], fractions, rng))
    out["split"] = out["block_id"].map(split_of)
    if buffer_km > 0:
        out.loc[_near_held_out(out, buffer_km), "split"] = "buffer"
    cols = [c for c in MANIFEST_COLUMNS if c in out.columns]
    return out[cols + [c for c in out.columns if c not in cols]]


def _near_held_out(df: pd.DataFrame, km: float) -> np.ndarray:
    """Mask of training rows within ``km`` of a val/test row (haversine)."""
    from sklearn.neighbors import BallTree

    train, held = (df["split"] == "train").to_numpy(), df["split"].isin(["val", "test"]).to_numpy()
    mask = np.zeros(len(df), bool)
    if train.any() and held.any():
        tree = BallTree(np.radians(df.loc[held, ["latitude", "longitude"]].to_numpy(float)), metric="haversine")
        dist, _ = tree.query(np.radians(df.loc[train, ["latitude", "longitude"]].to_numpy(float)), k=1)
        mask[np.flatnonzero(train)] = dist[:, 0] * EARTH_RADIUS_KM < km
    return mask


def min_cross_split_distance_km(manifest: pd.DataFrame) -> pd.DataFrame:
    """Leak check: for (train, val), (train, test), (val, test), the closest pair across the two splits.

    Columns: split_a, split_b, n_a, n_b, min_km, median_nearest_km (median over b of the distance
    to the nearest a), id_a, id_b (the closest pair). NaN where a split is empty. Haversine, km.
    """
    from sklearn.neighbors import BallTree

    rows = []
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        da, db = manifest[manifest["split"] == a], manifest[manifest["split"] == b]
        row = {"split_a": a, "split_b": b, "n_a": len(da), "n_b": len(db), "min_km": np.nan,
               "median_nearest_km": np.nan, "id_a": None, "id_b": None}
        if len(da) and len(db):
            tree = BallTree(np.radians(da[["latitude", "longitude"]].to_numpy(float)), metric="haversine")
            dist, idx = tree.query(np.radians(db[["latitude", "longitude"]].to_numpy(float)), k=1)
            km = dist[:, 0] * EARTH_RADIUS_KM
            j = int(np.argmin(km))
            row.update(min_km=float(km[j]), median_nearest_km=float(np.median(km)),
                       id_a=da["id"].iloc[idx[j, 0]], id_b=db["id"].iloc[j])
        rows.append(row)
    return pd.DataFrame(rows)


def split_summary(manifest: pd.DataFrame) -> pd.DataFrame:
    """Samples per province x split (provinces in PROVINCES order, an 'All' row), plus block counts."""
    cols = list(SPLITS) + (["buffer"] if (manifest["split"] == "buffer").any() else [])
    table = pd.crosstab(manifest["province"], manifest["split"]).reindex(
        index=list(PROVINCES), columns=cols, fill_value=0)
    table.loc["All"] = table.sum()
    table["total"] = table.sum(axis=1)
    blocks = manifest.groupby("province")["block_id"].nunique()
    table["n_blocks"] = blocks.reindex(table.index, fill_value=0)
    table.loc["All", "n_blocks"] = manifest["block_id"].nunique()
    table.index.name = "province"
    return table
