"""Checkpoint ensembles: several trained GEOPAK models behind one model's interface.

``EnsembleModel(members, weights, names)`` runs every member on the same images and packs their
outputs into one outputs dict, so the predictor, ``cat_outputs``/``select_outputs`` and the
evaluation frame treat it like a single model. Two ways to combine (docs/decisions/ensemble.md):

- **shared geocells** (same cells: count, province, centre): the province and the per-province
  cell probabilities are averaged (weighted) *before* the mixture, so the hypotheses are chosen
  once from the averaged distribution; each hypothesis point is the weighted spherical mean of the
  members' points for that cell (cell centre + each member's offset head on its own embedding).
  ``inference.mixture_predict(ensemble, outputs)`` works unchanged.
- **different geocells**: every member runs its own mixture; the final point is the weighted
  spherical mean of the members' final points, and the hypotheses are the union of the members'
  hypotheses with weight ``member weight × hypothesis weight`` (a hypothesis' ``cell_id`` is one of
  its own member's geocells).

Members that cannot be combined (another number of provinces, or images preprocessed differently)
raise ValueError naming both checkpoints.
"""

from __future__ import annotations

import numpy as np
import torch

from geopak_lib import geo
from geopak_lib.model import inference

PER_MEMBER = ("province_logits", "geocell_logits")  # kept per member (key@m) when geocells differ


def log_mean_probs(logits: list, weights: torch.Tensor) -> torch.Tensor:
    """Weighted mean of softmax(logits) over members, as log-probabilities (softmax gives it back).
    logits: M tensors (B, K); weights (M,) summing to 1 -> (B, K)."""
    probs = torch.stack([torch.softmax(t, -1) for t in logits])  # (M, B, K)
    w = weights.to(probs).view(-1, *([1] * (probs.dim() - 1)))
    return torch.log((w * probs).sum(0).clamp_min(1e-30))


def normalised_weights(weights, n: int) -> np.ndarray:
    """Member weights (None = equal) -> float array (n,) summing to 1; each must be > 0."""
    w = np.ones(n) if weights is None else np.asarray(weights, float).reshape(-1)
    if len(w) != n or not np.all(np.isfinite(w)) or np.any(w <= 0):
        raise ValueError(f"ensemble weights must be {n} positive numbers, got {list(np.atleast_1d(weights))}")
    return w / w.sum()


def same_weights(a, b) -> bool:
    """True when two models hold the same state (a phase that kept its starting weights saves a copy)."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def geocell_relation(a, b, name_a: str = "first checkpoint", name_b: str = "second checkpoint") -> str:
    """How two GeopakModels' outputs combine: 'shared' (same geocells: count, provinces and centres
    within 1e-6 degrees) or 'different'. Raises ValueError naming both when they cannot be combined:
    another number of provinces, or images preprocessed differently."""
    n_a, n_b = a.province_head[-1].out_features, b.province_head[-1].out_features
    if n_a != n_b:
        raise ValueError(f"{name_a} and {name_b} cannot be ensembled: their province lists differ "
                         f"({n_a} vs {n_b} provinces)")
    for slot in ("clip_encoder", "scene_encoder"):
        pa, pb = (getattr(getattr(m, slot, None), "preprocess", None) for m in (a, b))
        if pa != pb:
            raise ValueError(f"{name_a} and {name_b} cannot be ensembled: their {slot}s read images "
                             f"differently ({pa} vs {pb})")
    same = (len(a.cell_lat) == len(b.cell_lat)
            and torch.equal(a.cell_province_id.cpu(), b.cell_province_id.cpu())
            and torch.allclose(a.cell_lat.cpu(), b.cell_lat.cpu(), rtol=0, atol=1e-6)
            and torch.allclose(a.cell_lon.cpu(), b.cell_lon.cpu(), rtol=0, atol=1e-6))
    return "shared" if same else "different"


def combine_member_predictions(preds: list[dict], weights: torch.Tensor, province_probs: torch.Tensor) -> dict:
    """Members with different geocells -> one prediction (the mixture_predict keys, plus hyp_member).

    preds: M mixture_predict dicts (B rows each); weights (M,) summing to 1; province_probs (B, 7)
    (already averaged). lat, lon (B,): weighted spherical mean of the members' points; hypotheses
    (B, M*H): the members' concatenated, weight = member weight × hypothesis weight; spread_km (B,):
    weighted mean distance of those hypotheses from the final point.
    """
    w = weights.to(preds[0]["lat"])
    lat, lon = inference.combine_hypotheses(torch.stack([p["lat"] for p in preds], -1),
                                            torch.stack([p["lon"] for p in preds], -1),
                                            w.expand(len(preds[0]["lat"]), -1))
    cat = lambda k: torch.cat([p[k] for p in preds], -1)  # noqa: E731
    hyp_w = torch.cat([w[m] * p["hyp_weight"] for m, p in enumerate(preds)], -1)
    hyp_lat, hyp_lon = cat("hyp_lat"), cat("hyp_lon")
    valid = cat("hyp_cell_id") >= 0
    dist = geo.haversine_km(hyp_lat, hyp_lon, lat.unsqueeze(-1), lon.unsqueeze(-1))
    spread = (hyp_w * torch.where(valid, dist, torch.zeros_like(dist))).sum(-1)
    member = torch.cat([torch.full_like(p["hyp_cell_id"], m) for m, p in enumerate(preds)], -1)
    conf, prov = province_probs.max(-1)
    return {"lat": lat, "lon": lon, "province_probs": province_probs, "province_id": prov, "confidence": conf,
            "hyp_lat": hyp_lat, "hyp_lon": hyp_lon, "hyp_weight": hyp_w, "hyp_cell_id": cat("hyp_cell_id"),
            "hyp_province_id": cat("hyp_province_id"), "hyp_member": torch.where(valid, member, -1),
            "spread_km": spread}


class EnsembleModel(torch.nn.Module):
    """M trained GeopakModels (with encoders) as one model. weights: (M,) positive, default equal;
    names: what error messages call each member (its checkpoint path)."""

    def __init__(self, members, weights=None, names=None):
        super().__init__()
        if len(members) < 1:
            raise ValueError("an ensemble needs at least one checkpoint")
        names = [str(n) for n in (names or [f"member {i}" for i in range(len(members))])]
        self.members, self.names = torch.nn.ModuleList(members), names
        self.register_buffer("member_weights", torch.tensor(normalised_weights(weights, len(members)),
                                                            dtype=torch.float32), persistent=False)
        relations = [geocell_relation(members[0], m, names[0], names[i]) for i, m in enumerate(members) if i]
        self.mode = "shared" if all(r == "shared" for r in relations) else "different"
        first = members[0]
        self.clip_encoder, self.scene_encoder, self.config = first.clip_encoder, first.scene_encoder, first.config
        self.fused_dims = [int(m.config.fused_dim) for m in members]

    # the geocell table of the first member (identical in every member when mode == 'shared')
    def __getattr__(self, name):
        if name in ("cell_lat", "cell_lon", "cell_radius_km", "cell_limit_km", "cell_province_id",
                    "province_cell_start", "province_cell_count", "cells", "cells_per_province"):
            return getattr(self.members[0], name)
        return super().__getattr__(name)

    def pack(self, outs: list[dict]) -> dict:
        """Members' outputs -> one outputs dict: province_logits (log of the weighted mean
        probabilities), alpha and aux_latlon (weighted means), fused (B, sum of the members'
        fused dims, concatenated), geocell_logits (averaged when shared; else member 0's, with every
        member's own province and cell logits kept as ``province_logits@m``/``geocell_logits@m``)."""
        w = self.member_weights
        packed = {"province_logits": log_mean_probs([o["province_logits"] for o in outs], w),
                  "alpha": sum(wi * o["alpha"] for wi, o in zip(w, outs)),
                  "aux_latlon": sum(wi * o["aux_latlon"] for wi, o in zip(w, outs)),
                  "fused": torch.cat([o["fused"] for o in outs], -1)}
        if self.mode == "shared":
            packed["geocell_logits"] = {p: log_mean_probs([o["geocell_logits"][p] for o in outs], w)
                                        for p in outs[0]["geocell_logits"]}
        else:
            packed["geocell_logits"] = outs[0]["geocell_logits"]
            for m, o in enumerate(outs):
                packed.update({f"{k}@{m}": o[k] for k in PER_MEMBER})
        return packed

    def member_fused(self, fused: torch.Tensor) -> list[torch.Tensor]:
        return list(torch.split(fused, self.fused_dims, -1))

    def member_outputs(self, outputs: dict, m: int) -> dict:
        """Member m's own outputs back from a packed dict of mode 'different'."""
        return {"province_logits": outputs[f"province_logits@{m}"], "geocell_logits": outputs[f"geocell_logits@{m}"],
                "fused": self.member_fused(outputs["fused"])[m], "alpha": outputs["alpha"],
                "aux_latlon": outputs["aux_latlon"]}

    def forward(self, images_clip: torch.Tensor, images_scene: torch.Tensor | None = None) -> dict:
        return self.pack([m(images_clip, images_scene) for m in self.members])

    def offsets(self, fused: torch.Tensor, cell_ids: torch.Tensor) -> torch.Tensor:
        """Shared geocells: each member points at cell centre + its own offset; the ensemble's point is
        their weighted spherical mean, returned as an offset (degrees) from the centre. cell_ids (B,)
        or (B, H) -> cell_ids.shape + (2,). (Averaging the offsets in degrees instead would differ by
        up to ~0.5 km when members disagree by 140 km.)"""
        if self.mode != "shared":
            raise ValueError("offsets of an ensemble exist only when its members share geocells")
        safe = cell_ids.clamp(min=0)
        c_lat, c_lon = self.cell_lat[safe], self.cell_lon[safe]
        parts = [m.offsets(f, cell_ids) for m, f in zip(self.members, self.member_fused(fused))]
        lat = torch.stack([c_lat + o[..., 0] for o in parts], -1)  # (..., M)
        lon = torch.stack([c_lon + o[..., 1] for o in parts], -1)
        m_lat, m_lon = inference.combine_hypotheses(lat, lon, self.member_weights.to(lat).expand_as(lat))
        return torch.stack([m_lat - c_lat, m_lon - c_lon], -1)

    @torch.no_grad()
    def mixture_predict(self, outputs: dict, top_provinces: int = 2, top_cells: int = 5,
                        temperature: float = 1.0) -> dict:
        """The ensemble's prediction, with the keys of inference.mixture_predict."""
        if self.mode == "shared":
            return inference.mixture_predict(self, outputs, top_provinces=top_provinces, top_cells=top_cells,
                                             temperature=temperature)
        preds = [inference.mixture_predict(m, self.member_outputs(outputs, i), top_provinces=top_provinces,
                                           top_cells=top_cells, temperature=temperature)
                 for i, m in enumerate(self.members)]
        probs = torch.softmax(outputs["province_logits"] / temperature, -1)
        return combine_member_predictions(preds, self.member_weights, probs)


def mixture(model, outputs: dict, *, top_provinces: int = 2, top_cells: int = 5, temperature: float = 1.0) -> dict:
    """inference.mixture_predict for a GeopakModel, EnsembleModel.mixture_predict for an ensemble."""
    if isinstance(model, EnsembleModel):
        return model.mixture_predict(outputs, top_provinces, top_cells, temperature)
    return inference.mixture_predict(model, outputs, top_provinces=top_provinces, top_cells=top_cells,
                                     temperature=temperature)
