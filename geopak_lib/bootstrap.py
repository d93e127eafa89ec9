"""Block-bootstrap intervals for every figure, and the one rule for adopting an option on validation.

Images in one spatial block are not independent (same town, same ground), so intervals resample
whole blocks: each resample draws as many blocks as the split has, with replacement, and takes
every image of each drawn block. A figure is then computed on the resampled images; the 2.5th and
97.5th percentiles of those figures are the 95% interval (percentile bootstrap).

Comparisons are paired: both options are scored on the same resampled images, so the interval of
the difference is much narrower than the two separate intervals suggest.

The adoption rule (:func:`adopt`): a more complex option replaces the simpler one only when the
upper end of the paired interval of (complex - simple) median error lies below zero, i.e. it is
better on validation beyond the noise. See docs/decisions/evaluation.md for the level and the
number of resamples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

N_RESAMPLES = 1000   # the interval ends move by < 0.1% of their width between 1,000 and 4,000 (demo val)
LEVEL = 0.95


def block_resamples(blocks, *, n_resamples: int = N_RESAMPLES, seed: int = 0):
    """Yield ``n_resamples`` index arrays into ``blocks``, each a resample of whole blocks with replacement.

    blocks: (N,) block id per image. Deterministic for a seed.
    """
    codes, _ = _codes(blocks)
    order = np.argsort(codes, kind="stable")
    starts = np.searchsorted(codes[order], np.arange(codes.max() + 1 if len(codes) else 0))
    ends = np.append(starts[1:], len(codes))
    rng = np.random.default_rng(seed)
    n_blocks = len(starts)
    for _ in range(n_resamples):
        pick = rng.integers(0, n_blocks, n_blocks)
        yield np.concatenate([order[starts[b]:ends[b]] for b in pick]) if n_blocks else np.zeros(0, int)


def _codes(blocks):
    blocks = np.asarray(blocks, dtype=object).astype(str)
    uniq, codes = np.unique(blocks, return_inverse=True)
    return codes, uniq


@dataclass(frozen=True)
class Interval:
    """A figure with its block-bootstrap interval: value (on all images), lo, hi."""

    value: float
    lo: float
    hi: float

    def __str__(self) -> str:
        return f"{self.value:.4g} [{self.lo:.4g}, {self.hi:.4g}]"


def block_ci(stat, *arrays, blocks, n_resamples: int = N_RESAMPLES, level: float = LEVEL, seed: int = 0) -> Interval:
    """Interval of ``stat(*arrays)`` (each array (N,), aligned with ``blocks``) by block bootstrap."""
    arrays = [np.asarray(a) for a in arrays]
    value = float(stat(*arrays))
    draws = np.array([stat(*(a[idx] for a in arrays)) for idx in
                      block_resamples(blocks, n_resamples=n_resamples, seed=seed)], float)
    draws = draws[np.isfinite(draws)]
    if not len(draws):
        return Interval(value, np.nan, np.nan)
    a = (1 - level) / 2
    return Interval(value, float(np.quantile(draws, a)), float(np.quantile(draws, 1 - a)))


def paired_median_diff(base_km, other_km, *, blocks, n_resamples: int = N_RESAMPLES, level: float = LEVEL,
                       seed: int = 0) -> Interval:
    """Interval of median(other) - median(base), in km, both on the same resampled images (negative: other is better)."""
    return block_ci(lambda b, o: np.median(o) - np.median(b), base_km, other_km, blocks=blocks,
                    n_resamples=n_resamples, level=level, seed=seed)


def adopt(base_km, other_km, *, blocks, n_resamples: int = N_RESAMPLES, level: float = LEVEL,
          seed: int = 0) -> tuple[bool, Interval]:
    """The rule for every choice made on validation: adopt ``other`` only when its paired interval lies below zero.

    Returns (adopted, interval of median(other) - median(base) in km).
    """
    ci = paired_median_diff(base_km, other_km, blocks=blocks, n_resamples=n_resamples, level=level, seed=seed)
    return bool(np.isfinite(ci.hi) and ci.hi < 0), ci


def choose_simplest(candidates: dict, *, blocks, n_resamples: int = N_RESAMPLES, seed: int = 0):
    """Walk ``candidates`` (name -> per-image val errors, km, simplest first) and keep the current choice
    unless a later one is adopted against it. Returns (name, table rows: name, diff interval, adopted)."""
    names = list(candidates)
    chosen, rows = names[0], []
    for name in names[1:]:
        ok, ci = adopt(candidates[chosen], candidates[name], blocks=blocks, n_resamples=n_resamples, seed=seed)
        rows.append({"option": name, "against": chosen, "val Δ median km": ci.value, "lo": ci.lo, "hi": ci.hi,
                     "adopted": ok})
        if ok:
            chosen = name
    return chosen, rows


def headline_ci(errors_km, province_true, province_pred, blocks, *, n_resamples: int = N_RESAMPLES,
                seed: int = 0) -> dict:
    """The headline figures with 95% block-bootstrap intervals.

    Returns {name: Interval} for median_km, p90_km, acc_25km, acc_200km (shares) and province_acc.
    """
    e = np.asarray(errors_km, float)
    hit = (np.asarray(province_true) == np.asarray(province_pred)).astype(float)
    stats = {"median_km": lambda x, h: np.median(x), "p90_km": lambda x, h: np.quantile(x, 0.9),
             "acc_25km": lambda x, h: np.mean(x <= 25.0), "acc_200km": lambda x, h: np.mean(x <= 200.0),
             "province_acc": lambda x, h: np.mean(h)}
    return {k: block_ci(f, e, hit, blocks=blocks, n_resamples=n_resamples, seed=seed) for k, f in stats.items()}


def calibration_part(table, *, seed: int = 0, frac: float = 0.5):
    """``table`` with the validation rows of a seeded ``frac`` of the validation blocks relabelled 'val_cal'.

    The selection part ('val') makes every choice (phase, refinement, options); the calibration part
    ('val_cal') only fits the temperature and radius scales, so their test coverage is an honest
    estimate. Whole blocks move, as in the split itself.
    """
    out = table.copy()
    val = (out["split"] == "val").to_numpy()
    key = out["block_id"] if "block_id" in out.columns else out["id"]
    blocks = np.sort(key[val].astype(str).unique())
    rng = np.random.default_rng([seed, 7])
    cal = set(rng.permutation(blocks)[: int(round(frac * len(blocks)))])
    out.loc[val & key.astype(str).isin(cal).to_numpy(), "split"] = "val_cal"
    return out


def describe_part(frame) -> str:
    """'N images in B blocks' of a frame (block_id column), for the records that name their data."""
    n_blocks = frame["block_id"].nunique() if "block_id" in frame.columns else len(frame)
    return f"{len(frame)} images in {n_blocks} blocks"
