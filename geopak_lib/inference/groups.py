"""Several photos of one place -> one prediction.

Two ways to combine the views of a group (docs/decisions/ensemble.md says which one is the default
and why):

- ``"embedding"``: average the encoders' features over the group's views, then run the heads once
  (PIGEON's choice: averaging the embeddings of four views beat attention);
- ``"probs"``: run every view, then average the province and per-province cell probabilities (as
  TTA does, ``outputs.merge_view_outputs``); the fused embedding, α and the auxiliary point are
  averaged too, so the offsets come from the mean embedding rather than from one arbitrary photo.

Both work for a GeopakModel and for an ensemble.EnsembleModel (each member combines its own views).
"""

from __future__ import annotations

import torch

from geopak_lib.inference.ensemble import EnsembleModel
from geopak_lib.training.cache import encoder_input

COMBINE = ("embedding", "probs")
DEFAULT_COMBINE = "embedding"  # the status quo: 06 keeps it unless the adoption rule takes "probs" (evaluation.md)
_PROBS_KEYS = ("province_logits", "geocell_logits")


def group_mean(t: torch.Tensor, group: torch.Tensor, n_groups: int) -> torch.Tensor:
    """Mean of the rows of t (N, ...) within each group: group (N,) ids in 0..n_groups-1 -> (n_groups, ...).
    Every group must have at least one row."""
    group = torch.as_tensor(group, dtype=torch.long, device=t.device)
    total = torch.zeros((n_groups, *t.shape[1:]), dtype=t.dtype, device=t.device).index_add_(0, group, t)
    count = torch.bincount(group, minlength=n_groups).to(t.dtype)
    if bool((count == 0).any()):
        raise ValueError(f"groups {torch.nonzero(count == 0).flatten().tolist()[:5]} have no rows")
    return total / count.view(-1, *([1] * (t.dim() - 1)))


def merge_group_outputs(outputs: dict, group, n_groups: int) -> dict:
    """Model outputs of N views -> outputs of n_groups groups (the "probs" rule). Province and cell
    logits (any key starting with province_logits/geocell_logits, so an ensemble's per-member keys
    too) become the log of the group's mean probabilities; every other tensor is averaged."""
    def merge(key, t):
        if key.startswith(_PROBS_KEYS):
            return torch.log(group_mean(torch.softmax(t, -1), group, n_groups).clamp_min(1e-30))
        return group_mean(t, group, n_groups)

    return {k: ({p: merge(k, t) for p, t in v.items()} if isinstance(v, dict) else merge(k, v))
            for k, v in outputs.items()}


@torch.no_grad()
def encoder_features(model, views: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 views (N, 3, S, S) on the model's device -> clip_feat (N, clip_dim), scene_feat (N, scene_dim)."""
    return (model.clip_encoder(encoder_input(views, model.clip_encoder.preprocess)),
            model.scene_encoder(encoder_input(views, model.scene_encoder.preprocess)))


@torch.no_grad()
def features_group_outputs(model, clip_feat, scene_feat, group, *, n_groups: int, combine: str) -> dict:
    """Per-view encoder features (N, D) of a GeopakModel -> group outputs (n_groups rows)."""
    if combine == "embedding":
        return model.forward_features(group_mean(clip_feat, group, n_groups), group_mean(scene_feat, group, n_groups))
    if combine == "probs":
        return merge_group_outputs(model.forward_features(clip_feat, scene_feat), group, n_groups)
    raise ValueError(f"combine must be one of {COMBINE}, got {combine!r}")


@torch.no_grad()
def group_outputs(model, views: torch.Tensor, combine: str = DEFAULT_COMBINE) -> dict:
    """uint8 views (N, 3, S, S) of ONE place, on the model's device -> outputs with one row."""
    if isinstance(model, EnsembleModel):
        return model.pack([group_outputs(m, views, combine) for m in model.members])
    group = torch.zeros(len(views), dtype=torch.long)
    return features_group_outputs(model, *encoder_features(model, views), group, n_groups=1, combine=combine)

