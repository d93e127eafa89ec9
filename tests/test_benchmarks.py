"""The benchmark suite runs (tiny --quick mode, so it cannot rot), and the data-path code that only
a GPU would take is checked on CPU: JPEG bytes decoded by torchvision through the same function the
GPU path uses give the views Pillow gives; bf16 autocast runs the encoder bound. No speed is asserted
here: speed is measured by the benchmarks, not by timed tests."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks import run_all
from benchmarks.bench_encoders import encoder_bound
from geopak_lib.data.augment import ImageViewDataset, clean_transform, finish_views, jpeg_bytes_or_view, resize_view
from geopak_lib.data.images import load_rgb
from geopak_lib.model.encoders import Preprocess
from geopak_lib.training.cache import FeatureCache, prefers_channels_last, resolve_decode


class TinyEncoder(torch.nn.Module):
    """Stand-in with the Encoder attributes the cache reads."""

    def __init__(self, dim, size, spec):
        super().__init__()
        torch.manual_seed(dim)
        self.net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Conv2d(4, 4, 3), torch.nn.AdaptiveAvgPool2d(2),
                                       torch.nn.Flatten(), torch.nn.Linear(16, dim))
        self.dim, self.spec, self.preprocess = dim, spec, Preprocess(size, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
        self.weight_status, self.is_random = "random init (test)", True

    def forward(self, x):
        return self.net(x)


def _jpegs(folder, n=6):
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        # smooth content, so JPEG keeps it close to the array (a decode mix-up would show)
        base = rng.integers(0, 255, (6, 8, 3)).astype(np.uint8)
        img = Image.fromarray(base).resize((40 + 8 * i, 30 + 4 * i), Image.BILINEAR)
        paths.append(folder / f"{i}.jpg")
        img.save(paths[-1], quality=92)
    return paths


def test_quick_suite_runs_and_writes_every_ratio(tmp_path, capsys):
    res = run_all.main(["--quick", "--skip-geocells", "--device", "cpu", "--out", str(tmp_path)])
    # each figure within what it can physically be: a throughput ratio or speed-up is positive (and a
    # JPEG path cannot run 5x faster than the bare encoders); the data path's extra time is a fraction
    # above -1 (noise can make it slightly negative); one image's latency is seconds, not minutes
    bounds = {"extraction_ratio": (0, 5), "inference_ratio": (0, 5), "phase1_speedup": (0, 1e4),
              "phase2_speedup": (0, 1e4), "phase2_data_path_cost": (-1, 20), "latency_s": (0, 60)}
    for key, (low, high) in bounds.items():
        assert np.isfinite(res[key]) and low < res[key] < high, (key, res[key])
    assert set(res["targets"]) == set(run_all.TARGETS)
    written = json.loads(next(tmp_path.glob("run_quick_*.json")).read_text())
    assert written["machine_start"]["loadavg"] and written["encoder_bound"]["both"]["items_per_s"] > 0
    out = capsys.readouterr().out
    assert "machine:" in out and "load average" in out and "targets:" in out
    section = run_all.markdown(res)
    assert section.startswith("## ") and "python -m benchmarks.run_all --quick" in section and "| target |" in section


def test_only_inference_runs_the_bound_and_inference_alone(tmp_path):
    res = run_all.main(["--quick", "--only", "inference", "--device", "cpu", "--out", str(tmp_path)])
    assert 0 < res["inference_ratio"] < 5 and set(res["targets"]) == {"inference_ratio"}
    assert "extraction" not in res and "phase1" not in res and "latency" not in res
    assert json.loads(next(tmp_path.glob("run_quick_*.json")).read_text())["inference"]["paired"]["pairs"]
    with pytest.raises(SystemExit):  # a partial run cannot be recorded as the suite's section
        run_all.parse_args(["--only", "inference", "--record"])


def test_help_explains_the_options(capsys):
    with pytest.raises(SystemExit):
        run_all.parse_args(["--help"])
    text = capsys.readouterr().out
    for option in ("--profile", "--quick", "--device", "--threads", "--record", "--checkpoint", "--n-images", "--only"):
        assert option in text


def test_decode_on_device_path_equals_pillow_views_on_cpu(tmp_path):
    paths = _jpegs(tmp_path)
    grey = tmp_path / "grey.jpg"
    Image.open(paths[0]).convert("L").save(grey, quality=92)
    png = tmp_path / "x.png"
    Image.open(paths[1]).save(png)
    rotated = tmp_path / "rot.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    Image.open(paths[2]).save(rotated, quality=92, exif=exif)
    files = paths + [grey, png, rotated]
    items = [jpeg_bytes_or_view(p, 24) for p in files]
    assert [t.ndim for t in items] == [1] * 7 + [3, 3]  # PNG and EXIF-rotated: made by the book's loader
    got = finish_views(items, 24, "cpu")
    want = torch.stack([clean_transform(24)(load_rgb(p)) for p in files])
    assert got.shape == (9, 3, 24, 24) and got.dtype == torch.uint8
    assert torch.equal(got, want)  # libjpeg-turbo in both, and the same resize
    # the rotated file really is rotated (portrait view of a landscape file), so EXIF was honoured
    assert load_rgb(rotated).size == Image.open(paths[2]).size[::-1]


def test_dataset_in_jpeg_bytes_mode_gives_the_same_views(tmp_path):
    paths = _jpegs(tmp_path)
    plain, raw = ImageViewDataset(paths, 16), ImageViewDataset(paths, 16, jpeg_bytes=True)
    for i in range(len(paths)):
        _, view = plain[(i, "none", 0)]
        _, item = raw[(i, "none", 0)]
        assert item.ndim == 1 and torch.equal(finish_views([item], 16, "cpu")[0], view)
        torch.manual_seed(0)
        assert torch.equal(plain[(i, "strong", 5)][1], raw[(i, "strong", 5)][1])  # augmented views: unchanged path


def test_cache_built_with_device_decode_equals_worker_decode(tmp_path):
    import pandas as pd

    paths = _jpegs(tmp_path / "img", 8)
    table = pd.DataFrame({"id": [f"s{i}" for i in range(8)], "image_path": [str(p) for p in paths],
                          "split": ["train"] * 6 + ["val"] * 2, "province": ["Sindh"] * 8})
    kw = dict(views=1, batch_size=3, device="cpu", dtype="float32", progress=False)
    a = FeatureCache.build_or_load(table, TinyEncoder(5, 16, "t:a"), TinyEncoder(3, 12, "t:b"), cache_root=tmp_path / "a",
                                   decode="workers", **kw)
    b = FeatureCache.build_or_load(table, TinyEncoder(5, 16, "t:a"), TinyEncoder(3, 12, "t:b"), cache_root=tmp_path / "b",
                                   decode="device", num_workers=1, **kw)
    np.testing.assert_allclose(b.clip, a.clip, atol=1e-6)
    np.testing.assert_allclose(b.scene, a.scene, atol=1e-6)
    assert resolve_decode("auto", torch.device("cpu")) == "workers"
    assert resolve_decode("auto", torch.device("cuda")) == "device"
    with pytest.raises(ValueError, match="decode"):
        resolve_decode("gpu", torch.device("cpu"))


def test_channels_last_rule_and_bf16_encoder_bound_on_cpu():
    from benchmarks.common import PROFILES, build_encoders

    clip, scene = build_encoders(PROFILES["quick"])
    assert not prefers_channels_last(clip) and prefers_channels_last(scene)  # ViT: one conv; EfficientNet: many
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    with torch.inference_mode():
        plain = scene((x.float() / 255 - 0.5) / 0.25)
        scene.to(memory_format=torch.channels_last)
        cl = scene((x.float() / 255 - 0.5) / 0.25)
        scene.to(memory_format=torch.contiguous_format)
    torch.testing.assert_close(cl, plain, atol=1e-4, rtol=1e-4)  # layout changes speed, not features
    res = encoder_bound(clip, scene, 32, 2, torch.device("cpu"), repeats=1, amp="bf16")  # the GPU's bf16 path
    assert res["bf16"] and res["both"]["items_per_s"] > 0
    assert res["scene"]["library_layout"] == "channels_last" and res["clip"]["library_layout"] == "contiguous"


def test_resize_view_is_the_clean_transform_resize():
    x = torch.randint(0, 256, (3, 30, 50), dtype=torch.uint8)
    assert torch.equal(resize_view(x, 20), clean_transform(20)(x))


def test_bench_optimizer_needs_a_trained_phase_0(tmp_path, capsys):
    """The optimiser benchmark runs on a real run's phase-1 inputs; without phase 0 it says which
    notebook to run, exit code 2, no traceback."""
    from benchmarks import bench_optimizer

    with pytest.raises(SystemExit) as stop:
        bench_optimizer.main(["--run-dir", str(tmp_path / "run")])
    assert stop.value.code == 2 and "run the book up to 02 first" in capsys.readouterr().err
