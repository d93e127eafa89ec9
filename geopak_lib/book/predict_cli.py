"""``geopak predict``: images or folders in, one CSV row (and optionally one GeoJSON point) per file.

Exit codes: 0 every file predicted; 1 some files could not be read (their rows say why);
2 missing or incompatible checkpoint, or bad arguments.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pandas as pd

from geopak_lib.evaluation.predictor import GeopakPredictor

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
BASE_COLUMNS = ("image", "lat", "lon", "province", "confidence", "radius_km")
CONCEPT_COLUMNS = ("climate", "climate_p", "land_cover", "land_cover_p")  # empty for a model without concept heads
HYP_FIELDS = ("province", "lat", "lon", "weight")

DESCRIPTION = """\
Predict where in Pakistan each image was taken, with a trained GEOPAK checkpoint (--checkpoint,
from the training notebooks) or an exported model folder (--model, from `geopak export`).

IMAGES_OR_FOLDER: image files (any extension) and/or folders, which are searched recursively for
.jpg .jpeg .png .webp .bmp .tif .tiff files (any letter case).

The CSV has one row per file: image, lat, lon (degrees), province, confidence (calibrated
probability of that province), radius_km (the truth lies within it for ~80% of validation images
once 06_evaluation has calibrated the checkpoint), hyp1_province, hyp1_lat, hyp1_lon,
hyp1_weight, ... for the --top best hypotheses, the concepts the model reads in the image with their
probabilities (climate, climate_p, land_cover, land_cover_p; empty for a model without concept heads),
and error (empty when the file was predicted).
A file that cannot be read gets a row with its error and the others are still predicted.

Exit codes: 0 all files predicted; 1 some files failed; 2 missing/incompatible checkpoint or
model folder, a file that would run code, or bad arguments.

examples:
  geopak predict photos/ --checkpoint "$(cat runs/demo/final_checkpoint.txt)" --out predictions.csv
  geopak predict photos/ --model shared_model/ --out predictions.csv --geojson predictions.geojson
"""


def add_parser(subparsers, func):
    import argparse

    p = subparsers.add_parser("predict", help="predict lat/lon for images with a trained checkpoint",
                              description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="IMAGES_OR_FOLDER", help="image files and/or folders")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--checkpoint",
                       help="a best.pt from the training notebooks, e.g. the path in runs/<profile>/final_checkpoint.txt")
    which.add_argument("--model", help="a model folder written by `geopak export` (config.json + model.safetensors)")
    p.add_argument("--out", default="predictions.csv", help="CSV to write (default: predictions.csv)")
    p.add_argument("--geojson", help="also write a GeoJSON FeatureCollection of points here")
    p.add_argument("--batch-size", type=int, default=32, help="images per batch (default 32)")
    p.add_argument("--workers", type=int, default=None,
                   help="image-decoding worker processes (default: none on a CPU, where workers compete with the "
                        "model for the cores and measured slower; up to 8 on a GPU; docs/performance.md)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="default auto (GPU if any)")
    p.add_argument("--tta", action="store_true",
                   help="test-time augmentation: average 5 geography-safe views (no flips); 5x slower")
    p.add_argument("--top", type=int, default=3, help="hypotheses per row in the CSV (default 3)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=func)
    return p


def find_images(inputs) -> tuple[list[str], list[str]]:
    """Expand inputs -> (files in a stable order, problems). Folders are searched recursively for
    IMAGE_EXTENSIONS (case-insensitive); a file named explicitly is kept whatever its extension;
    a missing path is a problem (it gets an error row)."""
    files, missing = [], []
    for item in map(Path, inputs):
        if item.is_dir():
            files += sorted(str(p) for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        elif item.exists():
            files.append(str(item))
        else:
            missing.append(str(item))
    return files, missing


def results_table(records: list[dict], top: int = 3) -> pd.DataFrame:
    """Records of GeopakPredictor.predict_many -> the CSV columns, in order (see DESCRIPTION)."""
    hyp_cols = [f"hyp{k}_{f}" for k in range(1, top + 1) for f in HYP_FIELDS]
    rows = []
    for r in records:
        row = {c: r.get(c) for c in (*BASE_COLUMNS, *CONCEPT_COLUMNS)}
        for k, h in enumerate(r.get("hypotheses", [])[:top], 1):
            row.update({f"hyp{k}_{f}": h[f] for f in HYP_FIELDS})
        row["error"] = r.get("error", "")
        rows.append(row)
    return pd.DataFrame(rows, columns=[*BASE_COLUMNS, *hyp_cols, *CONCEPT_COLUMNS, "error"])


def geojson(table: pd.DataFrame) -> dict:
    """A FeatureCollection of Points (lon, lat order, as GeoJSON wants) with the CSV columns as
    properties; files that failed have a null geometry."""
    feats = []
    for row in table.to_dict("records"):
        props = {k: (None if isinstance(v, float) and v != v else v) for k, v in row.items()}  # NaN -> null
        geom = None if props["lat"] is None else {"type": "Point", "coordinates": [props["lon"], props["lat"]]}
        feats.append({"type": "Feature", "geometry": geom, "properties": props})
    return {"type": "FeatureCollection", "features": feats}


def run(args) -> int:
    err = lambda msg: print(f"geopak predict: {msg}", file=sys.stderr)  # noqa: E731
    if args.batch_size < 1 or args.top < 1 or (args.workers is not None and args.workers < 0):
        err("--batch-size and --top must be >= 1, --workers >= 0")
        return 2
    files, missing = find_images(args.inputs)
    if not files and not missing:
        err(f"no image files ({' '.join(IMAGE_EXTENSIONS)}) found in {' '.join(args.inputs)}")
        return 2
    try:
        if args.model:
            predictor = GeopakPredictor.from_pretrained(args.model, device=args.device, tta=args.tta)
        else:
            predictor = GeopakPredictor.from_checkpoint(args.checkpoint, device=args.device, tta=args.tta)
    except (FileNotFoundError, ValueError) as exc:
        err(str(exc))
        return 2
    for w in predictor.warnings:
        err(f"warning: {w}")
    workers = args.workers
    if workers is None:
        workers = min(8, max(1, (os.cpu_count() or 2) - 1)) if predictor.device.type == "cuda" else 0
    workers = workers if len(files) > args.batch_size else 0  # a pool costs more than a batch
    records = predictor.predict_many(files, args.batch_size, progress=not args.no_progress, num_workers=workers)
    records += [{"image": m, "error": "file not found"} for m in missing]
    table = results_table(records, args.top)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False, float_format="%.8g")  # lat/lon to ~1e-6 degrees (0.1 m)
    if args.geojson:
        Path(args.geojson).parent.mkdir(parents=True, exist_ok=True)
        Path(args.geojson).write_text(json.dumps(geojson(table), indent=1))
    failed = int((table["error"] != "").sum())
    print(f"{len(table) - failed} of {len(table)} files predicted -> {out}"
          + (f" and {args.geojson}" if args.geojson else ""))
    if failed:
        err(f"{failed} file(s) could not be read; their rows in {out} say why")
    return 1 if failed else 0
