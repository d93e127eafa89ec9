"""Trainer for phases 0-3 (spec 000 §10, spec 003): phases as config, per-group AdamW, warmup +
cosine schedule, bf16 autocast, province-balanced batches, per-epoch checkpoints, exact resume,
log.txt + losses.csv, and selection by the end-to-end mixture prediction.

Phases 0-1 run the heads on the frozen-feature cache; phases 2-3 read images (live augmentation)
and fine-tune the top of the encoders. Decisions and reasons: docs/decisions/training.md.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from geopak_lib.training.checkpoints import (CSV_COLUMNS, TrainLog, build_model_from_checkpoint, checkpoint_state, describe_epoch,  # noqa: F401
                          latest_epoch_checkpoint, load_checkpoint, prune_epoch_checkpoints, restore_rng,
                          save_checkpoint)
from geopak_lib.constants import NUM_PROVINCES
from geopak_lib.training.cache import baseline_errors, baseline_predictions  # noqa: F401  (re-exported for notebooks)
from geopak_lib.training.cache import channels_last
from geopak_lib.model.losses import GeopakLoss
from geopak_lib.training.sampler import SHARE_PRESETS, ProvinceBalancedSampler
from geopak_lib.training.passes import (_Accumulator, _batches, _forward, _loss_terms, _predictions, autocast_enabled,  # noqa: F401
                         epoch_metrics, evaluate, predict_rows, selection_score)

# Spec values per phase (000 §10, 003 §1.1); everything else is a PhaseConfig default.
PHASE_DEFAULTS = {
    0: dict(epochs=8, lr_heads=1e-3, shares="equal"),
    1: dict(epochs=30, lr_heads=1e-3, shares="spec003", offset_rampup=True),
    2: dict(epochs=30, lr_heads=5e-4, lr_clip=1e-5, lr_scene=5e-6, shares="equal"),
    3: dict(epochs=10, lr_heads=1e-4, lr_clip=5e-6, lr_scene=2e-6, clip_unfreeze=1.0, scene_unfreeze=1.0,
            shares="equal", keep_only_if_improves=True),
}
AMP_MODES = ("auto", "bf16", "off")


@dataclass
class PhaseConfig:
    """One training phase. lr_* are peak learning rates; warmup_frac of all steps warm up linearly,
    then cosine decay to min_lr_ratio * peak. early_stop_patience 0 = off. clip/scene_unfreeze:
    top fraction of each encoder trained (phases 2-3). amp: 'auto' (bf16 on CUDA), 'bf16', 'off'."""

    phase: int
    epochs: int = 1
    batch_size: int = 64
    batches_per_epoch: int = 1300
    lr_heads: float = 1e-3
    lr_clip: float = 0.0
    lr_scene: float = 0.0
    weight_decay: float = 1e-5
    warmup_frac: float = 0.05
    min_lr_ratio: float = 0.01
    grad_clip: float = 1.0
    early_stop_patience: int = 0
    clip_unfreeze: float = 0.3
    scene_unfreeze: float = 0.2
    shares: str = "equal"
    amp: str = "auto"
    offset_rampup: bool = False
    keep_only_if_improves: bool = False
    eval_batch_size: int = 256
    num_workers: int = 0
    top_provinces: int = 2
    top_cells: int = 5
    keep_last: int = 2
    seed: int = 0

    def __post_init__(self):
        def need(ok, msg):
            if not ok:
                raise ValueError(f"PhaseConfig(phase={self.phase}): {msg}")
        need(self.phase in (0, 1, 2, 3), "phase must be 0, 1, 2 or 3")
        for name in ("epochs", "batch_size", "batches_per_epoch", "eval_batch_size", "top_provinces",
                     "top_cells", "keep_last"):
            need(int(getattr(self, name)) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        need(self.lr_heads > 0 and self.lr_clip >= 0 and self.lr_scene >= 0, "learning rates must be >= 0")
        need(self.phase >= 2 or (self.lr_clip == 0 and self.lr_scene == 0),
             "phases 0-1 keep both encoders frozen: lr_clip and lr_scene must be 0")
        need(0 <= self.clip_unfreeze <= 1 and 0 <= self.scene_unfreeze <= 1, "unfreeze fractions lie in [0, 1]")
        need(0 <= self.warmup_frac < 1 and 0 <= self.min_lr_ratio <= 1, "warmup_frac in [0, 1), min_lr_ratio in [0, 1]")
        need(self.weight_decay >= 0 and self.grad_clip >= 0 and self.early_stop_patience >= 0,
             "weight_decay, grad_clip and early_stop_patience must be >= 0")
        need(self.amp in AMP_MODES, f"amp must be one of {AMP_MODES}")
        need(isinstance(self.shares, dict) or self.shares in SHARE_PRESETS, f"shares must be one of {SHARE_PRESETS}")

    @classmethod
    def for_phase(cls, phase: int, **overrides) -> "PhaseConfig":
        """The spec's settings for ``phase`` with ``overrides``; an unknown key is an error."""
        known = {f.name for f in fields(cls)}
        unknown = set(overrides) - known
        if unknown:
            raise KeyError(f"unknown PhaseConfig keys {sorted(unknown)}; known: {sorted(known)}")
        return cls(phase=phase, **{**PHASE_DEFAULTS.get(phase, {}), **overrides})

    @property
    def source(self) -> str:
        """'cache' (frozen encoders, phases 0-1) or 'images' (live augmentation, phases 2-3)."""
        return "cache" if self.phase <= 1 else "images"


@dataclass
class TrainData:
    """Labels for every manifest row (manifest order) and, for phases 0-1, the feature cache."""

    table: pd.DataFrame  # id, split, image_path, province, province_id, cell_id, latitude, longitude
    cache: object = None  # features.FeatureCache whose rows are table's rows

    def rows(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.table["split"].to_numpy() == split)

    def labels(self, rows, device) -> dict:
        """province_id, cell_id (B,) long; lat, lon (B,) float32 degrees."""
        t = self.table
        as_t = lambda col, dt: torch.as_tensor(t[col].to_numpy()[rows], dtype=dt, device=device)  # noqa: E731
        return {"province_id": as_t("province_id", torch.long), "cell_id": as_t("cell_id", torch.long),
                "lat": as_t("latitude", torch.float32), "lon": as_t("longitude", torch.float32)}


def make_data(manifest: pd.DataFrame, assignments: pd.DataFrame, cache=None) -> TrainData:
    """Join manifest.csv and assignments.csv (on id) into TrainData, checking they agree."""
    a = assignments.set_index(assignments["id"].astype(str))
    ids = manifest["id"].astype(str)
    missing = ids[~ids.isin(a.index)]
    if len(missing):
        raise ValueError(f"{len(missing)} manifest ids have no geocell assignment (e.g. {missing.iloc[0]!r}); "
                         "re-run 01_geocells on this manifest")
    table = manifest.reset_index(drop=True).copy()
    table["cell_id"] = a.loc[ids, "cell_id"].to_numpy(int)
    bad = a.loc[ids, "province_id"].to_numpy(int) != table["province_id"].to_numpy(int)
    if bad.any():
        raise ValueError(f"province_id differs between manifest and assignments for id {ids[bad].iloc[0]!r}")
    if cache is not None and not np.array_equal(cache.ids.astype(str), ids.to_numpy()):
        raise ValueError("feature cache rows do not match the manifest; rebuild it from this manifest")
    return TrainData(table, cache)


def make_loss(model, data: TrainData, **kwargs) -> GeopakLoss:
    """GeopakLoss on the model's cells with the training split's province counts."""
    counts = np.bincount(data.table["province_id"].to_numpy(int)[data.rows("train")], minlength=NUM_PROVINCES)
    return GeopakLoss(model.cells, counts, **kwargs)


def configure_trainable(model, cfg: PhaseConfig) -> dict:
    """Set requires_grad per phase; return {'heads'|'clip'|'scene': [trainable params]}.

    0: projections, fusion gate, province head. 1: every head and embedding. 2-3: those plus the
    top clip_unfreeze / scene_unfreeze of each encoder (encoders.set_trainable_top_fraction).
    """
    encoders = {"clip": model.clip_encoder, "scene": model.scene_encoder}
    model.requires_grad_(False)
    heads = ("clip_proj", "scene_proj", "fusion", "province_head") if cfg.phase == 0 else None
    for name, module in model.named_children():
        if name not in ("clip_encoder", "scene_encoder") and (heads is None or name in heads):
            module.requires_grad_(True)
    if cfg.phase >= 2:
        if any(e is None for e in encoders.values()):
            raise ValueError(f"phase {cfg.phase} fine-tunes the encoders: build the model with both encoders")
        from geopak_lib.model.encoders import set_trainable_top_fraction

        set_trainable_top_fraction(model.clip_encoder, cfg.clip_unfreeze)
        set_trainable_top_fraction(model.scene_encoder, cfg.scene_unfreeze)
    enc_ids = {k: {id(p) for p in e.parameters()} if e is not None else set() for k, e in encoders.items()}
    groups = {"heads": [], "clip": [], "scene": []}
    for p in model.parameters():
        if p.requires_grad:
            key = next((k for k, s in enc_ids.items() if id(p) in s), "heads")
            groups[key].append(p)
    return groups


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, min_ratio: float) -> float:
    """LR multiplier: linear warmup (step+1)/warmup, then cosine from 1 to min_ratio at total."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def make_optimizer(groups: dict, cfg: PhaseConfig):
    """AdamW with one group per part (name, lr); a part with lr 0 or no trainable params is left out."""
    lrs = {"heads": cfg.lr_heads, "clip": cfg.lr_clip, "scene": cfg.lr_scene}
    param_groups = [{"params": ps, "lr": lrs[k], "name": k} for k, ps in groups.items() if ps and lrs[k] > 0]
    for k, ps in groups.items():
        if ps and lrs[k] == 0:
            for p in ps:
                p.requires_grad_(False)  # lr 0 means frozen: no wasted backward
    # foreach: one kernel per op over all tensors; on CPU torch defaults to a loop over tensors
    opt = torch.optim.AdamW(param_groups, weight_decay=cfg.weight_decay, foreach=True)
    total = cfg.epochs * cfg.batches_per_epoch
    warm = int(round(cfg.warmup_frac * total))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, total, warm, cfg.min_lr_ratio))
    return opt, sched


@dataclass
class TrainResult:
    """What train_phase returns. kept: False only when keep_only_if_improves found no epoch better
    than the starting weights (epoch 0), in which case best.pt holds the starting weights."""

    history: pd.DataFrame
    best_path: Path
    best_metrics: dict
    best_epoch: int
    kept: bool
    stopped_early: bool


# PhaseConfig fields that may change between an interrupted run and its resumption.
RESUME_FREE = {"epochs", "early_stop_patience", "num_workers", "eval_batch_size", "keep_last"}


def _check_resume(state: dict, cfg: dict, path) -> None:
    changed = {k: (state["phase_config"].get(k), v) for k, v in cfg.items()
               if k not in RESUME_FREE and state["phase_config"].get(k) != v}
    if changed:
        raise ValueError(f"cannot resume from {path}: PhaseConfig changed {changed} (old, new); "
                         "pass resume=False to start this phase afresh, or use another run_dir")


def _train_epoch(model, loss_fn, data: TrainData, cfg: PhaseConfig, epoch: int, opt, sched, device,
                 progress: bool) -> dict:
    """One epoch of province-balanced batches; returns the train row of losses.csv."""
    train_rows = data.rows("train")
    sampler = ProvinceBalancedSampler(data.table["province_id"].to_numpy(int)[train_rows], cfg.batch_size,
                                      cfg.batches_per_epoch, cfg.shares, cfg.seed)
    sampler.set_epoch(epoch)
    row_batches = [train_rows[np.asarray(b)] for b in sampler]
    model.train()
    for enc in (model.clip_encoder, model.scene_encoder):
        if enc is not None:
            # Fixed normalisation statistics even where the top is trained: small, augmented,
            # province-balanced batches shift batch-norm statistics, and the heads (trained on
            # features computed with the running statistics) then see other features. Measured on
            # the demo: with train-mode batch norm, phase 2's first epoch took the val median
            # from 59 km to 353 km; docs/decisions/training.md.
            enc.eval()
    params = [p for g in opt.param_groups for p in g["params"]]
    acc = _Accumulator()
    bar = tqdm(_batches(model, data, row_batches, cfg, epoch, True, device), total=len(row_batches),
               desc=f"phase {cfg.phase} epoch {epoch}/{cfg.epochs}", leave=False, disable=not progress)
    for rows, inputs in bar:
        labels = data.labels(rows, device)
        out = _forward(model, cfg, inputs, device)
        terms = _loss_terms(loss_fn, model, out, labels, cfg, epoch)
        opt.zero_grad(set_to_none=True)
        terms["total"].backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        sched.step()
        terms = {k: float(v.detach()) for k, v in terms.items()}
        acc.add(terms, _predictions(model, {k: v for k, v in out.items()}, rows, labels, cfg))
        bar.set_postfix({("w_off" if k == "offset_weight" else k[:4]): f"{v:.3f}" for k, v in terms.items()})
    return epoch_metrics(acc.frame(data), acc.losses())


def train_phase(cfg: PhaseConfig, model, data: TrainData, run_dir, loss_fn=None, resume: bool = True,
                progress: bool = True, device="auto", params: dict | None = None, callback=None) -> TrainResult:
    """Train one phase; checkpoints, log.txt and losses.csv go to run_dir/checkpoints/phase{p}/.

    resume: continue from the newest epoch_{n}.pt there (a finished phase returns at once);
    False, or no epoch file to resume from, deletes that folder first. The best epoch (selection_score on val) is saved as best.pt
    and loaded into ``model`` before returning. callback(epoch, val_row) runs after each epoch.
    params: the profile's parameters, stored in every checkpoint.
    """
    from geopak_lib.utils import pick_device

    device = pick_device(device)
    if cfg.source == "cache" and data.cache is None:
        raise ValueError(f"phase {cfg.phase} trains on the feature cache: make_data(..., cache=FeatureCache...)")
    val_rows = data.rows("val")
    if len(data.rows("train")) == 0 or len(val_rows) == 0:
        raise ValueError("training needs rows with split 'train' and 'val' in the manifest")
    model.to(device)
    if cfg.source != "cache":  # encoders run every step: conv encoders train faster channels-last
        channels_last(model.clip_encoder, model.scene_encoder)
    loss_fn = (loss_fn or make_loss(model, data, top_provinces=cfg.top_provinces, top_cells=cfg.top_cells)).to(device)
    opt, sched = make_optimizer(configure_trainable(model, cfg), cfg)
    ckpt_dir = Path(run_dir) / "checkpoints" / f"phase{cfg.phase}"
    latest = latest_epoch_checkpoint(ckpt_dir) if resume and ckpt_dir.exists() else None
    if latest is None and ckpt_dir.exists():
        shutil.rmtree(ckpt_dir)  # a fresh start must not inherit a stale best.pt or losses.csv
    log, best_path, cfg_dict = TrainLog(ckpt_dir, tqdm.write if progress else None), ckpt_dir / "best.pt", asdict(cfg)
    history, best, since_best, stopped, start = [], {"epoch": None, "score": math.inf, "metrics": {}}, 0, False, 1

    def state(epoch, metrics):
        return checkpoint_state(model, opt, sched, cfg_dict, epoch, metrics, history, best, since_best, stopped,
                                {"epoch": epoch, "seed": cfg.seed}, params)

    if latest is not None:
        ckpt = load_checkpoint(latest)
        _check_resume(ckpt, cfg_dict, latest)
        model.load_state_dict(ckpt["model_state"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        restore_rng(ckpt["rng"])
        history, best, since_best, stopped = ckpt["history"], ckpt["best"], ckpt["epochs_since_best"], ckpt["stopped"]
        start = ckpt["epoch"] + 1
        log.line(f"resumed phase {cfg.phase} from {latest.name}")
    else:
        log.line(f"phase {cfg.phase} start: {cfg_dict}")
        if cfg.keep_only_if_improves:  # the starting weights are the result to beat
            frame, losses = predict_rows(model, data, val_rows, cfg, device, loss_fn, 1, progress)
            row = {"epoch": 0, "split": "val", **epoch_metrics(frame, losses)}
            history.append(row)
            best = {"epoch": 0, "score": selection_score(cfg.phase, row), "metrics": row}
            save_checkpoint(state(0, row), best_path)
            log.write_csv(history)
    for epoch in range(start, cfg.epochs + 1):
        if stopped:
            break
        t0 = time.time()
        train_row = _train_epoch(model, loss_fn, data, cfg, epoch, opt, sched, device, progress)
        frame, losses = predict_rows(model, data, val_rows, cfg, device, loss_fn, epoch, progress)
        extra = {"lr": opt.param_groups[0]["lr"], "seconds": round(time.time() - t0, 2)}
        rows = [{"epoch": epoch, "split": s, **r, **extra}
                for s, r in (("train", train_row), ("val", epoch_metrics(frame, losses)))]
        history = history + rows
        score, improved = selection_score(cfg.phase, rows[1]), False
        if score < best["score"]:
            best, since_best, improved = {"epoch": epoch, "score": score, "metrics": rows[1]}, 0, True
        else:
            since_best += 1
        stopped = cfg.early_stop_patience > 0 and since_best >= cfg.early_stop_patience
        ckpt = state(epoch, rows[1])
        if improved:
            save_checkpoint(ckpt, best_path)
        save_checkpoint(ckpt, ckpt_dir / f"epoch_{epoch}.pt")
        prune_epoch_checkpoints(ckpt_dir, cfg.keep_last)
        log.write_csv(history)
        log.line(describe_epoch(epoch, cfg.epochs, rows[0], rows[1]) + ("  [best]" if improved else "")
                 + ("\n   early stop" if stopped else ""))
        if callback is not None:
            callback(epoch, rows[1])
    if not best_path.exists():
        raise RuntimeError(f"phase {cfg.phase}: no epoch gave a finite validation score, so no best.pt; "
                           "check the val split and the loss values in losses.csv")
    model.load_state_dict(load_checkpoint(best_path)["model_state"])
    kept = best["epoch"] != 0
    log.line(f"phase {cfg.phase} best: epoch {best['epoch']} (score {best['score']:.4f})"
             + ("" if kept else "; no epoch beat the starting weights, which are kept"))
    return TrainResult(pd.DataFrame(history, columns=CSV_COLUMNS), best_path, best["metrics"], best["epoch"],
                       kept, stopped)
