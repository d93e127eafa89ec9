"""Tiny synthetic training data shared by the trainer, concept-head and concept-ablation tests:
five cells, a labelled table and an in-memory stand-in for the feature cache whose features reveal
the cell, a tiny model, a phase-1 config and one short training run."""

import numpy as np
import pandas as pd
import torch

from geopak_lib.data.concepts import concept_mapping
from geopak_lib.model.geopak import GeopakModel, ModelConfig
from geopak_lib.training.config import PhaseConfig
from geopak_lib.training.inputs import TrainData, make_data
from geopak_lib.training.trainer import train_phase


CENTRES = [(25.0, 68.0, 0), (26.5, 68.5, 0), (31.5, 74.3, 1), (30.2, 71.5, 1), (29.5, 66.5, 5)]  # lat, lon, prov


class ArrayCache:
    """Stand-in for features.FeatureCache: view v of row r = clean features + v-dependent noise."""

    def __init__(self, clip, scene, ids, views=2):
        self.clip0, self.scene0, self.ids, self.views = clip, scene, ids, views

    def gather(self, rows, views=0, device="cpu"):
        rows = np.asarray(rows)
        v = np.broadcast_to(np.asarray(views), rows.shape)[:, None]
        noise = lambda a: 0.05 * np.sin(7.0 * v * (1 + np.arange(a.shape[1])) + rows[:, None])  # noqa: E731
        to = lambda a: torch.as_tensor(a[rows] + noise(a), dtype=torch.float32, device=device)  # noqa: E731
        return to(self.clip0), to(self.scene0)


def synthetic(n=120, seed=0):
    """Cells, labelled table and cache whose features reveal the cell (plus noise)."""
    rng = np.random.default_rng(seed)
    cells = pd.DataFrame({"cell_id": range(5), "province_id": [c[2] for c in CENTRES],
                          "center_lat": [c[0] for c in CENTRES], "center_lon": [c[1] for c in CENTRES],
                          "radius_km": [30.0] * 5, "neighbor_cell_ids": [[1], [0], [3], [2], []]})
    cell = rng.integers(0, 5, n)
    lat = cells.center_lat.to_numpy()[cell] + rng.normal(0, 0.1, n)
    lon = cells.center_lon.to_numpy()[cell] + rng.normal(0, 0.1, n)
    names = {0: "Sindh", 1: "Punjab", 5: "Balochistan"}
    table = pd.DataFrame({"id": [f"s{i}" for i in range(n)], "split": np.where(np.arange(n) < 0.7 * n, "train", "val"),
                          "image_path": "", "province_id": cells.province_id.to_numpy()[cell],
                          "cell_id": cell, "latitude": lat, "longitude": lon})
    table["province"] = table.province_id.map(names)
    onehot = np.eye(5)[cell]
    clip = onehot @ rng.normal(size=(5, 6)) + 0.3 * rng.normal(size=(n, 6))
    scene = onehot @ rng.normal(size=(5, 5)) + 0.3 * rng.normal(size=(n, 5))
    return cells, TrainData(table, ArrayCache(clip, scene, table.id.to_numpy(object)))


def tiny_model(cells, seed=0):
    torch.manual_seed(seed)
    cfg = ModelConfig(clip_dim=6, scene_dim=5, fused_dim=16, province_hidden=16, cell_hidden=16,
                      small_cell_hidden=8, offset_hidden=16, aux_hidden=8, cell_emb_dim=4, prov_emb_dim=2)
    return GeopakModel(cfg, cells)


def cfg1(**kw):
    base = dict(epochs=3, batch_size=16, batches_per_epoch=6, eval_batch_size=64, amp="off", warmup_frac=0.1)
    return PhaseConfig.for_phase(1, **{**base, **kw})


def run(tmp_path, cfg, name="run", seed=0, **kw):
    cells, data = synthetic()
    model = tiny_model(cells, seed)
    return model, train_phase(cfg, model, data, tmp_path / name, progress=False, device="cpu", **kw)


CLASSES = {"climate": ["B arid", "C temperate"], "land_cover": ["barren", "cropland", "urban"]}


def with_concepts(data: TrainData, seed=0) -> TrainData:
    """The synthetic data with climate / land cover labels that follow the cell (so they can be learnt)."""
    t = data.table.copy()
    t["climate"] = np.where(t["cell_id"] < 2, "B arid", "C temperate")
    t["land_cover"] = np.array(["barren", "cropland", "urban", "cropland", "barren"])[t["cell_id"]]
    t.loc[t.index % 9 == 0, "land_cover"] = "unknown"
    mapping = concept_mapping(t)
    assert {k: v["classes"] for k, v in mapping["concepts"].items()} == CLASSES
    assign = t[["id", "province_id", "cell_id"]]
    return make_data(t.drop(columns="cell_id"), assign, data.cache, mapping)
