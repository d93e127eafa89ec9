"""Province-aware geocells (spec 000 §1.2, 001 "Geocell Construction").

Each province is clustered on its own, in metres in its fixed UTM zone (constants.UTM_ZONE):
HDBSCAN (or K-Means) -> noise to the nearest cluster centroid -> merge cells under
``min_cell_size`` into the nearest centroid -> 2-means split of cells wider than their cap
(urban or rural), kept only when both parts hold ``min_cell_size``. Rules and reasons:
docs/decisions/geocells.md. Distances are km unless a name says metres; order is (lat, lon).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from geopak_lib.constants import PROVINCE_ID, PROVINCES, UTM_ZONE
from geopak_lib.data.cells import check_points, cells_frame, neighbor_lists
from geopak_lib.geo import from_utm, haversine_km, to_utm

STATS_COLUMNS = ["province", "province_id", "n_train", "n_cells", "n_noise_reassigned", "n_merged",
                 "n_split", "n_over_radius", "note"]
@dataclass
class GeocellConfig:
    """Geocell settings. Radii in km; sizes in training samples."""

    method: str = "hdbscan"  # "hdbscan" (spec's preference) or "kmeans"
    min_cell_size: int = 40  # spec: min samples per cell; also HDBSCAN's min_cluster_size
    min_samples: int = 5  # HDBSCAN min_samples (density smoothing)
    max_radius_km: float = 50.0  # rural cap (spec 001)
    urban_max_radius_km: float = 5.0  # urban cap (spec 001); who is urban: urban_cap_km()
    neighbors_k: int = 6  # neighbours = the k nearest cells of the same province
    kmeans_target_size: int = 130  # kmeans: k = n_train // this (published mean: 90515/699)
    seed: int = 0
    radius_quantile: float = 0.95  # radius_km = this quantile of member distance to the centre
    min_radius_km: float = 1.0  # floor, so the offset clamp never freezes a tight cell at 0
    cluster_selection_method: str = "eom"  # HDBSCAN: "eom" or "leaf"

    def __post_init__(self):
        def need(ok, msg):
            if not ok:
                raise ValueError(f"GeocellConfig: {msg}")
        need(self.method in ("hdbscan", "kmeans"), f"method must be 'hdbscan' or 'kmeans', got {self.method!r}")
        need(self.cluster_selection_method in ("eom", "leaf"),
             f"cluster_selection_method must be 'eom' or 'leaf', got {self.cluster_selection_method!r}")
        for name in ("min_cell_size", "min_samples", "neighbors_k", "kmeans_target_size"):
            v = getattr(self, name)
            need(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= (0 if name == "neighbors_k" else 1),
                 f"{name} must be an integer >= {0 if name == 'neighbors_k' else 1}, got {v!r}")
        need(self.min_cell_size >= 2, f"min_cell_size must be >= 2 (HDBSCAN needs it), got {self.min_cell_size}")
        need(0 < self.urban_max_radius_km <= self.max_radius_km,
             f"need 0 < urban_max_radius_km <= max_radius_km, got {self.urban_max_radius_km}, {self.max_radius_km}")
        need(0.0 < self.radius_quantile <= 1.0, f"radius_quantile must be in (0, 1], got {self.radius_quantile}")
        need(self.min_radius_km >= 0.0, f"min_radius_km must be >= 0, got {self.min_radius_km}")


@dataclass
class GeocellResult:
    """cells: CELL_COLUMNS, one row per cell in cell_id order. assignments: ASSIGNMENT_COLUMNS,
    one row per training row in input order. stats: STATS_COLUMNS, one row per province."""

    cells: pd.DataFrame
    assignments: pd.DataFrame
    stats: pd.DataFrame


# --- pure per-cell maths ------------------------------------------------------------------

def cell_centre_radius(lat, lon, zone: int, *, quantile: float = 0.95, min_radius_km: float = 0.0):
    """Centre and size of one cell from its members (N,) in degrees.

    Centre = mean of the members in UTM ``zone`` metres, projected back to (lat, lon).
    Returns (center_lat, center_lon, radius_km, median_km): the ``quantile`` and median of the
    haversine member-to-centre distances; radius_km is floored at ``min_radius_km``.
    """
    x, y = to_utm(lat, lon, zone)
    clat, clon = from_utm(x.mean(), y.mean(), zone)
    d = haversine_km(clat, clon, np.asarray(lat, float), np.asarray(lon, float))
    return float(clat), float(clon), max(float(np.quantile(d, quantile)), min_radius_km), float(np.median(d))


def urban_cap_km(n: int, median_km: float, config: GeocellConfig) -> float:
    """Radius cap for a cell of ``n`` samples whose median member distance is ``median_km``.

    Urban when the inner half is so dense that a disc of urban_max_radius_km would still hold
    min_cell_size samples: (n/2) / (pi median^2) >= min_cell_size / (pi urban_max^2).
    """
    urban = (n / 2.0) * config.urban_max_radius_km ** 2 >= config.min_cell_size * median_km ** 2
    return config.urban_max_radius_km if urban else config.max_radius_km


def _centroids(xy, labels, k):
    """Mean of the points of each label 0..k-1; xy (N, 2), labels (N,) -> (k, 2)."""
    counts = np.bincount(labels, minlength=k).astype(float)
    return np.stack([np.bincount(labels, xy[:, j], minlength=k) for j in (0, 1)], 1) / counts[:, None]


def _cluster(xy_km, config):
    """Raw labels (N,), -1 for noise. xy_km: projected points (N, 2) in km, canonical order."""
    if config.method == "kmeans":
        from sklearn.cluster import KMeans
        k = max(1, len(xy_km) // config.kmeans_target_size)
        return KMeans(n_clusters=k, n_init=3, random_state=config.seed).fit_predict(xy_km)
    import hdbscan
    # boruvka + approximate MST: ~seconds for 70k points; deterministic for a fixed input.
    return hdbscan.HDBSCAN(min_cluster_size=config.min_cell_size, min_samples=config.min_samples,
                           cluster_selection_method=config.cluster_selection_method,
                           algorithm="boruvka_kdtree", approx_min_span_tree=True,
                           core_dist_n_jobs=1).fit_predict(xy_km)


def _reassign_and_merge(xy_km, labels, min_size):
    """Noise to the nearest cluster centroid, then merge small clusters. -> labels 0..k-1, n_noise, n_merged."""
    from scipy.spatial import cKDTree
    labels = np.asarray(labels).copy()
    noise = labels < 0
    if noise.all():  # HDBSCAN found no cluster (e.g. a sparse, even spread): start from one
        return np.zeros(len(labels), int), 0, 0
    _, labels[~noise] = np.unique(labels[~noise], return_inverse=True)
    k = labels.max() + 1
    if noise.any():
        labels[noise] = cKDTree(_centroids(xy_km[~noise], labels[~noise], k)).query(xy_km[noise])[1]
    sizes = np.bincount(labels, minlength=k).astype(float)
    cents, alive, n_merged = _centroids(xy_km, labels, k), sizes > 0, 0
    while alive.sum() > 1:
        small = np.flatnonzero(alive & (sizes < min_size))
        if not small.size:
            break
        s = small[np.argmin(sizes[small])]  # the smallest first; argmin breaks ties by label
        d = np.where(alive, np.hypot(*(cents - cents[s]).T), np.inf)
        d[s] = np.inf
        t = int(np.argmin(d))
        cents[t] = (cents[t] * sizes[t] + cents[s] * sizes[s]) / (sizes[t] + sizes[s])
        sizes[t], sizes[s], alive[s] = sizes[t] + sizes[s], 0, False
        labels[labels == s] = t
        n_merged += 1
    _, labels = np.unique(labels, return_inverse=True)
    return labels, int(noise.sum()), n_merged


def two_means(xy: np.ndarray, max_iter: int = 100) -> np.ndarray:
    """Lloyd's 2-means of points (N, 2) -> part (N,) in {0, 1}. Deterministic and seedless:
    it starts from a cut through the mean across the principal axis (no random restarts, which
    made sklearn's KMeans the slowest step of a build)."""
    d = xy - xy.mean(0)
    axis = np.linalg.eigh(d.T @ d)[1][:, -1]  # direction of largest spread
    part = (d @ axis > 0).astype(np.int64)
    for _ in range(max_iter):
        if part.all() or not part.any():
            break
        cent = np.stack([xy[part == 0].mean(0), xy[part == 1].mean(0)])
        new = (((xy - cent[1]) ** 2).sum(1) < ((xy - cent[0]) ** 2).sum(1)).astype(np.int64)
        if np.array_equal(new, part):
            break
        part = new
    return part


def _split_large(groups, xy_km, lat, lon, zone, config):
    """2-means split of every group wider than its cap, recursively, while both parts keep
    min_cell_size. groups: list of index arrays. -> (groups, n_split, n_over_radius)."""
    stack, done, n_split, n_over = list(groups)[::-1], [], 0, 0
    while stack:
        g = stack.pop()
        _, _, radius, median = cell_centre_radius(lat[g], lon[g], zone, quantile=config.radius_quantile,
                                                  min_radius_km=config.min_radius_km)
        if radius <= urban_cap_km(len(g), median, config):
            done.append(g)
            continue
        if len(g) >= 2 * config.min_cell_size:
            part = two_means(xy_km[g])
            a, b = g[part == 0], g[part == 1]
            if min(len(a), len(b)) >= config.min_cell_size:
                n_split += 1
                stack += [b, a]
                continue
        done.append(g)  # too wide but cannot be split without a part under min_cell_size
        n_over += 1
    return done, n_split, n_over


def _province_groups(lat, lon, province, config):
    """Member index arrays (into the canonical order) and stats for one province."""
    n, zone = len(lat), UTM_ZONE[province]
    stats = dict(n_train=n, n_noise_reassigned=0, n_merged=0, n_split=0, n_over_radius=0, note="")
    if n == 0:
        stats["note"] = "no training samples: no cells, no head"
        return [], stats
    if n < config.min_cell_size:
        stats["note"] = f"fewer than {config.min_cell_size} training samples: one cell"
        return [np.arange(n)], stats
    x, y = to_utm(lat, lon, zone)
    xy_km = np.stack([x, y], 1) / 1000.0
    labels, stats["n_noise_reassigned"], stats["n_merged"] = _reassign_and_merge(
        xy_km, _cluster(xy_km, config), config.min_cell_size)
    groups = [np.flatnonzero(labels == c) for c in range(labels.max() + 1)]
    groups, stats["n_split"], stats["n_over_radius"] = _split_large(groups, xy_km, lat, lon, zone, config)
    return groups, stats


# --- public API ----------------------------------------------------------------------------

def build_geocells(train: pd.DataFrame, config: GeocellConfig | None = None) -> GeocellResult:
    """Geocells from training rows (id, latitude, longitude, province[, province_id]).

    Row order does not matter: each province is sorted by (latitude, longitude, id) before
    clustering, and cells are numbered by province (PROVINCES order), then centre (lat, lon).
    """
    config = config or GeocellConfig()
    check_points(train, "train")
    lat_all, lon_all = train["latitude"].to_numpy(float), train["longitude"].to_numpy(float)
    prov_all = train["province"].to_numpy()
    records, stats_rows, cell_of_row = [], [], np.full(len(train), -1, np.int64)
    for pid, prov in enumerate(PROVINCES):
        rows = np.flatnonzero(prov_all == prov)
        canon = pd.DataFrame({"lat": lat_all[rows], "lon": lon_all[rows], "id": train["id"].to_numpy()[rows]})
        order = rows[canon.sort_values(["lat", "lon", "id"], kind="mergesort").index.to_numpy()]
        lat, lon = lat_all[order], lon_all[order]
        groups, st = _province_groups(lat, lon, prov, config)
        summaries = [cell_centre_radius(lat[g], lon[g], UTM_ZONE[prov], quantile=config.radius_quantile,
                                        min_radius_km=config.min_radius_km) for g in groups]
        for i in sorted(range(len(groups)), key=lambda i: summaries[i][:2]):
            clat, clon, radius, _ = summaries[i]
            cell_of_row[order[groups[i]]] = len(records)
            records.append(dict(cell_id=len(records), province_id=pid, province=prov, center_lat=clat,
                                center_lon=clon, radius_km=radius, neighbor_cell_ids=[],
                                n_samples=len(groups[i])))
        stats_rows.append(dict(province=prov, province_id=pid, n_cells=len(groups), **st))
    cells = cells_frame(records)
    cells["neighbor_cell_ids"] = neighbor_lists(cells, config.neighbors_k)
    assignments = pd.DataFrame({
        "id": train["id"].to_numpy(), "province_id": train["province"].map(PROVINCE_ID).to_numpy(),
        "cell_id": cell_of_row, "cell_center_lat": cells["center_lat"].to_numpy()[cell_of_row],
        "cell_center_lon": cells["center_lon"].to_numpy()[cell_of_row]})
    stats = pd.DataFrame(stats_rows, columns=STATS_COLUMNS)
    message = collapse_warning(stats, config)
    if message:
        warnings.warn(message, GeocellCollapseWarning, stacklevel=2)
    return GeocellResult(cells, assignments, stats)


class GeocellCollapseWarning(UserWarning):
    """Every province got one cell: the cell heads cannot add anything to the province head."""


def collapse_warning(stats: pd.DataFrame, config: GeocellConfig) -> str | None:
    """The warning text when each populated province has a single cell, else None."""
    populated = stats[stats["n_cells"] > 0]
    if len(populated) == 0 or (populated["n_cells"] > 1).any():
        return None
    return (f"geocells collapsed to one cell per province ({len(populated)} cells): with "
            f"min_cell_size={config.min_cell_size} the model is only a province classifier; "
            "lower the setting min_cell_size (profile section notebooks: 01_geocells) for a small dataset")


