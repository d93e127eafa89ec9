"""What a report was computed from: the git commit, the run folder, the dataset, the checkpoint
and the encoders' weight status (with a loud warning for random weights)."""

from __future__ import annotations

import subprocess

import pandas as pd

from geopak_lib.training.cache import manifest_hash


def encoder_status_markdown(encoders) -> str:
    """A Markdown block naming each encoder's spec and weights; a loud warning for random weights."""
    lines = ["| slot | encoder spec | weights |", "| --- | --- | --- |"]
    random_ones = []
    for slot, enc in zip(("CLIP slot", "scene slot"), encoders):
        info = enc if isinstance(enc, dict) else {"spec": enc.spec, "weight_status": enc.weight_status,
                                                   "is_random": enc.is_random}
        lines.append(f"| {slot} | `{info['spec']}` | {info['weight_status']} |")
        if info["is_random"]:
            random_ones.append(f"`{info['spec']}`")
    if random_ones:
        lines.insert(0, f"> **⚠ Random weights:** {', '.join(random_ones)} "
                        f"{'runs' if len(random_ones) == 1 else 'run'} on **random, untrained weights** "
                        "(no pretrained weights could be loaded on this machine). Its features carry no "
                        "learned visual knowledge, and every figure in this report reflects that.\n")
    return "\n".join(lines)


def git_commit(root=".") -> str:
    """The repository's HEAD commit (short), with '+changes' if the tree is dirty; 'unknown' without git."""
    try:
        run = lambda *a: subprocess.run(["git", *a], cwd=root, capture_output=True, text=True, timeout=10)  # noqa: E731
        head = run("rev-parse", "--short=12", "HEAD")
        if head.returncode != 0:
            return "unknown"
        dirty = run("status", "--porcelain", "--untracked-files=no").stdout.strip()
        return head.stdout.strip() + (" (+ uncommitted changes)" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run_manifest(run_dir, manifest: pd.DataFrame, checkpoint, ckpt_info: dict, *, calibration_note: str = "") -> str:
    """Markdown: what this report was computed from (commit, run folder, dataset hash and size,
    checkpoint, encoders with a warning box for random weights)."""
    sizes = manifest["split"].value_counts().reindex(["train", "val", "val_cal", "test"], fill_value=0)
    enc = ckpt_info["encoders"]
    lines = ["| | |", "| --- | --- |", f"| git commit | `{git_commit()}` |", f"| run folder | `{run_dir}` |",
             f"| dataset | {len(manifest)} images (train {sizes['train']}, val {sizes['val']} for choices + "
             f"{sizes['val_cal']} for calibration, test {sizes['test']}); "
             f"manifest sha256 `{manifest_hash(manifest)[:16]}…` |",
             f"| checkpoint | `{checkpoint}` (phase {ckpt_info['phase']}, epoch {ckpt_info['epoch']}) |"]
    if calibration_note:
        lines.append(f"| calibration | {calibration_note} |")
    return "\n".join(lines) + "\n\n" + encoder_status_markdown([enc["clip_encoder"], enc["scene_encoder"]])
