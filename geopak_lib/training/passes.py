"""Passes of the model over rows, shared by training and evaluation: batches from the feature
cache (phases 0-1) or from images (phases 2-3), bf16 autocast, per-sample predictions (the mixture
and the true-cell diagnostic), epoch metrics for losses.csv and the selection score.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from geopak_lib.data.augment import ImageViewDataset, augment_for_province, collate_views, item_seed
from geopak_lib.training.checkpoints import CSV_COLUMNS
from geopak_lib.constants import PROVINCE_SHORT, PROVINCES
from geopak_lib.training.cache import encoder_input, view_size
from geopak_lib.model.inference import mixture_predict
from geopak_lib.metrics import error_km, per_class_accuracy, summarize_errors


def autocast_enabled(amp: str, device: torch.device) -> bool:
    """bf16 autocast: 'bf16' always, 'auto' on a CUDA device that supports it, 'off' never."""
    if amp == "auto":
        return device.type == "cuda" and torch.cuda.is_bf16_supported()
    return amp == "bf16"


def _float_outputs(out: dict) -> dict:
    """Outputs back to float32 so the losses (haversine, softmax) never run in bf16."""
    return {k: ({p: v.float() for p, v in t.items()} if isinstance(t, dict) else t.float())
            for k, t in out.items()}


def _batches(model, data: TrainData, row_batches, cfg: PhaseConfig, epoch: int, train: bool, device,
             positions=None):
    """Yield (rows (B,), inputs) where inputs feed _forward: cached features or encoder images.

    positions: each row's place in its global batch (default 0..B-1), which seeds its augmentation;
    distributed ranks holding slices of one batch pass theirs, so no two ranks draw the same view."""
    if cfg.source == "cache":
        rng = np.random.default_rng([cfg.seed, epoch, 7])  # view choice: deterministic per epoch
        for rows in row_batches:
            views = rng.integers(0, data.cache.views + 1, len(rows)) if train else 0
            yield rows, data.cache.gather(rows, views, device)
        return
    dataset = ImageViewDataset(data.table["image_path"].tolist(), view_size(model.clip_encoder, model.scene_encoder))
    prov = data.table["province"].to_numpy()
    if positions is None:
        positions = [range(len(rows)) for rows in row_batches]
    items = [[(int(r), augment_for_province(prov[r]) if train else "none", item_seed(cfg.seed, epoch, b, int(j)))
              for j, r in zip(pos, rows)] for b, (rows, pos) in enumerate(zip(row_batches, positions))]
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=items, num_workers=cfg.num_workers,
                                         collate_fn=collate_views)
    for rows, images in loader:
        images = images.to(device)
        yield rows.numpy(), (encoder_input(images, model.clip_encoder.preprocess),
                             encoder_input(images, model.scene_encoder.preprocess))


def _forward(model, cfg, inputs, device):
    with torch.autocast(device.type, torch.bfloat16, enabled=autocast_enabled(cfg.amp, device)):
        out = model.forward_features(*inputs) if cfg.source == "cache" else model(*inputs)
    return _float_outputs(out)


def _loss_terms(loss_fn, model, out, labels, cfg, epoch) -> dict:
    """Phase 0: the province term alone (nothing else is trained). Later: every term; the offset
    ramp-up runs only where cfg.offset_rampup (phase 1), later phases use the full weight."""
    if cfg.phase == 0:
        p = loss_fn.province(out["province_logits"], labels["province_id"])["province"]
        return {"total": p, "province": p}
    ramp_epoch = epoch if cfg.offset_rampup else max(epoch, loss_fn.rampup_epochs, 1)
    return loss_fn(model, out, labels["province_id"], labels["cell_id"], labels["lat"], labels["lon"], ramp_epoch)


@torch.no_grad()
def _predictions(model, out, rows, labels, cfg) -> dict:
    """Per-sample numpy columns: province pred, mixture (lat, lon), true-cell 'oracle' point."""
    res = {"row": np.asarray(rows), "province_pred": out["province_logits"].argmax(-1).cpu().numpy(),
           "alpha": out["alpha"].cpu().numpy()}
    if cfg.phase == 0:  # geocell and offset heads are untrained in phase 0: no positions
        return res
    pred = mixture_predict(model, out, cfg.top_provinces, cfg.top_cells)
    cid = labels["cell_id"]
    safe = cid.clamp(min=0)
    off = model.offsets(out["fused"], safe)
    has = (cid >= 0).cpu().numpy()
    o_lat = np.where(has, (model.cell_lat[safe] + off[:, 0]).cpu().numpy(), np.nan)
    o_lon = np.where(has, (model.cell_lon[safe] + off[:, 1]).cpu().numpy(), np.nan)
    return {**res, "pred_lat": pred["lat"].cpu().numpy(), "pred_lon": pred["lon"].cpu().numpy(),
            "confidence": pred["confidence"].cpu().numpy(), "spread_km": pred["spread_km"].cpu().numpy(),
            "oracle_lat": o_lat, "oracle_lon": o_lon}


class _Accumulator:
    """Batch-size-weighted loss means and per-sample prediction columns of one pass."""

    def __init__(self):
        self.sums, self.n, self.cols = {}, 0, []

    def add(self, terms: dict, preds: dict):
        b = len(preds["row"])
        for k, v in terms.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v) * b
        self.n += b
        self.cols.append(preds)

    def losses(self) -> dict:
        return {k: v / max(self.n, 1) for k, v in self.sums.items()}

    def frame(self, data: TrainData) -> pd.DataFrame:
        cols = {k: np.concatenate([c[k] for c in self.cols]) for k in self.cols[0]} if self.cols else {"row": []}
        df = pd.DataFrame(cols)
        t = data.table.iloc[df["row"].to_numpy(int)]
        for c in ("id", "province_id", "cell_id", "latitude", "longitude"):
            df[c] = t[c].to_numpy()
        if "pred_lat" in df:
            df["error_km"] = error_km(df["pred_lat"], df["pred_lon"], df["latitude"], df["longitude"])
            df["oracle_error_km"] = error_km(df["oracle_lat"], df["oracle_lon"], df["latitude"], df["longitude"])
        return df


def epoch_metrics(frame: pd.DataFrame, losses: dict) -> dict:
    """One losses.csv row (without epoch/split) from a pass's per-sample frame and loss means.
    Accuracies are fractions (metrics.py convention); balanced_acc averages the per-province
    recalls over the provinces present."""
    nan = float("nan")
    row = {f"loss_{k}": losses.get(k, nan) for k in ("total", "province", "geocell", "offset", "aux")}
    if "error_km" in frame:
        s = summarize_errors(frame["error_km"].to_numpy(float))
        row.update(median_error_km=s["median_km"], mean_error_km=s["mean_km"], p90_error_km=s["p90_km"],
                   oracle_median_km=float(np.nanmedian(frame["oracle_error_km"])) if frame["oracle_error_km"].notna().any() else nan)
    recall = per_class_accuracy(frame["province_id"].to_numpy(int), frame["province_pred"].to_numpy(int))
    row.update({f"{PROVINCE_SHORT[p]}_acc": float(a) for p, a in zip(PROVINCES, recall)})
    ok = frame["province_id"].to_numpy() == frame["province_pred"].to_numpy()
    row.update(province_acc=float(ok.mean()) if len(ok) else nan,
               balanced_acc=float(np.nanmean(recall)) if np.isfinite(recall).any() else nan,
               alpha_mean=float(frame["alpha"].mean()) if len(frame) else nan,
               offset_weight=losses.get("offset_weight", nan))
    return {c: row.get(c, nan) for c in CSV_COLUMNS[2:]}


def selection_score(phase: int, metrics: dict) -> float:
    """Lower is better. Phase 0: -balanced province accuracy; later: val median error of the mixture."""
    v = -metrics["balanced_acc"] if phase == 0 else metrics["median_error_km"]
    return float("inf") if v is None or not np.isfinite(v) else float(v)


def predict_rows(model, data: TrainData, rows, cfg: PhaseConfig, device, loss_fn=None, epoch: int = 1,
                 progress: bool = False):
    """Evaluate ``rows`` (clean views) -> (per-sample DataFrame, loss means; empty without loss_fn)."""
    model.eval()
    acc = _Accumulator()
    batches = [rows[s:s + cfg.eval_batch_size] for s in range(0, len(rows), cfg.eval_batch_size)]
    with torch.no_grad():
        for r, inputs in tqdm(_batches(model, data, batches, cfg, epoch, False, device), total=len(batches),
                              desc="eval", leave=False, disable=not progress):
            labels = data.labels(r, device)
            out = _forward(model, cfg, inputs, device)
            terms = _loss_terms(loss_fn, model, out, labels, cfg, epoch) if loss_fn is not None else {}
            acc.add(terms, _predictions(model, out, r, labels, cfg))
    return acc.frame(data), acc.losses()


def evaluate(model, data: TrainData, split: str = "test", source: str = "cache", batch_size: int = 256,
             device="cpu", top_provinces: int = 2, top_cells: int = 5, num_workers: int = 0,
             progress: bool = True) -> pd.DataFrame:
    """Per-sample predictions on ``split``: id, province_id, province_pred, alpha, confidence,
    pred_lat/lon, error_km, oracle (true cell + offset) lat/lon and error_km, spread_km, labels.
    source 'cache' (frozen encoders) or 'images' (encoders inside the model)."""
    from geopak_lib.training.trainer import PhaseConfig  # train imports this module; import here to avoid a cycle
    from geopak_lib.utils import pick_device

    device = pick_device(device)
    cfg = PhaseConfig(phase=1 if source == "cache" else 2, eval_batch_size=batch_size, top_provinces=top_provinces,
                      top_cells=top_cells, num_workers=num_workers, lr_clip=0, lr_scene=0)
    model.to(device)
    frame, _ = predict_rows(model, data, data.rows(split), cfg, device, progress=progress)
    return frame.drop(columns=["row"])
