"""papermill and nbval with a profile: `geopak params`, and notebooks that stop on a parameter they do not declare."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import yaml

from geopak_lib.book import params
from geopak_lib.book.runner import load_profile, notebook_paths
from geopak_lib.config import notebook_defaults

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args, cwd=ROOT):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "geopak_lib.book.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True)


def test_params_prints_what_the_runner_injects():
    out = _cli("params", "demo", "01")
    assert out.returncode == 0, out.stderr
    flat = yaml.safe_load(out.stdout)
    assert flat == load_profile("demo").parameters_for("01_geocells")
    assert flat["run_dir"] == "runs/demo" and flat["min_cell_size"] == 40  # params/demo.yaml's values
    assert set(flat) <= set(notebook_defaults("01_geocells"))
    bad = _cli("params", "demo", "99_nothing")
    assert bad.returncode == 2 and "names no notebook" in bad.stderr and "Traceback" not in bad.stderr


def test_a_profile_without_run_dir_runs_in_its_own_folder(tmp_path):
    prof = tmp_path / "mypak.yaml"
    prof.write_text("common:\n  seed: 1\nnotebooks: {}\n")
    assert load_profile(str(prof)).parameters_for("01_geocells")["run_dir"] == "runs/mypak"


def test_check_parameters_names_the_stranger_and_what_to_do():
    ok = {**notebook_defaults("01_geocells"), "ROOT": ROOT, "json": json, "_hidden": 1, "In": [""],
          "UTM_ZONE": {"Sindh": 42}}  # an imported constant
    params.check_parameters("01_geocells", ok)  # declared values, modules and paths pass
    with pytest.raises(params.UndeclaredParameter, match=r"'run_dri'.*did you mean 'run_dir'"):
        params.check_parameters("01_geocells", {**ok, "run_dri": "runs/x"})
    with pytest.raises(params.UndeclaredParameter, match=r"geopak params PROFILE 01_geocells"):
        params.check_parameters("01_geocells", {**ok, "common": {}, "notebooks": {}})


def test_every_notebook_checks_right_after_its_parameters_cell():
    for path in notebook_paths():
        cells = nbformat.read(path, as_version=4).cells
        i = next(i for i, c in enumerate(cells) if "parameters" in c.metadata.get("tags", []))
        assert f'check_parameters("{path.stem}", globals())' in cells[i + 1].source, path.name


def _papermill(nb, out, *args):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "papermill", str(nb), str(out), "--cwd", str(ROOT), *args],
                          env=env, capture_output=True, text=True)


def test_papermill_with_a_params_file_uses_its_run_and_stops_on_a_stranger(tmp_path):
    """01 under a profile whose run folder (in tmp) has no manifest yet: the run stops reading that very
    folder, so the file's run_dir is the one used (not 01's default, the smoke run)."""
    run = tmp_path / "myrun"
    prof = tmp_path / "mypak.yaml"
    prof.write_text(f"common:\n  run_dir: {run}\n  device: cpu\nnotebooks: {{}}\n")
    flat = tmp_path / "p.yaml"
    flat.write_text(_cli("params", str(prof), "01_geocells").stdout)
    nb = ROOT / "notebooks" / "01_geocells.ipynb"
    used = _papermill(nb, tmp_path / "o1.ipynb", "-f", str(flat))
    assert used.returncode != 0 and str(run) in used.stderr and "runs/smoke" not in used.stderr
    profile_file = _papermill(nb, tmp_path / "o2.ipynb", "-f", str(ROOT / "params" / "smoke.yaml"))
    assert profile_file.returncode != 0 and "UndeclaredParameter" in profile_file.stderr
    assert "geopak params PROFILE 01_geocells" in profile_file.stderr
    executed = nbformat.read(tmp_path / "o2.ipynb", as_version=4)
    ran = [c for c in executed.cells if c.cell_type == "code" and c.get("execution_count")]
    assert ran[-1].metadata.get("tags") == ["check-parameters"]  # nothing after the check ran


def test_nbval_copies_carry_the_profile(tmp_path):
    written = params.write_parameterised("demo", tmp_path)
    assert [p.name for p in written] == [p.name for p in notebook_paths()]
    cells = nbformat.read(tmp_path / "01_geocells.ipynb", as_version=4).cells
    injected = next(c for c in cells if "injected-parameters" in c.metadata.get("tags", []))
    assert 'run_dir = "runs/demo"' in injected.source and "min_cell_size = 40" in injected.source


def test_nbval_copies_of_make_test_point_into_its_temporary_folder(tmp_path):
    """`make test` runs nbval on `geopak params smoke --under TMP --notebooks-to TMP/nbval`: every path a
    notebook writes to is absolute and inside TMP, so the kernel (started in TMP/nbval) needs no project root."""
    written = params.write_parameterised("smoke", tmp_path / "nbval", under=tmp_path)
    injected = {p.stem: yaml.safe_load(next(c for c in nbformat.read(p, as_version=4).cells
                                            if "injected-parameters" in c.metadata.get("tags", [])).source.replace(" = ", ": "))
                for p in written}
    paths = {(nb, k): v for nb, values in injected.items() for k, v in values.items()
             if k in ("run_dir", "data_csv", "image_dir", "cache_dir")}
    assert len(paths) == 9 + 2 + 2  # run_dir everywhere, 00's dataset, 02's and 03's cache
    assert all(Path(v).is_relative_to(tmp_path) for v in paths.values()), paths
    assert paths[("03_phase1_geography", "cache_dir")] == str(tmp_path / "cache")
