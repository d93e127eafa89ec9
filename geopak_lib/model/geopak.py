"""GEOPAK heads: projections, gated fusion, province and per-province geocell heads, embeddings,
the clamped offset head and the auxiliary regression head (spec 000 §2-§7).

Encoders are optional submodules: the trainer can run the heads on cached features.
Decisions and their reasons: docs/decisions/model.md.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import pandas as pd
import torch
from torch import nn

from geopak_lib import geo
from geopak_lib.constants import NUM_PROVINCES, OFFSET_SCALE, PROVINCES
from geopak_lib.data.cells import MODEL_CELL_COLUMNS, parse_id_list
from geopak_lib.model.concept_heads import ConceptHeads, validate_concept_classes
from geopak_lib.model.inference import build_hypotheses

# Centre and half-extent of Pakistan's bounding box (shipped polygons), degrees (lat, lon).
# The aux head predicts coordinates normalised by these, so it starts at the centre.
AUX_CENTER_DEG = (30.37, 69.35)
AUX_HALF_EXTENT_DEG = (6.64, 8.47)


@dataclass
class ModelConfig:
    """Sizes of the heads. Defaults are spec 000's; spec 001 uses cell_emb_dim=96, prov_emb_dim=32."""

    clip_dim: int
    scene_dim: int
    fused_dim: int = 512
    fusion: str = "gated"  # "gated" | "residual"
    cell_emb_dim: int = 64
    prov_emb_dim: int = 16
    province_hidden: int = 256
    cell_hidden: int = 512
    small_cell_hidden: int = 256
    small_province_cells: int = 30  # provinces with fewer cells get the small hidden size
    offset_hidden: int = 256
    aux_hidden: int = 256
    dropout: float = 0.0
    gate_init: float = 0.5  # initial alpha of the gated fusion (neither encoder dominates)
    residual_beta_init: float = 0.1  # initial beta of the residual fusion (spec 000 §2.3)
    # Concept heads (docs/decisions/concepts.md): {concept: [class names]} from concepts.json; they exist exactly when
    # concept_weight > 0, the weight of their loss term in every phase that trains the heads.
    concept_classes: dict = field(default_factory=dict)
    concept_weight: float = 0.0
    concept_hidden: int = 128
    concept_bottleneck: bool = False  # the geocell heads also see the concept probabilities (spec 002)

    def __post_init__(self):
        for f in fields(self):
            v, least = getattr(self, f.name), 0 if f.name == "small_province_cells" else 1
            if f.type == "int" and (isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < least):
                raise ValueError(f"ModelConfig.{f.name} must be an int >= {least}, got {v!r}")
        if self.fusion not in ("gated", "residual"):
            raise ValueError(f"ModelConfig.fusion must be 'gated' or 'residual', got {self.fusion!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"ModelConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if not 0.0 < self.gate_init < 1.0:
            raise ValueError(f"ModelConfig.gate_init must be in (0, 1), got {self.gate_init!r}")
        self.concept_classes = validate_concept_classes(self.concept_classes)
        if not (self.concept_weight >= 0 and bool(self.concept_classes) == (self.concept_weight > 0)):
            raise ValueError("ModelConfig: concept heads need both concept_classes and concept_weight > 0 "
                             f"(weight 0 and no classes turns them off); got weight {self.concept_weight!r} "
                             f"and classes for {sorted(self.concept_classes)}")
        if self.concept_bottleneck and not self.concept_classes:
            raise ValueError("ModelConfig.concept_bottleneck needs concept heads (concept_classes, concept_weight > 0)")

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        """Build from a dict; an unknown key is an error (a misspelt setting must not be ignored)."""
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise KeyError(f"unknown ModelConfig keys {sorted(unknown)}; known: {[f.name for f in fields(cls)]}")
        return cls(**d)


def mlp_block(d_in: int, d_hidden: int, d_out: int, *, dropout: float = 0.0, norm: bool = True) -> nn.Sequential:
    """Linear -> [LayerNorm] -> GELU -> [Dropout] -> Linear. (B, d_in) -> (B, d_out)."""
    layers = [nn.Linear(d_in, d_hidden)] + ([nn.LayerNorm(d_hidden)] if norm else []) + [nn.GELU()]
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers, nn.Linear(d_hidden, d_out))


def projection(d_in: int, d_out: int) -> nn.Sequential:
    """Encoder feature -> shared space: Linear -> LayerNorm -> GELU (spec 000 §2.2)."""
    return nn.Sequential(nn.Linear(d_in, d_out), nn.LayerNorm(d_out), nn.GELU())


class Fusion(nn.Module):
    """Fuse E_clip, E_scene (B, D) -> (E (B, D), alpha (B,)).

    gated: alpha = sigmoid(Linear([E_clip, E_scene])) is one scalar per image, E = alpha*E_scene +
    (1-alpha)*E_clip, so alpha reads as "how much this image trusts the scene encoder".
    residual: E = E_clip + beta*E_scene with a learnable scalar beta; alpha returns beta per image.
    """

    def __init__(self, dim: int, mode: str = "gated", gate_init: float = 0.5, beta_init: float = 0.1):
        super().__init__()
        self.mode = mode
        if mode == "gated":
            self.gate = nn.Linear(2 * dim, 1)
            nn.init.constant_(self.gate.bias, math.log(gate_init / (1 - gate_init)))  # sigmoid(bias) = gate_init
        else:
            self.beta = nn.Parameter(torch.tensor(float(beta_init)))

    def forward(self, e_clip: torch.Tensor, e_scene: torch.Tensor):
        if self.mode == "gated":
            alpha = torch.sigmoid(self.gate(torch.cat([e_clip, e_scene], -1)))  # (B, 1)
            return alpha * e_scene + (1 - alpha) * e_clip, alpha.squeeze(-1)
        return e_clip + self.beta * e_scene, self.beta.expand(e_clip.shape[0])


class OffsetMLP(nn.Module):
    """Residual MLP of spec 000 §6: (..., d_in) -> raw (..., 2), read as (north, east) / limit."""

    def __init__(self, d_in: int, hidden: int = 256, dropout: float = 0.0):
        super().__init__()
        self.inp = nn.Sequential(nn.Linear(d_in, hidden), nn.LayerNorm(hidden), nn.GELU())
        self.res = nn.Sequential(nn.Linear(hidden, hidden), nn.LayerNorm(hidden))
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.out = nn.Sequential(nn.Linear(hidden, hidden // 2), nn.GELU(), nn.Linear(hidden // 2, 2))
        # Zero last layer: an untrained head predicts the cell centre, never worse than the cell.
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        return self.out(self.drop(h + self.res(h)))


def clamp_offset_km(raw: torch.Tensor, limit_km: torch.Tensor) -> torch.Tensor:
    """Smooth per-component box clamp: raw (..., 2) -> limit * tanh(raw), each in (-limit, limit) km.

    tanh keeps a gradient at the bound, where a hard clamp would give none.
    limit_km: (...,) broadcast to both components.
    """
    return limit_km.unsqueeze(-1) * torch.tanh(raw)


def validate_cells(cells: pd.DataFrame) -> pd.DataFrame:
    """Check the geocell table (cell_id contiguous, grouped by province in PROVINCES order)."""
    missing = [c for c in MODEL_CELL_COLUMNS if c not in cells.columns]
    if missing:
        raise ValueError(f"cells table lacks columns {missing}; it needs {list(MODEL_CELL_COLUMNS)} (from 01_geocells)")
    if len(cells) == 0:
        raise ValueError("cells table is empty: the model needs at least one geocell")
    cells = cells.sort_values("cell_id").reset_index(drop=True)
    cells["neighbor_cell_ids"] = [parse_id_list(v) for v in cells["neighbor_cell_ids"]]  # CSV, JSON or lists
    if not np.array_equal(cells["cell_id"].to_numpy(), np.arange(len(cells))):
        raise ValueError("cells.cell_id must be 0..N-1 without gaps; rebuild the geocells")
    pid = cells["province_id"].to_numpy()
    if pid.min() < 0 or pid.max() >= NUM_PROVINCES or np.any(np.diff(pid) < 0):
        raise ValueError("cells.province_id must lie in 0..6 and be non-decreasing in cell_id order")
    for col in ("center_lat", "center_lon", "radius_km"):
        if not np.all(np.isfinite(cells[col].to_numpy(float))):
            raise ValueError(f"cells.{col} has non-finite values (cell ids "
                             f"{cells.loc[~np.isfinite(cells[col].to_numpy(float)), 'cell_id'].tolist()[:5]})")
    if (cells["radius_km"] < 0).any():
        raise ValueError("cells.radius_km must be >= 0")
    if "province" in cells.columns:
        bad = cells[[PROVINCES[p] != n for p, n in zip(pid, cells["province"])]]
        if len(bad):
            raise ValueError(f"cells.province disagrees with province_id at cell ids {bad['cell_id'].tolist()[:5]}")
    return cells


def _json_ready(cells: pd.DataFrame) -> list[dict]:
    """Cells table -> list of plain-python records (neighbour ids as lists of int)."""
    out = []
    for rec in cells.to_dict("records"):
        rec["neighbor_cell_ids"] = parse_id_list(rec["neighbor_cell_ids"])
        out.append({k: (v.item() if isinstance(v, np.generic) else v) for k, v in rec.items()})
    return out


class GeopakModel(nn.Module):
    """Province-aware hierarchical geolocation heads on top of two (optional) encoders.

    cells: the geocell table (see validate_cells). clip_encoder/scene_encoder: modules mapping
    images to (B, clip_dim) / (B, scene_dim); when None, forward() takes features directly.
    offset_scale: {province name: scale}, defaults to constants.OFFSET_SCALE.
    """

    def __init__(self, config: ModelConfig, cells: pd.DataFrame, clip_encoder: nn.Module | None = None,
                 scene_encoder: nn.Module | None = None, *, offset_scale: dict | None = None):
        super().__init__()
        self.config = config
        self.cells = validate_cells(cells)
        self.offset_scale = dict(OFFSET_SCALE if offset_scale is None else offset_scale)
        self.clip_encoder, self.scene_encoder = clip_encoder, scene_encoder
        c, d = config, config.fused_dim
        self.clip_proj, self.scene_proj = projection(c.clip_dim, d), projection(c.scene_dim, d)
        self.fusion = Fusion(d, c.fusion, c.gate_init, c.residual_beta_init)
        self.province_head = mlp_block(d, c.province_hidden, NUM_PROVINCES, dropout=c.dropout)

        self.concept_heads = ConceptHeads(d, c.concept_classes, c.concept_hidden, c.dropout) \
            if c.concept_classes else None
        d_cell = d + (self.concept_heads.total_classes if c.concept_bottleneck else 0)

        pid = self.cells["province_id"].to_numpy().copy()
        counts = np.bincount(pid, minlength=NUM_PROVINCES)
        self.cells_per_province = [int(n) for n in counts]
        self.geocell_heads = nn.ModuleDict({
            str(p): mlp_block(d_cell, c.cell_hidden if n >= c.small_province_cells else c.small_cell_hidden, n,
                              dropout=c.dropout)
            for p, n in enumerate(counts) if n > 0})  # provinces without cells get no head
        n_cells = len(self.cells)
        self.cell_embedding = nn.Embedding(n_cells, c.cell_emb_dim)
        self.province_embedding = nn.Embedding(NUM_PROVINCES, c.prov_emb_dim)
        self.offset_head = OffsetMLP(d + c.cell_emb_dim + c.prov_emb_dim, c.offset_hidden, c.dropout)
        self.aux_head = mlp_block(d, c.aux_hidden, 2, dropout=c.dropout, norm=False)
        nn.init.zeros_(self.aux_head[-1].weight)  # start at Pakistan's centre
        nn.init.zeros_(self.aux_head[-1].bias)

        scale = np.array([self.offset_scale[PROVINCES[p]] for p in pid], float)
        f32 = lambda a: torch.tensor(np.array(a, float), dtype=torch.float32)  # noqa: E731
        # Derived from the cells table (saved by export_meta), so not stored in the state dict.
        for name, val in [("cell_lat", f32(self.cells["center_lat"])), ("cell_lon", f32(self.cells["center_lon"])),
                          ("cell_radius_km", f32(self.cells["radius_km"])),
                          ("cell_limit_km", f32(self.cells["radius_km"].to_numpy(float) * scale)),
                          ("cell_province_id", torch.tensor(np.array(pid), dtype=torch.long)),
                          ("province_cell_start", torch.as_tensor(np.r_[0, np.cumsum(counts)[:-1]], dtype=torch.long)),
                          ("province_cell_count", torch.as_tensor(counts, dtype=torch.long)),
                          ("aux_center", f32(AUX_CENTER_DEG)), ("aux_half_extent", f32(AUX_HALF_EXTENT_DEG))]:
            self.register_buffer(name, val, persistent=False)

    def forward_features(self, clip_feat: torch.Tensor, scene_feat: torch.Tensor) -> dict:
        """clip_feat (B, clip_dim), scene_feat (B, scene_dim) -> dict of
        fused (B, D), alpha (B,), province_logits (B, 7), geocell_logits {province_id: (B, N_p)},
        aux_latlon (B, 2) degrees, and with concept heads concept_logits {concept: (B, C)}; in the
        bottleneck variant the geocell heads read [fused, concept probabilities]."""
        if clip_feat.shape[-1] != self.config.clip_dim or scene_feat.shape[-1] != self.config.scene_dim:
            raise ValueError(f"feature dims {clip_feat.shape[-1]}, {scene_feat.shape[-1]} do not match "
                             f"ModelConfig clip_dim={self.config.clip_dim}, scene_dim={self.config.scene_dim}")
        fused, alpha = self.fusion(self.clip_proj(clip_feat), self.scene_proj(scene_feat))
        concepts = self.concept_heads(fused) if self.concept_heads is not None else None
        cell_in = torch.cat([fused, self.concept_heads.probabilities(concepts)], -1) \
            if self.config.concept_bottleneck else fused
        out = {
            "fused": fused,
            "alpha": alpha,
            "province_logits": self.province_head(fused),
            "geocell_logits": {int(p): head(cell_in) for p, head in self.geocell_heads.items()},
            "aux_latlon": self.aux_center + self.aux_half_extent * self.aux_head(fused),
        }
        return out if concepts is None else {**out, "concept_logits": concepts}

    def forward(self, images_clip: torch.Tensor, images_scene: torch.Tensor | None = None) -> dict:
        """Run the encoders (where present; otherwise inputs are features) then forward_features.

        images_scene=None reuses images_clip for the scene encoder.
        """
        images_scene = images_clip if images_scene is None else images_scene
        clip_feat = self.clip_encoder(images_clip) if self.clip_encoder is not None else images_clip
        scene_feat = self.scene_encoder(images_scene) if self.scene_encoder is not None else images_scene
        return self.forward_features(clip_feat, scene_feat)

    def offsets(self, fused: torch.Tensor, cell_ids: torch.Tensor) -> torch.Tensor:
        """Clamped offsets in degrees from each hypothesised cell's centre.

        fused (B, D); cell_ids (B,) or (B, H) global ids, -1 = padding (offset 0).
        Returns cell_ids.shape + (2,): (dlat, dlon) degrees, with |north|, |east| < radius_km * scale.
        """
        squeeze = cell_ids.dim() == 1
        ids = cell_ids.unsqueeze(1) if squeeze else cell_ids  # (B, H)
        valid = ids >= 0
        safe = ids.clamp(min=0)
        e = fused.unsqueeze(1).expand(-1, ids.shape[1], -1)
        x = torch.cat([e, self.cell_embedding(safe), self.province_embedding(self.cell_province_id[safe])], -1)
        north_east = clamp_offset_km(self.offset_head(x), self.cell_limit_km[safe] * valid)
        dlat, dlon = geo.km_to_deg(north_east[..., 0], north_east[..., 1], self.cell_lat[safe])
        out = torch.stack([dlat, dlon], -1)
        return out.squeeze(1) if squeeze else out

    def hypotheses(self, outputs: dict, top_provinces: int = 2, top_cells: int = 5) -> dict:
        """Mixture hypotheses (cell ids, weights); see inference.build_hypotheses."""
        return build_hypotheses(self, outputs, top_provinces=top_provinces, top_cells=top_cells)

    def export_meta(self) -> dict:
        """Everything needed to rebuild this model without the run folder (JSON-serialisable)."""
        return {"config": asdict(self.config), "cells": _json_ready(self.cells), "offset_scale": self.offset_scale}

    @classmethod
    def from_meta(cls, meta: dict, clip_encoder: nn.Module | None = None,
                  scene_encoder: nn.Module | None = None) -> "GeopakModel":
        """Inverse of export_meta (load the state dict afterwards)."""
        return cls(ModelConfig.from_dict(meta["config"]), pd.DataFrame(meta["cells"]), clip_encoder,
                   scene_encoder, offset_scale=meta.get("offset_scale"))
