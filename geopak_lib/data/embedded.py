"""Images stored inside a Parquet table (Hugging Face ``datasets`` style), read without unpacking.

A Hugging Face image column is a struct ``{bytes, path}``: ``bytes`` holds the encoded file (JPEG,
PNG, ...), ``path`` its original name (or the file to read when ``bytes`` is null). Validation puts a
*reference* ``parquet:<row>:<absolute table path>`` in the manifest's ``image_path`` for each row with
bytes; :func:`geopak_lib.data.images.read_image_bytes`, the book's one reader of image bytes, resolves
it here, so the cache, training, evaluation and predict read the same bytes validation checked.

Memory stays bounded: a reference reads only its row group's ``image`` column, and the last few row
groups are kept per process (readers go through a table in order). docs/decisions/data.md.
"""

from __future__ import annotations

import bisect
import threading
from functools import lru_cache
from pathlib import Path

import numpy as np

SCHEME = "parquet:"
EMBEDDED_COLUMN = "__embedded_image"  # read_table's column of references (None: a file path is used)
_LOCK = threading.Lock()  # validation reads from threads; one row group is decoded once


def is_embedded(ref) -> bool:
    """True for a ``parquet:<row>:<path>`` reference (a plain file path is never one: it has no scheme)."""
    return isinstance(ref, str) and ref.startswith(SCHEME)


def embedded_ref(table, row: int) -> str:
    """The reference to row ``row`` (0-based, file order) of ``table``'s image column."""
    return f"{SCHEME}{int(row)}:{Path(table).resolve()}"


def _parse(ref: str) -> tuple[int, str]:
    row, _, path = ref[len(SCHEME):].partition(":")
    if not row.isdigit() or not path:
        raise ValueError(f"not an embedded-image reference: {ref!r} (expected parquet:<row>:<table path>)")
    return int(row), path


def is_image_struct(field_type) -> bool:
    """True for a pyarrow struct type with a binary ``bytes`` field (the Hugging Face Image feature)."""
    import pyarrow as pa

    if not pa.types.is_struct(field_type):
        return False
    names = [field_type.field(i).name for i in range(field_type.num_fields)]
    return "bytes" in names and (pa.types.is_binary(field_type.field("bytes").type)
                                 or pa.types.is_large_binary(field_type.field("bytes").type))


@lru_cache(maxsize=8)
def _file(path: str, mtime_ns: int):
    """(ParquetFile, first row of each row group). Keyed by mtime: a rewritten table is reopened."""
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    starts = np.cumsum([0] + [pf.metadata.row_group(k).num_rows for k in range(pf.num_row_groups)])
    return pf, starts.tolist()


@lru_cache(maxsize=2)
def _row_group_bytes(path: str, mtime_ns: int, group: int) -> list:
    pf, _ = _file(path, mtime_ns)
    column = pf.read_row_group(group, columns=["image"]).column("image").combine_chunks()
    return column.field("bytes").to_pylist()


def read_embedded(ref: str) -> bytes | None:
    """The image bytes a reference names (None: the row has no bytes). Raises OSError / ValueError."""
    row, path = _parse(ref)
    mtime = Path(path).stat().st_mtime_ns  # FileNotFoundError if the table has gone
    with _LOCK:
        _, starts = _file(path, mtime)
        if row >= starts[-1]:
            raise ValueError(f"row {row} is past the end of {path} ({starts[-1]} rows)")
        group = bisect.bisect_right(starts, row) - 1
        return _row_group_bytes(path, mtime, group)[row - starts[group]]


def image_column(path) -> tuple[list, list]:
    """For a Parquet table whose ``image`` is a struct: (names, references), one per row, in order.

    A name is the struct's ``path`` (or ``row N`` without one); a reference is :func:`embedded_ref`
    where the row has bytes, else None (then the name is a file under the image folder, as in a CSV).
    Reads one row group at a time, so the bytes of the whole table are never held at once.
    """
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    names, refs, row = [], [], 0
    for k in range(pf.num_row_groups):
        col = pf.read_row_group(k, columns=["image"]).column("image").combine_chunks()
        fields = [col.type.field(i).name for i in range(col.type.num_fields)]
        paths = col.field("path").to_pylist() if "path" in fields else [None] * len(col)
        has = pc.and_(col.is_valid(), col.field("bytes").is_valid()).to_pylist()
        for p, h in zip(paths, has):
            names.append(p if p else (f"row {row + 1}" if h else None))
            refs.append(embedded_ref(path, row) if h else None)
            row += 1
    return names, refs


def read_parquet(path):
    """A Parquet table as a DataFrame; an ``image`` struct {bytes, path} becomes names (``image``) and
    references (EMBEDDED_COLUMN, see :func:`image_column`), read without the bytes. ValueError for a
    file that is not Parquet."""
    import pandas as pd
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
    except Exception as e:  # pyarrow raises several types for a file that is not Parquet
        raise ValueError(f"{path}: cannot be read as a Parquet table ({e})") from None
    struct = "image" in schema.names and is_image_struct(schema.field("image").type)
    df = pd.read_parquet(path, columns=[c for c in schema.names if not (struct and c == "image")])
    if struct:
        df["image"], df[EMBEDDED_COLUMN] = image_column(path)
    return df


def image_sources(names, refs, blank, image_dir) -> list:
    """Per row: its embedded reference, else ``image_dir / name``, else None (no image given).

    refs: EMBEDDED_COLUMN (None for a table without one). ValueError when rows name files and
    ``image_dir`` is None."""
    refs = [None] * len(names) if refs is None else list(refs)
    need = [i for i, (r, b) in enumerate(zip(refs, blank)) if not (is_embedded(r) or b)]
    if image_dir is None and need:
        raise ValueError(f"{len(need)} row(s) (first: row {need[0] + 1}) name image files but no image "
                         "folder was given (--images)")
    return [r if is_embedded(r) else (None if b else Path(image_dir) / str(v)) for r, b, v in zip(refs, blank, names)]
