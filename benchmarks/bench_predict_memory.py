"""Peak memory of `geopak predict` and `geopak evaluate` against the number of images: N small
JPEGs (64 x 64, random noise) in a folder (and, for evaluate, a labelled table of them at positions
inside the province polygons, benchmarks/scale_data.sample_points), one child process per command
and N running the CLI on a tiny checkpoint (tiny encoders stand in for open_clip/timm, so the figure
is the command's own memory, not an encoder's), peak RSS from the child's rusage.
Run: python -m benchmarks.bench_predict_memory --sizes 1000 30000 [--commands predict evaluate]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

SPECS = {"tiny:clip": (6, 16), "tiny:scene": (5, 12)}


class TinyEncoder(torch.nn.Module):
    def __init__(self, dim, size, spec):
        from geopak_lib.model.encoders import Preprocess

        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, stride=2), torch.nn.AdaptiveAvgPool2d(2),
                                       torch.nn.Flatten(), torch.nn.Linear(16, dim))
        self.dim, self.spec, self.weight_status, self.is_random = dim, spec, "random init (benchmark)", True
        self.preprocess = Preprocess(image_size=size, mean=(0.5,) * 3, std=(0.25,) * 3)

    def forward(self, x):
        return self.net(x)


def _patch_encoders():
    from geopak_lib.model import encoders

    encoders.build_encoder = lambda spec, weights=None, strict=False: TinyEncoder(*SPECS[spec], spec)


def make_checkpoint(path: Path) -> Path:
    from geopak_lib.model.geopak import GeopakModel, ModelConfig
    from geopak_lib.training.checkpoints import checkpoint_state, save_checkpoint

    cells = pd.DataFrame({"cell_id": [0, 1, 2], "province_id": [0, 0, 1], "center_lat": [25.0, 26.5, 31.5],
                          "center_lon": [68.0, 68.5, 74.3], "radius_km": [30.0, 20.0, 25.0],
                          "neighbor_cell_ids": [[1], [0], []]})
    torch.manual_seed(0)
    cfg = ModelConfig(clip_dim=6, scene_dim=5, fused_dim=8, province_hidden=8, cell_hidden=8, small_cell_hidden=8,
                      offset_hidden=8, aux_hidden=8, cell_emb_dim=2, prov_emb_dim=2)
    model = GeopakModel(cfg, cells, TinyEncoder(6, 16, "tiny:clip"), TinyEncoder(5, 12, "tiny:scene"))
    save_checkpoint(checkpoint_state(model, None, None, {"phase": 1}, epoch=0, metrics={}, history=[], best={},
                                     epochs_since_best=0, stopped=False, sampler={}), path)
    return path


def write_images(folder: Path, n: int, size: int = 64) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    have = len(list(folder.glob("*.jpg")))
    for i in range(have, n):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / f"{i:06d}.jpg")


def write_table(folder: Path, n: int) -> Path:
    """A labelled table of the folder's first n images at real positions (id, image, latitude, longitude, province)."""
    from benchmarks.scale_data import sample_points

    table = sample_points(n).assign(id=[f"{i:06d}" for i in range(n)], image=[f"{i:06d}.jpg" for i in range(n)])
    path = folder.parent / f"table{n}.csv"
    table[["id", "image", "latitude", "longitude", "province"]].to_csv(path, index=False)
    return path


def child(command: str, folder: str, ckpt: str, out: str) -> int:
    _patch_encoders()
    from geopak_lib.book import cli

    if command == "evaluate":
        table = Path(folder).parent / f"table{Path(folder).name.removeprefix('img')}.csv"  # main wrote it
        return cli.main(["evaluate", ckpt, "--table", str(table), "--images", folder,
                         "--out", out, "--device", "cpu", "--no-progress", "--refine", "off"])
    return cli.main(["predict", folder, "--checkpoint", ckpt, "--out", out, "--geojson", out + ".geojson",
                     "--device", "cpu", "--no-progress", "--refine", "off"])


def measure(command: str, folder: Path, ckpt: Path, out: Path) -> tuple[float, float]:
    """-> (wall s, peak RSS MiB) of one child running the CLI."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.bench_predict_memory", "--child", command,
                             str(folder), str(ckpt), str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{command} on {folder} failed")
    return time.perf_counter() - t0, usage.ru_maxrss / 1024  # KiB on Linux


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 30000])
    ap.add_argument("--commands", nargs="+", choices=("predict", "evaluate"), default=["predict"])
    ap.add_argument("--child", nargs=4, metavar=("COMMAND", "FOLDER", "CKPT", "OUT"))
    args = ap.parse_args(argv)
    if args.child:
        return child(*args.child)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ckpt = make_checkpoint(tmp / "best.pt")
        print("| command | images | wall s | peak RSS MiB |\n|---|---:|---:|---:|")
        for n in args.sizes:
            write_images(tmp / f"img{n}", n)
            write_table(tmp / f"img{n}", n)
            for command in args.commands:
                out = tmp / f"{command}{n}" / ("predictions.csv" if command == "predict" else "")
                out.parent.mkdir(exist_ok=True)
                wall, rss = measure(command, tmp / f"img{n}", ckpt, out)
                rows = sum(1 for _ in open(out if command == "predict" else out / "predictions.csv")) - 1
                assert rows == n, f"{command}: {rows} rows for {n} images"
                print(f"| `geopak {command}` | {n} | {wall:.1f} | {rss:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
