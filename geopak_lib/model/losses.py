"""GEOPAK losses (spec 000 §3.1, §4.1, §9; spec 003 §4): each an nn.Module returning named terms.

Distances enter the losses in units of ``km_scale`` (100 km by default) so that a haversine term
sits on the same scale as a cross-entropy. Decisions: docs/decisions/model.md.
"""

from __future__ import annotations


import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from geopak_lib import geo
from geopak_lib.data.cells import parse_id_list
from geopak_lib.constants import NUM_PROVINCES, PROVINCE_ID, PROVINCES, TAU_KM
from geopak_lib.model.inference import build_hypotheses, hypothesis_points
from geopak_lib.model.geopak import validate_cells

DEFAULT_WEIGHTS = {"province": 0.5, "geocell": 1.0, "offset": 1.0, "aux": 0.1}  # spec 000 §9.5


def effective_number_weights(counts, beta: float = 0.9995) -> np.ndarray:
    """Class weights w_p = 1 / E_p, E_p = (1 - beta^n_p) / (1 - beta), divided by their mean.

    counts: (C,) samples per class. beta in [0, 1]; beta = 1 is the limit E_p = n_p (inverse
    frequency). A class with n_p = 0 gets weight 0 and is left out of the mean, so it changes
    nothing for the others (it is never a target). Returns (C,) float64.
    """
    n = np.asarray(counts, float)
    if n.ndim != 1 or np.any(n < 0) or not np.all(np.isfinite(n)):
        raise ValueError(f"counts must be a 1-D array of non-negative numbers, got {counts!r}")
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    present = n > 0
    if not present.any():
        raise ValueError("every class count is 0; cannot weight classes")
    eff = n.copy() if beta == 1.0 else (1.0 - beta ** n) / (1.0 - beta)
    w = np.zeros_like(n)
    w[present] = 1.0 / eff[present]
    return w / w[present].mean()


def province_count_vector(province_counts) -> np.ndarray:
    """{name or id: n} or a length-7 sequence in PROVINCES order -> (7,) counts."""
    if isinstance(province_counts, (dict, pd.Series)):
        out = np.zeros(NUM_PROVINCES)
        for key, n in dict(province_counts).items():
            if key not in PROVINCE_ID and key not in range(NUM_PROVINCES):
                raise KeyError(f"unknown province {key!r} in province_counts; use names {PROVINCES} or ids 0-6")
            out[PROVINCE_ID.get(key, key)] = n
        return out
    out = np.asarray(province_counts, float)
    if out.shape != (NUM_PROVINCES,):
        raise ValueError(f"province_counts needs 7 entries in PROVINCES order, got shape {out.shape}")
    return out


def smoothed_cell_targets(cells: pd.DataFrame, tau_by_province: dict | None = None) -> dict[int, torch.Tensor]:
    """Distance-aware soft targets per province (spec 000 §4.1), precomputed once.

    For true cell c: y_i = exp(-d_km(c, i) / tau_province) for i in {c} and c's neighbours inside
    the province (neighbours in other provinces are ignored), 0 elsewhere, then renormalised.
    d_km is the haversine distance between cell centres.
    Returns {province_id: (N_p, N_p) float32}, row = local index of the true cell.
    """
    cells = validate_cells(cells)
    tau_by_province = TAU_KM if tau_by_province is None else tau_by_province
    out = {}
    for pid, grp in cells.groupby("province_id", sort=True):
        start, n, tau = int(grp["cell_id"].iloc[0]), len(grp), float(tau_by_province[PROVINCES[pid]])
        lat, lon = grp["center_lat"].to_numpy(float), grp["center_lon"].to_numpy(float)
        target = np.zeros((n, n))
        for i, nbrs in enumerate(grp["neighbor_cell_ids"]):
            cols = sorted({i} | {j - start for j in parse_id_list(nbrs) if start <= j < start + n})
            target[i, cols] = np.exp(-geo.haversine_km(lat[i], lon[i], lat[cols], lon[cols]) / tau)
        out[int(pid)] = torch.as_tensor(target / target.sum(1, keepdims=True), dtype=torch.float32)
    return out


def offset_rampup(epoch: int, rampup_epochs: int = 5) -> float:
    """Offset-loss multiplier min(1, epoch / rampup_epochs) (spec 003 §4.3); epoch is 1-based."""
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0 (1-based), got {epoch}")
    return 1.0 if rampup_epochs <= 0 else min(1.0, epoch / rampup_epochs)


class ProvinceLoss(nn.Module):
    """Weighted cross-entropy (PyTorch's weighted mean: sum w_y * CE / sum w_y).

    logits (B, 7), province_id (B,) -> {"province": scalar}.
    """

    def __init__(self, class_weights):
        super().__init__()
        self.register_buffer("class_weights", torch.as_tensor(np.asarray(class_weights), dtype=torch.float32))

    def forward(self, logits: torch.Tensor, province_id: torch.Tensor) -> dict:
        return {"province": F.cross_entropy(logits, province_id, weight=self.class_weights)}


class GeocellLoss(nn.Module):
    """KL(y_soft || p) on the ground-truth province's head only (spec 000 §4).

    geocell_logits {province_id: (B, N_p)}, province_id (B,), cell_id (B,) global (-1 = no cell)
    -> {"geocell": scalar}: mean over samples with a cell; other provinces' heads get no gradient.
    """

    def __init__(self, cells: pd.DataFrame, tau_by_province: dict | None = None):
        super().__init__()
        cells = validate_cells(cells)
        self.starts = {int(p): int(g["cell_id"].iloc[0]) for p, g in cells.groupby("province_id")}
        for pid, target in smoothed_cell_targets(cells, tau_by_province).items():
            self.register_buffer(f"target_{pid}", target, persistent=False)
        self.register_buffer("cell_province_id", torch.tensor(cells["province_id"].to_numpy(), dtype=torch.long),
                             persistent=False)

    def forward(self, geocell_logits: dict, province_id: torch.Tensor, cell_id: torch.Tensor) -> dict:
        has_cell = cell_id >= 0
        if bool((self.cell_province_id[cell_id[has_cell]] != province_id[has_cell]).any()):
            raise ValueError("a sample's cell_id belongs to another province than its province_id; "
                             "rebuild assignments.csv with the same geocells")
        total, count = None, 0
        for pid, logits in geocell_logits.items():
            mask = has_cell & (province_id == pid)
            n = int(mask.sum())
            if n == 0:
                continue  # skipping keeps this head out of the graph: grad None, not zero
            target = getattr(self, f"target_{pid}")[cell_id[mask] - self.starts[pid]]  # (n, N_p)
            kl = F.kl_div(torch.log_softmax(logits[mask], -1), target, reduction="sum")
            total, count = kl if total is None else total + kl, count + n
        if total is None:
            return {"geocell": province_id.new_zeros((), dtype=torch.float32)}  # no sample had a cell
        return {"geocell": total / count}


class OffsetLoss(nn.Module):
    """Sum_i p_i * haversine(pred_i, truth) / km_scale, mean over samples (spec 000 §9.3).

    hypotheses="mixture": the inference set (top provinces x top cells), p_i detached;
    "true_cell": the true cell alone, weight 1 (spec 003 §9.3; samples with cell_id -1 skipped).
    """

    def __init__(self, km_scale: float = 100.0, top_provinces: int = 2, top_cells: int = 5,
                 hypotheses: str = "mixture"):
        super().__init__()
        if hypotheses not in ("mixture", "true_cell"):
            raise ValueError(f"hypotheses must be 'mixture' or 'true_cell', got {hypotheses!r}")
        self.km_scale, self.top_provinces, self.top_cells, self.hypotheses = km_scale, top_provinces, top_cells, hypotheses

    def forward(self, model, outputs: dict, cell_id: torch.Tensor, lat: torch.Tensor, lon: torch.Tensor) -> dict:
        """outputs: model.forward_features(...); cell_id, lat, lon (B,) -> {"offset": scalar}."""
        if self.hypotheses == "mixture":
            hyp = build_hypotheses(model, outputs, top_provinces=self.top_provinces, top_cells=self.top_cells)
            ids, weight = hyp["cell_id"], hyp["weight"]  # weight carries no gradient
        else:
            ids, weight = cell_id.unsqueeze(1), (cell_id >= 0).float().unsqueeze(1)
        hyp_lat, hyp_lon = hypothesis_points(model, outputs["fused"], ids)  # (B, H)
        dist = geo.haversine_km(hyp_lat, hyp_lon, lat.unsqueeze(1).float(), lon.unsqueeze(1).float())
        per_sample = (weight * dist).sum(1)
        n = (weight.sum(1) > 0).sum().clamp_min(1)
        return {"offset": per_sample.sum() / n / self.km_scale}


class AuxLoss(nn.Module):
    """Mean haversine of the aux head / km_scale: aux_latlon (B, 2), lat, lon (B,) -> {"aux": scalar}."""

    def __init__(self, km_scale: float = 100.0):
        super().__init__()
        self.km_scale = km_scale

    def forward(self, aux_latlon: torch.Tensor, lat: torch.Tensor, lon: torch.Tensor) -> dict:
        d = geo.haversine_km(aux_latlon[:, 0], aux_latlon[:, 1], lat.float(), lon.float())
        return {"aux": d.mean() / self.km_scale}


class ConceptLoss(nn.Module):
    """Cross-entropy of each concept head (docs/decisions/concepts.md), -1 targets (location without a value, or a
    class the training split never saw) ignored.

    concept_logits {concept: (B, C)}, targets {concept: (B,) long} -> {"concept": the mean over the
    concepts of their mean CE, "concept_<name>": each one}. A concept with no labelled sample in the
    batch gives 0 for its term and is left out of the mean (no NaN, no gradient).
    """

    def forward(self, concept_logits: dict, targets: dict) -> dict:
        terms, used = {}, []
        for name, logits in concept_logits.items():
            if name not in targets:
                raise KeyError(f"no target for the concept head {name!r}: the run's concepts.json lacks it")
            t = targets[name]
            if bool((t >= 0).any()):
                terms[f"concept_{name}"] = F.cross_entropy(logits, t, ignore_index=-1)
                used.append(terms[f"concept_{name}"])
            else:
                terms[f"concept_{name}"] = logits.sum() * 0.0
        total = torch.stack(used).mean() if used else next(iter(concept_logits.values())).sum() * 0.0
        return {"concept": total, **terms}


class GeopakLoss(nn.Module):
    """Total loss 0.5 L_province + 1.0 L_geocell + ramp * 1.0 L_offset + 0.1 L_aux (spec 000 §9.5).

    province_counts: training samples per province ({name: n} or 7 numbers in PROVINCES order).
    weights: overrides of DEFAULT_WEIGHTS (unknown keys are an error). concept_weight: the weight
    of the concept term (docs/decisions/concepts.md); 0 computes no concept term at all.
    """

    def __init__(self, cells: pd.DataFrame, province_counts, *, beta: float = 0.9995, weights: dict | None = None,
                 rampup_epochs: int = 5, top_provinces: int = 2, top_cells: int = 5, km_scale: float = 100.0,
                 tau_by_province: dict | None = None, offset_hypotheses: str = "mixture",
                 concept_weight: float = 0.0):
        super().__init__()
        if not concept_weight >= 0:
            raise ValueError(f"concept_weight must be >= 0, got {concept_weight}")
        self.concept_weight = float(concept_weight)
        self.concept = ConceptLoss()
        unknown = set(weights or {}) - set(DEFAULT_WEIGHTS)
        if unknown:
            raise KeyError(f"unknown loss weight keys {sorted(unknown)}; known: {sorted(DEFAULT_WEIGHTS)}")
        if km_scale <= 0:
            raise ValueError(f"km_scale must be > 0, got {km_scale}")
        self.weights = {**DEFAULT_WEIGHTS, **(weights or {})}
        self.rampup_epochs = rampup_epochs
        self.province = ProvinceLoss(effective_number_weights(province_count_vector(province_counts), beta))
        self.geocell = GeocellLoss(cells, tau_by_province)
        self.offset = OffsetLoss(km_scale, top_provinces, top_cells, offset_hypotheses)
        self.aux = AuxLoss(km_scale)

    def forward(self, model, outputs: dict, province_id: torch.Tensor, cell_id: torch.Tensor,
                lat: torch.Tensor, lon: torch.Tensor, epoch: int, concepts: dict | None = None) -> dict:
        """province_id, cell_id (B,) long; lat, lon (B,) degrees; epoch 1-based; concepts
        {concept: (B,) long targets} (needed when concept_weight > 0).

        Returns 0-d tensors total, province, geocell, offset, aux (unweighted terms) and
        offset_weight (= weights["offset"] * ramp-up, the multiplier actually applied); with
        concept_weight > 0 also concept and concept_<name> (ConceptLoss), concept_weight * concept
        being added to total.
        """
        terms = {**self.province(outputs["province_logits"], province_id),
                 **self.geocell(outputs["geocell_logits"], province_id, cell_id),
                 **self.offset(model, outputs, cell_id, lat, lon),
                 **self.aux(outputs["aux_latlon"], lat, lon)}
        w = dict(self.weights, offset=self.weights["offset"] * offset_rampup(epoch, self.rampup_epochs))
        total = sum(w[k] * terms[k] for k in DEFAULT_WEIGHTS)
        if self.concept_weight > 0:
            if "concept_logits" not in outputs or concepts is None:
                raise ValueError("concept_weight > 0 needs a model with concept heads and concept targets "
                                 "(the run's concepts.json)")
            terms.update(self.concept(outputs["concept_logits"], concepts))
            total = total + self.concept_weight * terms["concept"]
        return {"total": total, **terms, "offset_weight": terms["aux"].new_tensor(w["offset"])}
