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

from geopak_lib.book.group_cli import PREDICTION_COLUMNS, find_groups, group_table, predict_groups, prediction_table
from geopak_lib.inference.groups import COMBINE, DEFAULT_COMBINE
from geopak_lib.inference.predictor import GeopakPredictor
from geopak_lib.data.images import scan_folder

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".heic", ".heif", ".bmp", ".tif", ".tiff")
BASE_COLUMNS = ("image", *PREDICTION_COLUMNS)

DESCRIPTION = """\
Predict where in Pakistan each image was taken, with a trained GEOPAK checkpoint (--checkpoint,
from the training notebooks) or an exported model folder (--model, from `geopak export`).

IMAGES_OR_FOLDER: image files (any extension) and/or folders, which are searched recursively for
.jpg .jpeg .png .webp .heic .heif .bmp .tif .tiff files (any letter case). Every other entry of a
folder (a .gif, a text file, a looping or broken link, a link to a folder, which is not followed) gets a
row whose error says why it was not read. A file name that is not valid UTF-8 is written with its bytes
escaped (caf\\xe9.jpg).

The CSV has one row per file: image, lat, lon (degrees), province, confidence (calibrated
probability of that province), radius_km (the truth lies within it for ~80% of validation images
once 06_evaluation has calibrated the checkpoint; never beyond the farthest point of Pakistan),
radius_calibrated (True when that calibration fits this mode: --tta and refinement each need their
own block; False: radius_km is the uncalibrated spread + 1 km, and a warning says why),
place (the nearest GeoNames place of 1,000+ people in the predicted point's province), district,
place_province (the province the predicted point lies in) and place_km (km from the point to that
place; place and district are empty when the point is outside Pakistan or more than 60 km from any
place), hyp1_province, hyp1_lat, hyp1_lon, hyp1_weight, ... for the --top best hypotheses, the
concepts the model reads in the image with their probabilities (climate, climate_p, land_cover,
land_cover_p; empty for a model without concept heads),
and error (empty when the file was predicted).
A file that cannot be read gets a row with its error and the others are still predicted.

Several photos of one place: --group-by folder (each sub-folder of a given folder is one place)
or --group-by COLUMN (the input is one CSV with columns image and COLUMN) writes one row per
place: group, n_images, the columns above (place names and concepts included), failed_images
(files skipped, with why) and error (set when no photo of the place could be read).

Ensembles: --checkpoint (or --model) given several times averages the models (shared geocells:
probabilities before the mixture; different geocells: the final points). radius_km is then not
calibrated.

Exit codes: 0 all files predicted; 1 some files failed; 2 missing/incompatible checkpoint or
model folder, a file that would run code, or bad arguments.

examples:
  geopak predict photos/ --checkpoint "$(cat runs/demo/final_checkpoint.txt)" --out predictions.csv
  geopak predict photos/ --model shared_model/ --out predictions.csv --geojson predictions.geojson
  geopak predict places/ --group-by folder --checkpoint runs/demo/checkpoints/phase2/best.pt --out places.csv
  geopak predict photos/ --checkpoint runs/demo/checkpoints/phase1/best.pt \\
      --checkpoint runs/demo/checkpoints/phase2/best.pt --out ensemble.csv
"""


def add_parser(subparsers, func):
    import argparse

    p = subparsers.add_parser("predict", help="predict lat/lon for images with a trained checkpoint",
                              description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="IMAGES_OR_FOLDER", help="image files and/or folders")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--checkpoint", action="append",
                       help="a best.pt from the training notebooks, e.g. the path in runs/<profile>/final_checkpoint.txt; "
                            "repeat it for an ensemble")
    which.add_argument("--model", action="append",
                       help="a model folder written by `geopak export` (config.json + model.safetensors); "
                            "repeat it for an ensemble")
    p.add_argument("--out", default="predictions.csv", help="CSV to write (default: predictions.csv)")
    p.add_argument("--geojson", help="also write a GeoJSON FeatureCollection of points here")
    p.add_argument("--batch-size", type=int, default=32, help="images per batch (default 32)")
    p.add_argument("--workers", type=int, default=None,
                   help="image-decoding worker processes (default: none on a CPU, where workers compete with the "
                        "model for the cores and measured slower; up to 8 on a GPU; docs/performance.md)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="default auto (GPU if any)")
    p.add_argument("--tta", action="store_true",
                   help="test-time augmentation: average 5 geography-safe views (no flips); 5x slower")
    p.add_argument("--refine", choices=("auto", "on", "off"), default="auto",
                   help="refinement inside the predicted cells (a gallery of training images that 06_evaluation "
                        "saves beside the checkpoint, or that `geopak export --with-gallery` puts in a model "
                        "folder): auto (default) uses it when 06 found that it improved the validation median; "
                        "on uses it whenever the gallery exists (exit 2 without one); off never")
    p.add_argument("--top", type=int, default=3, help="hypotheses per row in the CSV (default 3)")
    p.add_argument("--group-by", metavar="folder|COLUMN",
                   help="one prediction per place: 'folder' (each sub-folder is a place) or a column of the input CSV")
    p.add_argument("--combine", choices=COMBINE, default=DEFAULT_COMBINE,
                   help=f"how --group-by combines a place's photos (default {DEFAULT_COMBINE}; "
                        "docs/decisions/ensemble.md)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=func)
    return p


def find_images(inputs) -> tuple[list[str], list[tuple[str, str]]]:
    """Expand inputs -> (files in a stable order, [(path, reason)] for everything else, each of which
    gets an error row). Folders are searched recursively for IMAGE_EXTENSIONS (case-insensitive);
    other files in them, looping links and links to folders are listed with why (scan_folder); a
    file named explicitly is kept whatever its extension; a missing path is a problem."""
    files, problems = [], []
    for item in map(str, inputs):
        if os.path.isdir(item):
            found, skipped = scan_folder(item, IMAGE_EXTENSIONS)
            files, problems = files + found, problems + skipped
        elif os.path.exists(item):
            files.append(item)
        else:
            problems.append((item, "broken or looping symbolic link" if os.path.islink(item) else "file not found"))
    return files, problems


def results_table(records: list[dict], top: int = 3) -> pd.DataFrame:
    """Records of GeopakPredictor.predict_many -> the CSV columns, in order (see DESCRIPTION)."""
    return prediction_table(records, BASE_COLUMNS, ("error",), top)


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
    if args.group_by:
        groups, problem = find_groups(args.inputs, args.group_by, IMAGE_EXTENSIONS)
        files, missing = [], []
    else:
        files, missing = find_images(args.inputs)
        problem = "" if files or any(why == "file not found" for _, why in missing) else \
            f"no image files ({' '.join(IMAGE_EXTENSIONS)}) found in {' '.join(args.inputs)}" + \
            (f" ({len(missing)} other entries skipped, e.g. {missing[0][0]}: {missing[0][1]})" if missing else "")
    if problem:
        err(problem)
        return 2
    refine = {"auto": "auto", "on": True, "off": False}[args.refine]
    if len(args.model or args.checkpoint) > 1 and args.refine == "on":
        err("--refine on works with one --checkpoint or --model: each refinement gallery fits one model")
        return 2
    try:
        if args.model:
            predictor = GeopakPredictor.from_pretrained(args.model[0] if len(args.model) == 1 else args.model,
                                                        device=args.device, tta=args.tta, refine=refine)
        else:
            predictor = GeopakPredictor.from_checkpoint(
                args.checkpoint[0] if len(args.checkpoint) == 1 else args.checkpoint,
                device=args.device, tta=args.tta, refine=refine)
    except (FileNotFoundError, ValueError) as exc:
        err(str(exc))
        return 2
    for w in predictor.warnings:
        err(f"warning: {w}")
    err(f"refinement: {predictor.info.get('refinement', 'off (ensembles are not refined)')}")
    if args.group_by:
        return write_groups(args, predictor, groups, err)
    workers = args.workers
    if workers is None:
        workers = min(8, max(1, (os.cpu_count() or 2) - 1)) if predictor.device.type == "cuda" else 0
    workers = workers if len(files) > args.batch_size else 0  # a pool costs more than a batch
    batches = predictor.iter_predictions(files, args.batch_size, progress=not args.no_progress, num_workers=workers)
    missing_rows = [[{"image": m, "error": why} for m, why in missing]] if missing else []
    total, failed = write_streamed(args, _tables(batches, missing_rows, args.top))
    out = Path(args.out)
    print(f"{total - failed} of {total} files predicted -> {out}"
          + (f" and {args.geojson}" if args.geojson else ""))
    if failed:
        err(f"{failed} file(s) could not be read; their rows in {out} say why")
    return 1 if failed else 0


def _tables(batches, extra, top: int):
    for records in batches:
        yield results_table(records, top)
    for records in extra:
        yield results_table(records, top)


def write_streamed(args, tables) -> tuple[int, int]:
    """Write each batch's table as it comes: CSV rows appended, GeoJSON features streamed, so
    memory does not grow with the number of images. -> (rows, rows with an error)."""
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    gj = None
    if args.geojson:
        Path(args.geojson).parent.mkdir(parents=True, exist_ok=True)
        gj = open(args.geojson, "w")
        gj.write('{"type": "FeatureCollection", "features": [')
    total = failed = 0
    with open(out, "w", newline="") as csv:
        for table in tables:
            table.to_csv(csv, index=False, header=total == 0, float_format="%.8g")  # lat/lon to ~1e-6 degrees
            if gj is not None:
                feats = geojson(table)["features"]
                gj.write(("," if total else "") + ",".join("\n" + json.dumps(f) for f in feats))
            total += len(table)
            failed += int((table["error"] != "").sum())
    if gj is not None:
        gj.write("\n]}\n")
        gj.close()
    return total, failed


def write_groups(args, predictor, groups: dict, err) -> int:
    """--group-by: one row per place -> CSV (and GeoJSON). Exit 1 when a file or a place failed."""
    table = group_table(predict_groups(predictor, groups, args.combine, not args.no_progress), args.top)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False, float_format="%.8g")
    if args.geojson:
        Path(args.geojson).parent.mkdir(parents=True, exist_ok=True)
        Path(args.geojson).write_text(json.dumps(geojson(table), indent=1))
    failed, partial = int((table["error"] != "").sum()), int((table["failed_images"] != "").sum())
    print(f"{len(table) - failed} of {len(table)} places predicted -> {out}"
          + (f" and {args.geojson}" if args.geojson else ""))
    if failed or partial:
        err(f"{failed} place(s) could not be predicted and {partial} place(s) had unreadable files; "
            f"their rows in {out} say which")
    return 1 if failed or partial else 0
