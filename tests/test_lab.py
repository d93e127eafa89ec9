"""`make lab` opens the book as the last run of a profile left it; with no run, one line says which
command makes one. Browser checks (headless Chromium, skipped without it) on the session's smoke run
(in a temporary folder, which is JupyterLab's root): the explorer shows its widget and map, and the
executed notebooks re-run without an error."""

import json
import subprocess
import sys

import pytest
import yaml

from geopak_lib.book.lab import lab_command, lab_target
from geopak_lib.book.runner import REPO_ROOT
from lab_driver import CHROMIUM, JupyterLab


def _book(root, profile="mine", run_dir="runs/mine"):
    (root / "params").mkdir()
    (root / "params" / f"{profile}.yaml").write_text(f"common:\n  run_dir: {run_dir}\n")
    (root / "notebooks").mkdir()
    for name in ("00_first.ipynb", "01_second.ipynb"):
        (root / "notebooks" / name).write_text("{}")


def test_lab_opens_the_last_run_of_the_profile_or_says_how_to_make_one(tmp_path):
    _book(tmp_path)
    notebook, note = lab_target("mine", tmp_path)
    assert notebook == "notebooks/00_first.ipynb"
    assert note.startswith("no run of profile mine yet (runs/mine/notebooks/ is empty): make one with "
                           "`make book PROFILE=mine`") and "\n" not in note
    (tmp_path / "runs" / "mine" / "notebooks").mkdir(parents=True)
    (tmp_path / "runs" / "mine" / "notebooks" / "01_second.ipynb").write_text("{}")
    assert lab_target("mine", tmp_path) == ("runs/mine/notebooks/01_second.ipynb", "")
    argv, _ = lab_command("mine", ["--port=1"], tmp_path)
    assert argv[0].endswith("/jupyter-lab") and argv[-1] == "--port=1"
    assert f"--ServerApp.root_dir={tmp_path}" in argv
    assert "--ServerApp.default_url=/lab/tree/runs/mine/notebooks/01_second.ipynb" in argv


def test_make_lab_with_an_unknown_profile_is_one_line_and_exit_2():
    out = subprocess.run([sys.executable, "-m", "geopak_lib.book.lab", "no_such_profile"], capture_output=True,
                         text=True, cwd=REPO_ROOT, timeout=120)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.startswith("make lab: profile 'no_such_profile' not found") and out.stderr.count("\n") == 1


@pytest.mark.book
def test_injected_parameters_follow_the_parameters_cell(smoke_run):
    """Re-running an executed notebook top to bottom works on its run: papermill's injected cell
    comes after the parameters cell, so it wins."""
    cells = json.loads((smoke_run.run_dir() / "notebooks" / "08_explore.ipynb").read_text())["cells"]
    tags = [c["metadata"].get("tags", []) for c in cells if c["cell_type"] == "code"]
    assert tags[1] == ["parameters"] and tags[2] == ["injected-parameters"]
    injected = next(c for c in cells if "injected-parameters" in c["metadata"].get("tags", []))
    assert f'run_dir = "{smoke_run.run_dir()}"' in "".join(injected["source"])


@pytest.fixture(scope="module")
def lab(tmp_path_factory, smoke_run):
    """`make lab` on the session's smoke run: its profile (absolute paths) as a file, and the run's
    folder as JupyterLab's root, so the paths below are those `make lab smoke` shows in the repository."""
    profile = smoke_run.root / "smoke.yaml"
    profile.write_text(yaml.safe_dump({"common": smoke_run.common, "notebooks": smoke_run.notebooks}))
    with JupyterLab(str(profile), tmp_path_factory.mktemp("lab"), root=smoke_run.root) as lab:
        yield lab


@pytest.mark.book
@pytest.mark.skipif(not CHROMIUM, reason="headless chromium not installed")
def test_explorer_in_jupyterlab_shows_the_widget_and_the_map(lab, smoke_run):
    assert lab.default_notebook() == "runs/smoke/notebooks/00_data_audit.ipynb"  # what `make lab` opens
    errors = lab.run_notebook("runs/smoke/notebooks/08_explore.ipynb")
    assert errors == []
    page = lab.page
    page.wait_for_selector(".jupyter-widgets.geopak-explorer", state="attached")
    page.locator(".geopak-explorer").scroll_into_view_if_needed()
    assert page.locator(".geopak-explorer .widget-toggle-buttons").count() == 1
    assert page.locator(".geopak-explorer .widget-slider").count() == 2
    assert page.locator(".geopak-explorer img").count() >= 1
    frame = page.frame_locator(".geopak-explorer iframe[srcdoc]")
    frame.locator(".leaflet-image-layer").wait_for(state="attached", timeout=60_000)  # the relief base layer
    page.wait_for_timeout(1500)
    lab.screenshot(smoke_run.report_dir() / "lab_08_explore.png")
    assert frame.locator(".leaflet-marker-icon").count() == 2  # the prediction ✚ and the truth dot
    assert frame.locator("canvas").count() >= 1  # hypotheses, radius and outlines (prefer_canvas)
    # the top-provinces slider, moved with the keyboard, re-runs the mixture and redraws the map
    before = page.locator(".geopak-explorer iframe[srcdoc]").get_attribute("srcdoc")
    page.locator(".geopak-explorer .widget-slider .noUi-handle").first.press("ArrowLeft")
    page.get_by_text("Mixture of the top 1 provinces").wait_for(timeout=120_000)
    page.wait_for_function("before => document.querySelector('.geopak-explorer iframe[srcdoc]')"
                           "?.getAttribute('srcdoc') !== before", arg=before, timeout=60_000)  # the map comes after the text
    page.get_by_text("Mixture of the top 1 provinces").scroll_into_view_if_needed()
    frame.locator(".leaflet-marker-icon").first.wait_for(state="attached", timeout=60_000)
    page.wait_for_timeout(1500)
    lab.screenshot(smoke_run.report_dir() / "lab_08_explore_top1.png")
    # the redrawn map's canvas holds the outlines and circles: it was redrawn once its frame had a size
    drawn = frame.locator("canvas").evaluate_all("""cs => cs.map(c => {
        if (!c.width || !c.height) return 0;
        const a = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0; for (let i = 3; i < a.length; i += 4) n += a[i] > 0; return n; })""")
    assert max(drawn) > 1000, drawn


@pytest.mark.book
@pytest.mark.skipif(not CHROMIUM, reason="headless chromium not installed")
def test_executed_notebook_reruns_on_its_run_without_errors(lab, smoke_run):
    errors = lab.run_notebook("runs/smoke/notebooks/07_predict.ipynb")
    assert errors == []
    lab.page.wait_for_timeout(1000)
    lab.screenshot(smoke_run.report_dir() / "lab_07_predict.png")


@pytest.mark.book
def test_clean_notebook_with_no_run_says_in_one_line_which_command_makes_one(tmp_path):
    """06 opened with a run_dir that holds no run: its first cell that needs the run shows one line."""
    import re

    import papermill
    from papermill.exceptions import PapermillExecutionError

    out = tmp_path / "06.ipynb"
    with pytest.raises(PapermillExecutionError, match="MissingRunError"):
        papermill.execute_notebook(str(REPO_ROOT / "notebooks" / "06_evaluation.ipynb"), str(out),
                                   parameters={"run_dir": "runs/no_such_run"}, cwd=str(REPO_ROOT), progress_bar=False)
    errors = [o for c in json.loads(out.read_text())["cells"] for o in c.get("outputs", []) if o["output_type"] == "error"]
    shown = [re.sub(r"\x1b\[[0-9;]*m", "", line) for line in errors[0]["traceback"]]
    assert shown == ["MissingRunError: no run at runs/no_such_run: make one with `make book PROFILE=no_such_run` "
                     "(or `geopak book no_such_run`), or set run_dir to an existing run"]
