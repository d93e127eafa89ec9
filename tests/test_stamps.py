"""Artifacts that know what they were made from: a checkpoint's weights are checked on load."""
import pytest
import torch

from geopak_lib.training.checkpoints import CKPT_FORMAT, load_checkpoint, save_checkpoint


def _flip_tensor_byte(path, needle: bytes):
    data = bytearray(path.read_bytes())
    i = data.find(needle)
    assert i >= 0
    data[i] ^= 0x01  # inside the stored tensor's bytes: the zip stays readable, the weights differ
    path.write_bytes(bytes(data))


def test_flipped_tensor_byte_refused(tmp_path):
    w = torch.arange(64, dtype=torch.float32) + 0.5
    path = tmp_path / "best.pt"
    save_checkpoint({"format": CKPT_FORMAT, "model_state": {"w": w}}, path)
    ok = load_checkpoint(path)
    assert torch.equal(ok["model_state"]["w"], w) and len(ok["model_sha256"]) == 64
    _flip_tensor_byte(path, w[40:48].numpy().tobytes())
    with pytest.raises(ValueError, match=r"best\.pt: its weights changed since it was saved"):
        load_checkpoint(path)


def test_image_above_pixel_limit_rejected_before_decoding(tmp_path, monkeypatch):
    from PIL import Image

    from geopak_lib.data import images

    path = tmp_path / "big.png"
    Image.new("RGB", (200, 100)).save(path)
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 200 * 100 - 1)  # one pixel under this image
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # lifted elsewhere in the process: still refused
    with pytest.raises(images.ImageLoadError, match=r"too large: 200 x 100 .*MAX_IMAGE_PIXELS") as e:
        images.load_rgb(path)
    assert e.value.code == "image_unreadable"
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 200 * 100)  # exactly at the limit: accepted
    assert images.load_rgb(path).size == (200, 100)


def test_truncated_gallery_json_is_optional_under_auto(tmp_path):
    from geopak_lib.inference.refinement import gallery_paths, load_gallery, refinement_choice

    ckpt = tmp_path / "best.pt"
    ckpt.write_bytes(b"weights")
    _, meta = gallery_paths(ckpt)
    meta.write_text('{"checkpoint_sha256": "ab')  # cut mid-string
    gallery, settings, said = refinement_choice(lambda: load_gallery(ckpt), "auto")
    assert gallery is None and settings is None
    assert said.startswith("off: ") and str(meta) in said and "not valid JSON" in said
    with pytest.raises(ValueError, match=r"best\.gallery\.json is not valid JSON"):
        refinement_choice(lambda: load_gallery(ckpt), True)


def test_feature_cache_checks_its_arrays_and_names_bad_json(tmp_path):
    import json
    import time

    import numpy as np

    from geopak_lib.training.cache import FeatureCache
    from geopak_lib.utils import file_sha256

    clip = np.random.default_rng(0).normal(size=(3000, 512)).astype(np.float32)  # the demo cache's size
    np.save(tmp_path / "clip.npy", clip)
    np.save(tmp_path / "scene.npy", clip[:, :8])
    sums = {n: file_sha256(tmp_path / n) for n in ("clip.npy", "scene.npy")}
    meta = {"key": "k", "views": 1, "ids": ["a"] * 3000, "split": ["train"] * 3000, "arrays_sha256": sums}
    (tmp_path / "complete.json").write_text(json.dumps(meta))
    (tmp_path / "key.json").write_text('{"key": "k"}')
    t0 = time.perf_counter()
    assert FeatureCache(tmp_path).clip.shape == (3000, 512)
    assert time.perf_counter() - t0 < 1.0  # a 6 MB cache: the check costs milliseconds
    arr = np.load(tmp_path / "clip.npy")
    arr[5, 5] += 1.0
    np.save(tmp_path / "clip.npy", arr)
    with pytest.raises(ValueError, match=r"clip\.npy changed since it was built"):
        FeatureCache(tmp_path)
    (tmp_path / "key.json").write_text('{"key": ')
    with pytest.raises(ValueError, match=r"key\.json cannot be read as JSON"):
        FeatureCache(tmp_path)
