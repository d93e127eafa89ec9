"""The book as a site: the offline checks and the landing page's figures (fast), then the site
of the smoke run built by Sphinx and opened in headless Chromium with the network off (marked
`book`: it needs the executed smoke notebooks, of the session's smoke run in a temporary folder)."""

import json
import re
import shutil

import nbformat
import pytest

from geopak_lib.book.runner import REPO_ROOT, notebook_paths
from geopak_lib.book.site import build_site, network_references, prepare_notebook
from geopak_lib.book.site_index import final_model, headline_markdown


def test_network_references_finds_scripts_frames_and_css(tmp_path):
    (tmp_path / "ok.html").write_text('<a href="https://example.org">a link is not a fetch</a>'
                                      '<script src="_static/local.js"></script>')
    inner = '&lt;script src=&quot;https://cdn.example.org/leaflet.js&quot;&gt;&lt;/script&gt;'
    (tmp_path / "map.html").write_text(f'<iframe srcdoc="{inner}"></iframe>')
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "theme.css").write_text('@import url("https://fonts.example.org/x.css"); '
                                              'a{background:url(data:image/png;base64,AA)}')
    assert network_references(tmp_path) == {"map.html": ["https://cdn.example.org/leaflet.js"],
                                             "s/theme.css": ["https://fonts.example.org/x.css"]}


def test_prepare_notebook_folds_code_and_drops_silent_cells(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# 09 · Title"),
                nbformat.v4.new_code_cell("import x"),
                nbformat.v4.new_code_cell("run_dir = 'runs/smoke'", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("run_dir = 'runs/demo'", metadata={"tags": ["injected-parameters"]}),
                nbformat.v4.new_code_cell("print(1)", outputs=[
                    nbformat.v4.new_output("stream", name="stdout", text="1\n"),
                    nbformat.v4.new_output("stream", name="stderr", text="50%|#####     | 1/2 [00:01<00:01]\n")])]
    nbformat.write(nb, str(tmp_path / "in.ipynb"))
    prepare_notebook(tmp_path / "in.ipynb", tmp_path / "out.ipynb")
    cells = nbformat.read(str(tmp_path / "out.ipynb"), as_version=4).cells
    assert [c.metadata.get("tags") for c in cells] == [None, ["remove-cell"], ["parameters", "remove-cell"],
                                                       ["injected-parameters", "hide-input"], ["hide-input"]]
    assert cells[3].metadata["mystnb"]["code_prompt_show"] == "Show the parameters of this run"
    assert [o["text"] for o in cells[4].outputs] == ["1\n"]  # the progress bar went, as in the reports


def test_headline_markdown_formats_the_summary():
    summary = {"headline": {"n": 58.0, "median_km": 188.136, "p90_km": 633.80, "acc_25km": 0.0517,
                            "acc_200km": 0.5172, "province_acc": 0.6034}}
    rows = headline_markdown(summary).splitlines()
    assert rows[0] == ("| test images | median error | 90th percentile | within 25 km | within 200 km | "
                       "province accuracy |")
    assert rows[2] == "| 58 | 188.1 km | 633.8 km | 5.2% | 51.7% | 60.3% |"


# --- the site of the smoke run ---------------------------------------------------------------

@pytest.fixture(scope="module")
def smoke_site(tmp_path_factory, smoke_run):
    run_dir = smoke_run.run_dir()
    assert {nb.stem for nb in notebook_paths()} <= {p.stem for p in (run_dir / "notebooks").glob("*.ipynb")}
    out = tmp_path_factory.mktemp("site") / "site"
    build_site(run_dir, "smoke", out, REPO_ROOT)
    return run_dir, out


@pytest.mark.book
def test_site_index_has_the_headline_and_every_chapter(smoke_site):
    run_dir, site = smoke_site
    index = (site / "index.html").read_text()
    ckpt, _ = final_model(run_dir, REPO_ROOT)
    summary = json.loads(ckpt.with_name(ckpt.stem + ".evaluation.json").read_text())
    h = summary["headline"]
    for text in ("Test headline", "Run manifest", f"{h['median_km']:.1f} km", f"{h['p90_km']:.1f} km",
                 f"{h['acc_25km']:.1%}", f"{h['acc_200km']:.1%}", f"{h['province_acc']:.1%}",
                 str(ckpt), "git commit", "weights"):  # a run outside the repository: its absolute path
        assert text in index, text
    order = ["index"] + [nb.stem for nb in notebook_paths()]
    for before, stem, after in zip(order, order[1:], order[2:] + [None]):
        assert f'href="{stem}.html"' in index, stem  # the chapter list and the sidebar
        page = (site / f"{stem}.html").read_text()
        assert re.search(rf'class="left-prev"\s+href="{before}.html"', page), stem
        assert after is None or re.search(rf'class="right-next"\s+href="{after}.html"', page), stem
        assert "Traceback (most recent call last)" not in page, stem
    assert (site / "search.html").is_file() and (site / "searchindex.js").is_file()


@pytest.mark.book
def test_no_page_of_the_site_reaches_the_network(smoke_site):
    _, site = smoke_site
    assert network_references(site) == {}


@pytest.mark.book
@pytest.mark.skipif(not shutil.which("chromium"), reason="headless chromium not installed")
def test_site_renders_offline_in_headless_chromium(smoke_site, smoke_run):
    """Landing page and 06 in Chromium with every non-file request refused: figures and the
    relief layer of each map are drawn, nothing failed. Screenshots: the run's reports/smoke/site_screenshots/."""
    from playwright.sync_api import sync_playwright

    _, site = smoke_site
    shots = smoke_run.report_dir() / "site_screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
        context = browser.new_context(viewport={"width": 1280, "height": 900}, offline=True)
        refused, failed, errors = [], [], []
        context.route("**/*", lambda route: route.continue_() if route.request.url.startswith(("file:", "data:"))
                      else (refused.append(route.request.url), route.abort()))
        page = context.new_page()
        page.on("requestfailed", lambda r: failed.append(r.url))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)

        page.goto((site / "index.html").as_uri(), wait_until="load")
        assert page.locator("table").first.is_visible()
        nav = page.locator(".bd-sidebar-primary a.reference.internal")
        assert nav.count() == len(notebook_paths())
        page.screenshot(path=str(shots / "index.png"))

        page.goto((site / "06_evaluation.html").as_uri(), wait_until="load")
        page.wait_for_timeout(1500)  # Leaflet draws inside the iframes after their load
        figures = page.evaluate("Array.from(document.querySelectorAll('main img')).map(i => i.naturalWidth)")
        assert figures and min(figures) > 0, figures
        maps = [f for f in page.frames if f != page.main_frame]
        assert maps, "06 shows no map"
        for frame in maps:  # the relief overlay is loaded and laid out at a size on the map
            relief = frame.evaluate("Array.from(document.querySelectorAll('img.leaflet-image-layer')).map(i => "
                                    "i.complete ? Math.min(i.naturalWidth, i.getBoundingClientRect().width) : 0)")
            assert relief and min(relief) > 0, relief
        page.locator("iframe").first.scroll_into_view_if_needed()
        page.wait_for_timeout(1500)  # an iframe scrolled into view is painted on the next frames
        page.screenshot(path=str(shots / "06_evaluation_map.png"))
        page.goto((site / "06_evaluation.html").as_uri(), wait_until="load")
        page.screenshot(path=str(shots / "06_evaluation.png"))

        page.goto((site / "search.html").as_uri() + "?q=geocell", wait_until="load")
        page.wait_for_selector("#search-results li", timeout=10000)  # Sphinx's search works from file://
        page.screenshot(path=str(shots / "search.png"))
        browser.close()
    assert refused == [] and failed == [], (refused, failed)
    assert not [e for e in errors if "theme mode" not in e], errors


def test_geopak_site_without_a_run_says_which_command_makes_one(tmp_path, capsys):
    from geopak_lib.book.cli import main

    profile = tmp_path / "mine.yaml"
    profile.write_text(f"common:\n  run_dir: {tmp_path / 'runs' / 'mine'}\n")
    assert main(["site", str(profile)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no executed notebooks" in err and "geopak book mine" in err, err
    assert main(["site", "no_such_profile"]) == 2
    assert "profile 'no_such_profile' not found" in capsys.readouterr().err


def test_landing_page_of_a_run_without_a_trained_model(tmp_path):
    """A run that stopped after 01 still gets a landing page, saying what is missing and why."""
    from geopak_lib.book.site_index import landing_page

    nb = nbformat.v4.new_notebook(metadata={"papermill": {"parameters": {"data_csv": "data/x.csv"}, "duration": 12.4}})
    (tmp_path / "run" / "notebooks").mkdir(parents=True)
    nbformat.write(nb, str(tmp_path / "run" / "notebooks" / "00_data_audit.ipynb"))
    page = landing_page(tmp_path / "run", "mine", [tmp_path / "run" / "notebooks" / "00_data_audit.ipynb"], tmp_path)
    assert "| final model | none: no trained model in" in page
    assert "No test figures: no trained model in" in page
    assert "| dataset | `data/x.csv` |" in page  # no manifest.csv: the source only
    assert "- [](00_data_audit.ipynb) (12 s)" in page
    header = page.split("## Run manifest", 1)[1].strip().splitlines()[0]
    assert header == "| what | value |"  # an empty header row renders as a blank first row


def test_headline_with_intervals_leads_with_the_predictors_default():
    from geopak_lib.book.site_index import headline_ci_markdown

    ci = {"median_km": [70.0, 60.0, 80.0], "p90_km": [300.0, 250.0, 350.0], "acc_25km": [0.2, 0.15, 0.25],
          "acc_200km": [0.7, 0.6, 0.8], "province_acc": [0.8, 0.75, 0.85]}
    refined = {k: [v[0] - 5, v[1] - 5, v[2] - 5] if k.endswith("km") and "acc" not in k else v for k, v in ci.items()}
    summary = {"headline": {"n": 444}, "headline_ci95": ci, "refined_ci95": refined, "refined": {"default": True}}
    rows = headline_ci_markdown(summary).splitlines()
    assert rows[2].startswith("| **refined (the predictor's default)** | 444 | 65.0 km [55.0 km, 75.0 km]")
    assert rows[3].startswith("| plain mixture | 444 | 70.0 km [60.0 km, 80.0 km]")
    summary["refined"]["default"] = False
    assert headline_ci_markdown(summary).splitlines()[2].startswith("| **plain mixture (the predictor's default)**")
    assert "block-bootstrap" in headline_ci_markdown(summary)
