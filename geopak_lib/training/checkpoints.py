"""Checkpoints and training logs of the trainer (``run_dir/checkpoints/phase{p}/``).

A checkpoint is one self-contained dict: model state (encoders included when the model has
them), optimiser, scheduler, epoch, metrics and history, RNG states (python, numpy, torch, CUDA),
sampler state, the geocell table and model config (``model.export_meta()``), the encoders' specs
and weight status, the phase config and the profile's params. Files are written atomically
(temp file + rename), so a crash mid-save leaves the previous file intact.

Loading never runs code: files are read with ``torch.load(weights_only=True)``, which rebuilds
tensors and plain values (dict, list, tuple, str, int, float, bool, None) and refuses anything
else. Checkpoints are saved as exactly that (:func:`to_plain`). Files written before this rule
hold numpy arrays (the numpy RNG state); the numpy array type alone is allowed on load, so they
still open, and nothing else is. Decisions: docs/decisions/sharing.md.
"""

from __future__ import annotations

import io
import pickle
import pickletools
import random
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from geopak_lib.constants import PROVINCE_SHORT, PROVINCES
from geopak_lib.data.stamps import check_inputs, checkpoint_run
from geopak_lib.utils import atomic_torch_save, atomic_write_bytes, state_sha256
from geopak_lib.model import encoders  # module, so tests can stand tiny encoders in for real ones
from geopak_lib.model.geopak import GeopakModel

CKPT_FORMAT = "geopak-checkpoint-v1"
# spec 003 §12.3 first, then our extra columns.
CSV_COLUMNS = (["epoch", "split", "loss_total", "loss_province", "loss_geocell", "loss_offset", "loss_aux",
                "median_error_km", "mean_error_km", "p90_error_km"]
               + [f"{PROVINCE_SHORT[p]}_acc" for p in PROVINCES]
               + ["offset_weight", "lr", "province_acc", "balanced_acc", "true_cell_median_km", "alpha_mean", "seconds",
                  "loss_concept", "concept_acc"])  # the concept heads' term and mean accuracy (docs/decisions/concepts.md)
ENCODER_SLOTS = ("clip_encoder", "scene_encoder")


class UnsafeFileError(ValueError):
    """A file that would run code when loaded (a pickle that imports functions or classes)."""


# The numpy array type, which checkpoints written before to_plain hold (the numpy RNG state). Its
# reconstruction builds an array from a dtype and bytes and runs no other code.
LEGACY_SAFE_GLOBALS = [np.ndarray, np.dtype, np.dtypes.UInt32DType,
                       getattr(np, "_core", np.core).multiarray._reconstruct]


def to_plain(obj):
    """Checkpoint content as tensors and plain values only (what weights_only loading accepts):
    numpy arrays -> tensors, numpy scalars -> int/float/bool, paths -> str, containers recursed."""
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_plain(v) for v in obj)
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.array(obj, copy=True))
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def rng_state() -> dict:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    if isinstance(n, dict):
        n = (n["name"], np.asarray(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    np.random.set_state(n)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def encoder_info(encoder) -> dict | None:
    """Spec and weight status of an encoder (None when the model has none)."""
    if encoder is None:
        return None
    return {"spec": getattr(encoder, "spec", type(encoder).__name__),
            "weight_status": str(getattr(encoder, "weight_status", "unknown")),
            "is_random": bool(getattr(encoder, "is_random", False))}


def checkpoint_state(model, optimizer, scheduler, phase_config: dict, *, epoch: int, metrics: dict,
                     history: list, best: dict, epochs_since_best: int, stopped: bool, sampler: dict,
                     params: dict | None = None) -> dict:
    """Everything a checkpoint holds (see the module docstring)."""
    return {"format": CKPT_FORMAT, "phase": phase_config["phase"], "epoch": epoch, "metrics": metrics,
            "model_state": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
            "optimizer": optimizer.state_dict() if optimizer is not None else None,
            "optimizer_params": optimizer_param_names(model, optimizer) if optimizer is not None else None,
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "history": history, "best": best, "epochs_since_best": epochs_since_best, "stopped": stopped,
            "rng": rng_state(), "sampler": sampler, "model_meta": model.export_meta(),
            "encoders": {s: encoder_info(getattr(model, s, None)) for s in ENCODER_SLOTS},
            "phase_config": phase_config, "params": dict(params or {})}


def optimizer_param_names(model, opt) -> list[str]:
    """Names (model.named_parameters) of the optimiser's parameters, in its state_dict order, so a
    later phase can match the saved moments to its own parameters."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [names[id(p)] for g in opt.param_groups for p in g["params"]]


def save_checkpoint(state: dict, path) -> None:
    """Write a checkpoint stamped with the sha256 of its own weights, checked by load_checkpoint:
    a byte flipped on disk would otherwise load as other weights, silently."""
    state = to_plain(state)
    if isinstance(state.get("model_state"), dict):
        state["model_sha256"] = state_sha256(state["model_state"])
    atomic_torch_save(state, path)


def pickle_globals(path) -> list[str] | None:
    """The globals (module.name) a file's pickle would import, read with pickletools (nothing is
    run); a torch zip file is asked through torch. None when the file is not a pickle at all."""
    try:
        return torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # not torch's zip format: read the opcodes of the bare pickle
        pass
    names, strings = [], []
    try:
        with open(path, "rb") as f:
            for op, arg, _ in pickletools.genops(f):
                if op.name == "GLOBAL":
                    names.append(arg.replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    names.append(f"{strings[-2]}.{strings[-1]}")
                elif isinstance(arg, str):
                    strings.append(arg)
    except Exception:
        return None
    return names


def safe_torch_load(path, what: str = "file"):
    """torch.load that never runs code: tensors and plain values (and legacy numpy arrays) only.
    A file that would import anything else is refused with the names it asks for."""
    path = Path(path)
    try:
        with torch.serialization.safe_globals(LEGACY_SAFE_GLOBALS), warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Detected pickle protocol")  # a bare pickle: refused below
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        asks = pickle_globals(path)
        if not asks:
            raise  # no globals, or not a pickle: a damaged or foreign file, reported as unreadable
        raise UnsafeFileError(f"{path}: refused to load this {what}: loading it would run code (it asks for "
                              f"{', '.join(sorted(set(asks)))}). GEOPAK files hold only tensors and plain values; "
                              "do not load files from a source you do not trust.") from None


def load_checkpoint(path, inputs: bool = True) -> dict:
    """Read a checkpoint written by the trainer, with errors that say what to do. inputs: refuse
    (StaleInputError) a checkpoint inside a run folder whose manifest, geocells or assignments
    differ from those it records having been trained on (``state['inputs']``), so no step that
    loads it (resume, the next phase, evaluation, predict, export) pairs it with other cells."""
    path = Path(path)
    if path.is_dir():
        hint = ("it is a model folder: load it with --model / from_pretrained" if (path / "config.json").is_file()
                else "give the best.pt inside a run's checkpoints/<phase>/ folder")
        raise FileNotFoundError(f"checkpoint {path} is a folder, not a checkpoint file; {hint}")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found: run the notebook of that phase first "
                                "(or check run_dir)")
    try:
        state = safe_torch_load(path, "checkpoint")
    except UnsafeFileError:
        raise
    except Exception as exc:  # a truncated or foreign file
        # torch's own text advises turning the weights-only guard off (running the file's code): never repeat it
        raise ValueError(f"{path} is not a GEOPAK checkpoint: torch cannot read it ({type(exc).__name__}); "
                         "give a best.pt the training notebooks wrote, or, if it was one, it is damaged: "
                         "delete it and re-run that phase") from None
    if not isinstance(state, dict) or state.get("format") != CKPT_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"{path} is not a GEOPAK checkpoint of format {CKPT_FORMAT!r} (found {found!r}); "
                         "it was written by another program or an older version of the book")
    stamp = state.get("model_sha256")
    if stamp is not None and state_sha256(state.get("model_state", {})) != stamp:
        raise ValueError(f"checkpoint {path}: its weights changed since it was saved (sha256 of the tensors "
                         f"differs from the one recorded); the file is damaged: delete it and re-run that phase")
    if inputs:
        check_inputs(state.get("inputs"), checkpoint_run(path), path)
    return state


def _rebuild_encoder(info: dict, has_weights: bool):
    """Encoder of ``info['spec']``; its weights come from the checkpoint when it holds them, so the
    random-weights warning of build_encoder would be false then, and the status is the saved one."""
    with warnings.catch_warnings():
        if has_weights:
            warnings.simplefilter("ignore", encoders.RandomWeightsWarning)
        encoder = encoders.build_encoder(info["spec"], None, strict=False)
    if has_weights:
        encoder.weight_status, encoder.is_random = info["weight_status"], info["is_random"]
    return encoder


def build_model_from_checkpoint(ckpt, with_encoders: bool = True, device="cpu"):
    """Rebuild the GeopakModel of a checkpoint (dict or path) and load its weights.

    with_encoders: attach both encoders (rebuilt from their specs, then given the checkpoint's
    weights and weight status when it holds them, else the weights build_encoder finds). False: heads only,
    for use on cached features.
    """
    ckpt = load_checkpoint(ckpt) if isinstance(ckpt, (str, Path)) else ckpt
    state = ckpt["model_state"]
    encoders = {}
    for slot in ENCODER_SLOTS:
        info = ckpt["encoders"].get(slot)
        if with_encoders and info is None:
            raise ValueError(f"checkpoint has no {slot} (its model was trained without encoders); "
                             "use with_encoders=False")
        if with_encoders:
            encoders[slot] = _rebuild_encoder(info, has_weights=any(k.startswith(slot + ".") for k in state))
    model = GeopakModel.from_meta(ckpt["model_meta"], encoders.get("clip_encoder"), encoders.get("scene_encoder"))
    own = model.state_dict()
    keep = {k: v for k, v in state.items() if k in own}
    missing = [k for k in own if k not in keep and not (with_encoders and k.split(".")[0] in ENCODER_SLOTS)]
    if missing:
        raise ValueError(f"checkpoint lacks weights for {missing[:5]}...; it does not match this model version")
    model.load_state_dict(keep, strict=False)
    return model.to(device)


def latest_epoch_checkpoint(ckpt_dir) -> Path | None:
    """The epoch_{n}.pt with the largest n in ckpt_dir, or None."""
    found = [(int(m.group(1)), p) for p in Path(ckpt_dir).glob("epoch_*.pt")
             if (m := re.fullmatch(r"epoch_(\d+)\.pt", p.name))]
    return max(found)[1] if found else None


def prune_epoch_checkpoints(ckpt_dir, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` epoch files (best.pt is never touched)."""
    found = sorted((int(p.stem.split("_")[1]), p) for p in Path(ckpt_dir).glob("epoch_*.pt")
                   if re.fullmatch(r"epoch_\d+\.pt", p.name))
    for _, p in found[:-keep_last]:
        p.unlink(missing_ok=True)


class TrainLog:
    """log.txt (appended, human readable) and losses.csv (rewritten whole from the history each
    epoch, atomically, so a resumed run never duplicates or loses rows)."""

    def __init__(self, ckpt_dir, echo=None):
        self.dir = Path(ckpt_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.echo = echo

    def line(self, text: str) -> None:
        with open(self.dir / "log.txt", "a", encoding="utf-8") as f:
            f.write(text.rstrip() + "\n")
        if self.echo is not None:
            self.echo(text)

    def write_csv(self, history: list) -> None:
        buf = io.StringIO()
        pd.DataFrame(history, columns=CSV_COLUMNS).to_csv(buf, index=False, float_format="%.6g")
        atomic_write_bytes(self.dir / "losses.csv", buf.getvalue().encode())


def describe_epoch(epoch: int, epochs: int, train: dict, val: dict) -> str:
    """The epoch summary of spec 003 §7.1, plus province accuracies."""
    f = lambda r: (f"{r['loss_total']:.4f} (prov: {r['loss_province']:.4f}, cell: {r['loss_geocell']:.4f}, "  # noqa: E731
                   f"off: {r['loss_offset']:.4f}, aux: {r['loss_aux']:.4f})")
    e = lambda r: f"median={r['median_error_km']:.2f}km, mean={r['mean_error_km']:.2f}km, p90={r['p90_error_km']:.2f}km"  # noqa: E731
    acc = ", ".join(f"{PROVINCE_SHORT[p]} {val[PROVINCE_SHORT[p] + '_acc']:.3f}" for p in PROVINCES)
    if not np.isfinite(val["median_error_km"]):  # phase 0: no location yet, one line per epoch
        return (f"Epoch {epoch}/{epochs}: loss train {train['loss_total']:.4f}, val {val['loss_total']:.4f}; "
                f"val province acc {val['province_acc']:.3f} (balanced {val['balanced_acc']:.3f}); {acc}")
    return (f"Epoch {epoch}/{epochs}:\n   Train Loss: {f(train)}\n   Val Loss:   {f(val)}\n"
            f"   Train Error: {e(train)}\n   Val Error:   {e(val)} (true cell fed in: "
            f"{val['true_cell_median_km']:.2f}km)\n   Val province acc: {val['province_acc']:.3f} "
            f"(balanced {val['balanced_acc']:.3f}); {acc}"
            + (f"\n   Val concepts: loss {val['loss_concept']:.4f}, accuracy {val['concept_acc']:.3f}"
               if np.isfinite(val.get("concept_acc", np.nan)) else ""))
