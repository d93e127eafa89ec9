"""The one rule for the best epoch of a phase and the final model of a run (training/selection.py)."""

import numpy as np
import pandas as pd
import pytest

from geopak_lib.data.rundir import RunDir
from geopak_lib.training.checkpoints import CSV_COLUMNS
from geopak_lib.training.selection import best_val_row, phase_summary, select_final_checkpoint, selection_score


def write_phase(run_dir, phase, rows, checkpoint=True):
    d = RunDir(run_dir).phase_dir(phase)
    d.mkdir(parents=True)
    frame = pd.DataFrame([{c: np.nan for c in CSV_COLUMNS} | r for r in rows], columns=CSV_COLUMNS)
    frame.to_csv(d / "losses.csv", index=False)
    if checkpoint:
        (d / "best.pt").write_bytes(b"x")


def val(epoch, **kw):
    return {"epoch": epoch, "split": "val", **kw}


def test_selection_score_phase0_by_balanced_accuracy_later_by_median():
    assert selection_score(0, {"balanced_acc": 0.7, "median_error_km": 1.0}) == -0.7
    assert selection_score(2, {"balanced_acc": 0.7, "median_error_km": 80.0}) == 80.0
    assert selection_score(1, {"median_error_km": float("nan")}) == float("inf")


def test_best_row_ignores_train_rows_and_counts_epoch_0():
    losses = pd.DataFrame([val(0, median_error_km=40.0), val(1, median_error_km=55.0),
                           {"epoch": 1, "split": "train", "median_error_km": 1.0}])
    assert best_val_row(2, losses)["epoch"] == 0


def test_phase_summary_shows_start_and_best(tmp_path):
    write_phase(tmp_path, 0, [val(0, balanced_acc=0.2, province_acc=0.3), val(1, balanced_acc=0.4),
                              val(2, balanced_acc=0.7, province_acc=0.6),
                              {"epoch": 2, "split": "train", "balanced_acc": 0.99}])
    write_phase(tmp_path, 1, [val(0, median_error_km=900.0), val(1, median_error_km=50.0),
                              val(2, median_error_km=80.0)])
    out = phase_summary(tmp_path)
    assert out["best epoch"].tolist() == [2, 1]
    assert out.loc[1, "val median km"] == 50.0 and out.loc[1, "start val median km"] == 900.0
    assert out.loc[0, "start val province acc"] == 0.3 and out.loc[0, "val province acc"] == 0.6


def test_final_model_is_lowest_val_median_of_phases_1_to_3_earlier_on_tie(tmp_path):
    with pytest.raises(FileNotFoundError, match="training notebooks"):
        select_final_checkpoint(tmp_path)
    write_phase(tmp_path, 0, [val(1, balanced_acc=0.9, median_error_km=5.0)])  # untrained location heads
    assert select_final_checkpoint(tmp_path).phase == 0
    write_phase(tmp_path, 1, [val(0, median_error_km=900.0), val(1, median_error_km=60.0)])
    write_phase(tmp_path, 2, [val(0, median_error_km=60.0), val(1, median_error_km=61.0)])  # best = its start
    write_phase(tmp_path, 3, [val(0, median_error_km=70.0), val(1, median_error_km=65.0)])
    choice = select_final_checkpoint(tmp_path)
    assert choice.phase == 1 and choice.checkpoint == RunDir(tmp_path).best_checkpoint(1)
    assert "60.0 km" in choice.reason and "phase 3 65.0 km" in choice.reason
    write_phase(tmp_path / "b", 1, [val(1, median_error_km=60.0)])
    write_phase(tmp_path / "b", 2, [val(1, median_error_km=59.0)])
    assert select_final_checkpoint(tmp_path / "b").phase == 2


def test_a_phase_without_its_checkpoint_is_not_chosen(tmp_path):
    write_phase(tmp_path, 1, [val(1, median_error_km=60.0)])
    write_phase(tmp_path, 2, [val(1, median_error_km=10.0)], checkpoint=False)
    assert select_final_checkpoint(tmp_path).phase == 1


def test_phase_start_check_compares_the_figure_each_phase_is_chosen_on():
    from geopak_lib.training.selection import phase_start_check

    assert phase_start_check(1, {"median_error_km": 90.0}, {"median_error_km": 90.8})[0]  # within 1%
    ok, msg = phase_start_check(1, {"median_error_km": 90.0}, {"median_error_km": 138.8})
    assert not ok and "does NOT reproduce" in msg and "median_error_km" in msg
    assert phase_start_check(0, {"province_acc": 0.52, "median_error_km": 900.0},
                             {"province_acc": 0.52, "median_error_km": 400.0})[0]  # phase 0: province accuracy
    assert not phase_start_check(2, {"median_error_km": float("nan")}, {"median_error_km": 80.0})[0]


def test_a_phase_that_kept_its_start_is_not_the_final_model(tmp_path):
    write_phase(tmp_path, 0, [val(1, balanced_acc=0.7)])
    write_phase(tmp_path, 1, [val(0, median_error_km=150.0), val(5, median_error_km=88.42)])
    write_phase(tmp_path, 2, [val(0, median_error_km=88.38), val(1, median_error_km=99.7)])  # same weights as phase 1
    choice = select_final_checkpoint(tmp_path)
    assert choice.phase == 1 and "phase 2 kept the weights it started from" in choice.reason


def test_final_model_follows_the_adoption_rule_on_per_image_errors(tmp_path):
    """A later phase 1 km better inside the noise is not adopted; one clearly better is."""
    rng = np.random.default_rng(0)
    n = 300
    ids = [f"v{i}" for i in range(n)]
    RunDir(tmp_path).write_manifest(pd.DataFrame({"id": ids, "split": "val", "block_id": [f"b{i // 3}" for i in range(n)],
                                                  "latitude": 30.0, "longitude": 70.0, "province": "Sindh"}))
    base = rng.gamma(2.0, 50.0, n)
    noisy = base + rng.normal(0, 30, n)
    noisy = np.clip(noisy - (np.median(noisy) - np.median(base) + 1.0), 0, None)  # median exactly ~1 km lower
    for phase, e in ((1, base), (2, noisy)):
        write_phase(tmp_path, phase, [val(1, median_error_km=float(np.median(e)))])
        pd.DataFrame({"id": ids, "error_km": e}).to_csv(RunDir(tmp_path).phase_dir(phase) / "val_errors.csv", index=False)
    assert np.median(noisy) < np.median(base)  # a plain `<` would take phase 2
    choice = select_final_checkpoint(tmp_path)
    assert choice.phase == 1 and "not adopted" in choice.reason
    write_phase(tmp_path, 3, [val(1, median_error_km=float(np.median(0.6 * base)))])
    pd.DataFrame({"id": ids, "error_km": 0.6 * base}).to_csv(RunDir(tmp_path).phase_dir(3) / "val_errors.csv", index=False)
    choice = select_final_checkpoint(tmp_path)
    assert choice.phase == 3 and "phase 3 vs 1" in choice.reason and "adopted" in choice.reason
