"""Report tables stay small at 100k rows: a DataFrame and a Styler truncate under the notebooks'
display options, and bounded_table shows its head with "showing N of M rows"; the 06 error map
draws a sample and says so (docs/decisions/report_size.md)."""

import numpy as np
import pandas as pd
import pytest

from geopak_lib.book.figures import error_map
from geopak_lib.book.report import MAP_MAX_POINTS, ShowMap, setup_notebook
from geopak_lib.book.tables import TABLE_MAX_ROWS, bounded_table
from geopak_lib.constants import PROVINCES

N = 100_000


@pytest.fixture(scope="module")
def frame():
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"id": [f"img{i:06d}" for i in range(N)], "latitude": rng.uniform(25, 35, N),
                       "longitude": rng.uniform(62, 75, N), "province": rng.choice(PROVINCES, N),
                       "error_km": rng.gamma(2.0, 40.0, N)})
    df.loc[3, "id"] = "<b>x</b>"  # a dataset string stays text
    return df


@pytest.fixture
def options():
    with pd.option_context("display.max_rows", 60):  # restored after the test
        with pd.option_context("display.min_rows", 10, "styler.render.max_rows", None,
                               "display.show_dimensions", "truncate", "display.max_colwidth", 50,
                               "display.precision", 6):
            setup_notebook()
            yield


def test_dataframe_and_styler_html_is_bounded(frame, options):
    html = frame._repr_html_()
    assert len(html) < 20_000, len(html)  # 20 rows of 5 columns, not 100,000
    assert "100000 rows × 5 columns" in html
    styled = frame.style._repr_html_()
    assert len(styled) < 200_000, len(styled)  # every row would be ~60 MB
    assert styled.count("<tr>") <= TABLE_MAX_ROWS + 2


def test_bounded_table_notes_what_it_leaves_out(frame):
    t = bounded_table(frame, max_rows=50, index=False)
    html = t._repr_html_()
    assert "showing 50 of 100,000 rows" in html
    assert html.count("<tr>") == 50 and html.count("<tr") == 51  # header + 50 rows
    assert "<b>x</b>" not in html and "&lt;b&gt;x&lt;/b&gt;" in html
    assert len(html) < 20_000
    small = bounded_table(frame.head(7))._repr_html_()
    assert "showing" not in small and small.count("<tr>") == 7
    assert "showing 80 of 100,000 rows" in bounded_table(frame.style)._repr_html_()  # a Styler's data


def test_error_map_samples_test_images(frame):
    page = ShowMap(error_map(frame.head(10_000))).page
    assert page.count("L.circleMarker(") == MAP_MAX_POINTS
    assert f"{MAP_MAX_POINTS:,} of 10,000 test images drawn" in page
    assert "<b>x</b>" not in page
    assert len(page.encode()) < 12 * 2**20
    few = ShowMap(error_map(frame.head(30))).page
    assert few.count("L.circleMarker(") == 30 and "All 30 test images drawn" in few
