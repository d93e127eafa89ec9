"""Mixture of hypotheses: weights on a hand case, skipped provinces, spherical averaging, predictors."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
from pyproj import Geod

from geopak_lib.geo import haversine_km
from geopak_lib.model.inference import (argmax_predict, aux_predict, build_hypotheses, combine_hypotheses,
                                  mixture_predict, predict_batch)
from geopak_lib.model.geopak import GeopakModel, ModelConfig


def make_cells():
    """Sindh (0) 4 cells, Punjab (1) 1 cell, Khyber Pakhtunkhwa (2) none."""
    return pd.DataFrame({
        "cell_id": [0, 1, 2, 3, 4], "province_id": [0, 0, 0, 0, 1],
        "center_lat": [24.9, 25.4, 26.0, 27.7, 31.5], "center_lon": [67.0, 68.4, 68.9, 68.8, 74.3],
        "radius_km": [10.0, 20.0, 30.0, 15.0, 25.0],
        "neighbor_cell_ids": [[1], [0, 2], [1, 3], [2], []]})


def tiny_model(cells=None):
    torch.manual_seed(0)
    cfg = ModelConfig(clip_dim=8, scene_dim=6, fused_dim=16, cell_emb_dim=4, prov_emb_dim=3, province_hidden=8,
                      cell_hidden=8, small_cell_hidden=8, offset_hidden=8, aux_hidden=8)
    return GeopakModel(cfg, make_cells() if cells is None else cells)


def hand_outputs(model, province_probs, sindh_probs):
    """Real forward for fused/aux, with chosen province and Sindh cell probabilities (batch of 1)."""
    out = model.forward_features(torch.randn(1, 8), torch.randn(1, 6))
    return dict(out, province_logits=torch.log(torch.tensor([province_probs])),
                geocell_logits={0: torch.log(torch.tensor([sindh_probs])), 1: torch.zeros(1, 1)})


PROV = [0.5, 0.25, 0.15, 0.04, 0.03, 0.02, 0.01]
SINDH = [0.1, 0.4, 0.3, 0.2]


def test_mixture_weights_by_hand():
    model = tiny_model()
    hyp = build_hypotheses(model, hand_outputs(model, PROV, SINDH), top_provinces=2, top_cells=2)
    # Sindh x its top-2 cells: 0.5*0.4 = 0.2 (cell 1), 0.5*0.3 = 0.15 (cell 2);
    # Punjab has one cell (P = 1): 0.25; one padding slot. Sum 0.6.
    assert hyp["cell_id"].tolist() == [[1, 2, 4, -1]]
    assert hyp["province_id"].tolist() == [[0, 0, 1, -1]]
    torch.testing.assert_close(hyp["weight"], torch.tensor([[0.2 / 0.6, 0.15 / 0.6, 0.25 / 0.6, 0.0]]))


def test_province_without_cells_is_skipped_for_the_next_one():
    model = tiny_model()
    prov = [0.4, 0.1, 0.3, 0.1, 0.05, 0.03, 0.02]  # KPK (no cells) is second: Punjab takes its slot
    hyp = build_hypotheses(model, hand_outputs(model, prov, SINDH), top_provinces=2, top_cells=5)
    assert hyp["cell_id"].shape == (1, 10)
    assert hyp["cell_id"][0].tolist() == [1, 2, 3, 0, -1, 4, -1, -1, -1, -1]
    w = torch.tensor([0.4 * 0.4, 0.4 * 0.3, 0.4 * 0.2, 0.4 * 0.1, 0, 0.1, 0, 0, 0, 0])
    torch.testing.assert_close(hyp["weight"][0], w / w.sum())
    # only one province has cells: its cells alone, padded to H = 10
    one = pd.DataFrame({"cell_id": [0, 1], "province_id": [5, 5], "center_lat": [28.0, 29.0],
                        "center_lon": [65.0, 66.0], "radius_km": [50.0, 40.0], "neighbor_cell_ids": [[1], [0]]})
    m1 = tiny_model(one)
    hyp = build_hypotheses(m1, m1.forward_features(torch.randn(3, 8), torch.randn(3, 6)))
    assert hyp["cell_id"].shape == (3, 10) and (hyp["cell_id"][:, 2:] == -1).all()
    torch.testing.assert_close(hyp["weight"].sum(1), torch.ones(3))


def test_temperature_flattens_province_probs():
    model = tiny_model()
    out = hand_outputs(model, PROV, SINDH)
    hot = build_hypotheses(model, out, temperature=1e6)["province_probs"]
    torch.testing.assert_close(hot, torch.full((1, 7), 1 / 7), atol=1e-5, rtol=0)


def test_combine_equal_weights_is_the_spherical_midpoint():
    lat, lon = torch.tensor([[30.0, 30.0]]), torch.tensor([[60.0, 80.0]])
    mid_lat, mid_lon = combine_hypotheses(lat, lon, torch.tensor([[0.5, 0.5]]))
    # by hand: by symmetry lon = 70; the sum of the unit vectors has z = 2 sin 30 and horizontal
    # length 2 cos 30 cos 10, so tan(lat) = tan 30 / cos 10 (30.38 N, not the naive 30.0)
    want_lat = math.degrees(math.atan(math.tan(math.radians(30)) / math.cos(math.radians(10))))
    assert abs(mid_lat.item() - want_lat) < 1e-4 and abs(mid_lon.item() - 70.0) < 1e-4
    assert abs(want_lat - 30.3822) < 1e-3
    # independent check: halfway along the great circle (pyproj on a sphere)
    g = Geod(a=6371008.8, b=6371008.8)
    az, _, dist = g.inv(60.0, 30.0, 80.0, 30.0)
    lon_g, lat_g, _ = g.fwd(60.0, 30.0, az, dist / 2)
    assert abs(mid_lat.item() - lat_g) < 1e-4 and abs(mid_lon.item() - lon_g) < 1e-4
    # (0, 0) and (0, 90): midpoint (0, 45); numpy works too
    la, lo = combine_hypotheses(np.array([0.0, 0.0]), np.array([0.0, 90.0]), np.array([1.0, 1.0]))
    assert abs(la) < 1e-9 and abs(lo - 45.0) < 1e-9


def test_combine_ignores_zero_weight_padding_and_follows_weights():
    lat = torch.tensor([[24.9, 31.5, float("nan")]])
    lon = torch.tensor([[67.0, 74.3, float("nan")]])
    la, lo = combine_hypotheses(lat, lon, torch.tensor([[1.0, 0.0, 0.0]]))
    assert abs(la.item() - 24.9) < 1e-4 and abs(lo.item() - 67.0) < 1e-4
    la, lo = combine_hypotheses(lat, lon, torch.tensor([[0.9, 0.1, 0.0]]))
    d1, d2 = haversine_km(la, lo, 24.9, 67.0).item(), haversine_km(la, lo, 31.5, 74.3).item()
    assert abs(d1 / (d1 + d2) - 0.1) < 1e-3  # on the great circle, a tenth of the way


def test_mixture_predict_on_hand_case():
    model = tiny_model()  # untrained offsets are 0: hypotheses are the cell centres
    pred = mixture_predict(model, hand_outputs(model, PROV, SINDH), top_provinces=2, top_cells=2)
    w = np.array([0.2, 0.15, 0.25]) / 0.6
    cl, cn = model.cell_lat[[1, 2, 4]].numpy(), model.cell_lon[[1, 2, 4]].numpy()
    v = np.stack([np.cos(np.radians(cl)) * np.cos(np.radians(cn)), np.cos(np.radians(cl)) * np.sin(np.radians(cn)),
                  np.sin(np.radians(cl))], 1)
    s = (w[:, None] * v).sum(0)
    want_lat, want_lon = np.degrees(np.arctan2(s[2], np.hypot(s[0], s[1]))), np.degrees(np.arctan2(s[1], s[0]))
    assert abs(pred["lat"].item() - want_lat) < 1e-4 and abs(pred["lon"].item() - want_lon) < 1e-4
    spread = sum(wi * haversine_km(a, b, want_lat, want_lon) for wi, a, b in zip(w, cl, cn))
    assert abs(pred["spread_km"].item() - spread) < 1e-2
    assert pred["province_id"].item() == 0 and abs(pred["confidence"].item() - 0.5) < 1e-6
    assert pred["hyp_cell_id"].tolist() == [[1, 2, 4, -1]] and torch.isnan(pred["hyp_lat"][0, 3])
    assert abs(pred["hyp_lat"][0, 2].item() - 31.5) < 1e-5


def test_argmax_and_aux_predictors():
    model = tiny_model()
    prov = [0.1, 0.2, 0.6, 0.04, 0.03, 0.02, 0.01]  # KPK has no cells: argmax among provinces with cells
    out = hand_outputs(model, prov, SINDH)
    arg = argmax_predict(model, out)
    assert arg["cell_id"].tolist() == [4] and arg["province_id"].tolist() == [1]
    assert abs(arg["lat"].item() - 31.5) < 1e-5 and abs(arg["lon"].item() - 74.3) < 1e-5
    aux = aux_predict(out)
    torch.testing.assert_close(torch.stack([aux["lat"], aux["lon"]], 1), out["aux_latlon"])


def test_predict_batch_returns_numpy_and_restores_mode():
    model = tiny_model()
    model.train()
    pred = predict_batch(model, torch.randn(5, 8), torch.randn(5, 6))
    assert model.training
    assert isinstance(pred["lat"], np.ndarray) and pred["lat"].shape == (5,)
    assert pred["hyp_weight"].shape == (5, 10) and pred["province_probs"].shape == (5, 7)
    np.testing.assert_allclose(pred["hyp_weight"].sum(1), 1.0, rtol=1e-5)
    for key in ("alpha", "argmax_lat", "aux_lon", "confidence", "spread_km"):
        assert pred[key].shape == (5,) and np.isfinite(pred[key]).all()
    # the final point lies among the hypotheses (within Pakistan's cells' span)
    assert ((pred["lat"] > 24.0) & (pred["lat"] < 32.0)).all()


def test_bad_top_k_raises():
    model = tiny_model()
    with pytest.raises(ValueError, match="top_provinces"):
        build_hypotheses(model, hand_outputs(model, PROV, SINDH), top_provinces=0)
