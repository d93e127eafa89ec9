"""What the training-phase notebooks (02-05) show: curves, gate histograms, phase comparisons,
and the outcome table (the model's end-to-end error against the baselines).

Every error figure here is the end-to-end mixture prediction unless a column says "true cell"
(the true cell fed in), which is a diagnostic and never a selection metric.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from geopak_lib.constants import PROVINCE_SHORT, PROVINCES
from geopak_lib.metrics import confusion_matrix, per_class_accuracy, summarize_errors

LOSS_TERMS = ("loss_total", "loss_province", "loss_geocell", "loss_offset", "loss_aux", "loss_concept")


def loss_curves(history: pd.DataFrame, title: str = ""):
    """One panel per loss term with values, plus the val median error (km). Returns the figure."""
    h = history[history["epoch"] > 0]
    terms = [t for t in LOSS_TERMS if t in h and h[t].notna().any()]  # loss_concept: with concept heads only
    panels = terms + (["median_error_km"] if h["median_error_km"].notna().any() else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(3.0 * len(panels), 2.8), squeeze=False)
    for ax, col in zip(axes[0], panels):
        for split, style in (("train", "-o"), ("val", "-s")):
            part = h[h["split"] == split]
            if part[col].notna().any():
                ax.plot(part["epoch"], part[col], style, ms=3, label=split)
        if col == "median_error_km" and "true_cell_median_km" in h:
            v = h[h["split"] == "val"]
            ax.plot(v["epoch"], v["true_cell_median_km"], ":", color="grey", label="val, true cell (diagnostic)")
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


def outcome_table(predictions: pd.DataFrame, baselines: pd.DataFrame, model_name: str) -> pd.DataFrame:
    """The model's end-to-end errors beside the baselines (rows of analysis.baselines.baseline_errors).

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
    short = [PROVINCE_SHORT[p] for p in PROVINCES]
    cm = confusion_matrix(true, pred)
    return pd.DataFrame(cm, index=pd.Index(list(PROVINCES), name="true \\ predicted"), columns=short)


def province_recall_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per true province: n and the share predicted right (recall), from a predictions frame."""
    recall = per_class_accuracy(frame["province_id"], frame["province_pred"])
    n = np.bincount(frame["province_id"].to_numpy(int), minlength=len(PROVINCES))
    return pd.DataFrame({"n": n, "recall": recall}, index=pd.Index(list(PROVINCES), name="province"))


def phase_comparison_plot(table: pd.DataFrame):
    """Val and test median error, province accuracy and cell top-5 per phase (phase_comparison rows)."""
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    for ax, (col, label) in zip(axes, (("median_km", "median error (km)"), ("province_acc", "province accuracy"),
                                       ("cell_top5_acc", "true cell in top 5"))):
        for split, style in (("val", "o-"), ("test", "s--")):
            part = table[table["split"] == split]
            ax.plot(part["phase"], part[col], style, label=split)
        ax.set(xlabel="phase", ylabel=label, xticks=sorted(table["phase"].unique()))
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle("What each phase adds (best checkpoint of each phase, end-to-end)")
    fig.tight_layout()
    return fig


def phase_gains_markdown(table: pd.DataFrame, final_phase: int) -> str:
    """One sentence per later phase: how its best checkpoint moved the median error on val and test
    against the phase before it, in km, said plainly when it made things worse."""
    med = table.pivot(index="phase", columns="split", values="median_km")
    lines = []
    for phase in [p for p in med.index if p >= 2 and p - 1 in med.index]:
        dv, dt = med.loc[phase, "val"] - med.loc[phase - 1, "val"], med.loc[phase, "test"] - med.loc[phase - 1, "test"]
        verb = "improves" if dv < 0 else ("changes nothing on" if dv == 0 else "worsens")
        why = (" No epoch beat the weights it started from (further training fitted the training set at the "
               "expense of validation), so it handed them on unchanged." if dv == 0 else
               " The validation gain does not carry over to test." if dv < 0 and dt > 0 else "")
        lines.append(f"- Phase {phase} {verb} validation: median {med.loc[phase - 1, 'val']:.1f} → "
                     f"{med.loc[phase, 'val']:.1f} km ({dv:+.1f}); test {med.loc[phase - 1, 'test']:.1f} → "
                     f"{med.loc[phase, 'test']:.1f} km ({dt:+.1f}).{why}")
    if 1 in med.index:
        lines.insert(0, f"- Phase 1 (geography on frozen features): val median {med.loc[1, 'val']:.1f} km, "
                        f"test {med.loc[1, 'test']:.1f} km.")
    lines.append(f"\nThe final model is **phase {final_phase}** (lowest validation median; test not consulted).")
    return "\n".join(lines)
