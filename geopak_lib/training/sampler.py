"""Province-balanced batch sampler (spec 000 §11, spec 003 §2.3).

Every batch holds a fixed number of samples per province, drawn with replacement, so the rare
provinces (Balochistan, Azad Kashmir) appear in every batch instead of once an epoch. The
number of batches per epoch is a parameter (spec 003: 1300), not the dataset size divided by
the batch size: with replacement an "epoch" is just a fixed amount of work.

Shares: 'equal' (spec 000: the same count per province) or 'spec003' (Sindh twice any other
province: 16 + 6 x 8 = 64). A province with no training sample is skipped and its share is
spread over the others in proportion to their shares (docs/decisions/training.md).
"""

from __future__ import annotations

import numpy as np

from geopak_lib.constants import NUM_PROVINCES, PROVINCE_ID

SHARE_PRESETS = ("equal", "spec003")


def share_weights(shares) -> np.ndarray:
    """Relative weight per province id (7,), from 'equal', 'spec003' or {province name: weight}."""
    if isinstance(shares, dict):
        unknown = set(shares) - set(PROVINCE_ID)
        if unknown:
            raise ValueError(f"unknown province(s) in shares: {sorted(unknown)}")
        w = np.zeros(NUM_PROVINCES)
        for name, value in shares.items():
            w[PROVINCE_ID[name]] = float(value)
        return w
    if shares == "equal":
        return np.ones(NUM_PROVINCES)
    if shares == "spec003":
        w = np.ones(NUM_PROVINCES)
        w[PROVINCE_ID["Sindh"]] = 2.0  # 16 of 64 for Sindh, 8 for each other province
        return w
    raise ValueError(f"shares must be one of {SHARE_PRESETS} or a dict, got {shares!r}")


def batch_counts(weights, present, batch_size: int, rng: np.random.Generator | None = None):
    """Samples per province in one batch (7,) ints summing to ``batch_size``.

    Absent provinces get 0 and their share goes to the present ones pro rata. Each province
    gets floor(batch_size * share); the few slots left over go to the largest remainders, ties
    broken at random by ``rng`` (so with 64 over 7 equal provinces each gets 9 and a random one
    gets the 64th, instead of always the same one).
    """
    w = np.where(present, np.asarray(weights, float), 0.0)
    if w.sum() <= 0:
        raise ValueError("no province with a positive share has training samples")
    exact = batch_size * w / w.sum()
    counts = np.floor(exact + 1e-9).astype(int)
    left = batch_size - counts.sum()
    if left:
        tiebreak = rng.random(NUM_PROVINCES) if rng is not None else np.zeros(NUM_PROVINCES)
        remainder = np.where(w > 0, exact - counts, -1.0)
        order = np.lexsort((tiebreak, -remainder))  # largest remainder first, then random
        counts[order[:left]] += 1
    return counts


class ProvinceBalancedSampler:
    """Batch sampler: yields ``batches_per_epoch`` lists of indices into ``province_ids``.

    Deterministic for (seed, epoch): call ``set_epoch(e)`` before iterating; the sampler's whole
    state is that epoch number, so a resumed run draws exactly the batches it would have drawn.
    Use as ``DataLoader(dataset, batch_sampler=sampler)`` or iterate directly.
    """

    def __init__(self, province_ids, batch_size: int, batches_per_epoch: int,
                 *, shares="equal", seed: int = 0):
        self.province_ids = np.asarray(province_ids, dtype=int)
        if self.province_ids.size == 0:
            raise ValueError("ProvinceBalancedSampler needs at least one training sample")
        if batch_size < 1 or batches_per_epoch < 1:
            raise ValueError("batch_size and batches_per_epoch must be >= 1")
        bad = (self.province_ids < 0) | (self.province_ids >= NUM_PROVINCES)
        if bad.any():
            raise ValueError(f"province_id out of range 0..{NUM_PROVINCES - 1} at positions "
                             f"{np.flatnonzero(bad)[:5].tolist()}")
        self.batch_size, self.batches_per_epoch, self.seed = batch_size, batches_per_epoch, seed
        self.weights = share_weights(shares)
        self.members = [np.flatnonzero(self.province_ids == p) for p in range(NUM_PROVINCES)]
        self.present = np.array([len(m) > 0 for m in self.members]) & (self.weights > 0)
        if not self.present.any():
            raise ValueError("no province with a positive share has training samples")
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.seed = int(state["epoch"]), int(state["seed"])

    def __len__(self) -> int:
        return self.batches_per_epoch

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        for _ in range(self.batches_per_epoch):
            counts = batch_counts(self.weights, self.present, self.batch_size, rng)
            batch = np.concatenate([rng.choice(self.members[p], size=n, replace=True)
                                    for p, n in enumerate(counts) if n > 0])
            yield rng.permutation(batch).tolist()  # mixed order: no province-sorted batches
