"""Tests for geopak_lib.data.splits: block ids, block-disjoint stratified splits, the leak check."""

import numpy as np
import pandas as pd
import pytest

from geopak_lib.constants import PROVINCES
from geopak_lib.data import splits
from geopak_lib.geo import KM_PER_DEG_LAT, haversine_km, locate_province
from geopak_lib.data.splits import (block_ids, min_cross_split_distance_km, spatial_block_split,
                               split_summary)


@pytest.fixture(scope="module")
def manifest():
    """~4000 points: uniform over Pakistan plus dense 'city' clusters, labelled by the polygons."""
    rng = np.random.default_rng(0)
    lat, lon = rng.uniform(23.5, 37.0, 9000), rng.uniform(60.5, 77.5, 9000)
    for c_lat, c_lon, n in ((24.86, 67.01, 800), (31.52, 74.36, 400), (33.70, 73.05, 200)):  # Karachi, ...
        lat = np.r_[lat, c_lat + rng.normal(0, 0.2, n)]
        lon = np.r_[lon, c_lon + rng.normal(0, 0.2, n)]
    province = locate_province(lat, lon)
    keep = province != None  # noqa: E711
    n = int(keep.sum())
    return pd.DataFrame({"id": [f"s{i:05d}" for i in range(n)], "latitude": lat[keep],
                         "longitude": lon[keep], "province": province[keep].astype(str)})


@pytest.fixture(scope="module")
def split(manifest):
    return spatial_block_split(manifest, block_km=25.0, seed=0, calibration_frac=0.0)


def test_block_ids_by_hand():
    # the projection centre (30, 70) is the corner of block 0_0; 30 km north is the next row up,
    # a hair west of the centre is the previous column
    dlat = 30.0 / KM_PER_DEG_LAT
    got = block_ids([30.0 + 1e-6, 30.0 + dlat, 30.0 + 1e-6], [70.0 + 1e-6, 70.0 + 1e-6, 70.0 - 1e-6], 25.0)
    assert got.tolist() == ["0_0", "0_1", "-1_0"]


def test_points_in_one_block_are_close(split):
    # a 25 km square has a 35.4 km diagonal; AEQD stretches sides by < 3% within Pakistan
    for _, g in list(split.groupby("block_id"))[:200]:
        lat, lon = g["latitude"].to_numpy(), g["longitude"].to_numpy()
        d = haversine_km(lat[:, None], lon[:, None], lat[None], lon[None])
        assert d.max() <= 25.0 * np.sqrt(2) * 1.03


def test_no_block_on_two_sides(split):
    assert set(split["split"]) == {"train", "val", "test"}
    assert (split.groupby("block_id")["split"].nunique() == 1).all()


def test_columns_and_rows_kept(manifest, split):
    assert list(split.columns[:6]) == ["id", "latitude", "longitude", "province", "split", "block_id"]
    assert split["id"].tolist() == manifest["id"].tolist()


def test_deterministic_and_row_order_independent(manifest, split):
    again = spatial_block_split(manifest, block_km=25.0, seed=0, calibration_frac=0.0)
    pd.testing.assert_frame_equal(again, split)
    parted = spatial_block_split(manifest, seed=0)
    shuffled = spatial_block_split(manifest.sample(frac=1.0, random_state=1), seed=0)
    assert shuffled.set_index("id")["split"].sort_index().equals(parted.set_index("id")["split"].sort_index())
    other = spatial_block_split(manifest, seed=1)
    assert (other["split"] != split["split"]).any()


def test_stratified_fractions(split):
    table = split_summary(split)
    assert list(table.index) == list(PROVINCES) + ["All"]
    assert (table.loc[list(PROVINCES), "train"] > 0).all()  # every province trains
    big = table[(table["n_blocks"] >= 30)]
    assert len(big) >= 5
    for frac_col in ("val", "test"):
        frac = big[frac_col] / big["total"]
        assert (frac - 0.15).abs().max() < 0.05, frac
    assert table.loc["All", "total"] == len(split)


def test_province_with_one_block_goes_to_train():
    rows = pd.DataFrame({"id": ["a", "b", "c"], "latitude": [34.370, 34.371, 34.372],
                         "longitude": [73.470, 73.471, 73.472], "province": "Azad Kashmir"})
    out = spatial_block_split(rows)
    assert out["block_id"].nunique() == 1 and (out["split"] == "train").all()


def test_bad_input_raises(manifest):
    with pytest.raises(ValueError, match="val_frac"):
        spatial_block_split(manifest, val_frac=0.6, test_frac=0.5)
    bad = manifest.head(3).assign(province="Narnia")
    with pytest.raises(ValueError, match="Narnia"):
        spatial_block_split(bad)


def test_leak_check_matches_brute_force():
    rng = np.random.default_rng(3)
    df = pd.DataFrame({"id": [f"p{i}" for i in range(60)], "latitude": rng.uniform(24, 36, 60),
                       "longitude": rng.uniform(61, 77, 60), "split": rng.choice(["train", "val", "test"], 60)})
    got = min_cross_split_distance_km(df).set_index(["split_a", "split_b"])
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        da, db = df[df["split"] == a], df[df["split"] == b]
        d = haversine_km(da["latitude"].to_numpy()[:, None], da["longitude"].to_numpy()[:, None],
                         db["latitude"].to_numpy()[None], db["longitude"].to_numpy()[None])
        i, j = np.unravel_index(np.argmin(d), d.shape)
        row = got.loc[(a, b)]
        assert row["min_km"] == pytest.approx(d.min(), rel=1e-6)
        assert (row["id_a"], row["id_b"]) == (da["id"].iloc[i], db["id"].iloc[j])
        assert row["median_nearest_km"] == pytest.approx(np.median(d.min(axis=0)), rel=1e-6)


def test_leak_check_on_split(split):
    leak = min_cross_split_distance_km(split).set_index(["split_a", "split_b"]).dropna(subset=["min_km"])
    assert len(leak) == 3 and (leak["min_km"] > 0).all()  # identical points always share a block
    # held-out samples sit further from train than under a row-level random split of the same sizes
    shuffled = split.assign(split=split["split"].sample(frac=1.0, random_state=0).to_numpy())
    random = min_cross_split_distance_km(shuffled).set_index(["split_a", "split_b"])
    pairs = [("train", "val"), ("train", "test")]
    assert (leak.loc[pairs, "median_nearest_km"] > 1.3 * random.loc[pairs, "median_nearest_km"]).all()


def test_leak_check_empty_split():
    df = pd.DataFrame({"id": ["a"], "latitude": [30.0], "longitude": [70.0], "split": ["train"]})
    assert min_cross_split_distance_km(df)["min_km"].isna().all()


def test_buffer_keeps_training_away_from_held_out(manifest, split):
    buffered = spatial_block_split(manifest, buffer_km=8.0, calibration_frac=0.0)
    # held-out rows are untouched; only training rows become 'buffer'
    held = split["split"].isin(["val", "test"])
    assert (buffered.loc[held, "split"] == split.loc[held, "split"]).all()
    moved = buffered["split"] == "buffer"
    assert (split.loc[moved, "split"] == "train").all() and len(buffered) == len(split)
    # brute force: every remaining training row is >= 8 km from every held-out row, every buffer row < 8 km
    tr = buffered[buffered["split"] == "train"]
    ho = buffered[buffered["split"].isin(["val", "test"])]
    d = haversine_km(tr["latitude"].to_numpy()[:, None], tr["longitude"].to_numpy()[:, None],
                     ho["latitude"].to_numpy()[None], ho["longitude"].to_numpy()[None])
    assert d.min() >= 8.0
    b = buffered[moved]
    if len(b):
        db = haversine_km(b["latitude"].to_numpy()[:, None], b["longitude"].to_numpy()[:, None],
                          ho["latitude"].to_numpy()[None], ho["longitude"].to_numpy()[None])
        assert (db.min(1) < 8.0).all()
    with pytest.raises(ValueError, match="buffer_km"):
        spatial_block_split(manifest, buffer_km=-1)


def _geod_boxes(meta):
    """Window boxes from demo_meta.csv, by pyproj's geodesic (independent of geo.km_to_deg)."""
    from pyproj import Geod

    g, n = Geod(ellps="WGS84"), len(meta)
    half_m = meta["window_km"].to_numpy(float) * 500.0
    lat, lon = meta["window_lat"].to_numpy(float), meta["window_lon"].to_numpy(float)
    _, north, _ = g.fwd(lon, lat, np.zeros(n), half_m)
    _, south, _ = g.fwd(lon, lat, np.full(n, 180.0), half_m)
    east, _, _ = g.fwd(lon, lat, np.full(n, 90.0), half_m)
    west, _, _ = g.fwd(lon, lat, np.full(n, 270.0), half_m)
    return np.stack([south, north, west, east], axis=1)


@pytest.mark.parametrize("n", [400, 3000])  # the smoke and the demo build
def test_demo_split_shares_no_ground(n):
    """No val/test crop overlaps any training crop (windows recomputed independently), every province is held out."""
    from geopak_lib.book import demo

    locs = demo.sample_locations(n, 0, region_km=demo.REGION_KM)
    views = demo.fit_windows(locs["latitude"], locs["longitude"], demo.sample_views(n, 0), demo.REGION_KM)
    m = locs[["latitude", "longitude", "province"]].assign(id=[f"pk{i:06d}" for i in range(n)])
    s = splits.spatial_block_split(m, block_km=demo.REGION_KM, seed=0)
    box = _geod_boxes(views)
    # every label point lies in its own crop
    assert ((box[:, 0] <= locs["latitude"]) & (locs["latitude"] <= box[:, 1])
            & (box[:, 2] <= locs["longitude"]) & (locs["longitude"] <= box[:, 3])).all()
    tr, held = box[(s["split"] == "train").to_numpy()], box[s["split"].isin(["val", "val_cal", "test"]).to_numpy()]
    overlap = ((tr[:, None, 0] < held[None, :, 1]) & (held[None, :, 0] < tr[:, None, 1])
               & (tr[:, None, 2] < held[None, :, 3]) & (held[None, :, 2] < tr[:, None, 3]))
    assert not overlap.any()
    assert splits.shared_ground(s, views.assign(id=m["id"]))["shared"].max() == 0.0
    if n == 3000:
        counts = pd.crosstab(s["province"], s["split"])
        assert (counts["test"] >= 5).all() and ((counts["val"] + counts["val_cal"]) >= 5).all(), counts


def test_shared_ground_by_hand():
    """A held-out window half inside a training window shares 0.5; a disjoint one 0."""
    from geopak_lib.geo import km_to_deg

    dlat, _ = km_to_deg(5.0, 0.0, 30.0)
    m = pd.DataFrame({"id": ["a", "b", "c"], "split": ["train", "test", "val"]})
    w = pd.DataFrame({"id": ["a", "b", "c"], "window_lat": [30.0, 30.0 + float(dlat), 35.0],
                      "window_lon": [70.0, 70.0, 70.0], "window_km": [10.0, 10.0, 10.0]})
    got = splits.shared_ground(m, w).set_index("id")["shared"]
    assert got["b"] == pytest.approx(0.5, abs=0.01) and got["c"] == 0.0


def test_duplicates_and_borders_share_a_split():
    """Rows at one spot (across a province border) or with one sha1/phash are never in two splits."""
    rng = np.random.default_rng(0)
    n = 600
    m = pd.DataFrame({"id": [f"r{i}" for i in range(n)], "latitude": rng.uniform(24, 36, n),
                      "longitude": rng.uniform(62, 76, n), "province": "Punjab",
                      "sha1": [f"s{i}" for i in range(n)], "phash": [f"p{i}" for i in range(n)]})
    m.loc[1, ["latitude", "longitude"]] = m.loc[0, ["latitude", "longitude"]].to_numpy()
    m.loc[1, "province"] = "Islamabad Capital Territory"  # same spot, other province: one block anyway
    for a, b, col in [(10, 300, "sha1"), (20, 400, "phash"), (30, 500, "sha1"), (500, 550, "phash")]:
        m.loc[b, col] = m.loc[a, col]
    for seed in range(5):
        s = splits.spatial_block_split(m, block_km=100.0, seed=seed).set_index("id")["split"]
        assert s["r0"] == s["r1"]
        assert s["r10"] == s["r300"] and s["r20"] == s["r400"] and s["r30"] == s["r500"] == s["r550"]
    assert len(splits.duplicate_links(m)) == 5


def test_calibration_part_takes_whole_validation_units():
    """val_cal holds about half of each province's validation units, whole; the rest of the split is unchanged."""
    rng = np.random.default_rng(3)
    n = 4000
    m = pd.DataFrame({"id": [f"r{i}" for i in range(n)], "latitude": rng.uniform(24, 36, n),
                      "longitude": rng.uniform(62, 76, n), "province": "Sindh"})
    plain = spatial_block_split(m, block_km=50.0, seed=0, calibration_frac=0.0)
    parted = spatial_block_split(m, block_km=50.0, seed=0)
    moved = parted["split"] != plain["split"]
    assert set(plain.loc[moved, "split"]) == {"val"} and set(parted.loc[moved, "split"]) == {"val_cal"}
    assert parted.groupby("split_unit")["split"].nunique().max() == 1
    units = parted[parted["split"].isin(["val", "val_cal"])].groupby("split")["split_unit"].nunique()
    assert abs(units["val_cal"] - units["val"]) <= 1
