"""The concept-head ablation (issue 15): phase 1 trained with the concept heads off, on, and as a
bottleneck, on the same cached features, phase-0 start, PhaseConfig (epochs, steps, seed) and
splits; every variant evaluated end to end on validation and test. The variant 03 trained as its
main run is reused, not trained again. Validation decides the default; test is reported only.

Each extra variant trains into ``run_dir/ablations/concepts_<variant>/checkpoints/phase1/`` and
the table is ``run_dir/concept_ablation.csv``. Decisions and measured figures: docs/decisions/concepts.md.
"""

from __future__ import annotations

import time

import pandas as pd

from geopak_lib.data.rundir import RunDir
from geopak_lib.evaluation.concepts_eval import concept_accuracy
from geopak_lib.evaluation.frame import headline, split_frame
from geopak_lib.training.inputs import load_phase_inputs, make_loss
from geopak_lib.training.trainer import train_phase

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


def evaluate_variant(variant: str, model, data, weight: float, device, batch_size: int = 256,
                     seconds: float = float("nan")) -> list[dict]:
    """Val and test rows of one trained variant (end-to-end mixture, heads on the cached features)."""
    rows = []
    for split in ("val", "test"):
        frame = split_frame(model, data, split, "cache", batch_size, device)
        h = headline(frame)
        acc = concept_accuracy(frame)
        rows.append({"variant": variant, "concept_weight": weight if variant != "off" else 0.0,
                     "split": split, "n": h["n"], "median_km": h["median_km"], "mean_km": h["mean_km"],
                     "p90_km": h["p90_km"], "acc_25km": h["acc_25km"], "acc_200km": h["acc_200km"],
                     "province_acc": h["province_acc"],
                     **{f"{c}_acc": acc.loc["all", f"{c}_acc"] for c in ("climate", "land_cover")
                        if f"{c}_acc" in acc}, "train_seconds": seconds})
    return rows


def concept_ablation(run_dir, phase, cache, weight: float, main_variant: str, main_model, data, device="cpu",
                     beta: float = 0.9995, params: dict | None = None, main_seconds: float = float("nan"),
                     progress: bool = False) -> pd.DataFrame:
    """Train the variants other than ``main_variant`` (whose trained model is ``main_model``, on
    ``data``, in ``main_seconds``) with the same ``phase`` (a PhaseConfig) and feature ``cache``
    settings, evaluate all three, write concept_ablation.csv and return it (rows variant x split;
    validation decides, test is reported)."""
    run = RunDir(run_dir)
    rows = evaluate_variant(main_variant, main_model, data, weight, device, phase.eval_batch_size, main_seconds)
    for variant in VARIANTS:
        if variant == main_variant:
            continue
        w, neck = variant_settings(variant, weight)
        inputs = load_phase_inputs(run_dir, 1, cache, device, False, concept_weight=w, concept_bottleneck=neck)
        loss_fn = make_loss(inputs.model, inputs.data, beta=beta, top_provinces=phase.top_provinces,
                            top_cells=phase.top_cells)
        t0 = time.time()
        train_phase(phase, inputs.model, inputs.data, run.path / "ablations" / f"concepts_{variant}", loss_fn=loss_fn,
                    resume=False, progress=progress, device=device, start=inputs.start, params=params,
                    save_epochs=False)
        rows += evaluate_variant(variant, inputs.model, inputs.data, w, device, phase.eval_batch_size,
                                 round(time.time() - t0, 1))
    table = pd.DataFrame(rows)
    table["variant"] = pd.Categorical(table["variant"], VARIANTS, ordered=True)
    table = table.sort_values(["split", "variant"], ascending=[False, True], kind="stable").reset_index(drop=True)
    table["variant"] = table["variant"].astype(str)
    run.write_table("concept_ablation.csv", table)
    return table


def best_on_validation(table: pd.DataFrame) -> str:
    """The variant with the lowest validation median error (the default the book should use)."""
    val = table[table["split"] == "val"]
    return str(val.loc[val["median_km"].idxmin(), "variant"])
