"""Small shared helpers: seeding, atomic writes, device choice."""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA). Call first in every notebook."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)


def pick_device(device: str = "auto") -> torch.device:
    """'auto' -> cuda if available, else cpu. Anything else is passed to torch.device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def atomic_write_bytes(path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same folder and os.replace."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_torch_save(obj, path) -> None:
    """torch.save to a temp file then rename: a kill mid-save never leaves a corrupt file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def use_project_root() -> Path:
    """chdir to the project root (the folder holding params/ and notebooks/) and return it.

    papermill already runs with the root as working directory, but JupyterLab and nbval start a
    notebook's kernel in notebooks/, where the root-relative paths of the parameters would break.
    """
    here = Path.cwd().resolve()
    for cand in (here, *here.parents):
        if (cand / "params").is_dir() and (cand / "notebooks").is_dir():
            os.chdir(cand)
            return cand
    return here
