"""Dataset reading and validation into a manifest + rejects + fixes (image loading: images.py).

A dataset is a table (CSV or Parquet) with columns ``id, image, latitude, longitude, province``
(``image`` relative to an image folder). :func:`validate_dataset` checks every row and returns

- ``manifest``: one row per valid sample, columns :data:`MANIFEST_COLUMNS` minus ``split, block_id``
  (added by :func:`geopak_lib.data.splits.spatial_block_split`);
- ``rejects``: one row per (rejected row, reason): ``id, row, reason, detail`` + source columns,
  where ``row`` is the 1-based data row (row 1 = the first row after a CSV header);
- ``fixes``: one row per value changed or waived on a kept row: ``id, row, column, original,
  value, rule``.

What happens to each kind of problem, and why, is :data:`REJECT_POLICY` (print it with
:func:`policy_table`). In short: rows with a bad id, image, coordinate or province are dropped,
with every reason recorded; province spellings and aliases are fixed, a missing province is
filled from the polygons, and both are recorded; duplicate images (same sha1) are only reported.
Nothing is dropped or changed without a row in ``rejects`` or ``fixes``.
"""

from __future__ import annotations

import csv
import re
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from geopak_lib.constants import PROVINCE_ID, PROVINCES
from geopak_lib.data.ids import ID_POLICY, id_problems
from geopak_lib.geo import KM_PER_DEG_LAT, locate_province, province_shapes
from geopak_lib.data.embedded import EMBEDDED_COLUMN, image_sources, read_parquet
from geopak_lib.data.images import ImageLoadError, check_present, inspect_image
from geopak_lib.data.rundir import RunDir

REQUIRED_COLUMNS = ("id", "image", "latitude", "longitude", "province")
# Lower-cased header -> schema column, used only when the schema column itself is absent.
COLUMN_ALIASES = {
    "lat": "latitude", "gps_latitude": "latitude", "y": "latitude",
    "lng": "longitude", "lon": "longitude", "long": "longitude", "gps_longitude": "longitude", "x": "longitude",
    "file": "image", "filename": "image", "file_name": "image", "path": "image", "image_path": "image",
    "region": "province", "state": "province", "province_name": "province",
}
MANIFEST_COLUMNS = ("id", "image", "image_path", "latitude", "longitude", "province", "province_id",
                    "split", "block_id", "width", "height", "sha1", "phash")
REJECT_COLUMNS = ("id", "row", "reason", "detail", "image", "latitude", "longitude", "province")
FIX_COLUMNS = ("id", "row", "column", "original", "value", "rule")
# A label whose polygon lies within this distance (km) of the point is kept: the simplified
# polygons are off by a few km along province borders (docs/decisions/data.md).
LABEL_TOLERANCE_KM = 5.0

# reason -> (action, why). action: drop (row rejected), fix (kept, change recorded), report (kept).
REJECT_POLICY = {
    "empty_id": ("drop", "every artifact joins on id; a row without one cannot be traced"),
    "duplicate_id": ("drop", "the first row with an id is kept; later ones are named with the first row"),
    **ID_POLICY,
    "image_missing": ("drop", "no file at image_dir/image (or no image path): nothing to learn from"),
    "image_empty": ("drop", "zero-byte file, usually an interrupted download"),
    "image_unreadable": ("drop", "not an image, corrupt or truncated: it would crash a loader mid-epoch"),
    "latitude_missing": ("drop", "no target to regress"),
    "longitude_missing": ("drop", "no target to regress"),
    "latitude_non_numeric": ("drop", "we do not guess at text such as '24,8' or '24N'"),
    "longitude_non_numeric": ("drop", "we do not guess at text such as '67,0' or '67E'"),
    "latitude_out_of_range": ("drop", "not a latitude: outside [-90, 90] or infinite"),
    "longitude_out_of_range": ("drop", "not a longitude: outside [-180, 180] or infinite"),
    "outside_pakistan": ("drop", "the book is Pakistan-only; often swapped lat/lon or a 0,0 placeholder"),
    "province_missing": ("drop", "no province given and no usable coordinates to fill it from"),
    "unknown_province": ("drop", "a name we cannot map; add real spellings to PROVINCE_ALIASES"),
    "province_mismatch": ("drop", "label and polygon disagree by more than LABEL_TOLERANCE_KM: "
                                  "one of them is wrong and we cannot tell which"),
    "province_spelling": ("fix", "case/space/punctuation variant of a province name"),
    "province_alias": ("fix", "common alias (KPK, ICT, GB, AJK, ...) mapped to the official name"),
    "province_filled": ("fix", "missing province taken from the polygon holding the point"),
    "province_near_border": ("fix", "label kept although the point lies just across the border "
                                    "(within LABEL_TOLERANCE_KM): simplified polygons are coarse there"),
    "duplicate_image": ("report", "same file bytes (sha1) under several ids; kept, listed in the audit"),
}

# Normalised spelling (see _name_key) -> official name. Exact names need no entry.
PROVINCE_ALIASES = {
    "kpk": "Khyber Pakhtunkhwa", "kp": "Khyber Pakhtunkhwa", "nwfp": "Khyber Pakhtunkhwa",
    "khyber pakhtoonkhwa": "Khyber Pakhtunkhwa", "north west frontier province": "Khyber Pakhtunkhwa",
    "fata": "Khyber Pakhtunkhwa",  # merged into Khyber Pakhtunkhwa in 2018
    "ict": "Islamabad Capital Territory", "islamabad": "Islamabad Capital Territory",
    "federal capital territory": "Islamabad Capital Territory",
    "gb": "Gilgit-Baltistan", "northern areas": "Gilgit-Baltistan",
    "ajk": "Azad Kashmir", "azad jammu and kashmir": "Azad Kashmir", "azad jammu kashmir": "Azad Kashmir",
    "baluchistan": "Balochistan", "panjab": "Punjab",
    # Spellings seen in users' tables; a wrong guess is still caught by the polygon check.
    "k p k": "Khyber Pakhtunkhwa", "k p": "Khyber Pakhtunkhwa", "khyber": "Khyber Pakhtunkhwa",
    "g b": "Gilgit-Baltistan", "gilgit": "Gilgit-Baltistan",
    "aj and k": "Azad Kashmir", "a j k": "Azad Kashmir", "kashmir": "Azad Kashmir",
    "azad jammu and kashmir ajk": "Azad Kashmir",
    "federal capital": "Islamabad Capital Territory", "i c t": "Islamabad Capital Territory",
    "islamabad capital": "Islamabad Capital Territory",
}


def _name_key(name: str) -> str:
    """'Khyber-Pakhtunkhwa ' -> 'khyber pakhtunkhwa': lower case, '&' -> 'and', punctuation -> space."""
    return " ".join(re.sub(r"[^a-z0-9]+", " ", name.lower().replace("&", " and ")).split())


_OFFICIAL = {_name_key(p): p for p in PROVINCES}


class DatasetError(ValueError):
    """A dataset table that cannot be validated at all (missing file or column, unknown format)."""


def read_table(path) -> pd.DataFrame:
    """Read a dataset table: ``.csv`` or ``.parquet``/``.pq``. ``id, image, province`` come back as text.

    Only empty CSV fields count as missing (an id 'NA' stays 'NA').
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dataset table not found: {path}")
    suffix = path.suffix.lower()
    text_cols = ["id", "image", "province"]
    if suffix == ".csv":
        sep = _sniff_delimiter(path)
        try:
            head = pd.read_csv(path, nrows=0, sep=sep).columns
            return pd.read_csv(path, sep=sep, dtype={c: str for c in text_cols if c in head},
                               keep_default_na=False, na_values=[""])
        except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DatasetError(f"{path}: cannot be read as a CSV table ({first}); expected one header "
                               "row and one row per image, separated by ',' ';' tab or '|'") from None
    if suffix in (".parquet", ".pq"):
        try:
            df = read_parquet(path)
        except ValueError as e:
            raise DatasetError(str(e)) from None
        for c in text_cols:
            if c in df.columns:
                df[c] = df[c].where(df[c].isna(), df[c].astype(str))  # keep missing as missing
        return df
    raise DatasetError(f"unsupported dataset file {path}: use .csv or .parquet")


def apply_column_aliases(df: pd.DataFrame, *, source=None) -> pd.DataFrame:
    """Rename alias headers (lat, lng, Latitude, ...) to the schema's names and print the mapping.

    A header is renamed only when its schema column is absent and exactly one header maps to it,
    so an explicit column always wins and nothing is guessed between two candidates.
    """
    candidates: dict[str, list[str]] = {}
    for col in df.columns:
        key = str(col).strip().lower()
        target = key if key in REQUIRED_COLUMNS else COLUMN_ALIASES.get(key)
        if target and target not in df.columns and col != target:
            candidates.setdefault(target, []).append(col)
    mapping = {cols[0]: target for target, cols in candidates.items() if len(cols) == 1}
    if mapping:
        print(f"{source or 'table'}: column(s) mapped: "
              + ", ".join(f"{a!r} -> {b!r}" for a, b in mapping.items()), file=sys.stderr)
    return df.rename(columns=mapping)


def _sniff_delimiter(path: Path) -> str:
    """',' unless the header clearly uses ';', tab or '|' (spreadsheets in many locales write ';')."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            sample = f.read(16384)
        return csv.Sniffer().sniff(sample, delimiters=",;\t|").delimiter
    except csv.Error:
        return ","


def check_columns(df: pd.DataFrame, source) -> None:
    """Raise ValueError naming the file and every missing required column."""
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise DatasetError(f"{source}: missing required column(s) {missing}; found {list(df.columns)}. "
                         f"A dataset needs {list(REQUIRED_COLUMNS)}.")


def _blank(s: pd.Series) -> np.ndarray:
    """True where a value is missing or only whitespace."""
    return (s.isna() | s.astype(str).str.strip().eq("")).to_numpy()


def _coord_problems(raw: pd.Series, name: str, limit: float) -> tuple[np.ndarray, list]:
    """Parse a latitude/longitude column. Returns (degrees (N,) with NaN where bad, problems)."""
    values = np.array(pd.to_numeric(raw, errors="coerce"), dtype=float)  # a writable copy
    text = raw.astype(str).str.strip().str.lower()
    missing = _blank(raw) | text.isin(["nan", "na", "null", "none"]).to_numpy()
    problems = []
    for i in np.flatnonzero(missing):
        problems.append((i, f"{name}_missing", f"{name} is empty"))
    for i in np.flatnonzero(~missing & np.isnan(values)):
        problems.append((i, f"{name}_non_numeric", f"{name} {raw.iloc[i]!r} is not a number"))
    bad = ~np.isnan(values) & ~(np.abs(values) <= limit)  # also catches +-inf
    for i in np.flatnonzero(bad):
        problems.append((i, f"{name}_out_of_range", f"{name} {values[i]} is outside [-{limit:g}, {limit:g}]"))
    values[bad] = np.nan
    return values, problems


def swapped_hint(lat: float, lon: float) -> str:
    """'; swapped it would lie in Punjab' when (lon, lat) is in Pakistan, else ''. Rows are still
    rejected, never silently fixed: the table may be wrong in other ways too."""
    if not (-90 <= lon <= 90):
        return ""
    where = locate_province(np.array([lon]), np.array([lat]))[0]
    return f"; swapped (latitude {lon:.4f}, longitude {lat:.4f}) it would lie in {where}" if where else ""


def _province_label(raw) -> tuple[str | None, str | None]:
    """Map a raw province value to (official name or None, fix rule or None). '' -> (None, None)."""
    if raw is None or (isinstance(raw, float) and np.isnan(raw)) or not str(raw).strip():
        return None, None
    if raw in PROVINCE_ID:
        return raw, None
    key = _name_key(str(raw))
    if key in _OFFICIAL:
        return _OFFICIAL[key], "province_spelling"
    if key in PROVINCE_ALIASES:
        return PROVINCE_ALIASES[key], "province_alias"
    return "?", None  # unknown


def _km_outside(province: str, lat: float, lon: float) -> float:
    """Approximate distance (km) from a point to a province polygon; 0 inside."""
    import shapely

    deg = shapely.distance(province_shapes()[province], shapely.Point(lon, lat))
    return float(deg * KM_PER_DEG_LAT * np.cos(np.radians(lat)))  # lon scale: conservative (short)


def _check_images(paths: list, check_images: bool, progress: bool, workers: int) -> list:
    """Per path: (width, height, sha1, phash) or an ImageLoadError. No path -> ImageLoadError(image_missing)."""
    def one(path):
        if path is None:
            return ImageLoadError("", "no image path given", "image_missing")
        try:
            if check_images:
                return inspect_image(path)
            check_present(path)
            return (None, None, None, None)
        except ImageLoadError as e:
            return e

    # threads: Pillow decodes and hashlib hash without the GIL, so I/O and decoding overlap
    with ThreadPoolExecutor(max(1, workers)) as pool:
        return list(tqdm(pool.map(one, paths), total=len(paths), desc="checking images",
                         disable=not progress, mininterval=1.0))


@dataclass
class ValidationResult:
    """manifest (valid rows), rejects (one row per rejected row and reason), fixes (recorded changes)."""

    manifest: pd.DataFrame
    rejects: pd.DataFrame
    fixes: pd.DataFrame
    n_input: int = 0

    def summary(self) -> pd.DataFrame:
        """Counts: input/manifest/rejected rows, then rows per REJECT_POLICY reason (zeros included)."""
        n_dup = int(self.manifest["sha1"].dropna().duplicated().sum()) if len(self.manifest) else 0
        counts = pd.concat([self.rejects["reason"], self.fixes["rule"]]).value_counts()
        rows = [("input_rows", "total", self.n_input), ("manifest_rows", "total", len(self.manifest)),
                ("rejected_rows", "total", self.rejects["row"].nunique())]
        for reason, (action, _) in REJECT_POLICY.items():
            rows.append((reason, action, n_dup if reason == "duplicate_image" else int(counts.get(reason, 0))))
            if reason == "outside_pakistan":  # of those, how many look like swapped coordinates
                rows.append(("outside_pakistan_swapped", action,
                             int(self.rejects["detail"].astype(str).str.contains("swapped", regex=False).sum())))
        return pd.DataFrame(rows, columns=["reason", "action", "n_rows"])


def policy_table() -> pd.DataFrame:
    """REJECT_POLICY as a table: reason, action (drop/fix/report), why."""
    return pd.DataFrame([(r, a, w) for r, (a, w) in REJECT_POLICY.items()], columns=["reason", "action", "why"])


def duplicate_images(manifest: pd.DataFrame) -> pd.DataFrame:
    """Manifest rows whose file bytes (sha1) occur more than once, grouped by sha1 (report only)."""
    dup = manifest[manifest["sha1"].notna() & manifest["sha1"].duplicated(keep=False)]
    return dup.sort_values(["sha1", "id"])[["sha1", "id", "image", "latitude", "longitude", "province"]]


def validate_dataset(table_path, image_dir, *, check_images: bool = True, progress: bool = True,
                     label_tolerance_km: float = LABEL_TOLERANCE_KM, workers: int = 4) -> ValidationResult:
    """Validate a dataset table against its image folder; see the module docstring and REJECT_POLICY.

    image_dir: the folder ``image`` is relative to; None only for a Parquet table that embeds every
    image's bytes (data/embedded.py). check_images: decode every image (False: only check that the
    file exists and is non-empty; width, height and sha1 are then left empty). Every row with no problem reaches the manifest.
    """
    df = apply_column_aliases(read_table(table_path), source=table_path)
    check_columns(df, table_path)
    n = len(df)
    problems, fixes = [], []  # (position, reason, detail), (position, column, original, value, rule)

    ids = df["id"]
    problems += id_problems(ids.tolist(), _blank(ids))

    lat, lat_problems = _coord_problems(df["latitude"], "latitude", 90.0)
    lon, lon_problems = _coord_problems(df["longitude"], "longitude", 180.0)
    problems += lat_problems + lon_problems
    has_coord = ~np.isnan(lat) & ~np.isnan(lon)
    located = np.full(n, None, dtype=object)
    located[has_coord] = locate_province(lat[has_coord], lon[has_coord])
    for i in np.flatnonzero(has_coord & (located == None)):  # noqa: E711
        problems.append((i, "outside_pakistan", f"({lat[i]:.4f}, {lon[i]:.4f}) is not in Pakistan" + swapped_hint(
            lat[i], lon[i])))

    province = np.full(n, None, dtype=object)
    for i, raw in enumerate(df["province"]):
        label, rule = _province_label(raw)
        if label == "?":
            problems.append((i, "unknown_province", f"province {raw!r} is not one of {list(PROVINCES)} "
                             f"nor an alias {sorted(PROVINCE_ALIASES)}; leave it empty to fill it "
                             "from the coordinates"))
        elif label is None and located[i] is None:
            if has_coord[i]:
                continue  # outside_pakistan already says why
            problems.append((i, "province_missing", "no province and no usable coordinates to fill it"))
        elif label is None:
            province[i] = located[i]
            fixes.append((i, "province", raw, located[i], "province_filled"))
        else:
            province[i] = label
            if rule:
                fixes.append((i, "province", raw, label, rule))
            if located[i] is not None and located[i] != label:
                km = _km_outside(label, lat[i], lon[i])
                if km > label_tolerance_km:
                    problems.append((i, "province_mismatch", f"labelled {label} but the point lies in "
                                     f"{located[i]}, {km:.1f} km from {label}"))
                else:
                    fixes.append((i, "province", raw, label, "province_near_border"))

    try:
        paths = image_sources(df["image"], df.get(EMBEDDED_COLUMN), _blank(df["image"]), image_dir)
    except ValueError as e:  # file names without an image folder
        raise DatasetError(f"{table_path}: {e}") from None
    info = _check_images(paths, check_images, progress, workers)
    for i, item in enumerate(info):
        if isinstance(item, ImageLoadError):
            problems.append((i, item.code, item.reason))

    order = {r: k for k, r in enumerate(REJECT_POLICY)}
    problems.sort(key=lambda p: (p[0], order[p[1]]))
    rejects = pd.DataFrame({"id": [ids.iloc[i] for i, _, _ in problems],
                            "row": [i + 1 for i, _, _ in problems],
                            "reason": [r for _, r, _ in problems], "detail": [d for _, _, d in problems]})
    for c in REQUIRED_COLUMNS[1:]:
        rejects[c] = df[c].iloc[[i for i, _, _ in problems]].to_numpy()
    bad = {i for i, _, _ in problems}
    keep = [i for i in range(n) if i not in bad]

    manifest = pd.DataFrame({
        "id": ids.iloc[keep].to_numpy(), "image": df["image"].iloc[keep].to_numpy(),
        "image_path": [str(paths[i]) for i in keep], "latitude": lat[keep], "longitude": lon[keep],
        "province": province[keep].astype(str), "province_id": [PROVINCE_ID[province[i]] for i in keep],
        "width": pd.array([info[i][0] for i in keep], dtype="Int64"),
        "height": pd.array([info[i][1] for i in keep], dtype="Int64"),
        "sha1": pd.array([info[i][2] for i in keep], dtype="str"),
        "phash": pd.array([info[i][3] for i in keep], dtype="str"),
    })
    fix_rows = [(ids.iloc[i], i + 1, c, o, v, r) for i, c, o, v, r in fixes if i not in bad]
    return ValidationResult(manifest, rejects[list(REJECT_COLUMNS)],
                            pd.DataFrame(fix_rows, columns=list(FIX_COLUMNS)), n_input=n)


def write_validation(result: ValidationResult, out_dir) -> dict[str, Path]:
    """Write manifest.csv, rejects.csv and fixes.csv into ``out_dir`` (atomically). Returns their paths."""
    run = RunDir(out_dir)
    return {name: run.write_table(f"{name}.csv", getattr(result, name)) for name in ("manifest", "rejects", "fixes")}
