"""Inference from JPEG files with the predictor (GeopakPredictor, the code `geopak predict` runs):
batch throughput in images/s (mixture of hypotheses included), and single-image latency, model
loading excluded: one file through predict_many with no workers, as the command does for one file."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from geopak_lib.inference.predictor import GeopakPredictor

from .common import sync


def demo_checkpoint(repo_root: Path = Path(".")) -> Path | None:
    """The demo book's kept checkpoint (runs/demo/final_checkpoint.txt), if the demo book has run."""
    record = repo_root / "runs" / "demo" / "final_checkpoint.txt"
    if record.is_file() and Path(record.read_text().strip()).is_file():
        return Path(record.read_text().strip())
    return None


def save_model_checkpoint(model, path: Path) -> Path:
    """An untrained checkpoint of ``model`` (same size, so the same speed as a trained one)."""
    from geopak_lib.training.checkpoints import checkpoint_state, save_checkpoint

    state = checkpoint_state(model, None, None, {"phase": 1}, epoch=0, metrics={}, history=[], best={},
                             epochs_since_best=0, stopped=False, sampler={}, params={})
    save_checkpoint(state, path)
    return path


def throughput(predictor: GeopakPredictor, paths, device, settings) -> dict:
    """predict_many over ``paths`` for each (batch_size, num_workers) in settings -> runs and the best."""
    runs = []
    predictor.predict_many(paths[:8], batch_size=8, progress=False)  # warm-up
    for batch, workers in settings:
        sync(device)
        t0 = time.perf_counter()
        records = predictor.predict_many(paths, batch_size=batch, progress=False, num_workers=workers)
        sync(device)
        seconds = time.perf_counter() - t0
        assert not any(r["error"] for r in records), "benchmark images must all be readable"
        runs.append({"batch": batch, "workers": workers, "images": len(paths), "seconds": round(seconds, 2),
                     "items_per_s": round(len(paths) / seconds, 2)})
    return {"runs": runs, "best": max(runs, key=lambda r: r["items_per_s"])}


def latency(predictor: GeopakPredictor, path, device, repeats: int = 10) -> dict:
    """Seconds for one image file, median of ``repeats`` after one warm-up call."""
    predictor.predict_many([path], progress=False, num_workers=0)
    seconds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        predictor.predict_many([path], progress=False, num_workers=0)
        sync(device)
        seconds.append(time.perf_counter() - t0)
    return {"median_s": round(statistics.median(seconds), 4), "max_s": round(max(seconds), 4), "repeats": repeats}
