"""Shared test set-up: no model hub, no display, deterministic hashing."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")  # tests draw nothing on screen; notebooks keep inline

import pytest  # noqa: E402
import torch  # noqa: E402

from geopak_lib.model.geopak import GeopakModel, ModelConfig  # noqa: E402
from geopak_lib.training.checkpoints import checkpoint_state, save_checkpoint  # noqa: E402
from tiny_predictor import CELLS, SPECS, TinyEncoder  # noqa: E402


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
