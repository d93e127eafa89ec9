"""08_explore's callbacks and state, without a browser: picks, uploads, the sliders and TTA, and the
widgets' outputs, on the tiny checkpoint of test_predict (tiny encoders stand in for the real ones)."""

import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy.special import softmax

from geopak_lib.book.explorer import (Explorer, ExplorerApp, concepts_table, load_test_predictions, pick_ids,
                                     uploaded_image)
from geopak_lib.data.rundir import RunDir
from geopak_lib.inference.predictor import GeopakPredictor

PLACES = [(25.1, 68.1, 0), (26.4, 68.4, 0), (31.4, 74.2, 1), (24.9, 67.9, 0), (31.6, 74.4, 1), (26.6, 68.6, 0)]


def upload_value(data: bytes, name: str = "photo.jpg"):
    """What an ipywidgets 8 FileUpload holds after one upload."""
    from datetime import datetime, timezone

    return ({"name": name, "type": "image/jpeg", "size": len(data), "content": memoryview(data),
             "last_modified": datetime(2026, 1, 1, tzinfo=timezone.utc)},)


def jpeg_bytes(seed: int, size=(40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


@pytest.fixture()
def run(ckpt, tmp_path):  # noqa: F811
    """A run folder around the tiny checkpoint: six images, manifest and assignments (3 train, 3 test)."""
    path, _ = ckpt
    run = RunDir(path.parents[2])
    (tmp_path / "img").mkdir()
    rows = []
    for i, (lat, lon, prov) in enumerate(PLACES):
        image = tmp_path / "img" / f"{i}.jpg"
        image.write_bytes(jpeg_bytes(i))
        rows.append({"id": f"00{i}", "image_path": str(image), "latitude": lat, "longitude": lon,
                     "province": ["Sindh", "Punjab"][prov], "province_id": prov, "split": "train" if i < 3 else "test"})
    manifest = pd.DataFrame(rows)
    run.write_manifest(manifest)
    run.write_assignments(manifest[["id", "province_id", "split"]].assign(cell_id=[0, 1, 2, 0, 2, 1]))
    return run, GeopakPredictor.from_checkpoint(path, device="cpu")


def test_picks_worst_and_most_confident_wrong_with_the_calibrated_temperature():
    logits = np.zeros((4, 7))
    logits[0, :2] = 2.0                    # predicts Sindh (first of a tie), truly Punjab
    logits[1, 0] = 1.5                     # predicts Sindh, truly Punjab
    logits[2, 0] = 5.0                     # right, and the most confident: never "wrong"
    logits[3, 1] = 0.5                     # predicts Punjab, truly Sindh
    frame = pd.DataFrame({"id": ["a", "b", "c", "d"], "error_km": [10.0, 400.0, 3.0, 90.0],
                          "province_id": [1, 1, 0, 0], "province_pred": logits.argmax(1),
                          **{f"logit_{p}": logits[:, p] for p in range(7)}})
    assert pick_ids(frame, "worst", n=2) == ["b", "d"]
    refined = frame.assign(refined_error_km=[500.0, 1.0, 3.0, 90.0])  # refinement fixed b and broke a
    assert pick_ids(refined, "worst", n=2, error_col="refined_error_km") == ["a", "d"]
    assert pick_ids(frame, "id") == ["a", "b", "c", "d"]
    for t in (1.0, 10.0):  # confidence order of a and b flips with the temperature (scipy's softmax)
        conf = softmax(logits / t, axis=1).max(1)
        want = sorted(["a", "b", "d"], key=lambda i: -conf["abcd".index(i)])
        assert pick_ids(frame, "confident_wrong", n=3, temperature=t) == want
    assert pick_ids(frame, "confident_wrong", n=3, temperature=1.0)[:2] == ["b", "a"]
    assert pick_ids(frame, "confident_wrong", n=3, temperature=10.0)[:2] == ["a", "b"]
    with pytest.raises(ValueError, match="pick must be one of"):
        pick_ids(frame, "best")


def test_upload_bytes_become_an_rgb_image_and_a_non_image_is_one_line():
    img, name = uploaded_image(upload_value(jpeg_bytes(0, (40, 30)), "mine.jpg"))
    assert (img.mode, img.size, name) == ("RGB", (40, 30), "mine.jpg")
    with pytest.raises(ValueError, match=r"^notes.txt: not an image Pillow can read"):
        uploaded_image(upload_value(b"hello", "notes.txt"))


def test_test_predictions_are_computed_once_then_read_back(run, monkeypatch):
    rundir, predictor = run
    first = load_test_predictions(predictor, rundir.path)
    assert sorted(first["id"]) == ["003", "004", "005"] and rundir.file("predictions_test.csv").is_file()
    from geopak_lib.book import explorer

    def recompute(*args, **kwargs):
        raise RuntimeError("recomputed")

    monkeypatch.setattr(explorer, "predictor_frames", recompute)
    again = load_test_predictions(predictor, rundir.path)
    assert np.allclose(again.sort_values("id")["error_km"], first.sort_values("id")["error_km"])
    predictor.checkpoint = rundir.path / "another.pt"  # made by another model: not reused
    with pytest.raises(RuntimeError, match="recomputed"):
        load_test_predictions(predictor, rundir.path)


def test_state_matches_the_predictor_and_sliders_do_not_rerun_the_encoders(run, monkeypatch):
    rundir, predictor = run
    frame = load_test_predictions(predictor, rundir.path)
    path = frame.set_index("id").loc["004", "image_path"]
    want = {k: GeopakPredictor.from_checkpoint(predictor.checkpoint, device="cpu", top_provinces=k[0], top_cells=k[1],
                                               tta=k[2]).predict(path) for k in [(2, 5, False), (1, 1, False), (2, 2, True)]}
    calls = []
    forward = predictor.forward_images
    monkeypatch.setattr(predictor, "forward_images", lambda *a, **k: calls.append(k) or forward(*a, **k))
    ex = Explorer(predictor, frame)
    got = ex.choose_test("004")
    assert ex.truth == (31.6, 74.4) and ex.title == "test image 004 (Punjab)"
    for key, result in [((2, 5, False), got), ((1, 1, False), ex.set_options(1, 1)),
                        ((2, 2, True), ex.set_options(2, 2, tta=True))]:
        assert result["lat"] == pytest.approx(want[key]["lat"]) and result["lon"] == pytest.approx(want[key]["lon"])
        assert len(result["hypotheses"]) == len(want[key]["hypotheses"])
    assert len(ex.set_options(1, 1)["hypotheses"]) == 1
    assert calls == [{"tta": False}, {"tta": True}]  # once per TTA setting; the sliders reuse the outputs
    assert ex.max_cells == 2  # Sindh has cells 0 and 1
    with pytest.raises(KeyError, match="not a test image"):
        ex.choose_test("000")  # a training image


def _html(out):
    return "".join(o["data"].get("text/html", "") + o["data"].get("text/markdown", "") for o in out.outputs)


def test_app_draws_the_first_state_and_redraws_on_each_control(run, monkeypatch):
    rundir, predictor = run
    frame = load_test_predictions(predictor, rundir.path)
    app = ExplorerApp(Explorer(predictor, frame), n=2, pick="worst")
    worst = frame.nlargest(2, "error_km")["id"].tolist()
    assert [v for _, v in app.images.options] == worst and app.images.value == worst[0]
    assert f"test image {worst[0]}" in _html(app.info) and "<iframe srcdoc=" in _html(app.map_out)
    assert bytes(app.image.value).startswith(b"\x89PNG")
    first_map = _html(app.map_out)

    app.top_provinces.value = 1
    assert len({h["province"] for h in app.result["hypotheses"]}) == 1  # the best province with cells
    assert _html(app.map_out) != first_map and "top 1 provinces" in _html(app.info)

    app.images.value = worst[1]
    assert f"test image {worst[1]}" in _html(app.info)
    app.pick.value = "id"
    assert [v for _, v in app.images.options] == ["003", "004", "005"] and "test image 003" in _html(app.info)

    app.upload.value = upload_value(jpeg_bytes(7), "mine.jpg")
    assert "your image mine.jpg" in _html(app.info) and app.explorer.truth is None and app.status.value == ""
    app.upload.value = upload_value(b"not an image", "notes.txt")
    assert "notes.txt: not an image" in app.status.value and "your image mine.jpg" in _html(app.info)

    bundle = app._repr_mimebundle_()  # live widget in JupyterLab, a static copy for the HTML report
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert "<iframe srcdoc=" in bundle["text/html"] and "your image mine.jpg" in bundle["text/html"]
    assert app.concepts.outputs == ()  # this predictor gives no concept scores: none are shown


def test_concept_scores_are_shown_when_the_predictor_gives_them(run, monkeypatch):
    rundir, predictor = run
    frame = load_test_predictions(predictor, rundir.path)
    results = predictor.results_from_outputs
    monkeypatch.setattr(predictor, "results_from_outputs",
                        lambda out: [{**r, "concepts": {"land_cover": [("barren", 0.7), ("water", 0.2)],
                                                        "climate": [("B arid", 0.9)]},
                                      "probes": [("a hot desert", 0.31)]} for r in results(out)])
    app = ExplorerApp(Explorer(predictor, frame), n=1)
    table = app.concepts.outputs[1]["data"]["text/html"]
    assert table.index("barren") < table.index("water") < table.index("B arid") < table.index("a hot desert")
    assert concepts_table({"concepts": {}, "probes": []}) is None


def test_report_keeps_the_static_copy_and_drops_the_widget_view():
    import nbformat

    from geopak_lib.book.report import clean_outputs

    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("display(app)")
    view = {"application/vnd.jupyter.widget-view+json": {"model_id": "x", "version_major": 2, "version_minor": 0}}
    cell.outputs = [nbformat.v4.new_output("display_data", {**view, "text/plain": "VBox()", "text/html": "<b>map</b>"}),
                    nbformat.v4.new_output("display_data", {**view, "text/plain": "HBox()"})]  # a progress bar
    nb.cells = [cell]
    outs = clean_outputs(nb).cells[0].outputs
    assert [dict(o["data"]) for o in outs] == [{"text/plain": "VBox()", "text/html": "<b>map</b>"}]


def test_labels_and_worst_follow_the_refined_error_when_the_predictor_refines(run, tmp_path):
    from tiny_predictor import save_gallery

    from geopak_lib.analysis.prediction_files import read_test_predictions, save_test_predictions

    run, predictor = run
    frame = load_test_predictions(predictor, run.path)
    plain = Explorer(predictor, frame)
    assert plain.error_col == "error_km" and " km plain · " in plain.label(frame["id"].iloc[0])
    frame = frame.assign(refined_error_km=frame["error_km"][::-1].to_numpy() + 1000)  # 06 adds refined columns
    save_test_predictions(run.path, frame, predictor.checkpoint)
    save_gallery(predictor.checkpoint, predictor.model, default=True)
    refining = GeopakPredictor.from_checkpoint(predictor.checkpoint, device="cpu")
    ex = Explorer(refining, read_test_predictions(run.path, refining.checkpoint))
    worst = frame.loc[frame["refined_error_km"].idxmax()]
    assert ex.error_col == "refined_error_km"
    assert ex.label(worst["id"]).endswith(f"{worst['refined_error_km']:.0f} km refined · conf {worst['confidence']:.2f}")
    assert Explorer(predictor, frame).error_col == "error_km"  # a predictor that does not refine: plain figures
