"""Refinement through the predictor and `geopak predict --refine` end to end, on the tiny
checkpoint of conftest.py's `ckpt` fixture with a gallery saved beside it."""

import numpy as np
import pandas as pd
import pytest
import torch

from geopak_lib.book import cli
from geopak_lib.inference import refinement as rf
from geopak_lib.inference.predictor import GeopakPredictor
from tiny_predictor import write_images
from tiny_predictor import save_gallery


def test_gallery_round_trip_is_stamped_and_refuses_another_checkpoint(ckpt, tmp_path):
    path, model = ckpt
    assert rf.load_gallery(path)[0] is None and "no best.gallery.json" in rf.load_gallery(path)[2]
    save_gallery(path, model)
    g, record, why = rf.load_gallery(path)
    assert g.cell_start.tolist() == [0, 1, 2, 3] and g.embedding.dtype == np.float32 and record["default"]
    with np.load(rf.gallery_paths(path)[0], allow_pickle=False) as z:
        assert z["embedding"].dtype == np.float16  # half the file; float32 once loaded
    assert "3 items" in why
    other = tmp_path / "other.pt"
    other.write_bytes(path.read_bytes() + b"x")
    rf.gallery_paths(path)[0].replace(rf.gallery_paths(other)[0])
    rf.gallery_paths(path)[1].replace(rf.gallery_paths(other)[1])
    assert rf.load_gallery(other)[0] is None and "sha256 differs" in rf.load_gallery(other)[2]


def test_predictor_refines_by_default_only_when_validation_chose_it(ckpt, tmp_path):
    path, model = ckpt
    write_images(tmp_path / "img")
    img = tmp_path / "img" / "a.jpg"
    plain = GeopakPredictor.from_checkpoint(path, device="cpu")
    assert plain.gallery is None and plain.info["refinement"].startswith("off")
    with pytest.raises(ValueError, match="no usable gallery"):
        GeopakPredictor.from_checkpoint(path, device="cpu", refine=True)
    save_gallery(path, model, default=False)
    assert GeopakPredictor.from_checkpoint(path, device="cpu").gallery is None  # auto: validation said no
    on = GeopakPredictor.from_checkpoint(path, device="cpu", refine=True)
    assert on.info["refinement"].startswith("on")
    r0, r1 = plain.predict(img), on.predict(img)
    assert r1["refined"] and not r0["refined"]
    moved = {h["cell_id"]: h for h in r1["hypotheses"]}
    assert len(moved) == len(r0["hypotheses"]) == 3
    for h0 in r0["hypotheses"]:  # each hypothesis moves within its own cell's radius, towards its item
        h1, cell = moved[h0["cell_id"]], model.cells.iloc[h0["cell_id"]]
        d_km = np.degrees(np.arccos(np.clip(unit(h0["lat"], h0["lon"]) @ unit(h1["lat"], h1["lon"]), -1, 1))) * 111.195
        assert 0 < d_km <= cell["radius_km"] + 1e-6 and h1["weight"] == pytest.approx(h0["weight"])
    assert (r0["lat"], r0["lon"]) != (r1["lat"], r1["lon"])
    save_gallery(path, model, default=True)
    assert GeopakPredictor.from_checkpoint(path, device="cpu").gallery is not None  # auto: validation said yes


def unit(lat, lon):
    la, lo = np.radians(lat), np.radians(lon)
    return np.array([np.cos(la) * np.cos(lo), np.cos(la) * np.sin(lo), np.sin(la)])


def test_cli_refine_on_off(ckpt, tmp_path, capsys):
    path, model = ckpt
    write_images(tmp_path / "img")
    img = str(tmp_path / "img" / "a.jpg")
    run = lambda *extra: cli.main(["predict", img, "--checkpoint", str(path), "--out",  # noqa: E731
                                   str(tmp_path / f"{extra[-1]}.csv"), "--no-progress", "--device", "cpu", *extra])
    assert run("--refine", "on") == 2 and "no usable gallery" in capsys.readouterr().err
    save_gallery(path, model, default=True)
    assert run("--refine", "off") == 0 and "refinement: off" in capsys.readouterr().err
    assert run("--refine", "on") == 0 and "refinement: on" in capsys.readouterr().err
    off, on = (pd.read_csv(tmp_path / f"{m}.csv") for m in ("off", "on"))
    assert (off.loc[0, "lat"], off.loc[0, "lon"]) != (on.loc[0, "lat"], on.loc[0, "lon"])
    assert torch.isfinite(torch.tensor(on[["lat", "lon", "radius_km"]].to_numpy(float))).all()


def test_cached_outputs_only_from_a_cache_of_these_very_encoders(ckpt, tmp_path):
    from PIL import Image

    from geopak_lib.data.augment import clean_transform
    from geopak_lib.analysis.cached_outputs import cached_outputs, feature_source
    from geopak_lib.training.cache import FeatureCache, encoder_input

    _, model = ckpt
    rng = np.random.default_rng(0)
    rows = []
    for i in range(6):
        p = tmp_path / "img" / f"{i}.png"
        p.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(p)
        rows.append({"id": f"s{i}", "image_path": str(p), "sha1": f"h{i}", "split": "train" if i < 4 else "val",
                     "province": "Sindh"})
    table = pd.DataFrame(rows)
    FeatureCache.build_or_load(table, model.clip_encoder, model.scene_encoder, cache_root=tmp_path / "c", views=0,
                               dtype="float32", device="cpu", progress=False)
    before, source = cached_outputs(model, table, "val", cache_root=tmp_path / "c")  # rows 4 and 5
    got = before
    assert source == "cache"
    x = torch.stack([clean_transform(16)(Image.open(table.image_path[i]).convert("RGB")) for i in (4, 5)])
    with torch.no_grad():
        want = model(encoder_input(x, model.clip_encoder.preprocess),
                     encoder_input(x, model.scene_encoder.preprocess))
    for key in ("fused", "province_logits", "aux_latlon", "alpha"):
        torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=1e-5)
    for p in want["geocell_logits"]:
        torch.testing.assert_close(got["geocell_logits"][p], want["geocell_logits"][p], rtol=1e-4, atol=1e-5)
    assert len(cached_outputs(model, table, "train", cache_root=tmp_path / "c")[0]["fused"]) == 4
    assert feature_source(model, table, tmp_path / "c")[0] == "cache"
    with torch.no_grad():  # phase 2 tuned the scene encoder: CLIP from the cache, the scene encoder on the images
        for p in model.scene_encoder.parameters():
            p.mul_(1.05)
        want = model(encoder_input(x, model.clip_encoder.preprocess), encoder_input(x, model.scene_encoder.preprocess))
    assert feature_source(model, table, tmp_path / "c")[0] == "clip_cache"
    got, source = cached_outputs(model, table, "val", cache_root=tmp_path / "c")
    assert source == "clip_cache" and not torch.allclose(got["fused"], before["fused"], atol=1e-3)  # the new scene weights count
    for key in ("fused", "province_logits", "aux_latlon", "alpha"):
        torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=1e-5)
    from geopak_lib.training.inputs import TrainData
    from geopak_lib.training.passes import PassSettings, batches
    with pytest.raises(ValueError, match="for evaluation"):  # a training view is augmented afresh: not cached
        next(batches(model, TrainData(table, FeatureCache.find_clean(table, model.clip_encoder, None,
                                                                     cache_root=tmp_path / "c",
                                                                     slots=("clip",))),
                     [np.array([0, 1])], PassSettings(source="clip_cache"), epoch=1, train=True,
                     device=torch.device("cpu")))
    with torch.no_grad():  # and the CLIP encoder too: nothing in the cache fits
        next(model.clip_encoder.parameters()).add_(0.01)
    assert feature_source(model, table, tmp_path / "c") == ("images", None)
    assert cached_outputs(model, table, "val", cache_root=tmp_path / "c") == (None, "images")
