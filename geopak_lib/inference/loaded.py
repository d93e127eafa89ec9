"""What the predictor says about a model it loaded, and where that model's refinement gallery lives."""

from __future__ import annotations

from geopak_lib.inference.model_folder import load_folder_gallery, read_model_folder
from geopak_lib.inference.refinement import load_gallery


def model_warnings(info: dict, calibration) -> list[str]:
    """What a user must know about a loaded model: random encoder weights, a phase-0 model, no calibration."""
    out = [f"{s} `{e['spec']}` runs on random weights ({e['weight_status']}): its features carry no "
           "pretrained knowledge" for s, e in info["encoders"].items() if e.get("is_random")]
    if int(info["phase"]) == 0:
        out.append("phase-0 checkpoint: only the province head is trained; lat/lon are not meaningful")
    if calibration is None:
        out.append(f"radius_km is not calibrated: {info['calibration']}")
    return out


def gallery_loader(source, model_folder: bool = False):
    """The zero-argument loader of a checkpoint's gallery (beside it) or an exported folder's (inside it)."""
    if model_folder:
        return lambda: load_folder_gallery(source, read_model_folder(source))
    return lambda: load_gallery(source)
