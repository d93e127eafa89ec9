"""Tests for geopak_lib.data.validate: image loading in every mode, and validation of good and bad rows."""

import hashlib

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from geopak_lib.constants import PROVINCE_ID
from geopak_lib.data.images import ImageLoadError, inspect_image, load_rgb
from geopak_lib.data.validate import (MANIFEST_COLUMNS, REJECT_POLICY, policy_table, read_table, validate_dataset, write_validation)
from geopak_lib.geo import locate_province, province_shapes

KARACHI, LAHORE, PESHAWAR = (24.86, 67.01), (31.52, 74.36), (34.01, 71.58)
ISLAMABAD, GILGIT, QUETTA = (33.70, 73.05), (35.92, 74.31), (30.18, 67.00)
MUZAFFARABAD, MARDAN, HYDERABAD, MULTAN = (34.37, 73.47), (34.20, 72.04), (25.39, 68.37), (30.20, 71.47)


def _noise(h, w, seed=0):
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


def make_images(d):
    """Write one image of each kind into folder d. Returns nothing; names are fixed."""
    Image.fromarray(_noise(32, 32)).save(d / "rgb.jpg", quality=90)
    Image.fromarray(_noise(32, 32)[..., 0]).save(d / "gray.png")
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[:, :16] = (255, 0, 0, 0)      # left half fully transparent (its red must not show)
    rgba[:, 16:] = (255, 0, 0, 128)    # right half half-transparent red
    Image.fromarray(rgba, "RGBA").save(d / "rgba.png")
    Image.new("RGB", (32, 32), (255, 0, 0)).convert("CMYK").save(d / "cmyk.jpg", quality=95)
    Image.fromarray(_noise(32, 32)).convert("P").save(d / "palette.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display: stored 40 wide x 20 high -> shown 20 x 40
    Image.fromarray(_noise(20, 40)).save(d / "exif.jpg", exif=exif)
    Image.fromarray(np.full((32, 32), 65535, np.uint16)).save(d / "gray16.png")
    Image.fromarray(_noise(32, 32, seed=1)).save(d / "rgb2.jpg")
    Image.fromarray(_noise(64, 64, seed=2)).save(d / "full.jpg", quality=90)
    data = (d / "full.jpg").read_bytes()
    (d / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (d / "zero.jpg").write_bytes(b"")
    (d / "text.jpg").write_text("this is not an image\n")


def _ict_border_point(km_south):
    """A point ``km_south`` km south of where a walk south from ICT's centroid leaves ICT (in Punjab)."""
    c = province_shapes()["Islamabad Capital Territory"].centroid
    lat = c.y
    while locate_province(lat, c.x)[0] == "Islamabad Capital Territory":
        lat -= 0.001
    return lat - km_south / 111.2, c.x


NEAR = _ict_border_point(1.0)
FAR = (33.25, 73.30)  # Gujar Khan, Punjab: about 20 km south-east of ICT


def _km_to_ict(lat, lon):
    """Distance (km) from a point to the ICT polygon, measured in UTM 43 metres (independent check)."""
    import shapely

    from geopak_lib.geo import to_utm

    def project(xy):  # shapely gives (lon, lat) pairs
        return np.stack(to_utm(xy[:, 1], xy[:, 0], 43), axis=1)

    ict = shapely.transform(province_shapes()["Islamabad Capital Territory"], project)
    return shapely.Point(*to_utm(lat, lon, 43)).distance(ict) / 1000.0

# id, image, (lat, lon), province, expected reasons (empty: must reach the manifest)
ROWS = [
    ("g_rgb", "rgb.jpg", KARACHI, "Sindh", set()),
    ("g_gray", "gray.png", LAHORE, "Punjab", set()),
    ("g_rgba", "rgba.png", PESHAWAR, "Khyber Pakhtunkhwa", set()),
    ("g_cmyk", "cmyk.jpg", ISLAMABAD, "Islamabad Capital Territory", set()),
    ("g_palette", "palette.png", GILGIT, "Gilgit-Baltistan", set()),
    ("g_exif", "exif.jpg", QUETTA, "Balochistan", set()),
    ("g_gray16", "gray16.png", MUZAFFARABAD, "Azad Kashmir", set()),
    ("g_alias", "rgb2.jpg", MARDAN, "KPK", set()),
    ("g_spelling", "rgb.jpg", HYDERABAD, "  sindh ", set()),
    ("g_filled", "rgb.jpg", MULTAN, "", set()),
    ("g_border", "rgb.jpg", NEAR, "Islamabad Capital Territory", set()),
    ("b_missing", "nowhere.jpg", KARACHI, "Sindh", {"image_missing"}),
    ("b_truncated", "truncated.jpg", KARACHI, "Sindh", {"image_unreadable"}),
    ("b_zero", "zero.jpg", KARACHI, "Sindh", {"image_empty"}),
    ("b_text", "text.jpg", KARACHI, "Sindh", {"image_unreadable"}),
    ("b_lat_missing", "rgb.jpg", ("", 67.0), "Sindh", {"latitude_missing"}),
    ("b_lon_text", "rgb.jpg", (24.86, "abc"), "Sindh", {"longitude_non_numeric"}),
    ("b_delhi", "rgb.jpg", (28.61, 77.21), "Punjab", {"outside_pakistan"}),
    ("b_null_island", "rgb.jpg", (0.0, 0.0), "Sindh", {"outside_pakistan"}),
    ("b_lat_range", "rgb.jpg", (95.0, 67.0), "Sindh", {"latitude_out_of_range"}),
    ("b_unknown", "rgb.jpg", KARACHI, "Narnia", {"unknown_province"}),
    ("g_rgb", "rgb2.jpg", LAHORE, "Punjab", {"duplicate_id"}),
    ("b_mismatch", "rgb.jpg", KARACHI, "Punjab", {"province_mismatch"}),
    ("b_far_border", "rgb.jpg", FAR, "Islamabad Capital Territory", {"province_mismatch"}),
    ("", "rgb.jpg", KARACHI, "Sindh", {"empty_id"}),
    ("b_many", "nowhere.jpg", (0.0, 0.0), "Narnia", {"image_missing", "outside_pakistan", "unknown_province"}),
]


def _frame(rows=ROWS):
    return pd.DataFrame({"id": [r[0] for r in rows], "image": [r[1] for r in rows],
                         "latitude": [r[2][0] for r in rows], "longitude": [r[2][1] for r in rows],
                         "province": [r[3] for r in rows]})


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds")
    (root / "images").mkdir()
    make_images(root / "images")
    _frame().to_csv(root / "samples.csv", index=False)
    return root


@pytest.fixture(scope="module")
def result(dataset):
    return validate_dataset(dataset / "samples.csv", dataset / "images", progress=False)


# --- load_rgb ---------------------------------------------------------------------------------

def test_load_rgb_every_mode_gives_rgb(dataset):
    for name in ("rgb.jpg", "gray.png", "rgba.png", "cmyk.jpg", "palette.png", "exif.jpg", "gray16.png"):
        img = load_rgb(dataset / "images" / name)
        assert img.mode == "RGB", name


def test_load_rgb_pixel_values(dataset):
    d = dataset / "images"
    rgba = np.asarray(load_rgb(d / "rgba.png")).astype(int)
    assert (rgba[:, :16] == 255).all()  # transparent -> white background
    # 50% red over white: (255, 255*(1-a), 255*(1-a)) with a = 128/255
    assert np.abs(rgba[:, 16:] - [255, 127, 127]).max() <= 1
    assert (np.asarray(load_rgb(d / "gray16.png")) == 255).all()  # 65535 / 257
    assert np.abs(np.asarray(load_rgb(d / "cmyk.jpg")).astype(int) - [255, 0, 0]).max() <= 8
    gray = np.asarray(Image.open(d / "gray.png"))
    assert (np.asarray(load_rgb(d / "gray.png")) == gray[..., None]).all()


def test_load_rgb_applies_exif_orientation(dataset):
    assert Image.open(dataset / "images" / "exif.jpg").size == (40, 20)
    assert load_rgb(dataset / "images" / "exif.jpg").size == (20, 40)  # (width, height) transposed
    w, h, sha1, _ = inspect_image(dataset / "images" / "exif.jpg")
    assert (w, h) == (20, 40)
    assert sha1 == hashlib.sha1((dataset / "images" / "exif.jpg").read_bytes()).hexdigest()


@pytest.mark.parametrize("name, code", [("nowhere.jpg", "image_missing"), ("zero.jpg", "image_empty"),
                                        ("truncated.jpg", "image_unreadable"), ("text.jpg", "image_unreadable")])
def test_bad_images_raise(dataset, name, code):
    for fn in (load_rgb, inspect_image):
        with pytest.raises(ImageLoadError) as err:
            fn(dataset / "images" / name)
        assert err.value.code == code and name in str(err.value)


# --- validation -------------------------------------------------------------------------------

def test_every_bad_row_named_with_its_reasons(result):
    got = result.rejects.groupby("row")["reason"].apply(set).to_dict()
    want = {i + 1: r[4] for i, r in enumerate(ROWS) if r[4]}
    assert got == want
    assert set(result.rejects["reason"]) <= set(REJECT_POLICY)
    dup = result.rejects[result.rejects["reason"] == "duplicate_id"]
    assert dup["detail"].str.contains("row 1").all()  # names the first occurrence
    assert list(result.rejects.columns[:4]) == ["id", "row", "reason", "detail"]


def test_every_good_row_reaches_manifest(result, dataset):
    good = [r for r in ROWS if not r[4]]
    m = result.manifest
    assert list(m["id"]) == [r[0] for r in good]
    assert list(m.columns) == [c for c in MANIFEST_COLUMNS if c not in ("split", "block_id")]
    assert (m["province_id"] == m["province"].map(PROVINCE_ID)).all()
    assert m.set_index("id").loc["g_exif", ["width", "height"]].tolist() == [20, 40]
    assert m.set_index("id").loc["g_rgb", "image_path"] == str(dataset / "images" / "rgb.jpg")
    assert m["sha1"].str.fullmatch("[0-9a-f]{40}").all()
    assert len(m) + result.rejects["row"].nunique() == len(ROWS)  # nothing vanishes


def test_border_cases_are_what_they_claim():
    assert locate_province(*NEAR)[0] == locate_province(*FAR)[0] == "Punjab"
    assert 0.3 < _km_to_ict(*NEAR) < 2.0  # inside the 5 km label tolerance
    assert _km_to_ict(*FAR) > 10.0        # well outside it


def test_fixes_are_recorded(result):
    fixes = result.fixes.set_index("id")
    assert fixes.loc["g_alias", ["original", "value", "rule"]].tolist() == ["KPK", "Khyber Pakhtunkhwa",
                                                                            "province_alias"]
    assert fixes.loc["g_spelling", ["value", "rule"]].tolist() == ["Sindh", "province_spelling"]
    assert fixes.loc["g_filled", ["value", "rule"]].tolist() == ["Punjab", "province_filled"]
    assert fixes.loc["g_border", "rule"] == "province_near_border"
    manifest = result.manifest.set_index("id")
    assert manifest.loc["g_alias", "province"] == "Khyber Pakhtunkhwa"
    assert manifest.loc["g_border", "province"] == "Islamabad Capital Territory"  # label kept
    assert len(result.fixes) == 4  # exact names produce no fixes


def test_summary_and_policy(result):
    s = result.summary().set_index("reason")["n_rows"]
    assert s["input_rows"] == len(ROWS) and s["manifest_rows"] == len(result.manifest)
    assert s["outside_pakistan"] == 3 and s["province_mismatch"] == 2 and s["province_alias"] == 1
    assert s["duplicate_image"] == 3  # rgb.jpg used by 4 kept rows: 3 repeats, reported not rejected
    assert set(policy_table()["action"]) == {"drop", "fix", "report"}


def test_parquet_gives_same_result(dataset, result, tmp_path):
    df = read_table(dataset / "samples.csv")
    df["latitude"] = df["latitude"].astype(str)  # mixed columns go to parquet as text
    df["longitude"] = df["longitude"].astype(str)
    df.to_parquet(tmp_path / "samples.parquet")
    res = validate_dataset(tmp_path / "samples.parquet", dataset / "images", progress=False)
    pd.testing.assert_frame_equal(res.manifest, result.manifest)
    assert res.rejects[["row", "reason"]].equals(result.rejects[["row", "reason"]])


def test_write_validation(result, tmp_path):
    paths = write_validation(result, tmp_path / "run")
    manifest, rejects = pd.read_csv(paths["manifest"]), pd.read_csv(paths["rejects"])
    assert "manifest" in paths["manifest"].name and "rejects" in paths["rejects"].name
    assert len(manifest) == len(result.manifest) and {"id", "reason", "row"} <= set(rejects.columns)
    assert paths["fixes"].exists()


def test_check_images_false_only_checks_existence(dataset):
    res = validate_dataset(dataset / "samples.csv", dataset / "images", check_images=False, progress=False)
    assert "b_truncated" in set(res.manifest["id"]) and "b_text" in set(res.manifest["id"])
    assert {"image_missing", "image_empty"} <= set(res.rejects["reason"])
    assert res.manifest["sha1"].isna().all()


def test_missing_columns_and_bad_files(tmp_path):
    _frame().drop(columns=["province", "latitude"]).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ValueError, match=r"bad\.csv.*'latitude', 'province'"):
        validate_dataset(tmp_path / "bad.csv", tmp_path)
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(ValueError, match="x.json"):
        read_table(tmp_path / "x.json")
    with pytest.raises(FileNotFoundError, match="absent.csv"):
        read_table(tmp_path / "absent.csv")


def test_read_table_keeps_ids_as_text(tmp_path):
    (tmp_path / "s.csv").write_text("id,image,latitude,longitude,province\n007,a.jpg,24.8,67.0,Sindh\nNA,b,1,2,x\n")
    df = read_table(tmp_path / "s.csv")
    assert df["id"].tolist() == ["007", "NA"]


def test_blank_province_and_missing_coordinates_is_a_reject_not_a_crash(dataset, tmp_path):
    # A blank province with no coordinates used to raise KeyError('province_missing') while sorting.
    frame = pd.DataFrame({"id": ["p_ok", "p_nogps"], "image": ["rgb.jpg", "rgb.jpg"],
                          "latitude": [33.70, None], "longitude": [73.05, None], "province": ["", ""]})
    frame.to_csv(tmp_path / "t.csv", index=False)
    res = validate_dataset(tmp_path / "t.csv", dataset / "images", progress=False)
    assert list(res.manifest["id"]) == ["p_ok"]
    assert res.manifest["province"].iloc[0] == "Islamabad Capital Territory"
    assert "province_missing" in REJECT_POLICY
    assert set(res.rejects.loc[res.rejects["id"] == "p_nogps", "reason"]) >= {"latitude_missing"}


@pytest.mark.parametrize("raw,official", [("K.P.K", "Khyber Pakhtunkhwa"), ("G.B.", "Gilgit-Baltistan"),
                                          ("AJ&K", "Azad Kashmir"), ("Kashmir", "Azad Kashmir"),
                                          ("Gilgit", "Gilgit-Baltistan"),
                                          ("Federal Capital", "Islamabad Capital Territory")])
def test_real_province_spellings_are_mapped(raw, official):
    from geopak_lib.data.validate import _province_label
    assert _province_label(raw)[0] == official


def test_unknown_province_message_lists_aliases_and_blank_hint(dataset, tmp_path):
    pd.DataFrame({"id": ["x"], "image": ["rgb.jpg"], "latitude": [33.70], "longitude": [73.05],
                  "province": ["Narnia"]}).to_csv(tmp_path / "t.csv", index=False)
    res = validate_dataset(tmp_path / "t.csv", dataset / "images", progress=False)
    detail = res.rejects.loc[res.rejects["reason"] == "unknown_province", "detail"].iloc[0]
    assert "'kpk'" in detail and "leave it empty to fill it from the coordinates" in detail


def test_semicolon_csv_is_sniffed(tmp_path):
    from geopak_lib.data.validate import DatasetError
    (tmp_path / "semi.csv").write_text("id;image;latitude;longitude;province\na;a.jpg;24,5;67.0;Sindh\n")
    df = read_table(tmp_path / "semi.csv")
    assert list(df.columns) == ["id", "image", "latitude", "longitude", "province"]
    assert df["province"].iloc[0] == "Sindh" and df["latitude"].iloc[0] == "24,5"
    (tmp_path / "bad.csv").write_text('id,image\n"a,"b\n"c,d,e,f\n')
    with pytest.raises(DatasetError, match="bad.csv: cannot be read as a CSV table"):
        read_table(tmp_path / "bad.csv")


def test_column_aliases_are_mapped_and_printed(dataset, tmp_path, capsys):
    pd.DataFrame({"id": ["x"], "file": ["rgb.jpg"], "Lat": [33.70], "lng": [73.05]}).to_csv(
        tmp_path / "t.csv", index=False)
    pd.DataFrame({"id": ["x"], "file": ["rgb.jpg"], "Latitude": [33.70], "Longitude": [73.05],
                  "province": [""]}).to_csv(tmp_path / "u.csv", index=False)
    with pytest.raises(ValueError, match="province"):  # still missing: no alias given for it
        validate_dataset(tmp_path / "t.csv", dataset / "images", progress=False)
    assert "'Lat' -> 'latitude'" in capsys.readouterr().err
    res = validate_dataset(tmp_path / "u.csv", dataset / "images", progress=False)
    assert list(res.manifest["id"]) == ["x"] and res.manifest["province"].iloc[0] == "Islamabad Capital Territory"
    assert "'Longitude' -> 'longitude'" in capsys.readouterr().err
