"""A tiny model with tiny encoders rebuilt from their specs, and a folder of good and bad images:
shared by the predictor, refinement, ensemble, explorer and group tests (the `ckpt` fixture that
uses them is in conftest.py)."""

import numpy as np
import pandas as pd
import torch
from PIL import Image

from geopak_lib.model.encoders import Preprocess

from geopak_lib.analysis import refinement_fit
from geopak_lib.inference import refinement as rf
from geopak_lib.model.geopak import GeopakModel, ModelConfig

CELLS = pd.DataFrame({"cell_id": [0, 1, 2], "province_id": [0, 0, 1], "center_lat": [25.0, 26.5, 31.5],
                      "center_lon": [68.0, 68.5, 74.3], "radius_km": [30.0, 20.0, 25.0],
                      "neighbor_cell_ids": [[1], [0], []]})
NAMED_CELLS = CELLS.assign(province=["Sindh", "Sindh", "Punjab"])  # with the province names a model card shows


class TinyEncoder(torch.nn.Module):
    def __init__(self, dim, size, spec):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, stride=2), torch.nn.AdaptiveAvgPool2d(2),
                                       torch.nn.Flatten(), torch.nn.Linear(16, dim))
        self.dim, self.spec, self.weight_status, self.is_random = dim, spec, "random init (test)", True
        self.preprocess = Preprocess(image_size=size, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))

    def forward(self, x):
        return self.net(x)


SPECS = {"tiny:clip": (6, 16), "tiny:scene": (5, 12)}


def write_images(folder):
    rng = np.random.default_rng(0)
    (folder / "sub" / "deeper").mkdir(parents=True)
    good = {"a.jpg": "JPEG", "sub/b.PNG": "PNG", "sub/deeper/c.webp": "WEBP"}
    for name, fmt in good.items():
        Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(folder / name, fmt)
    (folder / "sub" / "notes.txt").write_text("not an image, and not an image extension: skipped")
    (folder / "fake.jpg").write_text("this is text, not a JPEG")
    (folder / "empty.png").write_bytes(b"")
    full = (folder / "a.jpg").read_bytes()
    (folder / "sub" / "truncated.jpg").write_bytes(full[: len(full) // 2])
    return sorted(good)


CFG = dict(clip_dim=6, scene_dim=5, fused_dim=8, province_hidden=8, cell_hidden=8, small_cell_hidden=8,
           offset_hidden=8, aux_hidden=8, cell_emb_dim=2, prov_emb_dim=2)


def tiny_model(cells=CELLS, seed=0, encoders=True):
    torch.manual_seed(seed)
    enc = (TinyEncoder(6, 16, "tiny:clip"), TinyEncoder(5, 12, "tiny:scene")) if encoders else (None, None)
    model = GeopakModel(ModelConfig(**CFG), cells, *enc)
    for p in model.offset_head.out[-1].parameters():  # non-zero offsets, so they are combined too
        torch.nn.init.normal_(p, std=0.5)
    return model.eval()


def save_gallery(path, model, default=True, settings=rf.RefineSettings(k=1, step=1.0)):
    """A gallery of one image per cell, 10 km north-east of each cell centre, with the embedding the
    model gives to an all-grey image (so every query matches something)."""
    cells = model.cells
    emb = np.random.default_rng(0).normal(size=(len(cells), model.config.fused_dim))
    g = refinement_fit.build_gallery(emb, cells["center_lat"] + 0.09, cells["center_lon"] + 0.09, cells["cell_id"],
                                    n_cells=len(cells))
    return rf.save_gallery(path, g, settings, {"default": default, "val_median_km": {"plain": 2.0, "refined": 1.0}})


CONCEPTS = {"climate": ["B arid", "C temperate", "E polar"], "land_cover": ["barren", "cropland", "urban", "water"]}
