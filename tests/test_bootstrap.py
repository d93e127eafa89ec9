"""Block bootstrap and the adoption rule, against answers known in closed form."""

import numpy as np
import pytest

from geopak_lib import bootstrap


def test_one_image_per_block_matches_the_normal_theory_interval():
    """Mean of 400 N(0, 1) draws: the 95% interval half-width is 1.96 / sqrt(400) = 0.098."""
    x = np.random.default_rng(1).normal(size=400)
    ci = bootstrap.block_ci(np.mean, x, blocks=np.arange(400), n_resamples=2000)
    assert ci.value == pytest.approx(x.mean())
    assert (ci.hi - ci.lo) / 2 == pytest.approx(1.96 / 20, rel=0.12)


def test_copies_in_one_block_do_not_shrink_the_interval():
    """Ten copies of each value in one block carry the information of one value: same width as above,
    where an image-level bootstrap would be sqrt(10) times narrower."""
    x = np.random.default_rng(1).normal(size=400)
    single = bootstrap.block_ci(np.mean, x, blocks=np.arange(400), n_resamples=2000)
    copies = bootstrap.block_ci(np.mean, np.repeat(x, 10), blocks=np.repeat(np.arange(400), 10), n_resamples=2000)
    assert copies.hi - copies.lo == pytest.approx(single.hi - single.lo, rel=0.05)
    iid = bootstrap.block_ci(np.mean, np.repeat(x, 10), blocks=np.arange(4000), n_resamples=2000)
    assert (copies.hi - copies.lo) / (iid.hi - iid.lo) == pytest.approx(np.sqrt(10), rel=0.15)


def test_resamples_keep_blocks_whole_and_are_seeded():
    blocks = np.array(["a", "a", "b", "c", "c", "c"])
    for idx in bootstrap.block_resamples(blocks, n_resamples=50, seed=3):
        drawn = blocks[idx]
        for b, size in (("a", 2), ("b", 1), ("c", 3)):
            assert (drawn == b).sum() % size == 0
        assert len(np.unique(np.searchsorted(["a", "b", "c"], drawn))) <= 3
    one = [i.tolist() for i in bootstrap.block_resamples(blocks, n_resamples=5, seed=3)]
    assert one == [i.tolist() for i in bootstrap.block_resamples(blocks, n_resamples=5, seed=3)]


def test_a_constant_shift_is_exact_and_adopted():
    base = np.random.default_rng(0).gamma(2.0, 50.0, 300)
    ok, ci = bootstrap.adopt(base, base - 5.0, blocks=np.arange(300) // 3)
    assert ok and ci.lo == pytest.approx(-5.0) and ci.hi == pytest.approx(-5.0)


def test_a_tiny_noisy_gain_is_not_adopted_and_a_clear_one_is():
    rng = np.random.default_rng(0)
    base = rng.gamma(2.0, 50.0, 300)
    blocks = np.arange(300) // 3
    noisy = np.abs(base - 1.0 + rng.normal(0, 30, 300))   # median ~1 km better, inside the noise
    assert np.median(noisy) < np.median(base) + 5
    ok, ci = bootstrap.adopt(base, noisy, blocks=blocks)
    assert not ok and ci.lo < 0 < ci.hi
    ok, ci = bootstrap.adopt(base, 0.6 * base, blocks=blocks)
    assert ok and ci.hi < 0
    chosen, rows = bootstrap.choose_simplest({"phase 1": base, "phase 2": noisy, "phase 3": 0.6 * base},
                                             blocks=blocks)
    assert chosen == "phase 3" and [r["adopted"] for r in rows] == [False, True]
    chosen, _ = bootstrap.choose_simplest({"phase 1": base, "phase 2": noisy}, blocks=blocks)
    assert chosen == "phase 1"


def test_headline_ci_brackets_the_values():
    rng = np.random.default_rng(2)
    e = rng.gamma(2.0, 60.0, 500)
    truth = rng.integers(0, 7, 500)
    pred = np.where(rng.random(500) < 0.7, truth, (truth + 1) % 7)
    h = bootstrap.headline_ci(e, truth, pred, np.arange(500) // 5, n_resamples=300)
    assert h["median_km"].value == pytest.approx(np.median(e))
    assert h["acc_25km"].value == pytest.approx(np.mean(e <= 25))
    assert h["province_acc"].value == pytest.approx(np.mean(truth == pred))
    for ci in h.values():
        assert ci.lo <= ci.value <= ci.hi
