"""The sentences of the evaluation report (06_evaluation), computed from its tables, so the
notebook only calls and shows. Every figure quoted is the model's own end-to-end prediction
unless the sentence says it is a diagnostic."""

from __future__ import annotations

import pandas as pd

from geopak_lib.data.places import PLACE_MAX_KM
from geopak_lib.analysis.frame import METHODS
from geopak_lib.metrics import TEMPERATURE_BOUNDS, temperature_at_bound


def headline_text(head: dict) -> str:
    return (f"On **{head['n']} test images** the median error is **{head['median_km']:.1f} km** (mean "
            f"{head['mean_km']:.1f} km, 90th percentile {head['p90_km']:.1f} km); {100 * head['acc_25km']:.1f}% are "
            f"within 25 km and {100 * head['acc_200km']:.1f}% within 200 km. The province is right for "
            f"{100 * head['province_acc']:.1f}% of the images; the true geocell (the nearest cell of the image's own "
            f"province) is the model's first choice for {100 * head['cell_top1_acc']:.1f}% and among its top 5 for "
            f"{100 * head['cell_top5_acc']:.1f}%. Accuracies are fractions of images (0.25 = 25%)."
            + (district_text(head) if "district_acc" in head else ""))


def district_text(head: dict) -> str:
    """The district sentence (keys of evaluation.district_accuracy)."""
    k = int(head["district_excluded"])
    left_out = (f" ({k} image{'s' * (k != 1)} whose true point has no district, lying outside Pakistan or more "
                f"than {PLACE_MAX_KM:g} km from any GeoNames place, {'is' if k == 1 else 'are'} left out)" if k else "")
    if not head["district_n"]:
        return f" No test image has a district to compare{left_out}."
    return (f" The predicted point lies in the true point's **district** for {100 * head['district_acc']:.1f}% of "
            f"{int(head['district_n'])} images{left_out}; districts are named by their nearest headquarters town "
            "(docs/decisions/places.md).")


def hierarchy_text(test: pd.DataFrame, ablations: pd.DataFrame) -> str:
    """Does the spec's claim that the hierarchy beats regression hold on this test split?"""
    mix, aux = test["mixture_error_km"].median(), test["aux_error_km"].median()
    held = "holds" if mix < aux else "does **not** hold"
    rank = list(ablations.index).index(METHODS["mixture"]) + 1
    return (f"The spec's claim that *hierarchy beats regression* **{held}** here: the hierarchical mixture's median "
            f"error is {mix:.1f} km against {aux:.1f} km for the regression head on the same features. (The "
            "regression head is trained with a small weight, so this compares the designs as the spec trains them, "
            f"not two equally tuned models.) Against everything in the table, the mixture ranks **{rank} of "
            f"{len(ablations)}** by median error.")


def temperature_text(temp: dict) -> str:
    edge = (f" T reached the edge of its search range ({TEMPERATURE_BOUNDS[0]:g}-{TEMPERATURE_BOUNDS[1]:g}): the "
            "head's logits carry almost no information about which province is right."
            if temperature_at_bound(temp["temperature"]) else "")
    return (f"T = **{temp['temperature']:.3f}**; test ECE {temp['ece_before']:.3f} → **{temp['ece_after']:.3f}**, "
            f"test NLL {temp['nll_before']:.3f} → {temp['nll_after']:.3f}.{edge}")


def tta_text(comparison: pd.DataFrame) -> str:
    gain = comparison["median_km"].iloc[0] - comparison["median_km"].iloc[1]  # > 0: TTA is better
    return (f"TTA {'helps' if gain > 0 else 'does not help'} here: the median error moves by {-gain:+.1f} km. "
            "The predictor (`--tta`) uses a calibration fitted on TTA outputs; with refinement on too, it "
            "reports the radius uncalibrated (no refined + TTA calibration is fitted).")


def combine_text(chosen: str, rows: list[dict], *, n_views: int, default: str) -> str:
    """The sentence under 06's multi-view table: the combine rule the adoption rule keeps, each
    alternative's paired validation interval against it, and whether the predictor's default agrees."""
    steps = "; ".join(f"{r['option']} vs {r['against']}: {r['val Δ median km']:+.1f} km [{r['lo']:+.1f}, "
                      f"{r['hi']:+.1f}] {'adopted' if r['adopted'] else 'not adopted'}" for r in rows)
    agree = ("the same" if chosen == default
             else f"**not** the rule's choice: predict with `--combine {chosen}` on this model")
    return (f"Combining rule at {n_views} views, by the adoption rule (paired 95% validation interval of the "
            f"median difference, the predictor's default first): **{chosen}** ({steps or 'no alternative'}). "
            f"The predictor's default: **{default}**, {agree}.")
