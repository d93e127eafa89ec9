"""The landing page of the book site: what the run was made from (commit, profile, dataset, the
final model and its encoders' weight status) and its test headline, then the chapters with the
time each took. Every figure is read from a file the run wrote; nothing is recomputed."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pandas as pd

from geopak_lib.book.provenance import encoder_status_markdown, git_commit
from geopak_lib.data.rundir import RunDir
from geopak_lib.inference.calibration import load_evaluation_summary
from geopak_lib.training.selection import PHASE_NAMES, select_final_checkpoint

HEADLINE = (("median_km", "median error", "{:.1f} km"), ("p90_km", "90th percentile", "{:.1f} km"),
            ("acc_25km", "within 25 km", "{:.1%}"), ("acc_200km", "within 200 km", "{:.1%}"),
            ("province_acc", "province accuracy", "{:.1%}"))


def checkpoint_info(path) -> dict | None:
    """Phase, epoch and encoders' weight status of a checkpoint, or None when it is not there.

    The tensors are memory-mapped, not read (a checkpoint is 100 MB-1 GB); weights_only=True, so
    loading runs no code."""
    import torch

    path = Path(path)
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return {"phase": int(state["phase"]), "epoch": state.get("epoch"), "encoders": state.get("encoders") or {}}


def final_model(run_dir, root) -> tuple[Path | None, str]:
    """(the run's final checkpoint, why it was chosen); (None, why not) before training."""
    recorded = RunDir(run_dir).read_final_checkpoint()
    try:
        choice = select_final_checkpoint(run_dir)
    except FileNotFoundError as exc:
        choice = None
        why = str(exc)
    if recorded is not None:
        same = choice is not None and Path(root, recorded).resolve() == Path(root, choice.checkpoint).resolve()
        return Path(root, recorded), choice.reason if same else "named by final_checkpoint.txt (05_phase3_finetune)"
    if choice is not None:
        return Path(root, choice.checkpoint), choice.reason
    return None, why


def headline_markdown(summary: dict) -> str:
    """The test headline as a one-row Markdown table."""
    h = summary["headline"]
    cols = ["test images"] + [label for _, label, _ in HEADLINE]
    row = [str(int(h["n"]))] + [fmt.format(h[key]) for key, _, fmt in HEADLINE]
    return "| " + " | ".join(cols) + " |\n|" + " --- |" * len(cols) + "\n| " + " | ".join(row) + " |"


def headline_ci_markdown(summary: dict) -> str:
    """The test headline with its 95% block-bootstrap intervals, the predictor's default first.

    Rows: the predictor's default (refined or the plain mixture) and the other beside it. A summary
    from before intervals existed falls back to :func:`headline_markdown`.
    """
    cis = {"plain mixture": summary.get("headline_ci95"), "refined": summary.get("refined_ci95")}
    if not cis["plain mixture"]:
        return headline_markdown(summary)
    refined_default = bool((summary.get("refined") or {}).get("default"))
    order = ["refined", "plain mixture"] if refined_default and cis["refined"] else ["plain mixture", "refined"]
    cols = ["prediction", "test images"] + [label for _, label, _ in HEADLINE]
    lines = ["| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]
    for k, name in enumerate(o for o in order if cis[o]):
        ci = cis[name]
        cells = [f"{fmt.format(ci[key][0])} [{fmt.format(ci[key][1])}, {fmt.format(ci[key][2])}]"
                 for key, _, fmt in HEADLINE]
        label = f"**{name} (the predictor's default)**" if k == 0 else name
        lines.append("| " + " | ".join([label, str(int(summary["headline"]["n"]))] + cells) + " |")
    return "\n".join(lines) + "\n\n95% block-bootstrap intervals (whole spatial blocks of the test split resampled)."


def dataset_line(run_dir, notebooks: list[Path]) -> str:
    """The dataset the run read (00's injected data_csv) and its split sizes (manifest.csv)."""
    source = "?"
    audit = [nb for nb in notebooks if nb.stem.startswith("00_")]
    if audit:
        params = nbformat.read(str(audit[0]), as_version=4).metadata.get("papermill", {}).get("parameters", {})
        source = f"`{params['data_csv']}`" if "data_csv" in params else source
    manifest = Path(run_dir) / "manifest.csv"
    if not manifest.is_file():
        return source
    sizes = pd.read_csv(manifest, usecols=["split"])["split"].value_counts()
    return (f"{source}: {int(sizes.sum())} valid images (train {sizes.get('train', 0)}, validation "
            f"{sizes.get('val', 0)} for choices + {sizes.get('val_cal', 0)} for calibration, test {sizes.get('test', 0)})")


def chapter_rows(notebooks: list[Path]) -> str:
    """Markdown list of the chapters, each with its run time from papermill's metadata."""
    lines = []
    for nb in notebooks:
        meta = nbformat.read(str(nb), as_version=4).metadata.get("papermill", {})
        took = f" ({meta['duration']:.0f} s)" if meta.get("duration") is not None else ""
        lines.append(f"- []({nb.stem}.ipynb){took}")  # empty text: MyST writes the chapter's title
    return "\n".join(lines)


def landing_page(run_dir, profile: str, notebooks: list[Path], root) -> str:
    """MyST Markdown of the site's index page (the toctree that orders the chapters is added by the caller)."""
    ckpt, why = final_model(run_dir, root)
    info = checkpoint_info(ckpt) if ckpt is not None else None
    summary, summary_why = load_evaluation_summary(ckpt) if ckpt is not None and ckpt.is_file() else (None, why)
    shown = ckpt.relative_to(root) if ckpt is not None and ckpt.is_relative_to(root) else ckpt
    if info is not None:
        model = (f"`{shown}`: {PHASE_NAMES.get(info['phase'], info['phase'])}, epoch {info['epoch']}; {why}")
        encoders = encoder_status_markdown([info["encoders"][s] for s in ("clip_encoder", "scene_encoder")])
    else:
        model, encoders = f"none: {why}", "No trained checkpoint, so no encoder status."
    headline = (headline_ci_markdown(summary) + "\n\nEnd to end on the spatially held-out test split: the model's "
                "own province and cell choices, no true label used (06 · Evaluation has the breakdowns)."
                if summary else f"No test figures: {summary_why}.")
    return f"""# GEOPAK book · {profile} run

Province-aware hierarchical image geolocation for Pakistan. This site is the executed book of the
**{profile}** run: each chapter is one notebook, with its tables, figures and maps as the run left them.

## Test headline

{headline}

## Run manifest

| what | value |
| --- | --- |
| profile | `{profile}` |
| run folder | `{Path(run_dir).relative_to(root) if Path(run_dir).is_relative_to(root) else run_dir}` |
| git commit (site built from) | `{git_commit(root)}` |
| dataset | {dataset_line(run_dir, notebooks)} |
| final model | {model} |

{encoders}

## Chapters

{chapter_rows(notebooks)}
"""
