"""The run folder: typed, atomic reads and writes, clear errors, and geocells.csv read back by
anyone (pandas) building a model and a loss and training on it."""

import numpy as np
import pandas as pd
import pytest
import torch

from geopak_lib.data.cells import CELL_COLUMNS, load_geocells, parse_id_list
from geopak_lib.data.rundir import RunDir, calibration_path
from geopak_lib.model.geopak import GeopakModel, ModelConfig
from geopak_lib.model.losses import GeopakLoss


def test_manifest_round_trip_keeps_ids_as_text(tmp_path):
    run = RunDir(tmp_path / "run")
    run.write_manifest(pd.DataFrame({"id": ["007", "8"], "split": ["train", "val"]}))
    back = run.read_manifest()
    assert back["id"].tolist() == ["007", "8"]
    assert not list((tmp_path / "run").glob(".*tmp"))  # atomic: no temp file left behind


def test_missing_artifact_names_the_notebook(tmp_path):
    with pytest.raises(FileNotFoundError, match="01_geocells"):
        RunDir(tmp_path).read_assignments()
    assert RunDir(tmp_path).read_baselines() is None and RunDir(tmp_path).read_final_checkpoint() is None


def test_final_checkpoint_record_and_paths(tmp_path):
    run = RunDir(tmp_path)
    run.write_final_checkpoint(run.best_checkpoint(2))
    assert run.read_final_checkpoint() == tmp_path / "checkpoints" / "phase2" / "best.pt"
    assert calibration_path(run.best_checkpoint(2)).name == "best.calibration.json"


@pytest.mark.parametrize("value, want", [([3, 7], [3, 7]), ("3 7 12", [3, 7, 12]), ("[3, 7]", [3, 7]), ("", []),
                                         (float("nan"), []), (np.array([1, 2]), [1, 2])])
def test_neighbor_ids_in_every_stored_form(value, want):
    assert parse_id_list(value) == want


def test_geocells_csv_read_with_pandas_builds_model_and_loss_and_trains(tmp_path):
    cells = pd.DataFrame({"cell_id": [0, 1, 2], "province_id": [0, 0, 1], "province": ["Sindh", "Sindh", "Punjab"],
                          "center_lat": [25.0, 26.0, 31.0], "center_lon": [67.0, 68.0, 73.0],
                          "radius_km": [20.0, 30.0, 25.0], "neighbor_cell_ids": [[1], [0], []],
                          "n_samples": [40, 41, 42]})
    RunDir(tmp_path).write_geocells(cells)
    raw = pd.read_csv(tmp_path / "geocells.csv")  # as a user reads it: neighbours are "1", "0", NaN
    assert list(raw.columns) == CELL_COLUMNS
    torch.manual_seed(0)
    model = GeopakModel(ModelConfig(clip_dim=4, scene_dim=3, fused_dim=8, province_hidden=8, cell_hidden=8,
                                    small_cell_hidden=4, offset_hidden=8, aux_hidden=4, cell_emb_dim=2,
                                    prov_emb_dim=2), raw)
    assert model.cells["neighbor_cell_ids"].tolist() == [[1], [0], []]
    loss_fn = GeopakLoss(raw, [10, 5, 0, 0, 0, 0, 0])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    out = model.forward_features(torch.randn(4, 4), torch.randn(4, 3))
    terms = loss_fn(model, out, torch.tensor([0, 0, 1, 0]), torch.tensor([0, 1, 2, 1]),
                    torch.tensor([25.0, 26.0, 31.0, 26.1]), torch.tensor([67.0, 68.0, 73.0, 68.1]), 5)
    opt.zero_grad()
    terms["total"].backward()
    opt.step()
    assert torch.isfinite(terms["total"])
    assert load_geocells(tmp_path / "geocells.csv").equals(load_geocells(tmp_path))  # CSV and JSON agree


def test_artifacts_are_readable_by_others(tmp_path):
    """mkstemp makes 0600 files; artifacts get the mode plain open() gives (0666 & ~umask)."""
    import os

    path = RunDir(tmp_path).write_manifest(pd.DataFrame({"id": ["1"]}))
    mask = os.umask(0)
    os.umask(mask)
    assert (path.stat().st_mode & 0o777) == 0o666 & ~mask


def test_no_run_at_all_names_the_command_that_makes_one(tmp_path, capsys):
    """A notebook opened with no run behind it (e.g. run_dir = "runs/smoke" absent) fails on its
    first read with one line naming the command, and IPython shows that line, not a traceback."""
    from IPython.core.interactiveshell import InteractiveShell

    from geopak_lib.data.rundir import MissingRunError
    from geopak_lib.training.selection import select_final_checkpoint

    run = RunDir(tmp_path / "runs" / "smoke")
    want = f"no run at {run.path}: make one with `make book PROFILE=smoke` (or `geopak book smoke`)"
    for read in (run.read_manifest, run.read_geocells, lambda: select_final_checkpoint(run.path)):
        with pytest.raises(MissingRunError, match="make book PROFILE=smoke") as info:
            read()
        assert str(info.value).startswith(want)
    shell = InteractiveShell.instance()
    shell.user_ns["run"] = run
    capsys.readouterr()
    result = shell.run_cell("run.read_manifest()")
    assert isinstance(result.error_in_exec, MissingRunError)
    shown = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert shown == [f"MissingRunError: {result.error_in_exec}"]  # one line, no traceback
