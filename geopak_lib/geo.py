"""Geodesy helpers: haversine, km<->degree offsets, UTM projection, province polygons.

All angles are degrees, all distances km unless a name says metres. Order is always (lat, lon).
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

import numpy as np
import torch

from geopak_lib.constants import EARTH_RADIUS_KM, PROVINCES

KM_PER_DEG_LAT = np.pi * EARTH_RADIUS_KM / 180.0  # ~111.195 km per degree of latitude


def haversine_km(lat1, lon1, lat2, lon2):
    """Great-circle distance in km. Works on floats, numpy arrays or torch tensors (broadcasting).

    Torch inputs keep autograd; the sqrt argument is clamped away from 0 so the gradient at a
    perfect prediction stays finite.
    """
    if any(isinstance(v, torch.Tensor) for v in (lat1, lon1, lat2, lon2)):
        lat1, lon1, lat2, lon2 = (torch.as_tensor(v, dtype=torch.float32) if not isinstance(v, torch.Tensor) else v
                                  for v in (lat1, lon1, lat2, lon2))
        p1, p2 = torch.deg2rad(lat1), torch.deg2rad(lat2)
        dp, dl = p2 - p1, torch.deg2rad(lon2 - lon1)
        a = torch.sin(dp / 2) ** 2 + torch.cos(p1) * torch.cos(p2) * torch.sin(dl / 2) ** 2
        return 2 * EARTH_RADIUS_KM * torch.asin(torch.sqrt(a.clamp(1e-12, 1.0)))
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dp, dl = p2 - p1, np.radians(np.asarray(lon2) - np.asarray(lon1))
    a = np.sin(dp / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


def km_to_deg(dnorth_km, deast_km, lat):
    """Convert a local (north, east) offset in km at latitude ``lat`` to (dlat, dlon) degrees.

    A degree of longitude shrinks with cos(lat); works on numpy arrays and torch tensors.
    """
    cos = torch.cos(torch.deg2rad(lat)) if isinstance(lat, torch.Tensor) else np.cos(np.radians(lat))
    return dnorth_km / KM_PER_DEG_LAT, deast_km / (KM_PER_DEG_LAT * cos)




def utm_epsg(zone: int) -> int:
    """EPSG code of WGS 84 / UTM zone ``zone`` North (all of Pakistan is north of the equator)."""
    return 32600 + int(zone)




@lru_cache(maxsize=None)
def _transformers(zone: int):
    from pyproj import Transformer

    fwd = Transformer.from_crs(4326, utm_epsg(zone), always_xy=True)
    inv = Transformer.from_crs(utm_epsg(zone), 4326, always_xy=True)
    return fwd, inv


def to_utm(lat, lon, zone: int):
    """Project (lat, lon) degrees to UTM (x_east, y_north) metres in ``zone``. Arrays in, arrays out."""
    x, y = _transformers(zone)[0].transform(np.asarray(lon, float), np.asarray(lat, float))
    return np.asarray(x), np.asarray(y)


def from_utm(x, y, zone: int):
    """Inverse of :func:`to_utm`: metres in ``zone`` back to (lat, lon) degrees."""
    lon, lat = _transformers(zone)[1].transform(np.asarray(x, float), np.asarray(y, float))
    return np.asarray(lat), np.asarray(lon)




def to_unit_vectors(lat, lon):
    """(lat, lon) degrees -> unit vectors on the sphere, shape (..., 3). numpy or torch."""
    if isinstance(lat, torch.Tensor):
        p, l = torch.deg2rad(lat), torch.deg2rad(lon)
        return torch.stack([torch.cos(p) * torch.cos(l), torch.cos(p) * torch.sin(l), torch.sin(p)], -1)
    p, l = np.radians(lat), np.radians(lon)
    return np.stack([np.cos(p) * np.cos(l), np.cos(p) * np.sin(l), np.sin(p)], -1)


def from_unit_vectors(v):
    """Vectors (..., 3), any length > 0 -> (lat, lon) degrees. numpy or torch."""
    if isinstance(v, torch.Tensor):
        x, y, z = v.unbind(-1)
        return torch.rad2deg(torch.atan2(z, torch.hypot(x, y))), torch.rad2deg(torch.atan2(y, x))
    x, y, z = v[..., 0], v[..., 1], v[..., 2]
    return np.degrees(np.arctan2(z, np.hypot(x, y))), np.degrees(np.arctan2(y, x))


def spherical_mean(lat, lon, weights=None):
    """Mean position on the sphere along the last axis: lat, lon (..., n) degrees -> (...,) each.

    The normalised sum of unit vectors, so a set straddling a meridian averages correctly.
    """
    v = to_unit_vectors(np.asarray(lat, float), np.asarray(lon, float))
    w = np.ones(v.shape[:-1]) if weights is None else np.asarray(weights, float)
    return from_unit_vectors((w[..., None] * v).sum(-2))


# --- province polygons -------------------------------------------------------------------

BOUNDARIES_FILE = "geoBoundaries-PAK-ADM1_simplified.geojson"
# Points this close to the border (km) but outside every polygon still count as in Pakistan
# and take the nearest province: the simplified polygons cut a little off coasts and borders.
BORDER_TOLERANCE_KM = 10.0


@lru_cache(maxsize=1)
def province_geojson() -> dict:
    """The shipped geoBoundaries ADM1 GeoJSON (public domain; see geopak_lib/assets/README.md)."""
    return json.loads(resources.files("geopak_lib").joinpath("assets", BOUNDARIES_FILE).read_text())


@lru_cache(maxsize=1)
def province_shapes() -> dict:
    """{province name: shapely geometry}, in PROVINCES order."""
    from shapely.geometry import shape

    shapes = {f["properties"]["shapeName"]: shape(f["geometry"]) for f in province_geojson()["features"]}
    return {p: shapes[p] for p in PROVINCES}


def locate_province(lat, lon, tolerance_km: float = BORDER_TOLERANCE_KM) -> np.ndarray:
    """Province name containing each point, or None if outside Pakistan.

    A point inside no polygon but within ``tolerance_km`` of one takes the nearest province.
    lat, lon: arrays (N,) in degrees. Returns an object array (N,).
    """
    import shapely

    lat = np.atleast_1d(np.asarray(lat, float))
    lon = np.atleast_1d(np.asarray(lon, float))
    out = np.full(lat.shape, None, dtype=object)
    finite = np.isfinite(lat) & np.isfinite(lon)
    shapes = province_shapes()
    for name, geom in shapes.items():
        hit = finite & (out == None) & shapely.contains_xy(geom, lon, lat)  # noqa: E711
        out[hit] = name
    todo = np.flatnonzero(finite & (out == None))  # noqa: E711
    if todo.size:
        pts = shapely.points(lon[todo], lat[todo])
        # distance in degrees, converted at the point's latitude with the smaller (lon) scale
        dists = np.stack([shapely.distance(geom, pts) for geom in shapes.values()], 1)
        best = dists.argmin(1)
        km = dists[np.arange(todo.size), best] * KM_PER_DEG_LAT * np.cos(np.radians(lat[todo]))
        names = np.array(list(shapes), dtype=object)
        ok = km <= tolerance_km
        out[todo[ok]] = names[best[ok]]
    return out


@lru_cache(maxsize=1)
def boundary_vertices() -> np.ndarray:
    """(V, 3) unit vectors of every vertex of the shipped province polygons (all rings)."""
    import shapely

    coords = np.concatenate([shapely.get_coordinates(g) for g in province_shapes().values()])  # (lon, lat)
    return to_unit_vectors(coords[:, 1], coords[:, 0])


def farthest_in_pakistan_km(lat, lon) -> np.ndarray:
    """Great-circle distance (km) from each point to the farthest point of Pakistan: its farthest
    polygon vertex, plus BORDER_TOLERANCE_KM (points that close outside still count as Pakistan).
    No location in Pakistan lies farther from the point, so an error radius never needs to be larger.
    (The farthest point of a polygon lies at a vertex; the polygons' short edges make the
    spherical difference negligible beside the tolerance.)"""
    v = to_unit_vectors(np.atleast_1d(np.asarray(lat, float)), np.atleast_1d(np.asarray(lon, float)))
    cos = np.clip((v @ boundary_vertices().T).min(-1), -1.0, 1.0)  # the smallest cosine is the farthest vertex
    return np.degrees(np.arccos(cos)) * KM_PER_DEG_LAT + BORDER_TOLERANCE_KM
