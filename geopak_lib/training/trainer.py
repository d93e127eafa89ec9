"""Trainer for phases 0-3 (spec 000 §10, spec 003): province-balanced batches, per-epoch
checkpoints, exact resume, log.txt + losses.csv, and selection of the best epoch by the end-to-end
mixture prediction on validation.

Every phase first evaluates the weights it starts from (epoch 0 of losses.csv): a phase that
starts from the previous phase's best checkpoint must reproduce that phase's validation figures
there (the phase-start check), and those weights stay a candidate for best, so a phase never hands
on something worse than it received. Phases 0-1 run the heads on the frozen-feature cache; phases
2-3 read images (live augmentation) and fine-tune the top of the encoders. Decisions and reasons:
docs/decisions/training.md.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from geopak_lib.data.rundir import RunDir
from geopak_lib.data.stamps import input_stamps
from geopak_lib.training.cache import channels_last
from geopak_lib.training.checkpoints import (CSV_COLUMNS, TrainLog, checkpoint_state, describe_epoch,
                                             latest_epoch_checkpoint, load_checkpoint, prune_epoch_checkpoints,
                                             restore_rng, save_checkpoint)
from geopak_lib.training.config import PhaseConfig, carry_optimizer_state, configure_trainable, make_optimizer
from geopak_lib.training.inputs import TrainData, make_loss
from geopak_lib.training.passes import (Accumulator, batches, epoch_metrics, forward, loss_terms, predict_rows,
                                        predictions)
from geopak_lib.training.sampler import ProvinceBalancedSampler
from geopak_lib.training.selection import phase_start_check, selection_score
from geopak_lib.utils import atomic_write_bytes, pick_device, state_sha256


@dataclass
class TrainResult:
    """What train_phase returns. kept: False when no epoch beat the starting weights (epoch 0),
    in which case best.pt holds the starting weights."""

    history: pd.DataFrame
    best_path: Path
    best_metrics: dict
    best_epoch: int
    kept: bool
    stopped_early: bool


# PhaseConfig fields that may change between an interrupted run and its resumption.
RESUME_FREE = {"epochs", "early_stop_patience", "num_workers", "eval_batch_size", "keep_last"}


@dataclass
class PhaseProgress:
    """The trainer's running record: losses.csv rows so far, the best epoch, early-stop count."""

    history: list = field(default_factory=list)
    best: dict = field(default_factory=lambda: {"epoch": None, "score": math.inf, "metrics": {}})
    since_best: int = 0
    stopped: bool = False

    def add(self, phase: int, epoch: int, val_row: dict, patience: int) -> bool:
        """Record epoch's val row; -> True when it is the new best."""
        score = selection_score(phase, val_row)
        if score < self.best["score"]:
            self.best, self.since_best = {"epoch": epoch, "score": score, "metrics": val_row}, 0
            return True
        self.since_best += 1
        self.stopped = patience > 0 and self.since_best >= patience
        return False


class NonFiniteLoss(RuntimeError):
    """A loss went NaN or infinite: the phase stops and the epoch is never saved, as best or otherwise."""


def _same_tensors(saved: dict, own: dict) -> bool:
    """The same parameter names with the same shapes: a saved state the model can resume from."""
    return saved.keys() == own.keys() and all(tuple(saved[k].shape) == tuple(own[k].shape) for k in own)


def _check_resume(state: dict, cfg: dict, path) -> None:
    changed = {k: (state["phase_config"].get(k), v) for k, v in cfg.items()
               if k not in RESUME_FREE and state["phase_config"].get(k) != v}
    if changed:
        raise ValueError(f"cannot resume from {path}: PhaseConfig changed {changed} (old, new); "
                         "pass resume=False to start this phase afresh, or use another run_dir")


def train_epoch(model, loss_fn, data: TrainData, cfg: PhaseConfig, *, epoch: int, opt, sched, device,
                progress: bool = False, batch_source=batches) -> dict:
    """One epoch of province-balanced batches; returns the train row of losses.csv. batch_source:
    passes.batches, or one with its signature (benchmarks time the step without the data path)."""
    passes = cfg.pass_settings()
    train_rows = data.rows("train")
    sampler = ProvinceBalancedSampler(data.table["province_id"].to_numpy(int)[train_rows], cfg.batch_size,
                                      cfg.batches_per_epoch, shares=cfg.shares, seed=cfg.seed)
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
    acc = Accumulator()
    bar = tqdm(batch_source(model, data, row_batches, passes, epoch=epoch, train=True, device=device),
               total=len(row_batches),
               desc=f"phase {cfg.phase} epoch {epoch}/{cfg.epochs}", leave=False, disable=not progress)
    for rows, inputs in bar:
        labels = data.labels(rows, device)
        out = forward(model, passes, inputs, device)
        terms = loss_terms(loss_fn, model, out, labels, cfg=passes, epoch=epoch)
        if not bool(torch.isfinite(terms["total"].detach())):
            # Stop before the step: one NaN gradient poisons every weight, and best.pt must never hold it.
            raise NonFiniteLoss(f"phase {cfg.phase} epoch {epoch}: the training loss is "
                                f"{float(terms['total'].detach())} after {acc.n} samples; nothing from this "
                                f"epoch is saved (lower lr, check the labels; docs/decisions/sharing.md)")
        opt.zero_grad(set_to_none=True)
        terms["total"].backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        sched.step()
        terms = {k: float(v.detach()) for k, v in terms.items()}
        acc.add(terms, predictions(model, out, rows, labels, cfg=passes))
        bar.set_postfix({("w_off" if k == "offset_weight" else k[:4]): f"{v:.3f}" for k, v in terms.items()})
    return epoch_metrics(acc.frame(data), acc.losses())


VAL_ERRORS = "val_errors.csv"  # beside best.pt: its per-image validation errors, for the final-model rule


def validation_row(model, data: TrainData, cfg: PhaseConfig, device, *, loss_fn, epoch: int,
                   progress: bool = False) -> tuple[dict, pd.DataFrame]:
    """(the val row of losses.csv, the per-image frame) for the model as it is now (clean views, no step)."""
    frame, losses = predict_rows(model, data, data.rows("val"), cfg.pass_settings(), device=device, loss_fn=loss_fn,
                                 epoch=max(epoch, 1), progress=progress)
    return epoch_metrics(frame, losses), frame


def save_val_errors(ckpt_dir: Path, frame: pd.DataFrame) -> None:
    """Per-image validation errors (id, error_km) of the epoch just saved as best.pt (phases 1-3)."""
    if "error_km" in frame:
        atomic_write_bytes(Path(ckpt_dir) / VAL_ERRORS, frame[["id", "error_km"]].to_csv(index=False).encode())


def _setup(cfg: PhaseConfig, model, data: TrainData, loss_fn, device):
    if cfg.source == "cache" and data.cache is None:
        raise ValueError(f"phase {cfg.phase} trains on the feature cache: make_data(..., cache=FeatureCache...)")
    if len(data.rows("train")) == 0 or len(data.rows("val")) == 0:
        raise ValueError("training needs rows with split 'train' and 'val' in the manifest")
    model.to(device)
    if cfg.source != "cache":  # encoders run every step: conv encoders train faster channels-last
        channels_last(model.clip_encoder, model.scene_encoder)
    loss_fn = (loss_fn or make_loss(model, data, top_provinces=cfg.top_provinces, top_cells=cfg.top_cells)).to(device)
    opt, sched = make_optimizer(configure_trainable(model, cfg), cfg)
    return loss_fn, opt, sched


def train_phase(cfg: PhaseConfig, model, data: TrainData, run_dir, *, loss_fn=None, resume: bool = True,
                progress: bool = True, device="auto", params: dict | None = None, callback=None,
                start: dict | None = None, save_epochs: bool = True) -> TrainResult:
    """Train one phase; checkpoints, log.txt and losses.csv go to run_dir/checkpoints/phase{p}/.

    start: the checkpoint (dict) whose weights ``model`` holds, normally the previous phase's
    best.pt; with cfg.carry_optimizer its AdamW moments carry over to the parameters both phases
    train. resume: continue from the newest epoch_{n}.pt there (a finished phase returns at once)
    when it grew from this very ``start`` (each checkpoint records the start weights' sha256);
    False, no epoch file to resume from, or epochs grown from other start weights (the earlier
    phase was trained again) delete that folder first. Epoch 0 evaluates the
    starting weights; the best epoch (selection_score on val, epoch 0 included) is saved as best.pt
    and loaded into ``model`` before returning. callback(epoch, val_row) runs after each epoch.
    params: the profile's parameters, stored in every checkpoint. save_epochs: False writes only
    best.pt, no epoch files (a run nobody resumes, such as a concept-ablation variant: each file
    of a phase-1 model with its encoders is ~130 MB, ~0.5 s to write on the demo).
    """
    device = pick_device(device)
    loss_fn, opt, sched = _setup(cfg, model, data, loss_fn, device)
    ckpt_dir = RunDir(run_dir).phase_dir(cfg.phase)
    latest = latest_epoch_checkpoint(ckpt_dir) if resume and ckpt_dir.exists() else None
    start_sha = state_sha256(start["model_state"]) if start and "model_state" in start else None
    input_sha = input_stamps(run_dir)  # what this phase trains on; load_checkpoint compares it (data/stamps.py)
    ckpt = load_checkpoint(latest) if latest is not None else None
    stale = ckpt is not None and ckpt.get("start_sha256") != start_sha
    reshaped = ckpt is not None and not stale and not _same_tensors(ckpt["model_state"], model.state_dict())
    if stale or reshaped:  # the earlier phase was trained again (these epochs grew from weights that are
        latest = None  # gone), or the model has other heads now (concept heads switched in the profile)
    if latest is None and ckpt_dir.exists():
        shutil.rmtree(ckpt_dir)  # a fresh start must not inherit a stale best.pt or losses.csv
    log, best_path, cfg_dict = TrainLog(ckpt_dir, tqdm.write if progress else None), ckpt_dir / "best.pt", asdict(cfg)
    run, first = PhaseProgress(), 1
    if stale:
        log.line(f"phase {cfg.phase}: the epoch files there started from other weights than this start "
                 "(the earlier phase was trained again), so this phase starts afresh")
    if reshaped:
        log.line(f"phase {cfg.phase}: the epoch files there hold another model (other heads or sizes than "
                 "this profile builds), so this phase starts afresh")

    def state(epoch, metrics):
        return {**checkpoint_state(model, opt, sched, cfg_dict, epoch=epoch, metrics=metrics, history=run.history,
                                   best=run.best, epochs_since_best=run.since_best,
                                   stopped=run.stopped, sampler={"epoch": epoch, "seed": cfg.seed}, params=params),
                                   "start_sha256": start_sha,
                "inputs": input_sha}

    if latest is not None:
        _check_resume(ckpt, cfg_dict, latest)
        model.load_state_dict(ckpt["model_state"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        restore_rng(ckpt["rng"])
        run = PhaseProgress(ckpt["history"], ckpt["best"], ckpt["epochs_since_best"], ckpt["stopped"])
        first = ckpt["epoch"] + 1
        log.line(f"resumed phase {cfg.phase} from {latest.name}")
    else:
        log.line(f"phase {cfg.phase} start: {cfg_dict}")
        if start is not None and cfg.carry_optimizer:
            n = carry_optimizer_state(opt, model, start)
            log.line(f"carried the AdamW moments of {n} parameter tensors from phase {start.get('phase')}")
        val0, frame0 = validation_row(model, data, cfg, device, loss_fn=loss_fn, epoch=0, progress=progress)
        row = {"epoch": 0, "split": "val", **val0}
        run.history.append(row)
        run.add(cfg.phase, 0, row, 0)
        save_checkpoint(state(0, row), best_path)
        save_val_errors(ckpt_dir, frame0)
        log.write_csv(run.history)
        log.line(f"epoch 0 (the starting weights): val median {row['median_error_km']:.2f} km, "
                 f"province acc {row['province_acc']:.3f}" if cfg.phase else
                 f"epoch 0 (the starting weights): val province acc {row['province_acc']:.3f}")
        if start is not None and start.get("metrics"):
            log.line(phase_start_check(int(start["phase"]), start["metrics"], row)[1])
    for epoch in range(first, cfg.epochs + 1):
        if run.stopped:
            break
        t0 = time.time()
        train_row = train_epoch(model, loss_fn, data, cfg, epoch=epoch, opt=opt, sched=sched, device=device,
                                progress=progress)
        val_row, val_frame = validation_row(model, data, cfg, device, loss_fn=loss_fn, epoch=epoch, progress=progress)
        # Only the total: a term with no labels in this run (loss_concept without concept labels) is NaN by design.
        if not math.isfinite(float(val_row.get("loss_total", 0.0))):
            raise NonFiniteLoss(f"phase {cfg.phase} epoch {epoch}: the validation loss is {val_row['loss_total']}; "
                                "this epoch is not saved (docs/decisions/sharing.md)")
        extra = {"lr": opt.param_groups[0]["lr"], "seconds": round(time.time() - t0, 2)}
        rows = [{"epoch": epoch, "split": s, **r, **extra} for s, r in (("train", train_row), ("val", val_row))]
        run.history = run.history + rows
        improved = run.add(cfg.phase, epoch, rows[1], cfg.early_stop_patience)
        ckpt = state(epoch, rows[1])
        if improved:
            save_checkpoint(ckpt, best_path)
            save_val_errors(ckpt_dir, val_frame)
        if save_epochs:
            save_checkpoint(ckpt, ckpt_dir / f"epoch_{epoch}.pt")
            prune_epoch_checkpoints(ckpt_dir, cfg.keep_last)
        log.write_csv(run.history)
        log.line(describe_epoch(epoch, cfg.epochs, rows[0], rows[1]) + ("  [best]" if improved else "")
                 + ("\n   early stop" if run.stopped else ""))
        if callback is not None:
            callback(epoch, rows[1])
    if not math.isfinite(run.best["score"]):
        raise RuntimeError(f"phase {cfg.phase}: no epoch gave a finite validation score; "
                           "check the val split and the loss values in losses.csv")
    model.load_state_dict(load_checkpoint(best_path)["model_state"])
    kept = run.best["epoch"] != 0
    log.line(f"phase {cfg.phase} best: epoch {run.best['epoch']} (score {run.best['score']:.4f})"
             + ("" if kept else "; no epoch beat the starting weights, which are kept"))
    return TrainResult(pd.DataFrame(run.history, columns=CSV_COLUMNS), best_path, run.best["metrics"],
                       run.best["epoch"], kept, run.stopped)
