"""The calibration as a typed, checked record: one block per prediction mode, each block's values
checked when it is read (finite, temperature > 0, scales > 0, floor >= 0).

Modes: ``plain``, ``refined`` (refinement inside the cells on), ``tta`` and ``refined+tta``. The JSON
layout 06_evaluation writes (calibration.save_calibration) is read as it is: the top level is the
plain block, ``refined`` the refined one, ``tta`` the TTA one and ``tta.refined`` (inside the TTA
block) refined + TTA. A mode that is absent stays absent: the predictor never applies another
mode's block in its place. Decisions: docs/decisions/evaluation.md ("Typed calibration").
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

from geopak_lib.constants import NUM_PROVINCES

RADIUS_COVERAGE = 0.8  # the coverage of the reported radius_km
RADIUS_FLOOR_KM = 1.0
MODES = ("plain", "refined", "tta", "refined+tta")
MISSING_MODE = "radius_km is not calibrated in mode "  # how the predictor's warning for a missing mode begins
MODE_KEYS = {"plain": "", "refined": "refined", "tta": "tta", "refined+tta": "tta.refined"}  # where in the JSON


class CalibrationError(ValueError):
    """A calibration record with a missing or impossible value; the message names the file and the key."""


def mode_name(*, tta: bool, refined: bool) -> str:
    """The calibration mode of a predictor setting: 'plain', 'refined', 'tta' or 'refined+tta'."""
    return {(False, False): "plain", (False, True): "refined", (True, False): "tta", (True, True): "refined+tta"}[
        (bool(tta), bool(refined))]


def _frozen(d: dict) -> Mapping:
    return MappingProxyType(dict(d))


@dataclass(frozen=True)
class CalibrationBlock:
    """One mode's calibration: temperature of the province logits, radius scales {str(coverage): scale},
    per-province scales {str(coverage): {str(province_id): scale}}, the floor (km) and what it was
    fitted on. Built by :meth:`Calibration.from_dict`, which checks every value."""

    temperature: float
    radius_scales: Mapping[str, float]
    radius_scales_by_province: Mapping[str, Mapping[str, float]] = field(default_factory=lambda: _frozen({}))
    radius_floor_km: float = RADIUS_FLOOR_KM
    fitted_on: str = ""

    def radius_km(self, spread_km: float, province_id: int, coverage: str) -> float:
        """scale * (spread_km + floor), never below the floor; the scale is the predicted province's
        own where fitted, else the global one at ``coverage`` (a key of radius_scales)."""
        scale = self.radius_scales_by_province.get(coverage, {}).get(str(int(province_id)), self.radius_scales[coverage])
        return max(scale * (float(spread_km) + self.radius_floor_km), self.radius_floor_km)


@dataclass(frozen=True)
class Calibration:
    """The checked calibration record: {mode: CalibrationBlock} for the modes it holds, where it was
    read from (``source``) and the JSON dict it was read from (``raw``: also 06's test ECE, coverage, n_val)."""

    blocks: Mapping[str, CalibrationBlock]
    source: str = "calibration"
    raw: Mapping = field(default_factory=lambda: _frozen({}), repr=False)

    def block(self, mode: str) -> CalibrationBlock | None:
        if mode not in MODES:
            raise ValueError(f"unknown calibration mode {mode!r}; one of {MODES}")
        return self.blocks.get(mode)

    def missing_note(self, mode: str) -> str:
        """The warning for a mode this record does not hold."""
        where = "the top level" if mode == "plain" else f"'{MODE_KEYS[mode]}'"
        return (f"{MISSING_MODE}{mode}: {self.source} has no {mode} block ({where}; it holds "
                f"{', '.join(self.blocks) or 'none'}), so radius_km is the uncalibrated spread + "
                f"{RADIUS_FLOOR_KM:g} km and the confidence uses temperature 1")

    @classmethod
    def from_dict(cls, body, *, source: str = "calibration", prefix: str = "") -> "Calibration":
        """Check and read the JSON dict 06 writes. source names the file, prefix the key path inside
        it (e.g. 'calibration.' for a model folder's config.json). Raises CalibrationError."""
        if not isinstance(body, dict):
            raise CalibrationError(f"{source}: {prefix.rstrip('.') or 'the calibration'} is not a JSON object")
        floor = _number(body.get("radius_floor_km", RADIUS_FLOOR_KM), f"{prefix}radius_floor_km", source, floor=True)
        blocks = {"plain": _block(body, prefix, source, floor)}
        for mode in ("refined", "tta", "refined+tta"):
            parent = body if mode != "refined+tta" else body.get("tta")
            key = MODE_KEYS[mode].split(".")[-1]
            if isinstance(parent, dict) and key in parent:
                blocks[mode] = _block(parent[key], f"{prefix}{MODE_KEYS[mode]}.", source, floor)
        return cls(_frozen(blocks), source, _frozen(body))


def _number(value, key: str, source: str, *, floor: bool = False) -> float:
    """A finite number > 0 (>= 0 for a floor), else CalibrationError naming the key."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not floor):
        raise CalibrationError(f"{source}: {key} must be a finite number {'>= 0' if floor else '> 0'} "
                               f"(got {value!r}); re-run 06_evaluation to refit the calibration")
    return float(value)


def _scales(value, key: str, source: str) -> dict:
    if not isinstance(value, dict):
        raise CalibrationError(f"{source}: {key} must be a JSON object {{coverage: scale}} (got {value!r})")
    for c in value:
        try:
            ok = 0.0 < float(c) <= 1.0
        except ValueError:
            ok = False
        if not ok:
            raise CalibrationError(f"{source}: {key} has the key {c!r}, which is not a coverage in (0, 1]")
    return {str(c): _number(s, f"{key}.{c}", source) for c, s in value.items()}


def _block(body, prefix: str, source: str, floor: float) -> CalibrationBlock:
    """One mode's block; a block without its own radius_floor_km takes the file's (06 writes it once)."""
    if not isinstance(body, dict):
        raise CalibrationError(f"{source}: {prefix.rstrip('.')} is not a JSON object")
    for key in ("temperature", "radius_scales"):
        if key not in body:
            raise CalibrationError(f"{source}: {prefix}{key} is missing; re-run 06_evaluation to refit the calibration")
    scales = _scales(body["radius_scales"], f"{prefix}radius_scales", source)
    if str(RADIUS_COVERAGE) not in scales:
        raise CalibrationError(f"{source}: {prefix}radius_scales has no scale for the reported coverage "
                               f"'{RADIUS_COVERAGE}'")
    by = body.get("radius_scales_by_province", {})
    if not isinstance(by, dict) or not all(isinstance(v, dict) for v in by.values()):
        raise CalibrationError(f"{source}: {prefix}radius_scales_by_province must be "
                               "{coverage: {province_id: scale}}")
    _scales(dict.fromkeys(by, 1.0), f"{prefix}radius_scales_by_province", source)  # its coverage keys
    for c, per in by.items():
        bad = [p for p in per if p not in {str(i) for i in range(NUM_PROVINCES)}]
        if bad:
            raise CalibrationError(f"{source}: {prefix}radius_scales_by_province.{c} has the key {bad[0]!r}, "
                                   f"which is not a province id 0-{NUM_PROVINCES - 1}")
    by_province = {str(c): _frozen({p: _number(s, f"{prefix}radius_scales_by_province.{c}.{p}", source)
                                    for p, s in per.items()}) for c, per in by.items()}
    own_floor = body.get("radius_floor_km")
    fitted_on = body.get("fitted_on", "")
    return CalibrationBlock(
        temperature=_number(body["temperature"], f"{prefix}temperature", source),
        radius_scales=_frozen(scales), radius_scales_by_province=_frozen(by_province),
        radius_floor_km=floor if own_floor is None else _number(own_floor, f"{prefix}radius_floor_km", source,
                                                                floor=True),
        fitted_on=fitted_on if isinstance(fitted_on, str) else str(fitted_on))


def checked_calibration(body, why: str, *, source: str, prefix: str = "") -> tuple[Calibration | None, str]:
    """(JSON dict or None, why) as load_calibration gives it -> (Calibration or None, why). An invalid
    record is refused: None, and why is the one line naming the file and the key."""
    if body is None:
        return None, why
    try:
        return Calibration.from_dict(body, source=source, prefix=prefix), why
    except CalibrationError as exc:
        return None, f"calibration refused: {exc}"


def as_calibration(calibration, source: str = "the calibration given") -> Calibration | None:
    """A Calibration as it is, a JSON dict checked (CalibrationError on a bad value), or None."""
    return Calibration.from_dict(calibration, source=source) if isinstance(calibration, dict) else calibration


def block_for(calibration: Calibration | None, *, tta: bool, refined: bool) -> tuple[CalibrationBlock | None, str]:
    """The block of this setting's own mode, never another's, and what to say about it: (block,
    '<mode>: calibrated'), (None, Calibration.missing_note) or (None, 'uncalibrated') without a record."""
    mode = mode_name(tta=tta, refined=refined)
    if calibration is None:
        return None, f"{mode}: uncalibrated"
    block = calibration.block(mode)
    return block, f"{mode}: calibrated" if block is not None else calibration.missing_note(mode)
