"""The whole book on the smoke profile, executed by papermill inside the test suite.

Marked `book` (a few minutes); `make test` runs it, `make test-fast` skips it. Afterwards
`pytest --nbval-lax notebooks` (also in `make test`) runs the notebooks once more with their
default parameters, which are the smoke settings.
"""

import re

import pandas as pd
import pytest

from geopak_lib.book.runner import REPO_ROOT, load_profile, notebook_paths, run_book
from geopak_lib.book.report import external_references

pytestmark = pytest.mark.book


@pytest.fixture(scope="module")
def smoke_book():
    # the runner prints each notebook's time; `pytest -s` shows it (recorded in docs/performance.md)
    return run_book("smoke"), None


def test_every_notebook_renders_an_offline_report(smoke_book):
    reports, _ = smoke_book
    assert [r.stem for r in reports] == [nb.stem for nb in notebook_paths()]
    for r in reports:
        page = r.read_text()
        assert external_references(page) == [], r.name
        assert "Traceback (most recent call last)" not in page, r.name
        assert "<h1" in page, f"{r.name} has no title"


def test_the_whole_book_leaves_its_site(smoke_book):
    """`geopak book` builds reports/<profile>/site/ after the last notebook (tests/test_site.py checks it)."""
    run_dir = REPO_ROOT / load_profile("smoke").common["run_dir"]
    index = REPO_ROOT / "reports" / "smoke" / "site" / "index.html"
    last = run_dir / "notebooks" / notebook_paths()[-1].name
    assert index.is_file() and index.stat().st_mtime >= last.stat().st_mtime


def test_audit_and_geocell_artifacts(smoke_book):
    run_dir = REPO_ROOT / load_profile("smoke").common["run_dir"]
    manifest = pd.read_csv(run_dir / "manifest.csv", dtype={"id": str})
    assert len(manifest) == 400 and {"train", "val", "test"} <= set(manifest["split"]) <= {"train", "val", "val_cal", "test", "buffer"}
    assign = pd.read_csv(run_dir / "assignments.csv", dtype={"id": str})
    assert sorted(assign["id"]) == sorted(manifest["id"])  # every sample has its cell
    audit = (REPO_ROOT / "reports" / "smoke" / "00_data_audit.html").read_text()
    for text in ("aerial and terrain crops", "Rejects", "Spatial-block split", "leaflet"):
        assert text in audit


def test_explorer_report_shows_its_first_state(smoke_book):
    """08_explore headless: the widget's static copy (image, prediction, map) is in the report."""
    page = (REPO_ROOT / "reports" / "smoke" / "08_explore.html").read_text()
    assert "geopak-explorer-static" in page and "data:image/png;base64" in page
    assert re.search(r"<iframe\b[^>]*\ssrcdoc=", page), "the hypotheses map (an iframe) is missing"
    assert "test image" in page and "error radius" in page


def test_evaluation_leaves_refined_test_predictions_and_the_comparison_is_quiet(smoke_book):
    """06 saves the test frame again after refinement (08 labels by the error it shows), and 05's
    phase comparison rebuilds each checkpoint without repeating the encoders' warnings."""
    run_dir = REPO_ROOT / load_profile("smoke").common["run_dir"]
    frame = pd.read_csv(run_dir / "predictions_test.csv")
    assert frame["refined_error_km"].notna().all() and (frame["refined_error_km"] >= 0).all()
    page = (REPO_ROOT / "reports" / "smoke" / "05_phase3_finetune.html").read_text()
    assert page.count("Model initialized randomly") <= 1  # phase 3's own set-up may say it; the comparison not
