"""One book per run folder: an advisory lock held while ``geopak book`` writes a run.

Two books writing one run folder interleave checkpoints, caches and reports into a run that no
single profile made (docs/decisions/sharing.md). ``fcntl.flock`` is released by the kernel when
the holder exits, even on a crash, so a stale lock file never blocks the next run.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

LOCK_NAME = ".book.lock"


class RunLocked(RuntimeError):
    """Another process holds the run folder's lock; the message names its pid."""


@contextlib.contextmanager
def run_lock(run_dir: Path):
    """Hold ``<run_dir>/.book.lock`` for the block; raise RunLocked at once if another holds it."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
            raise RunLocked(f"{run_dir} is in use by another `geopak book` (pid {holder}); "
                            f"wait for it or stop it, then run again") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield path
    finally:
        os.close(fd)  # closing releases the flock
