"""The calibration record and how it is applied: a temperature for the province probabilities and,
per target coverage, a scale that turns the mixture's spread into an error radius. Saved beside the
checkpoint it was fitted on (stamped with that file's sha256); the predictor reads it from there
and checks it (calibration_record.Calibration: one block per mode, every value checked).
Also the other records stamped the same way (the evaluation summary). Fitting:
geopak_lib/analysis/calibration_fit.py. Decisions: docs/decisions/evaluation.md.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from geopak_lib.data.rundir import calibration_path, evaluation_path
from geopak_lib.inference.calibration_record import RADIUS_COVERAGE, RADIUS_FLOOR_KM, Calibration, checked_calibration
from geopak_lib.metrics import group_error_radius
from geopak_lib.utils import atomic_write_bytes, file_sha256


SMALL_PROVINCES = "small"  # the pooled group of predicted provinces with fewer than n_min validation images


def calibrated_radius(spread_km, province_pred, calibration: dict, coverage: float = RADIUS_COVERAGE) -> np.ndarray:
    """The radius (km) a calibration gives at ``coverage``: the predicted province's scale where it has
    one (its own group's, or the pooled small provinces'), else the global scale; never below the
    floor (as the predictor's, calibration_record.CalibrationBlock.radius_km). spread_km, province_pred (N,) -> (N,)."""
    by_province = calibration.get("radius_scales_by_province", {}).get(str(coverage), {})
    floor = calibration.get("radius_floor_km", RADIUS_FLOOR_KM)
    radius = group_error_radius(spread_km, [str(int(p)) for p in np.asarray(province_pred)], by_province,
                                calibration["radius_scales"][str(coverage)], floor_km=floor)
    return np.maximum(radius, floor)


# --- records beside the checkpoint, stamped with its sha256 -------------------------------------

def write_stamped(path: Path, checkpoint, body: dict) -> Path:
    body = {"checkpoint": str(checkpoint), "checkpoint_sha256": file_sha256(checkpoint), **body}
    atomic_write_bytes(path, json.dumps(body, indent=1, sort_keys=True).encode())
    return path


def read_stamped(path: Path, checkpoint, made: str, ok: str) -> tuple[dict | None, str]:
    """(record or None, why); a record made from another checkpoint (sha256 differs) is not used."""
    if not path.is_file():
        return None, f"no {path.name} beside the checkpoint (run 06_evaluation to make one)"
    try:  # an optional record: a damaged one is reported as missing, never a crash
        body = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        return None, f"{path} is not valid JSON ({e}); re-run 06_evaluation to rewrite it"
    if not isinstance(body, dict):
        return None, f"{path} does not hold a JSON object; re-run 06_evaluation to rewrite it"
    if body.get("checkpoint_sha256") != file_sha256(checkpoint):
        return None, f"{path.name} was {made} another checkpoint (sha256 differs); re-run 06_evaluation"
    return body, f"{ok} ({path.name})"


def save_calibration(checkpoint, calibration: dict) -> Path:
    """Write ``calibration`` beside the checkpoint: the plain block at the top level (temperature,
    radius_scales {coverage: scale}, ...), optionally ``refined`` and ``tta`` blocks with the same
    keys, and ``tta.refined`` for refined + TTA (calibration_record.MODE_KEYS)."""
    return write_stamped(calibration_path(checkpoint), checkpoint, {"radius_floor_km": RADIUS_FLOOR_KM, **calibration})


def load_calibration(checkpoint) -> tuple[dict | None, str]:
    """(calibration or None, why)."""
    return read_stamped(calibration_path(checkpoint), checkpoint, "fitted on", "calibrated on validation")


def load_checked_calibration(checkpoint) -> tuple[Calibration | None, str]:
    """(the checked Calibration or None, why): a record whose values fail the checks is refused,
    and why names the file and the key (calibration_record.checked_calibration)."""
    return checked_calibration(*load_calibration(checkpoint), source=str(calibration_path(checkpoint)))


def save_evaluation_summary(checkpoint, headline: dict, provinces: pd.DataFrame, extra: dict | None = None) -> Path:
    """06's test headline and per-province table beside the checkpoint (an export's model card
    quotes exactly these)."""
    body = {"split": "test", "headline": {k: float(v) for k, v in headline.items()},
            "per_province": json.loads(provinces.reset_index().to_json(orient="records")), **(extra or {})}
    return write_stamped(evaluation_path(checkpoint), checkpoint, body)


def load_evaluation_summary(checkpoint) -> tuple[dict | None, str]:
    """(summary or None, why)."""
    return read_stamped(evaluation_path(checkpoint), checkpoint, "made from", "evaluated on the test split")
