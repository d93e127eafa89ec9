"""Reading a window of a north-up, one-band uint8 GeoTIFF without decoding the whole file, and the
pixel arithmetic of such a grid. Used for the offline concept rasters (Köppen-Geiger climate and
MODIS land cover, :mod:`geopak_lib.data.concepts`).

The Köppen-Geiger raster is 43200 x 21600 (930 MB decoded; a full Pillow decode took 5 s and
2.7 GB of memory here). Both rasters store one deflate-compressed strip per row, so only the
strips of the window are read and inflated with zlib (docs/decisions/concepts.md has the figures).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

# TIFF tags (TIFF 6.0 and GeoTIFF 1.0)
ROWS_PER_STRIP, STRIP_OFFSETS, STRIP_BYTE_COUNTS = 278, 273, 279
COMPRESSION, PREDICTOR, SAMPLES_PER_PIXEL, BITS_PER_SAMPLE, PLANAR = 259, 317, 277, 258, 284
MODEL_PIXEL_SCALE, MODEL_TIEPOINT, GDAL_NODATA = 33550, 33922, 42113
DEFLATE = (8, 32946)  # Adobe and old-style deflate; 1 = uncompressed


@dataclass(frozen=True)
class GridWindow:
    """A window of a regular lat/lon grid: values (H, W) uint8, the window's top edge (degrees
    north) and left edge (degrees east), the pixel size in degrees, and the no-data value (or None).
    Pixel (r, c) covers lat (top - (r+1) res, top - r res] and lon [left + c res, left + (c+1) res)."""

    values: np.ndarray
    top_lat: float
    left_lon: float
    res_deg: float
    nodata: int | None = None


def pixel_index(lat, lon, top_lat: float, left_lon: float, *, res_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """(row, col) int arrays of the pixels holding points (lat, lon degrees) on a north-up grid:
    row = floor((top - lat) / res), col = floor((lon - left) / res). A point on an edge belongs to
    the pixel below / right of it. Out-of-grid indices are returned as they are (callers mask)."""
    lat, lon = np.asarray(lat, float), np.asarray(lon, float)
    # rounding to 1e-9 pixel first: (90 - 89.95) / 0.05 is 0.9999999999998863 in floats, which is pixel 1
    row = np.floor(np.round((top_lat - lat) / res_deg, 9))
    col = np.floor(np.round((lon - left_lon) / res_deg, 9))
    bad = ~(np.isfinite(row) & np.isfinite(col))
    return np.where(bad, -1, row).astype(np.int64), np.where(bad, -1, col).astype(np.int64)


def sample(window: GridWindow, lat, lon) -> np.ndarray:
    """Values of the window at points (lat, lon degrees) -> (N,) int64; -1 where the point lies
    outside the window, is not finite, or the pixel holds the no-data value."""
    row, col = pixel_index(lat, lon, window.top_lat, window.left_lon, res_deg=window.res_deg)
    h, w = window.values.shape
    inside = (row >= 0) & (row < h) & (col >= 0) & (col < w)
    out = np.full(row.shape, -1, dtype=np.int64)
    out[inside] = window.values[row[inside], col[inside]]
    if window.nodata is not None:
        out[out == window.nodata] = -1
    return out


def _tag(tags, key, what, path):
    if key not in tags:
        raise ValueError(f"{path}: TIFF tag {key} ({what}) missing; not a GeoTIFF this reader handles")
    return tags[key]


def geotiff_grid(path) -> dict:
    """The grid of a north-up GeoTIFF read from its tags: width, height, top_lat, left_lon, res_deg,
    nodata, and the strip layout. Raises ValueError for layouts this reader does not handle
    (rotation, unequal pixel sides, more than one band, not 8-bit, a predictor, tiles)."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None  # the KG raster has 933 M pixels; only its header is read here
    with Image.open(path) as im:
        tags = dict(im.tag_v2)
        width, height = im.size
    scale = _tag(tags, MODEL_PIXEL_SCALE, "ModelPixelScale", path)
    tie = _tag(tags, MODEL_TIEPOINT, "ModelTiepoint", path)
    if len(tie) != 6 or tie[0] != 0 or tie[1] != 0 or abs(scale[0] - scale[1]) > 1e-12 * scale[0]:
        raise ValueError(f"{path}: tiepoint {tie} / pixel scale {scale} is not a north-up grid with square pixels")
    layout = {k: tags.get(k, d) for k, d in ((SAMPLES_PER_PIXEL, 1), (BITS_PER_SAMPLE, (8,)), (PREDICTOR, 1),
                                              (COMPRESSION, 1), (PLANAR, 1))}
    if layout[SAMPLES_PER_PIXEL] != 1 or tuple(layout[BITS_PER_SAMPLE]) != (8,) or layout[PREDICTOR] != 1:
        raise ValueError(f"{path}: only one-band 8-bit rasters without a predictor are read ({layout})")
    if layout[COMPRESSION] not in (1, *DEFLATE) or STRIP_OFFSETS not in tags:
        raise ValueError(f"{path}: only uncompressed or deflate strips are read (compression {layout[COMPRESSION]})")
    nodata = tags.get(GDAL_NODATA)
    return {"width": width, "height": height, "left_lon": float(tie[3]), "top_lat": float(tie[4]),
            "res_deg": float(scale[0]), "nodata": int(float(nodata)) if nodata not in (None, "") else None,
            "rows_per_strip": int(tags.get(ROWS_PER_STRIP, height)), "offsets": tags[STRIP_OFFSETS],
            "byte_counts": tags[STRIP_BYTE_COUNTS], "compression": layout[COMPRESSION]}


def read_window(path, lat_range: tuple[float, float], lon_range: tuple[float, float]) -> GridWindow:
    """The pixels of a GeoTIFF covering lat_range x lon_range (degrees; (south, north), (west, east)),
    snapped outwards to whole pixels and clipped to the raster. Reads only the strips it needs."""
    g = geotiff_grid(path)
    res = g["res_deg"]
    (r0, r1), (c0, c1) = pixel_index([lat_range[1], lat_range[0]], [lon_range[0], lon_range[1]],
                                     g["top_lat"], g["left_lon"], res_deg=res)
    r0, r1 = max(0, r0), min(g["height"], r1 + 1)
    c0, c1 = max(0, c0), min(g["width"], c1 + 1)
    if r0 >= r1 or c0 >= c1:
        raise ValueError(f"{path}: the window {lat_range} x {lon_range} lies outside the raster")
    rps, width = g["rows_per_strip"], g["width"]
    rows = []
    with open(path, "rb") as f:
        for s in range(r0 // rps, (r1 - 1) // rps + 1):
            f.seek(g["offsets"][s])
            raw = f.read(g["byte_counts"][s])
            data = zlib.decompress(raw) if g["compression"] in DEFLATE else raw
            n_rows = min(rps, g["height"] - s * rps)
            strip = np.frombuffer(data, np.uint8, count=n_rows * width).reshape(n_rows, width)
            lo, hi = max(r0 - s * rps, 0), min(r1 - s * rps, n_rows)
            rows.append(strip[lo:hi, c0:c1])
    values = np.ascontiguousarray(np.concatenate(rows))
    return GridWindow(values, g["top_lat"] - r0 * res, g["left_lon"] + c0 * res, res, g["nodata"])
