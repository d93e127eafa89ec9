"""Checkpoint ensembles: the combining maths against hand-worked cases, the predictor on several
checkpoints, and `geopak predict --checkpoint A --checkpoint B` end to end."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from geopak_lib.book import cli
from geopak_lib.constants import PROVINCES
from geopak_lib.inference.ensemble import (EnsembleModel, combine_member_predictions, geocell_relation,
                                           log_mean_probs, normalised_weights)
from geopak_lib.inference.predictor import GeopakPredictor
from geopak_lib.model.inference import build_hypotheses, mixture_predict
from geopak_lib.training.checkpoints import checkpoint_state, save_checkpoint
from tiny_predictor import CELLS, SPECS, TinyEncoder, write_images
from tiny_predictor import tiny_model

OTHER_CELLS = pd.DataFrame({"cell_id": [0, 1, 2, 3], "province_id": [0, 1, 1, 5],
                            "center_lat": [24.9, 31.0, 32.0, 28.0], "center_lon": [67.1, 73.0, 74.0, 65.0],
                            "radius_km": [30.0, 20.0, 25.0, 40.0], "neighbor_cell_ids": [[], [2], [1], []]})
@pytest.fixture()
def ckpts(tmp_path, monkeypatch):
    """Three phase-1 checkpoints: a and b share geocells (other weights), c has other geocells."""
    from geopak_lib.model import encoders

    specs = {**SPECS, "tiny:scene24": (5, 24)}  # same weights' shapes, reads 24 x 24 images
    monkeypatch.setattr(encoders, "build_encoder",
                        lambda spec, weights=None, strict=False: TinyEncoder(*specs[spec], spec))
    paths = {}
    for name, cells, seed in (("a", CELLS, 0), ("b", CELLS, 1), ("c", OTHER_CELLS, 2)):
        paths[name] = tmp_path / name / "best.pt"
        save_checkpoint(checkpoint_state(tiny_model(cells, seed), None, None, {"phase": 1}, epoch=3, metrics={},
                                         history=[], best={}, epochs_since_best=0,
                                         stopped=False, sampler={}), paths[name])
    return paths


def test_log_mean_probs_and_weights_by_hand():
    a, b = torch.log(torch.tensor([[0.2, 0.8]])), torch.log(torch.tensor([[0.6, 0.4]]))
    got = torch.softmax(log_mean_probs([a, b], torch.tensor([0.25, 0.75])), -1)
    assert got.tolist()[0] == pytest.approx([0.25 * 0.2 + 0.75 * 0.6, 0.25 * 0.8 + 0.75 * 0.4])  # 0.5, 0.5
    assert normalised_weights([1, 3], 2).tolist() == [0.25, 0.75]
    assert normalised_weights(None, 4).tolist() == [0.25] * 4
    for bad in ([1, 0], [1, -1], [1, 2, 3]):
        with pytest.raises(ValueError, match="positive"):
            normalised_weights(bad, 2)


def test_geocell_relation():
    a, b = tiny_model(CELLS, 0, False), tiny_model(CELLS, 1, False)
    assert geocell_relation(a, b) == "shared"
    moved = CELLS.assign(center_lat=CELLS["center_lat"] + [0.0, 0.0, 0.01])
    assert geocell_relation(a, tiny_model(moved, 0, False)) == "different"
    assert geocell_relation(a, tiny_model(OTHER_CELLS, 0, False)) == "different"
    other = tiny_model(CELLS, 0, False)
    other.province_head[-1] = torch.nn.Linear(8, 5)  # a model of another province list
    with pytest.raises(ValueError, match=r"A\.pt and B\.pt cannot be ensembled: their province lists differ"):
        geocell_relation(a, other, "A.pt", "B.pt")
    small = tiny_model(CELLS, 0)
    small.scene_encoder = TinyEncoder(5, 24, "tiny:scene")  # reads 24 x 24 images, not 12 x 12
    with pytest.raises(ValueError, match="scene_encoders read images differently"):
        geocell_relation(tiny_model(CELLS, 0), small, "A.pt", "B.pt")


def test_combine_member_predictions_by_hand():
    """Two members on the equator: A at lon 0, B at lon 90, one hypothesis each."""
    def pred(lon):
        t = lambda v: torch.tensor([[v]], dtype=torch.float64)  # noqa: E731
        return {"lat": torch.tensor([0.0], dtype=torch.float64), "lon": torch.tensor([lon], dtype=torch.float64),
                "hyp_lat": t(0.0), "hyp_lon": t(lon), "hyp_weight": t(1.0),
                "hyp_cell_id": torch.tensor([[0]]), "hyp_province_id": torch.tensor([[0]])}

    probs = torch.tensor([[0.3, 0.7]])
    out = combine_member_predictions([pred(0.0), pred(90.0)], torch.tensor([0.5, 0.5]), probs)
    assert float(out["lat"][0]) == pytest.approx(0.0, abs=1e-9) and float(out["lon"][0]) == pytest.approx(45.0)
    quarter = 6371.0088 * math.pi / 4  # 45 degrees of arc on the mean Earth radius
    assert float(out["spread_km"][0]) == pytest.approx(quarter, rel=1e-3)
    assert out["hyp_weight"].tolist() == [[0.5, 0.5]] and out["hyp_member"].tolist() == [[0, 1]]
    assert int(out["province_id"][0]) == 1 and float(out["confidence"][0]) == pytest.approx(0.7)
    out = combine_member_predictions([pred(0.0), pred(90.0)], torch.tensor([0.25, 0.75]), probs)
    assert float(out["lon"][0]) == pytest.approx(math.degrees(math.atan2(0.75, 0.25)))  # 71.565


@torch.no_grad()
def test_shared_geocells_average_probabilities_then_points():
    a, b = tiny_model(CELLS, 0, False), tiny_model(CELLS, 1, False)
    ens = EnsembleModel([a, b], [1, 3])
    torch.manual_seed(5)
    clip, scene = torch.randn(4, 6), torch.randn(4, 5)
    oa, ob = a(clip, scene), b(clip, scene)
    out = ens.pack([oa, ob])
    pa, pb = torch.softmax(oa["province_logits"], -1), torch.softmax(ob["province_logits"], -1)
    assert torch.allclose(torch.softmax(out["province_logits"], -1), 0.25 * pa + 0.75 * pb, atol=1e-6)
    for p in oa["geocell_logits"]:
        want = 0.25 * torch.softmax(oa["geocell_logits"][p], -1) + 0.75 * torch.softmax(ob["geocell_logits"][p], -1)
        assert torch.allclose(torch.softmax(out["geocell_logits"][p], -1), want, atol=1e-6)
    pred = ens.mixture_predict(out)
    hyp = build_hypotheses(a, out)  # the hypotheses come from the averaged probabilities
    assert torch.equal(pred["hyp_cell_id"], hyp["cell_id"])
    assert torch.allclose(pred["hyp_weight"], hyp["weight"])
    ids, valid = hyp["cell_id"], hyp["cell_id"] >= 0
    pts = []  # each member's own points (centre + its offset), then their weighted mean on the sphere
    for m, o in ((a, oa), (b, ob)):
        off = m.offsets(o["fused"], ids)
        pts.append((a.cell_lat[ids.clamp(min=0)] + off[..., 0], a.cell_lon[ids.clamp(min=0)] + off[..., 1]))
    unit = lambda la, lo: np.stack([np.cos(la) * np.cos(lo), np.cos(la) * np.sin(lo), np.sin(la)], -1)  # noqa: E731
    v = sum(w * unit(np.radians(la.double().numpy()), np.radians(lo.double().numpy()))
            for w, (la, lo) in zip((0.25, 0.75), pts))
    want_lat = np.degrees(np.arctan2(v[..., 2], np.hypot(v[..., 0], v[..., 1])))
    want_lon = np.degrees(np.arctan2(v[..., 1], v[..., 0]))
    assert np.allclose(pred["hyp_lat"][valid].numpy(), want_lat[valid.numpy()], atol=1e-4)
    assert np.allclose(pred["hyp_lon"][valid].numpy(), want_lon[valid.numpy()], atol=1e-4)
    # one member alone is that member
    solo = EnsembleModel([a])
    assert torch.allclose(solo.mixture_predict(solo.pack([oa]))["lat"], mixture_predict(a, oa)["lat"])


def test_predictor_ensembles_checkpoints(ckpts, tmp_path):
    write_images(tmp_path / "img")
    img = tmp_path / "img" / "a.jpg"
    single = {k: GeopakPredictor.from_checkpoint(p, device="cpu").predict(img) for k, p in ckpts.items()}
    shared = GeopakPredictor.from_checkpoint([ckpts["a"], ckpts["b"]], device="cpu")
    assert shared.info["ensemble"] == "shared" and any("ensemble of 2" in w for w in shared.warnings)
    r = shared.predict(img)
    for prov, p in r["province_probs"].items():
        assert p == pytest.approx((single["a"]["province_probs"][prov] + single["b"]["province_probs"][prov]) / 2,
                                  rel=1e-4)
    assert sum(h["weight"] for h in r["hypotheses"]) == pytest.approx(1.0)
    mixed = GeopakPredictor.from_checkpoint([ckpts["a"], ckpts["c"]], device="cpu")
    assert mixed.info["ensemble"] == "different"
    r = mixed.predict(img)
    v = sum(np.array([math.cos(math.radians(s["lat"])) * math.cos(math.radians(s["lon"])),
                      math.cos(math.radians(s["lat"])) * math.sin(math.radians(s["lon"])),
                      math.sin(math.radians(s["lat"]))]) for s in (single["a"], single["c"]))
    assert r["lat"] == pytest.approx(math.degrees(math.atan2(v[2], math.hypot(v[0], v[1]))), abs=1e-4)
    assert r["lon"] == pytest.approx(math.degrees(math.atan2(v[1], v[0])), abs=1e-4)
    assert len(r["hypotheses"]) == len(single["a"]["hypotheses"]) + len(single["c"]["hypotheses"])
    many = mixed.predict_many([img, tmp_path / "img" / "fake.jpg"], progress=False)  # the batch path
    assert many[0]["lat"] == pytest.approx(r["lat"], abs=1e-5) and many[1]["error"]
    for ens in (shared, mixed):  # several photos of one place through an ensemble: the same photo twice
        for combine in ("embedding", "probs"):
            assert ens.predict_group([img, img], combine)["lat"] == pytest.approx(ens.predict(img)["lat"], abs=1e-4)


def test_cli_repeated_checkpoint(ckpts, tmp_path, capsys):
    write_images(tmp_path / "img")
    img, out = str(tmp_path / "img" / "a.jpg"), tmp_path / "ens.csv"
    code = cli.main(["predict", img, "--checkpoint", str(ckpts["a"]), "--checkpoint", str(ckpts["c"]),
                     "--out", str(out), "--no-progress", "--device", "cpu"])
    assert code == 0
    table = pd.read_csv(out, keep_default_na=False)
    assert len(table) == 1 and table.loc[0, "error"] == "" and 20 < float(table.loc[0, "lat"]) < 40
    assert "ensemble of 2 checkpoints" in capsys.readouterr().err
    bad = tmp_path / "bad" / "best.pt"
    state = torch.load(ckpts["a"], weights_only=True)
    state["encoders"]["scene_encoder"]["spec"] = "tiny:scene24"  # reads images differently
    bad.parent.mkdir()
    torch.save(state, bad)
    code = cli.main(["predict", img, "--checkpoint", str(ckpts["a"]), "--checkpoint", str(bad), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and str(ckpts["a"]) in err and str(bad) in err


def test_run_ensemble_skips_copies_of_weights(ckpts, tmp_path):
    """06's members: the final checkpoint, then per phase its best.pt unless that is a copy of weights
    already in (a phase that kept its start), else its latest epoch file."""
    import shutil

    from geopak_lib.analysis.ensemble_study import run_ensemble

    ck = tmp_path / "run" / "checkpoints"
    for where, src in {"phase1/best.pt": "a", "phase1/epoch_2.pt": "a", "phase1/epoch_3.pt": "b",
                       "phase2/best.pt": "a"}.items():
        (ck / where).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ckpts[src], ck / where)
    ens, paths = run_ensemble(tmp_path / "run", ck / "phase2" / "best.pt", [1, 2], device="cpu")
    assert paths == [str(ck / "phase2" / "best.pt"), str(ck / "phase1" / "epoch_3.pt")]
    assert ens.info["ensemble"] == "shared" and len(ens.model.members) == 2
    capped, paths = run_ensemble(tmp_path / "run", ck / "phase2" / "best.pt", [1, 2], max_members=1, device="cpu")
    assert capped is None and len(paths) == 1
    alone, paths = run_ensemble(tmp_path / "run", ck / "phase2" / "best.pt", [2], device="cpu")
    assert alone is None and paths == [str(ck / "phase2" / "best.pt")]


def test_model_folders_ensemble(trained, tmp_path, capsys):
    """--model repeated: exported folders ensemble like checkpoints (two copies = the model alone)."""
    path, _, imgs = trained
    out = tmp_path / "model"
    assert cli.main(["export", str(path), "--out", str(out)]) == 0
    img = sorted(imgs.iterdir())[0]
    alone = GeopakPredictor.from_pretrained(out, device="cpu").predict(img)
    pair = GeopakPredictor.from_pretrained([out, out], device="cpu")
    assert pair.info["ensemble"] == "shared" and pair.predict(img)["lat"] == pytest.approx(alone["lat"], abs=1e-5)
    csv = tmp_path / "pair.csv"
    assert cli.main(["predict", str(img), "--model", str(out), "--model", str(out), "--out", str(csv),
                     "--no-progress", "--device", "cpu"]) == 0
    assert float(pd.read_csv(csv)["lat"][0]) == pytest.approx(alone["lat"], abs=1e-5)


def test_ensemble_frames_reuse_the_first_members_outputs(ckpts, tmp_path, monkeypatch):
    """06 hands the final model's own outputs to the ensemble instead of encoding the images again;
    the frames equal the ensemble predictor's own pass (predictor_frames). (06's members come from one
    run, so they share geocells; a frame of 'different' geocells has no true-cell diagnostic.)"""
    from geopak_lib.analysis.frame import predictor_frames, split_outputs
    from geopak_lib.analysis.ensemble_study import ensemble_frames

    names = write_images(tmp_path / "img")
    table = pd.DataFrame({"id": [f"i{k}" for k in range(6)],
                          "image_path": [str(tmp_path / "img" / n) for n in names] * 2,
                          "split": ["train", "train", "val", "val", "test", "test"],
                          "latitude": [25.0, 31.0, 24.9, 31.5, 32.0, 28.0],
                          "longitude": [67.0, 73.0, 67.1, 73.5, 74.0, 65.0],
                          "province_id": [0, 1, 0, 1, 1, 5], "cell_id": [0, 1, 0, 1, 2, -1]})
    table["province"] = [PROVINCES[p] for p in table["province_id"]]
    members = [GeopakPredictor.from_checkpoint(ckpts[k], device="cpu", calibration=None, refine="off")
               for k in ("a", "b")]
    ens = GeopakPredictor.ensemble(members)
    known = {s: split_outputs(members[0], table, s, progress=False) for s in ("val", "test")}
    want, got = predictor_frames(ens, table), ensemble_frames(ens, table, known=known)
    alone = predictor_frames(members[0], table)
    cols = ["mixture_lat", "mixture_lon", "mixture_error_km"]
    for s in ("val", "test"):
        assert np.allclose(got[s][cols].to_numpy(float), want[s][cols].to_numpy(float), atol=1e-5)
        assert not np.allclose(got[s][cols].to_numpy(float), alone[s][cols].to_numpy(float), atol=1e-3)
    # a member whose encoders' features are in the feature cache (a phase-1 member in 06) runs its heads alone
    from geopak_lib.analysis import ensemble_study
    from geopak_lib.training.cache import FeatureCache

    b = ens.model.members[1]
    FeatureCache.build_or_load(table, b.clip_encoder, b.scene_encoder, cache_root=tmp_path / "cache", views=0,
                               dtype="float32", device="cpu", progress=False)

    def no_encoders(*args, **kwargs):
        raise AssertionError("the cached member's encoders ran")

    monkeypatch.setattr(ensemble_study, "split_outputs", no_encoders)
    cached = ensemble_frames(ens, table, known=known, cache_root=tmp_path / "cache")
    for s in ("val", "test"):
        assert np.allclose(cached[s][cols].to_numpy(float), want[s][cols].to_numpy(float), atol=1e-4)
