"""Content stamps of a run's inputs: which manifest, geocells and assignments an artifact was made from.

- ``manifest.done.json`` (written by RunDir after manifest.csv, by 00 and ``geopak validate``) holds
  the manifest's sha256 and row count; a manifest cut at a line end or mid-row no longer matches.
- ``geocells.done.json`` (01) holds the sha256 of geocells.json, geocells.csv and assignments.csv,
  written as one set (:func:`write_cell_set`): all three or none.
- Every checkpoint records :func:`input_stamps` of its run; resume, evaluation, predict and export
  compare them (:func:`check_inputs`) and refuse a mismatch with one line.

Decisions and reasons: docs/decisions/stamps.md.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from geopak_lib.utils import atomic_write_bytes, file_sha256

INPUT_FILES = ("manifest.csv", "geocells.json", "assignments.csv")
CELL_SET = ("geocells.json", "geocells.csv", "assignments.csv")
MANIFEST_RECORD, CELLS_RECORD = "manifest.done.json", "geocells.done.json"
# the notebook to rebuild from when a file changed under a run
REBUILD_FROM = {"manifest.csv": "01_geocells", "geocells.json": "02_phase0_province",
                "geocells.csv": "02_phase0_province", "assignments.csv": "02_phase0_province"}


class StaleInputError(ValueError):
    """An input changed since an artifact was made from it (or was cut while written): a user's
    mistake, exit 2. In a notebook it shows as its one-line message, not a traceback."""

    def _render_traceback_(self) -> list[str]:
        return [f"{type(self).__name__}: {self}"]


def _short(sha: str | None) -> str:
    return f"{sha[:8]}…" if sha else "none"


def _rows(path: Path) -> int:
    """Data rows of a CSV file as lines after the header (a last line without its newline counts)."""
    data = path.read_bytes()
    return max(data.count(b"\n") + (0 if data.endswith(b"\n") or not data else 1) - 1, 0)


def _read_record(path: Path) -> dict:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StaleInputError(f"{path}: the completion record cannot be read ({exc}); "
                              f"re-run the notebook that writes it") from None
    if not isinstance(record, dict):
        raise StaleInputError(f"{path}: the completion record is not a JSON object; re-run the notebook that writes it")
    return record


def rebuild_hint(run_dir, name: str) -> str:
    run = Path(run_dir)
    return (f"restore it, or delete {run / 'checkpoints'}/ and rebuild with "
            f"`geopak book {run.name} --start {REBUILD_FROM.get(name, '00_data_audit')}`")


# manifest -----------------------------------------------------------------------------------------

def write_manifest_record(run_dir) -> Path:
    """Stamp manifest.csv just written: its sha256 and row count, written after it (so a record
    always describes a whole file)."""
    path = Path(run_dir) / "manifest.csv"
    record = {"file": "manifest.csv", "sha256": file_sha256(path), "rows": _rows(path)}
    atomic_write_bytes(Path(run_dir) / MANIFEST_RECORD, json.dumps(record, indent=1).encode())
    return Path(run_dir) / MANIFEST_RECORD


def check_manifest(run_dir) -> None:
    """StaleInputError when manifest.csv does not match the record 00 wrote beside it (no record:
    a run made before records, accepted)."""
    run = Path(run_dir)
    record_path, path = run / MANIFEST_RECORD, run / "manifest.csv"
    if not record_path.is_file() or not path.is_file():
        return
    record = _read_record(record_path)
    sha = file_sha256(path)
    if sha != record.get("sha256"):
        raise StaleInputError(f"{path} does not match its completion record {record_path.name} "
                              f"({record.get('rows')} rows recorded, {_rows(path)} found; sha256 "
                              f"{_short(record.get('sha256'))} → {_short(sha)}): it was cut or edited after "
                              f"00_data_audit wrote it; rebuild it with `geopak book {run.name} --start 00_data_audit`")


# the cell set of 01 -------------------------------------------------------------------------------

def trained_checkpoints(run_dir) -> list[Path]:
    """Every checkpoint file under ``run_dir/checkpoints/``."""
    root = Path(run_dir) / "checkpoints"
    return sorted(root.rglob("*.pt")) if root.is_dir() else []


def write_cell_set(run_dir, write_into) -> list[Path]:
    """Write 01's geocells.json, geocells.csv and assignments.csv as one set.

    write_into(folder) writes the three files into a temp folder inside the run. A set equal to
    the one already there changes nothing. A different set under trained checkpoints is refused
    (they were trained on the old cells; docs/decisions/stamps.md). Otherwise the record is
    marked "writing", the files are renamed into place, and the record written last holds their
    sha256: readers refuse a set whose record is "writing" or does not match.
    """
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=run, prefix=".cellset."))
    try:
        write_into(tmp)
        missing = [n for n in CELL_SET if not (tmp / n).is_file()]
        if missing:
            raise RuntimeError(f"write_cell_set: the writer did not write {missing}")
        new = {n: file_sha256(tmp / n) for n in CELL_SET}
        old = {n: file_sha256(run / n) for n in CELL_SET if (run / n).is_file()}
        if old == new:
            _write_cells_record(run, {"state": "complete", "files": new})
            return [run / n for n in CELL_SET]
        ckpts = trained_checkpoints(run)
        if ckpts and old:
            shown = ", ".join(str(p) for p in ckpts[:3]) + (f" and {len(ckpts) - 3} more" if len(ckpts) > 3 else "")
            raise StaleInputError(f"01_geocells would replace the geocells under {len(ckpts)} trained checkpoint(s) "
                                  f"({shown}), which were trained on the current ones; to start fresh delete "
                                  f"{run / 'checkpoints'}/ (or set another run_dir) and run the book from 01_geocells")
        _write_cells_record(run, {"state": "writing"})
        for n in CELL_SET:
            os.replace(tmp / n, run / n)
        _write_cells_record(run, {"state": "complete", "files": new})
        return [run / n for n in CELL_SET]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_cells_record(run: Path, record: dict) -> None:
    atomic_write_bytes(run / CELLS_RECORD, json.dumps(record, indent=1).encode())


def check_cell_set(run_dir, name: str) -> None:
    """StaleInputError when ``name`` (one of the cell set) does not match 01's record: 01 was cut
    while writing, or the file was edited since (no record: a run made before records, accepted)."""
    run = Path(run_dir)
    record_path = run / CELLS_RECORD
    if not record_path.is_file() or not (run / name).is_file():
        return
    record = _read_record(record_path)
    if record.get("state") != "complete":
        raise StaleInputError(f"{run / name}: 01_geocells was interrupted while writing its cell set "
                              f"({record_path.name} says {record.get('state')!r}); re-run it with "
                              f"`geopak book {run.name} --only 01_geocells`")
    want, sha = (record.get("files") or {}).get(name), file_sha256(run / name)
    if want != sha:
        raise StaleInputError(f"{run / name} changed since 01_geocells wrote it (sha256 {_short(want)} → "
                              f"{_short(sha)}); {rebuild_hint(run, name)}")


# checkpoints --------------------------------------------------------------------------------------

def input_stamps(run_dir) -> dict:
    """{file: sha256} of the run's manifest, geocells and assignments that exist (what a checkpoint records)."""
    run = Path(run_dir)
    return {n: file_sha256(run / n) for n in INPUT_FILES if (run / n).is_file()}


def checkpoint_run(path) -> Path | None:
    """The run folder of ``<run>/checkpoints/phase<p>/<file>.pt``, else None (a copied checkpoint)."""
    path = Path(path)
    return path.parents[2] if len(path.parents) > 2 and path.parent.parent.name == "checkpoints" else None


def check_inputs(recorded: dict | None, run_dir, what) -> None:
    """StaleInputError naming the first input of ``run_dir`` whose sha256 differs from ``recorded``
    (what a checkpoint ``what`` was trained on). Files absent on either side are not compared:
    a checkpoint from before stamps, or one outside its run, has nothing to check against."""
    if not recorded or run_dir is None:
        return
    run = Path(run_dir)
    for name in INPUT_FILES:
        if name in recorded and (run / name).is_file():
            sha = file_sha256(run / name)
            if sha != recorded[name]:
                raise StaleInputError(f"{run / name} changed since {Path(what).name} ({what}) was trained "
                                      f"(sha256 {_short(recorded[name])} → {_short(sha)}); {rebuild_hint(run, name)}")
