"""The whole book on the smoke profile, executed by papermill inside the test suite.

Marked `book` (a few minutes); `make test` runs it, `make test-fast` skips it. Afterwards
`pytest --nbval-lax notebooks` (also in `make test`) runs the notebooks once more with their
default parameters, which are the smoke settings.
"""

import re
import shutil

import pandas as pd
import pytest
import yaml

from geopak_lib.book.demo import build_demo_dataset
from geopak_lib.book.runner import REPO_ROOT, load_profile, notebook_paths, run_book
from geopak_lib.book.report import external_references
from payload_book import PAYLOAD_MARK, add_payloads

pytestmark = pytest.mark.book


@pytest.fixture(scope="module")
def smoke_book(tmp_path_factory):
    """The smoke book, run once, on the smoke dataset with script payloads in some ids, file names and
    a free-text column (tests/payload_book.py): the smoke checks below and the payload checks share
    this one run. -> (reports, (payload dataset folder, files outside the run before the book))."""
    smoke = load_profile("smoke")
    data = smoke.notebooks["00_data_audit"]
    build_demo_dataset(REPO_ROOT / data["data_csv"].rsplit("/", 1)[0], n_images=data["demo_n_images"],
                       seed=smoke.common["seed"], region_km=30.0)
    folder = tmp_path_factory.mktemp("payload") / "data"
    shutil.copytree(REPO_ROOT / data["data_csv"].rsplit("/", 1)[0], folder)
    add_payloads(folder)
    raw = yaml.safe_load(smoke.path.read_text())
    # demo_n_images 0: use the folder as it is (the builder would rebuild a folder it did not stamp)
    raw["notebooks"]["00_data_audit"].update(data_csv=str(folder / "samples.csv"), image_dir=str(folder / "images"),
                                             demo_n_images=0)
    profile = folder.parent / "smoke.yaml"  # the stem names the reports folder: reports/smoke, as the plain smoke
    profile.write_text(yaml.safe_dump(raw, sort_keys=False))
    before = marked_files_outside(folder.parent)
    # the runner prints each notebook's time; `pytest -s` shows it (recorded in docs/performance.md)
    yield run_book(str(profile)), (folder, before)
    # The run was trained on the hostile copy of the data; nbval (next in `make test`) re-runs the notebooks
    # with the smoke defaults, whose 00 would rewrite manifest.csv under those checkpoints and every later
    # step would rightly refuse them as stale. So the payload run goes, and nbval builds its own.
    shutil.rmtree(REPO_ROOT / smoke.common["run_dir"], ignore_errors=True)


def marked_files_outside(*allowed) -> set:
    """Files named after a payload anywhere under the repository or the test's temp root, except
    the run folder and ``allowed``: an id that names a file must land inside the run folder."""
    run_dir = (REPO_ROOT / load_profile("smoke").common["run_dir"]).resolve()
    keep = [run_dir, *(a.resolve() for a in allowed)]
    roots = {REPO_ROOT.resolve(), allowed[0].resolve().parent.parent} if allowed else {REPO_ROOT.resolve()}
    found = set()
    for root in roots:
        for path in root.rglob(f"*{PAYLOAD_MARK}*"):
            if not any(path.resolve().is_relative_to(k) for k in keep) and ".git" not in path.parts:
                found.add(path)
    return found


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


def test_no_payload_is_markup_in_any_report(smoke_book):
    """No HTML under reports/smoke (notebook reports and the site; iframe srcdoc documents opened
    too) holds a payload as markup; the escaped text is there, so the payloads did reach the reports."""
    from payload_book import raw_payloads_in

    pages = sorted((REPO_ROOT / "reports" / "smoke").rglob("*.html"))
    assert pages
    found = {str(p.relative_to(REPO_ROOT)): hits for p in pages if (hits := raw_payloads_in(p.read_text()))}
    assert found == {}
    audit = (REPO_ROOT / "reports" / "smoke" / "00_data_audit.html").read_text()
    assert PAYLOAD_MARK in audit  # the rejects and maps show the hostile rows, as text


def test_no_file_is_written_outside_the_run_folder(smoke_book):
    _, (folder, before) = smoke_book
    assert marked_files_outside(folder.parent) - before == set()


def test_no_payload_runs_in_a_browser(smoke_book):
    """Headless Chromium opens every notebook report; no frame's title becomes a payload's."""
    from payload_book import titles_after_loading

    pages = sorted((REPO_ROOT / "reports" / "smoke").glob("*.html"))
    titles = titles_after_loading(pages)  # skips when Chromium or playwright is absent
    assert not [(page, t) for page, ts in titles.items() for t in ts if PAYLOAD_MARK in t]
