"""A batch's predictions -> the predictor's result records, with one conversion per batch array
(``.tolist()`` of the whole array) and the per-row work left to plain Python over lists: the
hypotheses sorted best first for every row at once, the names of places as columns
(concepts.top_classes does the same for the concept heads). The predictor
(predictor.GeopakPredictor.results_from_outputs) adds what depends on its own state (calibration,
refinement, concepts, probes). Speed: docs/performance.md (2026-12-04)."""

from __future__ import annotations

import numpy as np

from geopak_lib.constants import PROVINCES

HYPOTHESIS_KEYS = ("hyp_province_id", "hyp_cell_id", "hyp_lat", "hyp_lon", "hyp_weight")


def hypothesis_lists(pred: dict) -> list[list[dict]]:
    """Each row's hypotheses as dicts (province, cell_id, lat, lon, weight), padding (cell id -1)
    left out, the largest weight first and ties in the row's own order (a stable sort; a NaN
    weight last). pred: the mixture keys hyp_* of (B, H) arrays."""
    cell = np.asarray(pred["hyp_cell_id"])
    valid = cell >= 0
    # sort by validity first, then by weight, largest first: np.lexsort is stable, like the row's own sort
    order = np.lexsort((-np.asarray(pred["hyp_weight"]), ~valid), axis=-1)
    cols = [np.take_along_axis(np.asarray(pred[k]), order, -1).tolist() for k in HYPOTHESIS_KEYS]
    counts = valid.sum(-1).tolist()
    return [[{"province": PROVINCES[pr], "cell_id": c, "lat": la, "lon": lo, "weight": w}
             for pr, c, la, lo, w in zip(*(col[i][:n] for col in cols))]
            for i, n in enumerate(counts)]


def place_columns(names) -> list[tuple]:
    """data.places.name_places' table -> one (place, district, place_province, place_km) per row;
    place_km None where no place is named (place "")."""
    place, district, province = (names[k].tolist() for k in ("place", "district", "province"))
    km = names["place_km"].tolist()
    return [(p, d, pr, None if p == "" else float(k)) for p, d, pr, k in zip(place, district, province, km)]
