"""The prose that introduces a dataset in 00's report, written from the data itself.

00 audits whatever table the profile names; a fixed paragraph about the demo's aerial crops would
misdescribe a user's photos. :func:`dataset_description` says what the manifest holds (rows,
image formats and sizes, provinces, extent) and adds the demo's caveat only for a demo build
(the builder's stamp ``demo_params.json`` beside the table).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from geopak_lib.constants import PROVINCES
from geopak_lib.data.embedded import is_embedded

DEMO_STAMP = "demo_params.json"  # written last by book.demo.build_demo_dataset
DEMO_CAVEAT = ("This is the **demo dataset**: its images are **aerial and terrain crops** cut from NASA Blue "
               "Marble and shaded-relief rasters around real Pakistani towns; they are *not* street photos. They "
               "carry real geographic signal (desert, irrigated plains, mountains, coast), which is enough to "
               "exercise and evaluate the whole book, but their figures say nothing about accuracy on "
               "ground-level photos. It follows the spec's province shares with a floor per province, so that "
               "even the smallest provinces have enough samples for at least two geocells.")


def is_demo_table(data_csv) -> bool:
    """True when the table was written by the demo builder (its stamp lies beside it)."""
    return (Path(data_csv).parent / DEMO_STAMP).is_file()


def _formats(manifest: pd.DataFrame) -> str:
    embedded = manifest["image_path"].map(is_embedded)
    ext = manifest.loc[~embedded, "image"].astype(str).map(lambda s: Path(s).suffix.lower().lstrip(".") or "none")
    parts = [f"{n:,} {e.upper()}" for e, n in ext.value_counts().items()]
    if embedded.any():
        parts.append(f"{int(embedded.sum()):,} embedded in the Parquet table")
    return ", ".join(parts) or "none"


def dataset_description(manifest: pd.DataFrame, data_csv, n_input: int | None = None) -> str:
    """Markdown: what the audited dataset holds, from its manifest (and the demo caveat for the demo)."""
    n = len(manifest)
    lines = [f"**The data audited here**: `{Path(data_csv).name}`, "
             + (f"{n_input:,} rows, of which {n:,} are valid." if n_input is not None else f"{n:,} valid rows.")]
    if n:
        present = [p for p in PROVINCES if (manifest["province"] == p).any()]
        lines.append(f"- images by format: {_formats(manifest)}")
        w, h = manifest["width"].dropna(), manifest["height"].dropna()
        if len(w):
            lines.append(f"- image size: median {int(w.median())} x {int(h.median())} pixels "
                         f"(width {int(w.min())} to {int(w.max())}, height {int(h.min())} to {int(h.max())})")
        lines.append(f"- provinces: {len(present)} of {len(PROVINCES)}"
                     + (f" (none in {', '.join(p for p in PROVINCES if p not in present)})"
                        if len(present) < len(PROVINCES) else ""))
        lines.append(f"- extent: latitude {manifest['latitude'].min():.2f} to {manifest['latitude'].max():.2f}, "
                     f"longitude {manifest['longitude'].min():.2f} to {manifest['longitude'].max():.2f}")
    text = "\n".join(lines)
    return text + "\n\n" + DEMO_CAVEAT if is_demo_table(data_csv) else text
