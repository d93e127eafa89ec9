"""Artifacts that know what they were made from (docs/decisions/stamps.md): checkpoints record the
sha256 of the manifest, geocells and assignments they were trained on, and every step that loads
one refuses a run whose inputs changed; 01 writes its cell set all or none, and never under trained
checkpoints; a cut manifest is refused; test predictions are matched to a checkpoint by content."""

import hashlib
import json
import os

import numpy as np
import pandas as pd
import pytest
import torch

from geopak_lib.data import stamps
from geopak_lib.data.cells import assign_all_rows
from geopak_lib.data.geocells import GeocellConfig, build_geocells
from geopak_lib.data.rundir import RunDir
from geopak_lib.data.stamps import StaleInputError
from geopak_lib.training.checkpoints import load_checkpoint, save_checkpoint


def sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def manifest_frame(n=300, seed=0) -> pd.DataFrame:
    """Two blobs in Sindh, one in Punjab; 70% train."""
    rng = np.random.default_rng(seed)
    centres = [(24.9, 67.0, "Sindh"), (27.7, 68.9, "Sindh"), (31.5, 74.3, "Punjab")]
    k = rng.integers(0, 3, n)
    lat = np.array([centres[i][0] for i in k]) + rng.normal(0, 0.05, n)
    lon = np.array([centres[i][1] for i in k]) + rng.normal(0, 0.05, n)
    return pd.DataFrame({"id": [f"m{i:04d}" for i in range(n)], "latitude": lat, "longitude": lon,
                         "province": [centres[i][2] for i in k],
                         "split": np.where(np.arange(n) < 0.7 * n, "train", "val"),
                         "image_path": [f"img/{i}.jpg" for i in range(n)]})


def notebook_01(run: RunDir, min_cell_size=20):
    """What 01_geocells does with the library (its cells 3-4)."""
    manifest = run.read_manifest()
    train = manifest[manifest["split"] == "train"]
    result = build_geocells(train, GeocellConfig(method="kmeans", min_cell_size=min_cell_size, kmeans_target_size=60))
    return run.write_cell_set(result.cells, assign_all_rows(manifest, result.cells, result.assignments))


@pytest.fixture()
def built(tmp_path):
    run = RunDir(tmp_path / "myrun")
    run.write_manifest(manifest_frame())
    notebook_01(run)
    return run


def trained_checkpoint(run: RunDir, state: dict, phase=1) -> "Path":  # noqa: F821
    """A checkpoint in the run, stamped with the run's inputs as the trainer stamps it."""
    path = run.best_checkpoint(phase)
    save_checkpoint({**state, "inputs": stamps.input_stamps(run.path)}, path)
    return path


def edit_geocells(run: RunDir) -> tuple[str, str]:
    """Move the first cell's centre to Gilgit; -> (sha before, sha after)."""
    path = run.file("geocells.json")
    before = sha(path)
    cells = json.loads(path.read_text())
    cells[0]["center_lat"], cells[0]["center_lon"] = 35.92, 74.31
    path.write_text(json.dumps(cells, indent=1) + "\n")
    return before, sha(path)


# 01 writes its outputs as one set ----------------------------------------------------------------

def test_cell_set_is_stamped_and_a_hand_edit_is_refused(built):
    record = json.loads(built.file("geocells.done.json").read_text())
    assert record["state"] == "complete"
    assert record["files"] == {n: sha(built.file(n)) for n in ("geocells.json", "geocells.csv", "assignments.csv")}
    assert len(built.read_geocells()) >= 3 and len(built.read_assignments()) == 300
    before, after = edit_geocells(built)
    with pytest.raises(StaleInputError, match=rf"geocells\.json changed since 01_geocells wrote it "
                                              rf"\(sha256 {before[:8]}… → {after[:8]}…\)"):
        built.read_geocells()


def test_cell_set_interrupted_between_renames_is_refused(built, monkeypatch):
    old = {n: built.file(n).read_bytes() for n in stamps.CELL_SET}
    real = os.replace

    def crash_on_second(src, dst):
        if ".cellset." in str(src) and str(dst) == str(built.file("geocells.csv")):
            raise KeyboardInterrupt  # the kernel stopped between the first and the second rename into the run
        real(src, dst)

    monkeypatch.setattr(stamps.os, "replace", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        notebook_01(built, min_cell_size=10)  # other cells than the built ones
    monkeypatch.undo()
    assert built.file("geocells.json").read_bytes() != old["geocells.json"]  # the first rename happened
    assert built.file("assignments.csv").read_bytes() == old["assignments.csv"]  # the last did not
    for read in (built.read_geocells, built.read_assignments):
        with pytest.raises(StaleInputError, match=r"01_geocells was interrupted while writing its cell set"):
            read()
    notebook_01(built, min_cell_size=10)  # re-running 01 repairs it
    assert len(built.read_assignments()) == 300
    assert not [p for p in built.path.iterdir() if p.name.startswith(".cellset.")]  # no temp folder left


@pytest.mark.parametrize("cut", ["line_end", "mid_row"])
def test_cut_manifest_is_refused_and_geocells_unchanged(built, cut):
    path = built.file("manifest.csv")
    data = path.read_bytes()
    lines = data.splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:-1]) if cut == "line_end" else data[: len(data) - len(lines[-1]) // 2])
    found = 299 if cut == "line_end" else 300  # half of the last row is still a (short) row
    geocells = built.file("geocells.json").read_bytes()
    with pytest.raises(StaleInputError, match=rf"manifest\.csv does not match its completion record "
                                              rf"manifest\.done\.json \(300 rows recorded, {found} found; .*"
                                              rf"`geopak book myrun --start 00_data_audit`"):
        notebook_01(built, min_cell_size=10)
    assert built.file("geocells.json").read_bytes() == geocells


def test_rerunning_01_under_trained_checkpoints_is_refused(built, ckpt):
    _, model = ckpt
    assert notebook_01(built)  # the same cells again with no checkpoint: fine
    best = trained_checkpoint(built, {"format": "geopak-checkpoint-v1", "model_state": model.state_dict()})
    notebook_01(built)  # the same cells again under checkpoints: nothing changes, nothing refused
    old = {n: built.file(n).read_bytes() for n in stamps.CELL_SET}
    with pytest.raises(StaleInputError, match=rf"01_geocells would replace the geocells under 1 trained checkpoint"
                                              rf"\(s\) \({best}\).*delete {built.path / 'checkpoints'}/"):
        notebook_01(built, min_cell_size=10)
    assert {n: built.file(n).read_bytes() for n in stamps.CELL_SET} == old
    assert load_checkpoint(best)["inputs"]["geocells.json"] == sha(built.file("geocells.json"))


# every step that loads a checkpoint refuses changed inputs --------------------------------------

def test_resume_refuses_edited_geocells(tmp_path):
    from synthetic_training import cfg1, run as train_run

    run = RunDir(tmp_path / "r")
    run.write_manifest(manifest_frame())
    notebook_01(run)
    _, result = train_run(tmp_path, cfg1(epochs=2), "r")
    epoch2 = run.phase_dir(1) / "epoch_2.pt"
    assert load_checkpoint(epoch2)["inputs"] == {n: sha(run.file(n)) for n in stamps.INPUT_FILES}
    before, after = edit_geocells(run)
    with pytest.raises(StaleInputError) as e:
        train_run(tmp_path, cfg1(epochs=3), "r")
    assert str(e.value) == (f"{run.file('geocells.json')} changed since epoch_2.pt ({epoch2}) was trained "
                            f"(sha256 {before[:8]}… → {after[:8]}…); restore it, or delete "
                            f"{run.path / 'checkpoints'}/ and rebuild with `geopak book r --start 02_phase0_province`")
    assert not (run.phase_dir(1) / "epoch_3.pt").exists()


@pytest.fixture()
def stale(built, ckpt, tmp_path, monkeypatch):
    """A trained run (the tiny model's best.pt stamped with the run's inputs), exported, then its
    geocells.json edited."""
    from geopak_lib.inference import model_folder as export
    from geopak_lib.inference.model_folder import export_model
    from geopak_lib.model import encoders

    monkeypatch.setattr(export, "build_encoder", encoders.build_encoder)  # the tiny one the ckpt fixture set
    path, _ = ckpt
    best = trained_checkpoint(built, load_checkpoint(path), phase=2)
    export_model(best, tmp_path / "exported", include_encoders=True)
    before, after = edit_geocells(built)
    return best, tmp_path / "exported", f"sha256 {before[:8]}… → {after[:8]}…"


def test_evaluation_and_predict_loads_refuse(stale):
    from geopak_lib.inference.predictor import GeopakPredictor
    from geopak_lib.training.checkpoints import build_model_from_checkpoint
    from geopak_lib.training.inputs import load_phase_inputs

    best, _, change = stale
    message = rf"geocells\.json changed since best\.pt .* was trained \({change}\)"
    with pytest.raises(StaleInputError, match=message):
        GeopakPredictor.from_checkpoint(best, device="cpu")  # 06, 07, 08 and `geopak predict`
    with pytest.raises(StaleInputError, match=message):
        build_model_from_checkpoint(best)  # 05's phase comparison (analysis/phases.py)
    with pytest.raises(StaleInputError, match=message):
        load_phase_inputs(best.parents[2], 3)  # phase 3 starting from phase 2's best.pt
    assert load_checkpoint(best, inputs=False)["phase"] == 1  # still readable when asked not to check


def test_exported_folder_is_self_contained(stale):
    from geopak_lib.inference.predictor import GeopakPredictor

    _, folder, _ = stale
    assert GeopakPredictor.from_pretrained(folder, device="cpu").model is not None  # the run's edit is not its input


@pytest.mark.parametrize("command", ["predict", "export"])
def test_cli_refuses_with_one_line_and_exit_2(stale, tmp_path, capsys, command):
    from geopak_lib.book import cli
    from tiny_predictor import write_images

    best, _, change = stale
    photos = tmp_path / "photos"
    write_images(photos)
    argv = ([command, str(photos), "--checkpoint", str(best), "--out", str(tmp_path / "p.csv")]
            if command == "predict" else [command, str(best), "--out", str(tmp_path / "again")])
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0]
    assert f"geocells.json changed since best.pt ({best}) was trained ({change})" in err[0]
    assert "`geopak book myrun --start 02_phase0_province`" in err[0]
    assert not (tmp_path / "p.csv").exists() and not (tmp_path / "again").exists()


# test predictions are matched to their checkpoint by content ------------------------------------

def test_predictions_file_is_matched_by_checkpoint_content(built, ckpt):
    from geopak_lib.analysis.prediction_files import read_test_predictions, save_test_predictions

    path, model = ckpt
    best = trained_checkpoint(built, load_checkpoint(path))
    frame = pd.DataFrame({"id": ["m0001", "m0002"], "error_km": [3.5, 80.0]})
    save_test_predictions(built.path, frame, best)
    saved = read_test_predictions(built.path, best)
    assert list(saved["error_km"]) == [3.5, 80.0] and set(saved["checkpoint_sha256"]) == {sha(best)}
    with torch.no_grad():
        next(model.parameters()).add_(1.0)  # phase retrained in place: same path, other weights
    trained_checkpoint(built, {**load_checkpoint(best), "model_state": model.state_dict()})
    assert read_test_predictions(built.path, best) is None
    wrong = built.read_table("predictions_test.csv").assign(checkpoint_sha256="0" * 64)
    built.write_table("predictions_test.csv", wrong)  # right path, wrong hash
    assert read_test_predictions(built.path, best) is None
