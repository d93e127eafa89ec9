"""Losses: effective-number weights, distance-smoothed targets, KL routing, offset/aux terms, ramp-up."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from geopak_lib.model.losses import (AuxLoss, GeocellLoss, GeopakLoss, OffsetLoss, ProvinceLoss, effective_number_weights,
                               offset_rampup, province_count_vector, smoothed_cell_targets)
from geopak_lib.geo import haversine_km
from geopak_lib.model.geopak import AUX_CENTER_DEG, GeopakModel, ModelConfig

KM_PER_DEG_LAT = math.pi * 6371.0088 / 180
E1 = math.exp(-1.0)


def make_cells():
    """Sindh: 3 cells on the 67E meridian, 30 km apart (chain 0-1-2); Punjab: 2 cells; then AJK: 1 cell.

    Neighbour lists mix formats: a JSON string (as read back from CSV) and a cross-province id,
    which must be ignored.
    """
    d = 30.0 / KM_PER_DEG_LAT
    return pd.DataFrame({
        "cell_id": [0, 1, 2, 3, 4, 5], "province_id": [0, 0, 0, 1, 1, 6],
        "center_lat": [25.0, 25.0 + d, 25.0 + 2 * d, 31.0, 31.0 + 60.0 / KM_PER_DEG_LAT, 34.0],
        "center_lon": [67.0, 67.0, 67.0, 74.0, 74.0, 73.5],
        "radius_km": [10.0, 10.0, 10.0, 20.0, 20.0, 15.0],
        "neighbor_cell_ids": [[1], "[0, 2]", [1, 3], [4], [3], []]})


def tiny_model(cells=None, seed=0):
    torch.manual_seed(seed)
    cfg = ModelConfig(clip_dim=8, scene_dim=6, fused_dim=16, cell_emb_dim=4, prov_emb_dim=3, province_hidden=8,
                      cell_hidden=8, small_cell_hidden=8, offset_hidden=8, aux_hidden=8)
    return GeopakModel(cfg, make_cells() if cells is None else cells)


def test_effective_number_weights_by_hand():
    # beta = 0.5: E = (1 - 0.5^n) / 0.5 = 1, 1.5, 1.875 for n = 1, 2, 4; w = 1, 2/3, 8/15, mean 11/15
    np.testing.assert_allclose(effective_number_weights([1, 2, 4], 0.5), [15 / 11, 10 / 11, 8 / 11])
    # an empty class gets 0 and leaves the others unchanged
    np.testing.assert_allclose(effective_number_weights([1, 0, 2, 4], 0.5), [15 / 11, 0, 10 / 11, 8 / 11])
    # beta = 1 is inverse frequency: 1, 1/2, 1/4 over mean 7/12; beta = 0 weights every class alike
    np.testing.assert_allclose(effective_number_weights([1, 2, 4], 1.0), [12 / 7, 6 / 7, 3 / 7])
    np.testing.assert_allclose(effective_number_weights([1, 2, 4], 0.0), [1, 1, 1])
    w = effective_number_weights([89252, 297])  # default beta 0.9995: the rare class is weighted up
    assert w[1] > w[0] and math.isclose(w.mean(), 1.0)
    with pytest.raises(ValueError):
        effective_number_weights([1, -1])
    with pytest.raises(ValueError):
        effective_number_weights([1, 2], beta=1.5)


def test_province_count_vector():
    v = province_count_vector({"Sindh": 5, "Azad Kashmir": 2, 1: 3})
    np.testing.assert_array_equal(v, [5, 3, 0, 0, 0, 0, 2])
    with pytest.raises(KeyError, match="Sind"):
        province_count_vector({"Sind": 5})
    with pytest.raises(ValueError, match="7 entries"):
        province_count_vector([1, 2, 3])


def test_smoothed_targets_three_cells_by_hand():
    targets = smoothed_cell_targets(make_cells())
    assert set(targets) == {0, 1, 6}
    # Sindh tau = 30 km, cells 30 km apart; 0 and 2 are not neighbours
    a, b = 1 / (1 + E1), E1 / (1 + E1)  # 0.7310586, 0.2689414
    c, m = E1 / (1 + 2 * E1), 1 / (1 + 2 * E1)  # 0.2119416, 0.5761169
    want = [[a, b, 0], [c, m, c], [0, b, a]]  # row 2: its neighbour 3 is in Punjab, ignored
    torch.testing.assert_close(targets[0], torch.tensor(want), atol=1e-5, rtol=0)
    assert abs(a - 0.7310586) < 1e-6 and abs(c - 0.2119416) < 1e-6
    # Punjab tau = 60 km, cells 60 km apart: e^-1 off the diagonal
    torch.testing.assert_close(targets[1], torch.tensor([[a, b], [b, a]]), atol=1e-5, rtol=0)
    torch.testing.assert_close(targets[6], torch.tensor([[1.0]]))  # a one-cell province


def test_geocell_kl_by_hand():
    loss = GeocellLoss(make_cells())
    logits = {0: torch.zeros(1, 3), 1: torch.zeros(1, 2), 6: torch.zeros(1, 1)}
    out = loss(logits, torch.tensor([0]), torch.tensor([0]))["geocell"]
    # KL(y || uniform of 3) = a ln a + b ln b + ln 3 with a = 0.7310586, b = 0.2689414
    assert abs(out.item() - 0.5164088) < 1e-5
    # one-cell province: the only target is the only class, KL = 0
    assert abs(loss(logits, torch.tensor([6]), torch.tensor([5]))["geocell"].item()) < 1e-6


def test_geocell_loss_skips_samples_without_cell_and_checks_province():
    loss = GeocellLoss(make_cells())
    g = torch.Generator().manual_seed(0)
    logits = {0: torch.randn(3, 3, generator=g), 1: torch.randn(3, 2, generator=g), 6: torch.randn(3, 1, generator=g)}
    full = loss(logits, torch.tensor([0, 1, 0]), torch.tensor([2, 3, -1]))["geocell"]
    two = loss({k: v[:2] for k, v in logits.items()}, torch.tensor([0, 1]), torch.tensor([2, 3]))["geocell"]
    torch.testing.assert_close(full, two)
    none = loss(logits, torch.tensor([0, 1, 2]), torch.tensor([-1, -1, -1]))["geocell"]
    assert none.item() == 0.0
    with pytest.raises(ValueError, match="another province"):
        loss(logits, torch.tensor([1, 1, 0]), torch.tensor([2, 3, 0]))


def test_geocell_loss_only_trains_ground_truth_head():
    model = tiny_model()
    out = model.forward_features(torch.randn(4, 8), torch.randn(4, 6))
    GeocellLoss(make_cells())(out["geocell_logits"], torch.zeros(4, dtype=torch.long),
                              torch.tensor([0, 1, 2, 0]))["geocell"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.geocell_heads["0"].parameters())
    for key in ("1", "6"):
        assert all(p.grad is None for p in model.geocell_heads[key].parameters())


def test_total_loss_on_sindh_only_batch_leaves_punjab_head_untouched():
    model = tiny_model()
    out = model.forward_features(torch.randn(4, 8), torch.randn(4, 6))
    loss = GeopakLoss(make_cells(), {"Sindh": 100, "Punjab": 50, "Azad Kashmir": 5})
    terms = loss(model, out, torch.zeros(4, dtype=torch.long), torch.tensor([0, 1, 2, 0]),
                 torch.full((4,), 25.1), torch.full((4,), 67.1), epoch=3)
    terms["total"].backward()
    for key in ("1", "6"):  # Punjab's head is among the hypotheses, but p_i carries no gradient
        assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.geocell_heads[key].parameters())
    assert all(p.grad is not None for p in model.offset_head.parameters())


def test_province_loss_weighted_mean_by_hand():
    w = torch.tensor([2.0, 0.5, 1, 1, 1, 1, 1])
    logits = torch.zeros(2, 7)
    logits[1, :] = math.log(6)  # sample B: six other classes at ln 6 ...
    logits[1, 1] = math.log(36)  # ... true class at ln 36: p(true) = 36 / (36 + 6 * 6) = 1/2
    out = ProvinceLoss(w)(logits, torch.tensor([0, 1]))["province"]
    want = (2.0 * math.log(7) + 0.5 * math.log(2)) / (2.0 + 0.5)  # PyTorch's weighted mean
    assert abs(out.item() - want) < 1e-5


def test_offset_loss_true_cell_and_mixture_by_hand():
    cells = make_cells()
    model = tiny_model(cells)  # untrained: offsets are 0, hypotheses sit on cell centres
    out = model.forward_features(torch.randn(1, 8), torch.randn(1, 6))
    lat, lon = torch.tensor([25.0 - 30.0 / KM_PER_DEG_LAT]), torch.tensor([67.0])  # 30 km south of cell 0
    true_cell = OffsetLoss(hypotheses="true_cell")(model, out, torch.tensor([0]), lat, lon)["offset"]
    assert abs(true_cell.item() - 0.30) < 1e-4  # 30 km / 100 km
    # mixture: P(Sindh) = 0.5, P(Punjab) = 0.25; Sindh cells 0.4, 0.35, 0.25; Punjab 0.6, 0.4; top 2 cells
    prov = torch.log(torch.tensor([[0.5, 0.25, 0.05, 0.05, 0.05, 0.05, 0.05]]))
    out = dict(out, province_logits=prov,
               geocell_logits={0: torch.log(torch.tensor([[0.4, 0.35, 0.25]])),
                               1: torch.log(torch.tensor([[0.6, 0.4]])), 6: torch.zeros(1, 1)})
    # hypotheses: cell 0 (0.2), cell 1 (0.175), cell 3 (0.15), cell 4 (0.1); total 0.625
    assert model.hypotheses(out, 2, 2)["cell_id"][0].tolist() == [0, 1, 3, 4]
    mix = OffsetLoss(top_provinces=2, top_cells=2)(model, out, torch.tensor([0]), lat, lon)["offset"]
    dist = [30.0, 60.0, haversine_km(31.0, 74.0, lat.item(), 67.0),
            haversine_km(cells.center_lat[4], 74.0, lat.item(), 67.0)]
    want = (0.2 * dist[0] + 0.175 * dist[1] + 0.15 * dist[2] + 0.1 * dist[3]) / 0.625 / 100
    assert abs(mix.item() - want) < 1e-4


def test_offset_loss_does_not_reach_classifiers():
    model = tiny_model()
    out = model.forward_features(torch.randn(3, 8), torch.randn(3, 6))
    OffsetLoss()(model, out, torch.tensor([0, 3, 5]), torch.tensor([25.0, 31.0, 34.0]),
                 torch.tensor([67.0, 74.0, 73.5]))["offset"].backward()
    assert all(p.grad is None for p in model.province_head.parameters())
    assert all(p.grad is None for h in model.geocell_heads.values() for p in h.parameters())
    assert model.offset_head.out[-1].weight.grad.abs().sum() > 0


def test_aux_loss_by_hand():
    aux = torch.tensor([AUX_CENTER_DEG])
    lat = torch.tensor([AUX_CENTER_DEG[0] + 50.0 / KM_PER_DEG_LAT])
    out = AuxLoss(km_scale=100.0)(aux, lat, torch.tensor([AUX_CENTER_DEG[1]]))["aux"]
    assert abs(out.item() - 0.5) < 1e-4  # 50 km north, in units of 100 km


def test_rampup_values():
    assert [offset_rampup(e) for e in range(1, 8)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0, 1.0, 1.0])
    assert offset_rampup(3, rampup_epochs=0) == 1.0
    with pytest.raises(ValueError):
        offset_rampup(-1)


def test_total_combines_terms_with_spec_weights_and_rampup():
    model = tiny_model()
    out = model.forward_features(torch.randn(4, 8), torch.randn(4, 6))
    loss = GeopakLoss(make_cells(), [100, 50, 0, 0, 0, 0, 5])
    args = (model, out, torch.tensor([0, 1, 6, 0]), torch.tensor([0, 3, 5, 2]),
            torch.tensor([25.0, 31.0, 34.0, 25.5]), torch.tensor([67.0, 74.0, 73.5, 67.2]))
    t1 = loss(*args, epoch=1)
    assert t1["offset_weight"].item() == pytest.approx(0.2)
    want = 0.5 * t1["province"] + t1["geocell"] + 0.2 * t1["offset"] + 0.1 * t1["aux"]
    torch.testing.assert_close(t1["total"], want)
    t9 = loss(*args, epoch=9)
    torch.testing.assert_close(t9["total"] - t1["total"], 0.8 * t1["offset"])
    assert set(t1) == {"total", "province", "geocell", "offset", "aux", "offset_weight"}
    with pytest.raises(KeyError, match="cell"):
        GeopakLoss(make_cells(), [1] * 7, weights={"cell": 1.0})


def test_neighbour_json_roundtrip_matches_lists():
    cells = make_cells()
    as_json = cells.assign(neighbor_cell_ids=[json.dumps(list(map(int, json.loads(v) if isinstance(v, str) else v)))
                                              for v in cells["neighbor_cell_ids"]])
    a, b = smoothed_cell_targets(cells), smoothed_cell_targets(as_json)
    assert all(torch.equal(a[k], b[k]) for k in a)
