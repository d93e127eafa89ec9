"""Frozen-feature cache (keying, reuse, interrupted builds) and the baselines on it."""

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from geopak_lib.data.augment import clean_transform
from geopak_lib.analysis.baselines import baseline_errors, baseline_predictions, knn_indices
from geopak_lib.geo import spherical_mean
from geopak_lib.training.cache import FeatureCache, encoder_input
from geopak_lib.geo import haversine_km
from cache_helpers import build_cache, tiny_encoders


def test_layout_and_clean_view_matches_direct_computation(manifest, tmp_path):
    clip, scene = tiny_encoders()
    cache = build_cache(manifest, tmp_path / "c", clip, scene, dtype="float32")
    assert cache.clip.shape == (12 + 2 * 8, 5) and cache.scene.shape == (28, 4)
    assert list(cache.ids) == manifest["id"].tolist() and cache.views == 2
    # row 9 (val), clean view, computed by hand
    from geopak_lib.data.images import load_rgb

    x = clean_transform(16)(load_rgb(manifest.image_path[9]))[None]  # view size = max(16, 12)
    with torch.no_grad():
        want_c, want_s = clip(encoder_input(x, clip.preprocess)), scene(encoder_input(x, scene.preprocess))
    got_c, got_s = cache.gather([9])
    assert torch.allclose(got_c, want_c, atol=1e-5) and torch.allclose(got_s, want_s, atol=1e-5)
    # augmented views exist for training rows only and differ from the clean view
    c0, _ = cache.gather([3, 3], [0, 1])
    assert not torch.allclose(c0[0], c0[1])
    with pytest.raises(IndexError):
        cache.gather([9], [1])


def test_second_call_reuses_without_encoder_calls(manifest, tmp_path):
    clip, scene = tiny_encoders()
    first = build_cache(manifest, tmp_path / "c", clip, scene)
    calls = (clip.calls, scene.calls)
    assert calls[0] == 1 + 28 / 4  # one probe + one call per batch
    second = build_cache(manifest, tmp_path / "c", clip, scene)
    assert (clip.calls, scene.calls) == calls and second.path == first.path


@pytest.mark.parametrize("change", ["manifest", "spec", "weights", "views", "seed"])
def test_key_changes_rebuild(manifest, tmp_path, change):
    clip, scene = tiny_encoders()
    first = build_cache(manifest, tmp_path / "c", clip, scene)
    kw = {}
    if change == "manifest":
        manifest = manifest.assign(split=manifest["split"].replace({"test": "val"}))
    elif change == "spec":
        clip.spec = "tiny:other"
    elif change == "weights":
        with torch.no_grad():
            clip.net[2].bias += 1.0
    else:
        kw[change] = 3
    before = clip.calls
    second = build_cache(manifest, tmp_path / "c", clip, scene, **kw)
    assert second.path != first.path and clip.calls > before


def test_interrupted_build_resumes_and_equals_straight_build(manifest, tmp_path):
    straight = build_cache(manifest, tmp_path / "a", *tiny_encoders())
    clip, scene = tiny_encoders()
    clip.fail_at = 5  # probe + 3 batches succeed, the 4th batch crashes
    with pytest.raises(RuntimeError, match="simulated"):
        build_cache(manifest, tmp_path / "b", clip, scene)
    folder = next((tmp_path / "b").iterdir())
    assert not (folder / "complete.json").exists()
    assert json.loads((folder / "progress.json").read_text())["done"] == 12  # 3 batches of 4
    with pytest.raises(FileNotFoundError, match="incomplete"):
        FeatureCache(folder)
    clip.fail_at, clip.calls = None, 0
    resumed = build_cache(manifest, tmp_path / "b", clip, scene)
    assert clip.calls == 1 + (28 - 12) / 4  # probe + only the 4 remaining batches
    assert np.array_equal(resumed.clip, straight.clip) and np.array_equal(resumed.scene, straight.scene)


def test_find_clean_ignores_views_seed_dtype_but_not_encoders_or_manifest(manifest, tmp_path):
    """Evaluating a frozen-encoder checkpoint reads the clean views of any complete cache of the
    same encoders and manifest; other weights, another manifest or an unfinished build: none."""
    root = tmp_path / "c"
    clip, scene = tiny_encoders()
    assert FeatureCache.find_clean(manifest, clip, scene, cache_root=root) is None  # nothing built yet
    built = build_cache(manifest, root, clip, scene, views=1, seed=5, dtype="float32")
    found = FeatureCache.find_clean(manifest, *tiny_encoders(), cache_root=root)  # fresh encoders, same weights
    assert found is not None and found.path == built.path
    assert torch.equal(found.gather([9, 11])[0], built.gather([9, 11])[0])
    other = tiny_encoders()
    with torch.no_grad():
        other[1].net[2].weight.mul_(2.0)
    assert FeatureCache.find_clean(manifest, *other, cache_root=root) is None
    changed = manifest.assign(split=manifest["split"].replace({"test": "val"}))
    assert FeatureCache.find_clean(changed, clip, scene, cache_root=root) is None
    (built.path / "complete.json").unlink()
    assert FeatureCache.find_clean(manifest, clip, scene, cache_root=root) is None


def test_workers_give_the_same_features(manifest, tmp_path):
    a = build_cache(manifest, tmp_path / "a", *tiny_encoders(), num_workers=0)
    b = build_cache(manifest, tmp_path / "b", *tiny_encoders(), num_workers=2)
    assert np.array_equal(a.clip, b.clip) and np.array_equal(a.scene, b.scene)


def test_spherical_mean_by_hand():
    lat, lon = spherical_mean([10.0, -10.0], [20.0, 20.0])
    assert lat == pytest.approx(0.0, abs=1e-9) and lon == pytest.approx(20.0)
    lat, lon = spherical_mean([0.0, 0.0], [179.0, -179.0])  # across the antimeridian, not 0
    assert lat == pytest.approx(0.0, abs=1e-9) and abs(lon) == pytest.approx(180.0)


def test_knn_matches_scikit_learn():
    from sklearn.neighbors import NearestNeighbors

    rng = np.random.default_rng(0)
    train, query = rng.normal(size=(50, 6)), rng.normal(size=(7, 6))
    want = NearestNeighbors(n_neighbors=4, metric="cosine").fit(train).kneighbors(query)[1]
    assert np.array_equal(knn_indices(train, query, 4, chunk=3), want)


def test_baselines_by_hand():
    # Two training clusters with distinct features; the val row copies cluster B's features.
    table = pd.DataFrame({"id": ["a", "b", "c", "d", "q"], "split": ["train"] * 4 + ["val"],
                          "latitude": [24.0, 26.0, 33.0, 33.0, 32.0], "longitude": [67.0, 67.0, 73.0, 75.0, 74.0],
                          "province_id": [0, 0, 1, 1, 1]})
    fa, fb = np.array([1.0, 0, 0]), np.array([0, 1.0, 0])
    feats = np.stack([fa, fa, fb, fb, fb]).astype(np.float32)
    cache = SimpleNamespace(ids=table["id"].to_numpy(object), clip=feats, scene=feats[:, :2])
    pred = baseline_predictions(cache, table, split="val", k=2)
    assert len(pred) == 1 and pred["id"][0] == "q"
    # kNN: spherical mean of (33, 73) and (33, 75): on the 74 meridian, a little north of 33
    assert pred["knn_lon"][0] == pytest.approx(74.0) and 33.0 < pred["knn_lat"][0] < 33.02
    # province centroid (majority of the neighbours is Punjab) = same two points here
    assert pred["province_centroid_lat"][0] == pytest.approx(pred["knn_lat"][0])
    # training centroid: mean of all four unit vectors
    lat, lon = spherical_mean(table.latitude[:4], table.longitude[:4])
    assert pred["train_centroid_lat"][0] == pytest.approx(lat)
    assert pred["knn_error_km"][0] == pytest.approx(haversine_km(pred["knn_lat"][0], 74.0, 32.0, 74.0))
    # explicit predicted province: Sindh's centroid (25, 67) by symmetry
    pred = baseline_predictions(cache, table, split="val", k=2, province_pred=np.array([0]))
    assert pred["province_centroid_lon"][0] == pytest.approx(67.0)
    assert pred["province_centroid_lat"][0] == pytest.approx(25.0, abs=0.01)
    summary = baseline_errors(cache, table, split="val", k=2)
    assert summary["method"].tolist() == ["train_centroid", "province_centroid", "knn"]
    assert summary.set_index("method").loc["knn", "median_km"] == pytest.approx(pred["knn_error_km"][0])


def test_real_encoders_build_and_reuse(manifest, tmp_path):
    from geopak_lib.data.images import load_rgb
    from geopak_lib.model.encoders import build_encoder, preprocess_batch

    with pytest.warns(UserWarning, match="RANDOM"):
        clip = build_encoder("timm:resnet18@24")  # random weights: fine for checking the plumbing
    scene = build_encoder("timm:tf_efficientnet_lite0@32")
    cache = build_cache(manifest, tmp_path / "c", clip, scene, views=1, dtype="float32")
    assert (cache.clip_dim, cache.scene_dim) == (clip.dim, scene.dim) == (512, 1280)
    x = clean_transform(32)(load_rgb(manifest.image_path[5]))[None]  # shared view at the larger size
    with torch.no_grad():
        want = scene.eval()(preprocess_batch(x, scene.preprocess))
    assert torch.allclose(cache.gather([5])[1], want, atol=1e-4)
    assert build_cache(manifest, tmp_path / "c", clip, scene, views=1, dtype="float32").path == cache.path
