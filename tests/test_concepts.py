"""Concept labels from the location: the raster reader against Pillow, the pixel arithmetic by
hand, hand-checked places, the merge of rare classes, and 'unknown' instead of a crash."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image, TiffImagePlugin

from geopak_lib.data import concepts, rasters
from geopak_lib.data.concepts import UNKNOWN, concept_labels, concept_mapping, concept_targets, merge_rare
from geopak_lib.data.rasters import GridWindow, pixel_index, read_window, sample


def test_pixel_index_by_hand():
    # KG grid: top 90, left -180, 1/120 degree. Karachi: (90 - 24.86) * 120 = 7816.8, (67 + 180) * 120 = 29640
    row, col = pixel_index([24.86], [67.0], 90.0, -180.0, res_deg=1 / 120)
    assert (row[0], col[0]) == (7816, 29640)
    # MODIS grid, 0.05 degree: an edge belongs to the pixel below / to the right (89.95 is row 1, not 0)
    row, col = pixel_index([90.0, 89.95, 89.9501, -89.99], [-180.0, -179.95, -179.9501, 179.99], 90.0, -180.0,
                           res_deg=0.05)
    assert row.tolist() == [0, 1, 0, 3599] and col.tolist() == [0, 1, 0, 7199]
    row, col = pixel_index([np.nan], [10.0], 90.0, -180.0, res_deg=0.05)
    assert (row[0], col[0]) == (-1, -1)


def test_sample_masks_outside_nan_and_nodata():
    w = GridWindow(np.array([[1, 2, 3], [4, 0, 6]], np.uint8), top_lat=10.0, left_lon=20.0, res_deg=1.0, nodata=0)
    got = sample(w, [9.5, 8.5, 8.5, 10.5, 9.5, np.nan], [22.5, 20.1, 21.5, 20.5, 23.0, 21.0])
    assert got.tolist() == [3, 4, -1, -1, -1, -1]  # (0,2), (1,0), nodata, north of it, east of it, NaN


def _write_geotiff(path, values, top, left, res, nodata="255"):
    info = TiffImagePlugin.ImageFileDirectory_v2()
    info[33550] = (res, res, 0.0)
    info[33922] = (0.0, 0.0, 0.0, left, top, 0.0)
    info[42113] = nodata
    Image.fromarray(values).save(path, compression="tiff_adobe_deflate", tiffinfo=info)


def test_read_window_matches_the_array_written(tmp_path):
    rng = np.random.default_rng(0)
    values = rng.integers(0, 255, (90, 120), dtype=np.uint8)
    path = tmp_path / "grid.tif"
    _write_geotiff(path, values, top=40.0, left=60.0, res=0.25)  # covers lat 17.5-40, lon 60-90
    w = read_window(path, (30.1, 35.0), (62.0, 70.9))
    # rows: floor((40-35)/0.25)=20 .. floor((40-30.1)/0.25)=39; cols: floor(2/0.25)=8 .. floor(10.9/0.25)=43
    assert w.values.shape == (20, 36) and (w.top_lat, w.left_lon, w.res_deg, w.nodata) == (35.0, 62.0, 0.25, 255)
    np.testing.assert_array_equal(w.values, values[20:40, 8:44])
    # a window beyond the raster is clipped to it; the east edge 61.0 lies on col 4's west side, kept
    assert read_window(path, (0.0, 50.0), (50.0, 61.0)).values.shape == (90, 5)
    with pytest.raises(ValueError, match="outside the raster"):
        read_window(path, (-20.0, -10.0), (62.0, 70.0))


def test_packaged_rasters_tags_and_window_equal_pillow():
    kg = rasters.geotiff_grid(concepts.raster_path("climate"))
    assert (kg["width"], kg["height"], kg["top_lat"], kg["left_lon"]) == (43200, 21600, 90.0, -180.0)
    assert kg["res_deg"] == pytest.approx(1 / 120) and kg["nodata"] == 0
    path = concepts.raster_path("land_cover")
    g = rasters.geotiff_grid(path)
    assert (g["width"], g["height"], g["top_lat"], g["left_lon"], g["res_deg"], g["nodata"]) == \
        (7200, 3600, 90.0, -180.0, 0.05, 255)
    full = np.asarray(Image.open(path))  # Pillow's own decode of the whole file
    w = concepts.concept_window("land_cover")
    r0, c0 = round((90 - w.top_lat) / 0.05), round((w.left_lon + 180) / 0.05)
    assert (r0, c0) == (1050, 4810)  # (90 - 37.5) / 0.05, (60.5 + 180) / 0.05
    np.testing.assert_array_equal(w.values, full[r0:r0 + w.values.shape[0], c0:c0 + w.values.shape[1]])


def test_hand_checked_places():
    places = pd.DataFrame([("karachi", 24.86, 67.0), ("thar", 26.5, 70.5), ("karakoram", 36.0, 75.0),
                           ("arabian sea", 23.5, 65.0), ("lahore", 31.55, 74.35), ("islamabad", 33.69, 73.05),
                           ("outside", 10.0, 10.0), ("nan", np.nan, 70.0)], columns=["name", "lat", "lon"])
    got = concept_labels(places["lat"], places["lon"]).set_index(places["name"])
    assert got.loc["karachi"].tolist() == ["B arid", "urban", "urban"]  # BWh in the full classification
    assert got.loc["thar"].tolist()[:2] == ["B arid", "open shrubland"]
    assert got.loc["karakoram", "climate"] == "E polar"  # ET/EF
    assert got.loc["karakoram", "land_cover"] in ("snow and ice", "barren")  # 0.05 degree cell among glaciers
    assert got.loc["arabian sea"].tolist() == [UNKNOWN, "water", "rural"]
    assert got.loc["lahore", "urban"] == "urban" and got.loc["islamabad", "climate"] == "C temperate"
    assert got.loc["outside"].tolist() == got.loc["nan"].tolist() == [UNKNOWN] * 3


def test_merge_rare_by_hand():
    names = ["cropland"] * 6 + ["cropland/natural mosaic"] * 2 + ["savanna"] * 3 + ["woody savanna"] * 2 + \
            ["mixed forest"] * 1 + ["barren"] * 5 + ["grassland"] * 1 + [UNKNOWN] * 9
    got = merge_rare(names, concepts.LAND_COVER_PARENT, min_count=5)
    assert got == {"barren": "barren", "cropland": "cropland", "cropland/natural mosaic": "cropland",
                   "savanna": "savanna", "woody savanna": "savanna",  # 3 + 2 = 5 reach min_count together
                   "mixed forest": "other", "grassland": "other"}  # forest total 1; grassland has no parent


def test_mapping_decided_on_train_only_and_targets():
    m = pd.DataFrame({"split": ["train"] * 8 + ["val"] * 6,
                      "climate": ["B arid"] * 5 + ["E polar"] * 2 + [UNKNOWN] + ["E polar"] * 6,
                      "land_cover": ["barren"] * 8 + ["urban"] * 6})
    mapping = concept_mapping(m, min_count=5)
    assert mapping["concepts"]["climate"]["classes"] == ["B arid", "other"]  # val's six E polar do not count
    assert mapping["concepts"]["climate"]["train_counts"] == {"B arid": 5, "other": 2}
    assert mapping["concepts"]["land_cover"]["classes"] == ["barren"]
    spec = mapping["concepts"]["climate"]
    assert concept_targets(["B arid", "E polar", UNKNOWN, "A tropical"], spec).tolist() == [0, 1, -1, -1]
    assert set(mapping["sources"]) == {"climate", "land_cover"}


def test_concepts_json_round_trip_and_missing(tmp_path):
    from geopak_lib.data.rundir import RunDir

    run = RunDir(tmp_path / "run")
    assert run.read_concepts(required=False) is None
    with pytest.raises(FileNotFoundError, match="no run at .*make book PROFILE=run"):
        run.read_concepts()  # no run folder at all
    run.path.mkdir()
    with pytest.raises(FileNotFoundError, match="concepts.json not found: run 00_data_audit first"):
        run.read_concepts()  # a run folder without 00's output
    m = pd.DataFrame({"split": ["train"] * 5, "climate": ["B arid"] * 5, "land_cover": ["snow and ice"] * 5})
    mapping = concept_mapping(m)
    run.write_concepts(mapping)
    assert run.read_concepts() == mapping and concepts.class_names(mapping) == {
        "climate": ["B arid"], "land_cover": ["snow and ice"]}


def test_add_concept_labels_replaces_old_columns():
    m = pd.DataFrame({"id": ["a", "b"], "latitude": [24.86, 23.5], "longitude": [67.0, 65.0], "urban": ["x", "y"]})
    out = concepts.add_concept_labels(m)
    assert out.columns.tolist() == ["id", "latitude", "longitude", "climate", "land_cover", "urban"]
    assert out["urban"].tolist() == ["urban", "rural"] and out["climate"].tolist() == ["B arid", UNKNOWN]


def test_concept_shares_and_offline_map():
    from geopak_lib.book.concept_report import concept_map, concept_shares
    from geopak_lib.book.report import external_references, map_html

    m = pd.DataFrame({"id": list("abcd"), "province": ["Sindh", "Sindh", "Sindh", "Punjab"],
                      "latitude": [24.9, 25.0, 25.1, 31.5], "longitude": [67.0, 67.1, 67.2, 74.3],
                      "climate": ["B arid", "B arid", UNKNOWN, "C temperate"]})
    t = concept_shares(m, "climate")
    assert t.index.tolist() == ["Sindh", "Punjab", "all"]  # PROVINCES order, then the total
    assert t.loc["Sindh"].tolist() == [3, "2 (67%)", "0 (0%)", "1 (33%)"]
    assert t.loc["all", "C temperate"] == "1 (25%)"
    page = map_html(concept_map(m, "climate"))
    assert external_references(page) == [] and "B arid (2)" in page
