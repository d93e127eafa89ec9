"""Geography-safe augmentation: the ban on mirrors and warps, strong/mild routing, determinism."""

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from geopak_lib.data.augment import (AugmentConfig, ImageViewDataset, assert_geography_safe, augment_for_province,
                                build_augment, clean_transform, item_seed)

FORBIDDEN_NAMES = {"RandomHorizontalFlip", "RandomVerticalFlip", "RandomPerspective", "ElasticTransform"}


def _walk(t):
    """Independent recursive walk over a pipeline (Compose/RandomApply lists and child modules)."""
    yield t
    for c in list(getattr(t, "transforms", []) or []) + list(getattr(t, "children", lambda: [])()):
        yield from _walk(c)


def _ramp(h=48, w=64):
    """Left-right asymmetric image: brightness rises from left (dark) to right (bright)."""
    row = np.linspace(20, 235, w).astype(np.uint8)
    return Image.fromarray(np.repeat(np.repeat(row[None, :, None], h, 0), 3, 2))


@pytest.mark.parametrize("strength", ["strong", "mild"])
def test_built_pipelines_hold_no_forbidden_transform(strength):
    pipeline = build_augment(strength, size=32)
    names = [type(t).__name__ for t in _walk(pipeline)]
    assert "RandomResizedCrop" in names and "ColorJitter" in names
    assert not FORBIDDEN_NAMES & set(names)
    for t in _walk(pipeline):
        if isinstance(t, (v2.RandomRotation, v2.RandomAffine)):
            assert max(abs(d) for d in t.degrees) <= 5


@pytest.mark.parametrize("bad, message", [
    (v2.Compose([v2.RandomApply([v2.RandomHorizontalFlip()], p=0.5)]), "RandomHorizontalFlip"),
    (v2.Compose([v2.RandomVerticalFlip()]), "RandomVerticalFlip"),
    (v2.RandomPerspective(), "RandomPerspective"),
    (v2.Compose([v2.ToImage(), v2.RandomRotation(30)]), "rotates"),
    (v2.RandomAffine(degrees=0, shear=10), "shear"),
])
def test_ban_is_enforced(bad, message):
    with pytest.raises(ValueError, match=message):
        assert_geography_safe(bad)


def test_small_rotation_allowed():
    assert_geography_safe(v2.Compose([v2.RandomRotation(3)]))


def test_output_never_mirrored():
    image = _ramp()
    for strength in ("strong", "mild"):
        pipeline = build_augment(strength, size=32)
        for seed in range(40):
            torch.manual_seed(seed)
            out = pipeline(image)
            assert out.dtype == torch.uint8 and out.shape == (3, 32, 32)
            profile = out.float().mean((0, 1)).numpy()  # brightness per column, left to right
            assert np.corrcoef(profile, np.arange(32))[0, 1] > 0.8, (strength, seed)


def test_strong_changes_more_than_mild():
    image = _ramp()
    clean = clean_transform(32)(image).float()

    def mean_change(strength):
        pipeline, diffs = build_augment(strength, size=32), []
        for seed in range(30):
            torch.manual_seed(seed)
            diffs.append((pipeline(image).float() - clean).abs().mean().item())
        return np.mean(diffs)

    assert mean_change("strong") > 1.3 * mean_change("mild")


def test_routing_by_province():
    assert augment_for_province("Sindh") == "strong" and augment_for_province("Punjab") == "strong"
    for p in ("Khyber Pakhtunkhwa", "Islamabad Capital Territory", "Gilgit-Baltistan", "Balochistan",
              "Azad Kashmir"):
        assert augment_for_province(p) == "mild"
    assert AugmentConfig.preset("strong").crop_scale[0] < AugmentConfig.preset("mild").crop_scale[0]
    with pytest.raises(ValueError, match="strong"):
        build_augment("extreme")


def test_dataset_views_are_deterministic_and_leave_global_rng(tmp_path):
    path = tmp_path / "a.png"
    _ramp().save(path)
    ds = ImageViewDataset([str(path)], size=24)
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = ds[(0, "strong", item_seed(0, 0, 1))][1]
    assert torch.equal(torch.rand(3), expected_next)  # the caller's RNG stream is untouched
    b = ds[(0, "strong", item_seed(0, 0, 1))][1]
    c = ds[(0, "strong", item_seed(0, 0, 2))][1]
    assert torch.equal(a, b) and not torch.equal(a, c)
    row, clean = ds[(0, "none", 0)]
    assert row == 0 and torch.equal(clean, clean_transform(24)(_ramp()))


def test_item_seed_distinct():
    seeds = {item_seed(0, r, v) for r in range(50) for v in range(4)}
    assert len(seeds) == 200 and item_seed(1, 0, 0) != item_seed(0, 0, 0)
