"""Place names of predicted points (geopak_lib/data/places.py): hand-checked cases, the rules for
points outside Pakistan or far from any place, and the BallTree's answer against a brute-force
search with the project's own haversine."""

import numpy as np
import pandas as pd
import pytest
import shapely

from geopak_lib import geo
from geopak_lib.constants import PROVINCES
from geopak_lib.data import places
from geopak_lib.analysis.regions import district_accuracy


def test_hand_checked_points():
    # central Karachi; the Arabian Sea 300 km off the coast; Amritsar (India, ~25 km from the border);
    # the empty west of Balochistan, >60 km from any place of 1,000 people; Islamabad
    r = places.name_places([24.86, 22.0, 31.63, 29.0, 33.70], [67.0, 64.0, 74.87, 63.5, 73.05])
    assert r.loc[0, ["place", "district", "province"]].tolist() == ["Karachi", "Karachi", "Sindh"]
    # GeoNames' Karachi is (24.9056, 67.0822): 0.0456 deg north = 5.07 km, 0.0822 deg east at
    # cos(24.88 deg) = 0.9072 -> 8.29 km; sqrt(5.07^2 + 8.29^2) = 9.72 km
    assert r.loc[0, "place_km"] == pytest.approx(9.72, abs=0.01)
    for i in (1, 2):  # outside Pakistan: nothing, never an Indian or offshore name
        assert r.loc[i, ["place", "district", "province"]].tolist() == ["", "", ""] and np.isnan(r.loc[i, "place_km"])
    assert r.loc[3, ["place", "district", "province"]].tolist() == ["", "", "Balochistan"]  # province only
    assert np.isnan(r.loc[3, "place_km"])
    assert r.loc[4, ["place", "district", "province"]].tolist() == ["Islamabad", "Islamabad",
                                                                     "Islamabad Capital Territory"]


def test_point_just_across_the_border_gets_a_pakistani_name():
    # 5 km east of the Wagah crossing, in India but within the polygons' 10 km border tolerance
    r = places.name_places([31.60], [74.63])
    assert r.loc[0, "province"] == "Punjab"
    assert r.loc[0, "place"] in set(places.geonames_places().query("province == 'Punjab'")["name"])
    assert r.loc[0, "district"] in set(places.district_seats().query("province == 'Punjab'")["district"])


def test_threshold_switches_to_province_only():
    r = places.name_places([24.86], [67.0])
    km = r.loc[0, "place_km"]
    assert places.name_places([24.86], [67.0], max_km=km + 0.01).loc[0, "place"] == "Karachi"
    far = places.name_places([24.86], [67.0], max_km=km - 0.01)
    assert far.loc[0, ["place", "district", "province"]].tolist() == ["", "", "Sindh"]


def test_nearest_place_and_distance_against_brute_force_haversine():
    rng = np.random.default_rng(0)
    lat, lon = rng.uniform(24.0, 36.5, 400), rng.uniform(61.5, 77.0, 400)
    r = places.name_places(lat, lon, max_km=1e6)  # no threshold: every point in Pakistan is named
    inside = r["province"] != ""
    assert inside.sum() > 150
    pl, seats = places.geonames_places(), places.district_seats()
    for i in np.flatnonzero(inside):
        own = pl[pl["province"] == r.loc[i, "province"]]
        d = geo.haversine_km(lat[i], lon[i], own["latitude"].to_numpy(), own["longitude"].to_numpy())
        assert r.loc[i, "place"] == own["name"].iloc[d.argmin()]
        assert r.loc[i, "place_km"] == pytest.approx(d.min(), rel=1e-9)
        own_seats = seats[seats["province"] == r.loc[i, "province"]]  # the district never leaves the province
        ds = geo.haversine_km(lat[i], lon[i], own_seats["latitude"].to_numpy(), own_seats["longitude"].to_numpy())
        assert r.loc[i, "district"] == own_seats["district"].iloc[ds.argmin()]
    assert (r.loc[~inside, ["place", "district"]] == "").all().all()


def test_places_and_districts_tables():
    pl = places.geonames_places()
    assert set(pl["province"]) == set(PROVINCES)  # FATA's places are in Khyber Pakhtunkhwa, by our polygons
    assert "Federally Administered Tribal Areas" in set(pl["admin1"])
    seats = places.district_seats()
    assert seats["district"].is_unique and set(seats["province"]) == set(PROVINCES)
    # every seat lies in (or within 30 km of) its own province's polygon
    for p in PROVINCES:
        s = seats[seats["province"] == p]
        shape = geo.province_shapes()[p]
        deg = shapely.distance(shape, shapely.points(s["longitude"], s["latitude"]))
        assert (deg * geo.KM_PER_DEG_LAT < 30).all(), s[deg * geo.KM_PER_DEG_LAT >= 30]


def test_empty_input():
    r = places.name_places([], [])
    assert list(r.columns) == ["place", "district", "province", "place_km"] and len(r) == 0


def test_district_accuracy_on_a_hand_made_frame():
    f = pd.DataFrame({  # truth: Karachi, Lahore, Lahore, remote Balochistan (no district), Arabian Sea
        "latitude": [24.86, 31.55, 31.55, 29.0, 22.0], "longitude": [67.0, 74.35, 74.35, 63.5, 64.0],
        # predictions: Karachi (right), Lahore (right), Peshawar (wrong), anything (excluded), anything
        "mixture_lat": [24.90, 31.50, 34.0, 31.55, 31.55], "mixture_lon": [67.10, 74.30, 71.5, 74.35, 74.35]})
    d = district_accuracy(f)
    assert d == {"district_acc": pytest.approx(2 / 3), "district_n": 3, "district_excluded": 2}
    d = district_accuracy(f.iloc[3:])
    assert np.isnan(d["district_acc"]) and d["district_n"] == 0


def test_sentences_and_model_card_carry_the_names():
    from geopak_lib.book import eval_text
    from geopak_lib.book.figures import where_text
    from geopak_lib.book.model_card import evaluation_section

    assert where_text({"place": "Kotri", "place_km": 12.3, "district": "Jamshoro", "place_province": "Sindh"}) == \
        ", 12 km from Kotri (Jamshoro district, Sindh)"
    assert where_text({"place": "", "place_province": "Balochistan"}) == ", in Balochistan (no named place nearby)"
    assert where_text({"place": "", "place_province": ""}) == ""
    d = {"district_acc": 0.25, "district_n": 8, "district_excluded": 2}
    text = eval_text.district_text(d)
    assert "25.0% of 8 images" in text and "2 images whose true point has no district" in text
    assert "No test image" in eval_text.district_text({**d, "district_n": 0, "district_acc": float("nan")})
    head = {"n": 10, "median_km": 5.0, "p90_km": 9.0, "acc_25km": 0.5, "acc_200km": 0.9, "province_acc": 0.8}
    assert "district accuracy" not in evaluation_section({"headline": head, "per_province": []})
    card = evaluation_section({"headline": {**head, **d}, "per_province": []})
    assert "| district accuracy |" in card and "| 0.800 | 0.250 |" in card


def test_farthest_point_of_pakistan_bounds_every_point_inside():
    """No point of the province polygons (edges densified to ~1 km) is farther from a query than
    farthest_in_pakistan_km says, and the answer is attained (within the 10 km tolerance)."""
    from pyproj import Geod

    pts = np.concatenate([shapely.get_coordinates(shapely.segmentize(g, 0.01)) for g in geo.province_shapes().values()])
    geod = Geod(ellps="sphere", a=6371.0088e3, b=6371.0088e3)  # an independent great-circle distance
    queries = np.array([[24.86, 67.0], [33.68, 73.05], [35.92, 74.31], [30.2, 67.0], [40.0, 60.0]])  # last: outside
    got = geo.farthest_in_pakistan_km(queries[:, 0], queries[:, 1])
    for (lat, lon), far in zip(queries, got):
        _, _, m = geod.inv(np.full(len(pts), lon), np.full(len(pts), lat), pts[:, 0], pts[:, 1])
        true_max = m.max() / 1000
        assert true_max <= far <= true_max + geo.BORDER_TOLERANCE_KM + 0.5
    assert 1500 < got[0] < 1700  # Karachi: the far north of Gilgit-Baltistan is ~1,580 km away
