"""Shared test set-up (no model hub, no display, one thread) and the fixtures several test modules use:
`ckpt` (a tiny predictor checkpoint), `concept_ckpt` (the same with concept heads), `trained` (real small encoders), `manifest` (12 images),
`demo_manifest` (20 demo images) and `smoke_run` (the smoke book, once per session, in a temporary folder). Helpers live in tiny_predictor.py, synthetic_training.py and cache_helpers.py."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")  # tests draw nothing on screen; notebooks keep inline

import warnings  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from geopak_lib.book import demo  # noqa: E402
from geopak_lib.model.encoders import build_encoder  # noqa: E402
from geopak_lib.model.geopak import GeopakModel, ModelConfig  # noqa: E402
from geopak_lib.training.checkpoints import checkpoint_state, save_checkpoint  # noqa: E402
from tiny_predictor import CELLS, CONCEPTS, NAMED_CELLS, SPECS, TinyEncoder  # noqa: E402


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors gain nothing from threads; on a shared 2-core machine they only oversubscribe
    (measured 2-6x slower with 2 threads under load: docs/decisions/encoders.md)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture()
def ckpt(tmp_path, monkeypatch):
    """A phase-1 checkpoint of a tiny model with both encoders; encoders.build_encoder rebuilds the
    tiny ones from their specs (the real specs need open_clip/timm models, too slow for a unit test)."""
    from geopak_lib.model import encoders

    monkeypatch.setattr(encoders, "build_encoder",
                        lambda spec, weights=None, strict=False: TinyEncoder(*SPECS[spec], spec))
    torch.manual_seed(0)
    cfg = ModelConfig(clip_dim=6, scene_dim=5, fused_dim=8, province_hidden=8, cell_hidden=8, small_cell_hidden=8,
                      offset_hidden=8, aux_hidden=8, cell_emb_dim=2, prov_emb_dim=2)
    model = GeopakModel(cfg, CELLS, TinyEncoder(6, 16, "tiny:clip"), TinyEncoder(5, 12, "tiny:scene"))
    for p in model.offset_head.out[-1].parameters():  # non-zero offsets, so they are tested too
        torch.nn.init.normal_(p, std=0.5)
    path = tmp_path / "run" / "checkpoints" / "phase1" / "best.pt"
    save_checkpoint(checkpoint_state(model, None, None, {"phase": 1}, epoch=3, metrics={}, history=[], best={},
                                     epochs_since_best=0, stopped=False, sampler={}), path)
    return path, model.eval()


@pytest.fixture()
def concept_ckpt(tmp_path, monkeypatch):
    """The tiny checkpoint with concept heads (and the bottleneck), their last layers randomised."""
    from geopak_lib.model import encoders

    monkeypatch.setattr(encoders, "build_encoder",
                        lambda spec, weights=None, strict=False: TinyEncoder(*SPECS[spec], spec))
    torch.manual_seed(1)
    cfg = ModelConfig(clip_dim=6, scene_dim=5, fused_dim=8, province_hidden=8, cell_hidden=8, small_cell_hidden=8,
                      offset_hidden=8, aux_hidden=8, cell_emb_dim=2, prov_emb_dim=2, concept_classes=CONCEPTS,
                      concept_weight=0.5, concept_hidden=8, concept_bottleneck=True)
    model = GeopakModel(cfg, CELLS, TinyEncoder(6, 16, "tiny:clip"), TinyEncoder(5, 12, "tiny:scene"))
    for head in model.concept_heads.heads.values():
        torch.nn.init.normal_(head[-1].weight, std=2.0)
    path = tmp_path / "crun" / "checkpoints" / "phase1" / "best.pt"
    save_checkpoint(checkpoint_state(model, None, None, {"phase": 1}, epoch=3, metrics={}, history=[], best={},
                                     epochs_since_best=0, stopped=False, sampler={}), path)
    return path, model.eval()


@pytest.fixture()
def trained(tmp_path):
    """A phase-1 checkpoint with real small encoders: a random-weight ViT (its spec cannot rebuild
    it) and EfficientNet-Lite0 with the package's ImageNet weights (its spec can), plus images."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        clip, scene = build_encoder("open_clip:ViT-S-32:none@32"), build_encoder("timm:tf_efficientnet_lite0@32")
    cfg = ModelConfig(clip_dim=clip.dim, scene_dim=scene.dim, fused_dim=16, province_hidden=8, cell_hidden=8,
                      small_cell_hidden=8, offset_hidden=8, aux_hidden=8, cell_emb_dim=2, prov_emb_dim=2)
    model = GeopakModel(cfg, NAMED_CELLS, clip, scene)
    for p in model.offset_head.out[-1].parameters():
        torch.nn.init.normal_(p, std=0.5)
    path = tmp_path / "run" / "checkpoints" / "phase1" / "best.pt"
    save_checkpoint(checkpoint_state(model, None, None, {"phase": 1}, epoch=3, metrics={}, history=[], best={},
                                     epochs_since_best=0, stopped=False, sampler={}), path)
    rng = np.random.default_rng(0)
    (tmp_path / "imgs").mkdir()
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(tmp_path / "imgs" / f"{i}.jpg")
    return path, model, tmp_path / "imgs"


@pytest.fixture()
def manifest(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(12):
        path = tmp_path / "img" / f"{i}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(path)
        rows.append({"id": f"s{i}", "image_path": str(path), "sha1": f"h{i}",
                     "split": "train" if i < 8 else ("val" if i < 10 else "test"),
                     "province": "Sindh" if i % 3 else "Balochistan"})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def demo_manifest(tmp_path_factory):
    """20 demo images (built once per module): 10 train, 5 val, 5 test."""
    out = tmp_path_factory.mktemp("demo")
    samples = pd.read_csv(demo.build_demo_dataset(out, n_images=20, seed=0, image_size=32), dtype={"id": str})
    samples["image_path"] = [str(out / "images" / i) for i in samples["image"]]
    samples["province_id"] = 0
    samples["split"] = (["train"] * 10 + ["val"] * 5 + ["test"] * 5)
    return samples


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """The smoke book run once per session under a temporary folder (`geopak book smoke --under DIR`,
    no site): its Profile, whose run_dir(), report_dir() and cache_dir name that folder. For `book` tests."""
    from geopak_lib.book.runner import load_profile, run_book

    root = tmp_path_factory.mktemp("smoke_run")
    run_book("smoke", under=root, site=False)
    return load_profile("smoke", under=root)
