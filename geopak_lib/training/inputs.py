"""What a training phase reads: labels for every manifest row joined with their geocells
(:class:`TrainData`), the feature cache for phases 0-1, and the loss on the model's cells.
``load_phase_inputs`` is the set-up that notebooks 03-06 share."""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from geopak_lib.constants import NUM_PROVINCES
from geopak_lib.data.concepts import class_names, concept_targets
from geopak_lib.data.rundir import RunDir
from geopak_lib.model.encoders import RandomWeightsWarning, build_encoder
from geopak_lib.model.geopak import GeopakModel
from geopak_lib.model.losses import GeopakLoss
from geopak_lib.training.cache import CacheSettings, FeatureCache
from geopak_lib.training.checkpoints import build_model_from_checkpoint, load_checkpoint
from geopak_lib.utils import seed_everything

@dataclass
class TrainData:
    """Labels for every manifest row (manifest order) and, for phases 0-1, the feature cache."""

    table: pd.DataFrame  # id, split, image_path, province, province_id, cell_id, latitude, longitude
    cache: object = None  # training.cache.FeatureCache whose rows are table's rows
    concept_names: tuple = ()  # concepts with a target column concept_<name> (class index, -1 = none)

    def rows(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.table["split"].to_numpy() == split)

    def labels(self, rows, device) -> dict:
        """province_id, cell_id (B,) long; lat, lon (B,) float32 degrees."""
        t = self.table
        as_t = lambda col, dt: torch.as_tensor(t[col].to_numpy()[rows], dtype=dt, device=device)  # noqa: E731
        out = {"province_id": as_t("province_id", torch.long), "cell_id": as_t("cell_id", torch.long),
               "lat": as_t("latitude", torch.float32), "lon": as_t("longitude", torch.float32)}
        if self.concept_names:  # {concept: (B,) long class index, -1 = no target}
            out["concepts"] = {k: as_t(f"concept_{k}", torch.long) for k in self.concept_names}
        return out


def make_data(manifest: pd.DataFrame, assignments: pd.DataFrame, cache=None, concepts: dict | None = None) -> TrainData:
    """Join manifest.csv and assignments.csv (on id) into TrainData, checking they agree.
    concepts: the run's concepts.json; each concept the manifest labels gets a target column."""
    a = assignments.set_index(assignments["id"].astype(str))
    ids = manifest["id"].astype(str)
    missing = ids[~ids.isin(a.index)]
    if len(missing):
        raise ValueError(f"{len(missing)} manifest ids have no geocell assignment (e.g. {missing.iloc[0]!r}); "
                         "re-run 01_geocells on this manifest")
    table = manifest.reset_index(drop=True).copy()
    table["cell_id"] = a.loc[ids, "cell_id"].to_numpy(int)
    bad = a.loc[ids, "province_id"].to_numpy(int) != table["province_id"].to_numpy(int)
    if bad.any():
        raise ValueError(f"province_id differs between manifest and assignments for id {ids[bad].iloc[0]!r}")
    if cache is not None and not np.array_equal(cache.ids.astype(str), ids.to_numpy()):
        raise ValueError("feature cache rows do not match the manifest; rebuild it from this manifest")
    names = tuple(k for k in sorted((concepts or {}).get("concepts", {})) if k in table)
    for k in names:
        table[f"concept_{k}"] = concept_targets(table[k].fillna("unknown"), concepts["concepts"][k])
    return TrainData(table, cache, names)


def make_loss(model, data: TrainData, **kwargs) -> GeopakLoss:
    """GeopakLoss on the model's cells with the training split's province counts; the concept term's
    weight is the model's (ModelConfig.concept_weight) unless given."""
    counts = np.bincount(data.table["province_id"].to_numpy(int)[data.rows("train")], minlength=NUM_PROVINCES)
    missing = [k for k in model.config.concept_classes if k not in data.concept_names]
    if missing:
        raise ValueError(f"the model has concept heads {missing} but the data has no such labels; "
                         "re-run 00_data_audit (it writes them and concepts.json)")
    kwargs.setdefault("concept_weight", model.config.concept_weight)
    return GeopakLoss(model.cells, counts, **kwargs)


def add_concept_heads(model, concepts: dict, weight: float, *, bottleneck: bool = False, hidden: int = 128):
    """The model with concept heads for the classes of ``concepts`` (concepts.json), trained with
    loss weight ``weight`` (0: the model without heads); in the bottleneck variant the geocell heads
    also read the concept probabilities, so they start afresh (untrained before phase 1 anyway).
    Every other weight is kept; the encoders are the same modules."""
    config = dict(asdict(model.config), concept_weight=float(weight), concept_bottleneck=bool(bottleneck),
                  concept_hidden=int(hidden), concept_classes=class_names(concepts) if weight > 0 else {})
    new = GeopakModel.from_meta({**model.export_meta(), "config": config}, model.clip_encoder, model.scene_encoder)
    own = new.state_dict()
    new.load_state_dict({k: v for k, v in model.state_dict().items() if k in own and own[k].shape == v.shape},
                        strict=False)
    return new.to(next(model.parameters()).device)


def build_encoders(seed: int, clip_spec: str, clip_weights: str, scene_spec: str, *, scene_weights: str, 
                   allow_random_weights: bool = False) -> tuple:
    """Both frozen encoders of phase 0, after seed_everything(seed): an encoder without pretrained
    weights then gets the same random weights every time, so the feature cache's key is stable.
    Empty weights strings mean "the spec's own weights". Pretrained weights a spec names that cannot
    be loaded stop here (WeightsUnavailableError, one line) unless allow_random_weights: training
    never starts on weights it did not ask for. A random-weight encoder is reported by the encoders'
    logger and by its weight_status (the notebooks' status table), not a second time by a Python
    warning that would point here."""
    seed_everything(seed)
    strict = not allow_random_weights
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        return (build_encoder(clip_spec, clip_weights or None, strict=strict),
                build_encoder(scene_spec, scene_weights or None, strict=strict))


CACHE_PARAMETERS = ("cache_dir", "cache_views", "cache_batch_size", "num_workers", "seed")


def cache_settings(cache_dir: str, cache_views: int, cache_batch_size: int, num_workers: int,
                   *, seed: int) -> CacheSettings:
    """The feature cache's settings from the book's parameters (notebooks 02-03 and the
    distributed command pass the same names, so they open the same cache)."""
    return CacheSettings(cache_root=cache_dir, views=cache_views, batch_size=cache_batch_size,
                         num_workers=num_workers, seed=seed)


def load_data(run_dir, cache: FeatureCache | None = None) -> TrainData:
    """TrainData of a run folder: manifest.csv joined with assignments.csv (and the cache, if given)."""
    run = RunDir(run_dir)
    return make_data(run.read_manifest(), run.read_assignments(), cache, run.read_concepts(required=False))


@dataclass
class PhaseInputs:
    """What notebooks 03-05 start from: the previous phase's best checkpoint (dict), the model
    rebuilt from it (both encoders attached), and the labels (with the cache for phase 1)."""

    start: dict
    start_path: Path
    model: torch.nn.Module
    data: TrainData


def load_phase_inputs(run_dir, phase: int, *, cache: CacheSettings | None = None, device="auto",
                      progress: bool = True, concept_weight: float | None = None,
                      concept_bottleneck: bool = False) -> PhaseInputs:
    """Set-up of phase ``phase`` (1-3): the best.pt of phase - 1, the model, manifest and
    geocell assignments joined; phase 1 also opens (or builds) the feature cache with ``cache``.
    concept_weight (phase 1): give the model concept heads with this loss weight (0: none) and
    optionally the bottleneck (add_concept_heads); later phases keep the heads they receive."""
    run = RunDir(run_dir)
    start_path = run.best_checkpoint(phase - 1)
    start = load_checkpoint(start_path)
    model = build_model_from_checkpoint(start, with_encoders=True)
    if concept_weight is not None:
        if phase != 1:
            raise ValueError("concept heads are added in phase 1; later phases keep the ones they receive")
        model = add_concept_heads(model, run.read_concepts() if concept_weight > 0 else {}, concept_weight,
                                  bottleneck=concept_bottleneck)
    features = None
    if phase <= 1:
        features = FeatureCache.build_or_load(run.read_manifest(), model.clip_encoder, model.scene_encoder,
                                              settings=cache or CacheSettings(), device=device, progress=progress)
    return PhaseInputs(start, start_path, model, load_data(run_dir, features))
