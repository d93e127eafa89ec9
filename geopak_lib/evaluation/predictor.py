"""The predictor: a trained checkpoint in, province + lat/lon + calibrated error radius out.

``GeopakPredictor.from_checkpoint(path)`` needs nothing but the checkpoint (model config, geocell
table, encoder specs and weights, preprocessing) and, if present, the calibration file that
06_evaluation writes beside it (``<checkpoint stem>.calibration.json``: province temperature and
error-radius scales). The ``geopak predict`` command is in predict_cli.py.
Decisions and their reasons: docs/decisions/evaluation.md.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from geopak_lib.constants import PROVINCES
from geopak_lib.model.inference import mixture_predict
from geopak_lib.metrics import error_radius
from geopak_lib.utils import atomic_write_bytes, pick_device

TRAINING_NOTEBOOKS = "02_phase0_province ... 05_phase3_finetune"
RADIUS_COVERAGE = 0.8  # the coverage of the reported radius_km
RADIUS_FLOOR_KM = 1.0
TTA_VIEWS = ("identity", "zoom_0.85", "crop_tl_0.9", "crop_br_0.9", "contrast_0.9")


# --- which checkpoint, and its calibration -------------------------------------------------

def final_checkpoint(run_dir) -> Path:
    """The model to evaluate: the path in ``final_checkpoint.txt`` (written by 05), else the
    highest-phase ``checkpoints/phase{p}/best.pt`` that exists."""
    run_dir = Path(run_dir)
    record = run_dir / "final_checkpoint.txt"
    if record.is_file():
        path = Path(record.read_text().strip())
        if path.is_file():
            return path
        raise FileNotFoundError(f"{record} names {path}, which does not exist; re-run 05_phase3_finetune")
    for phase in (3, 2, 1, 0):
        path = run_dir / "checkpoints" / f"phase{phase}" / "best.pt"
        if path.is_file():
            return path
    raise FileNotFoundError(f"no trained model in {run_dir}: neither final_checkpoint.txt nor "
                            f"checkpoints/phase*/best.pt exists; run the training notebooks {TRAINING_NOTEBOOKS}")


def calibration_path(checkpoint) -> Path:
    """``runs/x/checkpoints/phase2/best.pt`` -> ``.../phase2/best.calibration.json``."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.stem + ".calibration.json")


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_calibration(checkpoint, calibration: dict) -> Path:
    """Write ``calibration`` (temperature, radius_scales {coverage: scale}, ...; optionally a
    ``tta`` block with the same keys) beside the checkpoint, stamped with the checkpoint's sha256."""
    out = calibration_path(checkpoint)
    body = {"checkpoint": str(checkpoint), "checkpoint_sha256": file_sha256(checkpoint),
            "radius_floor_km": RADIUS_FLOOR_KM, **calibration}
    atomic_write_bytes(out, json.dumps(body, indent=1, sort_keys=True).encode())
    return out


def load_calibration(checkpoint) -> tuple[dict | None, str]:
    """(calibration or None, why). A file fitted on another checkpoint (sha256 differs) is ignored."""
    path = calibration_path(checkpoint)
    if not path.is_file():
        return None, f"no {path.name} beside the checkpoint (run 06_evaluation to fit one)"
    cal = json.loads(path.read_text())
    if cal.get("checkpoint_sha256") != file_sha256(checkpoint):
        return None, f"{path.name} was fitted on another checkpoint (sha256 differs); re-run 06_evaluation"
    return cal, f"calibrated on validation ({path.name})"


# --- images in ---------------------------------------------------------------------------

def to_pil(image) -> Image.Image:
    """PIL image, numpy array (H, W[, 3|4]) uint8 or float in [0, 1], or a path -> RGB PIL image."""
    if isinstance(image, (str, Path)):
        from geopak_lib.data.validate import load_rgb

        return load_rgb(image)
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    a = np.asarray(image)
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (1, 3, 4)):
        raise ValueError(f"expected an image array (H, W), (H, W, 3) or (H, W, 4), got shape {a.shape}")
    if a.dtype != np.uint8:
        a = np.asarray(a, float)
        a = np.clip(a * (255.0 if a.max() <= 1.0 else 1.0), 0, 255).round().astype(np.uint8)
    a = a[..., :3] if a.ndim == 3 and a.shape[2] == 4 else a
    a = np.repeat(a[..., None] if a.ndim == 2 else a, 3, axis=2) if a.ndim == 2 or a.shape[2] == 1 else a
    return Image.fromarray(np.ascontiguousarray(a))


class ImageFiles(torch.utils.data.Dataset):
    """Files -> (index, uint8 (3, S, S) clean view or None, error message or "")."""

    def __init__(self, paths, size: int):
        from geopak_lib.data.augment import clean_transform

        self.paths, self.transform = [str(p) for p in paths], clean_transform(size)

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        try:
            return i, self.transform(to_pil(self.paths[i])), ""
        except Exception as exc:  # any unreadable file becomes an error record, never a crash
            return i, None, str(exc) if "cannot load image" in str(exc) else f"{type(exc).__name__}: {exc}"


def collate_files(batch):
    """-> (ok indices, uint8 (B_ok, 3, S, S) or None, {index: error})."""
    ok = [(i, x) for i, x, _ in batch if x is not None]
    errors = {i: e for i, x, e in batch if x is None}
    return [i for i, _ in ok], (torch.stack([x for _, x in ok]) if ok else None), errors


# --- test-time augmentation -----------------------------------------------------------------

def tta_views(images: torch.Tensor, n_views: int = len(TTA_VIEWS)) -> list[torch.Tensor]:
    """Geography-safe views of uint8 (B, 3, S, S): identity, a centre zoom, two corner crops and a
    contrast change. No flips or rotations: left-right layout is a location cue."""
    size = images.shape[-1]
    x = images.float()

    def crop(frac, where):
        c = int(round(size * frac))
        o = {"c": ((size - c) // 2,) * 2, "tl": (0, 0), "br": (size - c, size - c)}[where]
        part = x[..., o[0]:o[0] + c, o[1]:o[1] + c]
        return F.interpolate(part, size=(size, size), mode="bilinear", antialias=True, align_corners=False)

    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    make = {"identity": lambda: x, "zoom_0.85": lambda: crop(0.85, "c"), "crop_tl_0.9": lambda: crop(0.9, "tl"),
            "crop_br_0.9": lambda: crop(0.9, "br"), "contrast_0.9": lambda: mean + 0.9 * (x - mean)}
    return [make[name]().round().clamp(0, 255).to(torch.uint8) for name in TTA_VIEWS[:max(1, n_views)]]


def merge_view_outputs(views: list[dict]) -> dict:
    """Average the province and per-province cell probabilities over views (returned as log-probs,
    so softmax gives the mean back). Offsets and α come from the first (identity) view: a crop moves
    the content, and the offset head's answer is relative to the full frame."""
    def log_mean(ts):
        return torch.log(torch.stack([torch.softmax(t, -1) for t in ts]).mean(0).clamp_min(1e-30))

    first = views[0]
    return {"fused": first["fused"], "alpha": first["alpha"],
            "province_logits": log_mean([v["province_logits"] for v in views]),
            "geocell_logits": {p: log_mean([v["geocell_logits"][p] for v in views]) for p in first["geocell_logits"]},
            "aux_latlon": torch.stack([v["aux_latlon"] for v in views]).mean(0)}


def outputs_to(outputs: dict, device) -> dict:
    """Move a model-outputs dict (tensors, and the geocell_logits dict of tensors) to ``device``."""
    return {k: ({p: t.to(device) for p, t in v.items()} if isinstance(v, dict) else v.to(device))
            for k, v in outputs.items()}


def cat_outputs(parts: list[dict]) -> dict:
    """Concatenate model-outputs dicts along the batch axis."""
    first = parts[0]
    return {k: ({p: torch.cat([o[k][p] for o in parts]) for p in first[k]} if isinstance(first[k], dict)
                else torch.cat([o[k] for o in parts])) for k in first}


def select_outputs(outputs: dict, index) -> dict:
    """Rows ``index`` of a model-outputs dict."""
    index = torch.as_tensor(np.asarray(index), dtype=torch.long)
    return {k: ({p: t[index] for p, t in v.items()} if isinstance(v, dict) else v[index]) for k, v in outputs.items()}


# --- the predictor -----------------------------------------------------------------------------

class GeopakPredictor:
    """Predict (province, lat, lon, confidence, radius_km, hypotheses) for images.

    Build it with :meth:`from_checkpoint`. ``warnings`` lists what a user must know (random
    encoder weights, an uncalibrated radius, a phase-0 model whose location heads are untrained).
    """

    def __init__(self, model, checkpoint=None, calibration: dict | None = None, tta: bool = False,
                 top_provinces: int = 2, top_cells: int = 5, info: dict | None = None, warnings=()):
        self.model, self.checkpoint = model.eval(), checkpoint
        self.device = next(model.parameters()).device
        self.tta, self.top_provinces, self.top_cells = tta, top_provinces, top_cells
        self.calibration, self.info, self.warnings = calibration, dict(info or {}), list(warnings)
        from geopak_lib.training.cache import channels_last, view_size

        self.image_size = view_size(model.clip_encoder, model.scene_encoder)
        channels_last(model.clip_encoder, model.scene_encoder)  # conv encoders: 1.7x on CPU, docs/performance.md

    @classmethod
    def from_checkpoint(cls, path, device="auto", tta: bool = False, calibration="auto",
                        top_provinces: int = 2, top_cells: int = 5) -> "GeopakPredictor":
        """Load a trained checkpoint (best.pt of phases 0-3). calibration: 'auto' (the file beside
        the checkpoint, if it matches), None (uncalibrated) or a dict."""
        from geopak_lib.training.checkpoints import build_model_from_checkpoint, load_checkpoint

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {path} not found: checkpoints are written by the training "
                                    f"notebooks {TRAINING_NOTEBOOKS} (runs/<profile>/checkpoints/phase<p>/best.pt; "
                                    "the kept one is named in runs/<profile>/final_checkpoint.txt)")
        dev = pick_device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("device 'cuda' was asked for but no CUDA GPU is available; use --device cpu or auto")
        ckpt = load_checkpoint(path)  # ValueError: unreadable, or not a GEOPAK checkpoint
        missing = [k for k in ("model_state", "model_meta", "encoders", "phase") if k not in ckpt]
        if missing:
            raise ValueError(f"checkpoint {path} lacks {missing}: it is damaged or from an incompatible version")
        if any(ckpt["encoders"].get(s) is None for s in ("clip_encoder", "scene_encoder")):
            raise ValueError(f"checkpoint {path} holds heads only (trained without encoders), so it cannot "
                             "read images; use a checkpoint from the training notebooks")
        logging.disable(logging.WARNING)  # building an encoder logs "random weights" before the checkpoint's
        try:                              # weights are loaded; what is true is said in self.warnings
            model = build_model_from_checkpoint(ckpt, with_encoders=True, device=dev)
        except (KeyError, RuntimeError, TypeError) as exc:  # shapes or config keys from another version
            raise ValueError(f"checkpoint {path} does not fit this version of geopak_lib "
                             f"({type(exc).__name__}: {exc})") from exc
        finally:
            logging.disable(logging.NOTSET)
        warnings = [f"{s} `{e['spec']}` runs on random weights ({e['weight_status']}): its features carry no "
                    "pretrained knowledge" for s, e in ckpt["encoders"].items() if e.get("is_random")]
        if int(ckpt["phase"]) == 0:
            warnings.append("phase-0 checkpoint: only the province head is trained; lat/lon are not meaningful")
        why = "calibration given by the caller" if isinstance(calibration, dict) else "uncalibrated (none asked for)"
        if calibration == "auto":
            calibration, why = load_calibration(path)
        if calibration is None:
            warnings.append(f"radius_km is not calibrated: {why}")
        info = {"checkpoint": str(path), "phase": int(ckpt["phase"]), "epoch": ckpt.get("epoch"),
                "encoders": ckpt["encoders"], "calibration": why}
        return cls(model, path, calibration, tta, top_provinces, top_cells, info, warnings)

    # raw outputs -------------------------------------------------------------------------

    def _cal(self) -> dict:
        """The calibration block matching the TTA setting ({} when uncalibrated)."""
        cal = self.calibration or {}
        return cal.get("tta", {}) if self.tta else cal

    @torch.no_grad()
    def forward_images(self, images: torch.Tensor, tta: bool | None = None) -> dict:
        """uint8 (B, 3, S, S) -> model outputs (views merged when tta; default: self.tta), on CPU."""
        from geopak_lib.training.cache import encoder_input

        m, tta = self.model, self.tta if tta is None else tta
        views = tta_views(images) if tta else [images]
        outs = []
        for v in views:
            v = v.to(self.device)
            outs.append(m(encoder_input(v, m.clip_encoder.preprocess), encoder_input(v, m.scene_encoder.preprocess)))
        return outputs_to(merge_view_outputs(outs) if tta else outs[0], "cpu")

    def raw_outputs(self, paths, batch_size: int = 32, progress: bool = True, num_workers: int = 0):
        """Model outputs for image files -> (outputs of the readable files in order or None,
        their indices into ``paths`` (array), {index: error message} for the others)."""
        loader = torch.utils.data.DataLoader(ImageFiles(paths, self.image_size), batch_size=batch_size,
                                             num_workers=num_workers, collate_fn=collate_files)
        parts, ok, errors = [], [], {}
        with tqdm(total=len(paths), desc="predict", unit="img", disable=not progress) as bar:
            for idx, images, errs in loader:
                errors.update(errs)
                if images is not None:
                    parts.append(self.forward_images(images))
                    ok += idx
                bar.update(len(idx) + len(errs))
        return (cat_outputs(parts) if parts else None), np.asarray(ok, dtype=int), errors

    # results -----------------------------------------------------------------------------

    @torch.no_grad()
    def results_from_outputs(self, outputs: dict) -> list[dict]:
        """Model outputs (B rows) -> B result dicts (see :meth:`predict`)."""
        out = outputs_to(outputs, self.device)
        pred = {k: v.cpu().numpy() for k, v in
                mixture_predict(self.model, out, self.top_provinces, self.top_cells).items()}
        cal = self._cal()
        temperature = float(cal.get("temperature", 1.0))
        probs = torch.softmax(out["province_logits"] / temperature, -1).cpu().numpy()
        scales = cal.get("radius_scales", {})
        results = []
        for i in range(len(probs)):
            valid = pred["hyp_cell_id"][i] >= 0
            order = np.argsort(-pred["hyp_weight"][i][valid], kind="stable")
            cols = [pred[k][i][valid][order] for k in ("hyp_province_id", "hyp_cell_id", "hyp_lat", "hyp_lon",
                                                       "hyp_weight")]
            hyps = [{"province": PROVINCES[int(pr)], "cell_id": int(c), "lat": float(la), "lon": float(lo),
                     "weight": float(w)} for pr, c, la, lo, w in zip(*cols)]
            spread = float(pred["spread_km"][i])
            radii = {str(c): float(error_radius(spread, s, RADIUS_FLOOR_KM)) for c, s in scales.items()}
            key = str(RADIUS_COVERAGE)
            results.append({
                "province": PROVINCES[int(probs[i].argmax())], "province_id": int(probs[i].argmax()),
                "lat": float(pred["lat"][i]), "lon": float(pred["lon"][i]), "confidence": float(probs[i].max()),
                "radius_km": radii.get(key, float(error_radius(spread, 1.0, RADIUS_FLOOR_KM))),
                "radius_calibrated": key in radii, "radius_coverage": RADIUS_COVERAGE if key in radii else None,
                "radii_km": radii, "spread_km": spread, "temperature": temperature,
                "province_probs": {p: float(v) for p, v in zip(PROVINCES, probs[i])},
                "alpha": float(out["alpha"][i]), "hypotheses": hyps})
        return results

    def predict(self, image) -> dict:
        """One image (PIL image, numpy array or path) -> dict: province, province_id, lat, lon (degrees),
        confidence (calibrated probability of that province), radius_km (the truth lies within it for
        ~80% of validation images when radius_calibrated), radius_calibrated, radius_coverage,
        radii_km {coverage: km}, spread_km, province_probs, alpha (fusion gate), hypotheses (list of
        province, cell_id, lat, lon, weight; best first)."""
        from geopak_lib.data.augment import clean_transform

        view = clean_transform(self.image_size)(to_pil(image)).unsqueeze(0)
        return self.results_from_outputs(self.forward_images(view))[0]

    def predict_many(self, paths, batch_size: int = 32, progress: bool = True, num_workers: int = 0) -> list[dict]:
        """One dict per path, in order: the predict() result plus ``image`` and ``error`` ("" when
        predicted; otherwise the reason, and no prediction keys)."""
        paths = [str(p) for p in paths]
        outputs, ok, errors = self.raw_outputs(paths, batch_size, progress, num_workers)
        records = [{"image": p, "error": errors.get(i, "")} for i, p in enumerate(paths)]
        for s in range(0, len(ok), batch_size):  # the heads in batches: bounded memory
            part = self.results_from_outputs(select_outputs(outputs, np.arange(s, min(s + batch_size, len(ok)))))
            for i, r in zip(ok[s:s + batch_size], part):
                records[i].update(r)
        return records

