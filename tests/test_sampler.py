"""Province-balanced batch sampler: exact shares per batch, determinism, replacement, absent provinces."""

import numpy as np
import pytest
import torch

from geopak_lib.constants import NUM_PROVINCES, PROVINCE_ID
from geopak_lib.training.sampler import ProvinceBalancedSampler, batch_counts, share_weights


def _ids(counts):
    """province_ids with counts[p] samples of province p, shuffled."""
    ids = np.concatenate([np.full(n, p) for p, n in enumerate(counts)])
    return np.random.default_rng(0).permutation(ids)


ALL = _ids([700, 190, 46, 38, 24, 4, 2])  # every province present, heavily imbalanced


def test_spec003_shares_exact_in_every_batch():
    s = ProvinceBalancedSampler(ALL, batch_size=64, batches_per_epoch=20, shares="spec003", seed=1)
    for batch in s:
        counts = np.bincount(ALL[batch], minlength=NUM_PROVINCES)
        assert counts[PROVINCE_ID["Sindh"]] == 16  # spec 003 §2.3: Sindh 16, others 8
        assert all(counts[p] == 8 for p in range(NUM_PROVINCES) if p != PROVINCE_ID["Sindh"])


def test_equal_shares_with_remainder():
    # 70 / 7 = 10 exactly
    for batch in ProvinceBalancedSampler(ALL, 70, 5, shares="equal", seed=0):
        assert np.bincount(ALL[batch], minlength=7).tolist() == [10] * 7
    # 64 / 7 = 9 rem 1: every province gets 9, exactly one gets a 10th, chosen at random
    extra = np.zeros(7)
    for batch in ProvinceBalancedSampler(ALL, 64, 700, shares="equal", seed=0):
        c = np.bincount(ALL[batch], minlength=7)
        assert c.sum() == 64 and sorted(c.tolist()) == [9] * 6 + [10]
        extra += c == 10
    assert extra.min() > 60  # ~100 each: the spare slot is not always Sindh's


def test_absent_provinces_skipped_and_share_redistributed():
    ids = _ids([50, 30, 0, 0, 0, 3, 0])  # only Sindh, Punjab, Balochistan
    # spec003 weights 2:1:1 over the present ones -> 32 * 2/4, 32 * 1/4, 32 * 1/4
    for batch in ProvinceBalancedSampler(ids, 32, 10, shares="spec003", seed=3):
        c = np.bincount(ids[batch], minlength=7)
        assert (c[0], c[1], c[5]) == (16, 8, 8) and c.sum() == 32


def test_batch_counts_by_hand():
    present = np.array([1, 1, 1, 0, 0, 0, 0], bool)
    # equal over 3 present, batch 10: 3.33 each -> 3,3,3 and one extra at random
    c = batch_counts(share_weights("equal"), present, 10, np.random.default_rng(0))
    assert c.sum() == 10 and sorted(c[:3].tolist()) == [3, 3, 4] and c[3:].sum() == 0
    # custom dict: Punjab 3, Sindh 1 over batch 8 -> 6 and 2
    c = batch_counts(share_weights({"Sindh": 1, "Punjab": 3}), np.ones(7, bool), 8)
    assert c.tolist() == [2, 6, 0, 0, 0, 0, 0]


def test_deterministic_per_seed_and_epoch():
    def draw(seed, epoch):
        s = ProvinceBalancedSampler(ALL, 32, 4, shares="equal", seed=seed)
        s.set_epoch(epoch)
        return [list(b) for b in s]

    assert draw(0, 1) == draw(0, 1)
    assert draw(0, 1) != draw(0, 2)
    assert draw(0, 1) != draw(1, 1)


def test_with_replacement_and_membership():
    ids = _ids([40, 40, 40, 40, 40, 2, 40])  # Balochistan has 2 samples but gets 8 per batch
    s = ProvinceBalancedSampler(ids, 56, 3, shares="equal", seed=0)
    for batch in s:
        bal = [i for i in batch if ids[i] == PROVINCE_ID["Balochistan"]]
        assert len(bal) == 8 and len(set(bal)) <= 2  # repeats: drawn with replacement
        assert set(bal) <= set(np.flatnonzero(ids == PROVINCE_ID["Balochistan"]).tolist())


def test_state_dict_and_dataloader():
    s = ProvinceBalancedSampler(ALL, 16, 3, seed=5)
    s.set_epoch(4)
    t = ProvinceBalancedSampler(ALL, 16, 3, seed=0)
    t.load_state_dict(s.state_dict())
    assert [list(b) for b in s] == [list(b) for b in t] and len(t) == 3
    loader = torch.utils.data.DataLoader(torch.arange(len(ALL)), batch_sampler=s)
    assert [b.tolist() for b in loader] == [list(b) for b in s]


def test_errors():
    with pytest.raises(ValueError, match="shares"):
        ProvinceBalancedSampler(ALL, 8, 1, shares="uniform")
    with pytest.raises(ValueError, match="unknown province"):
        share_weights({"Kashmir": 1})
    with pytest.raises(ValueError, match="out of range"):
        ProvinceBalancedSampler([0, 9], 8, 1)
    with pytest.raises(ValueError, match="no province"):
        ProvinceBalancedSampler(_ids([0, 0, 0, 0, 0, 0, 5]), 8, 1, shares={"Sindh": 1})
