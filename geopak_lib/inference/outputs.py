"""Model outputs outside the model: images in (files, arrays or PIL images, with an error record
for an unreadable file), geography-safe test-time views, and the dict-of-tensors plumbing
(move, concatenate, select rows, merge views)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from geopak_lib.data.augment import clean_transform
from geopak_lib.data.images import load_rgb

TTA_VIEWS = ("identity", "zoom_0.85", "crop_tl_0.9", "crop_br_0.9", "contrast_0.9")


def to_pil(image) -> Image.Image:
    """PIL image, numpy array (H, W[, 3|4]) uint8 or float in [0, 1], or a path -> RGB PIL image."""
    if isinstance(image, (str, Path)):
        return load_rgb(image)
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    a = np.asarray(image)
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (1, 3, 4)):
        raise ValueError(f"expected an image array (H, W), (H, W, 3) or (H, W, 4), got shape {a.shape}")
    if a.dtype != np.uint8:
        a = np.asarray(a, float)
        a = np.clip(a * (255.0 if a.max() <= 1.0 else 1.0), 0, 255).round().astype(np.uint8)
    a = a[..., :3] if a.ndim == 3 and a.shape[2] == 4 else a
    a = np.repeat(a[..., None] if a.ndim == 2 else a, 3, axis=2) if a.ndim == 2 or a.shape[2] == 1 else a
    return Image.fromarray(np.ascontiguousarray(a))


class ImageFiles(torch.utils.data.Dataset):
    """Files -> (index, uint8 (3, S, S) clean view or None, error message or "")."""

    def __init__(self, paths, size: int):
        self.paths, self.transform = [str(p) for p in paths], clean_transform(size)

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        try:
            return i, self.transform(to_pil(self.paths[i])), ""
        except Exception as exc:  # any unreadable file becomes an error record, never a crash
            return i, None, str(exc) if "cannot load image" in str(exc) else f"{type(exc).__name__}: {exc}"


def collate_files(batch):
    """-> (ok indices, uint8 (B_ok, 3, S, S) or None, {index: error})."""
    ok = [(i, x) for i, x, _ in batch if x is not None]
    errors = {i: e for i, x, e in batch if x is None}
    return [i for i, _ in ok], (torch.stack([x for _, x in ok]) if ok else None), errors


def tta_views(images: torch.Tensor, n_views: int = len(TTA_VIEWS)) -> list[torch.Tensor]:
    """Geography-safe views of uint8 (B, 3, S, S): identity, a centre zoom, two corner crops and a
    contrast change. No flips or rotations: left-right layout is a location cue."""
    size = images.shape[-1]
    x = images.float()

    def crop(frac, where):
        c = int(round(size * frac))
        o = {"c": ((size - c) // 2,) * 2, "tl": (0, 0), "br": (size - c, size - c)}[where]
        part = x[..., o[0]:o[0] + c, o[1]:o[1] + c]
        return F.interpolate(part, size=(size, size), mode="bilinear", antialias=True, align_corners=False)

    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    make = {"identity": lambda: x, "zoom_0.85": lambda: crop(0.85, "c"), "crop_tl_0.9": lambda: crop(0.9, "tl"),
            "crop_br_0.9": lambda: crop(0.9, "br"), "contrast_0.9": lambda: mean + 0.9 * (x - mean)}
    return [make[name]().round().clamp(0, 255).to(torch.uint8) for name in TTA_VIEWS[:max(1, n_views)]]


def merge_view_outputs(views: list[dict]) -> dict:
    """Average the province and per-province cell probabilities over views (returned as log-probs,
    so softmax gives the mean back). Offsets and α come from the first (identity) view: a crop moves
    the content, and the offset head's answer is relative to the full frame. Concept probabilities
    are averaged like the province's."""
    def log_mean(ts):
        return torch.log(torch.stack([torch.softmax(t, -1) for t in ts]).mean(0).clamp_min(1e-30))

    first = views[0]
    concepts = {"concept_logits": {k: log_mean([v["concept_logits"][k] for v in views]) for k in first["concept_logits"]}} \
        if "concept_logits" in first else {}
    return {**concepts, "fused": first["fused"], "alpha": first["alpha"],
            "province_logits": log_mean([v["province_logits"] for v in views]),
            "geocell_logits": {p: log_mean([v["geocell_logits"][p] for v in views]) for p in first["geocell_logits"]},
            "aux_latlon": torch.stack([v["aux_latlon"] for v in views]).mean(0)}
