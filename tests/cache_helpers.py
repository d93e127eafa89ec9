"""A tiny stand-in encoder that counts its calls (and can fail on one), and the feature-cache build
with it: shared by the feature-cache and file-error tests (the 12-image ``manifest`` fixture is in conftest.py)."""

from dataclasses import dataclass

import torch
from torch import nn

from geopak_lib.training.cache import FeatureCache


@dataclass
class Pre:
    image_size: int
    mean: tuple = (0.5, 0.5, 0.5)
    std: tuple = (0.25, 0.25, 0.25)


class TinyEncoder(nn.Module):
    """Stand-in with the Encoder attributes; counts forward calls and can fail on call ``fail_at``."""

    def __init__(self, dim, size, spec="tiny:enc", seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(12, dim))
        self.dim, self.spec, self.preprocess = dim, spec, Pre(size)
        self.weight_status, self.is_random = "random init (test)", True
        self.calls, self.fail_at = 0, None

    def forward(self, x):
        self.calls += 1
        if self.fail_at is not None and self.calls >= self.fail_at:
            raise RuntimeError("simulated crash")
        return self.net(x)


def tiny_encoders(spec="tiny:enc"):
    return TinyEncoder(5, 16, spec, seed=0), TinyEncoder(4, 12, "tiny:scene", seed=1)


def build_cache(manifest, root, clip, scene, **kw):
    kw = {"views": 2, "batch_size": 4, "chunk_batches": 1, "device": "cpu", "progress": False, **kw}
    return FeatureCache.build_or_load(manifest, clip, scene, cache_root=root, **kw)
