"""What the training-phase notebooks (02-05) show: curves, gate histograms, phase comparisons,
and the outcome table (the model's end-to-end error against the baselines).

Every error figure here is the end-to-end mixture prediction unless a column says "oracle"
(the true cell fed in), which is a diagnostic and never a selection metric.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from geopak_lib.constants import PROVINCE_SHORT, PROVINCES
from geopak_lib.metrics import summarize_errors

LOSS_TERMS = ("loss_total", "loss_province", "loss_geocell", "loss_offset", "loss_aux")
PHASE_NAMES = {0: "phase 0 (province warm-up)", 1: "phase 1 (geography)", 2: "phase 2 (adaptation)",
               3: "phase 3 (fine-tune)"}


def loss_curves(history: pd.DataFrame, title: str = ""):
    """One panel per loss term with values, plus the val median error (km). Returns the figure."""
    h = history[history["epoch"] > 0]
    terms = [t for t in LOSS_TERMS if h[t].notna().any()]
    panels = terms + (["median_error_km"] if h["median_error_km"].notna().any() else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(3.0 * len(panels), 2.8), squeeze=False)
    for ax, col in zip(axes[0], panels):
        for split, style in (("train", "-o"), ("val", "-s")):
            part = h[h["split"] == split]
            if part[col].notna().any():
                ax.plot(part["epoch"], part[col], style, ms=3, label=split)
        if col == "median_error_km" and "oracle_median_km" in h:
            v = h[h["split"] == "val"]
            ax.plot(v["epoch"], v["oracle_median_km"], ":", color="grey", label="val, true cell (diagnostic)")
        ax.set_title(col.replace("loss_", "loss: ").replace("_", " "), fontsize=9)
        ax.set_xlabel("epoch")
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def province_accuracy_curves(history: pd.DataFrame):
    """Validation accuracy of each province by epoch (recall of that province)."""
    v = history[(history["split"] == "val") & (history["epoch"] > 0)]
    fig, ax = plt.subplots(figsize=(7, 3.2))
    for p in PROVINCES:
        col = f"{PROVINCE_SHORT[p]}_acc"
        if v[col].notna().any():
            ax.plot(v["epoch"], 100 * v[col], "-o", ms=3, label=p)
    ax.plot(v["epoch"], 100 * v["balanced_acc"], "k--", lw=2, label="balanced (mean of provinces)")
    ax.set(xlabel="epoch", ylabel="val accuracy %", ylim=(-2, 102), title="Province accuracy by epoch (validation)")
    ax.legend(fontsize=7, ncol=2, loc="lower right")
    fig.tight_layout()
    return fig


def alpha_histogram(alpha, title: str = "Fusion gate α on validation images"):
    """Histogram of the gate: α → 1 trusts the scene encoder, α → 0 falls back to CLIP."""
    fig, ax = plt.subplots(figsize=(6, 2.8))
    ax.hist(np.asarray(alpha, float), bins=30, range=(0, 1), color="#469990")
    ax.set(xlabel="α (0 = CLIP only, 1 = scene encoder only)", ylabel="images", title=title)
    fig.tight_layout()
    return fig


def best_rows(run_dir) -> pd.DataFrame:
    """The best validation row of every phase that has run, from its losses.csv and log."""
    rows = []
    for phase in range(4):
        csv = Path(run_dir) / "checkpoints" / f"phase{phase}" / "losses.csv"
        if not csv.exists():
            continue
        h = pd.read_csv(csv)
        v = h[h["split"] == "val"]
        if not len(v):
            continue
        key = v["balanced_acc"].idxmax() if phase == 0 else v["median_error_km"].idxmin()
        r = v.loc[key]
        rows.append({"phase": PHASE_NAMES[phase], "best epoch": int(r["epoch"]),
                     "val median km": r["median_error_km"], "val p90 km": r["p90_error_km"],
                     "val province acc": r["province_acc"], "val balanced acc": r["balanced_acc"],
                     "val median km, true cell (diagnostic)": r["oracle_median_km"],
                     "mean α": r["alpha_mean"]})
    return pd.DataFrame(rows)


def outcome_table(predictions: pd.DataFrame, baselines: pd.DataFrame, model_name: str) -> pd.DataFrame:
    """The model's end-to-end errors beside the baselines (rows of features.baseline_errors).

    predictions: train_eval.evaluate output (error_km per sample). Adds 'beats model?'.
    """
    s = summarize_errors(predictions["error_km"].to_numpy(float))
    model_row = {"method": model_name, "n": len(predictions), **s}
    out = pd.concat([pd.DataFrame([model_row]), baselines], ignore_index=True)
    out["model beats it"] = [None] + [bool(s["median_km"] < m) for m in baselines["median_km"]]
    return out[["method", "n", "median_km", "mean_km", "p90_km", "acc_1km", "acc_5km", "acc_25km",
                "acc_200km", "acc_750km", "model beats it"]]


def province_confusion(true, pred) -> pd.DataFrame:
    """Confusion counts as a labelled table: rows = true province, columns = predicted."""
    from geopak_lib.metrics import confusion_matrix

    short = [PROVINCE_SHORT[p] for p in PROVINCES]
    cm = confusion_matrix(true, pred)
    return pd.DataFrame(cm, index=pd.Index(list(PROVINCES), name="true \\ predicted"), columns=short)
