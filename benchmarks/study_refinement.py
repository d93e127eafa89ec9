"""Which refinement, measured on a run's validation split (and test, for the record only):
the gallery's embedding (the trained model's fused embedding vs the frozen-feature cache), its
items (every training image vs per-cell prototypes) and the settings grid of 06_evaluation.
Decisions taken from it: docs/decisions/refinement.md.

    PYTHONPATH=$PWD .venv/bin/python -m benchmarks.study_refinement --run-dir runs/smoke
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from geopak_lib.analysis import frame as evaluation
from geopak_lib.analysis import refinement_fit
from geopak_lib.inference import refinement as rf
from geopak_lib.analysis.calibration_fit import fit_calibration, province_coverage
from geopak_lib.inference.predictor import GeopakPredictor
from geopak_lib.metrics import error_km, summarize_errors
from geopak_lib.training.cache import FeatureCache
from geopak_lib.training.inputs import load_data
from geopak_lib.training.selection import select_final_checkpoint

COLUMNS = ["n", "median_km", "p90_km", "acc_1km", "acc_5km", "acc_25km", "acc_200km", "acc_750km"]


def cache_embeddings(cache_dir: str, table: pd.DataFrame) -> np.ndarray | None:
    """Frozen features of every table row (clip and scene each normalised, then joined), or None."""
    from pathlib import Path

    for path in sorted(Path(cache_dir).glob("*/complete.json")):
        cache = FeatureCache(path.parent)
        if len(cache) == len(table) and np.array_equal(cache.ids.astype(str), table["id"].astype(str).to_numpy()):
            clip, scene = (t.numpy() for t in cache.gather(np.arange(len(table))))
            unit = lambda a: a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)  # noqa: E731
            return np.c_[unit(clip), unit(scene)]
    return None


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", default="runs/smoke")
    ap.add_argument("--cache-dir", default="cache")
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args(argv)
    pd.set_option("display.width", 250)
    table = load_data(args.run_dir).table
    ckpt = select_final_checkpoint(args.run_dir).checkpoint
    predictor = GeopakPredictor.from_checkpoint(ckpt, device="cpu", calibration=None, refine=False)
    model, train = predictor.model, table[table["split"] == "train"]
    t0 = time.perf_counter()
    outs = {s: evaluation.split_outputs(predictor, table, s, batch_size=args.batch_size, progress=False)
            for s in ("train", "val", "test")}
    print(f"checkpoint {ckpt}; outputs of train/val/test in {time.perf_counter() - t0:.0f} s")
    frames = {s: evaluation.predictions_frame(model, outs[s], table[table["split"] == s], train)
              for s in ("val", "test")}
    n_cells, radius = len(model.cells), model.cell_radius_km.numpy()
    embeddings = {"fused": {s: outs[s]["fused"].numpy() for s in outs}}
    cached = cache_embeddings(args.cache_dir, table)
    if cached is not None:
        embeddings["cache"] = {s: cached[table["split"].to_numpy() == s] for s in outs}
    for source, emb in embeddings.items():
        galleries = {k: refinement_fit.build_gallery(emb["train"], train["latitude"], train["longitude"], train["cell_id"],
                                                     n_cells=n_cells, kind=k) for k in ("images", "prototypes")}
        for split in ("val", "test"):
            pred = rf.mixture_numpy(model, outs[split])
            f = frames[split]
            rows = [{"settings": "plain mixture", **summarize_errors(f["error_km"])}]
            for s in refinement_fit.SELECTION_GRID:
                p = rf.refine_prediction(pred, emb[split], galleries[s.kind], radius, settings=s)
                rows.append({"settings": s.label(),
                             **summarize_errors(error_km(p["lat"], p["lon"], f["latitude"], f["longitude"]))})
            print(f"\n## embedding {source}, {split} ({len(f)} images); gallery items: "
                  + ", ".join(f"{k} {len(g.lat)}" for k, g in galleries.items()))
            print(pd.DataFrame(rows).set_index("settings")[COLUMNS].round(3).to_markdown())
    # the error radius per province, for the plain mixture and for 06's chosen refinement
    galleries = {k: refinement_fit.build_gallery(embeddings["fused"]["train"], train["latitude"], train["longitude"],
                                                 train["cell_id"], n_cells=n_cells, kind=k) for k in ("images", "prototypes")}
    table = refinement_fit.selection_table(model, frames["val"], outs["val"], galleries,
                                           grid=refinement_fit.SELECTION_GRID)
    chosen, _ = refinement_fit.choose_settings(table, refinement_fit.SELECTION_GRID)
    refined = {s: refinement_fit.as_refined(refinement_fit.with_refinement(frames[s], model, outs[s], galleries[chosen.kind],
                                                                 settings=chosen))
               for s in ("val", "test")}
    for name, (val, test) in {"plain mixture": (frames["val"], frames["test"]),
                              f"refined ({chosen.label()})": (refined["val"], refined["test"])}.items():
        cal, _, radius = fit_calibration(val, test)
        print(f"\n## error radius, {name}: coverage on test\n" + radius.round(3).to_markdown())
        print(province_coverage(test, cal).round(3).to_markdown())


if __name__ == "__main__":
    main()
