"""Tests for geopak_lib.data.splits: block ids, block-disjoint stratified splits, the leak check."""

import numpy as np
import pandas as pd
import pytest

from geopak_lib.constants import PROVINCES
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
    return spatial_block_split(manifest, block_km=25.0, seed=0)


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
    again = spatial_block_split(manifest, seed=0)
    pd.testing.assert_frame_equal(again, split)
    shuffled = spatial_block_split(manifest.sample(frac=1.0, random_state=1), seed=0)
    assert shuffled.set_index("id")["split"].sort_index().equals(split.set_index("id")["split"].sort_index())
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
    leak = min_cross_split_distance_km(split).set_index(["split_a", "split_b"])
    assert (leak["min_km"] > 0).all()  # identical points always share a block
    # held-out samples sit further from train than under a row-level random split of the same sizes
    shuffled = split.assign(split=split["split"].sample(frac=1.0, random_state=0).to_numpy())
    random = min_cross_split_distance_km(shuffled).set_index(["split_a", "split_b"])
    pairs = [("train", "val"), ("train", "test")]
    assert (leak.loc[pairs, "median_nearest_km"] > 1.3 * random.loc[pairs, "median_nearest_km"]).all()


def test_leak_check_empty_split():
    df = pd.DataFrame({"id": ["a"], "latitude": [30.0], "longitude": [70.0], "split": ["train"]})
    assert min_cross_split_distance_km(df)["min_km"].isna().all()


def test_buffer_keeps_training_away_from_held_out(manifest, split):
    buffered = spatial_block_split(manifest, buffer_km=8.0)
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
