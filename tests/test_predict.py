"""Predictor API and `geopak predict` end to end on a tiny checkpoint built here (tiny encoders
stand in for open_clip/timm), bad files included."""

import json
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from geopak_lib.book import cli
from geopak_lib.model.encoders import preprocess_batch
from geopak_lib.inference.calibration import save_calibration
from geopak_lib.inference.outputs import merge_view_outputs, tta_views
from geopak_lib.inference.predictor import GeopakPredictor
from geopak_lib.book.predict_cli import results_table
from geopak_lib.data.places import name_places
from geopak_lib.geo import farthest_in_pakistan_km

from tiny_predictor import CELLS, CONCEPTS, SPECS, TinyEncoder, write_images  # noqa: F401  (used below)


def expected(model, path):
    """The mixture computed directly: resize the short side to 16, centre crop 16 x 16, forward."""
    from geopak_lib.model.inference import mixture_predict

    img = Image.open(path).convert("RGB")
    w, h = img.size
    s = 16
    img = img.resize((round(w * s / min(w, h)), s) if w >= h else (s, round(h * s / min(w, h))), Image.BILINEAR)
    x = torch.from_numpy(np.array(img)).permute(2, 0, 1)[None]  # uint8 (1, 3, H, W)
    l0, t0 = (x.shape[3] - s) // 2, (x.shape[2] - s) // 2
    x = x[..., t0:t0 + s, l0:l0 + s]
    inputs = [preprocess_batch(x, e.preprocess) for e in (model.clip_encoder, model.scene_encoder)]  # tested there
    with torch.no_grad():
        return mixture_predict(model, model(*inputs))


def test_predict_matches_the_model_and_accepts_path_pil_array(ckpt, tmp_path):
    path, model = ckpt
    write_images(tmp_path / "img")
    pred = GeopakPredictor.from_checkpoint(path, device="cpu")
    img = tmp_path / "img" / "a.jpg"
    r = pred.predict(img)
    want = expected(model, img)
    assert r["lat"] == pytest.approx(float(want["lat"][0]), abs=0.02)  # resize kernels differ slightly
    assert r["lon"] == pytest.approx(float(want["lon"][0]), abs=0.02)
    probs = r["province_probs"]  # the province head covers all 7 provinces, with cells or not
    assert r["province"] == max(probs, key=probs.get) and r["confidence"] == pytest.approx(max(probs.values()))
    assert {h["province"] for h in r["hypotheses"]} <= {"Sindh", "Punjab"}  # only provinces with cells
    w = np.array([h["weight"] for h in r["hypotheses"]])
    assert w.sum() == pytest.approx(1.0) and np.all(np.diff(w) <= 0)  # best first
    # the final point is the weighted mean of the hypotheses on the sphere (by hand, unit vectors)
    la, lo = np.radians([h["lat"] for h in r["hypotheses"]]), np.radians([h["lon"] for h in r["hypotheses"]])
    v = (w[:, None] * np.stack([np.cos(la) * np.cos(lo), np.cos(la) * np.sin(lo), np.sin(la)], 1)).sum(0)
    assert r["lat"] == pytest.approx(np.degrees(np.arcsin(v[2] / np.linalg.norm(v))), abs=1e-4)
    assert r["lon"] == pytest.approx(np.degrees(np.arctan2(v[1], v[0])), abs=1e-4)
    # uncalibrated radius: spread + 1 km floor, and the result says so
    assert not r["radius_calibrated"] and r["radius_km"] == pytest.approx(r["spread_km"] + 1.0)
    assert any("not calibrated" in w for w in pred.warnings) and any("random weights" in w for w in pred.warnings)
    # the predicted point in names: exactly the library's answer for the predicted coordinates
    names = name_places([r["lat"]], [r["lon"]]).iloc[0]
    assert (r["place"], r["district"], r["place_province"]) == (names["place"], names["district"], names["province"])
    assert r["place_km"] == (None if names["place"] == "" else pytest.approx(names["place_km"]))
    pil = Image.open(img)
    for other in (pred.predict(pil), pred.predict(np.asarray(pil.convert("RGB")))):
        assert other["lat"] == pytest.approx(r["lat"]) and other["province"] == r["province"]


def test_calibration_file_is_used_only_for_its_own_checkpoint(ckpt, tmp_path):
    path, _ = ckpt
    write_images(tmp_path / "img")
    save_calibration(path, {"temperature": 2.0, "radius_scales": {"0.5": 0.5, "0.8": 3.0, "0.95": 7.0}})
    pred = GeopakPredictor.from_checkpoint(path, device="cpu")
    raw = GeopakPredictor.from_checkpoint(path, device="cpu", calibration=None)
    r, r0 = pred.predict(tmp_path / "img" / "a.jpg"), raw.predict(tmp_path / "img" / "a.jpg")
    assert r["radius_calibrated"] and r["radius_coverage"] == 0.8
    far = float(farthest_in_pakistan_km(r["lat"], r["lon"])[0])  # the cap (test_radius_never_reaches_beyond_pakistan)
    assert r["radius_km"] == pytest.approx(min(3.0 * (r["spread_km"] + 1.0), far))
    assert r["radii_km"]["0.95"] == pytest.approx(min(7.0 * (r["spread_km"] + 1.0), far))
    assert r["radii_km"]["0.5"] == pytest.approx(0.5 * (r["spread_km"] + 1.0)) and r["radii_km"]["0.5"] < far
    p0 = np.array(list(r0["province_probs"].values()))  # T = 2 flattens: p ∝ sqrt(p0)
    assert r["confidence"] == pytest.approx(np.sqrt(p0).max() / np.sqrt(p0).sum(), rel=1e-5)
    assert r["lat"] == pytest.approx(r0["lat"])  # the temperature never moves the location
    # the checkpoint changes: its calibration no longer applies
    path.write_bytes(path.read_bytes() + b"\0")
    stale = GeopakPredictor.from_checkpoint(path, device="cpu")
    assert stale.calibration is None and any("another checkpoint" in w for w in stale.warnings)


def test_predict_many_reports_bad_files_and_keeps_order(ckpt, tmp_path):
    path, _ = ckpt
    write_images(tmp_path / "img")
    files = [tmp_path / "img" / n for n in ("a.jpg", "fake.jpg", "empty.png", "sub/truncated.jpg", "sub/b.PNG")]
    recs = GeopakPredictor.from_checkpoint(path, device="cpu").predict_many(files, batch_size=2, progress=False)
    assert [r["image"] for r in recs] == [str(f) for f in files]
    assert [bool(r["error"]) for r in recs] == [False, True, True, True, False]
    assert "empty" in recs[2]["error"] and "lat" not in recs[1]
    assert all(np.isfinite(r["lat"]) for r in recs if not r["error"])


def test_tta_views_are_geography_safe_and_merge_averages_probabilities():
    x = torch.zeros(1, 3, 20, 20, dtype=torch.uint8)
    x[..., :, :10] = 200  # bright left half: no view may put it on the right
    for v in tta_views(x):
        assert v.shape == x.shape and v.dtype == torch.uint8
        assert v[..., :, :5].float().mean() > v[..., :, 15:].float().mean()
    a = {"province_logits": torch.log(torch.tensor([[0.2, 0.8]])), "geocell_logits": {0: torch.zeros(1, 2)},
         "fused": torch.ones(1, 3), "alpha": torch.tensor([0.3]), "aux_latlon": torch.tensor([[30.0, 70.0]])}
    b = {**a, "province_logits": torch.log(torch.tensor([[0.6, 0.4]])), "fused": torch.zeros(1, 3),
         "aux_latlon": torch.tensor([[32.0, 72.0]])}
    m = merge_view_outputs([a, b])
    assert torch.softmax(m["province_logits"], -1).tolist()[0] == pytest.approx([0.4, 0.6])
    assert torch.equal(m["fused"], a["fused"]) and m["aux_latlon"].tolist() == [[31.0, 71.0]]


def test_tta_predictor_runs(ckpt, tmp_path):
    path, _ = ckpt
    write_images(tmp_path / "img")
    r = GeopakPredictor.from_checkpoint(path, device="cpu", tta=True).predict(tmp_path / "img" / "a.jpg")
    assert np.isfinite(r["lat"]) and sum(h["weight"] for h in r["hypotheses"]) == pytest.approx(1.0)


def test_tta_reuses_the_plain_pass_as_its_identity_view(ckpt, tmp_path):
    """06 hands its plain outputs to the TTA pass: the identity view is not encoded again (the
    encoders see 4 views, not 5) and the merged outputs equal a full TTA pass."""
    path, _ = ckpt
    names = write_images(tmp_path / "img")
    files = [str(tmp_path / "img" / n) for n in names]
    pred = GeopakPredictor.from_checkpoint(path, device="cpu", calibration=None)
    plain, _, _ = pred.raw_outputs(files, batch_size=2, progress=False)
    pred.tta = True
    full, _, _ = pred.raw_outputs(files, batch_size=2, progress=False)
    seen = []
    hook = pred.model.scene_encoder.register_forward_hook(lambda mod, inp, out: seen.append(len(inp[0])))
    reused, _, _ = pred.raw_outputs(files, batch_size=2, progress=False, identity=plain)
    hook.remove()
    assert sum(seen) == 4 * len(files)
    for key in ("province_logits", "aux_latlon", "fused", "alpha"):
        assert torch.allclose(reused[key], full[key], atol=1e-6)
    assert all(torch.allclose(reused["geocell_logits"][p], full["geocell_logits"][p], atol=1e-6)
               for p in full["geocell_logits"])
    assert not torch.allclose(reused["province_logits"], plain["province_logits"], atol=1e-4)  # views merged


def test_cli_end_to_end(ckpt, tmp_path, capsys):
    path, _ = ckpt
    good = write_images(tmp_path / "img")
    odd = tmp_path / "photo.dat"  # an image with another extension, named explicitly: predicted
    Image.new("RGB", (20, 20), (10, 200, 30)).save(odd, "PNG")
    out, gj = tmp_path / "out" / "pred.csv", tmp_path / "out" / "pred.geojson"
    code = cli.main(["predict", str(tmp_path / "img"), str(odd), "--checkpoint", str(path), "--out", str(out),
                     "--geojson", str(gj), "--top", "2", "--batch-size", "2", "--workers", "2", "--no-progress",
                     "--device", "cpu"])
    assert code == 1  # three bad files and a skipped one
    table = pd.read_csv(out, keep_default_na=False)
    hyp = [f"hyp{k}_{f}" for k in (1, 2) for f in ("province", "lat", "lon", "weight")]
    assert list(table.columns) == ["image", "lat", "lon", "province", "confidence", "radius_km", "radius_calibrated",
                                   "place", "district", "place_province", "place_km", *hyp,
                                   "climate", "climate_p", "land_cover", "land_cover_p", "error"]
    assert (table["climate"] == "").all()  # this model has no concept heads: the columns stay empty
    names = {str(p.relative_to(tmp_path / "img")) if p.is_relative_to(tmp_path / "img") else p.name: e
             for p, e in zip(map(__import__("pathlib").Path, table["image"]), table["error"])}
    # every file has a row: notes.txt too, with why it was not read
    assert set(names) == {*good, "fake.jpg", "empty.png", "sub/truncated.jpg", "photo.dat", "sub/notes.txt"}
    assert all(names[n] == "" for n in [*good, "photo.dat"])
    assert all(names[n] for n in ("fake.jpg", "empty.png", "sub/truncated.jpg"))
    assert names["sub/notes.txt"].startswith("not scanned: extension '.txt'")
    ok = table[table["error"] == ""]
    assert ok["lat"].astype(float).between(20, 40).all() and ok["hyp1_weight"].astype(float).gt(0).all()
    # place names: the library's answer for the predicted coordinates (written to 8 significant digits)
    names = name_places(ok["lat"].astype(float), ok["lon"].astype(float))
    assert ok["place"].tolist() == names["place"].tolist() and ok["district"].tolist() == names["district"].tolist()
    assert ok["place_province"].tolist() == names["province"].tolist()
    assert (names["place"] != "").any()  # the tiny model predicts inside Sindh/Punjab: names to compare
    km = pd.to_numeric(ok["place_km"].replace("", np.nan))
    assert np.allclose(km, names["place_km"], atol=1e-3, equal_nan=True)
    assert (table.loc[table["error"] != "", ["place", "district", "place_km"]] == "").all().all()
    fc = json.loads(gj.read_text())
    assert fc["type"] == "FeatureCollection" and len(fc["features"]) == len(table)
    pt = next(f for f in fc["features"] if f["geometry"])
    assert pt["geometry"]["coordinates"] == [pt["properties"]["lon"], pt["properties"]["lat"]]
    for f in fc["features"]:  # the GeoJSON carries the same names
        row = table[table["image"] == f["properties"]["image"]].iloc[0]
        assert {k: f["properties"][k] or "" for k in ("place", "district", "place_province")} == \
            {k: row[k] for k in ("place", "district", "place_province")}
        assert (f["properties"]["place_km"] is None) == (row["place_km"] == "")
    # only good files: exit 0
    assert cli.main(["predict", str(tmp_path / "img" / "a.jpg"), "--checkpoint", str(path), "--out",
                     str(tmp_path / "one.csv"), "--no-progress"]) == 0


def test_cli_checkpoint_errors_exit_2(ckpt, tmp_path, capsys):
    path, _ = ckpt
    write_images(tmp_path / "img")
    img = str(tmp_path / "img" / "a.jpg")
    missing = tmp_path / "nowhere" / "best.pt"
    assert cli.main(["predict", img, "--checkpoint", str(missing), "--out", str(tmp_path / "x.csv")]) == 2
    msg = capsys.readouterr().err
    assert str(missing) in msg and "02_phase0_province" in msg
    junk = tmp_path / "junk.pt"
    junk.write_text("not a checkpoint")
    assert cli.main(["predict", img, "--checkpoint", str(junk), "--out", str(tmp_path / "x.csv")]) == 2
    assert "is not a GEOPAK checkpoint: torch cannot read it" in capsys.readouterr().err
    other = tmp_path / "other.pt"
    torch.save({"format": "something-else"}, other)
    assert cli.main(["predict", img, "--checkpoint", str(other), "--out", str(tmp_path / "x.csv")]) == 2
    assert "not a GEOPAK checkpoint" in capsys.readouterr().err
    state = torch.load(path, weights_only=True)  # our checkpoints are tensors and plain values
    state["model_state"] = {k: v for k, v in state["model_state"].items() if not k.startswith("offset_head")}
    torch.save(state, tmp_path / "partial.pt")
    partial = str(tmp_path / "partial.pt")
    assert cli.main(["predict", img, "--checkpoint", partial, "--out", str(tmp_path / "x.csv")]) == 2
    assert "sha256 of the tensors differs" in capsys.readouterr().err  # its recorded hash no longer matches
    state.pop("model_sha256", None)  # as a checkpoint from before the hash: the missing tensors are named
    torch.save(state, tmp_path / "partial.pt")
    assert cli.main(["predict", img, "--checkpoint", partial, "--out", str(tmp_path / "x.csv")]) == 2
    assert "offset_head" in capsys.readouterr().err
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    assert cli.main(["predict", str(empty), "--checkpoint", str(path), "--out", str(tmp_path / "x.csv")]) == 2
    assert "no image files" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # argparse: a required option is missing
        cli.main(["predict", img])
    assert exc.value.code == 2


def test_results_table_columns_for_failed_rows():
    t = results_table([{"image": "x.jpg", "error": "boom"}], top=1)
    assert list(t.columns) == ["image", "lat", "lon", "province", "confidence", "radius_km", "radius_calibrated",
                               "place", "district", "place_province", "place_km", "hyp1_province",
                               "hyp1_lat", "hyp1_lon", "hyp1_weight", "climate", "climate_p", "land_cover",
                               "land_cover_p", "error"]
    assert t.loc[0, "error"] == "boom" and pd.isna(t.loc[0, "lat"])


def test_concept_scores_in_predict_and_the_csv(concept_ckpt, tmp_path):
    path, model = concept_ckpt
    write_images(tmp_path / "img")
    pred = GeopakPredictor.from_checkpoint(path, device="cpu")
    img = tmp_path / "img" / "a.jpg"
    r = pred.predict(img)
    # the scores are the softmax of the model's own concept logits on the same view
    x = pred.forward_images(__import__("geopak_lib.data.augment", fromlist=["x"]).clean_transform(16)(
        Image.open(img).convert("RGB")).unsqueeze(0))
    for name, classes in CONCEPTS.items():
        p = torch.softmax(x["concept_logits"][name][0], -1).numpy()
        top = [(classes[j], pytest.approx(float(p[j]), abs=1e-6)) for j in np.argsort(-p)[:3]]
        assert r["concepts"][name] == top
        assert (r[name], r[name + "_p"]) == top[0] and sum(p) == pytest.approx(1.0, abs=1e-5)
    assert r["land_cover_p"] >= r["concepts"]["land_cover"][1][1]  # best first
    out = tmp_path / "pred.csv"
    assert cli.main(["predict", str(img), "--checkpoint", str(path), "--out", str(out), "--no-progress",
                     "--device", "cpu"]) == 0
    row = pd.read_csv(out).iloc[0]
    assert (row["climate"], row["land_cover"]) == (r["climate"], r["land_cover"])
    assert row["climate_p"] == pytest.approx(r["climate_p"]) and row["land_cover_p"] == pytest.approx(r["land_cover_p"])
    # with TTA, the concept probabilities are averaged over the views and still sum to 1
    t = GeopakPredictor.from_checkpoint(path, device="cpu", tta=True).predict(img)
    assert t["climate"] in CONCEPTS["climate"] and 0 < t["climate_p"] <= 1


def test_radius_never_reaches_beyond_pakistan(ckpt, tmp_path):
    """A scale fitted on hard validation images times a wide spread can give thousands of km; the
    radius stops at the farthest point of Pakistan (no image taken there is farther away)."""
    path, _ = ckpt
    write_images(tmp_path / "img")
    save_calibration(path, {"temperature": 1.0, "radius_scales": {"0.5": 2.0, "0.8": 1e5}})
    r = GeopakPredictor.from_checkpoint(path, device="cpu").predict(tmp_path / "img" / "a.jpg")
    far = float(farthest_in_pakistan_km(r["lat"], r["lon"])[0])
    assert r["radius_km"] == pytest.approx(far) and r["radii_km"]["0.8"] == pytest.approx(far)
    assert r["radii_km"]["0.5"] == pytest.approx(min(2.0 * (r["spread_km"] + 1.0), far))  # below the cap: unchanged
    assert 300 < far < 2500


def test_cli_streams_batches_and_writes_what_one_batch_writes(ckpt, tmp_path):
    """Batches of 2 (written one after another) give the same CSV and GeoJSON as one batch, and
    iter_predictions yields each batch's records in path order as it goes."""
    path, _ = ckpt
    write_images(tmp_path / "img")
    outs = {}
    for bs in (2, 64):
        out = tmp_path / f"b{bs}.csv"
        assert cli.main(["predict", str(tmp_path / "img"), str(tmp_path / "gone.jpg"), "--checkpoint", str(path),
                         "--out", str(out), "--geojson", f"{out}.geojson", "--batch-size", str(bs),
                         "--no-progress", "--device", "cpu"]) == 1
        outs[bs] = (out.read_text(), json.loads((tmp_path / f"b{bs}.csv.geojson").read_text()))
    # the same rows; the numbers to float32 rounding (a convolution's sums depend on the batch size)
    tables = [pd.read_csv(__import__("io").StringIO(outs[bs][0])) for bs in (2, 64)]  # empty cells: NaN
    pd.testing.assert_frame_equal(*tables, check_exact=False, rtol=1e-4)
    assert outs[2][0].count("\nimage,") == 0 and len(tables[0]) == 8  # one header; 7 files + the missing one
    assert [f["properties"]["image"] for f in outs[2][1]["features"]] == tables[0]["image"].tolist()
    from geopak_lib.book.predict_cli import find_images

    files, _ = find_images([tmp_path / "img"])
    batches = list(GeopakPredictor.from_checkpoint(path, device="cpu").iter_predictions(files, 2, progress=False))
    assert [len(b) for b in batches] == [2, 2, 2] and [r["image"] for b in batches for r in b] == files
