"""The stages of the scale benchmark, each run in its own process by benchmarks/bench_scale.py on
the files an earlier stage left in ``work`` (the data set of N images). Each returns extra figures
(sizes in MB, counts) as a dict.

The child imports every module a stage uses before its clock starts (``warm``), and the two
command stages (validate, predict) call the command's ``main`` in the same process, so a stage's
``work_s`` is its work alone: Python's start and torch's import (5-10 s a process on this CPU, the
same at every N) are in the wall time but not in the slope."""

from __future__ import annotations

import contextlib
import io
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

WARM = ("geopak_lib.book.cli", "geopak_lib.data.splits", "geopak_lib.data.geocells", "geopak_lib.training.cache",
        "geopak_lib.training.inputs", "geopak_lib.inference.predictor", "geopak_lib.model.geopak",
        "geopak_lib.analysis.refinement_fit", "geopak_lib.model.refine", "geopak_lib.book.report",
        "geopak_lib.book.concept_report", "geopak_lib.book.site", "benchmarks.bench_train", "benchmarks.bench_inference",
        "open_clip", "timm", "nbformat", "folium", "matplotlib.pyplot", "nbconvert")


def warm() -> None:
    """Import what the stages use, so no stage's clock counts an import."""
    import importlib

    for name in WARM:
        importlib.import_module(name)


def _geopak(*argv: str) -> None:
    """The geopak command in this process (its output discarded); a non-zero exit fails the stage."""
    from geopak_lib.book.cli import main

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
        rc = main(list(argv))
    if rc:
        raise SystemExit(f"geopak {argv[0]} exited {rc}: {err.getvalue()[-2000:]}")
DEMO = ("open_clip:ViT-S-32:none@128", "timm:tf_efficientnet_lite0@128")  # the demo profile's encoders
STEPS, BATCH = 30, 64  # the fixed phase-1 work of the training stage


def _manifest(work: Path) -> pd.DataFrame:
    return pd.read_csv(work / "split.csv", dtype={"id": str})


def validate(work: Path, table: Path, images: Path) -> dict:
    _geopak("validate", str(table), "--images", str(images), "--out", str(work / "validated"))
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


def _model(work: Path, clip, scene, cells: pd.DataFrame | None = None):
    """The model on the set's own geocells, or on ``cells``."""
    from geopak_lib.model.geopak import GeopakModel, ModelConfig

    cells = pd.read_json(work / "cells.json", orient="records") if cells is None else cells
    return GeopakModel(ModelConfig(clip_dim=clip.dim, scene_dim=scene.dim), cells, clip, scene)


def _steps(model, data) -> dict:
    from benchmarks.bench_train import phase1_cached

    torch.manual_seed(0)
    out = phase1_cached(model, data, BATCH, STEPS, torch.device("cpu"))
    return {**out, "cells": len(model.cells), "params": sum(p.numel() for p in model.parameters() if p.requires_grad)}


def train(work: Path) -> dict:
    """STEPS phase-1 steps of batch BATCH on the (stub-encoder) cache of every row."""
    from geopak_lib.training.cache import FeatureCache
    from geopak_lib.training.inputs import TrainData

    clip, scene = _encoders(True)
    df = _manifest(work)
    data = TrainData(df.assign(cell_id=df["cell_id"].clip(lower=0)), cache=FeatureCache.find_clean(
        df, clip, scene, cache_root=work / "cache_stub"))
    return _steps(_model(work, clip, scene), data)


def train_fixed(work: Path, cells_size: int = 10_000) -> dict:
    """The train stage with the model of one size: the geocells of the ``cells_size`` set (HDBSCAN
    finds more cells in more points, and the heads grow with them), each of N's rows labelled with
    its nearest cell centre. What remains N-dependent is the data path alone."""
    from geopak_lib.geo import haversine_km
    from geopak_lib.training.cache import FeatureCache
    from geopak_lib.training.inputs import TrainData

    cells_file = work.parent / f"n{cells_size}" / "cells.json"
    cells = pd.read_json(cells_file, orient="records")
    clip, scene = _encoders(True)
    df = _manifest(work)
    lat, lon, prov = df["latitude"].to_numpy(), df["longitude"].to_numpy(), df["province_id"].to_numpy()
    clat, clon, cprov = (cells[c].to_numpy() for c in ("center_lat", "center_lon", "province_id"))
    nearest = []
    for i in range(0, len(df), 4096):  # the nearest centre among the cells of the row's own province
        d = haversine_km(lat[i:i + 4096, None], lon[i:i + 4096, None], clat, clon)
        nearest.append(np.where(prov[i:i + 4096, None] == cprov, d, np.inf).argmin(1))
    nearest = cells["cell_id"].to_numpy()[np.concatenate(nearest)]
    data = TrainData(df.assign(cell_id=nearest), cache=FeatureCache.find_clean(df, clip, scene,
                                                                               cache_root=work / "cache_stub"))
    return _steps(_model(work, clip, scene, cells), data)


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
    _geopak("predict", str(folder), "--checkpoint", str(checkpoint(work)), "--out", str(out), "--device", "cpu",
            "--no-progress", "--refine", "off", "--batch-size", "64")
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
          "cache_stub": lambda work: cache(work, stub=True), "train": train, "train_fixed": train_fixed, "evaluate": evaluate,
          "predict": predict, "gallery": gallery, "reports": reports, "site": site}
WHAT = {"validate": "`geopak validate` (decode, sha1, phash)", "split": "spatial block split",
        "geocells": "geocells (HDBSCAN)", "cache": "feature cache, demo encoders",
        "cache_stub": "feature cache, stub encoders (data path)", "train": "30 phase-1 steps on the cache",
        "train_fixed": "30 phase-1 steps, the 10k set's geocells",
        "evaluate": "evaluation of the test split (predictor)", "predict": "`geopak predict` on a folder of N",
        "gallery": "refinement gallery build + one query per test image", "reports": "00 + 01 HTML reports",
        "site": "book site (Sphinx) of those reports"}
ENCODER_STAGES = ("cache", "evaluate", "predict")  # the demo encoders: stop at --encoder-max


def _cpu_s() -> float:
    import resource

    return sum(u.ru_utime + u.ru_stime for u in (resource.getrusage(resource.RUSAGE_SELF),
                                                 resource.getrusage(resource.RUSAGE_CHILDREN)))


def run_stage(name: str, work: Path, *args) -> int:
    warm()
    t0, c0 = time.perf_counter(), _cpu_s()
    extra = STAGES[name](Path(work), *map(Path, args))
    extra["work_s"] = round(time.perf_counter() - t0, 2)
    extra["cpu_s"] = round(_cpu_s() - c0, 2)  # user + system of this process and its children: what load does not stretch
    (Path(work) / f"stage_{name}.json").write_text(json.dumps(extra, default=str))
    return 0
