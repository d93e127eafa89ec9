"""A user's mistake gets one clear line on stderr and exit code 2, never a traceback."""

import numpy as np
from PIL import Image

from geopak_lib.book import cli
from geopak_lib.data.validate import validate_dataset


def one_line(err: str) -> str:
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def test_dataset_missing_a_column(tmp_path, capsys):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "d.csv").write_text("id,image,latitude,longitude\n1,a.jpg,30,70\n")
    assert cli.main(["validate", str(tmp_path / "d.csv"), "--images", str(tmp_path / "imgs"), "--out",
                     str(tmp_path / "o")]) == 2
    err = one_line(capsys.readouterr().err)
    assert "missing required column(s) ['province']" in err and "d.csv" in err


def test_malformed_profile_yaml(tmp_path, capsys):
    (tmp_path / "p.yaml").write_text("common:\n  run_dir: [unclosed\n")
    assert cli.main(["book", str(tmp_path / "p.yaml")]) == 2
    err = one_line(capsys.readouterr().err)
    assert "not valid YAML at line 3" in err and "p.yaml" in err


def test_folder_given_as_the_table_and_folder_without_images(tmp_path, capsys):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "notes.txt").write_text("no images here")
    assert cli.main(["validate", str(tmp_path / "imgs"), "--images", str(tmp_path / "imgs"), "--out",
                     str(tmp_path / "o")]) == 2
    assert "is a folder" in one_line(capsys.readouterr().err)
    assert cli.main(["predict", str(tmp_path / "imgs"), "--checkpoint", "x.pt", "--out", str(tmp_path / "p.csv")]) == 2
    assert "no image files" in one_line(capsys.readouterr().err)


def test_unwritable_out(tmp_path, capsys):
    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (20, 20)).save(tmp_path / "imgs" / "a.jpg")
    (tmp_path / "d.csv").write_text("id,image,latitude,longitude,province\n1,a.jpg,31.5,74.3,Punjab\n")
    (tmp_path / "afile").write_text("a file, not a folder")
    assert cli.main(["validate", str(tmp_path / "d.csv"), "--images", str(tmp_path / "imgs"), "--out",
                     str(tmp_path / "afile" / "run")]) == 2
    err = one_line(capsys.readouterr().err)
    assert "cannot write" in err and "afile" in err and "--out" in err


def test_swapped_coordinates_are_named_counted_and_still_rejected(tmp_path):
    (tmp_path / "imgs").mkdir()
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        Image.fromarray(np.full((20, 20, 3), 90, np.uint8)).save(tmp_path / "imgs" / name)
    (tmp_path / "d.csv").write_text("id,image,latitude,longitude,province\n"
                                    "1,a.jpg,74.3,31.5,Punjab\n"      # Lahore, swapped
                                    "2,b.jpg,67.0,24.86,Sindh\n"      # Karachi, swapped
                                    "3,c.jpg,10.0,10.0,Sindh\n")      # nowhere near, either way
    result = validate_dataset(tmp_path / "d.csv", tmp_path / "imgs", progress=False)
    out = result.rejects[result.rejects["reason"] == "outside_pakistan"].set_index("id")["detail"]
    assert "swapped (latitude 31.5000, longitude 74.3000) it would lie in Punjab" in out["1"]
    assert "it would lie in Sindh" in out["2"] and "swapped" not in out["3"]
    assert len(result.manifest) == 0  # rejected, never silently fixed
    summary = result.summary().set_index("reason")["n_rows"]
    assert summary["outside_pakistan"] == 3 and summary["outside_pakistan_swapped"] == 2


def test_summary_of_a_clean_dataset_counts_zero_swapped(tmp_path):
    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (20, 20)).save(tmp_path / "imgs" / "a.jpg")
    (tmp_path / "d.csv").write_text("id,image,latitude,longitude,province\n1,a.jpg,31.5,74.3,Punjab\n")
    result = validate_dataset(tmp_path / "d.csv", tmp_path / "imgs", progress=False)
    assert len(result.rejects) == 0 and result.summary().set_index("reason")["n_rows"]["outside_pakistan_swapped"] == 0
