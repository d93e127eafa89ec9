"""The typed calibration record (inference/calibration_record.py): every value checked on load, one
block per mode, and the predictor applying only its own mode's block; on the tiny checkpoint of
conftest.py's `ckpt` fixture."""

import json

import numpy as np
import pandas as pd
import pytest

from geopak_lib.book import cli
from geopak_lib.data.rundir import calibration_path
from geopak_lib.geo import farthest_in_pakistan_km
from geopak_lib.inference.calibration import load_checked_calibration, save_calibration
from geopak_lib.inference.calibration_record import MISSING_MODE, Calibration, CalibrationError
from geopak_lib.inference.predictor import GeopakPredictor
from tiny_predictor import save_gallery, write_images

PLAIN = {"temperature": 2.0, "radius_scales": {"0.5": 0.5, "0.8": 1.2}}
# the tiny model's spread is ~435 km and the farthest point of Pakistan ~1,070 km away: 80% scales
# below 2.4 keep every radius below that cap, so each block's scale shows in radius_km


def capped(r, km):
    """km, capped at the farthest point of Pakistan from the predicted point (as every radius)."""
    return min(km, float(farthest_in_pakistan_km(r["lat"], r["lon"])[0]))


def block(temperature, scale):
    return {"temperature": temperature, "radius_scales": {"0.8": scale}}


@pytest.mark.parametrize("body, key", [
    ({**PLAIN, "temperature": -1.0}, "temperature"),
    ({**PLAIN, "temperature": 0}, "temperature"),
    ({**PLAIN, "temperature": float("nan")}, "temperature"),
    ({**PLAIN, "temperature": True}, "temperature"),
    ({**PLAIN, "temperature": "2"}, "temperature"),
    ({**PLAIN, "radius_scales": {"0.5": 0.5, "0.8": float("inf")}}, "radius_scales.0.8"),
    ({**PLAIN, "radius_scales": {"0.8": -0.001}}, "radius_scales.0.8"),
    ({**PLAIN, "radius_scales": {"0.5": 0.5}}, "radius_scales"),  # no scale for the reported 80%
    ({**PLAIN, "radius_scales": {"eighty": 3.0, "0.8": 3.0}}, "radius_scales"),
    ({**PLAIN, "radius_scales_by_province": {"0.8": {"1": 0.0}}}, "radius_scales_by_province.0.8.1"),
    ({**PLAIN, "radius_scales_by_province": {"0.8": {"Sindh": 2.0}}}, "radius_scales_by_province.0.8"),
    ({**PLAIN, "radius_floor_km": -1.0}, "radius_floor_km"),
    ({"radius_scales": {"0.8": 3.0}}, "temperature is missing"),
    ({**PLAIN, "tta": block(-1.0, 2.0)}, "tta.temperature"),
    ({**PLAIN, "tta": {**block(1.0, 2.0), "refined": block(1.0, float("nan"))}}, "tta.refined.radius_scales.0.8"),
    ({**PLAIN, "refined": [1, 2]}, "refined is not a JSON object"),
])
def test_a_bad_value_is_refused_naming_the_file_and_the_key(body, key):
    with pytest.raises(CalibrationError) as exc:
        Calibration.from_dict(body, source="x/best.calibration.json")
    msg = str(exc.value)
    assert msg.startswith("x/best.calibration.json: ") and key in msg and "\n" not in msg


def test_modes_are_read_from_the_layout_06_writes_and_the_floor_is_inherited():
    body = {**PLAIN, "radius_floor_km": 2.0, "refined": block(1.5, 4.0),
            "tta": {**block(1.2, 6.0), "refined": {**block(1.1, 7.0), "radius_floor_km": 0.5}}}
    cal = Calibration.from_dict(body)
    assert list(cal.blocks) == ["plain", "refined", "tta", "refined+tta"]
    got = {m: (b.temperature, b.radius_scales["0.8"], b.radius_floor_km) for m, b in cal.blocks.items()}
    assert got == {"plain": (2.0, 1.2, 2.0), "refined": (1.5, 4.0, 2.0), "tta": (1.2, 6.0, 2.0),
                   "refined+tta": (1.1, 7.0, 0.5)}
    only_plain = Calibration.from_dict(PLAIN)
    assert only_plain.block("tta") is None and only_plain.block("refined") is None
    assert "'tta.refined'" in only_plain.missing_note("refined+tta")
    with pytest.raises(ValueError, match="unknown calibration mode"):
        only_plain.block("tta+refined")


def test_block_radius_by_hand():
    b = Calibration.from_dict({**PLAIN, "radius_floor_km": 2.0,
                               "radius_scales_by_province": {"0.8": {"1": 5.0}}}).block("plain")
    assert b.radius_km(4.0, 0, "0.8") == pytest.approx(7.2)  # global scale 1.2 x (spread 4 + floor 2)
    assert b.radius_km(4.0, 1, "0.8") == 30.0  # province 1's own scale 5 x 6
    assert b.radius_km(4.0, 1, "0.5") == 3.0  # no province scale at 50%: 0.5 x 6
    tiny = Calibration.from_dict({**block(1.0, 0.001), "radius_floor_km": 2.0}).block("plain")
    assert tiny.radius_km(4.0, 0, "0.8") == 2.0  # 0.001 x 6 = 0.006 km: raised to the floor


def test_a_record_written_by_save_calibration_as_06_assembles_it_loads(ckpt):
    """fit_calibration + the refined and tta blocks, as analysis/evaluation_steps.Evaluation builds them."""
    from geopak_lib.analysis.calibration_fit import fit_calibration

    path, _ = ckpt
    rng = np.random.default_rng(0)

    def frame(n, shift=0.0):
        f = pd.DataFrame({f"logit_{p}": rng.normal(size=n) for p in range(7)})
        return f.assign(province_id=rng.integers(0, 2, n), province_pred=rng.integers(0, 2, n),
                        spread_km=rng.uniform(5, 50, n) + shift, error_km=rng.uniform(1, 200, n),
                        block_id=np.arange(n) // 3)

    val, test = frame(60), frame(40)
    cal = fit_calibration(val, test, fitted_on="val_cal")[0]
    cal["refined"] = fit_calibration(frame(60, 1.0), frame(40, 1.0), fitted_on="val_cal")[0]
    cal["tta"] = fit_calibration(frame(60, 2.0), frame(40, 2.0), fitted_on="val_cal")[0]
    save_calibration(path, cal)
    rec, why = load_checked_calibration(path)
    assert rec is not None and "calibrated on validation" in why
    assert set(rec.blocks) == {"plain", "refined", "tta"}  # 06 fits no refined + TTA block
    for mode, body in (("plain", cal), ("refined", cal["refined"]), ("tta", cal["tta"])):
        b = rec.block(mode)
        assert b.temperature == body["temperature"] and dict(b.radius_scales) == body["radius_scales"]
        assert b.radius_floor_km == 1.0 and b.fitted_on == "val_cal"
        assert {c: dict(v) for c, v in b.radius_scales_by_province.items()} == body["radius_scales_by_province"]


def test_a_bad_file_leaves_the_predictor_uncalibrated_and_says_which_key(ckpt, tmp_path):
    """The campaign's file: temperature -1 and an 80% scale of 0.001."""
    path, _ = ckpt
    write_images(tmp_path / "img")
    img = tmp_path / "img" / "a.jpg"
    save_calibration(path, block(-1.0, 0.001))
    pred = GeopakPredictor.from_checkpoint(path, device="cpu")
    raw = GeopakPredictor.from_checkpoint(path, device="cpu", calibration=None)
    assert pred.calibration is None
    note = [w for w in pred.warnings if "not calibrated" in w]
    assert len(note) == 1 and str(calibration_path(path)) in note[0] and "temperature" in note[0]
    assert pred.info["calibration"].startswith("calibration refused")
    r, r0 = pred.predict(img), raw.predict(img)
    assert not r["radius_calibrated"] and r["radius_km"] == pytest.approx(r["spread_km"] + 1.0)
    assert r["province_probs"] == pytest.approx(r0["province_probs"]) and r["temperature"] == 1.0
    with pytest.raises(CalibrationError, match="temperature"):  # given by the caller: an error at once
        GeopakPredictor.from_checkpoint(path, device="cpu", calibration=block(-1.0, 0.001))


def test_plain_mode_by_hand_and_the_floor(ckpt, tmp_path):
    path, _ = ckpt
    write_images(tmp_path / "img")
    img = tmp_path / "img" / "a.jpg"
    raw = GeopakPredictor.from_checkpoint(path, device="cpu", calibration=None).predict(img)
    save_calibration(path, {**PLAIN, "radius_scales_by_province": {"0.8": {str(raw["province_id"]): 2.0}}})
    r = GeopakPredictor.from_checkpoint(path, device="cpu").predict(img)  # temperature keeps the argmax
    # temperature 2: probabilities proportional to the square root of the uncalibrated ones
    p0 = np.array(list(raw["province_probs"].values()))
    assert list(r["province_probs"].values()) == pytest.approx(np.sqrt(p0) / np.sqrt(p0).sum())
    assert r["radius_calibrated"] and r["radius_km"] == pytest.approx(2.0 * (r["spread_km"] + 1.0))  # its province's
    assert r["radius_km"] < capped(r, 1e9) and r["radii_km"]["0.5"] == pytest.approx(0.5 * (r["spread_km"] + 1.0))
    save_calibration(path, {**block(1.0, 0.001), "radius_floor_km": 1.0})
    tiny = GeopakPredictor.from_checkpoint(path, device="cpu").predict(img)
    assert tiny["radius_calibrated"] and tiny["radius_km"] == 1.0  # 0.001 x (spread + 1) < 1 km: the floor


def test_tta_without_a_tta_block_is_uncalibrated_and_said(ckpt, tmp_path):
    path, _ = ckpt
    write_images(tmp_path / "img")
    img = tmp_path / "img" / "a.jpg"
    save_calibration(path, PLAIN)
    tta = GeopakPredictor.from_checkpoint(path, device="cpu", tta=True)
    assert any(w.startswith(MISSING_MODE + "tta:") for w in tta.warnings)
    assert tta.info["calibration_mode"].startswith(MISSING_MODE + "tta")
    r = tta.predict(img)
    assert not r["radius_calibrated"] and r["radius_coverage"] is None and r["temperature"] == 1.0
    assert r["radius_km"] == pytest.approx(r["spread_km"] + 1.0) and r["radii_km"] == {}
    save_calibration(path, {**PLAIN, "tta": block(1.5, 1.6)})
    with_block = GeopakPredictor.from_checkpoint(path, device="cpu", tta=True)
    r = with_block.predict(img)
    assert not any(w.startswith(MISSING_MODE) for w in with_block.warnings)
    assert r["radius_calibrated"] and r["temperature"] == 1.5
    assert r["radius_km"] == pytest.approx(1.6 * (r["spread_km"] + 1.0))


def test_refined_and_tta_uses_only_the_refined_tta_block(ckpt, tmp_path):
    path, model = ckpt
    write_images(tmp_path / "img")
    img = tmp_path / "img" / "a.jpg"
    save_gallery(path, model, default=True)
    save_calibration(path, {**PLAIN, "refined": block(1.2, 1.4), "tta": block(1.5, 1.6)})
    refined = GeopakPredictor.from_checkpoint(path, device="cpu")
    r = refined.predict(img)
    assert r["refined"] and r["radius_calibrated"]
    assert r["radius_km"] == pytest.approx(1.4 * (r["spread_km"] + 1.0))
    both = GeopakPredictor.from_checkpoint(path, device="cpu", tta=True)
    r = both.predict(img)  # neither the tta block (fitted on unrefined points) nor the refined one
    assert r["refined"] and not r["radius_calibrated"]
    assert r["radius_km"] == pytest.approx(r["spread_km"] + 1.0)
    assert any(w.startswith(MISSING_MODE + "refined+tta") and "'tta.refined'" in w for w in both.warnings)
    save_calibration(path, {**PLAIN, "refined": block(1.2, 1.4),
                            "tta": {**block(1.5, 1.6), "refined": block(1.1, 1.8)}})
    r = GeopakPredictor.from_checkpoint(path, device="cpu", tta=True).predict(img)
    assert r["radius_calibrated"] and r["temperature"] == 1.1
    assert r["radius_km"] == pytest.approx(1.8 * (r["spread_km"] + 1.0))
    r = refined.with_refinement(False).predict(img)  # the plain block once refinement is off
    assert not r["refined"] and r["radius_km"] == pytest.approx(1.2 * (r["spread_km"] + 1.0))


def test_geopak_predict_writes_radius_calibrated(ckpt, tmp_path, capsys):
    path, _ = ckpt
    write_images(tmp_path / "img")
    save_calibration(path, PLAIN)
    out, gj = tmp_path / "p.csv", tmp_path / "p.geojson"

    def run(*extra):
        cli.main(["predict", str(tmp_path / "img" / "a.jpg"), "--checkpoint", str(path), "--out", str(out),
                  "--geojson", str(gj), "--no-progress", "--device", "cpu", *extra])
        return pd.read_csv(out), json.loads(gj.read_text())["features"][0]["properties"], capsys.readouterr().err

    table, props, err = run()
    assert table["radius_calibrated"].tolist() == [True] and props["radius_calibrated"] is True
    table, props, err = run("--tta")
    assert table["radius_calibrated"].tolist() == [False] and props["radius_calibrated"] is False
    assert "warning: " + MISSING_MODE + "tta" in err
    assert table["radius_km"].iloc[0] == pytest.approx(props["radius_km"])


def test_an_export_with_a_bad_calibration_is_refused_and_a_bad_folder_loads_uncalibrated(trained, tmp_path, capsys):
    path, _, imgs = trained
    save_calibration(path, block(1.0, float("nan")))
    assert cli.main(["export", str(path), "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "radius_scales.0.8" in err and str(calibration_path(path)) in err
    save_calibration(path, block(1.5, 2.0))
    assert cli.main(["export", str(path), "--out", str(tmp_path / "m")]) == 0
    config_path = tmp_path / "m" / "config.json"
    config = json.loads(config_path.read_text())
    config["calibration"]["temperature"] = -1.0  # edited by hand after export
    config_path.write_text(json.dumps(config))
    folder = GeopakPredictor.from_pretrained(tmp_path / "m", device="cpu")
    assert folder.calibration is None
    assert any(str(config_path) in w and "calibration.temperature" in w for w in folder.warnings)
    assert not folder.predict(sorted(imgs.iterdir())[0])["radius_calibrated"]
