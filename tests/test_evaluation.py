"""Evaluation maths against hand-computed or independently computed values, the calibration fits on
synthetic data, and the report's maps and figures rendering offline."""

import re

import matplotlib
import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from geopak_lib.book import figures as eval_plots
from geopak_lib.analysis import frame as evaluation
from geopak_lib.analysis import calibration_fit, regions
from geopak_lib.analysis import explain
from geopak_lib.analysis.baselines import province_centroids
from geopak_lib.book import provenance
from geopak_lib.data import places
from geopak_lib.model.geopak import GeopakModel, ModelConfig
from geopak_lib.book.report import external_references, map_html

matplotlib.use("Agg")  # tests only: no display

CELLS = pd.DataFrame({"cell_id": [0, 1, 2], "province_id": [0, 0, 1], "center_lat": [25.0, 26.0, 31.5],
                      "center_lon": [68.0, 68.0, 74.3], "radius_km": [30.0, 20.0, 25.0],
                      "neighbor_cell_ids": [[1], [0], []], "province": ["Sindh", "Sindh", "Punjab"]})


def tiny_model():
    torch.manual_seed(0)
    cfg = ModelConfig(clip_dim=3, scene_dim=3, fused_dim=4, province_hidden=4, cell_hidden=4, small_cell_hidden=4,
                      offset_hidden=4, aux_hidden=4, cell_emb_dim=2, prov_emb_dim=2)
    return GeopakModel(cfg, CELLS).eval()


def hand_outputs(province_probs, cell_probs):
    """Outputs with the given probabilities (log-probs as logits): province (B, 7), cells (B, 3)."""
    lp = torch.log(torch.tensor(province_probs, dtype=torch.float32).clamp_min(1e-12))
    cp = torch.tensor(cell_probs, dtype=torch.float32)
    b = len(lp)
    return {"province_logits": lp, "geocell_logits": {0: torch.log(cp[:, :2]), 1: torch.log(cp[:, 2:])},
            "fused": torch.zeros(b, 4), "alpha": torch.full((b,), 0.5), "aux_latlon": torch.tensor([[30.0, 70.0]] * b)}


def test_temperature_scaling_recovers_a_known_temperature():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 2.0, (6000, 7))
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    labels = np.array([rng.choice(7, p=row) for row in p])  # labels drawn from softmax(z): calibrated at T = 1
    logits = 2.5 * z  # an over-confident model: the right temperature is 2.5
    rep = calibration_fit.temperature_calibration(logits[:3000], labels[:3000], logits[3000:], labels[3000:])
    assert rep["temperature"] == pytest.approx(2.5, rel=0.08)
    assert rep["ece_after"] < 0.03 < rep["ece_before"] and rep["nll_after"] < rep["nll_before"]
    assert rep["bins_before"]["n"].sum() == 3000


def test_radius_scale_gives_the_stated_coverage_on_new_data():
    rng = np.random.default_rng(1)
    spread = rng.uniform(5, 200, 8000)
    err = (spread + 1.0) * np.abs(rng.normal(size=8000))  # error / (spread + 1) is half-normal
    scales, table = calibration_fit.radius_calibration(spread[:4000], err[:4000], spread[4000:], err[4000:])
    for c in (0.5, 0.8, 0.95):  # the half-normal quantile, from scipy
        assert scales[str(c)] == pytest.approx(stats.halfnorm.ppf(c), rel=0.05)
        assert table.loc[c, "test coverage"] == pytest.approx(c, abs=0.02)
        assert table.loc[c, "val coverage"] >= c


def test_cell_ranking_and_predictions_frame_by_hand():
    model = tiny_model()
    prov = [[0.7, 0.3, 0, 0, 0, 0, 0], [0.2, 0.8, 0, 0, 0, 0, 0]]
    out = hand_outputs(prov, [[0.4, 0.6, 1.0], [0.9, 0.1, 1.0]])
    # joint P(p) P(c|p): row 0 = [0.28, 0.42, 0.30], row 1 = [0.18, 0.02, 0.80]
    assert evaluation.cell_ranking(model, out, 3).tolist() == [[1, 2, 0], [2, 0, 1]]
    rows = pd.DataFrame({"id": ["a", "b"], "image_path": ["x", "y"], "province": ["Sindh", "Sindh"],
                         "province_id": [0, 0], "cell_id": [1, 0], "latitude": [26.0, 25.0], "longitude": [68.0, 68.0]})
    train = pd.DataFrame({"province_id": [0, 0, 1], "latitude": [24.0, 26.0, 31.0], "longitude": [68.0, 68.0, 74.0]})
    f = evaluation.predictions_frame(model, out, rows, train)
    assert f["province_pred"].tolist() == [0, 1] and f["confidence"].tolist() == pytest.approx([0.7, 0.8])
    assert f["cell_pred"].tolist() == [1, 2] and f["cell_in_top5"].all()
    # offsets of an untrained head are zero: true cell = its centre, exactly the truth here
    assert f["true_cell_error_km"].tolist() == pytest.approx([0.0, 0.0], abs=1e-3)
    # row 1 predicted Punjab: its province centroid is Punjab's only training sample
    assert (f.loc[1, "province_centroid_lat"], f.loc[1, "province_centroid_lon"]) == pytest.approx((31.0, 74.0))
    # mixture of row 0 (hypotheses: cells 1, 0 of Sindh and 2 of Punjab): weights 0.42, 0.28, 0.30
    w = np.array([0.42, 0.28, 0.30])
    lat, lon = np.radians([26.0, 25.0, 31.5]), np.radians([68.0, 68.0, 74.3])
    v = (w[:, None] * np.stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)], 1)).sum(0)
    assert f.loc[0, "mixture_lat"] == pytest.approx(np.degrees(np.arcsin(v[2] / np.linalg.norm(v))), abs=1e-4)
    # within the TRUE province (Sindh) row 1's mixture uses cells 0, 1 with weights 0.9, 0.1
    assert f.loc[1, "true_province_lat"] == pytest.approx(25.1, abs=0.01)
    assert f["error_km"].equals(f["mixture_error_km"])


def test_headline_by_hand():
    f = pd.DataFrame({"error_km": [0.5, 4.0, 30.0, 300.0], "province_pred": [0, 0, 1, 1], "province_id": [0, 1, 1, 1],
                      "cell_pred": [3, 4, 5, 6], "cell_id": [3, 9, 5, -1], "cell_in_top5": [True, True, False, False]})
    h = evaluation.headline(f)
    assert h["median_km"] == pytest.approx(17.0) and h["p90_km"] == pytest.approx(219.0)
    assert (h["acc_1km"], h["acc_5km"], h["acc_25km"], h["acc_750km"]) == (0.25, 0.5, 0.5, 1.0)
    assert h["province_acc"] == 0.75
    assert h["cell_top1_acc"] == pytest.approx(2 / 3) and h["cell_top5_acc"] == pytest.approx(2 / 3)  # cell -1 left out


def test_province_centroids_and_method_table():
    c = province_centroids([0.0, 0.0], [10.0, 20.0], [0, 0])
    assert c[0] == pytest.approx([0.0, 15.0]) and c[3] == pytest.approx([0.0, 15.0])  # no samples: overall
    f = pd.DataFrame({"a_error_km": [10.0, 30.0], "b_error_km": [1.0, 2.0]})
    base = pd.DataFrame({"method": ["train_centroid", "knn"], "median_km": [900.0, 5.0], "n": [2, 2]})
    t = evaluation.method_table(f, {"a": "A", "b": "B"}, baselines=base)
    assert t.index.tolist() == ["B", "baseline: kNN on frozen features", "A"]  # sorted; our own centroid kept
    assert t.loc["A", "median_km"] == 20.0


def test_method_table_intervals_are_paired_with_the_mixture_and_baselines_align_by_id():
    """Every row on the test images gets its median's block-bootstrap interval and the paired
    interval of its difference from the mixture. A method that is the mixture minus 5 km on every
    image differs by exactly -5 km in every resample; a baseline read in another row order is
    matched by id (+3 km on every image); a row on other images (multi-view places) gets none."""
    rng = np.random.default_rng(0)
    mix = rng.uniform(10, 500, 60)
    f = pd.DataFrame({"id": [f"i{k}" for k in range(60)], "block_id": np.repeat(np.arange(12), 5),
                      "mixture_error_km": mix, "better_error_km": mix - 5.0, "flat_error_km": np.full(60, 7.0)})
    base = pd.DataFrame({"id": f["id"], "knn_error_km": mix + 3.0, "province_centroid_error_km": mix + 1.0,
                         "train_centroid_error_km": mix}).iloc[::-1]
    t = evaluation.method_table(f, {"mixture": "M", "better": "B", "flat": "F"}, baselines=base,
                                extra={"other places": pd.Series([1.0, 2.0, 3.0])})
    assert t.loc["M", ["Δ median vs mixture km", "Δ 95% lo", "Δ 95% hi"]].tolist() == [0.0, 0.0, 0.0]
    assert t.loc["B", ["Δ median vs mixture km", "Δ 95% lo", "Δ 95% hi"]].tolist() == pytest.approx([-5.0] * 3)
    assert t.loc["F", ["median 95% lo", "median 95% hi"]].tolist() == [7.0, 7.0]
    lo, hi = t.loc["M", ["median 95% lo", "median 95% hi"]]
    assert lo < np.median(mix) < hi
    knn = t.loc["baseline: kNN on frozen features"]
    assert knn["median_km"] == pytest.approx(np.median(mix) + 3.0) and knn["Δ 95% lo"] == pytest.approx(3.0)
    assert "baseline: training-set centroid" not in t.index  # computed from the frame already
    assert np.isnan(t.loc["other places", "median 95% lo"])


def test_nearest_town_and_urban_rural():
    towns = pd.DataFrame({"name": ["T0", "T1"], "latitude": [0.0, 0.0], "longitude": [0.0, 1.0]})
    name, d = places.nearest_town([0.0, 0.0], [0.05, 0.8], towns)
    assert name.tolist() == ["T0", "T1"]
    assert d == pytest.approx([0.05 * 111.195, 0.2 * 111.195], rel=1e-3)  # 1 degree of equator = 111.195 km
    u = regions.urban_rural([24.86, 28.0], [67.01, 64.0])  # central Karachi; the empty west of Balochistan
    assert u["setting"].tolist() == ["urban", "rural"] and u.loc[0, "town_km"] < 10


def test_git_commit_and_manifest(tmp_path, monkeypatch):
    assert re.fullmatch(r"[0-9a-f]{12}( \(\+ uncommitted changes\))?", provenance.git_commit())
    monkeypatch.chdir(tmp_path)
    assert provenance.git_commit() == "unknown"
    manifest = pd.DataFrame({"id": ["a", "b"], "image_path": ["a", "b"], "split": ["train", "test"]})
    enc = {"clip_encoder": {"spec": "open_clip:X:none", "weight_status": "random", "is_random": True},
           "scene_encoder": {"spec": "timm:y", "weight_status": "package", "is_random": False}}
    md = provenance.run_manifest("runs/x", manifest, "c.pt", {"phase": 2, "epoch": 3, "encoders": enc})
    assert "Random weights" in md and "open_clip:X:none" in md and "train 1, val 0 for choices + 0 for calibration, test 1" in md


def test_occlusion_by_hand():
    img = torch.full((3, 4, 4), 200, dtype=torch.uint8)
    views = explain.occluded_views(img, 2)
    assert views.shape == (4, 3, 4, 4)
    assert (views[0, :, :2, :2] == explain.GREY).all() and (views[0, :, 2:, :] == 200).all()
    assert (views[3, :, 2:, 2:] == explain.GREY).all() and (views[3, :, :2, :] == 200).all()

    class Stub:  # province 0's logit is the brightness of the bottom-right quarter
        def forward_images(self, x, tta=None):
            q = x[:, :, 2:, 2:].float().mean((1, 2, 3)) / 50
            return {"province_logits": torch.stack([q] + [torch.zeros_like(q)] * 6, 1)}

    m = explain.occlusion_map(Stub(), img, 2)
    assert m["province"] == "Sindh" and m["heat"].argmax() == 3 and m["heat"][0, 0] == pytest.approx(0.0)


def test_maps_and_figures_render_offline():
    f = pd.DataFrame({"id": ["a", "b"], "province": ["Sindh", "Punjab"], "province_pred": [0, 0], "cell_id": [0, 2],
                      "latitude": [25.0, 31.4], "longitude": [68.0, 74.2], "mixture_lat": [25.2, 25.0],
                      "mixture_lon": [68.1, 68.0], "error_km": [24.0, 800.0]})
    result = {"lat": 25.5, "lon": 68.2, "radius_km": 40.0, "radius_calibrated": True,
              "hypotheses": [{"province": "Sindh", "cell_id": 0, "lat": 25.0, "lon": 68.0, "weight": 0.7},
                             {"province": "Punjab", "cell_id": 2, "lat": 31.5, "lon": 74.3, "weight": 0.3}]}
    maps = [eval_plots.error_map(f), eval_plots.worst_map(f, 2), eval_plots.cell_error_map(f, CELLS),
            eval_plots.hypotheses_map(result, truth=(25.0, 68.0))]
    for m in maps:
        page = map_html(m)
        assert external_references(page) == [] and "L.map(" in page
    assert "HeatLayer" in map_html(maps[3]) or "heatLayer" in map_html(maps[3])
    assert eval_plots.error_color(24.0) == "#1a9850" and eval_plots.error_color(800.0) == "#d73027"
    bins = pd.DataFrame({"n": [2, 0], "confidence": [0.3, np.nan], "accuracy": [0.5, np.nan]})
    for fig in (eval_plots.error_cdf({"a": [1.0, 10.0]}), eval_plots.confusion_plot([0, 1], [0, 0]),
                eval_plots.reliability_plot(bins, bins, 1.5, (0.1, 0.05))):
        assert fig.axes
