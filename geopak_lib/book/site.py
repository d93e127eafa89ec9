"""The book as a website: the executed notebooks of a run, built by Sphinx with myst-nb and
sphinx-book-theme into ``reports/<profile>/site/`` (open ``index.html``; no server, no network).

The notebooks are not executed again (``nb_execution_mode = "off"``): they get the same output
cleaning as the standalone reports (report.clean_outputs), their code folded away, and a landing
page (site_index). Offline: Sphinx's MathJax is switched off (no notebook output has maths), the
widget JavaScript myst-nb would load from a CDN is switched off (clean_outputs drops the widget
outputs), and the theme's fonts and icons ship with it. Every page is checked for a reference to
the network before the build counts as done. Decisions: docs/decisions/site.md.
"""

from __future__ import annotations

import io
import re
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import nbformat

from geopak_lib.book.report import clean_outputs, external_references
from geopak_lib.book.site_index import landing_page

CONF = '''\
project = {title!r}
author = "GEOPAK book"
copyright = "GEOPAK book authors"
extensions = ["myst_nb"]
exclude_patterns = ["_build"]
nb_execution_mode = "off"          # the run executed them; the site only renders
nb_merge_streams = True
nb_render_markdown_format = "gfm"  # Markdown outputs hold tables (myst-nb's default, commonmark, has none)
nb_ipywidgets_js = {{}}             # no widget JavaScript from a CDN
html_theme = "sphinx_book_theme"
html_title = {title!r}
html_copy_source = False           # the executed notebooks are large (inline maps); not re-served
html_show_sourcelink = False
html_last_updated_fmt = None
html_show_search_summary = False   # the excerpts are fetch()ed, which a browser refuses from file://
html_context = {{"default_mode": "light"}}
html_static_path = ["_static"]
html_css_files = ["geopak.css"]
html_theme_options = {{
    "show_toc_level": 2,
    "use_download_button": False,
    "use_fullscreen_button": True,
    "use_repository_button": False,
    "navigation_with_keys": False,
    "show_navbar_depth": 1,
    "navbar_persistent": [],       # the sidebar has the search field; no second one in a top bar
}}
suppress_warnings = ["mystnb.unknown_mime_type", "myst.header"]
'''

# The theme keeps the article to a reading width (~45 em) in an 88 rem page; the book's figures are
# wide panels of curves, so on a wide screen the article may grow to 75 em in a 110 rem page.
CSS = (".bd-page-width { max-width: 110rem; }\n"
       ".bd-main .bd-content .bd-article-container { max-width: 75em; }\n")
HIDE_INPUT = "hide-input"  # myst-nb folds the code under a "Show code cell source" toggle
REMOVE_CELL = "remove-cell"  # code that shows nothing (imports, set-up)


class SiteError(RuntimeError):
    """The site could not be built, or a page would fetch something from the network."""


def prepare_notebook(src: Path, dst: Path) -> None:
    """Copy an executed notebook for the site: outputs cleaned as for the reports, code folded
    away, code cells that show nothing (imports, set-up) left out, and the parameters the run
    used kept, folded under their own label."""
    nb = clean_outputs(nbformat.read(str(src), as_version=4))
    injected = any("injected-parameters" in c.metadata.get("tags", []) for c in nb.cells)
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        tags = cell.metadata.setdefault("tags", [])
        if "injected-parameters" in tags or ("parameters" in tags and not injected):
            tags.append(HIDE_INPUT)  # what the run used; the defaults only when papermill injected none
            cell.metadata["mystnb"] = {"code_prompt_show": "Show the parameters of this run"}
        else:
            tags.append(HIDE_INPUT if cell.get("outputs") else REMOVE_CELL)
    nbformat.write(nb, str(dst))


def write_source(run_dir: Path, profile: str, src_dir: Path, root: Path) -> list[Path]:
    """Fill ``src_dir`` with conf.py, index.md and the prepared notebooks; return the notebooks used."""
    notebooks = sorted((Path(run_dir) / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if not notebooks:
        raise SiteError(f"no executed notebooks in {Path(run_dir) / 'notebooks'}: run `geopak book {profile}` first")
    for nb in notebooks:
        prepare_notebook(nb, src_dir / nb.name)
    toctree = "\n".join(nb.stem for nb in notebooks)
    index = (landing_page(run_dir, profile, notebooks, root)
             + f"\n```{{toctree}}\n:hidden:\n:caption: Chapters\n:maxdepth: 1\n\n{toctree}\n```\n")
    (src_dir / "index.md").write_text(index, encoding="utf-8")
    (src_dir / "_static").mkdir(exist_ok=True)
    (src_dir / "_static" / "geopak.css").write_text(CSS, encoding="utf-8")
    (src_dir / "conf.py").write_text(CONF.format(title=f"GEOPAK book · {profile}"), encoding="utf-8")
    return notebooks


def sphinx_build(src_dir: Path, out_dir: Path, doctree_dir: Path) -> tuple[int, str]:
    """Run Sphinx's HTML builder in this process; (number of warnings, warning text)."""
    from sphinx.application import Sphinx
    from sphinx.util.docutils import docutils_namespace, patch_docutils

    status, problems = io.StringIO(), io.StringIO()
    with patch_docutils(src_dir), docutils_namespace(), warnings.catch_warnings():
        # myst-parser 4 uses Sphinx APIs that Sphinx 9 deprecates: noise for our readers, not theirs
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        app = Sphinx(str(src_dir), str(src_dir), str(out_dir), str(doctree_dir), "html",
                     status=status, warning=problems, freshenv=True, parallel=1)
        app.build(force_all=True)
        if app.statuscode:
            raise SiteError(f"Sphinx failed building {out_dir}:\n{problems.getvalue()[-2000:]}")
    return problems.getvalue().count("WARNING:"), problems.getvalue()


_CSS_URL = re.compile(r"""(?:@import\s+|url\(\s*)["']?(https?://[^"')\s]+)""")


def network_references(out_dir: Path) -> dict[str, list[str]]:
    """{page or stylesheet: URLs it would fetch}: scripts, stylesheets, images and frames in every
    HTML page (report.external_references, also inside a map's srcdoc), and url()/@import in CSS."""
    found = {}
    for page in sorted(Path(out_dir).rglob("*.html")):
        text = page.read_text(encoding="utf-8", errors="replace")
        urls = external_references(text) + external_references(_unescape_srcdoc(text))
        if urls:
            found[str(page.relative_to(out_dir))] = sorted(set(urls))
    for css in sorted(Path(out_dir).rglob("*.css")):
        urls = _CSS_URL.findall(css.read_text(encoding="utf-8", errors="replace"))
        if urls:
            found[str(css.relative_to(out_dir))] = sorted(set(urls))
    return found


def _unescape_srcdoc(page: str) -> str:
    """The pages inside iframe srcdoc attributes (HTML-escaped), joined."""
    import html

    return "\n".join(html.unescape(s) for s in re.findall(r'srcdoc="([^"]*)"', page))


def build_site(run_dir, profile: str, out_dir, root, *, log=print) -> Path:
    """Build the site of a run into ``out_dir`` (replaced); return its index.html.

    Raises SiteError when a page would reach the network."""
    run_dir, out_dir, root = Path(run_dir), Path(out_dir), Path(root)
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="geopak_site_") as tmp:
        src_dir, tmp_out = Path(tmp, "src"), Path(tmp, "html")
        src_dir.mkdir()
        notebooks = write_source(run_dir, profile, src_dir, root)
        n_warn, problems = sphinx_build(src_dir, tmp_out, Path(tmp, "doctrees"))
        shutil.rmtree(tmp_out / ".doctrees", ignore_errors=True)
        (tmp_out / ".buildinfo").unlink(missing_ok=True)
        refs = network_references(tmp_out)
        if refs:
            raise SiteError(f"the site would fetch from the network: {dict(list(refs.items())[:3])}")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(tmp_out, out_dir)
    if n_warn:
        log(f"      Sphinx warnings ({n_warn}):\n" + "\n".join("        " + w for w in problems.splitlines()[:10]))
    log(f"site: {len(notebooks)} chapters in {time.time() - t0:.0f} s -> {out_dir / 'index.html'}")
    return out_dir / "index.html"
