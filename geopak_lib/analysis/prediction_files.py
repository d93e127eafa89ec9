"""06's test predictions on disk (predictions_test.csv), matched to the checkpoint that made them."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from geopak_lib.data.rundir import RunDir
from geopak_lib.utils import file_sha256


PREDICTIONS_FILE = "predictions_test.csv"


def save_test_predictions(run_dir, frame: pd.DataFrame, checkpoint) -> Path:
    """06's test predictions_frame as ``predictions_test.csv``, stamped with the checkpoint that made
    it, by path and by the sha256 of its file (08_explore picks the worst and the most confidently
    wrong images from it)."""
    return RunDir(run_dir).write_table(PREDICTIONS_FILE, frame.assign(checkpoint=str(checkpoint),
                                                                      checkpoint_sha256=file_sha256(checkpoint)))


def read_test_predictions(run_dir, checkpoint) -> pd.DataFrame | None:
    """The saved test predictions if they were made by ``checkpoint``, else None. Matched by content
    (the sha256 of the checkpoint file), not by its path: a checkpoint retrained in place keeps its path."""
    run = RunDir(run_dir)
    if not run.file(PREDICTIONS_FILE).is_file():
        return None
    frame = run.read_table(PREDICTIONS_FILE)
    if not len(frame) or "checkpoint_sha256" not in frame or not Path(checkpoint).is_file():
        return None
    return frame if (frame["checkpoint_sha256"] == file_sha256(checkpoint)).all() else None
