"""What the phase notebooks show: the outcome table, best rows per phase, the random-weights banner."""

import pandas as pd

from geopak_lib.book.phase_report import outcome_table, province_confusion
from geopak_lib.book.provenance import encoder_status_markdown


def test_outcome_table_compares_medians():
    pred = pd.DataFrame({"error_km": [1.0, 3.0, 100.0]})  # median 3 km
    base = pd.DataFrame([{"method": "train_centroid", "n": 3, "median_km": 400.0},
                         {"method": "knn", "n": 3, "median_km": 2.0}])
    out = outcome_table(pred, base, "model")
    assert out["method"].tolist() == ["model", "train_centroid", "knn"]
    assert out.loc[0, "median_km"] == 3.0 and out.loc[0, "acc_5km"] == 2 / 3
    assert out["model beats it"].tolist()[1:] == [True, False]


def test_province_confusion_labels():
    cm = province_confusion([0, 0, 1], [0, 1, 1])
    assert cm.loc["Sindh", "sindh"] == 1 and cm.loc["Sindh", "punjab"] == 1 and cm.loc["Punjab", "punjab"] == 1
    assert cm.values.sum() == 3


def test_random_weights_banner():
    good = {"spec": "timm:x", "weight_status": "pretrained:y", "is_random": False}
    bad = {"spec": "open_clip:ViT-B-16:openai", "weight_status": "random (offline)", "is_random": True}
    assert "Random weights" not in encoder_status_markdown([good, good])
    md = encoder_status_markdown([bad, good])
    assert md.startswith("> **⚠ Random weights:**") and "open_clip:ViT-B-16:openai" in md.splitlines()[0]


def test_phase_gains_say_what_each_phase_added_and_why_not():
    from geopak_lib.book.phase_report import phase_gains_markdown

    rows = [(1, "val", 88.4), (1, "test", 70.7), (2, "val", 88.4), (2, "test", 70.7), (3, "val", 85.8), (3, "test", 71.2)]
    table = pd.DataFrame([{"phase": p, "split": s, "median_km": m} for p, s, m in rows])
    text = phase_gains_markdown(table, 3)
    assert "Phase 2 changes nothing on validation" in text and "handed them on unchanged" in text
    assert "Phase 3 improves validation: median 88.4 → 85.8 km (-2.6); test 70.7 → 71.2 km (+0.5)" in text
    assert "does not carry over to test" in text and "final model is **phase 3**" in text
