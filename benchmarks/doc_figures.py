"""Every demo figure the docs quote, read back from one run's own artifacts, as a labelled list.

After ``make book`` (which rewrites ``runs/demo``), run

    PYTHONPATH=$PWD .venv/bin/python -m benchmarks.doc_figures runs/demo --reports reports/demo

and patch the figures in README.md and docs/ that moved. Nothing here trains or predicts: it reads
``manifest.csv``, ``predictions_test.csv``, ``checkpoints/phase*/losses.csv`` and ``val_errors.csv``,
the evaluation summary, calibration and gallery JSON beside the final checkpoint, the concept
ablation and baselines tables, ``multiview/multiview.csv`` and, for the figures that exist only
there (options table, ablation rows, several photos, TTA), the outputs of the executed
``notebooks/06_evaluation.ipynb`` read as JSON. A figure whose artifact is missing prints ``n/a``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

try:
    from benchmarks.notebook_tables import cell, find_table, notebook_outputs, parse_html_table  # noqa: F401
except ImportError:  # run as a file: python benchmarks/doc_figures.py
    from notebook_tables import cell, find_table, notebook_outputs, parse_html_table  # noqa: F401

SPLITS = ("train", "val", "val_cal", "test")


def _fmt(value, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def _ci(triple, digits: int = 1, pct: bool = False) -> str:
    """(point, lo, hi) -> '193.6 [150.2, 271.5]'; pct multiplies by 100."""
    if not triple:
        return "n/a"
    k = 100.0 if pct else 1.0
    point, lo, hi = (float(v) * k for v in triple)
    return f"{point:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def _signed_ci(triple) -> str:
    point, lo, hi = (float(v) for v in triple)
    return f"{point:+.1f} km [{lo:+.1f}, {hi:+.1f}]"


def split_counts(run: Path) -> dict:
    """Images and spatial blocks per split, from manifest.csv."""
    manifest = pd.read_csv(run / "manifest.csv", usecols=lambda c: c in {"split", "block_id"})
    out = {}
    for split in SPLITS:
        rows = manifest[manifest["split"] == split]
        blocks = rows["block_id"].nunique() if "block_id" in rows else 0
        out[split] = (len(rows), int(blocks))
    return out


def error_summary(errors) -> dict:
    """median, mean, p90 (numpy's linear percentile, as geopak_lib.metrics), acc within 25/200 km."""
    e = np.asarray(errors, dtype=float)
    e = e[np.isfinite(e)]
    if e.size == 0:
        return {"n": 0}
    return {"n": int(e.size), "median_km": float(np.median(e)), "mean_km": float(e.mean()),
            "p90_km": float(np.percentile(e, 90)), "acc_25km": float((e <= 25).mean()),
            "acc_200km": float((e <= 200).mean())}


def test_predictions(run: Path) -> dict:
    """The plain and refined test summaries and province accuracy, from predictions_test.csv."""
    frame = pd.read_csv(run / "predictions_test.csv")
    out = {"plain": error_summary(frame["error_km"])}
    if "refined_error_km" in frame:
        out["refined"] = error_summary(frame["refined_error_km"])
    if {"province_pred", "province_id"} <= set(frame.columns):
        out["province_acc"] = float((frame["province_pred"] == frame["province_id"]).mean())
    return out


def final_checkpoint(run: Path) -> Path | None:
    """The final checkpoint's path inside *run*: final_checkpoint.txt names it relative to the repo
    (``runs/demo/checkpoints/...``), so the part from ``checkpoints/`` on is rejoined to *run*."""
    marker = run / "final_checkpoint.txt"
    if not marker.is_file():
        return None
    parts = Path(marker.read_text().strip()).parts
    if "checkpoints" not in parts:
        return None
    return run.joinpath(*parts[parts.index("checkpoints"):])


def _json_beside(checkpoint: Path | None, suffix: str) -> dict:
    if checkpoint is None:
        return {}
    path = checkpoint.with_name(checkpoint.stem + suffix)
    return json.loads(path.read_text()) if path.is_file() else {}


def phase_medians(run: Path) -> dict:
    """phase -> (best validation median in losses.csv, its epoch, median of val_errors.csv)."""
    out = {}
    for phase_dir in sorted((run / "checkpoints").glob("phase*")):
        losses = phase_dir / "losses.csv"
        best = epoch = None
        if losses.is_file():
            val = pd.read_csv(losses)
            val = val[(val["split"] == "val") & val["median_error_km"].notna()] if "median_error_km" in val else val[:0]
            if len(val):
                row = val.loc[val["median_error_km"].idxmin()]
                best, epoch = float(row["median_error_km"]), int(row["epoch"])
        errors = phase_dir / "val_errors.csv"
        val_median = float(pd.read_csv(errors)["error_km"].median()) if errors.is_file() else None
        out[phase_dir.name] = (best, epoch, val_median)
    return out


def _best_province_acc(phase_dir: Path):
    losses = phase_dir / "losses.csv"
    if not losses.is_file():
        return None
    val = pd.read_csv(losses)
    val = val[val["split"] == "val"]
    if not {"province_acc", "balanced_acc"} <= set(val.columns) or val.empty:
        return None
    # Phase 0 keeps its epoch of best balanced accuracy (docs/decisions/training.md).
    row = val.loc[val["balanced_acc"].idxmax()]
    return f"{row['province_acc']:.3f} (balanced {row['balanced_acc']:.3f}, epoch {int(row['epoch'])})"


def _options(table) -> list[tuple[str, str]]:
    """The options table of 06: each option's paired validation Δ, interval, verdict, test medians."""
    out = []
    if table is None:
        return [("06 options table", "n/a")]
    for option in table.index:
        get = lambda col: cell(table, option, col)  # noqa: E731
        delta = (get("val Δ median km"), get("val Δ 95% lo"), get("val Δ 95% hi"))
        text = _signed_ci(delta) if None not in delta else "n/a"
        adopted = get("adopted")
        out.append((f"06 option '{option}' val Δ [95%]", f"{text}; adopted {adopted}; test median "
                    f"{_fmt(get('test_median_km_without'))} → {_fmt(get('test_median_km_with'))} km"))
    return out


def _notebook_figures(run: Path) -> list[tuple[str, str]]:
    tables, markdown = notebook_outputs(run / "notebooks" / "06_evaluation.ipynb")
    # Every table with an `adopted` column is a verdict of the adoption rule (options, TTA, concept heads).
    verdicts = [table for table in tables if "adopted" in table.columns]
    out = [line for table in verdicts for line in _options(table)] or _options(None)
    methods = find_table(tables, row="auxiliary regression head alone", column="median_km")
    for label in ([] if methods is None else methods.index):
        out.append((f"06 ablation '{label}' test median km", _fmt(cell(methods, label, "median_km"))))
    tta = find_table(tables, row="TTA", column="median_km")
    for label in ([] if tta is None else tta.index):
        out.append((f"06 TTA '{label}' test median km", _fmt(cell(tta, label, "median_km"))))
    views = find_table(tables, row=" / embedding", column="acc_750km")
    for label in ([] if views is None else views.index):
        out.append((f"06 several photos '{label}' median km", _fmt(cell(views, label, "median_km"))))
    urban = find_table(tables, row="rural", column="median_km")
    for label in ([] if urban is None else urban.index):
        out.append((f"06 {label} test median km (n)",
                    f"{_fmt(cell(urban, label, 'median_km'))} ({_fmt(cell(urban, label, 'n'), 0)})"))
    diag = find_table(tables, row="TRUE cell", column="median_km")
    for label in ([] if diag is None else diag.index):
        out.append((f"06 diagnostic '{label.split(' (')[0]}' median km", _fmt(cell(diag, label, "median_km"))))
    for text in markdown:
        if "TTA" in text and "median error moves" in text:
            out.append(("06 TTA verdict", text.strip()))
        if "this run's model" in text or ("concept" in text.lower() and "adopt" in text):
            out.append(("06 concept heads verdict", " ".join(text.split())))
    return out


def _calibration_figures(cal: dict) -> list[tuple[str, str]]:
    if not cal:
        return [("06 calibration", "n/a")]
    out = [("06 calibration fitted on", cal.get("fitted_on", "n/a")),
           ("06 temperature T; test ECE before → after",
            f"{_fmt(cal.get('temperature'), 3)}; {_fmt(cal.get('test_ece_before'), 3)} → {_fmt(cal.get('test_ece_after'), 3)}")]
    for name, block in (("plain", cal), ("refined", cal.get("refined", {})), ("TTA", cal.get("tta", {}))):
        cov = block.get("test_coverage", {})
        if cov:
            out.append((f"06 radius test coverage ({name}) at 50/80/95%",
                        " / ".join(_fmt(cov.get(k), 3) for k in ("0.5", "0.8", "0.95"))))
    return out


def figures(run: Path, reports: Path | None = None) -> list[tuple[str, str]]:
    """Every re-measurable figure as (label, value) pairs, in the order the book makes them."""
    run = Path(run)
    out: list[tuple[str, str]] = []
    counts = split_counts(run)
    out.append(("00 images per split (blocks)", ", ".join(f"{s} {n} ({b})" for s, (n, b) in counts.items())))
    if (run / "geocells.csv").is_file():
        out.append(("01 geocells", str(len(pd.read_csv(run / "geocells.csv")))))
    for phase, (best, epoch, val_median) in phase_medians(run).items():
        if best is None:  # phase 0 learns the province only; its log has no km
            out.append((f"{phase} best val province accuracy", _best_province_acc(run / "checkpoints" / phase) or "n/a"))
            continue
        out.append((f"{phase} best val median km (epoch); val_errors median",
                    f"{_fmt(best)} ({epoch}); {_fmt(val_median)}"))
    checkpoint = final_checkpoint(run)
    out.append(("05 final checkpoint", "n/a" if checkpoint is None else str(checkpoint.relative_to(run))))
    if (run / "predictions_test.csv").is_file():
        pred = test_predictions(run)
        for name in ("plain", "refined"):
            s = pred.get(name)
            if s and s.get("n"):
                out.append((f"06 test {name}: n, median, mean, p90 km, acc@25, acc@200",
                            f"{s['n']}, {_fmt(s['median_km'])}, {_fmt(s['mean_km'])}, {_fmt(s['p90_km'])}, "
                            f"{_fmt(100 * s['acc_25km'])}%, {_fmt(100 * s['acc_200km'])}%"))
        out.append(("06 test province accuracy", _fmt(100 * pred.get("province_acc", np.nan)) + "%"))
    summary = _json_beside(checkpoint, ".evaluation.json")
    ci = summary.get("headline_ci95", {})
    out.append(("06 headline test median km [95%]", _ci(ci.get("median_km"))))
    out.append(("06 headline test p90 km [95%]", _ci(ci.get("p90_km"), 0)))
    for key in ("acc_25km", "acc_200km", "province_acc"):
        out.append((f"06 headline test {key} % [95%]", _ci(ci.get(key), 1, pct=True)))
    out.append(("06 refined test median km [95%]", _ci(summary.get("refined_ci95", {}).get("median_km"))))
    head = summary.get("headline", {})
    out.append(("06 district accuracy %", _fmt(100 * head["district_acc"]) if "district_acc" in head else "n/a"))
    for row in summary.get("per_province", []):
        out.append((f"06 test median km, {row['province']} (n)", f"{_fmt(row['median_km'])} ({row['n']})"))
    gallery = _json_beside(checkpoint, ".gallery.json")
    if gallery:
        val = gallery.get("val_median_km", {})
        out.append(("06 refinement val median plain → refined km",
                    f"{_fmt(val.get('plain'))} → {_fmt(val.get('refined'))}; default {gallery.get('default')}"))
        if gallery.get("val_diff_km_ci95"):
            out.append(("refinement val Δ [95%]", _signed_ci(gallery["val_diff_km_ci95"])))
        out.append(("06 refinement settings; gallery MB", f"{gallery.get('settings')}; {_fmt(gallery.get('memory_mb'))}"))
    out += _calibration_figures(_json_beside(checkpoint, ".calibration.json"))
    for name, label in (("baselines_test.csv", "method"), ("concept_ablation.csv", "variant")):
        if (run / name).is_file():
            table = pd.read_csv(run / name)
            for _, row in table.iterrows():
                tag = row[label] + (f" {row['split']}" if "split" in table else "")
                mine = " (this run's model)" if str(row.get("this_run", "")) == "True" else ""
                out.append((f"{name.split('.')[0]} '{tag}' median km (n)", f"{_fmt(row['median_km'])} ({row['n']}){mine}"))
    views = run / "multiview" / "multiview.csv"
    if views.is_file():
        groups = pd.read_csv(views).groupby("split")["group"].nunique()
        out.append(("06 several photos: places per split", ", ".join(f"{k} {v}" for k, v in groups.items())))
    out += _notebook_figures(run)
    tables, markdown = notebook_outputs(run / "notebooks" / "05_phase3_finetune.ipynb")
    for text in markdown:
        if "Final model" in text:
            out.append(("05 final-model verdict", " ".join(text.split())))
    phases = find_table(tables, row=" / test", column="median_km")
    for label in ([] if phases is None else phases.index):
        out.append((f"05 '{label}' median km", _fmt(cell(phases, label, "median_km"))))
    if reports is not None and Path(reports).is_dir():
        for page in sorted(Path(reports).glob("*.html")):
            out.append((f"report size {page.name} MB", _fmt(page.stat().st_size / 2**20, 2)))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", nargs="?", default="runs/demo", help="run folder (default runs/demo)")
    parser.add_argument("--reports", default=None, help="its reports folder (default reports/<run name>)")
    args = parser.parse_args(argv)
    run = Path(args.run)
    if not (run / "manifest.csv").is_file():
        print(f"doc_figures: {run / 'manifest.csv'} not found; run `make book` first", file=sys.stderr)
        return 2
    reports = Path(args.reports) if args.reports else run.parent.parent / "reports" / run.name
    for label, value in figures(run, reports):
        print(f"{label}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
