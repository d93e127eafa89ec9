"""What drives a prediction: the fusion gate α per image, and occlusion sensitivity maps.

Occlusion is encoder-agnostic (spec 002 shows patch attention; GEOPAK's encoders expose no
attention we could rely on for every spec): the clean view is cut into a grid x grid set of
squares, each greyed out in turn, and the drop in the probability of the province predicted for
the intact image is that square's importance. Both encoders see every occluded view, so the map
explains the whole model, not one slot.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch

from geopak_lib.constants import PROVINCES
from geopak_lib.inference.outputs import ImageFiles

GREY = 128  # uint8 fill of an occluded square: mid-grey, close to every encoder's mean input


def load_views(paths, size: int) -> torch.Tensor:
    """Clean evaluation views of image files: uint8 (B, 3, size, size)."""
    files = ImageFiles(paths, size)
    views = []
    for i in range(len(files)):
        _, x, err = files[i]
        if x is None:
            raise ValueError(f"{paths[i]}: {err}")
        views.append(x)
    return torch.stack(views)


def occluded_views(image: torch.Tensor, grid: int) -> torch.Tensor:
    """uint8 (3, S, S) -> (grid * grid, 3, S, S): square (i, j) greyed out in view i * grid + j."""
    size = image.shape[-1]
    edges = np.linspace(0, size, grid + 1).round().astype(int)
    out = image.unsqueeze(0).repeat(grid * grid, 1, 1, 1)
    for i in range(grid):
        for j in range(grid):
            out[i * grid + j, :, edges[i]:edges[i + 1], edges[j]:edges[j + 1]] = GREY
    return out


@torch.no_grad()
def occlusion_map(predictor, image: torch.Tensor, grid: int = 4) -> dict:
    """Sensitivity of the predicted province to each square of a grid.

    image uint8 (3, S, S). Returns heat (grid, grid): p(intact) - p(square greyed) of the province
    predicted for the intact image (positive = the square supports that province); province (name),
    p (its probability on the intact image).
    """
    base = predictor.forward_images(image.unsqueeze(0), tta=False)
    p0 = torch.softmax(base["province_logits"], -1)[0]
    k = int(p0.argmax())
    occ = predictor.forward_images(occluded_views(image, grid), tta=False)
    p = torch.softmax(occ["province_logits"], -1)[:, k]
    return {"heat": (p0[k] - p).reshape(grid, grid).numpy(), "province": PROVINCES[k], "p": float(p0[k])}


def occlusion_figure(images: torch.Tensor, maps: list[dict], titles=None):
    """Each image beside its occlusion map overlaid (red: greying the square lowers the predicted
    province's probability; blue: raises it). images uint8 (B, 3, S, S)."""
    n = len(maps)
    fig, axes = plt.subplots(2, n, figsize=(2.6 * n + 0.8, 5.4), squeeze=False, layout="constrained")
    lim = max(1e-6, max(np.abs(m["heat"]).max() for m in maps))
    for c, (img, m) in enumerate(zip(images, maps)):
        rgb = img.permute(1, 2, 0).numpy()
        s = rgb.shape[0]
        axes[0, c].imshow(rgb)
        axes[0, c].set_title((titles[c] + "\n" if titles else "") + f"{m['province']} p={m['p']:.2f}", fontsize=8)
        axes[1, c].imshow(rgb)
        im = axes[1, c].imshow(m["heat"], cmap="RdBu_r", vmin=-lim, vmax=lim, alpha=0.55, extent=(0, s, s, 0),
                               interpolation="nearest")
        axes[1, c].set(xlim=(0, s), ylim=(s, 0))
        axes[1, c].set_title("drop in p when greyed", fontsize=8)
        for ax in axes[:, c]:
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
    fig.colorbar(im, ax=axes[:, -1].tolist(), shrink=0.8, label="Δp")
    return fig


def alpha_gallery(images: torch.Tensor, alpha, labels, n: int = 4):
    """The n lowest-α and n highest-α images (α → 1 trusts the scene encoder, α → 0 CLIP).

    images uint8 (B, 3, S, S), alpha (B,), labels: a caption per image.
    """
    alpha = np.asarray(alpha, float)
    order = np.argsort(alpha, kind="stable")
    n = min(n, len(alpha) // 2) or 1
    picks = [("lowest α (towards CLIP)", order[:n]), ("highest α (towards scene)", order[::-1][:n])]
    fig, axes = plt.subplots(2, n, figsize=(2.4 * n, 5.2), squeeze=False)
    for r, (name, idx) in enumerate(picks):
        for c, i in enumerate(idx):
            ax = axes[r, c]
            ax.imshow(images[i].permute(1, 2, 0).numpy())
            ax.set_title(f"α = {alpha[i]:.3f}\n{labels[i]}", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
        axes[r, 0].set_ylabel(name, fontsize=9)
    fig.tight_layout()
    return fig


def explain_test_images(predictor, test, *, n_alpha: int = 4, n_occlusion: int = 3, grid: int = 4) -> tuple:
    """The report's two figures for a predictions frame: the gate gallery (images spread over α)
    and occlusion maps of the n_occlusion best-located test images. -> (alpha_fig, occlusion_fig)."""
    views = load_views(test["image_path"].tolist(), predictor.image_size)
    captions = [f"{r.province}, {r.error_km:.0f} km" for r in test.itertuples()]
    alpha_fig = alpha_gallery(views, test["alpha"], captions, n_alpha)
    picks = np.argsort(test["error_km"].to_numpy(), kind="stable")[:n_occlusion]
    maps = [occlusion_map(predictor, views[i], grid) for i in picks]
    titles = [f"{test['id'].iloc[i]} ({test['province'].iloc[i]})" for i in picks]
    return alpha_fig, occlusion_figure(views[picks], maps, titles)
