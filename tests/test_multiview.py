"""The demo's multi-view set (extra crops at the val/test points) and 06's multi-view measurements."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from geopak_lib.book.demo_views import build_multiview_set, choose_points
from geopak_lib.analysis import multiview
from geopak_lib.metrics import error_km
from geopak_lib.model.inference import mixture_predict
from tiny_predictor import tiny_model


def test_choose_points_per_split(demo_manifest):
    p = choose_points(demo_manifest, ("val", "test"), 3, seed=0)
    assert p["split"].value_counts().to_dict() == {"val": 3, "test": 3}
    assert p.equals(choose_points(demo_manifest, ("val", "test"), 3, seed=0))  # seeded
    assert len(choose_points(demo_manifest, ("test",), 99)) == 5  # at most the split's size


def test_build_multiview_set(demo_manifest, tmp_path):
    views = build_multiview_set(demo_manifest, tmp_path / "mv", n_views=3, max_points=2, seed=0)
    assert len(views) == 2 * 2 * 3 and views.groupby("group")["view"].apply(list).map(sorted).eq([[0, 1, 2]] * 4).all()
    own = views[views["view"] == 0].merge(demo_manifest, left_on="group", right_on="id")
    assert (own["image_path_x"] == own["image_path_y"]).all()  # view 0 is the point's own image
    assert (own["latitude_x"] == own["latitude_y"]).all() and set(own["split_x"]) == {"val", "test"}
    extra = views[views["view"] > 0]
    for path in extra["image_path"]:
        with Image.open(path) as im:
            assert im.size == (32, 32) and im.mode == "RGB"
    first = np.asarray(Image.open(extra["image_path"].iloc[0]), float)
    assert np.abs(first - np.asarray(Image.open(views["image_path"].iloc[0]), float)).mean() > 1  # another crop
    stamp = (tmp_path / "mv" / "params.json").stat().st_mtime_ns
    again = build_multiview_set(demo_manifest, tmp_path / "mv", n_views=3, max_points=2, seed=0)  # reused, not rebuilt
    assert again.equals(views) and (tmp_path / "mv" / "params.json").stat().st_mtime_ns == stamp
    assert json.loads((tmp_path / "mv" / "params.json").read_text())["n_views"] == 3
    not_demo = demo_manifest.assign(image_path=[str(tmp_path / "photos" / "x.jpg")] * len(demo_manifest))
    with pytest.raises(ValueError, match="only be cut for the built-in demo"):
        build_multiview_set(not_demo, tmp_path / "other")


@torch.no_grad()
def test_multiview_errors_and_table():
    model = tiny_model(encoders=False)
    views = pd.DataFrame({"group": ["a", "a", "b", "b"], "view": [0, 1, 0, 1], "split": ["val", "val", "test", "test"],
                          "latitude": [25.0, 25.0, 31.0, 31.0], "longitude": [68.0, 68.0, 74.0, 74.0]})
    torch.manual_seed(3)
    clip, scene = torch.randn(4, 6), torch.randn(4, 5)
    one = multiview.multiview_errors(model, clip, scene, views, n_views=1, combine="probs")
    pred = mixture_predict(model, model.forward_features(clip[[0, 2]], scene[[0, 2]]))  # views 0 alone
    want = error_km(pred["lat"].numpy(), pred["lon"].numpy(), np.array([25.0, 31.0]), np.array([68.0, 74.0]))
    assert one["group"].tolist() == ["a", "b"] and np.allclose(one["error_km"], want, rtol=1e-5)
    two = multiview.multiview_errors(model, clip, scene, views, n_views=2, combine="embedding")
    mean = model.forward_features(torch.stack([clip[:2].mean(0), clip[2:].mean(0)]),
                                  torch.stack([scene[:2].mean(0), scene[2:].mean(0)]))
    assert np.allclose(two["lat"], mixture_predict(model, mean)["lat"].numpy(), atol=1e-5)
    table = multiview.multiview_table(model, clip, scene, views, n_views=(1, 2, 4))
    assert sorted(set(table["views"])) == [1, 2] and len(table) == 2 * 2 * 2  # 4 views skipped: the set has 2
    base = np.random.default_rng(0).gamma(2.0, 50.0, 200)
    blocks = np.arange(200) // 4
    # the default stays unless the other way is clearly better: a 1% gain with noise is not taken
    noisy = base * np.random.default_rng(1).normal(0.99, 0.3, 200).clip(0.1)
    chosen, rows = multiview.rule_combine({"embedding": base, "probs": noisy}, blocks)
    assert chosen == "embedding" and rows[0]["option"] == "probs" and not rows[0]["adopted"]
    assert rows[0]["lo"] < 0 < rows[0]["hi"]
    chosen, rows = multiview.rule_combine({"embedding": base, "probs": 0.5 * base}, blocks)
    assert chosen == "probs" and rows[0]["adopted"] and rows[0]["hi"] < 0
    # a lower median alone is not enough when the default is the other way round
    chosen, _ = multiview.rule_combine({"embedding": 0.5 * base, "probs": base}, blocks, default="probs")
    assert chosen == "embedding"
    chosen, rows = multiview.rule_combine({"embedding": base, "probs": base}, blocks, default="probs")
    assert chosen == "probs" and rows[0]["option"] == "embedding" and rows[0]["val Δ median km"] == 0
    row = multiview.option_row("x", base, 0.5 * base, base, test_with=base, val_blocks=blocks)
    assert row["adopted"] and row["val Δ 95% hi"] < 0
    same = multiview.option_row("x", base, base, base, test_with=base, how="off", val_blocks=blocks)
    assert not same["adopted"] and same["in_the_predictor"] == "off" and same["val Δ median km"] == 0


def test_combine_text_says_the_rule_and_the_default():
    from geopak_lib.book.eval_text import combine_text

    rows = [{"option": "probs", "against": "embedding", "val Δ median km": -3.04, "lo": -9.5, "hi": 2.25,
             "adopted": False}]
    text = combine_text("embedding", rows, n_views=4, default="embedding")
    assert "**embedding** (probs vs embedding: -3.0 km [-9.5, +2.2] not adopted)" in text and "the same" in text
    adopted = [dict(rows[0], hi=-1.0, adopted=True)]
    text = combine_text("probs", adopted, n_views=4, default="embedding")
    assert "[-9.5, -1.0] adopted" in text and "--combine probs" in text
