"""The runner: profile structure and key checks against the notebooks' parameters."""

import nbformat
import pytest

from geopak_lib.book import runner as book
from geopak_lib.book.runner import ProfileError, check_profile, load_profile


def _notebook(path, params_src):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("import math"),
                nbformat.v4.new_code_cell(params_src, metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("x = 1")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(path))
    return path


@pytest.fixture
def tree(tmp_path):
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "params").mkdir()
    _notebook(tmp_path / "notebooks" / "00_first.ipynb", "run_dir = 'runs/x'\nseed = 0\nlr = 0.1\n")
    _notebook(tmp_path / "notebooks" / "01_second.ipynb", "run_dir = 'runs/x'\nseed = 0\nepochs = 2\n")
    return tmp_path


def _write(tree, text):
    (tree / "params" / "p.yaml").write_text(text)
    return load_profile("p", root=tree)


def test_valid_profile_passes(tree):
    prof = _write(tree, "common: {run_dir: runs/p, seed: 1}\nnotebooks:\n  00_first: {lr: 0.5}\n  01_second: {epochs: 3}\n")
    check_profile(prof, book.notebook_paths(tree))
    assert prof.parameters_for("00_first") == {"run_dir": "runs/p", "seed": 1, "lr": 0.5}


def test_misspelled_key_names_key_and_notebook(tree):
    prof = _write(tree, "common: {run_dir: runs/p}\nnotebooks:\n  01_second: {epoch: 3}\n")
    with pytest.raises(ProfileError) as e:
        check_profile(prof, book.notebook_paths(tree))
    msg = str(e.value)
    assert "'epoch'" in msg and "01_second.ipynb" in msg and "did you mean 'epochs'" in msg


def test_common_key_must_be_declared_everywhere(tree):
    prof = _write(tree, "common: {lr: 0.1}\n")
    with pytest.raises(ProfileError, match=r"'lr' \(section common\) is not a parameter of 01_second"):
        check_profile(prof, book.notebook_paths(tree))


def test_unknown_notebook_and_section(tree):
    prof = _write(tree, "notebooks:\n  02_missing: {a: 1}\n")
    with pytest.raises(ProfileError, match="02_missing"):
        check_profile(prof, book.notebook_paths(tree))
    with pytest.raises(ProfileError, match="unknown section"):
        _write(tree, "commons: {seed: 1}\n")


def test_missing_profile_lists_known(tree):
    (tree / "params" / "demo.yaml").write_text("common: {}\n")
    with pytest.raises(ProfileError, match="known profiles: demo"):
        load_profile("nope", root=tree)


def test_profile_with_another_profiles_run_dir_is_refused(tree):
    (tree / "params" / "smoke.yaml").write_text("common:\n  run_dir: runs/smoke\n")
    with pytest.raises(ProfileError, match="run_dir 'runs/smoke' belongs to the profile 'smoke'.*runs/p"):
        _write(tree, "common:\n  run_dir: runs/smoke\n")
    assert _write(tree, "common:\n  run_dir: runs/p\n").common["run_dir"] == "runs/p"
    assert _write(tree, "common:\n  run_dir: runs/elsewhere\n").common["run_dir"] == "runs/elsewhere"
    assert load_profile("smoke", root=tree).common["run_dir"] == "runs/smoke"
