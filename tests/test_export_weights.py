"""An exported model folder never runs on encoder weights it was not trained with: export records
the sha256 of what each spec builds, and load refuses a different build in one line, exit 2
(docs/decisions/sharing.md)."""

import json

import pytest
import torch

from geopak_lib.book import cli
from geopak_lib.inference import model_folder as export
from geopak_lib.inference.model_folder import ModelFolderError, export_model, load_exported_model


def _builder_with(change):
    real = export.build_encoder

    def build(spec, *args, **kwargs):
        enc = real(spec, *args, **kwargs)
        if spec.startswith("timm:"):
            change(enc)
        return enc
    return build


def _other_tensors(enc):
    with torch.no_grad():
        next(enc.parameters()).add_(1e-3)  # another machine's weight source: slightly different tensors


def _no_weights(enc):
    _other_tensors(enc)
    enc.is_random, enc.weight_status = True, "random (no weights available: timm hub weights not cached)"


def test_export_records_what_each_spec_builds_and_load_accepts_the_same(tmp_path, trained):  # noqa: F811
    path, model, _ = trained
    config = export_model(path, tmp_path / "m")
    scene = config["encoders"]["scene_encoder"]
    assert scene["weights_in_file"] == "spec" and len(scene["spec_sha256"]) == 64
    loaded, _ = load_exported_model(tmp_path / "m")
    assert torch.equal(loaded.scene_encoder.state_dict()[next(iter(loaded.scene_encoder.state_dict()))],
                       model.scene_encoder.state_dict()[next(iter(model.scene_encoder.state_dict()))])
    assert not loaded.scene_encoder.is_random  # the status of what was built here


def test_other_spec_weights_are_refused_with_one_line_and_exit_2(tmp_path, trained, monkeypatch, capsys):  # noqa: F811
    path, _, imgs = trained
    export_model(path, tmp_path / "m")
    monkeypatch.setattr(export, "build_encoder", _builder_with(_other_tensors))
    with pytest.raises(ModelFolderError, match="scene_encoder timm:tf_efficientnet_lite0@32: the weights its spec "
                                               "builds on this machine differ.*--include-encoders"):
        load_exported_model(tmp_path / "m")
    assert cli.main(["predict", str(imgs), "--model", str(tmp_path / "m"), "--out", str(tmp_path / "p.csv"),
                     "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "--include-encoders" in err and "Traceback" not in err and not (tmp_path / "p.csv").exists()


def test_unavailable_weights_are_named_and_a_full_copy_needs_none(tmp_path, trained, monkeypatch):  # noqa: F811
    path, _, _ = trained
    export_model(path, tmp_path / "m")
    export_model(path, tmp_path / "all", include_encoders=True)
    monkeypatch.setattr(export, "build_encoder", _builder_with(_no_weights))
    with pytest.raises(ModelFolderError, match=r"scene_encoder .*its weights \(.*\) are not available on this "
                                               r"machine \(random \(no weights available"):
        load_exported_model(tmp_path / "m")
    loaded, _ = load_exported_model(tmp_path / "all")  # every tensor travels: the build here does not matter
    assert not loaded.scene_encoder.is_random


def test_config_without_checksums_or_keys_is_one_line(tmp_path, trained):  # noqa: F811
    path, _, _ = trained
    export_model(path, tmp_path / "m")
    cfg_path = tmp_path / "m" / "config.json"
    config = json.loads(cfg_path.read_text())
    del config["encoders"]["scene_encoder"]["spec_sha256"]
    cfg_path.write_text(json.dumps(config))
    with pytest.raises(ModelFolderError, match="no spec_sha256 for scene_encoder.*export it again"):
        load_exported_model(tmp_path / "m")
    for key in ("model", "encoders"):
        cfg_path.write_text(json.dumps({k: v for k, v in config.items() if k != key}))
        with pytest.raises(ModelFolderError, match=f"missing {key}"):
            load_exported_model(tmp_path / "m")


def test_recorded_input_size_must_be_what_the_rebuilt_encoder_takes(tmp_path, trained, capsys):  # noqa: F811
    """The heads were trained on features of a 32-pixel input: a config.json that records another size
    (or none) is refused with one line naming the slot and both sizes, exit 2 through predict."""
    path, _, imgs = trained
    export_model(path, tmp_path / "m")
    cfg_path = tmp_path / "m" / "config.json"
    config = json.loads(cfg_path.read_text())
    assert config["preprocess"]["scene_encoder"]["image_size"] == 32  # the spec's @32
    config["preprocess"]["scene_encoder"]["image_size"] = 64
    cfg_path.write_text(json.dumps(config))
    with pytest.raises(ModelFolderError, match="scene_encoder timm:tf_efficientnet_lite0@32: recorded input "
                                               "image_size 64, but the encoder built here expects image_size 32"):
        load_exported_model(tmp_path / "m")
    assert cli.main(["predict", str(imgs), "--model", str(tmp_path / "m"), "--out", str(tmp_path / "p.csv"),
                     "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "image_size 64" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    del config["preprocess"]["scene_encoder"]
    cfg_path.write_text(json.dumps(config))
    with pytest.raises(ModelFolderError, match=r"no preprocess.scene_encoder.image_size"):
        load_exported_model(tmp_path / "m")


def test_truncated_config_json_names_the_file_exit_2(tmp_path, trained, capsys):  # noqa: F811
    path, _, imgs = trained
    export_model(path, tmp_path / "m")
    cfg_path = tmp_path / "m" / "config.json"
    cfg_path.write_bytes(cfg_path.read_bytes()[:1020])
    assert cli.main(["predict", str(imgs), "--model", str(tmp_path / "m"), "--out", str(tmp_path / "p.csv"),
                     "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert str(cfg_path) in err and "cannot be read as JSON" in err and "geopak export" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
