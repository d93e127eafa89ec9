"""The predictor: a trained checkpoint in, province + lat/lon + calibrated error radius out.

``GeopakPredictor.from_checkpoint(path)`` needs nothing but the checkpoint (model config, geocell
table, encoder specs and weights, preprocessing) and, if present, the calibration file that
06_evaluation writes beside it (``<checkpoint stem>.calibration.json``: province temperature and
error-radius scales; one checked block per mode, calibration_record.Calibration). The ``geopak
predict`` command is geopak_lib/book/predict_cli.py.
Decisions and their reasons: docs/decisions/evaluation.md.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from geopak_lib.constants import PROVINCES
from geopak_lib.data.augment import clean_transform
from geopak_lib.data.places import name_places
from geopak_lib.geo import farthest_in_pakistan_km
from geopak_lib.inference.calibration import RADIUS_COVERAGE, RADIUS_FLOOR_KM, load_checked_calibration
from geopak_lib.inference.calibration_record import MISSING_MODE, Calibration, CalibrationBlock, as_calibration, block_for
from geopak_lib.inference.concepts import concept_scores
from geopak_lib.inference.ensemble import EnsembleModel, mixture
from geopak_lib.inference.model_folder import folder_calibration, load_exported_model, load_folder_gallery
from geopak_lib.inference.groups import DEFAULT_COMBINE, group_outputs
from geopak_lib.inference.outputs import ImageFiles, collate_files, merge_view_outputs, to_pil, tta_views
from geopak_lib.inference.records import hypothesis_lists, place_columns
from geopak_lib.inference.refinement import RefineSettings, refine_prediction, refinement_choice
from geopak_lib.model.probes import build_text_probes
from geopak_lib.model.inference import cat_outputs, outputs_to, select_outputs
from geopak_lib.training.cache import channels_last, encoder_input, view_size
from geopak_lib.training.checkpoints import build_model_from_checkpoint, load_checkpoint
from geopak_lib.training.selection import TRAINING_NOTEBOOKS
from geopak_lib.utils import pick_device, quiet_logging
from geopak_lib.inference.labelled import evaluate_table
from geopak_lib.inference.loaded import gallery_loader, model_warnings


def _device(device) -> torch.device:
    dev = pick_device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but no CUDA GPU is available; use --device cpu or auto")
    return dev


class GeopakPredictor:
    """Predict (province, lat, lon, confidence, radius_km, hypotheses) for images.

    Build it with :meth:`from_checkpoint` or :meth:`from_pretrained` (an exported model folder). ``warnings`` lists what a user must know (random
    encoder weights, an uncalibrated radius, a phase-0 model whose location heads are untrained).
    ``calibration``: a Calibration, or its JSON dict (checked: CalibrationError on a bad value), or None.
    """

    probes = None  # TextProbes when on (with_probes)

    def __init__(self, model, *, checkpoint=None, calibration: Calibration | dict | None = None, tta: bool = False,
                 top_provinces: int = 2, top_cells: int = 5, info: dict | None = None, warnings=(),
                 gallery=None, refine_settings: RefineSettings | None = None):
        self.model, self.checkpoint = model.eval(), checkpoint
        self.gallery, self.refine_settings = gallery, refine_settings  # refinement on when a gallery is given
        self.device = next(model.parameters()).device
        self.tta, self.top_provinces, self.top_cells = tta, top_provinces, top_cells
        self.calibration, self.info, self.warnings = as_calibration(calibration), dict(info or {}), list(warnings)
        self.image_size = view_size(model.clip_encoder, model.scene_encoder)
        channels_last(model.clip_encoder, model.scene_encoder)  # conv encoders: 1.7x on CPU, docs/performance.md
        self.calibration_block()  # a missing block for this mode is said at once

    @classmethod
    def from_checkpoint(cls, path, *, device="auto", tta: bool = False, calibration="auto",
                        top_provinces: int = 2, top_cells: int = 5, refine="auto") -> "GeopakPredictor":
        """Load a trained checkpoint (best.pt of phases 0-3). calibration: 'auto' (the file beside
        the checkpoint, if it matches and its values pass the checks; a refused one leaves the
        predictor uncalibrated, with the file and key in warnings), None (uncalibrated) or a dict or
        Calibration (a bad value raises CalibrationError). refine: 'auto' (refine inside
        the cells when 06 saved a gallery beside the checkpoint and chose refinement on validation),
        True (refine; a ValueError without a gallery) or False. A list of paths gives an ensemble of
        them (see :meth:`ensemble`; ensembles are neither calibrated nor refined)."""
        if isinstance(path, (list, tuple)):
            return cls.ensemble([cls.from_checkpoint(p, device=device, tta=tta, calibration=None,
                                                     top_provinces=top_provinces, top_cells=top_cells, refine=False)
                                 for p in path])
        path = Path(path)
        if not path.exists():  # a folder: load_checkpoint says what to give instead
            raise FileNotFoundError(f"checkpoint {path} not found: checkpoints are written by the training "
                                    f"notebooks {TRAINING_NOTEBOOKS} (runs/<profile>/checkpoints/phase<p>/best.pt; "
                                    "the kept one is named in runs/<profile>/final_checkpoint.txt)")
        dev = _device(device)
        ckpt = load_checkpoint(path)  # ValueError: unreadable, or not a GEOPAK checkpoint
        missing = [k for k in ("model_state", "model_meta", "encoders", "phase") if k not in ckpt]
        if missing:
            raise ValueError(f"checkpoint {path} lacks {missing}: it is damaged or from an incompatible version")
        if any(ckpt["encoders"].get(s) is None for s in ("clip_encoder", "scene_encoder")):
            raise ValueError(f"checkpoint {path} holds heads only (trained without encoders), so it cannot "
                             "read images; use a checkpoint from the training notebooks")
        # building an encoder logs "random weights" before the checkpoint's weights are loaded; what is
        # true is said in self.warnings
        try:
            with quiet_logging():
                model = build_model_from_checkpoint(ckpt, with_encoders=True, device=dev)
        except (KeyError, RuntimeError, TypeError) as exc:  # shapes or config keys from another version
            raise ValueError(f"checkpoint {path} does not fit this version of geopak_lib "
                             f"({type(exc).__name__}: {exc})") from exc
        why = "calibration given by the caller" if isinstance(calibration, (dict, Calibration)) \
            else "uncalibrated (none asked for)"
        if calibration == "auto":
            calibration, why = load_checked_calibration(path)
        gallery, settings, refinement = refinement_choice(gallery_loader(path), refine)
        info = {"checkpoint": str(path), "phase": int(ckpt["phase"]), "epoch": ckpt.get("epoch"),
                "encoders": ckpt["encoders"], "calibration": why, "refinement": refinement}
        predictor = cls(model, checkpoint=path, calibration=calibration, tta=tta, top_provinces=top_provinces,
                        top_cells=top_cells, info=info, warnings=model_warnings(info, calibration),
                        gallery=gallery, refine_settings=settings)
        return predictor.with_probes()

    @classmethod
    def from_pretrained(cls, folder, *, device="auto", tta: bool = False, top_provinces: int | None = None,
                        top_cells: int | None = None, refine="auto") -> "GeopakPredictor":
        """Load a model folder written by ``geopak export`` (config.json + model.safetensors): nothing
        else is needed. Its sha256 stamps are checked first; its calibration travels in config.json.
        refine: as in :meth:`from_checkpoint`, with the gallery inside the folder (``geopak export
        --with-gallery``). A list of folders gives an ensemble of them (see :meth:`ensemble`)."""
        if isinstance(folder, (list, tuple)):
            return cls.ensemble([cls.from_pretrained(f, device=device, tta=tta, top_provinces=top_provinces,
                                                     top_cells=top_cells, refine=False)
                                 for f in folder])
        model, config = load_exported_model(folder, _device(device))
        src, (calibration, why) = config["source"], folder_calibration(folder, config)
        gallery, settings, refinement = refinement_choice(lambda: load_folder_gallery(folder, config), refine)
        info = {"checkpoint": str(folder), "phase": src["phase"], "epoch": src.get("epoch"),
                "encoders": config["encoders"], "model_folder": True, "refinement": refinement, "calibration": why}
        top_p, top_c = config["prediction"]["top_provinces"], config["prediction"]["top_cells"]
        predictor = cls(model, checkpoint=Path(folder), calibration=calibration, tta=tta,
                        top_provinces=top_provinces or top_p, top_cells=top_cells or top_c, info=info,
                        warnings=model_warnings(info, calibration), gallery=gallery, refine_settings=settings)
        return predictor.with_probes()

    @classmethod
    def ensemble(cls, predictors: list, weights=None) -> "GeopakPredictor":
        """One predictor from several loaded ones (ensemble.EnsembleModel: shared geocells average
        their probabilities before the mixture, different geocells their final points). Settings
        (tta, top_provinces, top_cells) come from the first. The ensemble is not calibrated: each
        calibration file fits one checkpoint, so radius_km is the uncalibrated spread + floor."""
        if len(predictors) == 1:
            return predictors[0]
        first, names = predictors[0], [p.info["checkpoint"] for p in predictors]
        model = EnsembleModel([p.model for p in predictors], weights, names)
        info = {"checkpoint": " + ".join(names), "phase": min(int(p.info["phase"]) for p in predictors),
                "epoch": None, "encoders": first.info["encoders"], "members": [p.info for p in predictors],
                "ensemble": model.mode, "weights": model.member_weights.tolist(),
                "calibration": "ensembles are not calibrated (each calibration file fits one checkpoint)"}
        warnings = list(dict.fromkeys(w for p in predictors for w in model_warnings(p.info, True)))
        warnings.append(f"ensemble of {len(predictors)} checkpoints ({model.mode} geocells): radius_km is not "
                        "calibrated for it (each calibration file fits one checkpoint)")
        return cls(model, checkpoint=[p.checkpoint for p in predictors], calibration=None, tta=first.tta,
                   top_provinces=first.top_provinces, top_cells=first.top_cells, info=info, warnings=warnings)

    def _share_probes(self, other: "GeopakPredictor") -> "GeopakPredictor":
        self.probes = other.probes
        return self

    def with_probes(self, on: bool = True) -> "GeopakPredictor":
        """Switch the zero-shot text probes (model/probes.py) on where the CLIP slot has pretrained
        weights, or off; ``info['probes']`` says which and why. Returns self."""
        clip = (self.info.get("encoders") or {}).get("clip_encoder")
        self.probes, self.info["probes"] = build_text_probes(clip) if on else (None, "text probes off (not asked for)")
        return self

    def with_refinement(self, on: bool = True) -> "GeopakPredictor":
        """The same model (shared, not copied) with refinement on (needs the gallery that 06 saved
        beside the checkpoint, or one inside an exported folder; ValueError otherwise) or off."""
        if isinstance(self.checkpoint, list) and on:
            raise ValueError("an ensemble is not refined: each gallery fits one checkpoint")
        gallery, settings, why = refinement_choice(gallery_loader(self.checkpoint, self.info.get("model_folder", False)),
                                                   bool(on))
        return GeopakPredictor(self.model, checkpoint=self.checkpoint, calibration=self.calibration, tta=self.tta,
                               top_provinces=self.top_provinces, top_cells=self.top_cells,
                               info={**self.info, "refinement": why}, gallery=gallery,
                               warnings=[w for w in self.warnings if not w.startswith(MISSING_MODE)],
                               refine_settings=settings)._share_probes(self)

    # raw outputs -------------------------------------------------------------------------

    def calibration_block(self) -> CalibrationBlock | None:
        """The calibration block of this predictor's own mode (tta x refined), or None (uncalibrated);
        never another mode's. info['calibration_mode'] says which; a mode the record lacks is warned of once."""
        block, self.info["calibration_mode"] = block_for(self.calibration, tta=self.tta, refined=self.gallery is not None)
        if block is None and self.info["calibration_mode"].startswith(MISSING_MODE) \
                and self.info["calibration_mode"] not in self.warnings:
            self.warnings.append(self.info["calibration_mode"])
        return block

    @torch.no_grad()
    def forward_images(self, images: torch.Tensor, tta: bool | None = None, identity: dict | None = None) -> dict:
        """uint8 (B, 3, S, S) -> model outputs (views merged when tta; default: self.tta), on CPU.
        identity: these images' outputs without TTA, already computed (06's plain pass): the
        identity view is then not run again."""
        m, tta = self.model, self.tta if tta is None else tta
        views = tta_views(images) if tta else [images]
        outs = []
        for i, v in enumerate(views):
            if i == 0 and identity is not None:
                outs.append(outputs_to(identity, self.device))
                continue
            v = v.to(self.device)
            clip_in, scene_in = encoder_input(v, m.clip_encoder.preprocess), encoder_input(v, m.scene_encoder.preprocess)
            if self.probes is None:
                outs.append(m(clip_in, scene_in))
            else:  # one model (no ensemble): keep the CLIP slot's pooled features for the text probes
                clip = m.clip_encoder(clip_in)
                outs.append({**m.forward_features(clip, m.scene_encoder(scene_in)), "clip_pooled": clip})
        out = merge_view_outputs(outs) if tta else outs[0]
        if self.probes is not None:
            out["clip_pooled"] = outs[0]["clip_pooled"]  # the identity view's, like α
        return outputs_to(out, "cpu")

    def raw_outputs(self, paths, *, batch_size: int = 32, progress: bool = True, num_workers: int = 0,
                    identity: dict | None = None):
        """Model outputs for image files -> (outputs of the readable files in order or None,
        their indices into ``paths`` (array), {index: error message} for the others). identity:
        outputs without TTA of every file in ``paths`` (all readable), reused as TTA's identity view."""
        loader = torch.utils.data.DataLoader(ImageFiles(paths, self.image_size), batch_size=batch_size,
                                             num_workers=num_workers, collate_fn=collate_files)
        parts, ok, errors = [], [], {}
        with tqdm(total=len(paths), desc="predict", unit="img", disable=not progress) as bar:
            for idx, images, errs in loader:
                errors.update(errs)
                if images is not None:
                    parts.append(self.forward_images(images, identity=None if identity is None
                                                     else select_outputs(identity, idx)))
                    ok += idx
                bar.update(len(idx) + len(errs))
        return (cat_outputs(parts) if parts else None), np.asarray(ok, dtype=int), errors

    # results -----------------------------------------------------------------------------

    @torch.no_grad()
    def results_from_outputs(self, outputs: dict) -> list[dict]:
        """Model outputs (B rows) -> B result dicts (see :meth:`predict`)."""
        out = outputs_to(outputs, self.device)
        pred = {k: v.cpu().numpy() for k, v in
                mixture(self.model, out, top_provinces=self.top_provinces, top_cells=self.top_cells).items()}
        if self.gallery is not None:
            pred = refine_prediction(pred, out["fused"].float().cpu().numpy(), self.gallery,
                                     self.model.cell_radius_km.cpu().numpy(), settings=self.refine_settings)
        cal = self.calibration_block()
        temperature = cal.temperature if cal is not None else 1.0
        probs = torch.softmax(out["province_logits"] / temperature, -1).cpu().numpy()
        names = name_places(pred["lat"], pred["lon"])  # vectorised over the batch, after any refinement
        concepts = concept_scores(self.model, out)
        farthest = farthest_in_pakistan_km(pred["lat"], pred["lon"])  # no radius needs to reach beyond the country
        probes = self.probes.top(out["clip_pooled"], k=3) if self.probes is not None and "clip_pooled" in out \
            else [[] for _ in range(len(probs))]
        # one conversion per batch array; the loop below only assembles Python objects
        hyps, places = hypothesis_lists(pred), place_columns(names)
        lat, lon, spread_km = (np.asarray(pred[k]).tolist() for k in ("lat", "lon", "spread_km"))
        far = farthest.tolist()
        province_ids, confidence, prob_rows = probs.argmax(-1).tolist(), probs.max(-1).tolist(), probs.tolist()
        alpha, key = out["alpha"].tolist(), str(RADIUS_COVERAGE)
        results = []
        for i, (spread, province) in enumerate(zip(spread_km, province_ids)):
            # its province's scale where fitted, never below the floor; capped at the farthest point of Pakistan
            radii = {} if cal is None else {c: min(cal.radius_km(spread, province, c), far[i]) for c in cal.radius_scales}
            place, district, place_province, place_km = places[i]
            results.append({
                "province": PROVINCES[province], "province_id": province, "lat": lat[i], "lon": lon[i],
                "confidence": confidence[i],
                "radius_km": radii.get(key, min(spread + RADIUS_FLOOR_KM, far[i])),  # uncalibrated
                "radius_calibrated": key in radii, "radius_coverage": RADIUS_COVERAGE if key in radii else None,
                "radii_km": radii, "spread_km": spread, "temperature": temperature,
                "province_probs": dict(zip(PROVINCES, prob_rows[i])),
                "place": place, "district": district, "place_province": place_province, "place_km": place_km,
                "alpha": alpha[i], "refined": self.gallery is not None, "hypotheses": hyps[i],
                "concepts": concepts[i], "probes": probes[i],
                **{f"{k}{suffix}": v[0][j] for k, v in concepts[i].items() for j, suffix in ((0, ""), (1, "_p"))}})
        return results

    def predict(self, image) -> dict:
        """One image (PIL image, numpy array or path) -> dict: province, province_id, lat, lon (degrees),
        confidence (calibrated probability of that province), radius_km (the truth lies within it for
        ~80% of validation images when radius_calibrated; the predicted province's own scale where
        06 fitted one; never beyond the farthest point of Pakistan, geo.farthest_in_pakistan_km), radius_calibrated, radius_coverage, radii_km {coverage: km}, spread_km,
        province_probs, place (the nearest GeoNames place of the predicted point's province),
        district, place_province (the polygon province of the predicted point, which can differ
        from ``province``), place_km (km from the point to place; place and district are "" and
        place_km None outside Pakistan or beyond data.places.PLACE_MAX_KM), alpha (fusion gate),
        refined (refinement inside the cells was on), hypotheses (list of province, cell_id, lat,
        lon, weight; best first); with concept heads also concepts {concept: [(class, probability)]
        top 3, best first} and the top class and its probability as climate, climate_p, land_cover,
        land_cover_p; probes: [(concept, cosine similarity)] top 3 of the zero-shot text probes when
        the CLIP slot has pretrained weights, else [] (info['probes'] says why)."""
        view = clean_transform(self.image_size)(to_pil(image)).unsqueeze(0)
        return self.results_from_outputs(self.forward_images(view))[0]

    def predict_many(self, paths, batch_size: int = 32, progress: bool = True, num_workers: int = 0) -> list[dict]:
        """One dict per path, in order: the predict() result plus ``image`` and ``error`` ("" when
        predicted; otherwise the reason, and no prediction keys)."""
        return [r for batch in self.iter_predictions(paths, batch_size, progress, num_workers) for r in batch]

    @torch.inference_mode()  # like no_grad, with less bookkeeping per op; only Python records leave it
    def iter_predictions(self, paths, batch_size: int = 32, progress: bool = True, num_workers: int = 0):
        """predict_many one batch at a time: yields lists of records in path order, so memory stays
        flat in the number of images (nothing is kept once a batch is yielded)."""
        paths = [str(p) for p in paths]
        loader = torch.utils.data.DataLoader(ImageFiles(paths, self.image_size), batch_size=batch_size,
                                             num_workers=num_workers, collate_fn=collate_files)
        with tqdm(total=len(paths), desc="predict", unit="img", disable=not progress) as bar:
            for idx, images, errs in loader:
                done = {i: {"image": paths[i], "error": e} for i, e in errs.items()}
                if images is not None:
                    for i, r in zip(idx, self.results_from_outputs(self.forward_images(images))):
                        done[i] = {"image": paths[i], "error": "", **r}
                bar.update(len(done))
                yield [done[i] for i in sorted(done)]

    def evaluate(self, table, images_dir, *, block_km: float = 30.0, batch_size: int = 32, progress: bool = True):
        """Score this model on a labelled table (inference/labelled.py; `geopak evaluate`)."""
        return evaluate_table(self, table, images_dir, block_km=block_km, batch_size=batch_size, progress=progress)

    def predict_group(self, images, combine: str | None = None) -> dict:
        """Several photos of ONE place (PIL images, arrays or paths) -> one predict() result, plus
        n_images (how many were used), failed {image: error} (the unreadable ones, skipped) and
        combine ('embedding': mean encoder features; 'probs': mean probabilities; default
        groups.DEFAULT_COMBINE). With tta, every photo's views join the group.
        Raises ValueError when no image of the group can be read."""
        combine = combine or DEFAULT_COMBINE
        transform, views, failed = clean_transform(self.image_size), [], {}
        for i, image in enumerate(images):
            name = str(image) if isinstance(image, (str, Path)) else f"image {i}"
            try:
                views.append(transform(to_pil(image)))
            except Exception as exc:  # an unreadable photo is skipped and named, never a crash
                failed[name] = str(exc) if "cannot load image" in str(exc) else f"{type(exc).__name__}: {exc}"
        if not views:
            detail = "; ".join(f"{k}: {v}" for k, v in list(failed.items())[:3]) or "the group is empty"
            raise ValueError(f"none of the {len(failed)} images of the group could be read ({detail})")
        x = torch.stack(views)
        x = torch.cat(tta_views(x)) if self.tta else x
        with torch.no_grad():
            out = outputs_to(group_outputs(self.model, x.to(self.device), combine), "cpu")
        return {**self.results_from_outputs(out)[0], "n_images": len(views), "failed": failed, "combine": combine}
