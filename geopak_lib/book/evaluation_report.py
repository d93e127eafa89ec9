"""What 06_evaluation shows of each step of geopak_lib/analysis/evaluation_steps.Evaluation: tables,
figures and the sentences around them. Each show_* displays one section's results; the numbers
come from the step, never from here."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import Markdown, display

from geopak_lib.analysis import concept_ablation, concepts_eval, frame, regions
from geopak_lib.analysis.evaluation_steps import Evaluation
from geopak_lib.analysis.refinement_fit import summary_text
from geopak_lib.book import demo_views, eval_text, figures, provenance
from geopak_lib.book.report import ShowMap
from geopak_lib.inference.groups import DEFAULT_COMBINE
from geopak_lib.metrics import per_group_summary

MV_COLUMNS = ["n", "median_km", "p90_km", "acc_1km", "acc_5km", "acc_25km", "acc_200km", "acc_750km"]


def _ci(ci, fmt: str = ".1f") -> str:
    return f"**{ci.value:{fmt}}** [{ci.lo:{fmt}}, {ci.hi:{fmt}}]"


def show_run(ev: Evaluation) -> None:
    if ev.note:
        display(Markdown(ev.note))
    display(Markdown("## Run manifest\n\n" + provenance.run_manifest(
        ev.run_dir, ev.run.read_manifest(), ev.checkpoint, ev.predictor.info,
        calibration_note="fitted on the calibration part of validation below, saved beside the checkpoint")))


def show_headline(ev: Evaluation) -> None:
    display(pd.DataFrame([ev.head]).rename(index={0: "GEOPAK mixture"}))
    display(Markdown(eval_text.headline_text(ev.head)))
    display(Markdown(f"95% block-bootstrap intervals (resampling the test split's {ev.test['block_id'].nunique()} "
                     "spatial blocks): " + "; ".join(f"{k} {_ci(v, '.3g')}" for k, v in ev.head_ci.items())))


def show_error_cdf(ev: Evaluation) -> None:
    figures.error_cdf({label: ev.test[f"{key}_error_km"] for key, label in frame.METHODS.items()})
    plt.show()


def show_breakdowns(ev: Evaluation, *, urban_min_population: int, urban_radius_km: float) -> None:
    display(regions.province_table(ev.test))
    display(Markdown(f"Urban: within {urban_radius_km:g} km of a town of {urban_min_population:,}+ people."))
    display(per_group_summary(ev.test, "setting").set_index("setting"))
    figures.confusion_plot(ev.test["province_id"], ev.test["province_pred"])
    plt.show()


def show_concepts(ev: Evaluation, *, n_worst: int) -> None:
    acc = concepts_eval.concept_accuracy(ev.test)
    if not len(acc):
        display(Markdown("This model has no concept heads (`concept_weight = 0` in 03), so there is nothing to show."))
        return
    display(acc)
    disagreement, disagreeing = concepts_eval.concept_disagreements(ev.test, ev.run.read_concepts())
    display(disagreement.set_index("concept"))
    display(disagreeing.head(n_worst))


def show_maps(ev: Evaluation, *, n_worst: int) -> None:
    display(ShowMap(figures.error_map(ev.test)))
    display(ShowMap(figures.worst_map(ev.test, n_worst)))
    display(ShowMap(figures.cell_error_map(ev.test, ev.run.read_geocells())))


def show_refinement(ev: Evaluation) -> None:
    r = ev.refined
    display(r["selection"][["median_km", "p90_km", "acc_25km", "acc_200km"]])
    display(Markdown(summary_text(r)))
    lead = ev.default_ci()
    display(Markdown(f"**What the predictor does by default ({'refined' if r['default'] else 'plain mixture'}) on "
                     f"test:** median {_ci(lead['median_km'])} km, p90 {_ci(lead['p90_km'], '.0f')} km, within 25 km "
                     f"{_ci(lead['acc_25km'], '.1%')} (95% block-bootstrap intervals)."))


def multiview_set(ev: Evaluation, *, n_views: int, max_points: int) -> pd.DataFrame | None:
    """The demo's multi-view set (new crops at validation and test points), or None: fewer than 2
    views, or images that are not the built-in demo (the extra views are cut from its rasters)."""
    manifest = ev.run.read_manifest()
    if n_views < 2 or demo_views.demo_stamp(manifest) is None:
        return None
    return demo_views.build_multiview_set(manifest, ev.run.file("multiview"), n_views=n_views,
                                          max_points=max_points, seed=ev.seed)


def show_methods(ev: Evaluation, members: list[str]) -> None:
    if len(members) > 1:
        display(Markdown("Ensemble members: " + ", ".join(f"`{p}`" for p in members)))
    methods = ev.method_table()
    display(methods)
    display(Markdown(eval_text.hierarchy_text(ev.test, methods.drop(index=list(ev.beyond)))))
    rows = ev.run.read_concept_ablation()  # 03 with concept_ablation = True
    if rows is None:
        display(Markdown("The concept-head ablation was not run for this profile (`concept_ablation` in 03)."))
        return
    display(Markdown("**Concept heads off / on / bottleneck** (phase 1 on the same cached features, same epochs; "
                     "validation decides, test is reported):"))
    display(rows.set_index(["split", "variant"]).drop(columns=["mean_km"]).round(3))
    display(Markdown(concept_ablation.verdict_markdown(rows)))


def show_options(ev: Evaluation, multiview: tuple | None, *, n_views: int) -> None:
    if multiview is None:
        display(Markdown("No multi-view set: `multiview_views` is below 2, or the images are not the built-in demo "
                         "dataset (extra views are cut from the demo's rasters)."))
    else:
        table, combine, rule_rows = multiview
        display(table.set_index(["split", "views", "combine"])[MV_COLUMNS])
        display(Markdown(eval_text.combine_text(combine, rule_rows, n_views=n_views, default=DEFAULT_COMBINE)))
    display(ev.option_table())


def show_calibration(ev: Evaluation, temp: dict, radius: pd.DataFrame, coverage: pd.DataFrame) -> None:
    display(Markdown(f"Fitted on {ev.calibration_data}; no choice above saw these images."))
    figures.reliability_plot(temp["bins_before"], temp["bins_after"], temp["temperature"],
                             (temp["ece_before"], temp["ece_after"]))
    plt.show()
    display(Markdown(eval_text.temperature_text(temp)))
    display(radius)
    if ev.refined.get("default"):
        display(Markdown("Refinement is on by default, so the predictor's radius is the one fitted on refined predictions:"))
    display(coverage)


def show_tta(comparison: pd.DataFrame | None, ev: Evaluation) -> None:
    if comparison is None:
        display(Markdown("TTA is switched off (`tta = False`)."))
        return
    display(comparison)
    display(Markdown(eval_text.tta_text(comparison)))
    display(ev.option_table().tail(1))  # TTA under the same rule as the options above
