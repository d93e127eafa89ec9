"""Acceptance: from a folder of geotagged photos to a trained, evaluated model, without writing code.

The chain a researcher runs (README "Your own photos"), each step through the ``geopak`` command in
its own process: ``ingest`` -> ``validate`` -> ``book <own profile>`` -> ``evaluate`` -> ``predict``,
on a smoke-sized folder of JPEG, PNG, WEBP and HEIC photos in nested folders whose names have spaces
and non-ASCII characters, some without a usable position. Every photo ends up used or listed with a
reason. Then the same photos as a Hugging Face style Parquet (image = struct {bytes, path}) validate
without an image folder and run through the whole book. Marked `book` (a few minutes each):
`make test` runs them, `make test-fast` skips them. docs/decisions/ingest.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from exif_photos import FORMATS, degrees_to_gps, write_photo
from geopak_lib.book.demo import sample_locations
from geopak_lib.book.runner import REPO_ROOT, load_profile, notebook_paths

pytestmark = pytest.mark.book

N_PHOTOS = 400  # the smoke profile's demo_n_images: its geocells (min_cell_size 40) and splits fit this size
# top folders: spaces, Urdu and a Latin accent; photos nested one level deeper, per province
TRIPS = ["trip 1", "سفر ۲", "Reise über Land"]
NAMES = ["IMG {i:04d}{ext}", "تصویر {i}{ext}", "photo ü {i}{ext}"]
# files that give no position (ingest lists them) and one that validate rejects (outside Pakistan)
NO_POSITION = {"trip 1/no gps.jpg": "no_gps", "trip 1/zero gps.webp": "gps_zero",
               "سفر ۲/notes ü.txt": "not_an_image"}
PARIS = "Reise über Land/Paris/eiffel tower.heic"


def _image(rng, lat: float, lon: float) -> Image.Image:
    """64 x 48 noise around a colour that drifts with the position (something for the heads to fit)."""
    base = np.array([(lat - 24) * 18, (lon - 61) * 14, 120], dtype=float)
    pixels = np.clip(base + rng.normal(0, 25, (48, 64, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


def make_photos(root: Path, n: int, seed: int) -> list[Path]:
    """``n`` photos at real places (the demo's sampler: towns and countryside of every province), the
    four formats in turn, with their GPS in the EXIF. Returns the files written."""
    rng = np.random.default_rng(seed)
    locs = sample_locations(n, seed, region_km=30.0)
    exts = list(FORMATS)
    files = []
    for i, row in enumerate(locs.itertuples()):
        ext = exts[i % len(exts)]
        name = NAMES[i % len(NAMES)].format(i=i, ext=ext)
        path = root / TRIPS[i % len(TRIPS)] / f"{row.province} days" / name
        files.append(write_photo(path, FORMATS[ext], degrees_to_gps(row.latitude, row.longitude),
                                 image=_image(rng, row.latitude, row.longitude)))
    return files


@pytest.fixture(scope="module")
def photo_set(tmp_path_factory):
    """The researcher's folder (N_PHOTOS usable photos + the files of NO_POSITION + PARIS) and a
    second folder of photos the book never sees, for evaluate and predict."""
    root = tmp_path_factory.mktemp("own")
    photos = root / "my photos"
    make_photos(photos, N_PHOTOS, seed=0)
    write_photo(photos / "trip 1" / "no gps.jpg", "JPEG")
    write_photo(photos / "trip 1" / "zero gps.webp", "WEBP", ((0, 0, 0), "N", (0, 0, 0), "E"))
    (photos / "سفر ۲" / "notes ü.txt").write_text("packing list")
    write_photo(photos / PARIS, "HEIF", degrees_to_gps(48.8584, 2.2945))
    more = root / "more photos"
    make_photos(more, 24, seed=7)
    write_photo(more / "no gps at all.heic", "HEIF")  # predict needs no position
    return root, photos, more


def geopak(*args, cwd: Path) -> subprocess.CompletedProcess:
    """One ``geopak`` command in its own process, as a user types it; no traceback may reach the user."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PYTHONHASHSEED": "0"}
    env.pop("MPLBACKEND", None)
    out = subprocess.run([sys.executable, "-m", "geopak_lib.book.cli", *map(str, args)], cwd=cwd, env=env,
                         capture_output=True, text=True)
    assert "Traceback" not in out.stdout + out.stderr, out.stderr[-3000:]
    return out


def own_profile(path: Path, *, run_dir: Path, data_csv: Path, image_dir) -> Path:
    """A copy of params/smoke.yaml on the user's data, its run and feature cache under the test's folder.
    The file's stem names the reports folder, <folder>/reports/<stem>/ (`geopak book --under`)."""
    raw = yaml.safe_load(load_profile("smoke").path.read_text())
    raw["common"]["run_dir"] = str(run_dir)
    raw["notebooks"]["00_data_audit"].update(data_csv=str(data_csv), image_dir=str(image_dir), demo_n_images=0)
    for nb in ("02_phase0_province", "03_phase1_geography"):
        raw["notebooks"][nb]["cache_dir"] = str(path.parent / "cache")
    path.write_text(yaml.safe_dump(raw, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def run_book(profile: Path, cwd: Path) -> Path:
    """``geopak book PROFILE`` -> its reports folder, after checking that every notebook left a report."""
    book = geopak("book", profile, "--under", cwd, cwd=cwd)
    assert book.returncode == 0, book.stderr[-3000:]
    reports = cwd / "reports" / profile.stem
    for nb in notebook_paths():
        page = (reports / f"{nb.stem}.html").read_text(encoding="utf-8")
        assert "Traceback (most recent call last)" not in page, nb.name
    assert (reports / "site" / "index.html").is_file()
    return reports


@pytest.fixture(scope="module")
def chain(photo_set):
    """ingest -> validate -> book -> evaluate -> predict, once; the tests below read what it left."""
    root, photos, more = photo_set
    work = root / "work"
    work.mkdir()
    steps = {"ingest": geopak("ingest", photos, "--out", work / "my data" / "samples.csv", "--quiet", cwd=work)}
    table = work / "my data" / "samples.csv"
    steps["validate"] = geopak("validate", table, "--images", photos, "--out", work / "check", cwd=work)
    profile = own_profile(work / "test_own_photos.yaml", run_dir=work / "runs" / "mine", data_csv=table,
                          image_dir=photos)
    steps["reports"] = run_book(profile, work)
    recorded = (work / "runs" / "mine" / "final_checkpoint.txt").read_text().strip()
    checkpoint = Path(REPO_ROOT, recorded)  # written relative to the repository root, or absolute
    steps["ingest more"] = geopak("ingest", more, "--out", work / "more.csv", "--quiet", cwd=work)
    steps["evaluate"] = geopak("evaluate", checkpoint, "--table", work / "more.csv", "--images", more,
                               "--out", work / "eval more", "--no-progress", cwd=work)
    steps["predict"] = geopak("predict", more, "--checkpoint", checkpoint, "--out", work / "predictions.csv",
                              "--no-progress", cwd=work)
    return work, steps


def test_every_photo_is_used_or_listed_with_a_reason(photo_set, chain):
    _, photos, _ = photo_set
    work, steps = chain
    assert steps["ingest"].returncode == 1  # documented: 1 when some files are in the rejects
    assert f"{N_PHOTOS + 1} photos with a GPS position" in steps["ingest"].stdout
    table = pd.read_csv(work / "my data" / "samples.csv", dtype={"id": str})
    rejects = pd.read_csv(work / "my data" / "samples_rejects.csv")
    files = {p.relative_to(photos).as_posix() for p in photos.rglob("*") if p.is_file()}
    assert len(files) == N_PHOTOS + len(NO_POSITION) + 1
    assert set(table["image"]) | set(rejects["file"]) == files and not set(table["image"]) & set(rejects["file"])
    assert dict(zip(rejects["file"], rejects["reason"])) == NO_POSITION
    assert {Path(f).suffix for f in table["image"]} == set(FORMATS)
    # validate: the point in Paris is rejected with its reason, exit 1 as documented; the rest is used
    assert steps["validate"].returncode == 1, steps["validate"].stderr
    checked = pd.read_csv(work / "check" / "rejects.csv", dtype={"id": str})
    paris_id = table.set_index("image").loc[PARIS, "id"]
    assert checked[["id", "reason"]].values.tolist() == [[paris_id, "outside_pakistan"]]
    # the book's own audit (00) reaches the same verdict: every ingested photo is in its manifest or rejects
    manifest = pd.read_csv(work / "runs" / "mine" / "manifest.csv", dtype={"id": str})
    run_rejects = pd.read_csv(work / "runs" / "mine" / "rejects.csv", dtype={"id": str})
    assert set(manifest["id"]) | set(run_rejects["id"]) == set(table["id"])
    assert len(manifest) == N_PHOTOS and run_rejects["reason"].tolist() == ["outside_pakistan"]
    assert manifest["province"].notna().all() and set(manifest["split"]) >= {"train", "val", "test"}


def test_the_book_reports_and_evaluate_writes_metrics_with_intervals(chain):
    work, steps = chain
    assert [p.stem for p in sorted(steps["reports"].glob("*.html"))] == [nb.stem for nb in notebook_paths()]
    assert steps["evaluate"].returncode == 0, steps["evaluate"].stderr
    out = work / "eval more"
    metrics = json.loads((out / "metrics.json").read_text())
    lo, hi = metrics["ci95"]["median_km"]
    assert metrics["n"] == 24 and lo <= metrics["median_km"] <= hi
    assert "median error" in steps["evaluate"].stdout and "[95%:" in steps["evaluate"].stdout
    predictions = pd.read_csv(out / "predictions.csv")
    assert len(predictions) == 24 and predictions["error_km"].notna().all()
    assert "median error" in (out / "report.html").read_text(encoding="utf-8")
    assert (out / "per_province.csv").is_file()


def test_predict_writes_one_row_per_photo_heic_included(photo_set, chain):
    _, _, more = photo_set
    work, steps = chain
    assert steps["predict"].returncode == 0, steps["predict"].stderr
    rows = pd.read_csv(work / "predictions.csv", keep_default_na=False)
    images = {str(p) for p in more.rglob("*") if p.is_file()}
    assert sorted(rows["image"]) == sorted(images)  # 25 photos: 24 with GPS, one HEIC without
    assert (rows["error"] == "").all() and pd.to_numeric(rows["lat"]).between(23, 37.5).all()
    assert sum(Path(p).suffix == ".heic" for p in rows["image"]) == 7


def hf_parquet(table: pd.DataFrame, photos: Path, out: Path) -> Path:
    """The ingested rows as a Hugging Face ``datasets`` Parquet: image = struct {bytes, path}."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    images = [{"bytes": (photos / name).read_bytes(), "path": name} for name in table["image"]]
    arrow = pa.table({"id": table["id"], "image": pa.array(images, type=struct),
                      "latitude": table["latitude"], "longitude": table["longitude"],
                      "province": ["" if pd.isna(v) else str(v) for v in table["province"]]})
    pq.write_table(arrow, out, row_group_size=64)  # several row groups, as datasets writes them
    return out


def test_a_hugging_face_parquet_validates_and_runs_through_the_book(photo_set, chain):
    _, photos, _ = photo_set
    work, _ = chain
    table = pd.read_csv(work / "my data" / "samples.csv", dtype={"id": str})
    parquet = hf_parquet(table, photos, work / "train.parquet")
    checked = geopak("validate", parquet, "--out", work / "check parquet", cwd=work)  # no --images: bytes inside
    assert checked.returncode == 1, checked.stderr  # the point in Paris, as for the CSV
    assert f"{N_PHOTOS} valid rows" in checked.stdout
    profile = own_profile(work / "test_own_parquet.yaml", run_dir=work / "runs" / "parquet", data_csv=parquet,
                          image_dir="")
    run_book(profile, work)
    manifest = pd.read_csv(work / "runs" / "parquet" / "manifest.csv", dtype={"id": str})
    assert len(manifest) == N_PHOTOS and manifest["image_path"].str.startswith("parquet:").all()
