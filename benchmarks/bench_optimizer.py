"""The optimiser step's share of a phase-1 epoch: AdamW fused (one kernel for the whole update, what
``training.config.make_optimizer`` builds on CPU and CUDA) against foreach (one kernel per op over
all tensors, its choice before), on a run's real phase-1 inputs: the phase-0 checkpoint, the
feature cache and the model with its concept heads. Each measurement is one trainer epoch
(``trainer.train_epoch``), timed back to back (a b, b a, ...).

    PYTHONPATH=$PWD .venv/bin/python -m benchmarks.bench_optimizer --run-dir runs/demo
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from geopak_lib.data.rundir import RunDir
from geopak_lib.training import trainer
from geopak_lib.training.config import PhaseConfig, configure_trainable, make_optimizer, warmup_cosine
from geopak_lib.training.inputs import CacheSettings, load_phase_inputs, make_loss
from geopak_lib.utils import seed_everything

from .common import describe_machine, machine_info, paired


def epoch_seconds(run_dir, cfg: PhaseConfig, fused: bool, cache: CacheSettings) -> float:
    """Seconds of one phase-1 epoch from phase 0's best.pt, with a fused or a foreach AdamW."""
    seed_everything(cfg.seed)
    inputs = load_phase_inputs(run_dir, 1, cache=cache, device="cpu", progress=False, concept_weight=0.1)
    model, data, device = inputs.model, inputs.data, torch.device("cpu")
    loss_fn = make_loss(model, data, top_provinces=cfg.top_provinces, top_cells=cfg.top_cells)
    groups = configure_trainable(model, cfg)
    opt, sched = make_optimizer(groups, cfg)
    if not fused:  # the same groups and schedule, the update as foreach kernels
        opt = torch.optim.AdamW([{"params": g["params"], "lr": g["initial_lr"], "name": g["name"]}
                                 for g in opt.param_groups], weight_decay=cfg.weight_decay, foreach=True)
        total = cfg.epochs * cfg.batches_per_epoch
        warm = int(round(cfg.warmup_frac * total))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, total, warm, cfg.min_lr_ratio))
    t0 = time.perf_counter()
    trainer.train_epoch(model, loss_fn, data, cfg, epoch=1, opt=opt, sched=sched, device=device)
    return time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", default="runs/demo", help="a run with phase 0 trained and its feature cache")
    ap.add_argument("--batch", type=int, default=64, help="phase-1 batch (the demo's: 64)")
    ap.add_argument("--steps", type=int, default=60, help="steps per epoch (the demo's: 60)")
    ap.add_argument("--cache-views", type=int, default=1, help="the feature cache's views (the demo's: 1)")
    ap.add_argument("--pairs", type=int, default=3)
    args = ap.parse_args(argv)
    if not RunDir(args.run_dir).best_checkpoint(0).is_file():
        ap.exit(2, f"bench_optimizer: no phase-0 checkpoint in {args.run_dir}: run the book up to 02 first\n")
    cfg = PhaseConfig.for_phase(1, epochs=20, batch_size=args.batch, batches_per_epoch=args.steps, shares="spec003")
    cache = CacheSettings(views=args.cache_views)
    epoch_seconds(args.run_dir, cfg, True, cache)  # warm-up: the cache pages in, the kernels load
    result = paired(lambda: epoch_seconds(args.run_dir, cfg, True, cache),
                    lambda: epoch_seconds(args.run_dir, cfg, False, cache), args.pairs)
    print(describe_machine(machine_info(torch.device("cpu"))))
    print(json.dumps({"fused_over_foreach_seconds": result}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
