"""``geopak evaluate``: score a trained checkpoint or a model folder on a labelled table.

Writes into --out: metrics.json, predictions.csv (one row per valid table row), per_province.csv,
urban_rural.csv, rejects.csv (validate's reasons) and report.html (one self-contained page with the
error map and the tables). Exit codes: 0 every row scored; 1 some rows rejected or unreadable (the
rejects and the predictions' ``error`` column say why); 2 a user mistake (missing file, not a model).
"""

from __future__ import annotations

import html
import json
import math
import sys
from pathlib import Path

from geopak_lib.book.figures import error_map
from geopak_lib.book.report import MAP_MAX_POINTS, add_map_note, map_html
from geopak_lib.data.validate import DatasetError
from geopak_lib.inference.labelled import BLOCK_KM
from geopak_lib.inference.predictor import GeopakPredictor

DESCRIPTION = """\
Score a model on a labelled table it was not trained on: the metrics of notebook 06 (median, mean
and p90 error, accuracy within 1/5/25/200/750 km, province accuracy; per province, urban/rural,
district), each headline with its 95% block-bootstrap interval over geographic blocks of
--block-km (photos of one place are not independent).

MODEL is a checkpoint (best.pt, e.g. "$(cat runs/demo/final_checkpoint.txt)") or a model folder from
`geopak export`. The table (CSV or Parquet: id, image, latitude, longitude, province; province may
be blank) goes through the same checks as `geopak validate`: bad rows are listed in rejects.csv
with their reasons, never dropped silently.

example:
  geopak evaluate shared_model/ --table new_photos.csv --images new_photos/ --out eval_new/
exit codes: 0 every row scored, 1 some rows rejected or unreadable, 2 a user mistake
"""


def add_parser(sub) -> None:
    import argparse

    p = sub.add_parser("evaluate", help="score a model on a labelled table (metrics, intervals, map)",
                       formatter_class=argparse.RawDescriptionHelpFormatter, description=DESCRIPTION)
    p.add_argument("model", help="a checkpoint (best.pt) or an exported model folder")
    p.add_argument("--table", required=True, help="labelled table, .csv or .parquet")
    p.add_argument("--images", required=True, help="folder the table's 'image' column is relative to")
    p.add_argument("--out", required=True, help="folder to write the metrics, tables and report.html into")
    p.add_argument("--block-km", type=float, default=BLOCK_KM, help=f"bootstrap block side (default {BLOCK_KM:g})")
    p.add_argument("--batch-size", type=int, default=32, help="images per batch (default 32)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    p.add_argument("--refine", choices=("auto", "on", "off"), default="auto",
                   help="refinement inside the cells: as the model says (auto), always, never")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def load_predictor(model: Path, device: str, refine) -> GeopakPredictor:
    if model.is_dir():
        return GeopakPredictor.from_pretrained(model, device=device, refine=refine)
    return GeopakPredictor.from_checkpoint(model, device=device, refine=refine)


def run(args) -> int:
    err = lambda msg: print(f"geopak evaluate: {msg}", file=sys.stderr)  # noqa: E731
    model, table, images = Path(args.model), Path(args.table), Path(args.images)
    for path, what in ((model, "model"), (table, "table"), (images, "image folder")):
        if not path.exists():
            err(f"{what} {path} does not exist")
            return 2
    if args.batch_size < 1 or not args.block_km > 0:
        err("--batch-size must be >= 1 and --block-km > 0")
        return 2
    try:
        predictor = load_predictor(model, args.device, {"auto": "auto", "on": True, "off": False}[args.refine])
    except (FileNotFoundError, ValueError) as exc:
        err(str(exc))
        return 2
    for w in predictor.warnings:
        err(f"warning: {w}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        result = predictor.evaluate(table, images, block_km=args.block_km, batch_size=args.batch_size,
                                    progress=not args.no_progress)
    except DatasetError as exc:
        err(str(exc))
        return 2
    write_outputs(result, out, title=f"{model.name or model}: evaluated on {table.name}")
    m = result.metrics
    scored = m["n"]
    print(f"{scored} images scored -> {out}/ (metrics.json, predictions.csv, per_province.csv, report.html)")
    print(headline_text(m))
    problems = m["n_rejected"] + m["n_unreadable"]
    if problems:
        err(f"{m['n_rejected']} row(s) rejected (rejects.csv) and {m['n_unreadable']} image(s) unreadable "
            "(predictions.csv, column error)")
    return 1 if problems else 0


def _fmt(value, share: bool) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{100 * value:.1f}%" if share else f"{value:.1f} km"


def headline_text(m: dict) -> str:
    """One line per headline figure with its 95% interval."""
    lines = []
    for key, label, share in (("median_km", "median error", False), ("p90_km", "p90 error", False),
                              ("acc_25km", "within 25 km", True), ("acc_200km", "within 200 km", True),
                              ("province_acc", "province accuracy", True)):
        lo, hi = m.get("ci95", {}).get(key, (float("nan"), float("nan")))
        lines.append(f"  {label}: {_fmt(m.get(key), share)} [95%: {_fmt(lo, share)}, {_fmt(hi, share)}]")
    return "\n".join(lines)


def _json_safe(obj):
    if isinstance(obj, float):
        return None if math.isnan(obj) or math.isinf(obj) else obj
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def write_outputs(result, out: Path, title: str) -> None:
    (out / "metrics.json").write_text(json.dumps(_json_safe(result.metrics), indent=1))
    result.predictions.to_csv(out / "predictions.csv", index=False, float_format="%.8g")
    result.per_province.to_csv(out / "per_province.csv", index=False)
    result.settings.to_csv(out / "urban_rural.csv", index=False)
    result.rejects.to_csv(out / "rejects.csv", index=False)
    (out / "report.html").write_text(report_page(result, title), encoding="utf-8")


def report_page(result, title: str) -> str:
    """One self-contained page: the headline with intervals, the error map (sampled above
    MAP_MAX_POINTS points, said on the map) and the tables. Every dataset string is escaped."""
    ok = result.predictions[result.predictions["error"] == ""]
    shown = ok if len(ok) <= MAP_MAX_POINTS else ok.sample(MAP_MAX_POINTS, random_state=0)
    m = error_map(shown, title="error")
    add_map_note(m, len(shown), len(ok), "images")
    page = html.escape(map_html(m))
    tables = [("Per province", result.per_province), ("Urban / rural", result.settings)]
    if len(result.rejects):
        tables.append(("Rejected rows (first 200)", result.rejects.head(200)))
    body = "".join(f"<h2>{html.escape(name)}</h2>{t.to_html(index=False, float_format='%.3f', escape=True)}"
                   for name, t in tables if len(t))
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            "<style>body{font:14px sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:2px 6px}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><pre>{html.escape(headline_text(result.metrics))}</pre>"
            f"<p>{result.metrics['n']} images scored in {result.metrics['n_blocks']} blocks of "
            f"{result.metrics['block_km']:g} km; {result.metrics['n_rejected']} rows rejected, "
            f"{result.metrics['n_unreadable']} unreadable. District accuracy: "
            f"{_fmt(result.metrics.get('district_acc'), True)} of {result.metrics.get('district_n', 0)} images.</p>"
            f"<iframe srcdoc=\"{page}\" style='width:100%;height:540px;border:1px solid #ccc' "
            "sandbox='allow-scripts'></iframe>"
            f"{body}</body></html>")
