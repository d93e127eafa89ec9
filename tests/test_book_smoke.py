"""The whole book on the smoke profile, executed by papermill inside the test suite.

Marked `book` (a few minutes); `make test` runs it, `make test-fast` skips it. The run, its reports,
the feature cache and the dataset go under a temporary folder (`geopak book --under`), not into the
repository. `make test` then runs nbval on the notebooks with the smoke values injected and a run of
its own in another temporary folder (Makefile, docs/decisions/config.md).
"""

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import yaml

from geopak_lib.book.demo import build_demo_dataset
from geopak_lib.book.runner import REPO_ROOT, load_profile, notebook_paths, run_book
from geopak_lib.book.report import external_references
from payload_book import PAYLOAD_MARK, add_payloads

pytestmark = pytest.mark.book


@dataclass
class Book:
    reports: list  # the HTML reports, in notebook order
    run_dir: Path
    report_dir: Path
    data: Path  # the payload dataset folder
    before: set  # payload-named files outside the run folder before the book ran
    repo_before: set  # what the repository's output folders held before the book ran
    repo_after: set


@pytest.fixture(scope="module")
def smoke_book(tmp_path_factory):
    """The smoke book, run once under a temporary folder, on the smoke dataset with script payloads in
    some ids, file names and a free-text column (tests/payload_book.py): the smoke checks below and the
    payload checks share this one run."""
    root = tmp_path_factory.mktemp("payload")
    smoke = load_profile("smoke")
    data = smoke.notebooks["00_data_audit"]
    folder = root / "data"
    build_demo_dataset(folder, n_images=data["demo_n_images"], seed=smoke.common["seed"], region_km=30.0)
    add_payloads(folder)
    raw = yaml.safe_load(smoke.path.read_text())
    # demo_n_images 0: use the folder as it is (the builder would rebuild a folder it did not stamp)
    raw["notebooks"]["00_data_audit"].update(data_csv=str(folder / "samples.csv"), image_dir=str(folder / "images"),
                                             demo_n_images=0)
    profile = root / "smoke.yaml"  # the stem names the reports folder: <root>/reports/smoke, as the plain smoke
    profile.write_text(yaml.safe_dump(raw, sort_keys=False))
    moved = load_profile(str(profile), under=root)
    before = marked_files_outside(moved.run_dir(), folder)
    # the runner prints each notebook's time; `pytest -s` shows it (recorded in docs/performance.md)
    repo_before = repository_outputs()
    reports = run_book(str(profile), under=root)
    yield Book(reports, moved.run_dir(), moved.report_dir(), folder, before, repo_before, repository_outputs())
    shutil.rmtree(root, ignore_errors=True)  # checkpoints of a whole run: the disk is wanted by later tests


def marked_files_outside(run_dir: Path, *allowed: Path) -> set:
    """Files named after a payload anywhere under the repository or the session's temporary folder,
    except in the run folder and ``allowed``: an id that names a file must land inside the run folder."""
    run_dir = Path(run_dir).resolve()
    keep = [run_dir, *(Path(a).resolve() for a in allowed)]
    roots = {REPO_ROOT.resolve(), run_dir.parents[2]}  # <session tmp>/payloadN/runs/smoke
    found = set()
    for root in roots:
        for path in root.rglob(f"*{PAYLOAD_MARK}*"):
            if not any(path.resolve().is_relative_to(k) for k in keep) and ".git" not in path.parts:
                found.add(path)
    return found


def repository_outputs() -> set:
    """Every file under the repository's runs/, reports/<profile>/, data/ and cache/."""
    return {p for top in ("runs", "reports", "data", "cache") for p in (REPO_ROOT / top).rglob("*")
            if p.is_file() and p != REPO_ROOT / "reports" / "README.md"}


def test_nothing_of_the_run_lands_in_the_repository(smoke_book):
    assert smoke_book.repo_after == smoke_book.repo_before
    assert all(not r.resolve().is_relative_to(REPO_ROOT) for r in smoke_book.reports)
    assert (smoke_book.report_dir / "site" / "index.html").is_file()
    manifest = pd.read_csv(smoke_book.run_dir / "manifest.csv", nrows=1)
    assert Path(manifest["image_path"][0]).is_relative_to(smoke_book.data)
    assert list((smoke_book.run_dir.parents[1] / "cache").glob("*/complete.json"))  # 02's feature cache


def test_every_notebook_renders_an_offline_report(smoke_book):
    reports = smoke_book.reports
    assert [r.stem for r in reports] == [nb.stem for nb in notebook_paths()]
    for r in reports:
        page = r.read_text()
        assert external_references(page) == [], r.name
        assert "Traceback (most recent call last)" not in page, r.name
        assert "<h1" in page, f"{r.name} has no title"


def test_the_whole_book_leaves_its_site(smoke_book):
    """`geopak book` builds reports/<profile>/site/ after the last notebook (tests/test_site.py checks it)."""
    index = smoke_book.report_dir / "site" / "index.html"
    last = smoke_book.run_dir / "notebooks" / notebook_paths()[-1].name
    assert index.is_file() and index.stat().st_mtime >= last.stat().st_mtime


def test_audit_and_geocell_artifacts(smoke_book):
    run_dir = smoke_book.run_dir
    manifest = pd.read_csv(run_dir / "manifest.csv", dtype={"id": str})
    assert len(manifest) == 400 and {"train", "val", "test"} <= set(manifest["split"]) <= {"train", "val", "val_cal", "test", "buffer"}
    assign = pd.read_csv(run_dir / "assignments.csv", dtype={"id": str})
    assert sorted(assign["id"]) == sorted(manifest["id"])  # every sample has its cell
    audit = (smoke_book.report_dir / "00_data_audit.html").read_text()
    for text in ("aerial and terrain crops", "Rejects", "Spatial-block split", "leaflet"):
        assert text in audit


def test_explorer_report_shows_its_first_state(smoke_book):
    """08_explore headless: the widget's static copy (image, prediction, map) is in the report."""
    page = (smoke_book.report_dir / "08_explore.html").read_text()
    assert "geopak-explorer-static" in page and "data:image/png;base64" in page
    assert re.search(r"<iframe\b[^>]*\ssrcdoc=", page), "the hypotheses map (an iframe) is missing"
    assert "test image" in page and "error radius" in page


def test_evaluation_leaves_refined_test_predictions_and_the_comparison_is_quiet(smoke_book):
    """06 saves the test frame again after refinement (08 labels by the error it shows), and 05's
    phase comparison rebuilds each checkpoint without repeating the encoders' warnings."""
    frame = pd.read_csv(smoke_book.run_dir / "predictions_test.csv")
    assert frame["refined_error_km"].notna().all() and (frame["refined_error_km"] >= 0).all()
    page = (smoke_book.report_dir / "05_phase3_finetune.html").read_text()
    assert page.count("Model initialized randomly") <= 1  # phase 3's own set-up may say it; the comparison not


def test_no_payload_is_markup_in_any_report(smoke_book):
    """No HTML under the run's reports/smoke (notebook reports and the site; iframe srcdoc documents opened
    too) holds a payload as markup; the escaped text is there, so the payloads did reach the reports."""
    from payload_book import raw_payloads_in

    pages = sorted(smoke_book.report_dir.rglob("*.html"))
    assert pages
    found = {str(p.relative_to(smoke_book.report_dir)): hits for p in pages if (hits := raw_payloads_in(p.read_text()))}
    assert found == {}
    audit = (smoke_book.report_dir / "00_data_audit.html").read_text()
    assert PAYLOAD_MARK in audit  # the rejects and maps show the hostile rows, as text


def test_no_file_is_written_outside_the_run_folder(smoke_book):
    assert marked_files_outside(smoke_book.run_dir, smoke_book.data) - smoke_book.before == set()


def test_no_payload_runs_in_a_browser(smoke_book):
    """Headless Chromium opens every notebook report; no frame's title becomes a payload's."""
    from payload_book import titles_after_loading

    pages = sorted(smoke_book.report_dir.glob("*.html"))
    titles = titles_after_loading(pages)  # skips when Chromium or playwright is absent
    assert not [(page, t) for page, ts in titles.items() for t in ts if PAYLOAD_MARK in t]
