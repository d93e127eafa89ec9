"""Demo crop windows kept inside their region, so a split on the same block grid shares no ground.

See docs/decisions/demo.md ("No shared ground between splits").
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from geopak_lib.geo import km_to_deg

# Every crop lies inside its point's region: the square of side region_km on the split's block grid
# (splits.block_index). A split that keeps regions whole then shares no ground between splits
# (docs/decisions/demo.md). Points keep EDGE_KM from their region's edge, so the window, pulled
# inside the region, still holds its point; ROTATION_SLACK covers the few-degree turn between a
# north-up crop and the block grid far from its centre.
REGION_KM = 30.0
EDGE_KM = 2.5
ROTATION_SLACK = 0.1


def edge_distance_km(lat, lon, region_km: float) -> np.ndarray:
    """Distance (km) from each point to the nearest edge of its ``region_km`` block (block grid plane)."""
    from geopak_lib.data.splits import block_plane_km

    x, y = block_plane_km(lat, lon)
    fx, fy = np.mod(x, region_km), np.mod(y, region_km)
    return np.minimum.reduce([fx, region_km - fx, fy, region_km - fy])


def window_corners(c_lat, c_lon, window_km):
    """The four corners (lat, lon), degrees, of the north-up crop of side ``window_km`` centred at c_lat, c_lon.

    Returns two (N, 4) arrays. This is the ground the crop covers (window_box cuts exactly it).
    """
    half_lat, half_lon = km_to_deg(np.asarray(window_km) / 2, np.asarray(window_km) / 2, np.asarray(c_lat))
    lat = np.stack([c_lat - half_lat, c_lat - half_lat, c_lat + half_lat, c_lat + half_lat], axis=-1)
    lon = np.stack([c_lon - half_lon, c_lon + half_lon, c_lon - half_lon, c_lon + half_lon], axis=-1)
    return lat, lon


def fit_windows(lat, lon, views: pd.DataFrame, region_km: float = REGION_KM) -> pd.DataFrame:
    """``views`` with window_lat, window_lon, window_km: each crop moved (and if need be shrunk) into its region.

    The wanted centre is the point shifted by (shift_north, shift_east) x side; it is clamped so the
    whole crop lies inside the point's ``region_km`` block, and the side is capped below the region.
    Every returned crop is checked: its four corners lie in the point's block. lat, lon: (N,) degrees.
    """
    from geopak_lib.data.splits import block_plane_km, from_block_plane_km

    lat, lon = np.asarray(lat, float), np.asarray(lon, float)
    x, y = block_plane_km(lat, lon)
    x0, y0 = np.floor(x / region_km) * region_km, np.floor(y / region_km) * region_km
    side = np.minimum(views["window_km"].to_numpy(float), region_km - 2 * EDGE_KM)
    for _ in range(20):
        half = side / 2 * (1 + ROTATION_SLACK)
        cx = np.clip(x + views["shift_east"].to_numpy() * side, x0 + half, x0 + region_km - half)
        cy = np.clip(y + views["shift_north"].to_numpy() * side, y0 + half, y0 + region_km - half)
        c_lat, c_lon = from_block_plane_km(cx, cy)
        k_lat, k_lon = window_corners(c_lat, c_lon, side)
        kx, ky = block_plane_km(k_lat.ravel(), k_lon.ravel())
        kx, ky = kx.reshape(-1, 4), ky.reshape(-1, 4)
        inside = ((kx > x0[:, None]) & (kx < x0[:, None] + region_km)
                  & (ky > y0[:, None]) & (ky < y0[:, None] + region_km)).all(axis=1)
        if inside.all():
            break
        side = np.where(inside, side, side * 0.9)
    else:
        raise RuntimeError(f"{int((~inside).sum())} crops could not be fitted into their {region_km} km region")
    out = views.copy()
    out["window_lat"], out["window_lon"], out["window_km"] = np.round(c_lat, 6), np.round(c_lon, 6), side
    return out
