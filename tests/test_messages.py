"""One-line messages and exit 2 for user mistakes around demo, predict's --checkpoint and the
kernels the book starts (no traceback, no torch advice, no plain-text-kernel warning)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def geopak(*args, cwd=None):
    proc = subprocess.run([sys.executable, "-m", "geopak_lib.book.cli", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd)
    return proc.returncode, proc.stderr


@pytest.mark.parametrize("args, words", [
    (["--n", "-3"], "--n must be >= 1, got -3"),
    (["--n", "2", "--image-size", "8"], "--image-size must be >= 16"),
    (["--n", "2", "--poor-share", "1.5"], "--poor-share must be in [0, 1]"),
])
def test_demo_bad_numbers(tmp_path, args, words):
    rc, err = geopak("demo", "--out", tmp_path / "d", *args)
    assert rc == 2 and err.startswith(f"geopak demo: {words}")
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "d").exists()


def test_demo_unwritable_out(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should go")
    rc, err = geopak("demo", "--out", blocker / "sub", "--n", "2")
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert err.startswith(f"geopak demo: cannot create --out {blocker / 'sub'}")


@pytest.fixture()
def photos(tmp_path):
    from PIL import Image

    (tmp_path / "photos").mkdir()
    Image.new("RGB", (20, 20), (10, 120, 30)).save(tmp_path / "photos" / "a.jpg")
    return tmp_path / "photos"


def test_checkpoint_given_a_model_folder_points_to_model(tmp_path, photos):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"format": "geopak-model"}))
    rc, err = geopak("predict", photos, "--checkpoint", folder, "--out", tmp_path / "p.csv")
    assert rc == 2 and "Traceback" not in err
    assert "is a folder, not a checkpoint file" in err and "--model" in err


def test_checkpoint_given_a_run_folder_says_best_pt(tmp_path, photos):
    rc, err = geopak("predict", photos, "--checkpoint", tmp_path, "--out", tmp_path / "p.csv")
    assert rc == 2 and "is a folder" in err and "best.pt" in err and "--model" not in err


def test_checkpoint_that_is_not_one_says_so_without_torch_advice(tmp_path, photos):
    table = tmp_path / "manifest.csv"
    table.write_text("id,image\na,a.jpg\n")
    rc, err = geopak("predict", photos, "--checkpoint", table, "--out", tmp_path / "p.csv")
    assert rc == 2 and "Traceback" not in err
    assert f"{table} is not a GEOPAK checkpoint" in err
    assert "weights_only" not in err and len(err.strip().splitlines()) == 1


def test_book_kernels_start_encrypted_without_the_tcp_warning(tmp_path):
    import nbformat

    from geopak_lib.book.kernels import kernel_options

    zmq = pytest.importorskip("zmq")
    if not zmq.has("curve"):
        pytest.skip("pyzmq without CurveZMQ: kernels start as before")
    options = kernel_options()
    assert options["kernel_manager_class"]().transport_encryption == "auto"
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("print(6 * 7)")]
    nbformat.write(nb, tmp_path / "t.ipynb")
    script = ("import papermill; from geopak_lib.book.kernels import kernel_options; "
              f"papermill.execute_notebook({str(tmp_path / 't.ipynb')!r}, {str(tmp_path / 'o.ipynb')!r}, "
              "kernel_name='python3', progress_bar=False, **kernel_options())")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert "without encryption" not in proc.stderr
    out = nbformat.read(tmp_path / "o.ipynb", as_version=4)
    assert out.cells[0].outputs[0]["text"] == "42\n"
