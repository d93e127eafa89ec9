"""What every benchmark shares: sizes per profile, the machine record, a timer, the JPEG data set
(the demo builder), a synthetic geocell table and a model built from the profile's encoders.

Profiles: ``small`` (CPU; the demo profile's encoders at 128 px), ``full`` (GPU; the spec's
ViT-B-16 and ResNet-50 at 224 px on random weights, which cost the same as trained ones) and
``quick`` (tiny, for the test that keeps the suite from rotting; its figures mean nothing).
"""

from __future__ import annotations

import os
import platform
import statistics
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch


@dataclass(frozen=True)
class Profile:
    """Sizes of one benchmark run. batch: encoder-bound and extraction batch; train_batch: phase-1
    batch (spec 003: 64); phase2_batch: phase-2 batch; n_images: JPEG files; steps: timed training
    steps per measurement; n_cells: geocells of the synthetic table (the published data: ~490)."""

    name: str
    clip_spec: str
    scene_spec: str
    n_images: int
    image_size: int
    batch: int
    train_batch: int
    phase2_batch: int
    steps: int
    n_cells: int
    repeats: int
    bound_batches: tuple = ()  # batch sizes besides ``batch`` at which the encoder bound is also measured


PROFILES = {
    "small": Profile("small", "open_clip:ViT-S-32:none@128", "timm:tf_efficientnet_lite0@128", 320, 224,
                     256, 64, 32, 30, 120, 3, (32, 64, 128)),
    "full": Profile("full", "open_clip:ViT-B-16:none", "timm:resnet50:none", 4096, 448, 256, 64, 64, 40, 490, 3,
                    (64, 128, 512)),
    "quick": Profile("quick", "open_clip:ViT-S-32:none@32", "timm:tf_efficientnet_lite0@32", 24, 64,
                     8, 8, 4, 3, 14, 1, (4,)),
}


def machine_info(device: torch.device) -> dict:
    """Where the figures were measured: platform, CPUs, torch threads, GPU, load average (1, 5, 15 min)."""
    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "device": str(device), "loadavg": [round(x, 2) for x in os.getloadavg()]}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def describe_machine(info: dict) -> str:
    gpu = f", GPU {info['gpu']}" if "gpu" in info else ", no GPU used"
    return (f"{info['platform']} ({info['processor']}), {info['cpu_count']} CPUs, torch {info['torch']} with "
            f"{info['torch_threads']} threads{gpu}; load average {info['loadavg'][0]:.2f}")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rate(fn, n_items: int, repeats: int, device: torch.device, warmup: int = 1) -> dict:
    """Time ``fn()`` (which handles n_items items) ``repeats`` times after ``warmup`` untimed calls.

    Returns items_per_s (the median run: on a shared machine one slow run should not decide) and
    every run's seconds, so the spread is on record.
    """
    for _ in range(warmup):
        fn()
    sync(device)
    seconds = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        sync(device)
        seconds.append(time.perf_counter() - t0)
    return {"items_per_s": round(n_items / statistics.median(seconds), 2), "seconds": [round(s, 3) for s in seconds]}


def paired(measure_a, measure_b, pairs: int) -> dict:
    """Ratio a / b of two rates measured back to back, ``pairs`` times (a b, b a, a b, ...); -> every
    pair and the median ratio. On a shared machine the load drifts over minutes; two figures
    taken seconds apart see the same load, so their ratio holds where separate figures would not."""
    runs = []
    for i in range(max(1, pairs)):
        if i % 2:  # a b, b a, a b, ...: a drift in one direction favours neither side
            b, a = measure_b(), measure_a()
        else:
            a, b = measure_a(), measure_b()
        runs.append({"a": round(a, 2), "b": round(b, 2), "ratio": round(a / b, 3)})
    return {"pairs": runs, "ratio": round(statistics.median(r["ratio"] for r in runs), 3)}


def build_encoders(profile: Profile):
    """Both encoders of the profile, frozen, eval mode (random-weight warnings silenced: expected here)."""
    from geopak_lib.model.encoders import build_encoder

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import logging

        logging.disable(logging.WARNING)
        try:
            return build_encoder(profile.clip_spec), build_encoder(profile.scene_spec)
        finally:
            logging.disable(logging.NOTSET)


def jpeg_dataset(root, n_images: int, image_size: int) -> pd.DataFrame:
    """n_images demo JPEGs in ``root`` (built once, reused) -> a manifest-like table: id, image_path,
    split (80% train, 10% val, 10% test, interleaved), province, province_id, latitude, longitude."""
    from geopak_lib.constants import PROVINCE_ID
    from geopak_lib.book.demo import build_demo_dataset

    root = Path(root) / f"demo_{n_images}_{image_size}"
    samples = pd.read_csv(build_demo_dataset(root, n_images=n_images, image_size=image_size), dtype={"id": str})
    split = np.where(np.arange(len(samples)) % 10 == 8, "val", np.where(np.arange(len(samples)) % 10 == 9, "test",
                                                                        "train"))
    return pd.DataFrame({"id": samples["id"], "image_path": [str(root / "images" / i) for i in samples["image"]],
                         "split": split, "province": samples["province"],
                         "province_id": samples["province"].map(PROVINCE_ID).to_numpy(int),
                         "latitude": samples["latitude"], "longitude": samples["longitude"]})


def synthetic_cells(table: pd.DataFrame, n_cells: int, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """A geocell table of about n_cells cells (each province's share in proportion to its rows, at
    least 2) centred on sample positions, and each row's cell (the nearest centre of its province).
    The heads' cost depends on the cell count, not on where the cells are."""
    from geopak_lib.constants import PROVINCES
    from geopak_lib.geo import haversine_km

    rng = np.random.default_rng(seed)
    pid = table["province_id"].to_numpy(int)
    lat, lon = table["latitude"].to_numpy(float), table["longitude"].to_numpy(float)
    rows, cell_of = [], np.full(len(table), -1)
    for p in range(len(PROVINCES)):
        members = np.flatnonzero(pid == p)
        if len(members) == 0:
            continue
        k = min(len(members), max(2, round(n_cells * len(members) / len(table))))
        centres = rng.choice(members, k, replace=False)
        d = haversine_km(lat[members, None], lon[members, None], lat[None, centres], lon[None, centres])
        cell_of[members] = len(rows) + d.argmin(1)
        rows += [{"cell_id": len(rows) + j, "province_id": p, "province": PROVINCES[p], "center_lat": lat[c],
                  "center_lon": lon[c], "radius_km": 20.0, "neighbor_cell_ids": []} for j, c in enumerate(centres)]
    return pd.DataFrame(rows), cell_of


def build_model(profile: Profile, table: pd.DataFrame, clip, scene):
    """(GeopakModel with both encoders, TrainData without a cache) on a synthetic geocell table."""
    from geopak_lib.model.geopak import GeopakModel, ModelConfig
    from geopak_lib.training.inputs import TrainData

    cells, cell_of = synthetic_cells(table, profile.n_cells)
    model = GeopakModel(ModelConfig(clip_dim=clip.dim, scene_dim=scene.dim), cells, clip, scene)
    return model, TrainData(table.assign(cell_id=cell_of).reset_index(drop=True))
