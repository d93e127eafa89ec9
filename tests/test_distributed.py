"""Two processes on gloo over localhost (what torchrun starts) give what one process gives: the
feature cache built by two ranks equals the one-process cache, and two DDP phase-2 steps equal one
process accumulating the same two half-batches' mean gradient."""

import socket
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image
from torch import nn

from geopak_lib import distributed
from geopak_lib.features import FeatureCache

PROVINCES4 = ["Sindh", "Punjab", "Balochistan", "Khyber Pakhtunkhwa"]


@dataclass
class Pre:
    image_size: int
    mean: tuple = (0.5, 0.5, 0.5)
    std: tuple = (0.25, 0.25, 0.25)


class TinyEncoder(nn.Module):
    def __init__(self, dim, size, spec):
        super().__init__()
        torch.manual_seed(dim)
        self.net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                                 nn.Linear(16, dim))
        self.dim, self.spec, self.preprocess = dim, spec, Pre(size)
        self.weight_status, self.is_random = "random init (test)", True

    def forward(self, x):
        return self.net(x)


def _table(folder, n=14):
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        path = folder / f"{i}.jpg"
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(path, quality=90)
        prov = PROVINCES4[i % 4]
        rows.append({"id": f"s{i}", "image_path": str(path), "sha1": f"h{i}", "province": prov,
                     "split": "train" if i < 10 else "val", "latitude": 25.0 + i * 0.3, "longitude": 67.0 + i * 0.2})
    return pd.DataFrame(rows)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(fn, *args):
    port = _free_port()
    mp.spawn(_entry, args=(2, port, fn, args), nprocs=2, join=True)


def _entry(rank, world, port, fn, args):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        fn(rank, *args)
    finally:
        dist.destroy_process_group()


def _cache_worker(rank, table, root):
    cache = distributed.build_cache_distributed(table, TinyEncoder(5, 16, "tiny:a"), TinyEncoder(3, 12, "tiny:b"),
                                                root, views=1, batch_size=4, device="cpu", dtype="float32")
    np.save(root / f"seen_by_rank{rank}.npy", np.asarray(cache.clip))


def test_shard_is_distributed_sampler_slicing():
    assert distributed.shard(range(7), 0, 2) == [0, 2, 4, 6]
    assert distributed.shard(range(7), 1, 2) == [1, 3, 5]
    with pytest.raises(ValueError, match="rank 2"):
        distributed.shard(range(7), 2, 2)


def test_two_rank_cache_equals_one_process_cache(tmp_path):
    table = _table(tmp_path / "img")
    one = FeatureCache.build_or_load(table, TinyEncoder(5, 16, "tiny:a"), TinyEncoder(3, 12, "tiny:b"),
                                     tmp_path / "one", views=1, batch_size=4, device="cpu", dtype="float32",
                                     progress=False)
    _launch(_cache_worker, table, tmp_path / "two")
    two = FeatureCache(next(p for p in (tmp_path / "two").iterdir() if p.is_dir()))
    assert two.path.name == one.path.name  # same key
    assert len(one) == 14 and one.clip.shape[0] == 14 + 10  # 24 slots = 6 batches, 3 per rank
    np.testing.assert_array_equal(two.clip, one.clip)
    np.testing.assert_array_equal(two.scene, one.scene)
    for rank in (0, 1):  # both ranks open the merged cache
        np.testing.assert_array_equal(np.load(tmp_path / "two" / f"seen_by_rank{rank}.npy"), one.clip)
    assert [p.name for p in two.path.iterdir() if p.name.startswith("part")] == []


def _phase2_setup(tmp_path):
    import warnings

    from geopak_lib.encoders import build_encoder
    from geopak_lib.model import GeopakModel, ModelConfig
    from geopak_lib.train import PhaseConfig, TrainData, make_loss

    table = _table(tmp_path / "img").assign(province_id=lambda t: t["province"].map(
        {"Sindh": 0, "Punjab": 1, "Khyber Pakhtunkhwa": 2, "Balochistan": 5}))
    cells = pd.DataFrame({"cell_id": [0, 1, 2, 3], "province_id": [0, 1, 2, 5],
                          "center_lat": [25.0, 31.0, 34.0, 28.0], "center_lon": [67.0, 73.0, 71.0, 65.0],
                          "radius_km": [30.0] * 4, "neighbor_cell_ids": [[]] * 4})
    table["cell_id"] = table["province_id"].map({0: 0, 1: 1, 2: 2, 5: 3})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        clip, scene = build_encoder("open_clip:ViT-S-32:none@32"), build_encoder("timm:tf_efficientnet_lite0@32")
        model = GeopakModel(ModelConfig(clip_dim=clip.dim, scene_dim=scene.dim, fused_dim=32, cell_hidden=16,
                                        small_cell_hidden=16, province_hidden=16, offset_hidden=16, aux_hidden=16),
                            cells, clip, scene)
    data = TrainData(table)
    cfg = PhaseConfig.for_phase(2, batch_size=8, batches_per_epoch=2, amp="off", lr_heads=1e-2, lr_clip=1e-3,
                                lr_scene=1e-3)
    batches = [[0, 4, 1, 5, 2, 6, 3, 7], [8, 9, 0, 1, 2, 3, 4, 5]]
    return model, data, cfg, make_loss(model, data), batches


def _sgd(model, cfg):
    """Plain SGD: Adam's first steps move every weight by ~lr whatever the gradient's size, so the
    float rounding of the all-reduce would flip near-zero gradients into lr-sized differences."""
    from geopak_lib.train import configure_trainable

    groups = configure_trainable(model, cfg)
    return torch.optim.SGD([p for ps in groups.values() for p in ps], lr=0.5)


def _ddp_worker(rank, tmp_path):
    model, data, cfg, loss_fn, batches = _phase2_setup(tmp_path)
    losses = distributed.ddp_phase2_steps(model, data, cfg, loss_fn, batches, torch.device("cpu"),
                                          opt=_sgd(model, cfg))
    torch.save({"state": model.state_dict(), "losses": losses}, tmp_path / f"rank{rank}.pt")


def test_ddp_phase2_steps_equal_one_process_accumulating_the_halves(tmp_path):
    from geopak_lib.train_eval import _batches, _loss_terms

    _launch(_ddp_worker, tmp_path)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    # reference: one process, same start, each step = mean of the two half-batch gradients
    model, data, cfg, loss_fn, batches = _phase2_setup(tmp_path)
    opt = _sgd(model, cfg)
    model.train()
    model.clip_encoder.eval()
    model.scene_encoder.eval()
    halves = [list(_batches(model, data, [np.asarray(b[r::2]) for b in batches], cfg, 1, True, "cpu"))
              for r in (0, 1)]
    params = [p for g in opt.param_groups for p in g["params"]]
    for step in range(len(batches)):
        opt.zero_grad()
        for r in (0, 1):
            rows, inputs = halves[r][step]
            out = model(*inputs)
            (_loss_terms(loss_fn, model, out, data.labels(rows, "cpu"), cfg, 1)["total"] / 2).backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
    want, start, changed = model.state_dict(), _phase2_setup(tmp_path)[0].state_dict(), []
    for name, value in want.items():
        for r in (0, 1):
            torch.testing.assert_close(ranks[r]["state"][name], value, atol=1e-5, rtol=1e-4)
        changed.append(not torch.equal(value, start[name]))
    assert sum(changed) > 10  # the steps did move the weights, encoder tops included
    assert len(ranks[0]["losses"]) == 2 and ranks[0]["losses"] != ranks[1]["losses"]  # different halves
