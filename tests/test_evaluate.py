"""geopak evaluate / GeopakPredictor.evaluate: a labelled table scored end to end, figures checked
against an independent geodesic (pyproj) and by hand; bad rows kept as rejects; CLI exit codes."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from pyproj import Geod

from geopak_lib.book import cli
from geopak_lib.constants import PROVINCE_ID
from geopak_lib.inference.labelled import score
from geopak_lib.inference.predictor import GeopakPredictor

PAYLOAD = "<img src=x onerror=alert(1)>"


@pytest.fixture
def labelled(tmp_path):
    """Six photos at known places (two provinces), one row pointing at a missing image, one outside Pakistan."""
    rng = np.random.default_rng(1)
    img = tmp_path / "imgs"
    img.mkdir()
    rows = [("k1", 24.86, 67.01, "Sindh"), ("k2", 25.39, 68.37, "Sindh"), ("k3", 27.7, 68.86, ""),
            ("l1", 31.55, 74.34, "Punjab"), ("l2", 30.2, 71.47, "Punjab"), (f"x{PAYLOAD}", 32.1, 74.2, "Punjab")]
    for rid, *_ in rows:
        Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(img / f"{rid[:2]}.jpg")
    table = pd.DataFrame([{"id": r, "image": f"{r[:2]}.jpg", "latitude": a, "longitude": o, "province": p}
                          for r, a, o, p in rows])
    table.loc[len(table)] = {"id": "gone", "image": "nope.jpg", "latitude": 30.0, "longitude": 70.0, "province": "Punjab"}
    table.loc[len(table)] = {"id": "far", "image": "k1.jpg", "latitude": 48.85, "longitude": 2.35, "province": "Punjab"}
    path = tmp_path / "labelled.csv"
    table.to_csv(path, index=False)
    return path, img


def test_api_scores_every_valid_row_and_keeps_the_rejects(ckpt, labelled):
    path, _ = ckpt
    table, img = labelled
    pred = GeopakPredictor.from_checkpoint(path, calibration=None, refine=False)
    res = pred.evaluate(table, img, progress=False)
    assert sorted(res.rejects["id"].unique()) == ["far", "gone"]  # named, never dropped silently
    p = res.predictions.set_index("id")
    assert len(p) == 6 and (p["error"] == "").all()
    assert p.loc["k3", "province"] == "Sindh"  # blank province filled from the polygons, as validate does
    # the error is the geodesic distance of the predictor's own point (pyproj's WGS84 within 0.5%)
    _, _, dist = Geod(ellps="WGS84").inv(p["longitude"], p["latitude"], p["pred_lon"], p["pred_lat"])
    np.testing.assert_allclose(p["error_km"], dist / 1000, rtol=5e-3)
    one = pred.predict(str(img / "l1.jpg"))
    assert (p.loc["l1", "pred_lat"], p.loc["l1", "pred_lon"]) == pytest.approx((one["lat"], one["lon"]), abs=1e-4)
    m = res.metrics
    assert m["median_km"] == pytest.approx(np.median(p["error_km"])) and m["n"] == 6
    assert m["province_acc"] == pytest.approx((p["province"] == p["province_pred"]).mean())
    assert m["n_rejected"] == 2 and m["radius_calibrated"] is False
    assert p["radius_calibrated"].tolist() == [False] * 6  # each row says so too (predictions.csv)
    lo, hi = m["ci95"]["median_km"]
    assert lo <= m["median_km"] <= hi
    assert set(res.per_province["province"]) == {"Sindh", "Punjab"}
    assert res.settings["n"].sum() == 6


def test_score_by_hand():
    """Errors 10, 20, 30, 40 km in 2 blocks; provinces right 3 of 4: median 25, p90 37, 25%/100% within 25/200 km."""
    pred = pd.DataFrame({"id": list("abcd"), "latitude": [24.9, 24.9, 31.5, 31.5], "longitude": [67.0, 67.0, 74.3, 74.3],
                         "pred_lat": [24.9, 24.9, 31.5, 31.5], "pred_lon": [67.0, 67.0, 74.3, 74.3],
                         "province": ["Sindh", "Sindh", "Punjab", "Punjab"],
                         "province_pred": ["Sindh", "Sindh", "Punjab", "Sindh"],
                         "error_km": [10.0, 20.0, 30.0, 40.0], "block_id": ["b1", "b1", "b2", "b2"], "error": ""})
    m, provinces, _ = score(pred, n_resamples=200)
    assert m["median_km"] == 25.0 and m["p90_km"] == pytest.approx(37.0)
    assert m["acc_25km"] == 0.5 and m["acc_200km"] == 1.0 and m["province_acc"] == 0.75
    assert m["n_blocks"] == 2
    # resampling 2 blocks: medians of {b1,b1}=15, {b2,b2}=35, {b1,b2}=25 -> the interval spans 15..35
    assert m["ci95"]["median_km"][0] == pytest.approx(15.0) and m["ci95"]["median_km"][1] == pytest.approx(35.0)
    punjab = provinces.set_index("province").loc["Punjab"]
    assert punjab["median_km"] == 35.0 and punjab["province_recall"] == 0.5
    assert PROVINCE_ID["Sindh"] != PROVINCE_ID["Punjab"]


def test_cli_writes_files_and_says_what_failed(ckpt, labelled, tmp_path, capsys):
    path, _ = ckpt
    table, img = labelled
    out = tmp_path / "eval"
    rc = cli.main(["evaluate", str(path), "--table", str(table), "--images", str(img), "--out", str(out),
                   "--no-progress", "--refine", "off"])
    assert rc == 1  # two rows rejected
    for name in ("metrics.json", "predictions.csv", "per_province.csv", "urban_rural.csv", "rejects.csv", "report.html"):
        assert (out / name).is_file(), name
    m = json.loads((out / "metrics.json").read_text())
    api = GeopakPredictor.from_checkpoint(path, refine=False).evaluate(table, img, progress=False).metrics
    assert m["median_km"] == pytest.approx(api["median_km"]) and m["n"] == api["n"] == 6
    page = (out / "report.html").read_text()
    assert PAYLOAD not in page and "leaflet" in page.lower() and "median error" in page
    assert "2 row(s) rejected" in capsys.readouterr().err


def test_cli_user_mistakes_exit_2(ckpt, labelled, tmp_path, capsys):
    path, _ = ckpt
    table, img = labelled
    base = ["--images", str(img), "--out", str(tmp_path / "o"), "--no-progress"]
    assert cli.main(["evaluate", str(path), "--table", str(tmp_path / "nope.csv"), *base]) == 2
    assert "table" in capsys.readouterr().err
    not_a_model = tmp_path / "model.pt"
    not_a_model.write_text("hello")
    assert cli.main(["evaluate", str(not_a_model), "--table", str(table), *base]) == 2
    bad = tmp_path / "bad.csv"
    bad.write_text("id,image\n1,a.jpg\n")
    assert cli.main(["evaluate", str(path), "--table", str(bad), *base]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "latitude" in err
