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


def test_under_moves_what_a_run_writes_and_keeps_what_it_reads(tmp_path):
    """`geopak book smoke --under DIR`: run folder, cache (02 and 03 alike), demo dataset and reports
    under DIR; an absolute path and a real dataset (demo_n_images 0) stay where the profile says."""
    smoke = load_profile("smoke", under=tmp_path / "t")
    root = (tmp_path / "t").resolve()
    assert smoke.run_dir() == root / "runs" / "smoke" and smoke.report_dir() == root / "reports" / "smoke"
    assert smoke.parameters_for("00_data_audit")["data_csv"] == str(root / "data" / "smoke" / "samples.csv")
    assert smoke.parameters_for("00_data_audit")["image_dir"] == str(root / "data" / "smoke" / "images")
    assert {smoke.parameters_for(nb)["cache_dir"] for nb in ("02_phase0_province", "03_phase1_geography")} \
        == {str(root / "cache")}
    check_profile(smoke, book.notebook_paths())  # still a valid profile: one cache for 02 and 03
    own = tmp_path / "own.yaml"
    own.write_text(f"common: {{run_dir: {tmp_path / 'elsewhere'}}}\nnotebooks:\n"
                   "  00_data_audit: {data_csv: data/mine/t.csv, image_dir: data/mine/img, demo_n_images: 0}\n")
    mine = load_profile(str(own), under=root)
    assert mine.run_dir() == tmp_path / "elsewhere" and mine.report_dir() == root / "reports" / "own"
    assert mine.parameters_for("00_data_audit")["data_csv"] == "data/mine/t.csv"
    assert load_profile("smoke").report_dir() == book.REPO_ROOT / "reports" / "smoke"  # without it: the repository


def test_book_under_a_folder_that_cannot_be_made_is_one_line_and_exit_2(tmp_path, capsys):
    from geopak_lib.book.cli import main

    (tmp_path / "file").write_text("")
    assert main(["book", "smoke", "--under", str(tmp_path / "file" / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"geopak book: cannot create --under {tmp_path / 'file' / 'x'}") and err.count("\n") == 1
