"""From a folder of geotagged photos to a dataset table: GPS from each file's EXIF.

A researcher's collection arrives as trip folders of JPEG, PNG, WEBP and HEIC photos with the
position in their EXIF, rarely as a table. :func:`ingest_folder` walks the folder (nested, sorted,
so the same folder gives the same table), reads each file's GPS block without decoding its pixels,
and returns the table ``geopak validate`` takes (id, image, latitude, longitude, province) plus one
reject row, with a reason, for every file that could not give a position. Nothing is dropped
silently: every file under the folder is in exactly one of the two.

The province is left empty: validate fills it from the shipped province polygons. Ids come from the
relative path (folders joined by ``__``, the extension kept), made safe for data/ids.py: an id names
files later on. docs/decisions/ingest.md.
"""

from __future__ import annotations

import math
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from PIL import ExifTags, Image, UnidentifiedImageError

from geopak_lib.data import images  # noqa: F401 - importing it registers the HEIC/HEIF opener

TABLE_COLUMNS = ["id", "image", "latitude", "longitude", "province"]
REJECT_COLUMNS = ["file", "reason", "detail"]
# reason -> what the user can do; the rejects table carries the reason, the summary the advice
REASONS = {
    "no_gps": "the file has no GPS position in its EXIF (phone location off, or removed by an app); "
              "add the row to the table by hand if you know where it was taken",
    "gps_invalid": "the EXIF GPS block is incomplete or out of range",
    "gps_zero": "the EXIF GPS position is exactly 0, 0 (a placeholder some cameras write, in the Atlantic)",
    "not_an_image": "not an image file Pillow can read (with pillow-heif for HEIC)",
    "name_not_utf8": "the file name is not valid UTF-8, so no table can name it; rename the file",
    "unreadable": "the file cannot be read (permissions, a broken link, a loop of links)",
}
GPS_LAT_REF, GPS_LAT, GPS_LON_REF, GPS_LON = 1, 2, 3, 4


@dataclass
class IngestResult:
    table: pd.DataFrame      # TABLE_COLUMNS, one row per photo with a position
    rejects: pd.DataFrame    # REJECT_COLUMNS, one row per other file

    def summary(self) -> pd.DataFrame:
        """Reject counts per reason, with what to do about each."""
        counts = self.rejects["reason"].value_counts()
        return pd.DataFrame({"reason": counts.index, "files": counts.to_numpy(),
                             "what to do": [REASONS.get(r, "") for r in counts.index]})


def dms_to_degrees(dms, ref: str) -> float:
    """Degrees from EXIF's (degrees, minutes, seconds) rationals and an N/S/E/W reference (S and W negative)."""
    if dms is None or len(dms) != 3:
        raise ValueError(f"expected (degrees, minutes, seconds), got {dms!r}")
    d, m, s = (float(x) for x in dms)
    if not all(math.isfinite(v) for v in (d, m, s)) or min(d, m, s) < 0 or m >= 60 or s >= 60:
        raise ValueError(f"not a degrees/minutes/seconds triple: {(d, m, s)}")
    ref = str(ref or "").strip().upper()[:1]
    if ref not in ("N", "S", "E", "W"):
        raise ValueError(f"GPS reference {ref!r} is not N, S, E or W")
    value = d + m / 60.0 + s / 3600.0
    return -value if ref in ("S", "W") else value


def read_gps(path) -> tuple[float, float]:
    """(latitude, longitude) from the file's EXIF GPS block. Raises ValueError(reason, detail) when
    there is none or it is unusable; OSError / UnidentifiedImageError when the file is not readable."""
    with Image.open(path) as img:  # lazy: the header and EXIF only, no pixel decoding
        gps = img.getexif().get_ifd(ExifTags.IFD.GPSInfo)
    if not gps or GPS_LAT not in gps or GPS_LON not in gps:
        raise ValueError("no_gps", "no GPSLatitude/GPSLongitude in the EXIF")
    try:
        lat = dms_to_degrees(gps[GPS_LAT], gps.get(GPS_LAT_REF))
        lon = dms_to_degrees(gps[GPS_LON], gps.get(GPS_LON_REF))
    except (TypeError, ValueError, ZeroDivisionError) as exc:
        raise ValueError("gps_invalid", str(exc)) from None
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise ValueError("gps_invalid", f"position {lat:.6f}, {lon:.6f} is off the globe")
    if lat == 0 and lon == 0:
        raise ValueError("gps_zero", "position 0, 0")
    return lat, lon


def path_id(relative: str) -> str:
    """A safe id from a relative path: folders joined by '__', '..' runs shortened, control characters
    and surrounding spaces removed (data/ids.py rejects ids that could name a file elsewhere)."""
    text = relative.replace("\\", "/").replace("/", "__")
    text = "".join("_" if unicodedata.category(ch) == "Cc" else ch for ch in text)
    while ".." in text:
        text = text.replace("..", ".")
    return text.strip() or "photo"


def _display(path: Path) -> str:
    """A file name as text even when its bytes are not UTF-8 (escaped, for the rejects table)."""
    return str(path).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def ingest_folder(folder, progress: bool = False) -> IngestResult:
    """Every file under ``folder``: a table row when its EXIF has a position, else a reject row."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder of photos")
    rows, rejects, used = [], [], set()
    files = sorted(p for p in folder.rglob("*") if not p.is_dir())  # broken links and loops are not dirs
    if progress:
        from tqdm.auto import tqdm
        files = tqdm(files, desc="reading EXIF", unit="file")
    for path in files:
        rel = path.relative_to(folder).as_posix()
        shown = _display(path.relative_to(folder))
        try:
            rel.encode("utf-8")
        except UnicodeEncodeError:
            rejects.append((shown, "name_not_utf8", "the name holds bytes that are not UTF-8"))
            continue
        try:
            lat, lon = read_gps(path)
        except ValueError as exc:
            reason, detail = exc.args if len(exc.args) == 2 else ("gps_invalid", str(exc))
            rejects.append((shown, reason, detail))
            continue
        except UnidentifiedImageError:
            rejects.append((shown, "not_an_image", f"{path.suffix or 'no extension'}: Pillow cannot identify it"))
            continue
        except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop in some Python versions
            rejects.append((shown, "unreadable", getattr(exc, "strerror", None) or str(exc)))
            continue
        rid, n = path_id(rel), 2
        while rid.casefold() in used:  # 'A.jpg' and 'a.jpg' on a case-sensitive disk: one id each
            rid, n = f"{path_id(rel)}_{n}", n + 1
        used.add(rid.casefold())
        rows.append((rid, rel, round(lat, 7), round(lon, 7), ""))
    return IngestResult(pd.DataFrame(rows, columns=TABLE_COLUMNS), pd.DataFrame(rejects, columns=REJECT_COLUMNS))


def rejects_path(table_path) -> Path:
    """Where the rejects of ``table_path`` go: <stem>_rejects.csv beside it."""
    p = Path(table_path)
    return p.with_name(f"{p.stem}_rejects.csv")


def write_ingest(result: IngestResult, table_path) -> tuple[Path, Path]:
    """Write the table and its rejects (UTF-8 CSV). Returns both paths."""
    table_path = Path(table_path)
    table_path.parent.mkdir(parents=True, exist_ok=True)
    result.table.to_csv(table_path, index=False, encoding="utf-8")
    out = rejects_path(table_path)
    result.rejects.to_csv(out, index=False, encoding="utf-8")
    return table_path, out

