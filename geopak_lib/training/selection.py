"""Which epoch, and which phase, is kept: the one rule for the best epoch of a phase and for the
final model of a run. Every choice is made on validation, never on test.

- Best epoch of a phase (:func:`selection_score`): phase 0 by balanced province accuracy, later
  phases by the end-to-end validation median error of the mixture. Epoch 0 (the weights the
  phase started from) is a candidate, so a phase never returns something worse than its start.
- Final model of a run (:func:`select_final_checkpoint`): the simplest phase that no later phase
  beats beyond the noise. Phase 1 is the start; a later phase is adopted only when the paired
  block-bootstrap interval of its validation median difference against the current choice lies
  below zero (``bootstrap.adopt``, the rule every choice on validation follows), using the
  per-image validation errors each phase writes beside its best.pt. Without them (a run made
  before they existed) the lowest validation median wins, and the reason says so. A phase whose best epoch is
  0 kept the weights it started from, so it is not a candidate of its own (its val figure differs
  from the previous phase's only by float16 cache rounding). Phase 0 only when no later phase has
  run (its location heads are untrained).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from geopak_lib.data.rundir import RunDir

PHASE_NAMES = {0: "phase 0 (province warm-up)", 1: "phase 1 (geography)", 2: "phase 2 (adaptation)",
               3: "phase 3 (fine-tune)"}
TRAINING_NOTEBOOKS = "02_phase0_province ... 05_phase3_finetune"


def selection_score(phase: int, metrics: dict) -> float:
    """Lower is better. Phase 0: -balanced province accuracy; later: val median error of the mixture."""
    v = -metrics["balanced_acc"] if phase == 0 else metrics["median_error_km"]
    return float("inf") if v is None or not np.isfinite(v) else float(v)


def phase_start_check(previous_phase: int, previous: dict, start_row: dict, rel: float = 0.01) -> tuple[bool, str]:
    """Does a phase's epoch 0 reproduce the validation figure of the checkpoint it started from?
    The figure is the one that phase was selected on: province accuracy after phase 0, the median
    error after phases 1-3. Within ``rel`` (1%): the cache stores float16 features, the image path
    recomputes them, so the two differ at rounding level and no more."""
    key = "province_acc" if previous_phase == 0 else "median_error_km"
    want, got = float(previous.get(key, np.nan)), float(start_row.get(key, np.nan))
    ok = bool(np.isfinite(want) and np.isfinite(got) and abs(got - want) <= rel * max(abs(want), 1e-9))
    verdict = "reproduces" if ok else "does NOT reproduce"
    return ok, (f"phase-start check: epoch 0 {verdict} phase {previous_phase}'s best validation {key} "
                f"({got:.4g} vs {want:.4g}, tolerance {100 * rel:g}%)")


def best_val_row(phase: int, losses: pd.DataFrame) -> pd.Series | None:
    """The validation row of losses.csv that selection_score ranks first (earliest on a tie)."""
    val = losses[losses["split"] == "val"]
    if not len(val):
        return None
    scores = [selection_score(phase, r) for r in val.to_dict("records")]
    return val.iloc[int(np.argmin(scores))]


def phase_summary(run_dir) -> pd.DataFrame:
    """One row per phase that has run: validation figures at its start (epoch 0, before any step)
    and at its best epoch, so a reader sees what the phase added."""
    run, rows = RunDir(run_dir), []
    for phase in range(4):
        losses = run.losses(phase)
        best = best_val_row(phase, losses) if losses is not None else None
        if best is None:
            continue
        val = losses[losses["split"] == "val"]
        start = val[val["epoch"] == 0]
        s = start.iloc[0] if len(start) else pd.Series(dtype=float)
        rows.append({"phase": PHASE_NAMES[phase], "best epoch": int(best["epoch"]),
                     "start val median km": s.get("median_error_km", np.nan),
                     "val median km": best["median_error_km"], "val p90 km": best["p90_error_km"],
                     "start val province acc": s.get("province_acc", np.nan),
                     "val province acc": best["province_acc"], "val balanced acc": best["balanced_acc"],
                     "val median km, true cell (diagnostic)": best["true_cell_median_km"],
                     "mean α": best["alpha_mean"]})
    return pd.DataFrame(rows)


@dataclass
class FinalChoice:
    """The final model: its checkpoint, phase, validation median and why it was chosen."""

    checkpoint: Path
    phase: int
    val_median_km: float
    reason: str


def select_final_checkpoint(run_dir) -> FinalChoice:
    """The final model of a run (see the module docstring for the rule)."""
    run = RunDir(run_dir).require()  # no run at all: one line naming the command that makes one
    found, kept_start = {}, []
    for phase in range(4):
        losses, ckpt = run.losses(phase), run.best_checkpoint(phase)
        best = best_val_row(phase, losses) if losses is not None and ckpt.is_file() else None
        if best is None:
            continue
        if phase >= 1 and int(best["epoch"]) == 0 and found:
            kept_start.append(phase)  # its best.pt holds the previous phase's weights: it added nothing
            continue
        found[phase] = float(best["median_error_km"])
    later = {p: km for p, km in found.items() if p >= 1 and np.isfinite(km)}
    if later:
        phase, rule = _apply_rule(run, later)
        others = ", ".join(f"phase {p} {km:.1f} km" for p, km in sorted(later.items()) if p != phase)
        reason = (f"{rule} ({later[phase]:.1f} km" + (f"; {others})" if others else ")")
                  + "".join(f"; phase {p} kept the weights it started from" for p in kept_start))
        return FinalChoice(run.best_checkpoint(phase), phase, later[phase], reason)
    if 0 in found:
        return FinalChoice(run.best_checkpoint(0), 0, found[0],
                           "only phase 0 has run: its location heads are untrained")
    raise FileNotFoundError(f"no trained model in {run.path}: no checkpoints/phase*/best.pt with its losses.csv; "
                            f"run the training notebooks {TRAINING_NOTEBOOKS}")


def _apply_rule(run: RunDir, later: dict) -> tuple[int, str]:
    """(phase, why) among ``later`` {phase: val median}: the adoption rule on per-image val errors when
    every candidate has them, else the lowest median (earlier phase on a tie)."""
    from geopak_lib.bootstrap import choose_simplest

    errors = {}
    for p in sorted(later):
        path = run.best_checkpoint(p).parent / "val_errors.csv"
        if not path.is_file():
            break
        errors[p] = pd.read_csv(path, dtype={"id": str}).set_index("id")["error_km"]
    if len(errors) == len(later) and len({tuple(sorted(e.index)) for e in errors.values()}) == 1:
        ids = sorted(next(iter(errors.values())).index)
        blocks = run.read_manifest().set_index("id")["block_id"].reindex(ids).fillna("?").to_numpy()
        chosen, rows = choose_simplest({p: errors[p].reindex(ids).to_numpy() for p in errors}, blocks=blocks)
        steps = "; ".join(f"phase {r['option']} vs {r['against']}: Δ {r['val Δ median km']:+.1f} km "
                          f"[{r['lo']:+.1f}, {r['hi']:+.1f}] {'adopted' if r['adopted'] else 'not adopted'}"
                          for r in rows)
        return int(chosen), ("the simplest phase no later phase beats beyond the noise (paired 95% block-bootstrap "
                             f"interval of the validation median below zero{'; ' + steps if steps else ''})")
    phase = min(later, key=lambda p: (later[p], p))
    return phase, "lowest validation median error among phases 1-3 (no per-image validation errors to apply the rule)"
