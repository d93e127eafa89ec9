"""The concept-head ablation: phase 1 trained with the concept heads off, on, and as a
bottleneck, on the same cached features, phase-0 start, PhaseConfig (epochs, steps, seed) and
splits; every variant evaluated end to end on validation and test. The variant 03 trained as its
main run is reused, not trained again. Validation decides by the book's one adoption rule
(bootstrap.choose_simplest, simplest first: off, on, bottleneck): a variant replaces the simpler
choice only when its paired 95% block-bootstrap interval of the validation median difference lies
below zero. Test is reported only.

Each extra variant trains into ``run_dir/ablations/concepts_<variant>/checkpoints/phase1/`` and
the table is ``run_dir/concept_ablation.csv``. Decisions and measured figures: docs/decisions/concepts.md.
"""

from __future__ import annotations

import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from geopak_lib import bootstrap
from geopak_lib.data.rundir import RunDir
from geopak_lib.analysis.concepts_eval import concept_accuracy
from geopak_lib.analysis.frame import headline, split_frame
from geopak_lib.training.cache import CacheSettings
from geopak_lib.training.checkpoints import load_checkpoint
from geopak_lib.training.config import PhaseConfig
from geopak_lib.training.inputs import load_phase_inputs, make_loss
from geopak_lib.training.trainer import train_phase
from geopak_lib.utils import pick_device, quiet_rebuild, seed_everything

VARIANTS = ("off", "on", "bottleneck")
DEFAULT_WEIGHT = 0.1  # the on/bottleneck weight when the main run has the heads off


def variant_settings(variant: str, weight: float) -> tuple[float, bool]:
    """(concept_weight, concept_bottleneck) of a variant; ``weight`` is the on/bottleneck weight."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown concept ablation variant {variant!r}; known: {VARIANTS}")
    if weight <= 0 and variant != "off":
        raise ValueError("the 'on' and 'bottleneck' variants need a concept weight > 0")
    return (0.0, False) if variant == "off" else (float(weight), variant == "bottleneck")


def variant_of(concept_weight: float, concept_bottleneck: bool) -> str:
    return "off" if concept_weight <= 0 else ("bottleneck" if concept_bottleneck else "on")


def evaluate_variant(variant: str, model, data, weight: float, *, device, batch_size: int = 256,
                     seconds: float = float("nan"), val_errors: dict | None = None) -> list[dict]:
    """Val and test rows of one trained variant (end-to-end mixture, heads on the cached features).
    val_errors, when given, receives {variant: validation frame (id, block_id, error_km)} for the rule."""
    rows = []
    for split in ("val", "test"):
        frame = split_frame(model, data, split, source="cache", batch_size=batch_size, device=device)
        if split == "val" and val_errors is not None:
            val_errors[variant] = frame
        h = headline(frame)
        acc = concept_accuracy(frame)
        rows.append({"variant": variant, "concept_weight": weight if variant != "off" else 0.0,
                     "split": split, "n": h["n"], "median_km": h["median_km"], "mean_km": h["mean_km"],
                     "p90_km": h["p90_km"], "acc_25km": h["acc_25km"], "acc_200km": h["acc_200km"],
                     "province_acc": h["province_acc"],
                     **{f"{c}_acc": acc.loc["all", f"{c}_acc"] for c in ("climate", "land_cover")
                        if f"{c}_acc" in acc}, "train_seconds": seconds})
    return rows


def train_variant(run_dir, variant: str, weight: float, phase: dict, *, cache: dict | None, device="cpu",
                  beta: float = 0.9995, params: dict | None = None, threads: int = 0,
                  progress: bool = False) -> float:
    """Train one variant's phase 1 into ``run_dir/ablations/concepts_<variant>/`` from phase 0's
    best.pt (phase: PhaseConfig fields, cache: CacheSettings fields, so a worker process can take
    them). Seeded with the phase's seed first, so the new heads' initial weights do not depend on
    what ran before or in which process. threads > 0 sets torch's thread count. -> seconds."""
    if threads > 0:
        torch.set_num_threads(threads)
    cfg = PhaseConfig(**phase)
    seed_everything(cfg.seed)
    w, neck = variant_settings(variant, weight)
    with quiet_rebuild():
        inputs = load_phase_inputs(run_dir, 1, cache=CacheSettings(**cache) if cache else None, device=device,
                                   progress=False,
                                   concept_weight=w, concept_bottleneck=neck)
    loss_fn = make_loss(inputs.model, inputs.data, beta=beta, top_provinces=cfg.top_provinces,
                        top_cells=cfg.top_cells)
    t0 = time.time()
    train_phase(cfg, inputs.model, inputs.data, variant_dir(run_dir, variant), loss_fn=loss_fn, resume=False,
                progress=progress, device=device, start=inputs.start, params=params, save_epochs=False)
    return round(time.time() - t0, 1)


def variant_dir(run_dir, variant: str) -> Path:
    return RunDir(run_dir).path / "ablations" / f"concepts_{variant}"


def load_variant(run_dir, variant: str, weight: float, cache: CacheSettings | None, *, device="cpu"):
    """(model, data) of a trained variant: its best.pt on the phase-1 inputs."""
    w, neck = variant_settings(variant, weight)
    with quiet_rebuild():
        inputs = load_phase_inputs(run_dir, 1, cache=cache, device=device, progress=False, concept_weight=w,
                                   concept_bottleneck=neck)
    best = load_checkpoint(RunDir(variant_dir(run_dir, variant)).best_checkpoint(1))
    inputs.model.load_state_dict(best["model_state"])
    return inputs.model, inputs.data


def concept_ablation(run_dir, phase, cache, weight: float, *, main_variant: str, main_model, data, device="cpu",
                     beta: float = 0.9995, params: dict | None = None, main_seconds: float = float("nan"),
                     progress: bool = False, workers: int | None = None) -> pd.DataFrame:
    """Train the variants other than ``main_variant`` (whose trained model is ``main_model``, on
    ``data``, in ``main_seconds``) with the same ``phase`` (a PhaseConfig) and feature ``cache``
    settings, evaluate all three, write concept_ablation.csv and return it (rows variant x split;
    validation decides, test is reported).

    workers: processes that train the two variants side by side, each with an equal share of
    torch's threads (default: 2 on a CPU with 2+ threads, else 1 = in this process, one after the
    other). The phase-1 step is small and mostly per-op overhead, so two 1-thread processes finish
    both variants ~30% sooner than one 2-thread process after the other (docs/decisions/concepts.md).
    Results are the same either way up to float rounding (the thread count changes the order of sums)."""
    val_frames: dict = {}
    rows = evaluate_variant(main_variant, main_model, data, weight, device=device, batch_size=phase.eval_batch_size,
                            seconds=main_seconds,
                            val_errors=val_frames)
    others = [v for v in VARIANTS if v != main_variant]
    threads = torch.get_num_threads()
    if workers is None:
        workers = 2 if pick_device(device).type == "cpu" and threads >= 2 else 1
    kwargs = dict(phase=asdict(phase), cache=asdict(cache) if cache is not None else None, device=str(device),
                  beta=beta, params=params)
    if workers > 1:
        share = max(1, threads // min(workers, len(others)))
        with ProcessPoolExecutor(min(workers, len(others)), mp_context=multiprocessing.get_context("spawn")) as pool:
            jobs = {v: pool.submit(train_variant, str(run_dir), v, weight, threads=share, **kwargs) for v in others}
            seconds = {v: job.result() for v, job in jobs.items()}
    else:
        seconds = {v: train_variant(run_dir, v, weight, threads=0, progress=progress, **kwargs) for v in others}
    for variant in others:
        model, variant_data = load_variant(run_dir, variant, weight, cache, device=device)
        rows += evaluate_variant(variant, model, variant_data, variant_settings(variant, weight)[0], device=device,
                                 batch_size=phase.eval_batch_size, seconds=seconds[variant], val_errors=val_frames)
    table = with_rule(pd.DataFrame(rows), val_frames, seed=phase.seed)
    table["this_run"] = table["variant"] == main_variant  # the variant the run's model carries on with
    table["variant"] = pd.Categorical(table["variant"], VARIANTS, ordered=True)
    table = table.sort_values(["split", "variant"], ascending=[False, True], kind="stable").reset_index(drop=True)
    table["variant"] = table["variant"].astype(str)
    RunDir(run_dir).write_table("concept_ablation.csv", table)
    return table


RULE_COLUMNS = ("val_diff_km", "val_diff_lo", "val_diff_hi", "against", "adopted", "chosen")


def with_rule(table: pd.DataFrame, val_frames: dict, seed: int = 0) -> pd.DataFrame:
    """``table`` with the adoption rule's columns on its validation rows: each variant's paired interval
    (median km, variant minus the choice it was weighed against), whether it was adopted, and the
    variant the rule keeps (``chosen``). Variants are weighed simplest first (VARIANTS order), all on
    the same validation images, resampling their spatial blocks."""
    names = [v for v in VARIANTS if v in val_frames]
    base = val_frames[names[0]]
    candidates = {v: val_frames[v].set_index("id").loc[base["id"], "error_km"].to_numpy() for v in names}
    blocks = base["block_id"] if "block_id" in base else base["id"]  # no blocks: each image its own
    chosen, steps = bootstrap.choose_simplest(candidates, blocks=blocks.to_numpy(), seed=seed)
    table = table.copy()
    for c in RULE_COLUMNS:
        table[c] = np.nan if c.startswith("val_diff") else None
    for step in steps:
        at = (table["split"] == "val") & (table["variant"] == step["option"])
        table.loc[at, ["val_diff_km", "val_diff_lo", "val_diff_hi", "against", "adopted"]] = \
            [step["val Δ median km"], step["lo"], step["hi"], step["against"], step["adopted"]]
    table.loc[table["split"] == "val", "chosen"] = table.loc[table["split"] == "val", "variant"] == chosen
    return table


def rule_choice(table: pd.DataFrame) -> str | None:
    """The variant the adoption rule kept (None for a table written before the rule)."""
    if "chosen" not in table:
        return None
    kept = table.loc[(table["split"] == "val") & (table["chosen"].astype(str) == "True"), "variant"]
    return str(kept.iloc[0]) if len(kept) else None


def verdict_markdown(table: pd.DataFrame) -> str:
    """One line under the table: the variant the adoption rule keeps, with each step's paired interval,
    and the variant this run's model carries."""
    used = table.loc[table["this_run"].astype(bool), "variant"] if "this_run" in table else table["variant"][:0]
    used = str(used.iloc[0]) if len(used) else "unknown"
    chosen = rule_choice(table)
    if chosen is None:
        return (f"Lowest validation median in this table: **{best_on_validation(table)}**; this run's model: "
                f"**{used}** (a table from before the adoption rule: no paired intervals).")
    val = table[(table["split"] == "val") & table["adopted"].notna()]
    steps = "; ".join(f"{r.variant} vs {r.against}: {float(r.val_diff_km):+.1f} km "
                      f"[{float(r.val_diff_lo):+.1f}, {float(r.val_diff_hi):+.1f}]"
                      f"{' adopted' if str(r.adopted) == 'True' else ' not adopted'}" for r in val.itertuples())
    agree = "the same" if chosen == used else f"**not** the rule's choice: set 03's concept settings to **{chosen}**"
    return (f"The adoption rule keeps **{chosen}** (paired 95% validation intervals of the median difference, "
            f"simplest first: {steps}). This run's model: **{used}**, {agree}.")


def best_on_validation(table: pd.DataFrame) -> str:
    """The variant with the lowest validation median error (the default the book should use)."""
    val = table[table["split"] == "val"]
    return str(val.loc[val["median_km"].idxmin(), "variant"])
