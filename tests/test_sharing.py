"""Safe, shareable model files: no loader runs code from a file, and an exported model folder
predicts exactly as its checkpoint, refuses altered weights, and carries a model card."""

import json
import os
import pickle

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from geopak_lib.book import cli
from geopak_lib.inference.calibration import save_calibration, save_evaluation_summary
from geopak_lib.inference.model_folder import ModelFolderError, export_model
from geopak_lib.inference.predictor import GeopakPredictor
from geopak_lib.model.encoders import read_state_dict
from geopak_lib.training.checkpoints import (UnsafeFileError, build_model_from_checkpoint, checkpoint_state,
                                             load_checkpoint, save_checkpoint)
from geopak_lib.training.inputs import load_phase_inputs

CELLS = pd.DataFrame({"cell_id": [0, 1, 2], "province_id": [0, 0, 1], "province": ["Sindh", "Sindh", "Punjab"],
                      "center_lat": [25.0, 26.5, 31.5], "center_lon": [68.0, 68.5, 74.3],
                      "radius_km": [30.0, 20.0, 25.0], "neighbor_cell_ids": [[1], [0], []]})


class Payload:
    """Unpickling this runs a shell command that creates the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture()
def payloads(tmp_path):
    marker = tmp_path / "pwned"
    zip_file, raw = tmp_path / "evil.pt", tmp_path / "evil.pkl"
    torch.save({"format": "geopak-checkpoint-v1", "model_state": Payload(marker)}, zip_file)  # torch's zip format
    with open(raw, "wb") as f:
        pickle.dump({"format": "geopak-checkpoint-v1", "x": Payload(marker)}, f)  # a bare pickle
    return marker, [zip_file, raw]


def test_no_loader_runs_the_payload(tmp_path, payloads, capsys):
    marker, files = payloads
    for f in files:
        for load in (load_checkpoint, build_model_from_checkpoint, GeopakPredictor.from_checkpoint, read_state_dict):
            with pytest.raises(ValueError) as exc:
                load(f)
            if load is not read_state_dict:
                assert isinstance(exc.value, UnsafeFileError) and "would run code" in str(exc.value)
        run = tmp_path / f"run_{f.suffix[1:]}"
        (run / "checkpoints" / "phase0").mkdir(parents=True)
        (run / "checkpoints" / "phase0" / "best.pt").write_bytes(f.read_bytes())
        with pytest.raises(UnsafeFileError):
            load_phase_inputs(run, 1)  # the notebooks' loader
        img = tmp_path / "a.jpg"
        Image.new("RGB", (20, 20)).save(img)
        assert cli.main(["predict", str(img), "--checkpoint", str(f), "--out", str(tmp_path / "p.csv")]) == 2
        assert "would run code" in capsys.readouterr().err
        assert cli.main(["export", str(f), "--out", str(tmp_path / "m")]) == 2
    assert "posix.system" in str(pytest.raises(UnsafeFileError, load_checkpoint, files[0]).value)
    assert not marker.exists()


def test_saved_checkpoints_hold_only_tensors_and_plain_values(trained):
    path, _, _ = trained
    assert torch.serialization.get_unsafe_globals_in_checkpoint(path) == []
    state = torch.load(path, weights_only=True)  # plain torch, no allow-list
    assert state["rng"]["numpy"]["keys"].dtype == torch.int64


def test_export_round_trip_predicts_as_the_checkpoint(tmp_path, trained, capsys):
    path, model, imgs = trained
    save_calibration(path, {"temperature": 1.5, "radius_scales": {"0.8": 2.0}})
    headline = {"n": 4, "median_km": 12.5, "p90_km": 80.0, "acc_25km": 0.5, "acc_200km": 1.0, "province_acc": 0.75}
    save_evaluation_summary(path, headline, pd.DataFrame({"province": ["Sindh"], "n": [4], "median_km": [12.5]}))
    out = tmp_path / "model"
    assert cli.main(["export", str(path), "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["encoders"]["clip_encoder"]["weights_in_file"] == "all"  # random: copied
    assert config["encoders"]["scene_encoder"]["weights_in_file"] == "spec"  # package weights, unchanged
    assert config["calibration"]["temperature"] == 1.5 and config["evaluation"]["headline"]["median_km"] == 12.5
    card = (out / "README.md").read_text()
    assert "12.5" in card and "Random weights" in card and "Apache 2.0" in card
    files = sorted(str(p) for p in imgs.iterdir())
    a = GeopakPredictor.from_checkpoint(path, device="cpu").predict_many(files, progress=False)
    b = GeopakPredictor.from_pretrained(out, device="cpu").predict_many(files, progress=False)
    for x, y in zip(a, b):
        assert abs(x["lat"] - y["lat"]) < 1e-5 and abs(x["lon"] - y["lon"]) < 1e-5
        assert x["radius_km"] == pytest.approx(y["radius_km"], rel=1e-5) and x["province"] == y["province"]
    csv_c, csv_m = tmp_path / "c.csv", tmp_path / "m.csv"
    assert cli.main(["predict", str(imgs), "--checkpoint", str(path), "--out", str(csv_c), "--no-progress"]) == 0
    assert cli.main(["predict", str(imgs), "--model", str(out), "--out", str(csv_m), "--no-progress"]) == 0
    c, m = pd.read_csv(csv_c), pd.read_csv(csv_m)
    assert np.abs(c[["lat", "lon"]].to_numpy() - m[["lat", "lon"]].to_numpy()).max() < 1e-5


def test_include_encoders_copies_every_tensor(tmp_path, trained):
    path, model, _ = trained
    config = export_model(path, tmp_path / "all", include_encoders=True)
    assert config["encoders"]["scene_encoder"]["weights_in_file"] == "all"
    assert config["weights"]["model.safetensors"]["tensors"] == len(model.state_dict())


def test_changed_weights_byte_is_refused(tmp_path, trained, capsys):
    path, _, imgs = trained
    out = tmp_path / "model"
    export_model(path, out)
    data = bytearray((out / "model.safetensors").read_bytes())
    data[-1] ^= 1
    (out / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(ModelFolderError, match="sha256"):
        GeopakPredictor.from_pretrained(out)
    assert cli.main(["predict", str(imgs), "--model", str(out), "--out", str(tmp_path / "p.csv")]) == 2
    assert "does not match the sha256" in capsys.readouterr().err
    with pytest.raises(ModelFolderError, match="no config.json"):
        GeopakPredictor.from_pretrained(tmp_path)


def test_export_refuses_a_calibration_of_another_checkpoint(tmp_path, trained):
    path, model, _ = trained
    save_calibration(path, {"temperature": 1.0, "radius_scales": {}})
    save_checkpoint(checkpoint_state(model, None, None, {"phase": 1}, epoch=4, metrics={}, history=[], best={},
                                     epochs_since_best=0, stopped=False, sampler={}), path)  # retrained
    with pytest.raises(ValueError, match="calibration file .* another checkpoint"):
        export_model(path, tmp_path / "m")


def test_export_with_gallery_refines_as_the_checkpoint(tmp_path, trained, capsys):
    from tiny_predictor import save_gallery

    from geopak_lib.inference.refinement import gallery_paths

    path, model, imgs = trained
    files = sorted(str(p) for p in imgs.iterdir())
    out = tmp_path / "model"
    assert cli.main(["export", str(path), "--out", str(out), "--with-gallery"]) == 2  # nothing to add yet
    assert "no usable refinement gallery" in capsys.readouterr().err
    save_gallery(path, model, default=True)
    headline = {"n": 4, "median_km": 12.5, "p90_km": 80.0, "acc_25km": 0.5, "acc_200km": 1.0, "province_acc": 0.75}
    save_evaluation_summary(path, headline, pd.DataFrame({"province": ["Sindh"], "n": [4], "median_km": [12.5]}),
                            {"refined": {"default": True, "median_km": 7.26, "p90_km": 41.0}})
    assert cli.main(["export", str(path), "--out", str(out), "--with-gallery"]) == 0
    assert "gallery.npz: 3 training images" in capsys.readouterr().out
    assert "Test median, as 06_evaluation reported it: 12.5 km plain (the table above), 7.3 km refined (p90 41.0 km)" \
        in (out / "README.md").read_text()
    assert (out / "gallery.npz").read_bytes() == gallery_paths(path)[0].read_bytes()
    config = json.loads((out / "config.json").read_text())
    assert config["refinement"]["settings"]["k"] == 1 and "checkpoint_sha256" not in config["refinement"]
    assert "3 training images" in (out / "README.md").read_text()
    a = GeopakPredictor.from_checkpoint(path, device="cpu").predict_many(files, progress=False)
    b = GeopakPredictor.from_pretrained(out, device="cpu").predict_many(files, progress=False)
    plain = GeopakPredictor.from_pretrained(out, device="cpu", refine=False).predict_many(files, progress=False)
    for x, y, z in zip(a, b, plain):
        assert x["refined"] and y["refined"] and not z["refined"]
        assert abs(x["lat"] - y["lat"]) < 1e-5 and abs(x["lon"] - y["lon"]) < 1e-5
        assert (y["lat"], y["lon"]) != (z["lat"], z["lon"])
    refined_csv = tmp_path / "r.csv"
    assert cli.main(["predict", str(imgs), "--model", str(out), "--out", str(refined_csv), "--no-progress",
                     "--refine", "on"]) == 0
    assert "refinement: on" in capsys.readouterr().err
    assert cli.main(["predict", str(imgs), "--model", str(out), "--model", str(out), "--out", str(refined_csv),
                     "--refine", "on"]) == 2  # an ensemble is not refined
    assert "each refinement gallery fits one model" in capsys.readouterr().err
    assert np.abs(pd.read_csv(refined_csv)[["lat", "lon"]].to_numpy()
                  - np.array([[r["lat"], r["lon"]] for r in a])).max() < 1e-5
    data = bytearray((out / "gallery.npz").read_bytes())
    data[-1] ^= 1
    (out / "gallery.npz").write_bytes(bytes(data))
    with pytest.raises(ModelFolderError, match="gallery.npz does not match the sha256"):
        GeopakPredictor.from_pretrained(out)
    export_model(path, out)  # again without: the old gallery does not stay behind
    assert not (out / "gallery.npz").exists()
    assert GeopakPredictor.from_pretrained(out, device="cpu").info["refinement"].startswith("off: the model folder")
    assert cli.main(["predict", str(imgs), "--model", str(out), "--out", str(refined_csv), "--refine", "on"]) == 2
    assert "--with-gallery" in capsys.readouterr().err


def test_a_gallery_that_does_not_fit_the_model_is_refused(tmp_path, trained):
    from tiny_predictor import save_gallery

    from geopak_lib.utils import file_sha256

    path, model, _ = trained
    save_gallery(path, model)
    out = tmp_path / "model"
    export_model(path, out, include_gallery=True)
    with np.load(out / "gallery.npz") as z:
        arrays = dict(z)
    np.savez(out / "gallery.npz", **{**arrays, "embedding": np.zeros((3, 7), np.float16)})  # 7 != fused_dim 16
    config = json.loads((out / "config.json").read_text())
    config["weights"]["gallery.npz"]["sha256"] = file_sha256(out / "gallery.npz")  # a consistent folder...
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelFolderError, match="does not fit the model .* dimension 7"):  # ...of the wrong shape
        GeopakPredictor.from_pretrained(out, device="cpu")
    assert GeopakPredictor.from_pretrained(out, device="cpu", refine=False).gallery is None  # not even read
