"""Spatial-block train/val/test splits and the leak check.

Samples are binned into square blocks of ``block_km`` on one azimuthal-equidistant projection
centred on Pakistan (fixed, so a block id never depends on which samples arrived). Blocks that
share a duplicate (same spot, same bytes, same perceptual hash) are joined, and whole units are
assigned to splits, stratified by their home province, so no block lies on two sides and each
province gets roughly the requested fractions. See docs/decisions/data.md.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pandas as pd

from geopak_lib.constants import EARTH_RADIUS_KM, PROVINCE_ID, PROVINCES
from geopak_lib.data.validate import MANIFEST_COLUMNS  # canonical order, extra columns after

SPLITS = ("train", "val", "test")
HELD_OUT = ("val", "val_cal", "test")
CALIBRATION_FRAC = 0.5  # share of each province's validation units that only calibrates (06), never chooses
# Projection centre (lat, lon) in degrees: roughly the middle of Pakistan. Distances from it are
# true; block sides stretch by < 2% at the country's far corners (~900 km away).
BLOCK_CENTER = (30.0, 70.0)


@lru_cache(maxsize=1)
def _aeqd():
    from pyproj import Transformer

    lat0, lon0 = BLOCK_CENTER
    return Transformer.from_crs(4326, f"+proj=aeqd +lat_0={lat0} +lon_0={lon0} +datum=WGS84 +units=m",
                                always_xy=True)


def block_plane_km(lat, lon) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) in km of each point on the block grid's plane (AEQD centred at BLOCK_CENTER)."""
    x, y = _aeqd().transform(np.asarray(lon, float), np.asarray(lat, float))
    return np.asarray(x) / 1000.0, np.asarray(y) / 1000.0


def from_block_plane_km(x, y) -> tuple[np.ndarray, np.ndarray]:
    """(lat, lon) in degrees of plane points (x, y) in km: the inverse of :func:`block_plane_km`."""
    from pyproj.enums import TransformDirection

    lon, lat = _aeqd().transform(np.asarray(x, float) * 1000.0, np.asarray(y, float) * 1000.0,
                                 direction=TransformDirection.INVERSE)
    return np.asarray(lat), np.asarray(lon)


def block_ids(lat, lon, block_km: float) -> np.ndarray:
    """Block id 'ix_iy' of each point: the ``block_km`` square holding it on the AEQD plane.

    lat, lon: (N,) degrees. Returns an object array (N,) of strings, e.g. '-3_12'.
    """
    x, y = block_plane_km(lat, lon)
    ix = np.floor(x / block_km).astype(int)
    iy = np.floor(y / block_km).astype(int)
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


def duplicate_links(manifest: pd.DataFrame) -> list[np.ndarray]:
    """Row groups that must share a split: the same coordinates, the same file bytes, the same perceptual hash.

    Returns one integer array of row positions per group with >= 2 rows (sha1/phash only where present).
    Hash joins, so linear in the number of rows.
    """
    keys = [manifest["latitude"].round(6).astype(str) + "," + manifest["longitude"].round(6).astype(str)]
    keys += [manifest[c] for c in ("sha1", "phash") if c in manifest.columns]
    groups = []
    for key in keys:
        key = key.reset_index(drop=True)
        key = key[key.notna() & (key.astype(str) != "") & (key.astype(str) != "<NA>")]
        dup = key[key.duplicated(keep=False)]
        groups += [idx.to_numpy() for _, idx in dup.groupby(dup, sort=False).groups.items()]
    return groups


def linked_units(block: np.ndarray, links: list[np.ndarray]) -> np.ndarray:
    """Unit label per row: blocks joined (transitively) when a link group has rows in several of them.

    block: (N,) block ids; links: row-position groups. Connected components of the block graph.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    codes, uniq = pd.factorize(pd.Series(block), sort=True)
    a = [np.full(len(g) - 1, codes[g[0]]) for g in links if len(g) > 1]
    b = [codes[g[1:]] for g in links if len(g) > 1]
    a = np.concatenate(a) if a else np.zeros(0, int)
    b = np.concatenate(b) if b else np.zeros(0, int)
    graph = coo_matrix((np.ones(len(a)), (a, b)), shape=(len(uniq), len(uniq)))
    _, comp = connected_components(graph, directed=False)
    return comp[codes]


def spatial_block_split(manifest: pd.DataFrame, *, block_km: float = 25.0, val_frac: float = 0.15,
                        test_frac: float = 0.15, seed: int = 0, buffer_km: float = 0.0,
                        calibration_frac: float = CALIBRATION_FRAC) -> pd.DataFrame:
    """Return a copy of ``manifest`` with ``block_id``, ``split`` and ``split_unit``.

    ``split`` is train, val (the selection part of validation: every choice is made on it),
    val_cal (the calibration part: ``calibration_frac`` of each province's validation units, used
    only to fit 06's calibration, so its test coverage is honest), test or buffer.

    A block is a ``block_km`` square on the ground (the same grid for every province). Blocks that
    hold rows at the same coordinates, with the same file bytes (sha1) or the same perceptual hash
    (phash) are joined into one unit (:func:`duplicate_links`), so such rows never sit in two splits.
    A unit's home province is the one with most rows; the units of each home province are split to
    approximate (1 - val - test, val, test) of its rows. With ``buffer_km`` > 0 every training
    sample within that distance of a validation or test sample becomes ``buffer``: kept in the
    manifest, used neither for training nor for scoring. Deterministic for a seed and independent
    of row order. The demo builder keeps every crop inside its ``block_km`` block, so its splits
    share no ground (docs/decisions/demo.md).
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
    out["block_id"] = block_ids(out["latitude"], out["longitude"], block_km)
    unit = linked_units(out["block_id"].to_numpy(), duplicate_links(out))
    # a unit is named by its smallest block id, so the name does not depend on the row order
    names = pd.Series(out["block_id"].to_numpy()).groupby(unit).transform("min").to_numpy()
    out["split_unit"] = names
    counts = pd.DataFrame({"unit": names, "pid": pid.to_numpy()}).value_counts().reset_index(name="n")
    # home province: most samples, then lower id (value_counts order is not a tie-break we control)
    home = counts.sort_values(["unit", "n", "pid"], ascending=[True, False, True]).drop_duplicates("unit")
    unit_n = out["split_unit"].value_counts()
    fractions = {"train": 1 - val_frac - test_frac, "val": val_frac, "test": test_frac}
    split_of = {}
    for p, units in home.groupby("pid")["unit"]:
        rng = np.random.default_rng([seed, int(p)])
        split_of.update(_assign_province(unit_n[units.to_numpy()], fractions, rng))
    for p, units in home.groupby("pid")["unit"]:  # whole validation units move to the calibration part
        val_units = np.sort([u for u in units if split_of[u] == "val"])
        rng = np.random.default_rng([seed, int(p), 7])
        for u in rng.permutation(val_units)[: int(round(calibration_frac * len(val_units)))]:
            split_of[u] = "val_cal"
    out["split"] = out["split_unit"].map(split_of)
    if buffer_km > 0:
        out.loc[_near_held_out(out, buffer_km), "split"] = "buffer"
    cols = [c for c in MANIFEST_COLUMNS if c in out.columns]
    return out[cols + [c for c in out.columns if c not in cols]]


def _near_held_out(df: pd.DataFrame, km: float) -> np.ndarray:
    """Mask of training rows within ``km`` of a val/test row (haversine)."""
    from sklearn.neighbors import BallTree

    train, held = (df["split"] == "train").to_numpy(), df["split"].isin(HELD_OUT).to_numpy()
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
    for a, b in (("train", "val"), ("train", "val_cal"), ("train", "test"), ("val", "test")):
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
    cols = list(SPLITS) + [s for s in ("val_cal", "buffer") if (manifest["split"] == s).any()]
    table = pd.crosstab(manifest["province"], manifest["split"]).reindex(
        index=list(PROVINCES), columns=cols, fill_value=0)
    table.loc["All"] = table.sum()
    table["total"] = table.sum(axis=1)
    blocks = manifest.groupby("province")["block_id"].nunique()
    table["n_blocks"] = blocks.reindex(table.index, fill_value=0)
    table.loc["All", "n_blocks"] = manifest["block_id"].nunique()
    table.index.name = "province"
    return table


def window_boxes(windows: pd.DataFrame) -> np.ndarray:
    """(N, 4) lat_min, lat_max, lon_min, lon_max (degrees) of square crops: window_lat, window_lon, window_km."""
    from geopak_lib.geo import km_to_deg

    half = windows["window_km"].to_numpy(float) / 2
    c_lat, c_lon = windows["window_lat"].to_numpy(float), windows["window_lon"].to_numpy(float)
    half_lat, half_lon = km_to_deg(half, half, c_lat)
    return np.stack([c_lat - half_lat, c_lat + half_lat, c_lon - half_lon, c_lon + half_lon], axis=1)


def shared_ground(manifest: pd.DataFrame, windows: pd.DataFrame) -> pd.DataFrame:
    """Per held-out (val, val_cal, test) row, the largest share of its window's area inside one training window.

    manifest: id, split; windows: id, window_lat, window_lon, window_km (the demo's demo_meta.csv).
    Returns id, split, shared (0-1, in degree-box area). Rows sorted by latitude, so each held-out
    window is compared only with training windows whose latitude range meets it.
    """
    df = manifest[["id", "split"]].merge(windows, on="id", how="inner")
    box = window_boxes(df)
    train = box[(df["split"] == "train").to_numpy()]
    train = train[np.argsort(train[:, 0])]
    max_half = (train[:, 1] - train[:, 0]).max() if len(train) else 0.0
    held = np.flatnonzero(df["split"].isin(HELD_OUT).to_numpy())
    shared = np.zeros(len(held))
    for k, i in enumerate(held):
        b = box[i]
        lo, hi = np.searchsorted(train[:, 0], [b[0] - max_half, b[1]])
        t = train[lo:hi]
        dlat = np.clip(np.minimum(t[:, 1], b[1]) - np.maximum(t[:, 0], b[0]), 0, None)
        dlon = np.clip(np.minimum(t[:, 3], b[3]) - np.maximum(t[:, 2], b[2]), 0, None)
        area = (b[1] - b[0]) * (b[3] - b[2])
        shared[k] = (dlat * dlon).max() / area if len(t) else 0.0
    return pd.DataFrame({"id": df["id"].to_numpy()[held], "split": df["split"].to_numpy()[held], "shared": shared})
