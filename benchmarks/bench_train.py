"""Training steps, images/s: phase 1 on the feature cache against the naive baseline (the published
pattern: Pillow decode in a plain DataLoader, both frozen encoders on every step, then the heads),
and phase 2 (top blocks unfrozen, augmentation live) against the same step fed from pre-decoded
tensors, and against the naive pattern. Our steps are the trainer's own (trainer.train_epoch)."""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch

from geopak_lib.training import trainer
from geopak_lib.data.augment import ImageViewDataset, augment_for_province, build_augment, collate_views, item_seed
from geopak_lib.data.images import load_rgb
from geopak_lib.model.encoders import preprocess_batch
from geopak_lib.training.cache import channels_last, encoder_input, view_size
from geopak_lib.training.config import PhaseConfig, configure_trainable, make_optimizer
from geopak_lib.training.inputs import make_loss
from geopak_lib.training.passes import batches as pass_batches, loss_terms
from geopak_lib.training.sampler import ProvinceBalancedSampler

from .common import paired, sync


def _epoch(model, data, cfg, device, batches_fn=None) -> float:
    """Seconds of one trainer epoch (cfg.batches_per_epoch steps); batches_fn replaces the data path."""
    loss_fn = make_loss(model, data).to(device)
    opt, sched = make_optimizer(configure_trainable(model, cfg), cfg)
    sync(device)
    t0 = time.perf_counter()
    trainer.train_epoch(model, loss_fn, data, cfg, epoch=1, opt=opt, sched=sched, device=device, progress=False,
                        batch_source=batches_fn or pass_batches)
    sync(device)
    return time.perf_counter() - t0


def phase1_cached(model, data, batch: int, steps: int, device) -> dict:
    """Phase 1 on the cache (data.cache set): the trainer's epoch of ``steps`` batches."""
    cfg = PhaseConfig.for_phase(1, batch_size=batch, batches_per_epoch=steps, epochs=1)
    _epoch(model, data, PhaseConfig.for_phase(1, batch_size=batch, batches_per_epoch=2, epochs=1), device)  # warm-up
    seconds = _epoch(model, data, cfg, device)
    return {"batch": batch, "steps": steps, "seconds": round(seconds, 2), "items_per_s": round(batch * steps / seconds, 2)}


class NaiveImages(torch.utils.data.Dataset):
    """The published pattern: Pillow decode, then one torchvision transform per encoder."""

    def __init__(self, table, clip, scene, augment: bool):
        self.paths, self.prov = table["image_path"].tolist(), table["province"].tolist()
        self.pre = (clip.preprocess, scene.preprocess)
        self.size = view_size(clip, scene)
        self.aug = {s: build_augment(s, self.size) for s in ("strong", "mild")} if augment else None

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        image = load_rgb(self.paths[i])
        x = self.aug[augment_for_province(self.prov[i])](image) if self.aug else torch.from_numpy(
            np.asarray(image).copy()).permute(2, 0, 1)
        return i, *(preprocess_batch(x[None], p)[0] for p in self.pre)


def naive(model, data, batch: int, steps: int, device, phase: int) -> dict:
    """Phase 1 (frozen encoders under no_grad) or 2 (top unfrozen, augmented) the naive way: fp32,
    contiguous layout, a plain shuffled DataLoader. Timed from asking the loader for a batch to the
    end of the optimiser step, so decoding counts; the first step is an untimed warm-up."""
    cfg = PhaseConfig.for_phase(phase, batch_size=batch, batches_per_epoch=steps, amp="off")
    model.to(device)
    for enc in (model.clip_encoder, model.scene_encoder):
        enc.to(memory_format=torch.contiguous_format)
    loss_fn = make_loss(model, data).to(device)
    opt, _ = make_optimizer(configure_trainable(model, cfg), cfg)
    train_rows = data.rows("train")
    dataset = NaiveImages(data.table, model.clip_encoder, model.scene_encoder, phase >= 2)
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, train_rows), batch_size=batch, shuffle=True,
                                         num_workers=0, drop_last=True)
    model.train()
    seconds, done, batches = 0.0, 0, iter(())
    while done < steps + 1:
        t0 = time.perf_counter()
        try:
            rows, xc, xs = next(batches)
        except StopIteration:
            batches = iter(loader)  # a new epoch: starting the loader is not timed
            continue
        rows = rows.numpy()
        if phase == 1:
            with torch.no_grad():
                fc, fs = model.clip_encoder(xc.to(device)), model.scene_encoder(xs.to(device))
            out = model.forward_features(fc, fs)
        else:
            out = model(xc.to(device), xs.to(device))
        terms = loss_terms(loss_fn, model, out, data.labels(rows, device), cfg=cfg.pass_settings(), epoch=1)
        opt.zero_grad()
        terms["total"].backward()
        opt.step()
        sync(device)
        if done:
            seconds += time.perf_counter() - t0
        done += 1
    return {"batch": batch, "steps": steps, "seconds": round(seconds, 2), "items_per_s": round(batch * steps / seconds, 2),
            "note": "fp32, contiguous, Pillow in a plain DataLoader; decode, encoders and step all timed"}


def _predecoded(model, data, cfg, device):
    """The trainer's batches read once, then served from memory: the same step without the data path."""
    train_rows = data.rows("train")
    sampler = ProvinceBalancedSampler(data.table["province_id"].to_numpy(int)[train_rows], cfg.batch_size,
                                              cfg.batches_per_epoch, shares=cfg.shares, seed=cfg.seed)
    sampler.set_epoch(1)
    row_batches = [train_rows[np.asarray(b)] for b in sampler]
    ds = ImageViewDataset(data.table["image_path"].tolist(), view_size(model.clip_encoder, model.scene_encoder))
    prov = data.table["province"].to_numpy()
    memory = [(rows, collate_views([ds[(int(r), augment_for_province(prov[r]), item_seed(cfg.seed, 1, b, j))]
                                    for j, r in enumerate(rows)])[1].to(device)) for b, rows in enumerate(row_batches)]

    def batches(model, data, row_batches, cfg, epoch, train, device):
        for rows, images in memory:
            yield rows, (encoder_input(images, model.clip_encoder.preprocess),
                         encoder_input(images, model.scene_encoder.preprocess))
    return batches


def phase2(model, data, batch: int, steps: int, device, workers=(0, 2), pairs: int = 3) -> tuple[dict, callable]:
    """Phase-2 trainer epochs (top blocks unfrozen, conv encoders channels-last as in train_phase):
    one pass per DataLoader worker count picks the fastest live data path, then that path and the
    same epoch from pre-decoded tensors are timed back to back ``pairs`` times.
    data_path_cost = pre-decoded rate / live rate - 1 (the median pair). -> (figures, a function
    that measures the chosen live path's images/s again, for the naive comparison)."""
    n = batch * steps
    cfgs = {w: PhaseConfig.for_phase(2, batch_size=batch, batches_per_epoch=steps, epochs=1, num_workers=w)
            for w in workers}

    def live(w):
        channels_last(model.clip_encoder, model.scene_encoder)
        return n / _epoch(model, data, cfgs[w], device)

    channels_last(model.clip_encoder, model.scene_encoder)
    _epoch(model, data, PhaseConfig.for_phase(2, batch_size=batch, batches_per_epoch=1, epochs=1), device)  # warm-up
    memory = _predecoded(model, data, cfgs[workers[0]], device)
    _epoch(model, data, cfgs[workers[0]], device, memory)  # warm-up: the allocator settles in a first full epoch

    def predecoded():
        channels_last(model.clip_encoder, model.scene_encoder)
        return n / _epoch(model, data, cfgs[workers[0]], device, memory)

    sweep = {w: round(live(w), 2) for w in workers}
    best = max(sweep, key=sweep.get)
    p = paired(lambda: live(best), predecoded, pairs)
    out = {"batch": batch, "steps": steps, "live_by_workers": sweep, "best_workers": best, "paired": p,
           "live_items_per_s": statistics.median(r["a"] for r in p["pairs"]),
           "predecoded_items_per_s": statistics.median(r["b"] for r in p["pairs"]),
           "data_path_cost": round(1 / p["ratio"] - 1, 4)}
    return out, lambda: live(best)
