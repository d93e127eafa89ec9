"""Shared test set-up: no model hub, no display, deterministic hashing."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")  # tests draw nothing on screen; notebooks keep inline

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors gain nothing from threads; on a shared 2-core machine they only oversubscribe
    (measured 2-6x slower with 2 threads under load: docs/decisions/encoders.md)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
