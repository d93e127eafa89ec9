"""The geocell table, whatever built it: its columns and dtypes, neighbour lists, the nearest cell
of a point's own province, and geocells.json / geocells.csv (neighbor_cell_ids space-separated in
the CSV; every reader here and in the model accepts lists, that form or JSON). Building the cells:
geocells.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from geopak_lib.constants import PROVINCE_ID, PROVINCES
from geopak_lib.geo import haversine_km
from geopak_lib.utils import atomic_write_bytes, read_json

# What the model needs of a cell; geocells.json/.csv also carry the province name and n_samples.
MODEL_CELL_COLUMNS = ("cell_id", "province_id", "center_lat", "center_lon", "radius_km", "neighbor_cell_ids")
CELL_COLUMNS = ["cell_id", "province_id", "province", "center_lat", "center_lon", "radius_km",
                "neighbor_cell_ids", "n_samples"]
ASSIGNMENT_COLUMNS = ["id", "province_id", "cell_id", "cell_center_lat", "cell_center_lon"]
# Cells per province of the published GEOPAK geocells (699 cells from ~90k images).
REFERENCE_CELLS = {"Sindh": 450, "Punjab": 139, "Khyber Pakhtunkhwa": 50,
                   "Islamabad Capital Territory": 19, "Gilgit-Baltistan": 30, "Balochistan": 6,
                   "Azad Kashmir": 5}


def check_points(df: pd.DataFrame, what: str) -> None:
    """Clear errors for a frame of samples that cannot be clustered or assigned."""
    missing = [c for c in ("id", "latitude", "longitude", "province") if c not in df.columns]
    if missing:
        raise ValueError(f"{what}: missing column(s) {missing}; need id, latitude, longitude, province")
    bad = np.flatnonzero(~df["province"].isin(PROVINCES).to_numpy())
    if bad.size:
        raise ValueError(f"{what}: unknown province {df['province'].iloc[bad[0]]!r} at row(s) {bad[:5].tolist()}; "
                         f"expected one of {list(PROVINCES)}")
    coords = df[["latitude", "longitude"]].to_numpy(float)
    bad = np.flatnonzero(~np.isfinite(coords).all(1))
    if bad.size:
        raise ValueError(f"{what}: missing or non-finite latitude/longitude at row(s) {bad[:5].tolist()}")
    if "province_id" in df.columns:
        bad = np.flatnonzero(df["province"].map(PROVINCE_ID).to_numpy() != df["province_id"].to_numpy())
        if bad.size:
            raise ValueError(f"{what}: province_id disagrees with province at row(s) {bad[:5].tolist()}; "
                             "ids follow constants.PROVINCES")


def parse_id_list(value) -> list[int]:
    """neighbor_cell_ids in any form it is stored in: a list or array, the CSV's space-separated
    "3 7 12", a JSON "[3, 7, 12]", or empty ("", None, NaN) -> list of ints."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return []
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return [int(i) for i in json.loads(text)]
        return [int(t) for t in text.replace(",", " ").split()]
    return [int(i) for i in np.asarray(value, dtype=np.int64).ravel()]


def cells_frame(records) -> pd.DataFrame:
    """Cell records -> DataFrame with CELL_COLUMNS and fixed dtypes (shared by build and load)."""
    cells = pd.DataFrame(list(records), columns=CELL_COLUMNS)
    for c in ("cell_id", "province_id", "n_samples"):
        cells[c] = cells[c].astype("int64")
    for c in ("center_lat", "center_lon", "radius_km"):
        cells[c] = cells[c].astype("float64")
    cells["province"] = cells["province"].astype(str)
    cells["neighbor_cell_ids"] = [parse_id_list(v) for v in cells["neighbor_cell_ids"]]
    if not np.array_equal(cells["cell_id"].to_numpy(), np.arange(len(cells))):
        raise ValueError("cells: cell_id must be 0..N-1 in row order")
    return cells


def cell_distance_matrix_km(cells: pd.DataFrame) -> np.ndarray:
    """(N, N) haversine km between cell centres, rows and columns in cell_id order."""
    lat, lon = cells["center_lat"].to_numpy(float), cells["center_lon"].to_numpy(float)
    return haversine_km(lat[:, None], lon[:, None], lat[None, :], lon[None, :])


def neighbor_lists(cells: pd.DataFrame, k: int) -> list[list[int]]:
    """For each cell, the ``k`` nearest other cells of its province by centre distance
    (ties: lower cell_id first), nearest first. Fewer when the province has <= k other cells."""
    out = [[] for _ in range(len(cells))]
    pids = cells["province_id"].to_numpy()
    for pid in np.unique(pids):
        ids = np.flatnonzero(pids == pid)  # cell_id == row position
        d = cell_distance_matrix_km(cells.iloc[ids])
        np.fill_diagonal(d, np.inf)
        for row, cid in enumerate(ids):
            out[cid] = [int(ids[j]) for j in np.argsort(d[row], kind="stable")[:min(k, len(ids) - 1)]]
    return out


def cells_per_province(cells: pd.DataFrame) -> list[int]:
    """Number of cells of each province, length 7 in PROVINCES order (0 where none)."""
    return np.bincount(cells["province_id"].to_numpy(int), minlength=len(PROVINCES)).tolist()


def assign_nearest_cells(df: pd.DataFrame, cells: pd.DataFrame, chunk: int = 4096) -> pd.DataFrame:
    """Each row's nearest cell centre (haversine) within its own province; ASSIGNMENT_COLUMNS,
    in df's row order. A row whose province has no cells gets cell_id -1 and NaN centre."""
    check_points(df, "df")
    lat, lon = df["latitude"].to_numpy(float), df["longitude"].to_numpy(float)
    pid = df["province"].map(PROVINCE_ID).to_numpy(int)
    cell_id = np.full(len(df), -1, np.int64)
    clat_all, clon_all = cells["center_lat"].to_numpy(float), cells["center_lon"].to_numpy(float)
    for p in np.unique(pid):
        ids = np.flatnonzero(cells["province_id"].to_numpy() == p)
        rows = np.flatnonzero(pid == p)
        for s in range(0, len(rows) if ids.size else 0, chunk):  # chunks bound the (rows, cells) matrix
            r = rows[s:s + chunk]
            d = haversine_km(lat[r, None], lon[r, None], clat_all[None, ids], clon_all[None, ids])
            cell_id[r] = ids[np.argmin(d, 1)]
    has = cell_id >= 0
    safe = np.where(has, cell_id, 0)
    centre = [np.where(has, v[safe], np.nan) if len(v) else np.full(len(df), np.nan) for v in (clat_all, clon_all)]
    return pd.DataFrame({"id": df["id"].to_numpy(), "province_id": pid, "cell_id": cell_id,
                         "cell_center_lat": centre[0], "cell_center_lon": centre[1]})


def assign_all_rows(manifest: pd.DataFrame, cells: pd.DataFrame, train_assignments: pd.DataFrame) -> pd.DataFrame:
    """assignments.csv: every manifest row's cell (training rows as the build assigned them, the
    others the nearest cell of their own province) with its split. Columns ASSIGNMENT_COLUMNS + split."""
    held_out = manifest[manifest["split"] != "train"]
    rows = pd.concat([train_assignments, assign_nearest_cells(held_out, cells)], ignore_index=True)
    return rows.merge(manifest[["id", "split"]], on="id")


def save_geocells(cells: pd.DataFrame, out_dir) -> tuple[Path, Path]:
    """Write ``geocells.json`` (a list of cell objects) and ``geocells.csv`` (neighbor_cell_ids
    space-separated) into out_dir. Returns (json_path, csv_path)."""
    cells = cells_frame(cells[CELL_COLUMNS].to_dict("records"))
    out_dir = Path(out_dir)
    records = cells.to_dict("records")  # native int/float/str/list: json writes floats exactly
    json_path, csv_path = out_dir / "geocells.json", out_dir / "geocells.csv"
    atomic_write_bytes(json_path, (json.dumps(records, indent=1) + "\n").encode())
    flat = cells.assign(neighbor_cell_ids=[" ".join(map(str, v)) for v in cells["neighbor_cell_ids"]])
    atomic_write_bytes(csv_path, flat.to_csv(index=False).encode())
    return json_path, csv_path


def load_geocells(path) -> pd.DataFrame:
    """Read geocells back from a .json or .csv file, or from a folder holding geocells.json."""
    path = Path(path)
    if path.is_dir():
        path = path / "geocells.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no geocells file; run notebook 01_geocells first")
    if path.suffix not in (".json", ".csv"):
        raise ValueError(f"{path}: expected a .json or .csv geocells file")
    if path.suffix == ".json":
        frame = pd.DataFrame(read_json(path, "re-run notebook 01_geocells to rewrite it"))
    else:
        frame = pd.read_csv(path, dtype={"neighbor_cell_ids": str, "province": str}, keep_default_na=False)
    if frame.empty and not len(frame.columns):  # "[]": a build with no cells at all
        frame = pd.DataFrame(columns=CELL_COLUMNS)
    missing = [c for c in CELL_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; expected {CELL_COLUMNS}")
    records = frame.to_dict("records")
    return cells_frame(records)


def province_cell_table(cells: pd.DataFrame) -> pd.DataFrame:
    """One row per province: n_cells next to the published GEOPAK count, samples per cell
    (min, median) and median radius_km. For the notebook's tables."""
    rows = []
    for pid, prov in enumerate(PROVINCES):
        c = cells[cells["province_id"] == pid]
        rows.append(dict(province=prov, n_cells=len(c), reference_cells=REFERENCE_CELLS[prov],
                         min_samples_per_cell=int(c["n_samples"].min()) if len(c) else 0,
                         median_samples_per_cell=float(c["n_samples"].median()) if len(c) else 0.0,
                         median_radius_km=float(c["radius_km"].median()) if len(c) else float("nan")))
    return pd.DataFrame(rows)
