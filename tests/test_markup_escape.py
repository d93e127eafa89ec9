"""Dataset strings are data, never markup: an id, province, place or file name carrying a script
payload comes out of every HTML-producing helper of 06, 07 and 08 escaped (docs/decisions/sharing.md)."""

import html

import mistune
import pandas as pd

from geopak_lib.book import figures
from geopak_lib.book.explorer import Explorer

PAYLOAD = "t35<img src=x onerror=\"document.title='PWNED-35'\">"
RAW = "<img src=x onerror="
ESCAPED = html.escape(PAYLOAD)  # &lt;img src=x onerror=&quot;...


def _frame():
    return pd.DataFrame({"id": [PAYLOAD, "ok"], "province": [PAYLOAD, "Sindh"], "latitude": [25.0, 31.5],
                         "longitude": [68.0, 74.3], "error_km": [800.0, 3.0], "province_pred": [1, 0],
                         "mixture_lat": [31.0, 31.5], "mixture_lon": [74.0, 74.3], "cell_id": [0, 0]})


def _result():
    return {"province": "Sindh", "confidence": 0.9, "lat": 25.0, "lon": 68.0, "radius_km": 40.0,
            "radius_calibrated": True, "radius_coverage": 0.8, "alpha": 0.5, "place": PAYLOAD, "place_km": 3.0,
            "district": PAYLOAD, "place_province": PAYLOAD,
            "hypotheses": [{"lat": 25.0, "lon": 68.0, "weight": 1.0, "province": "Sindh", "cell_id": 0}]}


def _assert_escaped(page: str):
    assert RAW not in page
    assert "&lt;img src=x onerror=" in page or "&amp;lt;img src=x onerror=" in page


def test_map_popups_and_tooltips_of_06_escape_ids_and_provinces():
    frame = _frame()
    cells = pd.DataFrame({"cell_id": [0], "province": [PAYLOAD], "center_lat": [25.0], "center_lon": [68.0],
                          "radius_km": [20.0]})
    for m in (figures.error_map(frame), figures.worst_map(frame, 2), figures.cell_error_map(frame, cells)):
        _assert_escaped(m.get_root().render())


def test_prediction_text_escapes_place_district_and_province_from_the_gazetteer():
    text = figures.describe_prediction(_result(), (25.0, 68.0))
    assert ESCAPED in text
    _assert_escaped(mistune.html(text))  # how 07/08 Markdown becomes HTML: raw HTML passes through mistune


def test_explorer_summary_escapes_the_title_carrying_an_id():
    ex = object.__new__(Explorer)  # summary needs no predictor: only the title, truth and settings
    ex.title, ex.truth, ex.top_provinces, ex.top_cells, ex.tta = f"test image {PAYLOAD} (Sindh)", None, 2, 5, False
    page = mistune.html(ex.summary(_result()))
    _assert_escaped(page)
    assert html.escape(f"test image {PAYLOAD}") in ex.summary(_result())


def test_predict_notebook_escapes_the_title_it_puts_in_markdown():
    import json
    cells = json.load(open("notebooks/07_predict.ipynb"))["cells"]
    sources = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
    titled = [s for s in sources if 'Markdown(f"### {' in s]
    assert titled and all("{html.escape(title)}" in s for s in titled)
