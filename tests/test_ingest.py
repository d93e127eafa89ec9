"""geopak ingest: a folder of geotagged photos (EXIF GPS) becomes the table validate takes; every file is a row
or a reject with its reason."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from geopak_lib.data import ids
from geopak_lib.data.ingest import dms_to_degrees, ingest_folder, path_id, read_gps, write_ingest
from geopak_lib.data.validate import validate_dataset
from exif_photos import ISLAMABAD, ISLAMABAD_DEG, KARACHI, KARACHI_DEG, write_photo as _photo

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def photos(tmp_path):
    """Trip folders of mixed formats, names with spaces and non-ASCII, some files that give no position."""
    root = tmp_path / "photos"
    _photo(root / "trip 1" / "IMG 0001.jpg", "JPEG", ISLAMABAD)
    _photo(root / "trip 1" / "faisal.png", "PNG", ISLAMABAD)
    _photo(root / "کراچی" / "mazar ü.webp", "WEBP", KARACHI)
    _photo(root / "کراچی" / "phone.heic", "HEIF", KARACHI)
    _photo(root / "trip 1" / "no gps.jpg", "JPEG")
    _photo(root / "trip 1" / "zero.jpg", "JPEG", ((0, 0, 0), "N", (0, 0, 0), "E"))
    (root / "notes.txt").write_text("not a photo")
    (root / "trip 1" / "A.JPG").write_bytes((root / "trip 1" / "IMG 0001.jpg").read_bytes())
    (root / "trip 1" / "a.jpg").write_bytes((root / "trip 1" / "IMG 0001.jpg").read_bytes())
    os.symlink(root / "loop", root / "loop")  # a link to itself: a broken file, not a folder
    return root


def test_dms_by_hand():
    assert dms_to_degrees((33, 43, 48.6), "N") == pytest.approx(ISLAMABAD_DEG[0], abs=1e-12)
    assert dms_to_degrees((33, 43, 48.6), "S") == pytest.approx(-ISLAMABAD_DEG[0], abs=1e-12)
    assert dms_to_degrees((73, 2, 18), "W") == pytest.approx(-ISLAMABAD_DEG[1], abs=1e-12)
    for bad in [((33, 61, 0), "N"), ((33, 1, 0), "Q"), ((33, 1), "N"), ((float("nan"), 1, 0), "N")]:
        with pytest.raises(ValueError):
            dms_to_degrees(*bad)


def test_every_file_is_a_row_or_a_reject(photos):
    result = ingest_folder(photos)
    table = result.table.set_index("image")
    assert set(table.index) == {"trip 1/IMG 0001.jpg", "trip 1/faisal.png", "کراچی/mazar ü.webp",
                                "کراچی/phone.heic", "trip 1/A.JPG", "trip 1/a.jpg"}
    for name in ("trip 1/IMG 0001.jpg", "trip 1/faisal.png", "trip 1/A.JPG"):
        assert (table.loc[name, "latitude"], table.loc[name, "longitude"]) == pytest.approx(ISLAMABAD_DEG, abs=1e-6)
    for name in ("کراچی/mazar ü.webp", "کراچی/phone.heic"):
        assert (table.loc[name, "latitude"], table.loc[name, "longitude"]) == pytest.approx(KARACHI_DEG, abs=1e-6)
    assert (table["province"] == "").all()  # validate fills it from the polygons
    reasons = result.rejects.set_index("file")["reason"].to_dict()
    assert reasons == {"trip 1/no gps.jpg": "no_gps", "trip 1/zero.jpg": "gps_zero", "notes.txt": "not_an_image",
                       "loop": "unreadable"}
    n_files = sum(1 for p in photos.rglob("*") if not p.is_dir())
    assert len(result.table) + len(result.rejects) == n_files
    # ids: safe for validate, one per photo even where names differ only in case
    assert result.table["id"].str.casefold().is_unique
    assert all(not ids.unsafe_id_reasons(i) for i in result.table["id"])
    assert table.loc["trip 1/IMG 0001.jpg", "id"] == "trip 1__IMG 0001.jpg"


def test_ingested_table_validates_and_gets_its_province(photos, tmp_path):
    table_path, rejects_path = write_ingest(ingest_folder(photos), tmp_path / "mine" / "table.csv")
    assert rejects_path == tmp_path / "mine" / "table_rejects.csv" and rejects_path.is_file()
    result = validate_dataset(table_path, photos, progress=False, workers=1)
    assert len(result.manifest) == 6 and len(result.rejects) == 0  # every photo with a position is used
    province = result.manifest.set_index("image")["province"]
    assert province["trip 1/faisal.png"] == "Islamabad Capital Territory"
    assert province["کراچی/phone.heic"] == "Sindh"  # HEIC decodes too (validate opens every image)


def test_non_utf8_name_is_listed_not_fatal(tmp_path):
    root = tmp_path / "p"
    _photo(root / "ok.jpg", "JPEG", KARACHI)
    bad = os.fsencode(root) + b"/caf\xe9.jpg"  # Latin-1 bytes: not UTF-8
    with open(bad, "wb") as f:
        f.write((root / "ok.jpg").read_bytes())
    result = ingest_folder(root)
    assert result.table["image"].tolist() == ["ok.jpg"]
    assert result.rejects["reason"].tolist() == ["name_not_utf8"]
    assert result.rejects["file"].iloc[0] == "caf\\xe9.jpg"  # the byte shown escaped, as text
    table, rejects = write_ingest(result, tmp_path / "t.csv")  # the CSV is written: the name is escaped
    assert pd.read_csv(rejects)["reason"].tolist() == ["name_not_utf8"]


def test_path_id():
    assert path_id("a/b/c.jpg") == "a__b__c.jpg"
    assert path_id("x/..y.jpg") == "x__.y.jpg" and ".." not in path_id("a/..../b.jpg")
    assert path_id(" a\tb.jpg ") == "a_b.jpg"


def _cli(*args, cwd):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "geopak_lib.book.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True)


def test_cli_exit_codes_and_messages(photos, tmp_path):
    out = _cli("ingest", str(photos), "--out", str(tmp_path / "t.csv"), "--quiet", cwd=tmp_path)
    assert out.returncode == 1, out.stderr  # some files are listed in the rejects
    assert "6 photos with a GPS position" in out.stdout and "4 files without a usable position" in out.stdout
    assert "no_gps" in out.stdout and "Traceback" not in out.stderr
    assert len(pd.read_csv(tmp_path / "t.csv")) == 6
    missing = _cli("ingest", str(tmp_path / "nope"), "--out", str(tmp_path / "u.csv"), cwd=tmp_path)
    assert missing.returncode == 2 and "is not a folder" in missing.stderr and "Traceback" not in missing.stderr
    clean = tmp_path / "clean"
    _photo(clean / "one.jpg", "JPEG", KARACHI)
    assert _cli("ingest", str(clean), "--out", str(tmp_path / "c.csv"), "--quiet", cwd=tmp_path).returncode == 0


def test_read_gps_raises_with_reason(tmp_path):
    _photo(tmp_path / "n.jpg", "JPEG")
    with pytest.raises(ValueError) as err:
        read_gps(tmp_path / "n.jpg")
    assert err.value.args[0] == "no_gps"


def test_predict_finds_heic_photos(photos):
    from geopak_lib.book.predict_cli import find_images

    files, skipped = find_images([str(photos)])
    assert str(photos / "کراچی" / "phone.heic") in files
    assert {Path(p).name for p, _ in skipped} == {"notes.txt", "loop"}  # every other entry gets its row
    from geopak_lib.data.images import load_rgb

    assert load_rgb(photos / "کراچی" / "phone.heic").size == (48, 40)  # what predict decodes with
