"""benchmarks/doc_figures reads a run's artifacts right: a tiny fabricated run folder with values
worked out by hand, and notebook tables written by pandas itself (the producer 06 uses)."""

import json

import pandas as pd
import pytest

from benchmarks import doc_figures


def _nb(path, *frames_and_markdown):
    outputs = []
    for item in frames_and_markdown:
        if isinstance(item, str):
            outputs.append({"output_type": "display_data", "data": {"text/markdown": [item]}})
        else:
            outputs.append({"output_type": "execute_result", "data": {"text/html": [item.to_html()],
                                                                        "text/plain": [item.to_string()]}})
    path.write_text(json.dumps({"cells": [{"cell_type": "code", "source": [], "outputs": outputs}]}))


@pytest.fixture()
def run(tmp_path):
    run = tmp_path / "runs" / "tiny"
    (run / "checkpoints" / "phase1").mkdir(parents=True)
    (run / "notebooks").mkdir()
    pd.DataFrame({"id": [f"a{i}" for i in range(9)],
                  "split": ["train"] * 3 + ["val"] * 1 + ["test"] * 5,
                  "block_id": ["0_0", "0_0", "0_1", "1_1", "2_2", "2_2", "2_3", "2_3", "2_4"]}).to_csv(
        run / "manifest.csv", index=False)
    # Errors 10, 20, 30, 250, 400: median 30; p90 = 250 + 0.6 * 150 = 340; 2 of 5 within 25 km,
    # 3 of 5 within 200 km; 4 of 5 provinces right.
    pd.DataFrame({"id": list("abcde"), "error_km": [250, 10, 400, 30, 20],
                  "refined_error_km": [1, 2, 3, 4, 500],
                  "province_id": [0, 0, 1, 1, 2], "province_pred": [0, 0, 1, 1, 0]}).to_csv(
        run / "predictions_test.csv", index=False)
    (run / "final_checkpoint.txt").write_text("runs/tiny/checkpoints/phase1/best.pt\n")
    pd.DataFrame({"epoch": [0, 1, 1, 2, 2, 3], "split": ["val", "train", "val", "train", "val", "val"],
                  "median_error_km": [100, 5, 90, 4, 80, 85]}).to_csv(
        run / "checkpoints" / "phase1" / "losses.csv", index=False)
    # Phase 0 logs no km; it keeps the epoch of best balanced accuracy (2), not of best accuracy (1).
    (run / "checkpoints" / "phase0").mkdir()
    pd.DataFrame({"epoch": [1, 2, 2], "split": ["val", "val", "train"], "province_acc": [0.5, 0.4, 0.9],
                  "balanced_acc": [0.30, 0.35, 0.9]}).to_csv(run / "checkpoints" / "phase0" / "losses.csv", index=False)
    pd.DataFrame({"id": ["a3"], "error_km": [80.0]}).to_csv(run / "checkpoints" / "phase1" / "val_errors.csv", index=False)
    (run / "checkpoints" / "phase1" / "best.evaluation.json").write_text(json.dumps(
        {"headline": {"district_acc": 0.25}, "headline_ci95": {"median_km": [30.0, 12.34, 56.78]},
         "per_province": [{"province": "Sindh", "median_km": 25.0, "n": 3}]}))
    (run / "checkpoints" / "phase1" / "best.gallery.json").write_text(json.dumps(
        {"default": False, "val_median_km": {"plain": 100.0, "refined": 107.2},
         "val_diff_km_ci95": [7.2, -10.6, 35.3], "settings": {"k": 1}, "memory_mb": 4.2}))
    options = pd.DataFrame({"val Δ median km": [7.2], "val Δ 95% lo": [-10.6], "val Δ 95% hi": [35.3],
                            "adopted": [False], "test_median_km_without": [30.0], "test_median_km_with": [41.0]},
                           index=pd.Index(["refinement inside the cells"], name="option"))
    views = pd.DataFrame({"n": [3, 3, 3, 3], "median_km": [11.0, 12.0, 13.0, 14.0], "acc_750km": [1.0] * 4},
                         index=pd.MultiIndex.from_tuples([("val", 1, "embedding"), ("val", 4, "embedding"),
                                                          ("test", 1, "embedding"), ("test", 4, "embedding")],
                                                         names=["split", "views", "combine"]))
    tta = options.rename(index={"refinement inside the cells": "test-time augmentation (5 views)"})
    tta.loc[:, "val Δ median km"], tta.loc[:, "adopted"] = -3.0, True
    _nb(run / "notebooks" / "06_evaluation.ipynb", options, views, tta,
        "TTA helps here: the median error moves by -7.0 km.")
    return run


def test_headline_from_predictions(run):
    pred = doc_figures.test_predictions(run)
    plain = pred["plain"]
    assert plain["n"] == 5 and plain["median_km"] == 30.0
    assert plain["p90_km"] == pytest.approx(340.0)
    assert plain["acc_25km"] == pytest.approx(0.4) and plain["acc_200km"] == pytest.approx(0.6)
    assert pred["province_acc"] == pytest.approx(0.8)
    assert pred["refined"]["median_km"] == 3.0


def test_split_counts_and_phases(run):
    counts = doc_figures.split_counts(run)
    assert counts["train"] == (3, 2) and counts["val"] == (1, 1) and counts["test"] == (5, 3)
    assert counts["val_cal"] == (0, 0)
    # The best validation row is epoch 2 (80 km); train rows never count.
    assert doc_figures.phase_medians(run) == {"phase0": (None, None, None), "phase1": (80.0, 2, 80.0)}
    assert doc_figures.final_checkpoint(run) == run / "checkpoints" / "phase1" / "best.pt"


def test_multiindex_table_with_rowspan():
    # pandas writes the repeated outer label "val" once, with rowspan=2.
    frame = pd.DataFrame({"median_km": [1.5, 2.5, 3.5]},
                         index=pd.MultiIndex.from_tuples([("val", "off"), ("val", "on"), ("test", "off")]))
    assert 'rowspan="2"' in frame.to_html()
    parsed = doc_figures.parse_html_table(frame.to_html())
    assert list(parsed.index) == ["val / off", "val / on", "test / off"]
    assert list(parsed["median_km"].astype(float)) == [1.5, 2.5, 3.5]


def test_figures_lines(run):
    lines = dict(doc_figures.figures(run))
    assert lines["00 images per split (blocks)"] == "train 3 (2), val 1 (1), val_cal 0 (0), test 5 (3)"
    assert lines["06 test plain: n, median, mean, p90 km, acc@25, acc@200"] == "5, 30.0, 142.0, 340.0, 40.0%, 60.0%"
    assert lines["06 headline test median km [95%]"] == "30.0 [12.3, 56.8]"
    assert lines["06 district accuracy %"] == "25.0"
    assert lines["refinement val Δ [95%]"] == "+7.2 km [-10.6, +35.3]"
    assert lines["06 option 'refinement inside the cells' val Δ [95%]"] == (
        "+7.2 km [-10.6, +35.3]; adopted False; test median 30.0 → 41.0 km")
    assert lines["06 several photos 'test / 4 / embedding' median km"] == "14.0"
    # A second verdict table (TTA, placed later in 06) is read too.
    assert lines["06 option 'test-time augmentation (5 views)' val Δ [95%]"].startswith("-3.0 km [-10.6, +35.3]; adopted True")
    assert lines["06 TTA verdict"].startswith("TTA helps here")
    assert lines["06 headline test p90 km [95%]"] == "n/a"
    assert lines["phase0 best val province accuracy"] == "0.400 (balanced 0.350, epoch 2)"


def test_missing_run_is_a_user_mistake(tmp_path, capsys):
    assert doc_figures.main([str(tmp_path / "nowhere")]) == 2
    assert "manifest.csv not found" in capsys.readouterr().err
