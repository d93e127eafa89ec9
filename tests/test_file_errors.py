"""Every damaged file is named: a truncated JSON or .npy gives one line with its path and what to do
(BadFileError), and the commands exit 2 on it with no traceback."""

import json

import numpy as np
import pytest

from geopak_lib.book import cli, predict_cli
from geopak_lib.data.cells import load_geocells
from geopak_lib.training.cache import FeatureCache
from geopak_lib.utils import BadFileError, load_npy, read_json
from cache_helpers import build_cache, tiny_encoders


def test_truncated_json_names_the_file(tmp_path):
    path = tmp_path / "geocells.json"
    path.write_text(json.dumps([{"cell_id": i, "province": "Sindh", "lat": 25.0, "lon": 68.0} for i in range(40)]))
    path.write_bytes(path.read_bytes()[:1020])
    with pytest.raises(BadFileError) as info:
        load_geocells(path)
    msg = str(info.value)
    assert str(path) in msg and "01_geocells" in msg and "\n" not in msg
    with pytest.raises(BadFileError, match="calibration.json cannot be read as JSON.*re-run 06"):
        (tmp_path / "best.calibration.json").write_bytes(b'{"temperature": 1.')
        read_json(tmp_path / "best.calibration.json", "re-run 06_evaluation")


def test_truncated_npy_names_the_file(tmp_path):
    path = tmp_path / "clip.npy"
    np.save(path, np.zeros((100, 8), np.float32))
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(BadFileError) as info:
        load_npy(path, "delete the cache folder")
    msg = str(info.value)
    assert str(path) in msg and "mmap length is greater than file size" in msg and "delete the cache" in msg


def test_cache_with_a_truncated_array_names_it(manifest, tmp_path):  # noqa: F811
    clip, scene = tiny_encoders()
    cache = build_cache(manifest, tmp_path / "c", clip, scene)
    meta_path = cache.path / "complete.json"
    meta = json.loads(meta_path.read_text())
    meta.pop("arrays_sha256")  # a cache written before its arrays had checksums: numpy meets the short file
    meta_path.write_text(json.dumps(meta))
    npy = cache.path / "scene.npy"
    npy.write_bytes(npy.read_bytes()[:200])
    with pytest.raises(BadFileError, match=f"{npy}.*mmap length.*delete {cache.path} to rebuild"):
        FeatureCache(cache.path)
    meta_path.write_bytes(meta_path.read_bytes()[:40])
    with pytest.raises(BadFileError, match=f"{meta_path} cannot be read as JSON"):
        FeatureCache(cache.path)


def test_commands_exit_2_on_a_damaged_file(tmp_path, capsys, monkeypatch):
    path = tmp_path / "scene.npy"
    np.save(path, np.zeros((100, 8), np.float32))
    path.write_bytes(path.read_bytes()[:500])
    monkeypatch.setattr(predict_cli, "run", lambda args: load_npy(path, "delete the cache folder") and 0)
    assert cli.main(["predict", "x.jpg", "--checkpoint", "x.pt"]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
