"""Two processes on gloo over localhost give what one process gives: the feature cache built by
``torchrun -m geopak_lib.book.distributed_cli cache`` (the real launch path) equals notebook 02's
one-process cache and has its key, and two DDP phase-2 steps equal one process accumulating the
same two half-batches' mean gradient."""

import os
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image
import yaml

from geopak_lib.book import distributed_cli
from geopak_lib.training import distributed
from geopak_lib.training import cache as features
from geopak_lib.model.encoders import build_encoder
from geopak_lib.training.cache import FeatureCache
from geopak_lib.utils import seed_everything

REPO = Path(__file__).resolve().parent.parent
SPECS = {"clip_spec": "open_clip:ViT-S-32:none@32", "scene_spec": "timm:tf_efficientnet_lite0@32"}
PROVINCES4 = ["Sindh", "Punjab", "Balochistan", "Khyber Pakhtunkhwa"]


def _table(folder, n=14):
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        path = folder / f"{i}.jpg"
        pixels = rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)
        if not path.exists():  # written once: ranks that call this later must not rewrite what others read
            Image.fromarray(pixels).save(path, quality=90)
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


def test_shard_is_distributed_sampler_slicing():
    assert distributed.shard(range(7), 0, 2) == [0, 2, 4, 6]
    assert distributed.shard(range(7), 1, 2) == [1, 3, 5]
    with pytest.raises(ValueError, match="rank 2"):
        distributed.shard(range(7), 2, 2)


def _run_and_profile(tmp_path, manifest=True):
    """A run folder (manifest.csv of 14 JPEGs: 10 train, 4 val) and a profile in the book's format
    with tiny real encoders (random weights, built offline)."""
    run = tmp_path / "run"
    run.mkdir()
    if manifest:
        _table(tmp_path / "img").to_csv(run / "manifest.csv", index=False)
    profile = tmp_path / "tiny.yaml"
    cache = {"cache_dir": str(tmp_path / "cache"), "cache_views": 1, "cache_batch_size": 4}
    profile.write_text(yaml.safe_dump({
        "common": {"run_dir": str(run), "seed": 3, "device": "cpu"},
        # 03 reads 02's cache, so a profile gives both the same cache keys (geopak_lib.config)
        "notebooks": {"02_phase0_province": {**SPECS, **cache},
                      "03_phase1_geography": cache}}))
    return run, profile


def test_torchrun_two_ranks_build_the_cache_notebook_02_then_finds(tmp_path, monkeypatch):
    run, profile = _run_and_profile(tmp_path)
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "geopak_lib.book.distributed_cli", "cache", "--profile", str(profile)], cwd=REPO,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "built by 2 process(es)" in done.stdout
    # reference: notebook 02's own cells, in one process (seed first, then the encoders)
    seed_everything(3)
    manifest = pd.read_csv(run / "manifest.csv", dtype={"id": str})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random-weights warnings
        clip, scene = build_encoder(SPECS["clip_spec"]), build_encoder(SPECS["scene_spec"])
    one = FeatureCache.build_or_load(manifest, clip, scene, cache_root=tmp_path / "one", views=1, batch_size=4,
                                     num_workers=0, device="cpu", seed=3, progress=False)
    built = [p for p in (tmp_path / "cache").iterdir()]
    assert [p.name for p in built] == [one.path.name]  # same key, hence the notebook's cache
    assert str(built[0].resolve()) in done.stdout
    two = FeatureCache(built[0])
    assert len(two) == 14 and two.clip.shape[0] == 14 + 10  # 24 slots = 6 batches of 4, 3 per rank
    np.testing.assert_allclose(two.clip, one.clip, rtol=2e-3, atol=1e-3)  # float16 storage
    np.testing.assert_allclose(two.scene, one.scene, rtol=2e-3, atol=1e-3)
    assert two.meta["parts"] == 2 and not [p for p in two.path.iterdir() if p.name.startswith("part")]
    # notebook 02's call finds it complete: same folder, nothing rebuilt
    monkeypatch.setattr(features, "build_slots", lambda *a, **k: pytest.fail("the cache was rebuilt"))
    again = FeatureCache.build_or_load(manifest, clip, scene, cache_root=tmp_path / "cache", views=1, batch_size=4,
                                       num_workers=0, device="cpu", seed=3)
    assert again.path == built[0]


def test_missing_manifest_is_a_clear_message_and_exit_code_2(tmp_path, monkeypatch, capsys):
    run, profile = _run_and_profile(tmp_path, manifest=False)
    monkeypatch.chdir(tmp_path)  # main() moves to the repository root, as the book does
    assert distributed_cli.main(["cache", "--profile", str(profile)]) == 2  # returned, not raised: no traceback
    err = capsys.readouterr().err
    assert f"{run / 'manifest.csv'} not found: run notebooks 00-01 first" in err
    assert f"geopak book {profile} --only 00_data_audit,01_geocells" in err
    assert not (tmp_path / "cache").exists()


def test_misspelled_profile_key_and_help(tmp_path, capsys):
    _, profile = _run_and_profile(tmp_path, manifest=False)
    profile.write_text(profile.read_text().replace("cache_views", "cache_view"))
    assert distributed_cli.main(["cache", "--profile", str(profile)]) == 2
    assert "notebooks.02_phase0_province: unknown key 'cache_view' (did you mean 'cache_views'?)" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        distributed_cli.main(["cache", "--help"])
    assert exit_.value.code == 0
    assert "torchrun --standalone --nproc_per_node 4 -m geopak_lib.book.distributed_cli cache" in capsys.readouterr().out


def _phase2_setup(tmp_path):
    from geopak_lib.model.geopak import GeopakModel, ModelConfig
    from geopak_lib.training.config import PhaseConfig
    from geopak_lib.training.inputs import TrainData, make_loss

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
    from geopak_lib.training.config import configure_trainable

    groups = configure_trainable(model, cfg)
    return torch.optim.SGD([p for ps in groups.values() for p in ps], lr=0.5)


def _ddp_worker(rank, tmp_path):
    model, data, cfg, loss_fn, batches = _phase2_setup(tmp_path)
    losses = distributed.ddp_phase2_steps(model, data, cfg, loss_fn, row_batches=batches, device=torch.device("cpu"),
                                          opt=_sgd(model, cfg))
    torch.save({"state": model.state_dict(), "losses": losses}, tmp_path / f"rank{rank}.pt")


def test_ddp_phase2_steps_equal_one_process_accumulating_the_halves(tmp_path):
    from geopak_lib.training.passes import batches as pass_batches, loss_terms

    _table(tmp_path / "img")  # the images, before the ranks read them
    _launch(_ddp_worker, tmp_path)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    # reference: one process, same start, each step = mean of the two half-batch gradients
    model, data, cfg, loss_fn, batches = _phase2_setup(tmp_path)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    opt = _sgd(model, cfg)
    model.train()
    model.clip_encoder.eval()
    model.scene_encoder.eval()
    # each half's augmentation is seeded by the rows' places in the global batch (r, r + 2, ...): with
    # places counted within the half, rank 1 would repeat rank 0's views and this comparison would fail
    halves = [list(pass_batches(model, data, [np.asarray(b[r::2]) for b in batches], cfg.pass_settings(), epoch=1,
                                train=True, device="cpu",
                            positions=[list(range(len(b)))[r::2] for b in batches])) for r in (0, 1)]
    params = [p for g in opt.param_groups for p in g["params"]]
    for step in range(len(batches)):
        opt.zero_grad()
        for r in (0, 1):
            rows, inputs = halves[r][step]
            out = model(*inputs)
            (loss_terms(loss_fn, model, out, data.labels(rows, "cpu"), cfg=cfg.pass_settings(),
                        epoch=1)["total"] / 2).backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
    want, changed = model.state_dict(), []
    for name, value in want.items():
        for r in (0, 1):
            torch.testing.assert_close(ranks[r]["state"][name], value, atol=1e-5, rtol=1e-4)
        changed.append(not torch.equal(value, start[name]))
    assert sum(changed) > 10  # the steps did move the weights, encoder tops included
    assert len(ranks[0]["losses"]) == 2 and ranks[0]["losses"] != ranks[1]["losses"]  # different halves
