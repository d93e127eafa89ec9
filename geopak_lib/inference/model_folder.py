"""A trained model as one folder to hand to someone: ``model.safetensors`` (weights; safetensors
cannot hold code) and ``config.json`` (everything else, plain JSON). The model card (README.md)
is written by the app (geopak_lib/book/model_card.py). Decisions: docs/decisions/sharing.md.

What the weights file holds: every head, plus those encoder tensors that cannot be rebuilt from
the encoder's spec on another machine: tensors that differ from what ``build_encoder(spec)``
gives here (fine-tuned top blocks, a random-weight encoder, weights from a local file). With
``include_encoders`` every encoder tensor is copied. With ``include_gallery`` the refinement gallery
that 06 saved beside the checkpoint goes in as ``gallery.npz`` (plain arrays, read with
``allow_pickle=False``): the fused embedding and the position of every training image, so it is
opt-in. ``config.json`` records each file's sha256, and loading refuses a file whose bytes differ.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from geopak_lib.constants import PROVINCES
from geopak_lib.data.rundir import calibration_path
from geopak_lib.inference.calibration import load_calibration, load_evaluation_summary
from geopak_lib.inference.calibration_record import Calibration, checked_calibration
from geopak_lib.inference.refinement import gallery_paths, load_gallery, read_gallery
from geopak_lib.model.encoders import RandomWeightsWarning, build_encoder
from geopak_lib.model.geopak import GeopakModel
from geopak_lib.training.checkpoints import ENCODER_SLOTS, load_checkpoint
from geopak_lib.utils import BadFileError, atomic_write_bytes, file_sha256, quiet_logging, read_json, state_sha256

MODEL_FORMAT = "geopak-model-v1"
WEIGHTS_FILE = "model.safetensors"
GALLERY_FILE = "gallery.npz"
REQUIRED_KEYS = ("model", "encoders", "preprocess", "weights", "n_cells")  # what loading reads (optional blocks may be null)
STAMP_KEYS = ("checkpoint", "checkpoint_sha256", "arrays_sha256")  # the checkpoint's own stamps stay behind


class ModelFolderError(ValueError):
    """A model folder that is incomplete, altered or of another format."""


def _fresh_encoder(spec: str):
    """The encoder a user gets from its spec on this machine (quietly: its status is checked by the caller)."""
    with quiet_logging(), warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        return build_encoder(spec, None, strict=False)


def spec_digest(encoder, slot: str, tensors: dict) -> str:
    """sha256 of the encoder tensors a loaded folder takes from the spec build (those not in the
    weights file): equal digests at export and load mean the model runs on the weights it was
    trained with (docs/decisions/sharing.md)."""
    return state_sha256({k: v for k, v in encoder.state_dict().items() if f"{slot}.{k}" not in tensors})


def check_spec_weights(folder, slot: str, info: dict, encoder, *, tensors: dict) -> None:
    """Refuse, in one line, an encoder whose spec builds other weights here than at export."""
    expected = info.get("spec_sha256")
    if expected is None:
        raise ModelFolderError(f"{folder}: config.json records no spec_sha256 for {slot} (exported before "
                               "encoder checksums): export it again")
    if spec_digest(encoder, slot, tensors) == expected:
        return
    if encoder.is_random and not info.get("is_random"):
        why = f"its weights ({info.get('weight_status')}) are not available on this machine ({encoder.weight_status})"
    else:
        why = "the weights its spec builds on this machine differ from the ones it was exported with"
    raise ModelFolderError(f"{folder}: {slot} {info['spec']}: {why}; export the folder with --include-encoders, "
                           "or install those weights here")


def preprocess_info(encoder) -> dict:
    """An encoder's input preprocessing as plain values (size in pixels, mean/std per channel)."""
    pre = encoder.preprocess
    return {"image_size": int(pre.image_size), "mean": [float(v) for v in pre.mean],
            "std": [float(v) for v in pre.std], "interpolation": str(getattr(pre, "interpolation", ""))}


def check_preprocess(folder, slot: str, recorded, encoder) -> None:
    """Refuse, in one line, a folder whose recorded input (size, mean/std) differs from what the
    encoder rebuilt here expects: the heads were trained on features of that input."""
    built = preprocess_info(encoder)
    if not isinstance(recorded, dict) or "image_size" not in recorded:
        raise ModelFolderError(f"{folder}/config.json: no preprocess.{slot}.image_size; export the folder again")
    diff = [k for k in ("image_size", "mean", "std") if k in recorded and recorded[k] != built[k]]
    if diff:
        raise ModelFolderError(f"{folder}/config.json: {slot} {encoder.spec}: recorded input "
                               f"{', '.join(f'{k} {recorded[k]}' for k in diff)}, but the encoder built here expects "
                               f"{', '.join(f'{k} {built[k]}' for k in diff)}; export the folder again with this "
                               "version, or fix the spec's @size")


def exported_tensors(state: dict, encoders: dict, fresh: dict, include_encoders: bool = False) -> tuple[dict, dict]:
    """(tensors to write, {slot: 'all' | 'spec' | 'n tensors'}) from a checkpoint's model_state;
    fresh: {slot: the encoder its spec builds here}."""
    out = {k: v.contiguous() for k, v in state.items() if k.split(".")[0] not in ENCODER_SLOTS}
    how = {}
    for slot in ENCODER_SLOTS:
        mine = {k: v for k, v in state.items() if k.startswith(slot + ".")}
        if not mine:
            continue
        if include_encoders or encoders[slot].get("is_random"):
            changed = mine
        else:
            built = fresh[slot].state_dict()
            changed = {k: v for k, v in mine.items()
                       if k[len(slot) + 1:] not in built or not torch.equal(built[k[len(slot) + 1:]], v)}
        out.update({k: v.contiguous() for k, v in changed.items()})
        how[slot] = "all" if len(changed) == len(mine) else ("spec" if not changed else f"{len(changed)} tensors")
    return out, how


def export_gallery(checkpoint, out_dir: Path) -> tuple[dict, dict]:
    """Copy the refinement gallery beside ``checkpoint`` into out_dir -> (config's 'refinement'
    block: settings, default, validation figures; its 'weights' entry). No usable gallery is an error."""
    gallery, record, why = load_gallery(checkpoint)
    if gallery is None:
        raise ValueError(f"--with-gallery: {checkpoint} has no usable refinement gallery: {why}")
    atomic_write_bytes(out_dir / GALLERY_FILE, gallery_paths(checkpoint)[0].read_bytes())
    entry = {"sha256": file_sha256(out_dir / GALLERY_FILE), "items": int(record["n_items"])}
    return {k: v for k, v in record.items() if k not in STAMP_KEYS}, entry


def export_model(checkpoint, out_dir, include_encoders: bool = False, include_gallery: bool = False) -> dict:
    """Write model.safetensors and config.json for ``checkpoint`` into out_dir (and gallery.npz
    with ``include_gallery``); -> the config.

    The calibration and evaluation summary beside the checkpoint go in when they were made from
    this very checkpoint (sha256); one made from another checkpoint, or a calibration whose values
    fail the checks (calibration_record), is an error, not skipped."""
    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    ckpt = load_checkpoint(checkpoint)
    if any(ckpt["encoders"].get(s) is None for s in ENCODER_SLOTS):
        raise ValueError(f"{checkpoint} holds heads only (trained without encoders): it cannot read images")
    records = {}
    for name, loader in (("calibration", load_calibration), ("evaluation", load_evaluation_summary)):
        record, why = loader(checkpoint)
        if record is None and "another checkpoint" in why:
            raise ValueError(f"refusing to export {checkpoint}: its {name} file {why}")
        if name == "calibration" and record is not None:  # a value that fails the checks is not shipped
            checked, refused = checked_calibration(record, why, source=str(calibration_path(checkpoint)))
            if checked is None:
                raise ValueError(f"refusing to export {checkpoint}: {refused}")
        records[name] = record
    fresh = {s: _fresh_encoder(ckpt["encoders"][s]["spec"]) for s in ENCODER_SLOTS}
    tensors, how = exported_tensors(ckpt["model_state"], ckpt["encoders"], fresh, include_encoders)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / GALLERY_FILE).unlink(missing_ok=True)  # a gallery of an earlier export never stays behind
    refinement, gallery_entry = export_gallery(checkpoint, out_dir) if include_gallery else (None, None)
    save_file(tensors, str(out_dir / WEIGHTS_FILE), metadata={"format": MODEL_FORMAT})
    (out_dir / WEIGHTS_FILE).chmod(0o644)  # safetensors writes 0600; the folder is meant to be shared
    model = GeopakModel.from_meta(ckpt["model_meta"])
    config = {"format": MODEL_FORMAT, "provinces": list(PROVINCES), "model": ckpt["model_meta"],
              "encoders": {s: {**ckpt["encoders"][s], "weights_in_file": how.get(s, "spec"),
                               "spec_sha256": spec_digest(fresh[s], s, tensors)} for s in ENCODER_SLOTS},
              "preprocess": {s: preprocess_info(fresh[s]) for s in ENCODER_SLOTS},
              "source": {"checkpoint": checkpoint.name, "checkpoint_sha256": file_sha256(checkpoint),
                         "phase": int(ckpt["phase"]), "epoch": ckpt.get("epoch"), "params": ckpt.get("params", {})},
              "prediction": {"top_provinces": 2, "top_cells": 5}, "n_cells": len(model.cells),
              "calibration": records["calibration"], "evaluation": records["evaluation"],
              "refinement": refinement,
              "weights": {WEIGHTS_FILE: {"sha256": file_sha256(out_dir / WEIGHTS_FILE), "tensors": len(tensors)}}}
    if gallery_entry:
        config["weights"][GALLERY_FILE] = gallery_entry
    atomic_write_bytes(out_dir / "config.json", json.dumps(config, indent=1, default=str).encode())
    return config


def folder_calibration(folder, config: dict) -> tuple[Calibration | None, str]:
    """(the checked calibration of an exported folder's config.json or None, why); a value that
    fails the checks is refused, and why names config.json's key (calibration.<key>)."""
    why = (f"calibrated on validation (exported from {config['source']['checkpoint']})" if config.get("calibration")
           else "no calibration was exported with this model")
    return checked_calibration(config.get("calibration"), why, source=str(Path(folder) / "config.json"),
                               prefix="calibration.")


def read_model_folder(folder) -> dict:
    """config.json of an exported model, after checking its format and every weight file's sha256."""
    folder = Path(folder)
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise ModelFolderError(f"{folder} is not an exported GEOPAK model: no config.json "
                               "(make one with `geopak export CHECKPOINT --out DIR`)")
    try:
        config = read_json(cfg_path, "export the model folder again (`geopak export CHECKPOINT --out DIR`)")
    except BadFileError as exc:
        raise ModelFolderError(str(exc)) from None
    if not isinstance(config, dict) or config.get("format") != MODEL_FORMAT:
        fmt = config.get("format") if isinstance(config, dict) else None
        raise ModelFolderError(f"{cfg_path}: format {fmt!r}, expected {MODEL_FORMAT!r}")
    missing = [k for k in REQUIRED_KEYS if k not in config]
    missing += [f"encoders.{s}" for s in ENCODER_SLOTS if not missing and s not in config["encoders"]]
    if missing:
        raise ModelFolderError(f"{cfg_path}: missing {', '.join(missing)}: the file is incomplete or hand-edited; "
                               "export the folder again")
    for name, entry in config.get("weights", {}).items():
        path = folder / name
        if not path.is_file():
            raise ModelFolderError(f"{path} is missing: the model folder is incomplete")
        if file_sha256(path) != entry["sha256"]:
            raise ModelFolderError(f"{path} does not match the sha256 in config.json: the file was changed or "
                                   "damaged after export; get the folder again from its source")
    return config


def load_folder_gallery(folder, config: dict):
    """(Gallery, refinement record, why) of an exported folder, or (None, None, why not); the
    sha256 was checked by read_model_folder."""
    if GALLERY_FILE not in config.get("weights", {}) or not config.get("refinement"):
        return None, None, "the model folder carries no refinement gallery (export it with --with-gallery)"
    gallery = read_gallery(Path(folder) / GALLERY_FILE)
    if gallery.n_cells != config["n_cells"] or gallery.embedding.shape[1] != config["model"]["config"]["fused_dim"]:
        raise ModelFolderError(f"{folder}/{GALLERY_FILE} does not fit the model in config.json "
                               f"({gallery.n_cells} cells, dimension {gallery.embedding.shape[1]})")
    record = config["refinement"]
    return gallery, record, f"gallery in the model folder: {record['n_items']:,} items"


def load_exported_model(folder, device="cpu") -> tuple[GeopakModel, dict]:
    """(GeopakModel with both encoders, config) from an exported folder; encoders are rebuilt from
    their specs, checked against the exporter's build (spec_sha256), then given the exported tensors.
    An encoder's status is what was built here, or the exported one when the file holds all its tensors."""
    config = read_model_folder(folder)
    tensors = load_file(str(Path(folder) / WEIGHTS_FILE))
    encoders = {}
    for slot in ENCODER_SLOTS:
        info = config["encoders"][slot]
        enc = _fresh_encoder(info["spec"])
        if info.get("is_random") and info.get("weights_in_file") != "all":
            raise ModelFolderError(f"{folder}: {slot} runs on random weights, but its weights are not in the file")
        check_spec_weights(folder, slot, info, enc, tensors=tensors)
        recorded = config["preprocess"] if isinstance(config["preprocess"], dict) else {}
        check_preprocess(folder, slot, recorded.get(slot), enc)
        if info.get("weights_in_file") == "all":  # every tensor is the checkpoint's: its status holds
            enc.weight_status, enc.is_random = info["weight_status"], info["is_random"]
        encoders[slot] = enc
    model = GeopakModel.from_meta(config["model"], encoders["clip_encoder"], encoders["scene_encoder"])
    own = model.state_dict()
    heads = [k for k in own if k.split(".")[0] not in ENCODER_SLOTS]
    missing = [k for k in heads if k not in tensors]
    unknown = [k for k in tensors if k not in own]
    if missing or unknown:
        raise ModelFolderError(f"{folder}: weights do not fit the model in config.json "
                               f"(missing {missing[:3]}, unexpected {unknown[:3]})")
    model.load_state_dict(tensors, strict=False)
    return model.to(device).eval(), config
