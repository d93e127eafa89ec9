"""Model heads: shapes, fusion formulas, offset clamp and km->degree conversion, checkpoint meta."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from geopak_lib.model.geopak import (AUX_CENTER_DEG, GeopakModel, ModelConfig, clamp_offset_km, validate_cells)

KM_PER_DEG_LAT = math.pi * 6371.0088 / 180  # 111.19508 km per degree of latitude


def make_cells():
    """Sindh (0) 4 cells, Punjab (1) 1 cell, Khyber Pakhtunkhwa (2) none."""
    return pd.DataFrame({
        "cell_id": [0, 1, 2, 3, 4], "province_id": [0, 0, 0, 0, 1],
        "province": ["Sindh"] * 4 + ["Punjab"],
        "center_lat": [24.9, 25.4, 26.0, 27.7, 31.5], "center_lon": [67.0, 68.4, 68.9, 68.8, 74.3],
        "radius_km": [10.0, 20.0, 30.0, 15.0, 25.0],
        "neighbor_cell_ids": [[1], [0, 2], [1, 3], [2], []], "n_samples": [50] * 5})


def tiny_config(**kw):
    return ModelConfig(**{"clip_dim": 8, "scene_dim": 6, "fused_dim": 16, "cell_emb_dim": 4, "prov_emb_dim": 3,
                          "province_hidden": 8, "cell_hidden": 12, "small_cell_hidden": 5,
                          "small_province_cells": 3, "offset_hidden": 8, "aux_hidden": 8, **kw})


def feats(b=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 8, generator=g), torch.randn(b, 6, generator=g)


def test_config_validation():
    with pytest.raises(ValueError, match="fusion"):
        tiny_config(fusion="concat")
    with pytest.raises(ValueError, match="cell_emb_dim"):
        tiny_config(cell_emb_dim=0)
    with pytest.raises(ValueError, match="dropout"):
        tiny_config(dropout=1.0)
    with pytest.raises(KeyError, match="cel_emb_dim"):
        ModelConfig.from_dict({"clip_dim": 8, "scene_dim": 6, "cel_emb_dim": 4})
    assert ModelConfig(clip_dim=768, scene_dim=2048).fused_dim == 512


def test_forward_shapes_and_heads_for_4_1_0_cells():
    torch.manual_seed(0)
    model = GeopakModel(tiny_config(), make_cells())
    out = model.forward_features(*feats())
    assert set(model.geocell_heads) == {"0", "1"}  # no head for the province without cells
    assert model.cells_per_province == [4, 1, 0, 0, 0, 0, 0]
    assert out["fused"].shape == (4, 16) and out["alpha"].shape == (4,)
    assert out["province_logits"].shape == (4, 7) and out["aux_latlon"].shape == (4, 2)
    assert {p: v.shape for p, v in out["geocell_logits"].items()} == {0: (4, 4), 1: (4, 1)}
    # 4 cells >= small_province_cells=3 -> full hidden (12); 1 cell -> reduced hidden (5)
    assert model.geocell_heads["0"][0].out_features == 12 and model.geocell_heads["1"][0].out_features == 5
    assert model.cell_embedding.weight.shape == (5, 4) and model.province_embedding.weight.shape == (7, 3)
    assert model.offset_head.inp[0].in_features == 16 + 4 + 3


def test_default_sizes_follow_spec():
    cells = make_cells()
    model = GeopakModel(ModelConfig(clip_dim=768, scene_dim=512), cells)
    assert model.offset_head.inp[0].in_features == 592  # 512 + 64 + 16 (spec 000 §6)
    assert model.province_head[0].out_features == 256 and model.geocell_heads["0"][0].out_features == 256
    out = model.forward_features(torch.randn(4, 768), torch.randn(4, 512))
    assert out["fused"].shape == (4, 512)


def test_gated_fusion_formula():
    model = GeopakModel(tiny_config(gate_init=0.2), make_cells())
    nn.init.zeros_(model.fusion.gate.weight)  # alpha = sigmoid(bias) = gate_init for every image
    clip, scene = feats()
    out = model.forward_features(clip, scene)
    torch.testing.assert_close(out["alpha"], torch.full((4,), 0.2))
    e_clip, e_scene = model.clip_proj(clip), model.scene_proj(scene)
    torch.testing.assert_close(out["fused"], 0.2 * e_scene + 0.8 * e_clip)
    # with learnt weights alpha varies per image and is sigmoid(Linear([E_clip, E_scene]))
    nn.init.normal_(model.fusion.gate.weight)
    alpha = torch.sigmoid(model.fusion.gate(torch.cat([e_clip, e_scene], -1))).squeeze(-1)
    out = model.forward_features(clip, scene)
    torch.testing.assert_close(out["alpha"], alpha)
    torch.testing.assert_close(out["fused"], alpha[:, None] * e_scene + (1 - alpha[:, None]) * e_clip)


def test_residual_fusion_formula():
    model = GeopakModel(tiny_config(fusion="residual"), make_cells())
    clip, scene = feats()
    out = model.forward_features(clip, scene)
    torch.testing.assert_close(out["fused"], model.clip_proj(clip) + 0.1 * model.scene_proj(scene))
    torch.testing.assert_close(out["alpha"], torch.full((4,), 0.1))
    assert model.fusion.beta.requires_grad


def test_smooth_clamp_formula_and_gradient_at_bound():
    raw = torch.tensor([[math.atanh(0.5), -50.0]], requires_grad=True)
    out = clamp_offset_km(raw, torch.tensor([10.0]))
    torch.testing.assert_close(out, torch.tensor([[5.0, -10.0]]))
    raw2 = torch.tensor([[3.0, 3.0]], requires_grad=True)  # near the bound, a hard clamp gives no gradient
    clamp_offset_km(raw2, torch.tensor([10.0])).sum().backward()
    assert (raw2.grad > 0).all()


def _saturate(model, sign=1.0):
    """Push the offset head's raw output to +-inf-like values: offsets sit at the clamp bound."""
    nn.init.zeros_(model.offset_head.out[-1].weight)
    nn.init.constant_(model.offset_head.out[-1].bias, 40.0 * sign)


def test_offset_clamp_in_degrees_at_60N_lon_degree_is_half():
    cells = pd.DataFrame({"cell_id": [0], "province_id": [0], "center_lat": [60.0], "center_lon": [10.0],
                          "radius_km": [10.0], "neighbor_cell_ids": [[]]})
    model = GeopakModel(tiny_config(), cells)
    _saturate(model)
    off = model.offsets(model.forward_features(*feats(2))["fused"], torch.tensor([0, 0]))
    dlat = 10.0 / KM_PER_DEG_LAT  # Sindh scale 1.0: 10 km north
    # at 60N a degree of longitude is half a degree of latitude in km, so 10 km east is 2x the degrees
    torch.testing.assert_close(off, torch.tensor([[dlat, 2 * dlat]] * 2))


def test_offset_clamp_pakistan_latitude_and_province_scale():
    model = GeopakModel(tiny_config(), make_cells())
    _saturate(model, -1.0)
    off = model.offsets(model.forward_features(*feats(1))["fused"], torch.tensor([[4, 0]]))  # (1, 2, 2)
    assert off.shape == (1, 2, 2)
    # cell 4: Punjab, radius 25 km x scale 0.6 = 15 km, at 31.5N; cell 0: Sindh 10 km x 1.0 at 24.9N
    want = [[-15 / KM_PER_DEG_LAT, -15 / (KM_PER_DEG_LAT * math.cos(math.radians(31.5)))],
            [-10 / KM_PER_DEG_LAT, -10 / (KM_PER_DEG_LAT * math.cos(math.radians(24.9)))]]
    torch.testing.assert_close(off[0], torch.tensor(want))
    assert abs(want[0][1] + 0.15821) < 1e-4  # 15 km east at 31.5N, worked out: 15 / (111.195 * 0.8526)


def test_offsets_stay_inside_box_for_random_heads():
    torch.manual_seed(1)
    model = GeopakModel(tiny_config(), make_cells())
    for p in model.offset_head.parameters():
        nn.init.normal_(p, std=3.0)
    ids = torch.tensor([[0, 1, 2, 3, 4]] * 4)
    off = model.offsets(model.forward_features(*feats())["fused"], ids)
    north = off[..., 0] * KM_PER_DEG_LAT
    east = off[..., 1] * KM_PER_DEG_LAT * torch.cos(torch.deg2rad(model.cell_lat[ids]))
    limit = torch.tensor([10.0, 20.0, 30.0, 15.0, 25.0 * 0.6])
    assert (north.abs() <= limit + 1e-4).all() and (east.abs() <= limit + 1e-4).all()


def test_offsets_shapes_padding_and_untrained_start():
    model = GeopakModel(tiny_config(), make_cells())
    fused = model.forward_features(*feats(3))["fused"]
    assert model.offsets(fused, torch.tensor([0, 1, 4])).shape == (3, 2)
    off = model.offsets(fused, torch.tensor([[0, -1]] * 3))
    assert off.shape == (3, 2, 2)
    assert torch.all(off == 0)  # zero-initialised last layer: predictions start at the cell centre
    _saturate(model)
    off = model.offsets(fused, torch.tensor([[0, -1]] * 3))
    assert torch.all(off[:, 1] == 0) and torch.all(off[:, 0] != 0)  # padding (-1) never moves


def test_aux_head_starts_at_pakistan_centre():
    model = GeopakModel(tiny_config(), make_cells())
    aux = model.forward_features(*feats())["aux_latlon"]
    torch.testing.assert_close(aux, torch.tensor([AUX_CENTER_DEG] * 4))


def test_forward_runs_encoders_or_takes_features():
    torch.manual_seed(0)
    clip_enc, scene_enc = nn.Sequential(nn.Flatten(), nn.Linear(12, 8)), nn.Sequential(nn.Flatten(), nn.Linear(12, 6))
    model = GeopakModel(tiny_config(), make_cells(), clip_enc, scene_enc)
    images = torch.randn(2, 3, 2, 2)
    out = model(images)  # scene encoder reuses the same images
    want = model.forward_features(clip_enc(images), scene_enc(images))
    torch.testing.assert_close(out["province_logits"], want["province_logits"])
    bare = GeopakModel(tiny_config(), make_cells())
    clip, scene = feats()
    torch.testing.assert_close(bare(clip, scene)["fused"], bare.forward_features(clip, scene)["fused"])
    with pytest.raises(ValueError, match="clip_dim=8"):
        bare.forward_features(torch.randn(2, 9), torch.randn(2, 6))


def test_export_meta_rebuilds_the_model():
    torch.manual_seed(0)
    model = GeopakModel(tiny_config(fusion="residual"), make_cells())
    for p in model.offset_head.parameters():  # non-zero offsets, so the comparison means something
        nn.init.normal_(p)
    meta = json.loads(json.dumps(model.export_meta()))  # must survive JSON
    clone = GeopakModel.from_meta(meta)
    clone.load_state_dict(model.state_dict())
    clip, scene = feats()
    a, b = model.forward_features(clip, scene), clone.forward_features(clip, scene)
    torch.testing.assert_close(a["province_logits"], b["province_logits"])
    ids = torch.tensor([4, 0, 1, 2])
    torch.testing.assert_close(model.offsets(a["fused"], ids), clone.offsets(b["fused"], ids))
    assert model.offsets(a["fused"], ids).abs().min() > 0
    assert meta["cells"][1]["neighbor_cell_ids"] == [0, 2]


def test_validate_cells_rejects_bad_tables():
    cells = make_cells()
    with pytest.raises(ValueError, match="lacks columns"):
        validate_cells(cells.drop(columns="radius_km"))
    with pytest.raises(ValueError, match="without gaps"):
        validate_cells(cells.assign(cell_id=[0, 1, 2, 3, 7]))
    with pytest.raises(ValueError, match="non-decreasing"):
        validate_cells(cells.assign(province_id=[0, 1, 0, 0, 1]))
    with pytest.raises(ValueError, match="disagrees"):
        validate_cells(cells.assign(province=["Punjab"] * 5))
    with pytest.raises(ValueError, match="empty"):
        validate_cells(cells.iloc[:0])
    shuffled = validate_cells(cells.sample(frac=1.0, random_state=0))
    assert shuffled["cell_id"].tolist() == [0, 1, 2, 3, 4]
    assert np.allclose(shuffled["center_lat"], cells["center_lat"])
