"""Tests for geopak_lib.data.geocells: projection, per-cell maths, build invariants, merge/split, I/O."""

import math

import numpy as np
import pandas as pd
import pytest
from pyproj import Transformer

from geopak_lib.constants import PROVINCES, UTM_ZONE
from geopak_lib.geo import from_utm, haversine_km, km_to_deg, to_utm
from geopak_lib.data.cells import (CELL_COLUMNS, assign_nearest_cells, cell_distance_matrix_km, cells_per_province,
                                   load_geocells, neighbor_lists, province_cell_table, save_geocells)
from geopak_lib.data.geocells import (GeocellConfig, _reassign_and_merge, build_geocells, cell_centre_radius, two_means,
                                      urban_cap_km)


def blob(rng, lat, lon, n, sigma_km, province, prefix):
    """n Gaussian points (sigma_km each axis) around (lat, lon)."""
    north, east = rng.normal(size=(2, n)) * sigma_km
    dlat, dlon = km_to_deg(north, east, lat)
    return pd.DataFrame({"id": [f"{prefix}{i:04d}" for i in range(n)], "latitude": lat + dlat,
                         "longitude": lon + dlon, "province": province})


@pytest.fixture(scope="module")
def train():
    """Dense cities (Sindh), a sparse desert (Balochistan), a mid province (KPK), 30 samples
    (Punjab) and none (ICT, GB, AJK)."""
    rng = np.random.default_rng(0)
    parts = [blob(rng, 24.86, 67.01, 400, 3.0, "Sindh", "kar"), blob(rng, 25.40, 68.37, 300, 2.0, "Sindh", "hyd"),
             blob(rng, 27.70, 68.86, 200, 1.5, "Sindh", "suk"), blob(rng, 34.01, 71.58, 150, 4.0, "Khyber Pakhtunkhwa", "pes"),
             blob(rng, 31.55, 74.34, 30, 3.0, "Punjab", "lah")]
    desert = pd.DataFrame({"latitude": rng.uniform(26.0, 30.0, 300), "longitude": rng.uniform(62.0, 68.0, 300)})
    parts.append(desert.assign(id=[f"bal{i:04d}" for i in range(300)], province="Balochistan"))
    return pd.concat(parts, ignore_index=True)[["id", "latitude", "longitude", "province"]]


@pytest.fixture(scope="module")
def result(train):
    return build_geocells(train, GeocellConfig())


# --- config and input checks --------------------------------------------------------------

@pytest.mark.parametrize("kw", [dict(method="dbscan"), dict(min_cell_size=0), dict(min_cell_size=1.5),
                                dict(urban_max_radius_km=60.0), dict(radius_quantile=0.0),
                                dict(neighbors_k=-1), dict(cluster_selection_method="x")])
def test_config_rejects_bad_values(kw):
    with pytest.raises(ValueError, match="GeocellConfig"):
        GeocellConfig(**kw)


def test_bad_input_names_the_problem(train):
    with pytest.raises(ValueError, match="missing column"):
        build_geocells(train.drop(columns="province"))
    bad = train.copy()
    bad.loc[3, "province"] = "Atlantis"
    with pytest.raises(ValueError, match=r"Atlantis.*row\(s\) \[3\]"):
        build_geocells(bad)
    bad = train.copy()
    bad.loc[5, "latitude"] = np.nan
    with pytest.raises(ValueError, match=r"latitude/longitude at row\(s\) \[5\]"):
        build_geocells(bad)
    with pytest.raises(ValueError, match="province_id disagrees"):
        build_geocells(train.assign(province_id=0))


# --- projection ---------------------------------------------------------------------------

def test_utm_round_trip_sub_mm():
    rng = np.random.default_rng(1)
    lat, lon = rng.uniform(24, 37, 1000), rng.uniform(61, 77, 1000)
    for zone in (41, 42, 43):
        x, y = to_utm(lat, lon, zone)
        lat2, lon2 = from_utm(x, y, zone)
        assert haversine_km(lat, lon, lat2, lon2).max() * 1e6 < 1.0  # km -> mm


def test_utm_matches_pyproj_epsg_and_central_meridian():
    cities = {"Karachi": (24.8607, 67.0011, 32642), "Lahore": (31.5204, 74.3587, 32643),
              "Quetta": (30.1798, 66.9750, 32642), "Gwadar": (25.1216, 62.3254, 32641)}
    for lat, lon, epsg in cities.values():
        tr = Transformer.from_crs("EPSG:4326", f"EPSG:{epsg}", always_xy=True)
        ex, ey = tr.transform(lon, lat)
        x, y = to_utm(lat, lon, epsg - 32600)
        assert abs(x - ex) < 1e-6 and abs(y - ey) < 1e-6
    # On a zone's central meridian (zone 42: 69 E) the easting is the false easting, 500000 m,
    # and on the equator the northing is 0 m.
    x, y = to_utm(np.array([0.0, 25.0, 35.0]), np.array([69.0, 69.0, 69.0]), 42)
    np.testing.assert_allclose(x, 500000.0, atol=1e-6)
    assert abs(y[0]) < 1e-6
    # Karachi lies west of 69 E, so its easting is below 500 km; by about 0.9996 * dx.
    x, _ = to_utm(24.8607, 67.0011, 42)
    dx_km = haversine_km(24.8607, 67.0011, 24.8607, 69.0)  # along the parallel, approx.
    assert abs((500000.0 - x) / 1000.0 - 0.9996 * dx_km) < 0.5


# --- per-cell maths -----------------------------------------------------------------------

K0, A, E2, R_SPHERE = 0.9996, 6378.137, 0.00669437999014, 6371.0088  # UTM scale, WGS 84, haversine radius


def sphere_km(north_grid_km, east_grid_km, lat):
    """Haversine length of a short UTM grid offset near the central meridian, by hand: grid / k0
    is ellipsoid ground distance; angles are ground / M (meridian) and ground / (N cos lat)
    (prime vertical); haversine turns the angles back into km with the sphere radius."""
    s2 = math.sin(math.radians(lat)) ** 2
    m, n = A * (1 - E2) / (1 - E2 * s2) ** 1.5, A / math.sqrt(1 - E2 * s2)
    return math.hypot(north_grid_km / K0 * R_SPHERE / m, east_grid_km / K0 * R_SPHERE / n)


def test_centre_and_radius_of_a_square_by_hand():
    # four corners of a 2 km square centred on (500000 m, 2800000 m) of zone 42 (central meridian)
    x = np.array([499000.0, 501000.0, 499000.0, 501000.0])
    y = np.array([2799000.0, 2799000.0, 2801000.0, 2801000.0])
    lat, lon = from_utm(x, y, 42)
    clat, clon, radius, median = cell_centre_radius(lat, lon, 42)
    elat, elon = from_utm(500000.0, 2800000.0, 42)
    assert abs(clat - elat) < 1e-9 and abs(clon - elon) < 1e-9
    # every corner is (1 km, 1 km) of grid away from the centre
    assert radius == pytest.approx(sphere_km(1.0, 1.0, elat), rel=1e-5)
    assert median == pytest.approx(radius)
    # an uneven cell: the centre is the mean in metres (1000 m), not the median (0 m)
    lat3, lon3 = from_utm(np.array([500000.0, 500000.0, 503000.0]), np.full(3, 2800000.0), 42)
    elat, elon = from_utm(501000.0, 2800000.0, 42)
    assert np.allclose(cell_centre_radius(lat3, lon3, 42)[:2], (elat, elon), atol=1e-9, rtol=0)
    # the floor applies when the cell is tighter than min_radius_km
    assert cell_centre_radius(lat, lon, 42, min_radius_km=3.0)[2] == 3.0


def test_radius_is_the_quantile_of_member_distances():
    # centre at the central meridian; members at 1, 2, 3, 4 km east and the mirror points west
    d = np.array([1.0, 2.0, 3.0, 4.0])
    x = 500000.0 + np.concatenate([d, -d]) * 1000.0
    lat, lon = from_utm(x, np.full(8, 3000000.0), 42)
    _, _, r90, med = cell_centre_radius(lat, lon, 42, quantile=0.9)
    # numpy's linear quantile of [1,1,2,2,3,3,4,4] at 0.9 is 4 (position 6.3 -> 4)
    clat = cell_centre_radius(lat, lon, 42)[0]
    assert r90 == pytest.approx(sphere_km(0.0, 4.0, clat), rel=1e-5)
    assert med == pytest.approx(sphere_km(0.0, 2.5, clat), rel=1e-5)


def test_urban_cap_rule_by_hand():
    cfg = GeocellConfig()  # min 40, urban 5 km, rural 50 km
    # urban iff (n/2) * 5^2 >= 40 * median^2; n = 80 -> median <= 5 km
    assert urban_cap_km(80, 4.99, cfg) == 5.0
    assert urban_cap_km(80, 5.01, cfg) == 50.0
    # n = 8000 -> median <= 50 km
    assert urban_cap_km(8000, 49.9, cfg) == 5.0 and urban_cap_km(8000, 50.1, cfg) == 50.0


# --- build invariants ---------------------------------------------------------------------

def test_every_sample_assigned_and_no_cell_crosses_a_province(train, result):
    cells, asg = result.cells, result.assignments
    assert list(cells.columns) == CELL_COLUMNS
    assert (asg["id"].to_numpy() == train["id"].to_numpy()).all()  # input row order
    assert (asg["cell_id"] >= 0).all()
    assert (cells["province_id"].to_numpy()[asg["cell_id"]] == asg["province_id"]).all()
    assert (cells["province"].to_numpy()[asg["cell_id"]] == train["province"].to_numpy()).all()
    np.testing.assert_array_equal(np.bincount(asg["cell_id"], minlength=len(cells)), cells["n_samples"])
    np.testing.assert_array_equal(asg["cell_center_lat"], cells["center_lat"].to_numpy()[asg["cell_id"]])


def test_cell_ids_contiguous_grouped_by_province(result):
    cells = result.cells
    np.testing.assert_array_equal(cells["cell_id"], np.arange(len(cells)))
    assert (np.diff(cells["province_id"]) >= 0).all()
    for pid in range(len(PROVINCES)):  # within a province: south to north
        assert (np.diff(cells.loc[cells["province_id"] == pid, "center_lat"]) >= 0).all()


def test_min_cell_size_and_small_and_empty_provinces(train, result):
    cells, stats = result.cells, result.stats.set_index("province")
    n_train = train["province"].value_counts()
    for _, c in cells.iterrows():
        assert c["n_samples"] >= 40 or n_train[c["province"]] < 40
    assert stats.loc["Punjab", "n_cells"] == 1 and "fewer than 40" in stats.loc["Punjab", "note"]
    assert cells.loc[cells["province"] == "Punjab", "neighbor_cell_ids"].iloc[0] == []
    for prov in ("Islamabad Capital Territory", "Gilgit-Baltistan", "Azad Kashmir"):
        assert stats.loc[prov, "n_cells"] == 0 and stats.loc[prov, "n_train"] == 0
        assert "no training samples" in stats.loc[prov, "note"]
    assert cells_per_province(cells) == stats["n_cells"].tolist()
    assert cells_per_province(cells)[3] == 0 and len(cells_per_province(cells)) == 7
    assert stats.loc["Sindh", "n_cells"] >= 3  # three separated cities never share a cell


@pytest.mark.parametrize("k", [None, 0, 1, 2])
def test_neighbours_follow_the_k_nearest_rule(result, k):
    cells = result.cells
    if k is None:  # the lists stored by build_geocells, default k
        k, lists = GeocellConfig().neighbors_k, cells["neighbor_cell_ids"].tolist()
    else:
        lists = neighbor_lists(cells, k)
    assert cells_per_province(cells)[0] > 3  # Sindh has more cells than k for the small k
    rows = cells.to_dict("records")
    for c, got in zip(rows, lists):  # brute force with math.* haversine, ties by lower cell_id
        same = [o for o in rows if o["province_id"] == c["province_id"] and o["cell_id"] != c["cell_id"]]
        def dist(o):
            p1, p2 = math.radians(c["center_lat"]), math.radians(o["center_lat"])
            a = (math.sin((p2 - p1) / 2) ** 2 + math.cos(p1) * math.cos(p2)
                 * math.sin(math.radians(o["center_lon"] - c["center_lon"]) / 2) ** 2)
            return 2 * 6371.0088 * math.asin(math.sqrt(a))
        expected = [o["cell_id"] for o in sorted(same, key=lambda o: (dist(o), o["cell_id"]))[:k]]
        assert got == expected


def test_row_order_does_not_change_cells(train, result):
    shuffled = train.sample(frac=1.0, random_state=7).reset_index(drop=True)
    again = build_geocells(shuffled, GeocellConfig())
    pd.testing.assert_frame_equal(again.cells, result.cells)
    a = again.assignments.sort_values("id").reset_index(drop=True)
    b = result.assignments.sort_values("id").reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)


def test_distance_matrix(result):
    d = cell_distance_matrix_km(result.cells)
    c = result.cells
    assert d.shape == (len(c), len(c)) and np.allclose(d, d.T) and np.all(np.diag(d) == 0)
    assert d[0, -1] == pytest.approx(float(haversine_km(c.center_lat.iloc[0], c.center_lon.iloc[0],
                                                        c.center_lat.iloc[-1], c.center_lon.iloc[-1])))


# --- merge and split ----------------------------------------------------------------------

def test_blobs_of_60_and_20_become_one_cell_of_80():
    rng = np.random.default_rng(2)
    df = pd.concat([blob(rng, 34.0, 71.5, 60, 0.5, "Khyber Pakhtunkhwa", "a"),
                    blob(rng, 34.27, 71.5, 20, 0.5, "Khyber Pakhtunkhwa", "b")], ignore_index=True)  # 30 km apart
    for cfg in (GeocellConfig(), GeocellConfig(method="kmeans", kmeans_target_size=40)):
        res = build_geocells(df, cfg)
        assert res.cells["n_samples"].tolist() == [80]
    assert res.stats.set_index("province").loc["Khyber Pakhtunkhwa", "n_merged"] == 1  # kmeans: k=2 -> merge


def test_merge_goes_to_the_nearest_centroid():
    # clusters: A (60 at x=0), B (20 at x=10 km), C (50 at x=100 km): B joins A, C stays
    xy = np.concatenate([np.zeros((60, 2)), np.tile([10.0, 0.0], (20, 1)), np.tile([100.0, 0.0], (50, 1))])
    labels, n_noise, n_merged = _reassign_and_merge(xy, np.repeat([0, 1, 2], [60, 20, 50]), 40)
    assert n_noise == 0 and n_merged == 1
    np.testing.assert_array_equal(np.bincount(labels), [80, 50])
    # noise goes to the nearest centroid: a point at x=90 joins C
    labels, n_noise, _ = _reassign_and_merge(np.vstack([xy, [[90.0, 0.0]]]),
                                             np.r_[np.repeat([0, 1, 2], [60, 20, 50]), -1], 40)
    assert n_noise == 1 and labels[-1] == labels[-2]


@pytest.mark.parametrize("shape", ["blobs", "line", "uniform"])
def test_two_means_matches_sklearn(shape):
    from sklearn.cluster import KMeans
    rng = np.random.default_rng(6)
    xy = {"blobs": np.vstack([rng.normal(0, 1, (150, 2)), rng.normal([8, 3], 1, (50, 2))]),
          "line": np.c_[rng.uniform(0, 300, 200), rng.normal(0, 1, 200)],
          "uniform": rng.uniform(0, 10, (300, 2))}[shape]
    part = two_means(xy)
    ref = KMeans(n_clusters=2, n_init=10, random_state=0).fit(xy)
    inertia = sum(((xy[part == j] - xy[part == j].mean(0)) ** 2).sum() for j in (0, 1))
    assert inertia <= ref.inertia_ * 1.01  # Lloyd from one start: a local optimum, within 1%
    if shape == "blobs":  # the same partition, up to the label names
        assert (part == ref.labels_).all() or (part != ref.labels_).all()


def test_long_cluster_is_split_into_parts_within_the_rural_cap():
    # 200 points on a 300 km north-south line in Balochistan: no density contrast, one group
    rng = np.random.default_rng(3)
    north = np.sort(rng.uniform(-150, 150, 200))
    dlat, dlon = km_to_deg(north, rng.normal(0, 0.5, 200), 28.0)
    df = pd.DataFrame({"id": range(200), "latitude": 28.0 + dlat, "longitude": 65.0 + dlon, "province": "Balochistan"})
    res = build_geocells(df, GeocellConfig())
    assert len(res.cells) >= 4 and (res.cells["n_samples"] >= 40).all()
    assert (res.cells["radius_km"] <= 50.0).all()
    st = res.stats.set_index("province").loc["Balochistan"]
    assert st["n_split"] >= 1 and st["n_over_radius"] == 0
    # the same line without a cap stays as clustered: the split made the extra cells
    uncapped = build_geocells(df, GeocellConfig(max_radius_km=1000.0, urban_max_radius_km=1000.0))
    assert len(uncapped.cells) == len(res.cells) - st["n_split"] and uncapped.stats["n_split"].sum() == 0


def test_dense_blob_is_urban_and_split_to_the_urban_cap():
    rng = np.random.default_rng(4)
    df = blob(rng, 31.55, 74.34, 400, 4.0, "Punjab", "l")  # p95 ~10 km, median ~4.7 km: urban
    urban = build_geocells(df, GeocellConfig())
    assert len(urban.cells) > 1 and (urban.cells["n_samples"] >= 40).all()
    # every cell is within 5 km, or could not be split further (recorded in n_over_radius)
    n_over = urban.stats.set_index("province").loc["Punjab", "n_over_radius"]
    assert ((urban.cells["radius_km"] > 5.0).sum()) <= n_over
    rural_only = build_geocells(df, GeocellConfig(urban_max_radius_km=50.0))
    assert len(rural_only.cells) == 1


def test_kmeans_method_invariants(train):
    cfg = GeocellConfig(method="kmeans", kmeans_target_size=100)
    res = build_geocells(train, cfg)
    n_train = train["province"].value_counts()
    assert all(c.n_samples >= 40 or n_train[c.province] < 40 for c in res.cells.itertuples())
    assert (res.assignments["cell_id"] >= 0).all()
    again = build_geocells(train.iloc[::-1].reset_index(drop=True), cfg)
    pd.testing.assert_frame_equal(again.cells, res.cells)


# --- val/test assignment and files --------------------------------------------------------

def test_assign_nearest_cells_brute_force(result):
    cells = result.cells
    rng = np.random.default_rng(5)
    df = pd.DataFrame({"id": range(6), "latitude": rng.uniform(24, 34, 6), "longitude": rng.uniform(63, 74, 6),
                       "province": ["Sindh", "Sindh", "Balochistan", "Khyber Pakhtunkhwa", "Punjab", "Azad Kashmir"]})
    out = assign_nearest_cells(df, cells)
    for i, r in df.iterrows():
        own = cells[cells["province"] == r["province"]]
        if own.empty:
            assert out.loc[i, "cell_id"] == -1 and np.isnan(out.loc[i, "cell_center_lat"])
            continue
        d = [float(haversine_km(r.latitude, r.longitude, c.center_lat, c.center_lon)) for c in own.itertuples()]
        assert out.loc[i, "cell_id"] == own["cell_id"].iloc[int(np.argmin(d))]
        assert out.loc[i, "cell_center_lon"] == own["center_lon"].iloc[int(np.argmin(d))]


def test_save_and_load_round_trip(result, tmp_path):
    json_path, csv_path = save_geocells(result.cells, tmp_path)
    for path in (json_path, csv_path, tmp_path):
        pd.testing.assert_frame_equal(load_geocells(path), result.cells)
    assert "" in pd.read_csv(csv_path, keep_default_na=False)["neighbor_cell_ids"].tolist()  # Punjab: none
    pd.read_csv(csv_path).drop(columns="radius_km").to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ValueError, match=r"bad.csv: missing column\(s\) \['radius_km'\]"):
        load_geocells(tmp_path / "bad.csv")
    with pytest.raises(FileNotFoundError, match="01_geocells"):
        load_geocells(tmp_path / "nothing.json")


def test_province_cell_table(result):
    table = province_cell_table(result.cells)
    assert table["province"].tolist() == list(PROVINCES)
    assert table["n_cells"].tolist() == cells_per_province(result.cells)
    assert table.set_index("province").loc["Sindh", "reference_cells"] == 450
    assert UTM_ZONE["Sindh"] == 42  # the zone the province's cells were built in


def test_one_cell_per_province_warns_naming_min_cell_size():
    from geopak_lib.data.geocells import GeocellCollapseWarning
    rng = np.random.default_rng(0)
    train = pd.DataFrame({"id": [f"r{i}" for i in range(20)],
                          "latitude": np.r_[24.8 + rng.normal(0, .5, 10), 31.5 + rng.normal(0, .5, 10)],
                          "longitude": np.r_[67.0 + rng.normal(0, .5, 10), 74.3 + rng.normal(0, .5, 10)],
                          "province": ["Sindh"] * 10 + ["Punjab"] * 10})
    with pytest.warns(GeocellCollapseWarning, match="one cell per province \\(2 cells\\).*min_cell_size=40"):
        res = build_geocells(train, GeocellConfig())
    assert len(res.cells) == 2
