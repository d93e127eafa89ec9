"""Several GPUs (or CPU processes): the feature-cache build and phase-2 steps with PyTorch's own
DistributedDataParallel, launched by ``torchrun``. The notebooks do not use this module; on one
device they run as they are. How to launch, and what each rank does: docs/distributed.md.

    torchrun --standalone --nproc_per_node 4 -m geopak_lib.book.distributed_cli cache --profile demo
    torchrun --standalone --nproc_per_node 4 my_script.py   # my_script calls init_from_env() first

Feature cache: batch i of the cache's slot batches goes to rank i % world (DistributedSampler's
slicing, by batch, so every batch holds exactly the images a one-process build puts in it); each
rank writes its batches into its own part folder, and rank 0 merges the parts into the one cache
that ``FeatureCache`` opens. Phase 2: every global batch drawn by the province-balanced sampler
is sliced the same way (rank r takes positions r, r + world, ...); DDP averages the gradients.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import torch
import torch.distributed as dist

from geopak_lib.training.cache import CacheSettings, FeatureCache, atomic_json, build_slots, cache_location
from geopak_lib.training.config import configure_trainable, make_optimizer
from geopak_lib.training.passes import autocast_enabled, batches, float_outputs, loss_terms
from geopak_lib.utils import file_sha256, load_npy, pick_device, read_json


def rank_world() -> tuple[int, int]:
    """(rank, world size); (0, 1) when no process group is running."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_from_env(device="auto") -> tuple[int, int, torch.device]:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, MASTER_ADDR/PORT in the
    environment): NCCL on CUDA (one GPU per rank, LOCAL_RANK), gloo on CPU. -> (rank, world, device)."""
    device = pick_device(device)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


def shard(items, rank: int, world: int) -> list:
    """DistributedSampler's slicing without padding: items rank, rank + world, ... (a list)."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in 0..{world - 1}")
    return list(items)[rank::world]


def build_cache_distributed(manifest, clip_encoder, scene_encoder, settings: CacheSettings, *, device="auto",
                            progress: bool = False) -> FeatureCache:
    """FeatureCache.build_or_load with the work split over the ranks; every rank calls it with the
    same arguments and gets the same cache back. Without a process group it is build_or_load."""
    rank, world = rank_world()
    if world == 1:
        return FeatureCache.build_or_load(manifest, clip_encoder, scene_encoder, settings=settings, device=device,
                                          progress=progress)
    path, key, key_inputs = cache_location(manifest, clip_encoder, scene_encoder, settings)
    if not (path / "complete.json").exists():
        part = path / f"part{rank}of{world}"
        part.mkdir(parents=True, exist_ok=True)
        if not (part / "complete.json").exists():  # a part finished before an interruption is kept
            build_slots(part, key, manifest, clip_encoder, scene_enc=scene_encoder, settings=settings,
                        device=pick_device(device),
                        progress=progress and rank == 0, shard=(rank, world))
        dist.barrier()
        if rank == 0:
            _merge_parts(path, key, key_inputs, world, settings.batch_size)
        dist.barrier()
    return FeatureCache(path)


def _merge_parts(path, key, key_inputs, world: int, batch_size: int) -> None:
    """Rank 0: copy each part's batches into the cache arrays, then mark the cache complete."""
    parts = [path / f"part{r}of{world}" for r in range(world)]
    meta = read_json(parts[0] / "complete.json", f"delete {path} and build the cache again")
    for name in ("clip", "scene"):
        arrays = [load_npy(p / f"{name}.npy", f"delete {path} and build the cache again") for p in parts]
        out = np.lib.format.open_memmap(path / f"{name}.npy", mode="w+", dtype=arrays[0].dtype, shape=arrays[0].shape)
        for i, lo in enumerate(range(0, len(out), batch_size)):
            out[lo:lo + batch_size] = arrays[i % world][lo:lo + batch_size]
        out.flush()
        del out, arrays
    atomic_json(path / "key.json", {"key": key, **key_inputs})
    sums = {n: file_sha256(path / n) for n in ("clip.npy", "scene.npy")}  # the merged arrays, not part 0's
    atomic_json(path / "complete.json", {**meta, "parts": world, "arrays_sha256": sums})  # last: now readable
    for p in parts:
        shutil.rmtree(p)


class _LossStep(torch.nn.Module):
    """The model and its loss as one module, so that every parameter use (the offset head is run
    again inside the loss) happens inside DDP's forward: DDP counts on that to know when each
    gradient is ready."""

    def __init__(self, model, loss_fn, cfg, epoch: int):
        super().__init__()
        self.model, self.loss_fn, self.cfg, self.epoch = model, loss_fn, cfg, epoch

    def forward(self, inputs, labels, use_amp: bool):
        device = labels["lat"].device
        with torch.autocast(device.type, torch.bfloat16, enabled=use_amp):
            out = float_outputs(self.model(*inputs))
        return loss_terms(self.loss_fn, self.model, out, labels, cfg=self.cfg.pass_settings(), epoch=self.epoch)


def ddp_phase2_steps(model, data, cfg, loss_fn, *, row_batches, device, epoch: int = 1, opt=None, sched=None) -> list:
    """Phase-2 (or 3) training steps under DistributedDataParallel: each rank takes its slice of
    every global batch in ``row_batches`` (lists of table rows), reads and augments those images,
    and DDP averages the gradients before every optimiser step, so all ranks keep equal weights.

    Encoders stay in eval mode (fixed batch-norm statistics, as in train._train_epoch), so no
    SyncBatchNorm is needed. opt/sched: default train.make_optimizer's. Returns this rank's loss
    per step. Call inside a process group (init_from_env).
    """
    from torch.nn.parallel import DistributedDataParallel as DDP


    rank, world = rank_world()
    if opt is None:
        opt, sched = make_optimizer(configure_trainable(model, cfg), cfg)
    model.to(device)
    # find_unused_parameters=True although every parameter is used: without it (torch 2.14, gloo)
    # the gradients were averaged in the first step only and silently not after the bucket rebuild;
    # tests/test_distributed.py catches that. Its cost is one graph traversal per step.
    step = DDP(_LossStep(model, loss_fn.to(device), cfg, epoch), find_unused_parameters=True,
               device_ids=[device.index] if device.type == "cuda" else None)
    model.train()
    for enc in (model.clip_encoder, model.scene_encoder):
        enc.eval()
    params = [p for g in opt.param_groups for p in g["params"]]
    use_amp, losses = autocast_enabled(cfg.amp, device), []
    mine = [np.asarray(shard(b, rank, world)) for b in row_batches]
    places = [shard(range(len(b)), rank, world) for b in row_batches]  # augmentation seeds: global positions
    for rows, inputs in batches(model, data, mine, cfg.pass_settings(), epoch=epoch, train=True, device=device,
                                positions=places):
        terms = step(inputs, data.labels(rows, device), use_amp)
        opt.zero_grad(set_to_none=True)
        terms["total"].backward()  # DDP all-reduces (averages) the gradients here
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        if sched is not None:
            sched.step()
        losses.append(float(terms["total"].detach()))
    return losses
