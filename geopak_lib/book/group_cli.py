"""``geopak predict --group-by``: several photos of one place -> one CSV row per place.

``--group-by folder``: every sub-folder of a folder given on the command line is one place (its
images are searched recursively); image files lying directly in that folder form one more place,
named after the folder. ``--group-by COLUMN``: the one input is a CSV with an ``image`` column
(paths relative to the CSV's folder, or absolute) and COLUMN, whose value names the place.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from geopak_lib.data.images import printable_name

# The columns a prediction writes, per image (predict_cli) or per place (here).
PREDICTION_COLUMNS = ("lat", "lon", "province", "confidence", "radius_km", "radius_calibrated", "place", "district",
                      "place_province", "place_km")
CONCEPT_COLUMNS = ("climate", "climate_p", "land_cover", "land_cover_p")  # empty for a model without concept heads
HYP_FIELDS = ("province", "lat", "lon", "weight")
GROUP_COLUMNS = ("group", "n_images", *PREDICTION_COLUMNS)


def _image_files(folder: Path, extensions) -> list[str]:
    return sorted(str(p) for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in extensions)


def folder_groups(inputs, extensions) -> tuple[dict, str]:
    """Folders -> ({place name: [image paths]}, problem ('' when none)). A place is a sub-folder
    (named folder/sub); loose images in a given folder are one place named after the folder."""
    groups = {}
    for item in map(Path, inputs):
        if not item.is_dir():
            return {}, f"--group-by folder takes folders whose sub-folders are places; {item} is not a folder"
        loose = sorted(str(p) for p in item.iterdir() if p.is_file() and p.suffix.lower() in extensions)
        if loose:
            groups[str(item)] = loose
        for sub in sorted(p for p in item.iterdir() if p.is_dir()):
            files = _image_files(sub, extensions)
            if files:
                groups[str(sub)] = files
    if not groups:
        return {}, f"no image files ({' '.join(extensions)}) found in {' '.join(map(str, inputs))}"
    return groups, ""


def column_groups(inputs, column: str) -> tuple[dict, str]:
    """A CSV listing images -> ({value of COLUMN: [image paths]}, problem ('' when none))."""
    if len(inputs) != 1 or Path(inputs[0]).suffix.lower() != ".csv":
        return {}, (f"--group-by {column} needs exactly one CSV listing the images (columns image and {column}); "
                    f"got {' '.join(map(str, inputs))} (use --group-by folder for folders of places)")
    path = Path(inputs[0])
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError) as exc:
        return {}, f"cannot read {path}: {exc}"
    missing = [c for c in ("image", column) if c not in table.columns]
    if missing:
        return {}, f"{path} has no column {', '.join(map(repr, missing))} (its columns: {', '.join(table.columns)})"
    blank = table.index[(table["image"] == "") | (table[column] == "")]
    if len(blank):
        return {}, f"{path} row {int(blank[0]) + 2}: empty image or {column} value"
    groups = {}
    for image, place in zip(table["image"], table[column]):
        groups.setdefault(place, []).append(str(Path(image) if Path(image).is_absolute() else path.parent / image))
    return groups, ""


def find_groups(inputs, group_by: str, extensions) -> tuple[dict, str]:
    return folder_groups(inputs, extensions) if group_by == "folder" else column_groups(inputs, group_by)


def predict_groups(predictor, groups: dict, combine: str | None = None, progress: bool = True) -> list[dict]:
    """One record per place: the predict_group result plus group, failed_images ('path: reason; ...')
    and error (set when no photo of the place could be read; then no prediction keys)."""
    records = []
    for name, files in tqdm(groups.items(), desc="places", unit="place", disable=not progress):
        try:
            r = predictor.predict_group(files, combine)
        except ValueError as exc:
            records.append({"group": name, "n_images": 0, "failed_images": "", "error": str(exc)})
            continue
        failed = "; ".join(f"{k}: {v}" for k, v in r["failed"].items())
        records.append({**r, "group": name, "failed_images": failed, "error": ""})
    return records


def prediction_table(records: list[dict], lead: tuple, tail: tuple, top: int = 3) -> pd.DataFrame:
    """Prediction records -> one CSV row each: the ``lead`` columns, hyp<k>_<field> of the ``top``
    best hypotheses, CONCEPT_COLUMNS, then the ``tail`` columns (missing values empty)."""
    hyp_cols = [f"hyp{k}_{f}" for k in range(1, top + 1) for f in HYP_FIELDS]
    rows = []
    for r in records:
        row = {c: r.get(c) for c in (*lead, *CONCEPT_COLUMNS)}
        for k, h in enumerate(r.get("hypotheses", [])[:top], 1):
            row.update({f"hyp{k}_{f}": h[f] for f in HYP_FIELDS})
        row.update({c: r.get(c, "") for c in tail})
        # a non-UTF-8 file name (surrogate escapes) would stop the CSV writer after every image ran
        rows.append({k: printable_name(v) if isinstance(v, str) else v for k, v in row.items()})
    return pd.DataFrame(rows, columns=[*lead, *hyp_cols, *CONCEPT_COLUMNS, *tail])


def group_table(records: list[dict], top: int = 3) -> pd.DataFrame:
    """Records of predict_groups -> the CSV: GROUP_COLUMNS, hyp<k>_<field>, CONCEPT_COLUMNS,
    failed_images, error."""
    return prediction_table(records, GROUP_COLUMNS, ("failed_images", "error"), top)
