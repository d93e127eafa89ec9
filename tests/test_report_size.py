"""The 00 and 01 maps stay small at the seed's scale: a synthetic 100k-row manifest, no images.

Each circle marker costs about 1 kB of report HTML, so drawing every row made 00's report 60 MB
at 30k images; the maps now draw a seeded sample and say so (docs/decisions/report_size.md).
"""

import numpy as np
import pandas as pd
import pytest

from geopak_lib.book.concept_report import concept_map
from geopak_lib.book.report import MAP_MAX_POINTS, ShowMap, cells_map, samples_map
from geopak_lib.constants import PROVINCES

N = 100_000
REPORT_BUDGET = 15 * 2**20  # one single-file report


@pytest.fixture(scope="module")
def manifest():
    rng = np.random.default_rng(0)
    df = pd.DataFrame({
        "id": [f"img{i:06d}" for i in range(N)],
        "latitude": rng.uniform(25.0, 35.5, N), "longitude": rng.uniform(62.0, 75.0, N),
        "province": rng.choice(PROVINCES, N), "split": rng.choice(["train", "val", "test"], N, p=[.8, .1, .1]),
        "block_id": rng.integers(0, 5000, N), "land_cover": rng.choice(["cropland", "desert", "urban"], N),
    })
    df["image"] = "images/" + df["id"] + ".jpg"
    df.loc[7, "id"] = '<script>alert("x")</script>'  # a hostile id must stay text
    return df


def _iframe_bytes(m) -> int:
    return len(ShowMap(m)._repr_html_().encode())


def test_00_maps_fit_a_report_at_100k_rows(manifest):
    maps = [samples_map(manifest, popup_cols=("id", "province", "image")),
            samples_map(manifest, group_col="split", popup_cols=("id", "province", "block_id")),
            concept_map(manifest, "land_cover", max_points=1500)]
    pages = [ShowMap(m).page for m in maps]
    for page in pages[:2]:
        assert page.count("L.circleMarker(") == MAP_MAX_POINTS
        assert f"{MAP_MAX_POINTS:,} of {N:,} samples drawn" in page
    assert pages[2].count("L.circleMarker(") == 1500
    assert '<script>alert("x")</script>' not in "".join(pages)
    total = sum(_iframe_bytes(m) for m in maps)
    print(f"00 maps: {total / 2**20:.2f} MB")
    assert total < REPORT_BUDGET * 0.8, f"00's maps alone are {total / 2**20:.1f} MB"


def test_01_cells_map_fits_a_report_at_100k_rows(manifest):
    rng = np.random.default_rng(1)
    n_cells = 3000
    cells = pd.DataFrame({"cell_id": np.arange(n_cells), "province": rng.choice(PROVINCES, n_cells),
                          "center_lat": rng.uniform(25, 35, n_cells), "center_lon": rng.uniform(62, 75, n_cells),
                          "radius_km": rng.uniform(1, 40, n_cells), "n_samples": rng.integers(5, 80, n_cells)})
    points = manifest.assign(cell_id=rng.integers(0, n_cells, N))
    m = cells_map(cells, points)
    page = ShowMap(m).page
    assert page.count("L.circleMarker(") == MAP_MAX_POINTS
    assert f"{MAP_MAX_POINTS:,} of {N:,} training samples drawn" in page
    print(f"01 map: {_iframe_bytes(m) / 2**20:.2f} MB")
    assert _iframe_bytes(m) < REPORT_BUDGET * 0.8


def test_small_tables_are_drawn_whole(manifest):
    page = ShowMap(samples_map(manifest.head(40))).page
    assert page.count("L.circleMarker(") == 40 and "All 40 samples drawn" in page
