"""The ``geopak`` command: the work that happens outside notebooks.

Each subcommand calls the same library functions the notebooks use.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from geopak_lib.book import predict_cli
from geopak_lib.book.demo import build_demo_dataset
from geopak_lib.book.model_card import model_card
from geopak_lib.book.runner import ProfileError, main_book, main_site
from geopak_lib.data.stamps import StaleInputError
from geopak_lib.data.validate import DatasetError, validate_dataset, write_validation
from geopak_lib.evaluation.export import export_model

# Exit codes of every subcommand (README "Exit codes", docs/decisions/sharing.md).
EXIT_OK, EXIT_REJECTS, EXIT_USER, EXIT_INTERNAL = 0, 1, 2, 3

DESCRIPTION = """\
GEOPAK book: province-aware hierarchical image geolocation for Pakistan.

subcommands:
  demo       build the demo dataset (aerial and terrain crops from NASA imagery around real towns)
  validate   check a dataset (CSV/Parquet + image folder); write a manifest and a rejects table
  book       run the numbered notebooks headless with a profile from params/, render HTML reports
  site       rebuild the book site (reports/PROFILE/site/index.html) from a run's executed notebooks
  predict    predict lat/lon for images with a trained checkpoint or an exported model folder
  export     write a checkpoint as a shareable model folder (safetensors + config.json + model card)

Run `geopak SUBCOMMAND --help` for the options of each.
"""


def _cmd_demo(args) -> int:
    csv = build_demo_dataset(Path(args.out), n_images=args.n, seed=args.seed, poor_share=args.poor_share,
                             image_size=args.image_size, overwrite=args.overwrite)
    print(f"demo dataset: {csv}")
    return 0


def _cmd_validate(args) -> int:
    table = Path(args.table)
    if not table.exists():
        print(f"geopak validate: dataset table {table} does not exist", file=sys.stderr)
        return 2
    if not Path(args.images).is_dir():
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

    p = sub.add_parser("validate", help="check a dataset and write manifest + rejects",
                       description="Validate a dataset table (CSV or Parquet with id, image, latitude, "
                                   "longitude, province) against its image folder. Writes manifest.csv (valid "
                                   "rows) and rejects.csv (one row per problem, with id, row and reason) into "
                                   "--out. Exit code 0: nothing rejected; 1: some rows rejected; 2: bad "
                                   "arguments.")
    p.add_argument("table", help="the dataset table, .csv or .parquet")
    p.add_argument("--images", required=True, help="folder the 'image' column is relative to")
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
                                   "reports/<profile>/site/index.html (see `geopak site --help`).")
    p.add_argument("profile", help="profile name in params/ (smoke, demo, full) or a YAML path")
    p.add_argument("--only", help="comma-separated notebook names to run, e.g. 00_data_audit,01_geocells")
    p.add_argument("--start", help="start from this notebook, e.g. 02_phase0_province")
    p.set_defaults(func=_cmd_book)

    p = sub.add_parser("site", help="rebuild the book site from a run's executed notebooks",
                       description="Build the book as a website from the executed notebooks of the profile's "
                                   "last run (<run_dir>/notebooks/), without running anything: a landing page "
                                   "with the run manifest and the test headline, one page per notebook, a "
                                   "sidebar, previous/next links and search. Open reports/<profile>/site/"
                                   "index.html in a browser; it needs no server and no network. `geopak book` "
                                   "builds it after a whole-book run; this rebuilds it alone (after `geopak book "
                                   "--only ...`, say).")
    p.add_argument("profile", help="profile name in params/ (smoke, demo, full) or a YAML path")
    p.set_defaults(func=_cmd_site)

    predict_cli.add_parser(sub, predict_cli.run)

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
    except (DatasetError, ProfileError, StaleInputError) as exc:  # a user's table, profile or run: one line
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
