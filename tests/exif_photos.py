"""Photos with a GPS position in their EXIF, written by the tests (tests/test_ingest.py and the
own-photos acceptance chain, tests/test_own_photos.py): degrees/minutes/seconds as EXIF rationals."""

from __future__ import annotations

from pathlib import Path

from PIL import ExifTags, Image
from PIL.TiffImagePlugin import IFDRational

from geopak_lib.data import images  # noqa: F401 - registers the HEIC/HEIF opener and saver

# Faisal Mosque, Islamabad: 33 deg 43' 48.6" N, 73 deg 2' 18" E, worked by hand:
# 33 + 43/60 + 48.6/3600 = 33.730166..., 73 + 2/60 + 18/3600 = 73.038333...
ISLAMABAD = ((33, 43, (486, 10)), "N", (73, 2, 18), "E")
ISLAMABAD_DEG = (33 + 43 / 60 + 48.6 / 3600, 73 + 2 / 60 + 18 / 3600)
# Mazar-e-Quaid, Karachi: 24 deg 52' 31" N, 67 deg 2' 27" E
KARACHI = ((24, 52, 31), "N", (67, 2, 27), "E")
KARACHI_DEG = (24 + 52 / 60 + 31 / 3600, 67 + 2 / 60 + 27 / 3600)
FORMATS = {".jpg": "JPEG", ".png": "PNG", ".webp": "WEBP", ".heic": "HEIF"}


def _rational(v) -> IFDRational:
    return IFDRational(*v) if isinstance(v, tuple) else IFDRational(v)


def exif_bytes(lat_dms, lat_ref, lon_dms, lon_ref) -> bytes:
    """An EXIF block holding only a GPS position, e.g. ``exif_bytes(*ISLAMABAD)``."""
    exif = Image.Exif()
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    gps[1], gps[2] = lat_ref, tuple(_rational(v) for v in lat_dms)
    gps[3], gps[4] = lon_ref, tuple(_rational(v) for v in lon_dms)
    return exif.tobytes()


def degrees_to_gps(lat: float, lon: float) -> tuple:
    """(lat_dms, lat_ref, lon_dms, lon_ref) for :func:`exif_bytes`; seconds kept to 1/1000."""
    def dms(value: float) -> tuple:
        value = abs(value)
        d = int(value)
        m = int((value - d) * 60)
        ms = round(((value - d) * 60 - m) * 60 * 1000)
        return d, m, (min(ms, 59999), 1000)
    return dms(lat), "N" if lat >= 0 else "S", dms(lon), "E" if lon >= 0 else "W"


def write_photo(path: Path, fmt: str, gps=None, *, size=(48, 40), color=(140, 110, 70), image=None) -> Path:
    """``image`` (default: a plain ``size`` image of ``color``) saved as ``fmt`` (JPEG, PNG, WEBP, HEIF)
    with ``gps`` in its EXIF (None: no EXIF)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = image if image is not None else Image.new("RGB", size, color)
    kwargs = {"exif": exif_bytes(*gps)} if gps else {}
    img.save(path, format=fmt, **kwargs)
    return path
