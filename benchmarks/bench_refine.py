"""Inference with refinement inside the cells against plain inference, on the CPU (docs/decisions/refinement.md:
refined / plain time must stay under 2x). The gallery is synthetic at the size asked for (default
90,000 training images, spread over the checkpoint's cells like a long-tailed data set), so its
memory and per-cell search cost are those of a full-size run; the images are the run's test images.

    PYTHONPATH=$PWD .venv/bin/python -m benchmarks.bench_refine --run-dir runs/smoke
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from geopak_lib.inference.predictor import GeopakPredictor
from geopak_lib.inference.refinement import RefineSettings, mixture_numpy, refine_prediction
from geopak_lib.model.refine import Gallery
from geopak_lib.data.rundir import RunDir
from geopak_lib.training.selection import select_final_checkpoint

from .common import describe_machine, machine_info, paired


def synthetic_gallery(model, n_images: int, seed: int = 0) -> Gallery:
    """n_images items over the model's cells with Zipf-like cell sizes (a few big urban cells),
    random unit embeddings of the model's fused size, positions at the cell centres."""
    rng = np.random.default_rng(seed)
    n_cells = len(model.cells)
    share = 1.0 / np.arange(1, n_cells + 1) ** 0.8
    cell = rng.choice(n_cells, n_images, p=share / share.sum())
    emb = rng.normal(size=(n_images, model.config.fused_dim)).astype(np.float32)
    lat, lon = (model.cells[c].to_numpy()[cell] for c in ("center_lat", "center_lon"))
    return Gallery.from_items(emb, lat, lon, cell, n_cells=n_cells)  # float32, as the predictor holds it


def refine_pair(plain: GeopakPredictor, paths, n_gallery: int = 90_000, batch_size: int = 32, pairs: int = 3) -> dict:
    """Refined against plain inference over ``paths`` (predict_many, no workers), timed back to back
    ``pairs`` times, with a synthetic gallery of n_gallery images; also the refinement step alone."""
    t0 = time.perf_counter()
    gallery = synthetic_gallery(plain.model, n_gallery)
    build_s = time.perf_counter() - t0
    settings = RefineSettings("images", k=5, step=1.0, rescore_temperature=0.1)  # the costlier settings
    refined = GeopakPredictor(plain.model, checkpoint=plain.checkpoint, calibration=plain.calibration,
                              top_provinces=plain.top_provinces,
                              top_cells=plain.top_cells, info=plain.info, gallery=gallery, refine_settings=settings)
    outputs = plain.raw_outputs(paths, batch_size=batch_size, progress=False)[0]
    pred = mixture_numpy(plain.model, outputs, plain.top_provinces, plain.top_cells)
    radius = plain.model.cell_radius_km.cpu().numpy()
    step_s = []
    for _ in range(3):  # the refinement step alone, on the hypotheses of every image
        t = time.perf_counter()
        refine_prediction(pred, pred["query"], gallery, radius, settings=settings)
        step_s.append(time.perf_counter() - t)

    def measure(p):
        def run():
            t = time.perf_counter()
            p.predict_many(paths, batch_size, progress=False)
            return len(paths) / (time.perf_counter() - t)
        return run

    measure(plain)(), measure(refined)()  # warm-up
    res = paired(measure(refined), measure(plain), pairs)  # ratio of rates: refined / plain img/s
    return {"images": len(paths), "gallery_items": n_gallery, "gallery_mb": round(gallery.nbytes / 2 ** 20, 1),
            "cells": gallery.n_cells, "largest_cell_items": int(gallery.cell_counts().max()),
            "gallery_build_s": round(build_s, 2), "refine_step_ms_per_image": round(1000 * min(step_s) / len(paths), 2),
            "pairs": res["pairs"], "time_ratio": round(1 / res["ratio"], 3)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", default="runs/smoke")
    ap.add_argument("--gallery-images", type=int, default=90_000)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's own choice)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    ckpt = select_final_checkpoint(args.run_dir).checkpoint
    manifest = RunDir(args.run_dir).read_manifest()
    paths = manifest.loc[manifest["split"] == "test", "image_path"].tolist()
    plain = GeopakPredictor.from_checkpoint(ckpt, device="cpu", refine=False)
    out = {"machine": describe_machine(machine_info(torch.device("cpu"))), "checkpoint": str(ckpt),
           **refine_pair(plain, paths, args.gallery_images, args.batch_size, args.pairs)}
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
