"""06_evaluation's steps as calls named for what they do: open the run and its final checkpoint,
predict every split end to end, the headline with its intervals, fit refinement (its gallery and
record saved beside the checkpoint), the options beyond the spec under the one adoption rule,
and the calibration (fitted on the calibration part of validation, saved for the predictor).

``Evaluation`` keeps what one step leaves for the next; the notebook shows what each returns
(geopak_lib/book/evaluation_report.py draws and words it). Test is measured, never used to choose."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from geopak_lib import bootstrap
from geopak_lib.analysis import ensemble_study, frame, multiview, refinement_fit, regions
from geopak_lib.analysis.calibration_fit import fit_calibration, province_coverage
from geopak_lib.analysis.prediction_files import save_test_predictions
from geopak_lib.data.rundir import RunDir
from geopak_lib.inference.calibration import save_calibration, save_evaluation_summary
from geopak_lib.inference.groups import DEFAULT_COMBINE
from geopak_lib.inference.predictor import GeopakPredictor
from geopak_lib.inference.refinement import REFINED_METHOD
from geopak_lib.metrics import summarize_errors
from geopak_lib.training.inputs import load_data
from geopak_lib.training.selection import select_final_checkpoint

NO_CALIBRATION_PART = ("**Note:** this run's split has no calibration part, so one is set aside here; training chose "
                       "its epochs on all of validation, so the calibration's test coverage may be optimistic.")


def _ci_lists(cis: dict) -> dict:
    return {k: [v.value, v.lo, v.hi] for k, v in cis.items()}


@dataclass
class Evaluation:
    """One evaluation of a run's checkpoint; the steps below fill it in, in the notebook's order."""

    run_dir: str
    checkpoint: Path
    predictor: GeopakPredictor
    table: pd.DataFrame
    seed: int = 0
    device: str = "cpu"
    note: str = ""  # said once under the run manifest (a split with no calibration part)
    batch_size: int = 64
    num_workers: int = 0
    frames: dict = field(default_factory=dict)  # val (the selection part), val_cal, test
    outputs: dict = field(default_factory=dict)  # the model's outputs of the plain pass, per split
    head: dict = field(default_factory=dict)
    head_ci: dict = field(default_factory=dict)
    refined: dict = field(default_factory=dict)
    options: list = field(default_factory=list)  # rows of multiview.OPTION_COLUMNS
    beyond: dict = field(default_factory=dict)  # {row name: per-image test errors} for the method table
    calibration: dict = field(default_factory=dict)

    @classmethod
    def open(cls, run_dir, *, checkpoint="", seed: int = 0, device="cpu", top_provinces: int = 2,
             top_cells: int = 5) -> "Evaluation":
        """The run's table (with a calibration part set aside when its split predates one) and the
        final checkpoint (``checkpoint`` overrides it) as a predictor with no calibration and no refinement."""
        table, note = load_data(run_dir).table, ""
        if not (table["split"] == "val_cal").any():
            table, note = bootstrap.calibration_part(table, seed=seed), NO_CALIBRATION_PART
        path = Path(checkpoint) if checkpoint else select_final_checkpoint(run_dir).checkpoint
        predictor = GeopakPredictor.from_checkpoint(path, device=device, calibration=None, refine=False,
                                                    top_provinces=top_provinces, top_cells=top_cells)
        return cls(str(run_dir), path, predictor, table, seed=seed, device=device, note=note)

    @property
    def run(self) -> RunDir:
        return RunDir(self.run_dir)

    @property
    def test(self) -> pd.DataFrame:
        return self.frames["test"]

    @property
    def val(self) -> pd.DataFrame:
        return self.frames["val"]

    def predict_splits(self, *, batch_size: int = 64, num_workers: int = 0,
                       urban_min_population: int = regions.URBAN_MIN_POPULATION,
                       urban_radius_km: float = regions.URBAN_RADIUS_KM) -> pd.DataFrame:
        """Every validation and test image end to end (the mixture); test gets its urban/rural setting. -> test."""
        self.batch_size, self.num_workers = batch_size, num_workers
        self.frames, self.outputs = refinement_fit.frames_with_outputs(
            self.predictor, self.table, splits=("val", "val_cal", "test"), batch_size=batch_size,
            num_workers=num_workers)
        t = self.frames["test"]
        self.frames["test"] = t.join(regions.urban_rural(t["latitude"], t["longitude"], urban_min_population,
                                                         urban_radius_km))
        return self.test

    def headline(self) -> dict:
        """The test headline (median, p90, accuracies, province and district accuracy) and its 95%
        block-bootstrap intervals (self.head_ci)."""
        t = self.test
        self.head = {**frame.headline(t), **regions.district_accuracy(t)}
        self.head_ci = bootstrap.headline_ci(t["error_km"], t["province_id"], t["province_pred"], t["block_id"],
                                             seed=self.seed)
        return self.head

    def fit_refinement(self) -> dict:
        """Refinement's settings chosen on the selection part, adopted by the rule, saved beside the
        checkpoint (refinement_fit.fit_refinement); the frames gain refined_* columns. Then the test
        predictions (for 08) and the evaluation summary (for the model card) are saved."""
        r = refinement_fit.fit_refinement(self.predictor, self.table, self.outputs, self.val, test=self.test,
                                          checkpoint=self.checkpoint, batch_size=self.batch_size,
                                          num_workers=self.num_workers, also={"val_cal": self.frames["val_cal"]})
        self.frames.update({s: r[s] for s in ("val", "val_cal", "test")})
        t = self.test
        r["ci"] = bootstrap.headline_ci(t["refined_error_km"], t["province_id"], t["province_pred"], t["block_id"],
                                        seed=self.seed)
        self.refined = r
        save_test_predictions(self.run_dir, t, self.checkpoint)
        save_evaluation_summary(self.checkpoint, self.head, regions.province_table(t),
                                {"refined": {"default": r["default"], **summarize_errors(t["refined_error_km"])},
                                 "headline_ci95": _ci_lists(self.head_ci), "refined_ci95": _ci_lists(r["ci"])})
        self._option("refinement inside the cells", self.val["error_km"], self.val["refined_error_km"],
                     self.test["refined_error_km"],
                     how="on by default" if r["default"] else "off by default (--refine on)")
        return r

    def default_ci(self) -> dict:
        """The intervals of what the predictor does by default (refined when refinement was adopted)."""
        return self.refined["ci"] if self.refined.get("default") else self.head_ci

    def _option(self, name, val_without, val_with, test_with, *, how, val_blocks=None, test_without=None):
        self.options.append(multiview.option_row(
            name, val_without, val_with, self.test["error_km"] if test_without is None else test_without,
            test_with=test_with, how=how, val_blocks=self.val["block_id"] if val_blocks is None else val_blocks))

    def ensemble(self, *, phases, size: int) -> list[str]:
        """The final checkpoint with one of each phase in ``phases`` (at most ``size`` in all), as a
        method row and an option row. -> the members' paths ([] or one: no ensemble to make)."""
        p = self.predictor
        ens, paths = ensemble_study.run_ensemble(self.run_dir, self.checkpoint, phases, size, device=self.device,
                                                 top_provinces=p.top_provinces, top_cells=p.top_cells)
        if ens is None:
            return paths
        f = ensemble_study.ensemble_frames(ens, self.table, known=self.outputs, batch_size=self.batch_size,
                                           num_workers=self.num_workers)
        self.beyond[f"ensemble of {len(paths)} checkpoints ({ens.info['ensemble']} geocells)"] = f["test"]["error_km"]
        self._option(f"ensemble of {len(paths)} checkpoints", self.val["error_km"], f["val"]["error_km"],
                     f["test"]["error_km"], how="only when --checkpoint is repeated (a model is one checkpoint)")
        return paths

    def multiview(self, views: pd.DataFrame, *, n_views: int) -> tuple[pd.DataFrame, str, list[dict]]:
        """Several photos of one place (``views``: demo_views.build_multiview_set's table): 1, 2 and
        n_views per place both ways; the way the adoption rule keeps at n_views (the predictor's
        default unless the other is adopted against it), as method and option rows.
        -> (the measurements, the chosen way, the rule's rows)."""
        model, p = self.predictor.model, self.predictor
        feats = multiview.view_features(p, views["image_path"], self.batch_size)
        table = multiview.multiview_table(model, *feats, views, n_views=(1, 2, n_views),
                                          top_provinces=p.top_provinces, top_cells=p.top_cells)
        errs = {c: multiview.multiview_errors(model, *feats, views, n_views=n_views, combine=c,
                                              top_provinces=p.top_provinces, top_cells=p.top_cells)
                for c in multiview.COMBINE}
        # one view is the same whichever way views are combined: measured once
        single = multiview.multiview_errors(model, *feats, views, n_views=1, combine=DEFAULT_COMBINE,
                                            top_provinces=p.top_provinces, top_cells=p.top_cells)
        val = single["split"] == "val"  # every frame has the places in the same order
        blocks = single[val]["group"].map(self.table.set_index("id")["block_id"])
        combine, rule_rows = multiview.rule_combine({c: e[val]["error_km"] for c, e in errs.items()}, blocks)
        m = {(k, s): e[e["split"] == s]["error_km"] for k, e in ((1, single), (n_views, errs[combine]))
             for s in ("val", "test")}
        self.beyond[f"multi-view set ({len(m[1, 'test'])} test places): 1 view"] = m[1, "test"]
        self.beyond[f"multi-view set: {n_views} views per place ({combine})"] = m[n_views, "test"]
        self._option(f"several photos of one place ({n_views} views, {combine})", m[1, "val"], m[n_views, "val"],
                     m[n_views, "test"], how=f"with --group-by / predict_group (combine: {DEFAULT_COMBINE})",
                     val_blocks=blocks, test_without=m[1, "test"])
        return table, combine, rule_rows

    def option_table(self) -> pd.DataFrame:
        return pd.DataFrame(self.options, columns=multiview.OPTION_COLUMNS).set_index("option")

    def method_table(self) -> pd.DataFrame:
        """Every method on the same test images (with median intervals), the rows beyond the spec, the baselines."""
        return frame.method_table(self.test, {**frame.METHODS, **REFINED_METHOD}, extra=self.beyond,
                                  baselines=self.run.read_baselines(per_image=True), seed=self.seed)

    @property
    def calibration_data(self) -> str:
        return (f"val_cal: the calibration part of validation ({bootstrap.describe_part(self.frames['val_cal'])}), "
                "disjoint from the selection part")

    def fit_calibration(self) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
        """Temperature and radius scales on the calibration part, for the plain and the refined
        predictions. -> (temperature fit, radius coverage on test, per-province coverage of the
        predictor's default)."""
        fit = {"fitted_on": self.calibration_data}
        self.calibration, temp, radius = fit_calibration(self.frames["val_cal"], self.test, **fit)
        refined = {s: refinement_fit.as_refined(self.frames[s]) for s in ("val_cal", "test")}
        self.calibration["refined"] = fit_calibration(refined["val_cal"], refined["test"], **fit)[0]
        on = bool(self.refined.get("default"))
        coverage = province_coverage(refined["test"] if on else self.test,
                                     self.calibration["refined"] if on else self.calibration)
        return temp, radius, coverage

    def tta(self) -> pd.DataFrame:
        """Test-time augmentation under the same rule (an option row) with its own calibration. -> the comparison."""
        f = frame.predictor_frames(self.predictor, self.table, splits=("val", "val_cal", "test"), tta=True,
                                   batch_size=self.batch_size, num_workers=self.num_workers, plain=self.outputs)
        self._option("test-time augmentation (5 views)", self.val["error_km"], f["val"]["error_km"],
                     f["test"]["error_km"], how="off unless asked (geopak predict --tta)")
        self.calibration["tta"] = fit_calibration(f["val_cal"], f["test"], fitted_on=self.calibration_data)[0]
        return frame.tta_comparison(self.test, f["test"])

    def save_calibration(self) -> Path:
        """The calibration record beside the checkpoint, where the predictor (07) reads it."""
        return save_calibration(self.checkpoint, self.calibration)

    def diagnostics(self) -> pd.DataFrame:
        """The figures that use the true province or cell (labelled diagnostics, not predictions)."""
        return frame.method_table(self.test, frame.DIAGNOSTICS)
