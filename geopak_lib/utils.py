"""Small shared helpers: seeding, atomic writes, device choice, streaming hashes, and two bits of
array maths used across layers (a row softmax and L2 normalisation), and the one sanitiser for
file names derived from data (safe_child)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA). Call first in every notebook. (String hashing
    is seeded by PYTHONHASHSEED before the interpreter starts; the Makefile sets it for tests.)"""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(device: str = "auto") -> torch.device:
    """'auto' -> cuda if available, else cpu. Anything else is passed to torch.device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _readable(tmp) -> None:
    """mkstemp makes 0600 files; give the final file the mode a plain open() would (0666 & ~umask),
    so run artifacts and exported models can be shared and read by others."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(tmp, 0o666 & ~mask)


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
        _readable(tmp)
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
        _readable(tmp)
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


class BadFileError(ValueError):
    """A file that cannot be read as what it should hold (truncated JSON, a short .npy): the one-line
    message names the file and says how to remake it. The commands exit 2 on it, with no traceback."""


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__


def read_json(path, fix: str):
    """json.load of a file whose errors name it and say what to do (fix); raises BadFileError."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:  # ValueError: JSONDecodeError and UnicodeDecodeError
        raise BadFileError(f"{path} cannot be read as JSON ({_one_line(e)}); {fix}") from None


def load_npy(path, fix: str, mmap_mode: str | None = "r") -> np.ndarray:
    """np.load of a .npy array (no pickles), memory-mapped by default; a truncated or foreign file
    (numpy's 'mmap length is greater than file size') raises BadFileError naming it, with ``fix``."""
    try:
        return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise BadFileError(f"{path} cannot be read as a .npy array ({_one_line(e)}); {fix}") from None


def file_sha256(path) -> str:
    """sha256 hex digest of a file, streamed in 1 MiB blocks (CLIP weight files are ~600 MB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def state_sha256(state: dict) -> str:
    """sha256 of a state_dict's names and tensor bytes, in name order (the same weights give the same
    digest whatever the dict's order or the tensors' device)."""
    h = hashlib.sha256()
    for name, t in sorted(state.items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())  # reshape: 0-d
    return h.hexdigest()


def softmax(z) -> np.ndarray:
    """Row-wise softmax of logits (N, C) -> probabilities (N, C), shifted for stability."""
    z = np.asarray(z, float)
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def l2_normalize(a) -> np.ndarray:
    """Rows of (N, D) scaled to unit length (a zero row stays zero), float32."""
    a = np.asarray(a, np.float32)
    return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)


@contextmanager
def quiet_logging(level: int = logging.WARNING):
    """Hold back log records of ``level`` and below inside the block, then restore the caller's own
    process-wide logging.disable level (not NOTSET: a caller that had silenced logging stays silent)."""
    before = logging.root.manager.disable
    logging.disable(max(level, before))
    try:
        yield
    finally:
        logging.disable(before)


def quiet_rebuild():
    """Log warnings held back while a model is rebuilt whose encoders the book already reported
    (random weights and all: 03's concept variants, 05's phase comparison), so a report says it
    once, not once per rebuild."""
    return quiet_logging(logging.WARNING)


_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")


def safe_name(name) -> str:
    """A data-derived string as a plain file name: only [A-Za-z0-9._-], no leading dot, at most ~90
    characters. A changed name gets 8 hex digits of the original's sha256, so that 'a/b' and 'a_b'
    (or two long ids sharing a prefix) never land on one file (docs/decisions/sharing.md)."""
    name = str(name)
    safe = _UNSAFE_NAME.sub("_", name)
    safe = "_" + safe[1:] if safe.startswith(".") else safe
    if safe == name and 0 < len(name) <= 90:
        return name
    return f"{safe[:80]}-{hashlib.sha256(name.encode('utf-8', 'surrogatepass')).hexdigest()[:8]}"


def safe_child(folder, name, suffix: str = "") -> Path:
    """folder / (safe_name(name) + suffix), checked to resolve inside folder (ValueError otherwise:
    the suffix is the caller's, and a symlinked child could still point out)."""
    folder = Path(folder)
    path = folder / (safe_name(name) + suffix)
    root = folder.resolve()
    if path.resolve().parent != root:
        raise ValueError(f"{path}: a file named from data would leave {folder}")
    return path
