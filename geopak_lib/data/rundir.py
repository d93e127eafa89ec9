"""The run folder ``runs/<profile>/``: one owner for every artifact's path, typed reads and atomic
writes. The artifact table (who writes what, with which columns) is in docs/design.md.

    run = RunDir("runs/demo")
    manifest = run.read_manifest()           # id as str, clear error if 00_data_audit has not run
    run.phase_dir(1) / "best.pt"             # == run.best_checkpoint(1)
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd

from geopak_lib.data import stamps
from geopak_lib.data.cells import load_geocells, save_geocells
from geopak_lib.utils import atomic_write_bytes, read_json

# file name -> the notebook that writes it (for "run it first" messages)
WRITERS = {"manifest.csv": "00_data_audit", "rejects.csv": "00_data_audit", "fixes.csv": "00_data_audit",
           "concepts.json": "00_data_audit", "geocells.json": "01_geocells", "geocells.csv": "01_geocells", "assignments.csv": "01_geocells",
           "baselines_test.csv": "03_phase1_geography", "baselines_test_images.csv": "03_phase1_geography",
           "concept_ablation.csv": "03_phase1_geography", "final_checkpoint.txt": "05_phase3_finetune",
           "predictions_test.csv": "06_evaluation"}
ID_DTYPES = {"id": str}


class MissingRunError(FileNotFoundError):
    """A run folder, or an artifact in it, does not exist yet. In a notebook it shows as its one-line
    message, not a traceback: IPython prints what ``_render_traceback_`` returns."""

    def _render_traceback_(self) -> list[str]:
        return [f"{type(self).__name__}: {self}"]


class RunDir:
    """Paths and typed, atomic reads and writes of one run folder."""

    def __init__(self, path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    def file(self, name: str) -> Path:
        return self.path / name

    def require(self) -> "RunDir":
        """Self, or MissingRunError naming the command that makes the run (runs/<profile> by convention)."""
        if not self.path.is_dir():
            name = self.path.name
            raise MissingRunError(f"no run at {self.path}: make one with `make book PROFILE={name}` "
                                  f"(or `geopak book {name}`), or set run_dir to an existing run")
        return self

    def _existing(self, name: str) -> Path:
        path = self.require().file(name)
        if not path.is_file():
            writer = WRITERS.get(name, "the notebook that writes it")
            raise MissingRunError(f"{path} not found: run {writer} first (with the same run_dir)")
        return path

    # tables -----------------------------------------------------------------------------------

    def read_table(self, name: str) -> pd.DataFrame:
        """A CSV artifact, ids as strings (so '007' stays '007'). The manifest and 01's assignments
        are checked against their completion records first (data/stamps.py)."""
        path = self._existing(name)
        if name == "manifest.csv":
            stamps.check_manifest(self.path)
        elif name in stamps.CELL_SET:
            stamps.check_cell_set(self.path, name)
        return pd.read_csv(path, dtype=ID_DTYPES)

    def write_table(self, name: str, frame: pd.DataFrame) -> Path:
        """Write a CSV artifact atomically (temp file + rename); -> its path."""
        self.path.mkdir(parents=True, exist_ok=True)
        buf = io.StringIO()
        frame.to_csv(buf, index=False)
        atomic_write_bytes(self.file(name), buf.getvalue().encode())
        if name == "manifest.csv":  # its completion record, written after it
            stamps.write_manifest_record(self.path)
        return self.file(name)

    def read_manifest(self) -> pd.DataFrame:
        return self.read_table("manifest.csv")

    def write_manifest(self, manifest: pd.DataFrame) -> Path:
        return self.write_table("manifest.csv", manifest)

    def read_assignments(self) -> pd.DataFrame:
        return self.read_table("assignments.csv")

    def write_assignments(self, assignments: pd.DataFrame) -> Path:
        return self.write_table("assignments.csv", assignments)

    def read_baselines(self, *, per_image: bool = False) -> pd.DataFrame | None:
        """baselines_test.csv (03: one summary row per baseline), or with ``per_image`` its per-image
        errors (baselines_test_images.csv, falling back to the summaries for a run made before 03
        kept them); None when phase 1 has not written them."""
        for name in ("baselines_test_images.csv",) * per_image + ("baselines_test.csv",):
            if self.file(name).is_file():
                return self.read_table(name)
        return None

    def write_concepts(self, mapping: dict) -> Path:
        """concepts.json (00): the concept classes decided on the training split
        (concepts.concept_mapping), atomically."""
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.file("concepts.json"), json.dumps(mapping, indent=1, ensure_ascii=False).encode())
        return self.file("concepts.json")

    def read_concepts(self, required: bool = True) -> dict | None:
        """concepts.json (00); None when it is absent and not ``required`` (a run made before it)."""
        if not required and not self.file("concepts.json").is_file():
            return None
        return read_json(self._existing("concepts.json"), "re-run notebook 00_data_audit to rewrite it")

    def read_concept_ablation(self) -> pd.DataFrame | None:
        """concept_ablation.csv (03 with concept_ablation on), or None when it was not run."""
        return self.read_table("concept_ablation.csv") if self.file("concept_ablation.csv").is_file() else None

    def read_geocells(self) -> pd.DataFrame:
        """geocells.json (01), neighbour lists as lists of ints, checked against 01's record."""
        path = self._existing("geocells.json")
        stamps.check_cell_set(self.path, "geocells.json")
        return load_geocells(path)

    def write_geocells(self, cells: pd.DataFrame) -> tuple[Path, Path]:
        """geocells.json and geocells.csv (neighbor_cell_ids space-separated), atomically."""
        self.path.mkdir(parents=True, exist_ok=True)
        return save_geocells(cells, self.path)

    def write_cell_set(self, cells: pd.DataFrame, assignments: pd.DataFrame) -> list[Path]:
        """01's geocells.json, geocells.csv and assignments.csv as one set, all or none; refused
        when it would replace the cells under trained checkpoints (stamps.write_cell_set)."""
        def write_into(folder):
            save_geocells(cells, folder)
            RunDir(folder).write_table("assignments.csv", assignments)
        return stamps.write_cell_set(self.path, write_into)

    # checkpoints ------------------------------------------------------------------------------

    def phase_dir(self, phase: int) -> Path:
        """``checkpoints/phase{p}/``: epoch_{n}.pt, best.pt, log.txt, losses.csv."""
        return self.path / "checkpoints" / f"phase{int(phase)}"

    def best_checkpoint(self, phase: int) -> Path:
        return self.phase_dir(phase) / "best.pt"

    def losses(self, phase: int) -> pd.DataFrame | None:
        """A phase's losses.csv, or None when that phase has not run."""
        csv = self.phase_dir(phase) / "losses.csv"
        return pd.read_csv(csv) if csv.is_file() else None

    def write_final_checkpoint(self, checkpoint) -> Path:
        """Record the final model (final_checkpoint.txt holds its path)."""
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.file("final_checkpoint.txt"), f"{Path(checkpoint)}\n".encode())
        return self.file("final_checkpoint.txt")

    def read_final_checkpoint(self) -> Path | None:
        """The path final_checkpoint.txt names (None when the file does not exist)."""
        record = self.file("final_checkpoint.txt")
        return Path(record.read_text().strip()) if record.is_file() else None

    @property
    def notebooks(self) -> Path:
        """Executed notebooks of the last `geopak book` run of this profile."""
        return self.path / "notebooks"


def evaluation_path(checkpoint) -> Path:
    """06's summary beside a checkpoint: ``.../best.pt`` -> ``.../best.evaluation.json``."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.stem + ".evaluation.json")


def calibration_path(checkpoint) -> Path:
    """The calibration beside a checkpoint: ``.../phase2/best.pt`` -> ``.../phase2/best.calibration.json``."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.stem + ".calibration.json")
