"""Refinement inside the predicted cells (after PIGEON's prototype refiner; docs/decisions/refinement.md).

Each hypothesis of the mixture (a cell centre + offset) moves towards the training images (or
prototypes) of its own cell that look most like the query, never by more than the cell's radius;
optionally each hypothesis weight is re-scored by how well its cell matched. Pure numpy over
arrays. The gallery is indexed by cell (items sorted by cell, ``cell_start`` offsets), so a query
compares itself with the items of its own hypothesised cells only, never with the whole gallery.
Decisions and measurements: docs/decisions/refinement.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from geopak_lib import geo
from geopak_lib.constants import EARTH_RADIUS_KM



def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1 (zero rows stay zero): (..., D) -> (..., D) float32."""
    x = np.asarray(x, np.float32)
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(n > 0, n, 1.0)


@dataclass(frozen=True)
class Gallery:
    """Gallery items sorted by cell. embedding (M, D) unit rows; lat, lon (M,) degrees;
    cell_start (N + 1,) int64: the items of cell c are rows cell_start[c]:cell_start[c + 1]."""

    embedding: np.ndarray
    lat: np.ndarray
    lon: np.ndarray
    cell_start: np.ndarray

    @classmethod
    def from_items(cls, embedding, lat, lon, cell_id, *, n_cells: int, dtype=np.float32) -> "Gallery":
        """Items in any order: embedding (M, D), lat, lon (M,) degrees, cell_id (M,) in [0, n_cells)
        (items with cell_id < 0 are dropped). Embeddings are normalised to unit length."""
        cell_id = np.asarray(cell_id, int)
        keep = cell_id >= 0
        if (cell_id >= n_cells).any():
            raise ValueError(f"gallery cell ids must be < n_cells={n_cells}, got {int(cell_id.max())}")
        order = np.flatnonzero(keep)[np.argsort(cell_id[keep], kind="stable")]
        counts = np.bincount(cell_id[keep], minlength=n_cells)
        return cls(unit_rows(np.asarray(embedding)[order]).astype(dtype), np.asarray(lat, float)[order],
                   np.asarray(lon, float)[order], np.r_[0, np.cumsum(counts)].astype(np.int64))

    @property
    def n_cells(self) -> int:
        return len(self.cell_start) - 1

    def cell_counts(self) -> np.ndarray:
        return np.diff(self.cell_start)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.embedding, self.lat, self.lon, self.cell_start))


def move_towards(lat, lon, target_lat, target_lon, *, max_km, step: float = 1.0):
    """Move each point along the great circle towards its target by step × the distance, but never
    more than max_km. All (...,) degrees / km -> (lat, lon, moved_km) (...,)."""
    p, t = geo.to_unit_vectors(lat, lon), geo.to_unit_vectors(target_lat, target_lon)  # (..., 3)
    theta = np.arccos(np.clip((p * t).sum(-1), -1.0, 1.0))  # angle between them, radians
    move = np.minimum(step * theta, np.maximum(np.asarray(max_km, float), 0.0) / EARTH_RADIUS_KM)
    sin_t = np.sin(theta)
    ok = sin_t > 1e-12  # coincident points (or antipodes): stay put
    a = np.where(ok, np.sin(theta - move) / np.where(ok, sin_t, 1.0), 1.0)
    b = np.where(ok, np.sin(move) / np.where(ok, sin_t, 1.0), 0.0)
    new_lat, new_lon = geo.from_unit_vectors(a[..., None] * p + b[..., None] * t)
    return new_lat, new_lon, np.where(ok, move, 0.0) * EARTH_RADIUS_KM


def _cell_targets(query, rows, gallery: Gallery, c: int, k: int, temperature: float):
    """The query rows' targets in cell c: softmax(sim / temperature) over the top-k items, their
    locations averaged on the sphere. query[rows] (m, D) -> lat, lon, best similarity (m,)."""
    s, e = gallery.cell_start[c], gallery.cell_start[c + 1]
    sims = query[rows] @ np.asarray(gallery.embedding[s:e], np.float32).T  # (m, n_c): this cell's items only
    kk = min(k, e - s)
    top = np.argpartition(-sims, kk - 1, axis=1)[:, :kk] if kk < e - s else np.broadcast_to(np.arange(kk), sims.shape)
    top_sims = np.take_along_axis(sims, top, 1)  # (m, kk)
    a = np.exp((top_sims - top_sims.max(1, keepdims=True)) / temperature)
    t_lat, t_lon = geo.spherical_mean(gallery.lat[s:e][top], gallery.lon[s:e][top], a)  # (m,) each
    return t_lat, t_lon, top_sims.max(1)


def refine_hypotheses(query, cell_id, lat, lon, *, weight, gallery: Gallery, cell_radius_km, k: int = 1,
                      step: float = 1.0, temperature: float = 0.05, rescore_temperature: float | None = None) -> dict:
    """Move each hypothesis towards the best-matching gallery items of its own cell.

    query (B, D) embeddings (normalised here); cell_id (B, H) global cell ids (-1 = padding);
    lat, lon (B, H) degrees (the cell centre + offset points); weight (B, H) summing to 1 per row;
    cell_radius_km (N,). The target of a hypothesis is the spherical mean of its cell's top-``k``
    items by cosine similarity, weighted by softmax(similarity / temperature); the point moves
    ``step`` × the way there along the great circle, at most its cell's radius. A hypothesis whose
    cell has no gallery item (or padding) keeps its point.
    rescore_temperature: None keeps the weights; otherwise w_h ∝ w_h · exp((s_h - s̄) / T), where
    s_h is the best similarity in the hypothesis' cell and s̄ the mean of s_h over the row's
    hypotheses that have items (hypotheses without items count as s̄: factor 1).
    Returns lat, lon, weight, moved_km (B, H); score (B, H) best similarity, NaN without items.
    """
    if k < 1 or temperature <= 0 or not 0.0 <= step <= 1.0:
        raise ValueError(f"need k >= 1, temperature > 0 and 0 <= step <= 1; got {k}, {temperature}, {step}")
    query = unit_rows(query)
    cell_id, lat, lon = np.asarray(cell_id, int), np.asarray(lat, float), np.asarray(lon, float)
    weight = np.asarray(weight, float)
    counts = gallery.cell_counts()
    has = (cell_id >= 0) & (counts[np.clip(cell_id, 0, None)] > 0)
    t_lat, t_lon, score = lat.copy(), lon.copy(), np.full(lat.shape, np.nan)
    b_idx, h_idx = np.nonzero(has)
    cells = cell_id[b_idx, h_idx]
    for c in np.unique(cells):  # one small matrix product per hypothesised cell
        sel = cells == c
        la, lo, sc = _cell_targets(query, b_idx[sel], gallery, int(c), k, temperature)
        t_lat[b_idx[sel], h_idx[sel]], t_lon[b_idx[sel], h_idx[sel]], score[b_idx[sel], h_idx[sel]] = la, lo, sc
    radius = np.where(has, np.asarray(cell_radius_km, float)[np.clip(cell_id, 0, None)], 0.0)
    new_lat, new_lon, moved = move_towards(lat, lon, t_lat, t_lon, max_km=radius, step=step)
    new_lat, new_lon = np.where(has, new_lat, lat), np.where(has, new_lon, lon)
    if rescore_temperature is not None:
        n = has.sum(1, keepdims=True)
        mean = np.where(n > 0, np.where(has, score, 0.0).sum(1, keepdims=True) / np.maximum(n, 1), 0.0)
        factor = np.exp(np.where(has, score - mean, 0.0) / rescore_temperature)
        weight = weight * factor
        weight = weight / np.maximum(weight.sum(1, keepdims=True), 1e-30)
    return {"lat": new_lat, "lon": new_lon, "weight": weight, "moved_km": np.where(has, moved, 0.0), "score": score}
