"""The predictor's per-batch record building (inference/records.py, concepts.top_classes, the array
form of data.places.name_places) against plain row-by-row references written here: the way the
records were built before they were done once per batch. Random inputs with ties, padding and
points outside Pakistan; then whole records of the tiny predictor, plain, calibrated, with concept
heads and with TTA."""

import numpy as np
import pandas as pd
import pytest
import torch

from geopak_lib.constants import PROVINCES
from geopak_lib.data import places
from geopak_lib.geo import farthest_in_pakistan_km, locate_province
from geopak_lib.inference.calibration import RADIUS_COVERAGE, RADIUS_FLOOR_KM, save_calibration
from geopak_lib.inference.concepts import top_classes
from geopak_lib.inference.ensemble import mixture
from geopak_lib.inference.predictor import GeopakPredictor
from geopak_lib.inference.records import hypothesis_lists, place_columns
from geopak_lib.model.inference import outputs_to

from tiny_predictor import CONCEPTS
from tiny_predictor import write_images


# --- references: one row at a time ------------------------------------------------------------

def ref_hypotheses(pred, i):
    valid = pred["hyp_cell_id"][i] >= 0
    order = np.argsort(-pred["hyp_weight"][i][valid], kind="stable")
    cols = [pred[k][i][valid][order] for k in ("hyp_province_id", "hyp_cell_id", "hyp_lat", "hyp_lon", "hyp_weight")]
    return [{"province": PROVINCES[int(pr)], "cell_id": int(c), "lat": float(la), "lon": float(lo), "weight": float(w)}
            for pr, c, la, lo, w in zip(*cols)]


def ref_top_classes(p, classes, top):
    out = []
    for i in range(len(p)):
        order = np.argsort(-p[i], kind="stable")[:top]
        out.append([(classes[j], float(p[i, j])) for j in order])
    return out


def ref_name_places(lat, lon, max_km=places.PLACE_MAX_KM):
    lat, lon = np.atleast_1d(np.asarray(lat, float)), np.atleast_1d(np.asarray(lon, float))
    province = locate_province(lat, lon)
    out = pd.DataFrame({"place": "", "district": "", "province": np.where(province == None, "", province),  # noqa: E711
                        "place_km": np.nan})
    for name in PROVINCES:
        rows = np.flatnonzero(province == name)
        if rows.size == 0:
            continue
        (pl, pl_tree), (seats, seat_tree) = places._province_index("places", name), places._province_index("seats", name)
        i, km = places._nearest(lat[rows], lon[rows], pl_tree)
        near = km <= max_km
        rows, i, km = rows[near], i[near], km[near]
        out.loc[rows, "place"] = pl["name"].to_numpy()[i]
        out.loc[rows, "place_km"] = km
        out.loc[rows, "district"] = seats["district"].to_numpy()[places._nearest(lat[rows], lon[rows], seat_tree)[0]]
    return out


@torch.no_grad()
def ref_results(predictor, outputs):
    """results_from_outputs one row at a time (no refinement, no probes)."""
    out = outputs_to(outputs, predictor.device)
    pred = {k: v.cpu().numpy() for k, v in mixture(predictor.model, out, top_provinces=predictor.top_provinces,
                                                   top_cells=predictor.top_cells).items()}
    cal = predictor.calibration_block()
    temperature = cal.temperature if cal is not None else 1.0
    probs = torch.softmax(out["province_logits"] / temperature, -1).cpu().numpy()
    names = ref_name_places(pred["lat"], pred["lon"])
    logits = out.get("concept_logits") or {}
    classes = predictor.model.config.concept_classes
    cprobs = {k: torch.softmax(v.float(), -1).numpy() for k, v in logits.items()}
    farthest = farthest_in_pakistan_km(pred["lat"], pred["lon"])
    results = []
    for i in range(len(probs)):
        concepts = {k: ref_top_classes(p[i:i + 1], classes[k], 3)[0] for k, p in cprobs.items()}
        spread, province = float(pred["spread_km"][i]), int(probs[i].argmax())
        radii = {} if cal is None else {c: min(cal.radius_km(spread, province, c), float(farthest[i]))
                                        for c in cal.radius_scales}
        key = str(RADIUS_COVERAGE)
        results.append({
            "province": PROVINCES[int(probs[i].argmax())], "province_id": int(probs[i].argmax()),
            "lat": float(pred["lat"][i]), "lon": float(pred["lon"][i]), "confidence": float(probs[i].max()),
            "radius_km": radii.get(key, min(spread + RADIUS_FLOOR_KM, float(farthest[i]))),
            "radius_calibrated": key in radii, "radius_coverage": RADIUS_COVERAGE if key in radii else None,
            "radii_km": radii, "spread_km": spread, "temperature": temperature,
            "province_probs": {p: float(v) for p, v in zip(PROVINCES, probs[i])},
            "place": names.at[i, "place"], "district": names.at[i, "district"],
            "place_province": names.at[i, "province"],
            "place_km": None if names.at[i, "place"] == "" else float(names.at[i, "place_km"]),
            "alpha": float(out["alpha"][i]), "refined": False, "hypotheses": ref_hypotheses(pred, i),
            "concepts": concepts, "probes": [],
            **{f"{k}{suffix}": v[0][j] for k, v in concepts.items() for j, suffix in ((0, ""), (1, "_p"))}})
    return results


# --- the batch functions against them ----------------------------------------------------------

def random_pred(rng, b=40, h=10):
    cell = rng.integers(0, 30, (b, h))
    cell[rng.random((b, h)) < 0.25] = -1  # padding anywhere in a row
    cell[0] = -1  # a row with no hypothesis at all
    weight = rng.choice([0.0, 0.05, 0.1, 0.1, 0.2, 0.5], (b, h)).astype(np.float32)  # many ties, zeros
    weight[3, :4] = np.nan  # a NaN weight sorts last
    return {"hyp_cell_id": cell, "hyp_province_id": np.where(cell >= 0, rng.integers(0, 7, (b, h)), -1),
            "hyp_lat": np.where(cell >= 0, rng.uniform(24, 37, (b, h)), np.nan).astype(np.float32),
            "hyp_lon": np.where(cell >= 0, rng.uniform(61, 77, (b, h)), np.nan).astype(np.float32),
            "hyp_weight": np.where(cell >= 0, weight, 0.0).astype(np.float32)}


def same(a, b):
    """Equal records: floats equal or both NaN."""
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and np.isnan(a):
        return isinstance(b, float) and np.isnan(b)
    return type(a) is type(b) and a == b


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hypothesis_lists_sort_like_each_row_alone(seed):
    pred = random_pred(np.random.default_rng(seed))
    got = hypothesis_lists(pred)
    assert got[0] == [] and any(len(r) > 1 for r in got)
    assert [same(g, ref_hypotheses(pred, i)) for i, g in enumerate(got)] == [True] * len(got)
    pred["hyp_weight"][5, 1] += 0.01  # the check can fail: the order of row 5 changes
    assert same(hypothesis_lists(pred), [ref_hypotheses(pred, i) for i in range(len(got))])


def test_top_classes_sort_like_each_row_alone():
    rng = np.random.default_rng(3)
    p = rng.choice([0.1, 0.2, 0.3], (50, 6)).astype(np.float32)  # ties everywhere
    classes = [f"class {j}" for j in range(6)]
    for top in (1, 3, 6, 9):
        assert same(top_classes(p, classes, top), ref_top_classes(p, classes, top))


def test_name_places_columns_match_the_row_by_row_table():
    rng = np.random.default_rng(4)
    lat, lon = rng.uniform(22, 38, 300), rng.uniform(59, 79, 300)  # inside and outside Pakistan
    lat[:3], lon[:3] = [24.86, 31.63, 33.70], [67.0, 74.87, 73.05]  # Karachi, Amritsar (India), Islamabad
    for max_km in (places.PLACE_MAX_KM, 5.0):
        got, ref = places.name_places(lat, lon, max_km), ref_name_places(lat, lon, max_km)
        pd.testing.assert_frame_equal(got, ref)
        assert (got["place"] != "").sum() > 0 and (got["province"] == "").sum() > 0
        assert place_columns(got) == [(p, d, pr, None if p == "" else float(k)) for p, d, pr, k in
                                      zip(ref["place"], ref["district"], ref["province"], ref["place_km"])]
    pd.testing.assert_frame_equal(places.name_places([], []), ref_name_places([], []))


# --- whole records of the tiny predictor ----------------------------------------------------------

def check_records(predictor, folder):
    paths = [folder / "a.jpg", folder / "sub" / "b.PNG", folder / "sub" / "deeper" / "c.webp"] * 3
    outputs, ok, errors = predictor.raw_outputs(paths, batch_size=4, progress=False)
    assert not errors and len(ok) == len(paths)
    ref = ref_results(predictor, outputs)
    assert same(predictor.results_from_outputs(outputs), ref)
    records = predictor.predict_many(paths, batch_size=4, progress=False)
    assert same([{k: v for k, v in r.items() if k not in ("image", "error")} for r in records], ref)
    return ref


def test_records_equal_the_row_by_row_ones(ckpt, tmp_path):
    path, _ = ckpt
    write_images(tmp_path / "img")
    plain = check_records(GeopakPredictor.from_checkpoint(path, device="cpu"), tmp_path / "img")
    assert any(len(r["hypotheses"]) > 1 for r in plain)
    check_records(GeopakPredictor.from_checkpoint(path, device="cpu", tta=True), tmp_path / "img")
    save_calibration(path, {"temperature": 1.7, "radius_scales": {"0.5": 2.0, "0.8": 3.0},
                            "radius_scales_by_province": {"0.8": {"0": 4.0}}})
    cal = check_records(GeopakPredictor.from_checkpoint(path, device="cpu"), tmp_path / "img")
    assert all(r["radius_calibrated"] for r in cal) and cal[0]["temperature"] == 1.7


def test_records_with_concept_heads_equal_the_row_by_row_ones(concept_ckpt, tmp_path):
    path, _ = concept_ckpt
    write_images(tmp_path / "img")
    ref = check_records(GeopakPredictor.from_checkpoint(path, device="cpu"), tmp_path / "img")
    assert set(ref[0]["concepts"]) == set(CONCEPTS) and "land_cover_p" in ref[0]
