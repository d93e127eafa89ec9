"""Offline maps and reports: nothing in a page may need the network."""

import folium
import folium.plugins
import nbformat
import pytest

from geopak_lib.book.report import (ShowMap, export_html, external_references, inline_assets, map_html,
                               offline_map, OfflineAssetError)


def test_folium_page_has_cdn_refs_and_ours_has_none():
    m = folium.Map(tiles=None)
    assert external_references(m.get_root().render())  # folium alone would fetch from CDNs
    m = offline_map()
    folium.CircleMarker([24.86, 67.0], radius=4, popup="Karachi").add_to(m)
    folium.plugins.HeatMap([[24.86, 67.0, 1.0]]).add_to(m)
    folium.LayerControl().add_to(m)
    page = map_html(m)
    assert external_references(page) == []
    assert "L.map(" in page and "leaflet" in page.lower()
    assert "L.heatLayer" in page and "simpleheat" in page  # heat plugin inlined from folium
    assert "data:image/jpeg;base64," in page  # relief base layer inlined


def test_unknown_external_asset_is_an_error():
    with pytest.raises(OfflineAssetError, match="example.org"):
        inline_assets('<script src="https://example.org/x/unknown-plugin.js"></script>')


def test_show_map_iframe_is_self_contained():
    html = ShowMap(offline_map())._repr_html_()
    assert html.startswith("<iframe srcdoc=") and external_references(html) == []


def test_export_html_hides_code_and_needs_no_network(tmp_path):
    nb = nbformat.v4.new_notebook()
    src = "secret_code_marker = 1\nfrom geopak_lib.book.report import ShowMap, offline_map\nShowMap(offline_map())"
    cell = nbformat.v4.new_code_cell(src)
    cell.outputs = [nbformat.v4.new_output("execute_result", {"text/html": ShowMap(offline_map())._repr_html_()},
                                           execution_count=1)]
    nb.cells = [nbformat.v4.new_markdown_cell("# Title"), cell]
    path = tmp_path / "x.ipynb"
    nbformat.write(nb, str(path))
    out = export_html(path, tmp_path / "x.html")
    page = out.read_text()
    assert "secret_code_marker" not in page
    assert "Title" in page and "iframe" in page
    assert external_references(page) == []


def test_clean_outputs_drops_progress_bars_keeps_warnings():
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("x")
    bar = "demo images:  14%|█         | 58/400 [00:01<00:04, 84.38img/s]\rdemo images: 100%|██| 400/400 [00:03<00:00]\n"
    cell.outputs = [
        nbformat.v4.new_output("stream", name="stderr", text=bar),
        nbformat.v4.new_output("stream", name="stderr", text=bar + "UserWarning: CLIP runs on random weights\n"),
        nbformat.v4.new_output("display_data", {"application/vnd.jupyter.widget-view+json": {"model_id": "x"},
                                                "text/plain": "HBox()"}),
        nbformat.v4.new_output("stream", name="stdout", text="10%|# | kept: stdout is the user's own print\n"),
    ]
    nb.cells = [cell]
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    from geopak_lib.book.report import clean_outputs
    cleaned = clean_outputs(nb)
    assert "widgets" not in cleaned.metadata
    outs = cleaned.cells[0].outputs
    assert [o["name"] for o in outs] == ["stderr", "stdout"]
    assert outs[0]["text"] == "UserWarning: CLIP runs on random weights\n"


@pytest.mark.skipif(not __import__("shutil").which("chromium"), reason="headless chromium not installed")
def test_map_renders_in_headless_chromium_offline(tmp_path):
    """Leaflet must actually run: the DOM after scripts holds the relief layer and our circle."""
    import subprocess

    from geopak_lib.book.report import save_map
    m = offline_map()
    folium.CircleMarker([24.86, 67.0], radius=6, color="#ff0000").add_to(m)
    page = save_map(m, tmp_path / "map.html")
    cmd = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'u'}",
           "--virtual-time-budget=5000", "--dump-dom", page.as_uri()]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
    assert "leaflet-container" in dom and "leaflet-image-layer" in dom
    assert "leaflet-interactive" in dom  # the circle marker was drawn
