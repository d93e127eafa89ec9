"""Mixture-of-hypotheses inference (spec 000 §8) and the ablation predictors.

Hypotheses: the top-2 provinces that have geocells x the top-5 cells of each, weighted
p_i = P(province | image) * P(cell | image, province), renormalised over the hypotheses.
Each hypothesis points at cell centre + clamped offset; the final point is their weighted mean
on the sphere. Decisions: docs/decisions/model.md.
"""

from __future__ import annotations

import numpy as np
import torch

from geopak_lib import geo


def cell_conditional_probs(model, outputs: dict) -> torch.Tensor:
    """P(cell | image, its province) for every cell: (B, N_total), each province block sums to 1.

    Cells are grouped by province in PROVINCES order, so the heads' softmaxes concatenate in order.
    """
    logits = outputs["geocell_logits"]
    return torch.cat([torch.softmax(logits[p], -1) for p in sorted(logits)], -1)


@torch.no_grad()
def build_hypotheses(model, outputs: dict, *, top_provinces: int = 2, top_cells: int = 5,
                     temperature: float = 1.0) -> dict:
    """Pick the hypotheses and their weights (no gradient: offsets never fight classification).

    Provinces without cells are skipped and the next-best province with cells takes the slot; a
    province with fewer than ``top_cells`` cells contributes all of them. Slots are padded.
    temperature: divides the province logits (fit with metrics.fit_temperature).
    Returns cell_id (B, H) long (-1 = padding), province_id (B, H) long (-1 = padding),
    weight (B, H) summing to 1 over each row, province_probs (B, 7); H = top_provinces * top_cells.
    """
    if top_provinces < 1 or top_cells < 1:
        raise ValueError(f"top_provinces and top_cells must be >= 1, got {top_provinces}, {top_cells}")
    province_probs = torch.softmax(outputs["province_logits"].detach() / temperature, -1)  # (B, 7)
    cond = cell_conditional_probs(model, outputs).detach()  # (B, N)
    batch, n_cells = cond.shape
    has_cells = model.province_cell_count > 0
    k_prov = min(top_provinces, int(has_cells.sum()))
    sel_prov = torch.where(has_cells, province_probs, -1.0).topk(k_prov, -1).indices  # (B, K)
    k_cell = min(top_cells, n_cells)
    ids, provs, weights = [], [], []
    for k in range(k_prov):
        in_prov = model.cell_province_id.unsqueeze(0) == sel_prov[:, k:k + 1]  # (B, N)
        val, idx = torch.where(in_prov, cond, -1.0).topk(k_cell, -1)  # (B, k_cell)
        ok = val >= 0  # false where the province has fewer cells than k_cell
        p_prov = province_probs.gather(1, sel_prov[:, k:k + 1])  # (B, 1)
        ids.append(torch.where(ok, idx, -1))
        provs.append(torch.where(ok, sel_prov[:, k:k + 1].expand_as(idx), -1))
        weights.append(torch.where(ok, p_prov * val, 0.0))
    pad = top_provinces * top_cells - k_prov * k_cell
    ids.append(cond.new_full((batch, pad), -1, dtype=torch.long))
    provs.append(cond.new_full((batch, pad), -1, dtype=torch.long))
    weights.append(cond.new_zeros((batch, pad)))
    weight = torch.cat(weights, -1)
    weight = weight / weight.sum(-1, keepdim=True).clamp_min(1e-30)
    return {"cell_id": torch.cat(ids, -1), "province_id": torch.cat(provs, -1), "weight": weight,
            "province_probs": province_probs}


def hypothesis_points(model, fused: torch.Tensor, cell_id: torch.Tensor):
    """Cell centre + clamped offset for each hypothesis: cell_id (B, H) -> lat, lon (B, H) degrees.

    Padding (-1) gives the centre of cell 0 (finite, so masked losses stay NaN-free).
    """
    off = model.offsets(fused, cell_id)  # (B, H, 2)
    safe = cell_id.clamp(min=0)
    return model.cell_lat[safe] + off[..., 0], model.cell_lon[safe] + off[..., 1]


def combine_hypotheses(lat, lon, weight):
    """Weighted mean on the sphere: lat, lon, weight (..., H) -> lat, lon (...,) degrees.

    Weighted sum of unit vectors, renormalised; zero-weight (padding) entries may be NaN.
    numpy or torch.
    """
    v = geo.to_unit_vectors(lat, lon)  # (..., H, 3)
    if isinstance(v, torch.Tensor):
        v = torch.where((weight > 0).unsqueeze(-1), v, torch.zeros_like(v))
    else:
        v = np.where((np.asarray(weight) > 0)[..., None], v, 0.0)
    return geo.from_unit_vectors((weight[..., None] * v).sum(-2))


def mixture_predict(model, outputs: dict, *, top_provinces: int = 2, top_cells: int = 5,
                    temperature: float = 1.0) -> dict:
    """The GEOPAK prediction (spec 000 §8).

    Returns lat, lon (B,) degrees; province_probs (B, 7); province_id (B,) = argmax province;
    confidence (B,) = its probability; hyp_lat, hyp_lon (B, H) (NaN = padding), hyp_weight (B, H),
    hyp_cell_id, hyp_province_id (B, H) (-1 = padding); spread_km (B,) = weighted mean distance
    of the hypotheses to the final point.
    """
    hyp = build_hypotheses(model, outputs, top_provinces=top_provinces, top_cells=top_cells, temperature=temperature)
    hyp_lat, hyp_lon = hypothesis_points(model, outputs["fused"], hyp["cell_id"])  # finite everywhere
    lat, lon = combine_hypotheses(hyp_lat, hyp_lon, hyp["weight"])
    dist = geo.haversine_km(hyp_lat, hyp_lon, lat.unsqueeze(-1), lon.unsqueeze(-1))
    spread = (hyp["weight"] * dist).sum(-1)  # padding has weight 0
    valid = hyp["cell_id"] >= 0
    hyp_lat, hyp_lon = torch.where(valid, hyp_lat, float("nan")), torch.where(valid, hyp_lon, float("nan"))
    conf, prov = hyp["province_probs"].max(-1)
    return {"lat": lat, "lon": lon, "province_probs": hyp["province_probs"], "province_id": prov,
            "confidence": conf, "hyp_lat": hyp_lat, "hyp_lon": hyp_lon, "hyp_weight": hyp["weight"],
            "hyp_cell_id": hyp["cell_id"], "hyp_province_id": hyp["province_id"], "spread_km": spread}


def argmax_predict(model, outputs: dict) -> dict:
    """Ablation: argmax province (among those with cells), its argmax cell, + offset.

    Returns lat, lon (B,) degrees, cell_id (B,), province_id (B,).
    """
    hyp = build_hypotheses(model, outputs, top_provinces=1, top_cells=1)
    cell_id = hyp["cell_id"][:, 0]
    lat, lon = hypothesis_points(model, outputs["fused"], cell_id.unsqueeze(1))
    return {"lat": lat[:, 0], "lon": lon[:, 0], "cell_id": cell_id, "province_id": hyp["province_id"][:, 0]}


def aux_predict(outputs: dict) -> dict:
    """Ablation: the auxiliary regression head alone. Returns lat, lon (B,) degrees."""
    return {"lat": outputs["aux_latlon"][:, 0], "lon": outputs["aux_latlon"][:, 1]}


@torch.no_grad()
def predict_batch(model, clip_feat: torch.Tensor, scene_feat: torch.Tensor, *, top_provinces: int = 2,
                  top_cells: int = 5, temperature: float = 1.0) -> dict:
    """Features -> numpy predictions: the mixture_predict keys plus alpha, argmax_lat/lon, aux_lat/lon."""
    was_training = model.training
    model.eval()
    try:
        out = model.forward_features(clip_feat, scene_feat)
        pred = mixture_predict(model, out, top_provinces=top_provinces, top_cells=top_cells, temperature=temperature)
        arg, aux = argmax_predict(model, out), aux_predict(out)
        pred.update(alpha=out["alpha"], argmax_lat=arg["lat"], argmax_lon=arg["lon"],
                    aux_lat=aux["lat"], aux_lon=aux["lon"])
    finally:
        model.train(was_training)
    return {k: v.detach().cpu().numpy() for k, v in pred.items()}


# --- outputs dicts: tensors, and geocell_logits as a dict of tensors ---------------------------

def outputs_to(outputs: dict, device) -> dict:
    """Move a model-outputs dict (tensors, and the geocell_logits dict of tensors) to ``device``."""
    return {k: ({p: t.to(device) for p, t in v.items()} if isinstance(v, dict) else v.to(device))
            for k, v in outputs.items()}


def cat_outputs(parts: list[dict]) -> dict:
    """Concatenate model-outputs dicts along the batch axis."""
    first = parts[0]
    return {k: ({p: torch.cat([o[k][p] for o in parts]) for p in first[k]} if isinstance(first[k], dict)
                else torch.cat([o[k] for o in parts])) for k in first}


def select_outputs(outputs: dict, index) -> dict:
    """Rows ``index`` of a model-outputs dict."""
    index = torch.as_tensor(np.asarray(index), dtype=torch.long)
    return {k: ({p: t[index] for p, t in v.items()} if isinstance(v, dict) else v[index]) for k, v in outputs.items()}
