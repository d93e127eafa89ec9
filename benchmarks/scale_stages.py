"""The stages of the scale benchmark, each run in its own process by benchmarks/bench_scale.py on
the files an earlier stage left in ``work`` (the data set of N images). Each returns extra figures
(sizes in MB, counts) as a dict."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

CLI = [sys.executable, "-m", "geopak_lib.book.cli"]
DEMO = ("open_clip:ViT-S-32:none@128", "timm:tf_efficientnet_lite0@128")  # the demo profile's encoders
STEPS, BATCH = 30, 64  # the fixed phase-1 work of the training stage


def _manifest(work: Path) -> pd.DataFrame:
    return pd.read_csv(work / "split.csv", dtype={"id": str})


def validate(work: Path, table: Path, images: Path) -> dict:
    subprocess.run([*CLI, "validate", str(table), "--images", str(images), "--out", str(work / "validated")],
                   check=True, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    return {"rows": sum(1 for _ in open(work / "validated" / "manifest.csv")) - 1}


def split(work: Path) -> dict:
    from geopak_lib.data.splits import spatial_block_split

    df = spatial_block_split(pd.read_csv(work / "validated" / "manifest.csv", dtype={"id": str}))
    df.to_csv(work / "split.csv", index=False)
    return df["split"].value_counts().to_dict()


def geocells(work: Path) -> dict:
    from geopak_lib.data.geocells import build_geocells

    df = _manifest(work)
    res = build_geocells(df[df["split"] == "train"])
    res.cells.to_json(work / "cells.json", orient="records")
    cell = res.assignments.set_index("id")["cell_id"]
    df.assign(cell_id=df["id"].map(cell).fillna(-1).astype(int)).to_csv(work / "split.csv", index=False)
    return {"cells": len(res.cells)}


def _encoders(stub: bool):
    from benchmarks.common import PROFILES, build_encoders
    from benchmarks.scale_data import StubEncoder

    torch.manual_seed(0)  # the same stub weights in every process: the cache's key holds their hash
    if stub:
        return StubEncoder(512, 64, "stub:clip"), StubEncoder(1280, 64, "stub:scene")
    return build_encoders(PROFILES["small"])


def cache(work: Path, stub: bool = False) -> dict:
    from geopak_lib.training.cache import FeatureCache

    clip, scene = _encoders(stub)
    c = FeatureCache.build_or_load(_manifest(work), clip, scene, cache_root=work / ("cache_stub" if stub else "cache"),
                                   views=0, batch_size=64, device="cpu", progress=False)
    return {"slots": len(c), "clip_dim": c.clip_dim}


def _model(work: Path, clip, scene):
    from geopak_lib.model.geopak import GeopakModel, ModelConfig

    cells = pd.read_json(work / "cells.json", orient="records")
    return GeopakModel(ModelConfig(clip_dim=clip.dim, scene_dim=scene.dim), cells, clip, scene)


def train(work: Path) -> dict:
    """STEPS phase-1 steps of batch BATCH on the (stub-encoder) cache of every row."""
    from benchmarks.bench_train import phase1_cached
    from geopak_lib.training.cache import FeatureCache
    from geopak_lib.training.inputs import TrainData

    clip, scene = _encoders(True)
    df = _manifest(work)
    data = TrainData(df.assign(cell_id=df["cell_id"].clip(lower=0)), cache=FeatureCache.find_clean(
        df, clip, scene, cache_root=work / "cache_stub"))
    torch.manual_seed(0)
    return phase1_cached(_model(work, clip, scene), data, BATCH, STEPS, torch.device("cpu"))


def checkpoint(work: Path) -> Path:
    from benchmarks.bench_inference import save_model_checkpoint

    path = work / "ckpt" / "best.pt"
    if not path.exists():
        path.parent.mkdir(exist_ok=True)
        save_model_checkpoint(_model(work, *_encoders(False)), path)
    return path


def evaluate(work: Path) -> dict:
    """The test split through the predictor (demo encoders), then the error metrics."""
    from geopak_lib.inference.predictor import GeopakPredictor
    from geopak_lib.geo import haversine_km

    test = _manifest(work).query("split == 'test'")
    pred = GeopakPredictor.from_checkpoint(checkpoint(work), device="cpu", calibration=None, refine="off")
    rows = [r for b in pred.iter_predictions(test["image_path"].tolist(), 64, False, 0) for r in b]
    err = haversine_km(test["latitude"].to_numpy(), test["longitude"].to_numpy(),
                       np.array([r["lat"] for r in rows]), np.array([r["lon"] for r in rows]))
    return {"test_images": len(test), "median_km": round(float(np.median(err)), 1)}


def predict(work: Path) -> dict:
    images = Path(_manifest(work)["image_path"].iloc[0]).parent
    folder = work / "predict_in"  # the data set's own images, linked into one folder of exactly N
    if not folder.exists():
        folder.mkdir()
        for p in _manifest(work)["image_path"]:
            (folder / Path(p).name).symlink_to(images / Path(p).name)
    out = work / "predictions.csv"
    subprocess.run([*CLI, "predict", str(folder), "--checkpoint", str(checkpoint(work)), "--out", str(out),
                    "--device", "cpu", "--no-progress", "--refine", "off", "--batch-size", "64"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return {"rows": sum(1 for _ in open(out)) - 1}


def gallery(work: Path) -> dict:
    """The refinement gallery of every training row (random fused embeddings, 256-d) and one query
    per test row with 10 hypotheses in its true and random cells."""
    from geopak_lib.analysis.refinement_fit import build_gallery
    from geopak_lib.model.refine import refine_hypotheses

    rng = np.random.default_rng(0)
    df, cells = _manifest(work), pd.read_json(work / "cells.json", orient="records")
    train, test = df[df["split"] == "train"], df[df["split"] == "test"]
    g = build_gallery(rng.normal(size=(len(train), 256)).astype(np.float32), train["latitude"], train["longitude"],
                      train["cell_id"], n_cells=len(cells))
    cid = np.c_[test["cell_id"].clip(lower=0).to_numpy()[:, None], rng.integers(0, len(cells), (len(test), 9))]
    lat, lon = cells["center_lat"].to_numpy()[cid], cells["center_lon"].to_numpy()[cid]
    refine_hypotheses(rng.normal(size=(len(test), 256)), cid, lat, lon, weight=np.full(cid.shape, 0.1), gallery=g,
                      cell_radius_km=cells["radius_km"].to_numpy(), k=5, rescore_temperature=0.1)
    return {"gallery_mb": round(g.nbytes / 2**20, 1), "queries": len(test)}


def reports(work: Path) -> dict:
    """00's and 01's maps and tables at N rows as executed notebooks, exported as the book does."""
    import nbformat

    from geopak_lib.book.concept_report import concept_map
    from geopak_lib.book.report import ShowMap, cells_map, export_html, samples_map, setup_notebook

    setup_notebook()
    df, cells = _manifest(work), pd.read_json(work / "cells.json", orient="records")
    df["land_cover"] = np.random.default_rng(0).choice(["cropland", "desert", "urban"], len(df))
    cells["n_samples"] = df[df["cell_id"] >= 0].groupby("cell_id").size().reindex(cells["cell_id"]).fillna(0).values
    shown = {"00_data_audit": [ShowMap(samples_map(df, popup_cols=("id", "province", "image"))),
                               ShowMap(samples_map(df, group_col="split", popup_cols=("id", "province", "block_id"))),
                               ShowMap(concept_map(df, "land_cover", max_points=1500)), df, df.style],
             "01_geocells": [ShowMap(cells_map(cells, df[df["split"] == "train"])), cells]}
    sizes = {}
    for name, objects in shown.items():
        nb = nbformat.v4.new_notebook()
        for obj in objects:
            nb.cells.append(nbformat.v4.new_code_cell("display(x)", outputs=[nbformat.v4.new_output(
                "display_data", data={"text/html": obj._repr_html_(), "text/plain": "table"})]))
        (work / "run" / "notebooks").mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, str(work / "run" / "notebooks" / f"{name}.ipynb"))
        sizes[f"{name}_mb"] = round(export_html(work / "run" / "notebooks" / f"{name}.ipynb",
                                                work / "reports" / f"{name}.html").stat().st_size / 2**20, 2)
    return sizes


def site(work: Path) -> dict:
    from geopak_lib.book.site import build_site

    index = build_site(work / "run", "scale", work / "site", work, log=lambda *a: None)
    return {"site_mb": round(sum(f.stat().st_size for f in index.parent.rglob("*") if f.is_file()) / 2**20, 2)}


STAGES = {"validate": validate, "split": split, "geocells": geocells, "cache": cache,
          "cache_stub": lambda work: cache(work, stub=True), "train": train, "evaluate": evaluate,
          "predict": predict, "gallery": gallery, "reports": reports, "site": site}
WHAT = {"validate": "`geopak validate` (decode, sha1, phash)", "split": "spatial block split",
        "geocells": "geocells (HDBSCAN)", "cache": "feature cache, demo encoders",
        "cache_stub": "feature cache, stub encoders (data path)", "train": "30 phase-1 steps on the cache",
        "evaluate": "evaluation of the test split (predictor)", "predict": "`geopak predict` on a folder of N",
        "gallery": "refinement gallery build + one query per test image", "reports": "00 + 01 HTML reports",
        "site": "book site (Sphinx) of those reports"}
ENCODER_STAGES = ("cache", "evaluate", "predict")  # the demo encoders: stop at --encoder-max


def run_stage(name: str, work: Path, *args) -> int:
    extra = STAGES[name](Path(work), *map(Path, args))
    (Path(work) / f"stage_{name}.json").write_text(json.dumps(extra, default=str))
    return 0
