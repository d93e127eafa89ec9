"""`geopak predict` on a folder: every file gets a row (a .gif, a looping link, a link to a folder,
other extensions) with why it was not read, and the CSV is written even when a file name is not
valid UTF-8 (its bytes escaped)."""

import os

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from geopak_lib.book import cli
from geopak_lib.book.predict_cli import IMAGE_EXTENSIONS, find_images
from geopak_lib.data.images import printable_name, scan_folder

pytestmark = pytest.mark.skipif(os.name != "posix", reason="symbolic links and byte file names need POSIX")


def hostile_folder(root):
    """Two good images, one with a non-UTF-8 name (b'caf\\xe9.jpg'), and entries a scan must list."""
    root.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(root / "good.jpg")
    latin1 = os.path.join(os.fsencode(root), b"caf\xe9.jpg")  # Latin-1 bytes: not UTF-8
    Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(latin1, "JPEG")
    Image.new("P", (10, 10)).save(root / "anim.gif")
    os.symlink("loop.jpg", root / "loop.jpg")  # ELOOP
    os.symlink(root, root / "again")  # a link to a folder: never followed (it loops here)
    (root / "dir.jpg").mkdir()  # a folder named like an image: scanned as a folder
    (root / "dir.jpg" / "readme.md").write_text("no image")
    return os.fsdecode(latin1)


def test_scan_lists_every_entry_with_a_reason(tmp_path):
    latin1 = hostile_folder(tmp_path / "img")
    files, skipped = scan_folder(str(tmp_path / "img"), IMAGE_EXTENSIONS)
    assert sorted(files) == sorted([str(tmp_path / "img" / "good.jpg"), latin1])
    why = {os.path.basename(p): r for p, r in skipped}
    assert set(why) == {"anim.gif", "loop.jpg", "again", "readme.md"}
    assert why["anim.gif"].startswith("not scanned: extension '.gif'")
    assert why["loop.jpg"].startswith("broken or looping symbolic link")
    assert why["again"].startswith("symbolic link to a folder, not followed")
    assert find_images([tmp_path / "img"]) == (files, skipped)


def test_printable_name_escapes_only_undecodable_bytes():
    assert printable_name(os.fsdecode(b"caf\xe9.jpg")) == "caf\\xe9.jpg"
    assert printable_name("Ørsted_کراچی.jpg") == "Ørsted_کراچی.jpg"


def test_predict_writes_a_row_for_every_file(ckpt, tmp_path, capsys):
    path, _ = ckpt
    hostile_folder(tmp_path / "img")
    out = tmp_path / "pred.csv"
    code = cli.main(["predict", str(tmp_path / "img"), "--checkpoint", str(path), "--out", str(out),
                     "--geojson", str(tmp_path / "pred.geojson"), "--no-progress", "--device", "cpu"])
    assert code == 1  # some files were not predicted
    table = pd.read_csv(out, keep_default_na=False, encoding="utf-8")
    rows = {os.path.relpath(p, tmp_path / "img"): e for p, e in zip(table["image"], table["error"])}
    assert set(rows) == {"good.jpg", "caf\\xe9.jpg", "anim.gif", "loop.jpg", "again", "dir.jpg/readme.md"}
    assert rows["good.jpg"] == "" and rows["caf\\xe9.jpg"] == ""  # predicted, its name escaped
    assert all(rows[n] for n in ("anim.gif", "loop.jpg", "again", "dir.jpg/readme.md"))
    assert "Traceback" not in capsys.readouterr().err
