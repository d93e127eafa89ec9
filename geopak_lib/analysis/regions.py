"""Errors by where the photo was taken: per province, urban or rural, the predicted district."""

from __future__ import annotations

import numpy as np
import pandas as pd

from geopak_lib.constants import PROVINCES
from geopak_lib.data.places import name_places, nearest_town, pakistan_towns
from geopak_lib.metrics import per_class_accuracy, per_group_summary


URBAN_MIN_POPULATION = 100_000


URBAN_RADIUS_KM = 10.0


def province_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per true province: n, error figures of the mixture, and province recall."""
    t = per_group_summary(frame, "province")
    recall = per_class_accuracy(frame["province_id"], frame["province_pred"])
    t["province_recall"] = [recall[PROVINCES.index(p)] for p in t["province"]]
    order = {p: i for i, p in enumerate(PROVINCES)}
    return t.sort_values("province", key=lambda c: c.map(order)).set_index("province")


def urban_rural(lat, lon, min_population: int = URBAN_MIN_POPULATION,
                radius_km: float = URBAN_RADIUS_KM) -> pd.DataFrame:
    """'urban' within radius_km of a GeoNames town of min_population+ people, else 'rural'.
    Returns town, town_km, setting (N rows)."""
    name, dist = nearest_town(lat, lon, pakistan_towns(min_population))
    return pd.DataFrame({"town": name, "town_km": dist, "setting": np.where(dist <= radius_km, "urban", "rural")})


def district_accuracy(frame: pd.DataFrame, lat_col: str = "mixture_lat", lon_col: str = "mixture_lon") -> dict:
    """Share of images whose predicted point lies in the true point's district (both named by
    data.places.name_places). Images whose true point has no district (outside Pakistan, or farther
    than PLACE_MAX_KM from any place) are left out and counted: district_acc (fraction, NaN if
    none has a district), district_n (images counted), district_excluded."""
    true = name_places(frame["latitude"], frame["longitude"])
    pred = name_places(frame[lat_col], frame[lon_col])
    has = (true["district"] != "").to_numpy()
    hit = ((pred["district"] == true["district"]) & (pred["province"] == true["province"])).to_numpy()
    return {"district_acc": float(hit[has].mean()) if has.any() else float("nan"),
            "district_n": int(has.sum()), "district_excluded": int((~has).sum())}
