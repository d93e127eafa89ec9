"""The ``geopak`` command: the work that happens outside notebooks.

Each subcommand calls the same library functions the notebooks use.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from geopak_lib.book import evaluate_cli, predict_cli
from geopak_lib.book.demo import build_demo_dataset
from geopak_lib.book.model_card import model_card
from geopak_lib.book.runner import UNDER_HELP, ProfileError, main_book, main_site
from geopak_lib.data.stamps import StaleInputError
from geopak_lib.data.validate import DatasetError, validate_dataset, write_validation
from geopak_lib.inference.model_folder import export_model
from geopak_lib.utils import BadFileError

# Exit codes of every subcommand (README "Exit codes", docs/decisions/sharing.md).
EXIT_OK, EXIT_REJECTS, EXIT_USER, EXIT_INTERNAL = 0, 1, 2, 3

DESCRIPTION = """\
GEOPAK book: province-aware hierarchical image geolocation for Pakistan.

subcommands:
  demo       build the demo dataset (aerial and terrain crops from NASA imagery around real towns)
  ingest     turn a folder of geotagged photos (GPS in EXIF: JPEG, PNG, WEBP, HEIC) into a dataset table
  validate   check a dataset (CSV/Parquet + image folder); write a manifest and a rejects table
  book       run the numbered notebooks headless with a profile from params/, render HTML reports
  params     print one notebook's parameters under a profile, for papermill -f (or write nbval copies)
  site       rebuild the book site (reports/PROFILE/site/index.html) from a run's executed notebooks
  predict    predict lat/lon for images with a trained checkpoint or an exported model folder
  evaluate   score a checkpoint or model folder on a labelled table: metrics with intervals, map, CSVs
  export     write a checkpoint as a shareable model folder (safetensors + config.json + model card)

Run `geopak SUBCOMMAND --help` for the options of each.
"""


def _cmd_demo(args) -> int:
    bad = [msg for ok, msg in ((args.n >= 1, f"--n must be >= 1, got {args.n}"),
                               (args.image_size >= 16, f"--image-size must be >= 16 pixels, got {args.image_size}"),
                               (0 <= args.poor_share <= 1, f"--poor-share must be in [0, 1], got {args.poor_share}"))
           if not ok]
    if bad:
        print(f"geopak demo: {'; '.join(bad)}", file=sys.stderr)
        return 2
    try:  # an --out that cannot be made fails here, in one line, before any image is drawn
        Path(args.out).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        print(f"geopak demo: cannot create --out {args.out} ({e.strerror or e}); choose another folder",
              file=sys.stderr)
        return 2
    csv = build_demo_dataset(Path(args.out), n_images=args.n, seed=args.seed, poor_share=args.poor_share,
                             image_size=args.image_size, overwrite=args.overwrite)
    print(f"demo dataset: {csv}")
    return 0


INGEST_DESCRIPTION = """\
Turn a folder of geotagged photos into the dataset table `geopak validate` takes.

Walks PHOTOS (nested folders too), reads the GPS position from each file's EXIF (JPEG, PNG, WEBP,
HEIC/HEIF; no pixels are decoded) and writes --out (id, image, latitude, longitude, province) with
one row per photo that has a position. Every other file is listed with its reason in
<out>_rejects.csv beside it (no GPS, not an image, a name that is not UTF-8, ...): nothing is
dropped silently. The province column is left empty: `geopak validate` fills it from the province
polygons. Ids are the relative paths with folders joined by "__" (the extension kept).

example:
  geopak ingest ~/photos/pakistan --out data/mine/table.csv
  geopak validate data/mine/table.csv --images ~/photos/pakistan --out runs/mine
exit codes: 0 every file gave a row, 1 some files are listed in the rejects, 2 PHOTOS is not a folder
"""


def _cmd_ingest(args) -> int:
    import pandas as pd

    from geopak_lib.data.ingest import ingest_folder, write_ingest

    photos = Path(args.photos)
    if not photos.is_dir():
        print(f"geopak ingest: {photos} is not a folder; give the folder that holds the photos", file=sys.stderr)
        return EXIT_USER
    result = ingest_folder(photos, progress=not args.quiet)
    table, rejects = write_ingest(result, args.out)
    print(f"{len(result.table)} photos with a GPS position -> {table}")
    print(f"{len(result.rejects)} files without a usable position -> {rejects}")
    if len(result.rejects):
        with pd.option_context("display.max_colwidth", 90, "display.width", 200):
            print(result.summary().to_string(index=False))
    if len(result.table):
        print(f"next: geopak validate {table} --images {photos} --out runs/<name>   (fills the province)")
    return EXIT_REJECTS if len(result.rejects) else EXIT_OK


def _cmd_validate(args) -> int:
    table = Path(args.table)
    if not table.exists():
        print(f"geopak validate: dataset table {table} does not exist", file=sys.stderr)
        return 2
    if args.images is not None and not Path(args.images).is_dir():
        print(f"geopak validate: image folder {args.images} does not exist", file=sys.stderr)
        return 2
    if table.is_dir():
        print(f"geopak validate: {table} is a folder; give the dataset table (.csv or .parquet) and the "
              "image folder with --images", file=sys.stderr)
        return 2
    Path(args.out).mkdir(parents=True, exist_ok=True)  # an --out that cannot be made fails before the long part
    result = validate_dataset(table, args.images, check_images=not args.skip_images)
    paths = write_validation(result, args.out)
    n_bad = result.rejects["row"].nunique() if len(result.rejects) else 0
    print(f"{len(result.manifest)} valid rows -> {paths['manifest']}")
    print(f"{n_bad} rows rejected ({len(result.rejects)} problems) -> {paths['rejects']}")
    if len(result.rejects):
        print(result.summary().to_string(index=False))
    return 1 if len(result.rejects) else 0


def _cmd_book(args) -> int:
    return main_book(args)


PARAMS_DESCRIPTION = """\
Print the parameters `geopak book PROFILE` injects into one notebook, as the flat YAML that
papermill's -f takes. A profile file itself is not such a file: it has two sections (common,
notebooks), and every notebook stops with one line on a parameter it does not declare.

examples:
  geopak params demo 01_geocells > p.yaml
  papermill notebooks/01_geocells.ipynb out.ipynb -f p.yaml      # runs on the demo's run folder
  geopak params demo --notebooks-to .tmp/nbval/demo                # nbval copies (make nbval PROFILE=demo)
  geopak params smoke --notebooks-to /tmp/t/nbval --under /tmp/t    # nbval on a run in /tmp/t (make test)
"""


def _cmd_params(args) -> int:
    from geopak_lib.book.params import main_params

    return main_params(args)


def _cmd_site(args) -> int:
    return main_site(args)


EXPORT_DESCRIPTION = """\
Write a trained checkpoint as one folder that `geopak predict --model DIR` and
GeopakPredictor.from_pretrained(DIR) load with nothing else:

  model.safetensors  the heads, plus the encoder tensors its spec cannot rebuild (fine-tuned blocks,
                     random weights, local weight files); every encoder tensor with --include-encoders
  config.json        model configuration, geocells, encoder specs and preprocessing, provinces, the
                     calibration and test summary of 06_evaluation, and the sha256 of the weights
  README.md          a model card: data, test figures per province, weight status, use, licences
  gallery.npz        only with --with-gallery: the refinement gallery of 06_evaluation (plain arrays:
                     each training image's embedding and latitude/longitude), so that the folder
                     refines its predictions as the checkpoint does. It reveals where the training
                     photos were taken: leave it out where those positions are not yours to share.

A calibration, summary or gallery made from another checkpoint is refused. Loading checks the sha256.

example:
  geopak export "$(cat runs/demo/final_checkpoint.txt)" --out shared_model/ --with-gallery
  geopak predict photos/ --model shared_model/ --out predictions.csv
"""


def _cmd_export(args) -> int:
    checkpoint = Path(args.checkpoint)
    try:
        config = export_model(checkpoint, args.out, args.include_encoders, args.with_gallery)
    except (FileNotFoundError, ValueError) as exc:
        print(f"geopak export: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"geopak export: cannot write {args.out} ({exc.strerror})", file=sys.stderr)
        return 2
    run_dir = args.run_dir or (checkpoint.resolve().parents[2] if len(checkpoint.resolve().parents) > 2 else None)
    (Path(args.out) / "README.md").write_text(model_card(config, run_dir), encoding="utf-8")
    size = (Path(args.out) / "model.safetensors").stat().st_size / 1e6
    print(f"model folder {args.out}: model.safetensors ({size:.1f} MB), config.json, README.md")
    for slot, e in config["encoders"].items():
        print(f"  {slot}: {e['spec']} ({e['weight_status']}); weights in file: {e['weights_in_file']}")
    if config["calibration"] is None:
        print("  no calibration beside the checkpoint: run 06_evaluation first for a calibrated radius_km")
    if config["refinement"]:
        print(f"  gallery.npz: {config['refinement']['n_items']:,} training images (embeddings and positions); "
              f"refinement {'on' if config['refinement']['default'] else 'off'} by default")
    else:
        print("  no refinement gallery (--with-gallery adds it): predictions from this folder are not refined")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="geopak", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="exit codes: 0 ok, 1 some inputs rejected, 2 a user mistake, "
                                            "3 an internal error (GEOPAK_DEBUG=1 or --debug: the traceback)")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an internal error")
    sub = parser.add_subparsers(dest="command", metavar="SUBCOMMAND")

    p = sub.add_parser("demo", help="build the demo dataset",
                       description="Build the demo dataset: samples.csv (id, image, latitude, longitude, "
                                   "province) and an images/ folder of JPEGs cut from NASA Blue Marble and "
                                   "shaded relief around real Pakistani towns. Aerial and terrain crops, not "
                                   "street photos. The same seed and size give the same bytes.")
    p.add_argument("--out", default="data/demo", help="output folder (default: data/demo)")
    p.add_argument("--n", type=int, default=3000, help="number of images (demo 3000, smoke 400)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--poor-share", type=float, default=0.15,
                   help="share of scenery-poor images: tight zoom, blur or occlusion (default 0.15)")
    p.add_argument("--image-size", type=int, default=224, help="image side in pixels (default 224)")
    p.add_argument("--overwrite", action="store_true", help="rebuild even if a complete dataset exists")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("ingest", help="make a dataset table from geotagged photos (EXIF GPS)",
                       formatter_class=argparse.RawDescriptionHelpFormatter, description=INGEST_DESCRIPTION)
    p.add_argument("photos", help="folder of photos (searched recursively)")
    p.add_argument("--out", required=True, help="the table to write, e.g. data/mine/table.csv")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_ingest)

    p = sub.add_parser("validate", help="check a dataset and write manifest + rejects",
                       description="Validate a dataset table (CSV or Parquet with id, image, latitude, "
                                   "longitude, province; province may be empty: it is filled from the "
                                   "coordinates) against its image folder. A Hugging Face Parquet whose image "
                                   "column is a struct {bytes, path} is read as it is, without unpacking. Writes manifest.csv (valid "
                                   "rows) and rejects.csv (one row per problem, with id, row and reason) into "
                                   "--out. Exit code 0: nothing rejected; 1: some rows rejected; 2: bad "
                                   "arguments.")
    p.add_argument("table", help="the dataset table, .csv or .parquet")
    p.add_argument("--images", help="folder the 'image' column is relative to (not needed for a Hugging Face "
                                    "Parquet whose image column holds the bytes)")
    p.add_argument("--out", required=True, help="folder to write manifest.csv and rejects.csv into")
    p.add_argument("--skip-images", action="store_true", help="do not open images (faster, less safe)")
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("book", help="run the notebooks with a profile",
                       description="Run the numbered notebooks in notebooks/ in order, headless via papermill, "
                                   "with a profile from params/ (e.g. smoke, demo, full, or a path to a YAML "
                                   "file). Every profile key is checked against the notebooks' parameters "
                                   "first. Builds the profile's demo dataset if it is missing. Executed "
                                   "notebooks go to <run_dir>/notebooks/, HTML reports to reports/<profile>/ and, when the run "
                                   "reaches the last notebook (no --only), the book site to "
                                   "reports/<profile>/site/index.html (see `geopak site --help`); with --under "
                                   "DIR, all of it, the feature cache and the demo dataset go under DIR.")
    p.add_argument("profile", help="profile name in params/ (smoke, demo, full) or a YAML path")
    p.add_argument("--only", help="comma-separated notebook names to run, e.g. 00_data_audit,01_geocells")
    p.add_argument("--start", help="start from this notebook, e.g. 02_phase0_province")
    p.add_argument("--under", metavar="DIR", help=UNDER_HELP)
    p.set_defaults(func=_cmd_book)

    p = sub.add_parser("params", help="one notebook's parameters under a profile, for papermill -f",
                       formatter_class=argparse.RawDescriptionHelpFormatter, description=PARAMS_DESCRIPTION)
    p.add_argument("profile", help="profile name in params/ (smoke, demo, full) or a YAML path")
    p.add_argument("notebook", nargs="?", help="notebook, e.g. 01_geocells, 01 or notebooks/01_geocells.ipynb")
    p.add_argument("--notebooks-to", metavar="DIR",
                   help="instead: write every notebook with the profile's values injected (not run) into DIR")
    p.add_argument("--under", metavar="DIR", help="the values of `geopak book PROFILE --under DIR`")
    p.set_defaults(func=_cmd_params)

    p = sub.add_parser("site", help="rebuild the book site from a run's executed notebooks",
                       description="Build the book as a website from the executed notebooks of the profile's "
                                   "last run (<run_dir>/notebooks/), without running anything: a landing page "
                                   "with the run manifest and the test headline, one page per notebook, a "
                                   "sidebar, previous/next links and search. Open reports/<profile>/site/"
                                   "index.html in a browser; it needs no server and no network. `geopak book` "
                                   "builds it after a whole-book run; this rebuilds it alone (after `geopak book "
                                   "--only ...`, say).")
    p.add_argument("profile", help="profile name in params/ (smoke, demo, full) or a YAML path")
    p.add_argument("--under", metavar="DIR", help="the run of `geopak book PROFILE --under DIR`; the site "
                                                 "goes to DIR/reports/<profile>/site/")
    p.set_defaults(func=_cmd_site)

    predict_cli.add_parser(sub, predict_cli.run)
    evaluate_cli.add_parser(sub)

    p = sub.add_parser("export", help="write a checkpoint as a shareable model folder",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description=EXPORT_DESCRIPTION)
    p.add_argument("checkpoint", help="a best.pt, e.g. \"$(cat runs/demo/final_checkpoint.txt)\"")
    p.add_argument("--out", required=True, help="folder to write (created; files in it are replaced)")
    p.add_argument("--include-encoders", action="store_true",
                   help="copy every encoder tensor, not only those its spec cannot rebuild")
    p.add_argument("--with-gallery", action="store_true",
                   help="add the refinement gallery that 06_evaluation saved beside the checkpoint (gallery.npz): "
                        "the embedding and the latitude/longitude of every training image. It makes predictions "
                        "from the folder refined as from the checkpoint; share it only where those positions "
                        "may be shared")
    p.add_argument("--run-dir", help="the run folder, for the model card's data section "
                                     "(default: the folder three levels above the checkpoint)")
    p.set_defaults(func=_cmd_export)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except (DatasetError, ProfileError, BadFileError, StaleInputError) as exc:  # a user's table, profile, run or damaged file
        print(f"geopak {args.command}: {exc}", file=sys.stderr)
    except (PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError) as exc:  # an --out not writable
        print(f"geopak {args.command}: cannot write {exc.filename}: {exc.strerror}; choose another --out",
              file=sys.stderr)
    except KeyboardInterrupt:
        print(f"geopak {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERNAL
    except Exception as exc:  # noqa: BLE001 - a traceback never stands in for a message
        if args.debug or os.environ.get("GEOPAK_DEBUG") == "1":
            raise
        print(f"geopak {args.command}: {type(exc).__name__}: {exc}; internal error, please report "
              f"(GEOPAK_DEBUG=1 or --debug shows the traceback)", file=sys.stderr)
        return EXIT_INTERNAL
    return EXIT_USER


if __name__ == "__main__":
    sys.exit(main())
