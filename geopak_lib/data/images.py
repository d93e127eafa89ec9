"""Robust image loading: any file Pillow can read, as RGB with EXIF orientation applied.

Used by validation (:func:`inspect_image`), the feature cache, training and the predictor
(:func:`load_rgb`). Problems raise :class:`ImageLoadError` with a ``code`` that is a
validation reason (image_missing, image_empty, image_unreadable).
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from geopak_lib.data.embedded import is_embedded, read_embedded

try:  # HEIC/HEIF, what phones write: pillow-heif adds an opener to Pillow, so every reader here takes them
    import pillow_heif

    pillow_heif.register_heif_opener()
    HEIF_SUPPORTED = True
except ImportError:  # pragma: no cover - it is in requirements.txt; without it HEIC files are "not an image"
    HEIF_SUPPORTED = False

JPEG_DRAFT_SIZE = (64, 64)  # validation decodes JPEGs at 1/8 scale: every byte is still read
# The largest image validation, caching and predict accept (width x height). A 50 MP photo decodes to
# 150 MB of RGB; a crafted header can claim gigapixels (a decompression bomb). Checked here on the
# header, before decoding, not through Image.MAX_IMAGE_PIXELS: other modules lift that global to read
# their own large rasters. docs/decisions/sharing.md.
MAX_IMAGE_PIXELS = 50_000_000


class ImageLoadError(Exception):
    """An image file that cannot be used. ``code`` is a REJECT_POLICY reason (image_*)."""

    def __init__(self, path, reason: str, code: str = "image_unreadable"):
        super().__init__(f"cannot load image {path}: {reason}")
        self.path, self.reason, self.code = (path if is_embedded(path) else Path(path)), reason, code


def read_image_bytes(path) -> bytes:
    """The encoded bytes of an image: a file, or a ``parquet:<row>:<table>`` reference to bytes
    embedded in a Parquet table (:mod:`geopak_lib.data.embedded`). Every image the book opens is read
    here. Raises :class:`ImageLoadError` (image_missing, image_empty)."""
    if is_embedded(path):
        try:
            data = read_embedded(path)
        except (OSError, ValueError) as e:
            raise ImageLoadError(path, f"cannot read the embedded image ({e})", "image_missing") from None
        if data is None:
            raise ImageLoadError(path, "the table's image has no bytes", "image_missing")
    else:
        path = Path(path)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ImageLoadError(path, "file not found", "image_missing") from None
        except OSError as e:  # a folder, a permission problem, ...
            raise ImageLoadError(path, f"cannot read file ({e.strerror or e})", "image_missing") from None
    if not data:
        raise ImageLoadError(path, "file is empty (0 bytes)", "image_empty")
    return data


def check_present(path) -> None:
    """Cheap check that an image exists and is non-empty (a file's size; embedded bytes' length).
    Raises :class:`ImageLoadError` (image_missing, image_empty); nothing is decoded."""
    if is_embedded(path):
        read_image_bytes(path)  # the row group is read once for all its rows
        return
    path = Path(path)
    if not path.is_file():
        raise ImageLoadError(path, "file not found", "image_missing")
    if path.stat().st_size == 0:
        raise ImageLoadError(path, "file is empty (0 bytes)", "image_empty")


def _open(path, draft: bool = False) -> tuple[Image.Image, bytes, tuple[int, int]]:
    """Read the bytes, open and fully decode (JPEG at 1/8 scale if ``draft``).

    Returns (image, file bytes, (width, height) as stored, before any draft reduction).
    """
    data = read_image_bytes(path)
    try:
        img = Image.open(io.BytesIO(data))
        size = img.size  # draft() shrinks img.size; keep the stored one
        if size[0] * size[1] > MAX_IMAGE_PIXELS:
            raise ImageLoadError(path, f"too large: {size[0]} x {size[1]} = {size[0] * size[1] / 1e6:.0f} MP, "
                                       f"above the limit of {MAX_IMAGE_PIXELS / 1e6:.0f} MP (MAX_IMAGE_PIXELS)")
        if draft and img.format == "JPEG":
            img.draft("RGB", JPEG_DRAFT_SIZE)
        img.load()  # a truncated or corrupt file fails here, not at open()
    except UnidentifiedImageError:
        raise ImageLoadError(path, "not an image file Pillow can read") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageLoadError(path, f"truncated or corrupt ({e})") from None
    return img, data, size


def exif_orientation(img: Image.Image) -> int:
    """EXIF orientation tag (1..8; 1 = as stored)."""
    try:
        return int(img.getexif().get(0x0112, 1) or 1)
    except Exception:  # unparsable EXIF: treat as unrotated rather than reject a decodable image
        return 1


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB. Transparency is composited on white; 16/32-bit grey is rescaled."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        # 16-bit data (max > 255) spans 0..65535; 65535 / 257 = 255
        arr = arr / 257.0 if arr.max(initial=0) > 255 else arr
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8)).convert("RGB")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif img.mode in ("LA", "La", "RGBa", "PA") or (img.mode == "L" and "transparency" in img.info):
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        # white, not black: transparent pixels have no colour, and viewers show page white
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, img).convert("RGB")
    return img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def load_rgb(path) -> Image.Image:
    """Open an image file as an RGB ``PIL.Image`` of shape (H, W, 3), EXIF orientation applied.

    Raises :class:`ImageLoadError` (with ``reason`` and ``code``) for a missing, empty, truncated,
    corrupt or non-image file.
    """
    img, _, _ = _open(path)
    if exif_orientation(img) != 1:
        img = ImageOps.exif_transpose(img)
    return _to_rgb(img)


def inspect_image(path) -> tuple[int, int, str, str]:
    """Cheap but complete check of one image: (width, height, sha1 of the file bytes, perceptual hash).

    width/height are in pixels after EXIF orientation (what :func:`load_rgb` returns). The file is
    decoded in full (JPEG at 1/8 scale, which still reads every byte, so truncation is caught).
    The perceptual hash (imagehash's 64-bit DCT hash, hex) of the decoded image groups near-identical
    copies (re-encoded, resized) into one split. Raises :class:`ImageLoadError`.
    """
    import imagehash

    img, data, (width, height) = _open(path, draft=True)
    if exif_orientation(img) in (5, 6, 7, 8):  # 90-degree rotations swap the sides
        width, height = height, width
    rgb = _to_rgb(img)  # same conversion as load_rgb, so a mode it cannot handle is caught here
    return width, height, hashlib.sha1(data).hexdigest(), str(imagehash.phash(rgb))


def _entry_kind(path: str) -> tuple[str, str]:
    """('dir' | 'file' | 'skip', reason) of one path, without following a link to a folder."""
    try:
        own = os.lstat(path)
        target = os.stat(path) if stat.S_ISLNK(own.st_mode) else own
    except OSError as e:  # ELOOP, a dangling link, a file removed during the scan
        link = "broken or looping symbolic link" if os.path.islink(path) else "cannot be read"
        return "skip", f"{link} ({e.strerror or e})"
    if stat.S_ISDIR(target.st_mode):
        if stat.S_ISLNK(own.st_mode):  # followed links can loop or leave the folder
            return "skip", "symbolic link to a folder, not followed (give the folder itself to scan it)"
        return "dir", ""
    if not stat.S_ISREG(target.st_mode):
        return "skip", "not a regular file (a device, socket or pipe)"
    return "file", ""


def scan_folder(folder, extensions) -> tuple[list[str], list[tuple[str, str]]]:
    """Every entry under ``folder``, recursively, in name order -> (image files with one of
    ``extensions`` (lower case, with the dot; any letter case matches), [(path, reason)] for every
    other entry that is not a folder: other extensions, looping or broken links, links to folders,
    unreadable folders). Nothing found is dropped without a reason."""
    files, skipped = [], []
    try:
        names = sorted(os.listdir(folder))
    except OSError as e:
        return [], [(str(folder), f"folder cannot be read ({e.strerror or e})")]
    for name in names:
        path = os.path.join(folder, name)
        kind, why = _entry_kind(path)
        if kind == "dir":
            sub_files, sub_skipped = scan_folder(path, extensions)
            files, skipped = files + sub_files, skipped + sub_skipped
        elif kind == "skip":
            skipped.append((path, why))
        elif Path(name).suffix.lower() in extensions:
            files.append(path)
        else:
            skipped.append((path, f"not scanned: extension '{Path(name).suffix or '(none)'}' is not one of "
                                  f"{' '.join(extensions)} (name the file itself to try it)"))
    return files, skipped


def printable_name(text: str) -> str:
    """A path or message safe to write as UTF-8: bytes of a non-UTF-8 file name (held by Python as
    surrogate escapes) become backslash escapes, e.g. b'caf\\xe9.jpg' -> 'caf\\\\xe9.jpg'."""
    try:
        return os.fsencode(text).decode("utf-8", "backslashreplace")
    except UnicodeError:  # a lone surrogate that no file name holds
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
