"""Passes of the model over rows, shared by training and evaluation: batches from the feature
cache (phases 0-1) or from images (phases 2-3), bf16 autocast, per-sample predictions (the mixture
and the true-cell diagnostic) and epoch metrics for losses.csv.

How a pass reads and runs is a :class:`PassSettings`; ``PhaseConfig.pass_settings()`` makes the
one of a training phase, and :func:`evaluate` builds its own, so nothing here knows the trainer.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from dataclasses import dataclass

from tqdm.auto import tqdm

from geopak_lib.data.augment import ImageViewDataset, augment_for_province, collate_views, item_seed
from geopak_lib.training.checkpoints import CSV_COLUMNS
from geopak_lib.constants import PROVINCE_SHORT, PROVINCES
from geopak_lib.training.cache import encoder_input, view_size
from geopak_lib.model.inference import cat_outputs, mixture_predict, outputs_to
from geopak_lib.metrics import error_km, per_class_accuracy, summarize_errors

SOURCES = ("cache", "images", "clip_cache")


@dataclass(frozen=True)
class PassSettings:
    """Where a pass's inputs come from and how it runs.

    source: 'cache' (frozen features; the model's heads only), 'images' (decoded, augmented when
    training, through the encoders) or, for evaluation only, 'clip_cache' (the CLIP slot's
    features from the cache, while phases 2-3 keep that encoder frozen; the images through the
    scene encoder). phase 0 trains and predicts the province only (the geocell and
    offset heads are untrained then). offset_rampup: the offset loss ramps up over the first
    epochs (phase 1); otherwise it has its full weight. seed: view choice and augmentation."""

    source: str = "cache"
    phase: int = 1
    amp: str = "auto"
    seed: int = 0
    num_workers: int = 0
    batch_size: int = 256
    top_provinces: int = 2
    top_cells: int = 5
    offset_rampup: bool = False

    def __post_init__(self):
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {self.source!r}")


def autocast_enabled(amp: str, device: torch.device) -> bool:
    """bf16 autocast: 'bf16' always, 'auto' on a CUDA device that supports it, 'off' never."""
    if amp == "auto":
        return device.type == "cuda" and torch.cuda.is_bf16_supported()
    return amp == "bf16"


def float_outputs(out: dict) -> dict:
    """Outputs back to float32 so the losses (haversine, softmax) never run in bf16."""
    return {k: ({p: v.float() for p, v in t.items()} if isinstance(t, dict) else t.float())
            for k, t in out.items()}


def batches(model, data, row_batches, cfg: PassSettings, *, epoch: int, train: bool, device, positions=None):
    """Yield (rows (B,), inputs) where inputs feed :func:`forward`: cached features or encoder images.
    data: a TrainData (table, labels and, for source 'cache', the feature cache).

    positions: each row's place in its global batch (default 0..B-1), which seeds its augmentation;
    distributed ranks holding slices of one batch pass theirs, so no two ranks draw the same view."""
    if cfg.source == "cache":
        rng = np.random.default_rng([cfg.seed, epoch, 7])  # view choice: deterministic per epoch
        for rows in row_batches:
            views = rng.integers(0, data.cache.views + 1, len(rows)) if train else 0
            yield rows, data.cache.gather(rows, views, device)
        return
    if cfg.source == "clip_cache" and train:
        raise ValueError("source 'clip_cache' is for evaluation: a training view is augmented afresh, so its "
                         "CLIP features are not in the cache")
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
        clip_in = data.cache.gather(rows.numpy(), 0, device)[0] if cfg.source == "clip_cache" else \
            encoder_input(images, model.clip_encoder.preprocess)
        yield rows.numpy(), (clip_in, encoder_input(images, model.scene_encoder.preprocess))


def forward(model, cfg: PassSettings, inputs, device) -> dict:
    """Model outputs in float32 (bf16 autocast inside where cfg.amp allows)."""
    with torch.autocast(device.type, torch.bfloat16, enabled=autocast_enabled(cfg.amp, device)):
        if cfg.source == "cache":
            out = model.forward_features(*inputs)
        elif cfg.source == "clip_cache":
            out = model.forward_features(inputs[0], model.scene_encoder(inputs[1]))
        else:
            out = model(*inputs)
    return float_outputs(out)


def loss_terms(loss_fn, model, out, labels, *, cfg: PassSettings, epoch: int) -> dict:
    """Phase 0: the province term alone (nothing else is trained). Later: every term; the offset
    ramp-up runs only where cfg.offset_rampup (phase 1), later phases use the full weight."""
    if cfg.phase == 0:
        p = loss_fn.province(out["province_logits"], labels["province_id"])["province"]
        return {"total": p, "province": p}
    ramp_epoch = epoch if cfg.offset_rampup else max(epoch, loss_fn.rampup_epochs, 1)
    return loss_fn(model, out, labels["province_id"], labels["cell_id"], labels["lat"], labels["lon"], ramp_epoch,
                   labels.get("concepts"))


@torch.no_grad()
def predictions(model, out, rows, labels, *, cfg: PassSettings) -> dict:
    """Per-sample numpy columns: province pred, mixture (lat, lon), and the true cell's point
    (its centre + the offset head's answer there; a diagnostic, since it uses the label)."""
    res = {"row": np.asarray(rows), "province_pred": out["province_logits"].argmax(-1).cpu().numpy(),
           "alpha": out["alpha"].cpu().numpy()}
    for name, logits in out.get("concept_logits", {}).items():  # class index of each concept head
        res[f"{name}_pred"] = logits.argmax(-1).cpu().numpy()
    if cfg.phase == 0:  # geocell and offset heads are untrained in phase 0: no positions
        return res
    pred = mixture_predict(model, out, top_provinces=cfg.top_provinces, top_cells=cfg.top_cells)
    cid = labels["cell_id"]
    safe = cid.clamp(min=0)
    off = model.offsets(out["fused"], safe)
    has = (cid >= 0).cpu().numpy()
    tc_lat = np.where(has, (model.cell_lat[safe] + off[:, 0]).cpu().numpy(), np.nan)
    tc_lon = np.where(has, (model.cell_lon[safe] + off[:, 1]).cpu().numpy(), np.nan)
    return {**res, "pred_lat": pred["lat"].cpu().numpy(), "pred_lon": pred["lon"].cpu().numpy(),
            "confidence": pred["confidence"].cpu().numpy(), "spread_km": pred["spread_km"].cpu().numpy(),
            "true_cell_lat": tc_lat, "true_cell_lon": tc_lon}


class Accumulator:
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

    def frame(self, data) -> pd.DataFrame:
        cols = {k: np.concatenate([c[k] for c in self.cols]) for k in self.cols[0]} if self.cols else {"row": []}
        df = pd.DataFrame(cols)
        t = data.table.iloc[df["row"].to_numpy(int)]
        for c in ("id", "province_id", "cell_id", "latitude", "longitude",
                  *[f"concept_{k}" for k in getattr(data, "concept_names", ())]):
            df[c] = t[c].to_numpy()
        if "pred_lat" in df:
            df["error_km"] = error_km(df["pred_lat"], df["pred_lon"], df["latitude"], df["longitude"])
            df["true_cell_error_km"] = error_km(df["true_cell_lat"], df["true_cell_lon"], df["latitude"], df["longitude"])
        return df


def epoch_metrics(frame: pd.DataFrame, losses: dict) -> dict:
    """One losses.csv row (without epoch/split) from a pass's per-sample frame and loss means.
    Accuracies are fractions (metrics.py convention); balanced_acc averages the per-province
    recalls over the provinces present."""
    nan = float("nan")
    row = {f"loss_{k}": losses.get(k, nan) for k in ("total", "province", "geocell", "offset", "aux", "concept")}
    accs = [float((frame[f"{k[8:]}_pred"] == frame[k])[frame[k] >= 0].mean()) for k in frame
            if k.startswith("concept_") and f"{k[8:]}_pred" in frame and (frame[k] >= 0).any()]
    row["concept_acc"] = float(np.mean(accs)) if accs else nan  # mean over the concepts with targets
    if "error_km" in frame:
        s = summarize_errors(frame["error_km"].to_numpy(float))
        row.update(median_error_km=s["median_km"], mean_error_km=s["mean_km"], p90_error_km=s["p90_km"],
                   true_cell_median_km=float(np.nanmedian(frame["true_cell_error_km"])) if frame["true_cell_error_km"].notna().any() else nan)
    recall = per_class_accuracy(frame["province_id"].to_numpy(int), frame["province_pred"].to_numpy(int))
    row.update({f"{PROVINCE_SHORT[p]}_acc": float(a) for p, a in zip(PROVINCES, recall)})
    ok = frame["province_id"].to_numpy() == frame["province_pred"].to_numpy()
    row.update(province_acc=float(ok.mean()) if len(ok) else nan,
               balanced_acc=float(np.nanmean(recall)) if np.isfinite(recall).any() else nan,
               alpha_mean=float(frame["alpha"].mean()) if len(frame) else nan,
               offset_weight=losses.get("offset_weight", nan))
    return {c: row.get(c, nan) for c in CSV_COLUMNS[2:]}


def predict_rows(model, data, rows, cfg: PassSettings, *, device, loss_fn=None, epoch: int = 1,
                 progress: bool = False):
    """Evaluate ``rows`` (clean views) -> (per-sample DataFrame, loss means; empty without loss_fn)."""
    model.eval()
    acc = Accumulator()
    row_batches = [rows[s:s + cfg.batch_size] for s in range(0, len(rows), cfg.batch_size)]
    with torch.no_grad():
        for r, inputs in tqdm(batches(model, data, row_batches, cfg, epoch=epoch, train=False, device=device),
                              total=len(row_batches),
                              desc="eval", leave=False, disable=not progress):
            labels = data.labels(r, device)
            out = forward(model, cfg, inputs, device)
            terms = loss_terms(loss_fn, model, out, labels, cfg=cfg, epoch=epoch) if loss_fn is not None else {}
            acc.add(terms, predictions(model, out, r, labels, cfg=cfg))
    return acc.frame(data), acc.losses()


@torch.no_grad()
def model_outputs(model, data, rows, cfg: PassSettings, *, device, progress: bool = False) -> dict:
    """Model outputs (on CPU) for ``rows`` of data.table, clean views, in row order."""
    model.eval()
    row_batches = [rows[s:s + cfg.batch_size] for s in range(0, len(rows), cfg.batch_size)]
    parts = [outputs_to(forward(model, cfg, inputs, device), "cpu")
             for _, inputs in tqdm(batches(model, data, row_batches, cfg, epoch=1, train=False, device=device),
                                   total=len(row_batches),
                                   desc="outputs", leave=False, disable=not progress)]
    return cat_outputs(parts)
