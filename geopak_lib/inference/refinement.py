"""Refinement inside the predicted cells, around the maths of model/refine.py: the gallery of
training images (or per-cell prototypes) built from the model's fused embeddings, saved beside
the checkpoint (``best.gallery.npz`` arrays + ``best.gallery.json``, stamped with the checkpoint's
sha256, like the calibration), refined predictions for a split, and the choice of settings on
validation. Decisions and figures: docs/decisions/refinement.md.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from geopak_lib import geo
from geopak_lib.inference.calibration import read_stamped, write_stamped
from geopak_lib.model.inference import combine_hypotheses, mixture_predict, outputs_to
from geopak_lib.model.refine import Gallery, refine_hypotheses
from geopak_lib.utils import atomic_write_bytes, file_sha256

GALLERY_DTYPE = np.float16  # on disk: halves the file (90,000 x 512 -> 88 MiB); float32 in memory, where a
# per-cell conversion from float16 would cost ~6 µs per item and query (measured)


@dataclass(frozen=True)
class RefineSettings:
    """kind: 'images' (every training image) or 'prototypes' (location clusters inside each cell,
    mean embedding + mean position); k, temperature, step, rescore_temperature: see
    model.refine.refine_hypotheses (None = weights kept)."""

    kind: str = "images"
    k: int = 1
    temperature: float = 0.05
    step: float = 1.0
    rescore_temperature: float | None = None

    def label(self) -> str:
        w = "kept" if self.rescore_temperature is None else f"re-scored (T={self.rescore_temperature:g})"
        return f"{self.kind}, top-{self.k}, step {self.step:g}, weights {w}"


# --- the gallery --------------------------------------------------------------------------------


def gallery_paths(checkpoint) -> tuple[Path, Path]:
    """``.../best.pt`` -> (``.../best.gallery.npz``, ``.../best.gallery.json``)."""
    checkpoint = Path(checkpoint)
    stem = checkpoint.stem
    return checkpoint.with_name(stem + ".gallery.npz"), checkpoint.with_name(stem + ".gallery.json")


def save_gallery(checkpoint, gallery: Gallery, settings: RefineSettings, record: dict) -> Path:
    """Arrays to best.gallery.npz (no pickled objects), settings + ``record`` (default on/off,
    validation figures) to best.gallery.json, stamped with the checkpoint's and the npz's sha256."""
    npz, meta = gallery_paths(checkpoint)
    buf = io.BytesIO()
    np.savez(buf, embedding=gallery.embedding.astype(GALLERY_DTYPE), lat=gallery.lat, lon=gallery.lon, cell_start=gallery.cell_start)
    atomic_write_bytes(npz, buf.getvalue())
    body = {"settings": asdict(settings), "arrays_sha256": file_sha256(npz), "n_items": len(gallery.lat),
            "memory_mb": gallery.nbytes / 2 ** 20, **record}  # in memory (float32)
    return write_stamped(meta, checkpoint, json.loads(json.dumps(body, default=float)))


def read_gallery(npz) -> Gallery:
    """The Gallery in a gallery npz (plain arrays; float16 embeddings become float32)."""
    with np.load(npz, allow_pickle=False) as z:
        return Gallery(z["embedding"].astype(np.float32), z["lat"], z["lon"], z["cell_start"])


def load_gallery(checkpoint) -> tuple[Gallery | None, dict | None, str]:
    """(gallery, record with 'settings' and 'default', why) or (None, None, why not)."""
    npz, meta = gallery_paths(checkpoint)
    record, why = read_stamped(meta, checkpoint, "built for", "refinement gallery")
    if record is None:
        return None, None, why
    if not npz.is_file() or file_sha256(npz) != record.get("arrays_sha256"):
        return None, None, f"{npz.name} is missing or does not match {meta.name}; re-run 06_evaluation"
    return read_gallery(npz), record, f"{why}: {record['n_items']:,} items, {record['memory_mb']:.1f} MB"


def refinement_choice(load, refine) -> tuple:
    """(gallery or None, RefineSettings or None, what the predictor says about refinement);
    load: a zero-argument function -> load_gallery's triple (called only when refinement may be on)."""
    if refine is False:
        return None, None, "off (not asked for)"
    gallery, record, why = load()
    if gallery is None:
        if refine is True:
            raise ValueError(f"refinement was asked for but there is no usable gallery: {why}")
        return None, None, f"off: {why}"
    settings = RefineSettings(**record["settings"])
    if refine == "auto" and not record.get("default", False):
        return None, None, f"off: it did not improve the validation median ({why}); ask for it to use it"
    return gallery, settings, f"on ({settings.label()}; {why})"


# --- refined predictions ------------------------------------------------------------------------

def refine_prediction(pred: dict, query, gallery: Gallery, cell_radius_km, *, settings: RefineSettings) -> dict:
    """A numpy mixture_predict dict (B rows) refined with query embeddings (B, D): the same keys with
    lat, lon, hyp_lat, hyp_lon, hyp_weight and spread_km refined, plus hyp_moved_km (B, H)."""
    valid = pred["hyp_cell_id"] >= 0
    r = refine_hypotheses(query, pred["hyp_cell_id"], np.nan_to_num(pred["hyp_lat"]), np.nan_to_num(pred["hyp_lon"]),
                          weight=pred["hyp_weight"], gallery=gallery, cell_radius_km=cell_radius_km, k=settings.k,
                          step=settings.step, temperature=settings.temperature,
                          rescore_temperature=settings.rescore_temperature)
    lat, lon = combine_hypotheses(r["lat"], r["lon"], r["weight"])
    spread = (r["weight"] * geo.haversine_km(r["lat"], r["lon"], lat[:, None], lon[:, None])).sum(-1)
    return {**pred, "lat": lat, "lon": lon, "spread_km": spread, "hyp_weight": r["weight"],
            "hyp_lat": np.where(valid, r["lat"], np.nan), "hyp_lon": np.where(valid, r["lon"], np.nan),
            "hyp_moved_km": r["moved_km"]}


@torch.no_grad()
def mixture_numpy(model, outputs: dict, top_provinces: int = 2, top_cells: int = 5) -> dict:
    """mixture_predict as numpy, plus ``query``: outputs['fused'] (B, D), the refinement's query."""
    out = outputs_to(outputs, next(model.parameters()).device)
    pred = {k: v.cpu().numpy() for k, v in mixture_predict(model, out, top_provinces=top_provinces,
                                                           top_cells=top_cells).items()}
    return {**pred, "query": out["fused"].float().cpu().numpy()}


def refined_predict(model, outputs: dict, gallery: Gallery, settings: RefineSettings, *, top_provinces: int = 2,
                    top_cells: int = 5) -> dict:
    """mixture_predict, then refine_prediction with the fused embedding as the query (numpy)."""
    pred = mixture_numpy(model, outputs, top_provinces, top_cells)
    return refine_prediction(pred, pred["query"], gallery, model.cell_radius_km.cpu().numpy(), settings=settings)


# --- 06_evaluation ------------------------------------------------------------------------------

REFINED_METHOD = {"refined": "GEOPAK mixture + refinement inside the cells"}


