"""Synthetic data sets for the scale benchmark (benchmarks/bench_scale.py): N small JPEGs with real
coordinates, fast enough to make 100,000 in about a minute.

Positions: uniform in Pakistan's bounding box, kept where the shipped province polygons
(geoBoundaries ADM1, geopak_lib.geo.locate_province) put them, so each province's share follows its
area. Images: 64 x 64 JPEGs, an 8 x 8 random colour field upsampled (smooth, so they compress like
photos, not like noise), seeded by the row. The demo builder would take about 10 minutes per 3,000
images here; nothing in the stages measured depends on what the pixels show.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

BOX = ((23.6, 37.1), (60.8, 77.9))  # (lat range, lon range) degrees: Pakistan and the claimed areas


def sample_points(n: int, seed: int = 0) -> pd.DataFrame:
    """n points inside the province polygons -> latitude, longitude, province."""
    from geopak_lib.geo import locate_province

    rng = np.random.default_rng(seed)
    parts, have = [], 0
    while have < n:
        lat, lon = rng.uniform(*BOX[0], 4 * n), rng.uniform(*BOX[1], 4 * n)
        prov = locate_province(lat, lon, tolerance_km=0.0)
        keep = prov != None  # noqa: E711 (an object array: None outside Pakistan)
        parts.append(pd.DataFrame({"latitude": lat[keep].round(6), "longitude": lon[keep].round(6),
                                   "province": prov[keep]}))
        have += int(keep.sum())
    return pd.concat(parts, ignore_index=True).head(n)


def make_dataset(root: Path, n: int, size: int = 64) -> Path:
    """root/images/*.jpg and root/samples.csv (id, image, latitude, longitude, province); reuses
    the images of a smaller set built before in the same root. -> the table's path."""
    from PIL import Image

    images = Path(root) / "images"
    images.mkdir(parents=True, exist_ok=True)
    table = sample_points(n).assign(id=[f"s{i:06d}" for i in range(n)])
    table["image"] = table["id"] + ".jpg"
    for i in range(n):
        path = images / f"s{i:06d}.jpg"
        if path.exists():
            continue
        field = np.random.default_rng(i).integers(0, 255, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(field).resize((size, size), Image.BILINEAR).save(path, quality=85)
    out = Path(root) / f"samples_{n}.csv"
    table[["id", "image", "latitude", "longitude", "province"]].to_csv(out, index=False)
    return out


class StubEncoder(torch.nn.Module):
    """Stands in for an encoder where only the data path and the feature width matter (the
    training-step stage's cache at 100k rows): a 4-channel conv and a linear map to ``dim``."""

    def __init__(self, dim: int, size: int, spec: str):
        from geopak_lib.model.encoders import Preprocess

        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, stride=4), torch.nn.AdaptiveAvgPool2d(2),
                                       torch.nn.Flatten(), torch.nn.Linear(16, dim))
        self.dim, self.spec, self.weight_status, self.is_random = dim, spec, "random init (benchmark)", True
        self.preprocess = Preprocess(image_size=size, mean=(0.5,) * 3, std=(0.25,) * 3)

    def forward(self, x):
        return self.net(x)
