"""Feature extraction end to end: JPEG files -> decode -> resize -> both encoders -> the cache on
disk (features.FeatureCache.build_or_load, exactly what 02_phase0_province runs), images/s.

A small sweep picks the DataLoader workers, torch threads and batch size by measurement; on CUDA
it also compares decoding in workers (Pillow) with decoding on the GPU (nvJPEG)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import torch

from geopak_lib.training.cache import FeatureCache


def extract_once(table, clip, scene, root: Path, batch: int, workers: int, threads: int, device,
                 decode: str = "auto", views: int = 0) -> dict:
    """Build a fresh cache of ``table`` (float16, like the book) and time it; the cache is deleted."""
    shutil.rmtree(root, ignore_errors=True)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        t0 = time.perf_counter()
        cache = FeatureCache.build_or_load(table, clip, scene, cache_root=root, views=views, batch_size=batch,
                                           num_workers=workers, device=device, progress=False, decode=decode)
        seconds = time.perf_counter() - t0
    finally:
        torch.set_num_threads(before)
    n = cache.clip.shape[0]
    del cache
    shutil.rmtree(root, ignore_errors=True)
    return {"batch": batch, "workers": workers, "threads": threads, "decode": decode, "views": views,
            "images": n, "seconds": round(seconds, 2), "items_per_s": round(n / seconds, 2)}


def sweep(table, clip, scene, root: Path, device, batch: int, quick: bool = False) -> dict:
    """Stage 1: workers x threads (x decode on CUDA) at ``batch``; stage 2: batch sizes at the best.
    -> {runs: [...], best: the fastest run}."""
    cpus = torch.get_num_threads()
    if device.type == "cuda":
        grid = [(w, cpus, d) for d in ("workers", "device") for w in (4, 8, 12)]
        batches = (128, 512)
    else:
        grid = [(w, t, "workers") for w in (0, 1, 2) for t in sorted({1, cpus})]
        batches = (32, 64, 128, 256) if not quick else (4,)
    if quick:
        grid = [(0, 1, "workers"), (1, 1, "device")]  # the device path runs on CPU here (same code)
    runs = [extract_once(table, clip, scene, root, batch, w, t, device, d) for w, t, d in grid]
    best = max(runs, key=lambda r: r["items_per_s"])
    runs += [extract_once(table, clip, scene, root, b, best["workers"], best["threads"], device, best["decode"])
             for b in batches if b != batch]
    return {"runs": runs, "best": max(runs, key=lambda r: r["items_per_s"])}
