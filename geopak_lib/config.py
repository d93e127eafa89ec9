"""The book's settings as one typed tree: the single source of every notebook parameter's default.

Each numbered notebook reads the sections listed in :data:`NOTEBOOKS`; its ``parameters`` cell
declares exactly their keys with these defaults (the smoke settings, house rule 4), which
tests/test_config.py checks with papermill. A YAML profile in params/ is validated against the same
tree (:meth:`BookConfig.from_profile`): an unknown key or a value of the wrong type is an error that
names the key. Decisions: docs/decisions/config.md.
"""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass, field, fields
from typing import ClassVar, get_type_hints


class ConfigError(ValueError):
    """A key the config does not know, or a value of the wrong type; the message names it."""


@dataclass
class CommonConfig:
    """Keys every notebook declares (a profile's ``common`` section)."""

    run_dir: str = "runs/smoke"  # relative to the repository root
    seed: int = 0
    device: str = "cpu"  # cpu, cuda or auto


@dataclass
class DataConfig:
    """00_data_audit: the dataset, the demo builder and the spatial-block split."""

    data_csv: str = "data/smoke/samples.csv"
    image_dir: str = "data/smoke/images"
    demo_n_images: int = 400  # > 0: build the demo dataset when it is missing
    block_km: float = 30.0
    buffer_km: float = 5.0
    val_frac: float = 0.15
    test_frac: float = 0.15


@dataclass
class GeocellConfig:
    """01_geocells: per-province clustering into geocells."""

    method: str = "hdbscan"
    min_cell_size: int = 40
    min_samples: int = 5
    max_radius_km: float = 50.0
    urban_max_radius_km: float = 5.0
    neighbors_k: int = 6


@dataclass
class EncoderConfig:
    """02_phase0_province: the two encoders (spec, optional local weights file) and the model's
    fusion and embedding sizes."""

    clip_spec: str = "open_clip:ViT-S-32:none@64"
    clip_weights: str = ""  # empty: the spec's own weights
    scene_spec: str = "timm:tf_efficientnet_lite0@64"
    scene_weights: str = ""
    # pretrained weights a spec names that cannot be loaded stop the book, unless this is true
    allow_random_weights: bool = False
    fusion: str = "gated"
    cell_emb_dim: int = 64
    prov_emb_dim: int = 16


@dataclass
class CacheConfig:
    """The frozen encoders' feature cache, built by 02 and read by 03 (one cache: a profile must
    give both notebooks the same values)."""

    cache_dir: str = "cache"
    cache_views: int = 1  # augmented views per training image
    cache_batch_size: int = 64


@dataclass
class TrainingConfig:
    """Keys every training phase has; lr_heads is the heads' peak learning rate."""

    PHASE: ClassVar[int] = 0
    num_workers: int = 0
    epochs: int = 3
    batch_size: int = 64
    batches_per_epoch: int = 8
    lr_heads: float = 1e-3
    weight_decay: float = 1e-5
    shares: str = "equal"
    early_stop_patience: int = 0  # 0 = off
    amp: str = "auto"


@dataclass
class Phase0Config(TrainingConfig):
    """02_phase0_province: the province head and fusion gate on the cache."""


@dataclass
class Phase1Config(TrainingConfig):
    """03_phase1_geography: every head on the cache, optional concept heads and their ablation."""

    PHASE: ClassVar[int] = 1
    epochs: int = 6
    batches_per_epoch: int = 10
    shares: str = "spec003"
    beta: float = 0.9995  # effective-number weighting of the province loss
    knn_k: int = 10  # the k-nearest-neighbour baseline
    carry_optimizer: bool = True
    # off unless the adoption rule takes the heads on validation (03's ablation; docs/decisions/concepts.md)
    concept_weight: float = 0.0
    concept_bottleneck: bool = False
    concept_ablation: bool = False


@dataclass
class Phase2Config(TrainingConfig):
    """04_phase2_adaptation: the encoders' tops unfrozen, images augmented live."""

    PHASE: ClassVar[int] = 2
    epochs: int = 1
    batch_size: int = 16
    batches_per_epoch: int = 3
    lr_heads: float = 5e-5
    lr_clip: float = 1e-5
    lr_scene: float = 5e-6
    clip_unfreeze: float = 0.3  # top fraction of each encoder trained
    scene_unfreeze: float = 0.2
    beta: float = 0.9995
    eval_batch_size: int = 64
    carry_optimizer: bool = True


@dataclass
class Phase3Config(Phase2Config):
    """05_phase3_finetune: optional; kept only if validation improves."""

    PHASE: ClassVar[int] = 3
    enabled: bool = True
    batches_per_epoch: int = 2
    lr_heads: float = 1e-5
    lr_clip: float = 5e-6
    lr_scene: float = 2e-6
    clip_unfreeze: float = 0.5
    scene_unfreeze: float = 0.5


@dataclass
class EvaluationConfig:
    """06_evaluation: the test split, TTA, refinement, ablations, several-photo and ensemble studies."""

    checkpoint: str = ""  # empty: the run's final checkpoint
    batch_size: int = 64
    num_workers: int = 0
    top_provinces: int = 2
    top_cells: int = 5
    tta: bool = True
    urban_min_population: int = 100000
    urban_radius_km: float = 10.0
    n_worst: int = 15
    n_alpha_examples: int = 4
    n_occlusion_images: int = 3
    occlusion_grid: int = 4
    ensemble_phases: list = field(default_factory=lambda: [2, 1])
    ensemble_size: int = 2
    multiview_views: int = 4
    multiview_points: int = 200


@dataclass
class PredictConfig:
    """07_predict: the predictor on new images."""

    checkpoint: str = ""
    n_test_images: int = 3
    image_paths: list = field(default_factory=list)
    tta: bool = False


@dataclass
class ExploreConfig:
    """08_explore: the error explorer."""

    checkpoint: str = ""
    pick: str = "worst"  # "worst", "confident_wrong" or "id"
    n_pick: int = 10
    image_id: str = ""  # a test id to start on (empty: the first image of the pick)
    top_provinces: int = 2
    top_cells: int = 5
    tta: bool = False
    batch_size: int = 64  # only used when 06's test predictions are missing


SECTIONS = {"data": DataConfig, "geocells": GeocellConfig, "encoders": EncoderConfig, "cache": CacheConfig,
            "phase0": Phase0Config, "phase1": Phase1Config, "phase2": Phase2Config, "phase3": Phase3Config,
            "evaluation": EvaluationConfig, "predict": PredictConfig, "explore": ExploreConfig}
# notebook -> the sections its parameters cell declares (after the common keys)
NOTEBOOKS = {"00_data_audit": ("data",), "01_geocells": ("geocells",),
             "02_phase0_province": ("encoders", "cache", "phase0"), "03_phase1_geography": ("cache", "phase1"),
             "04_phase2_adaptation": ("phase2",), "05_phase3_finetune": ("phase3",),
             "06_evaluation": ("evaluation",), "07_predict": ("predict",), "08_explore": ("explore",)}


def keys_of(cls) -> list[str]:
    """The keys of a section class, in declaration order."""
    return [f.name for f in fields(cls)]


def notebook_defaults(notebook: str) -> dict:
    """{key: default} that ``notebook``'s parameters cell declares: common keys, then its sections'."""
    out = asdict(CommonConfig())
    for name in _sections_of(notebook):
        out.update(asdict(SECTIONS[name]()))
    return out


def _sections_of(notebook: str) -> tuple:
    if notebook not in NOTEBOOKS:
        raise ConfigError(f"{notebook!r} is not a notebook of the book (have: {', '.join(NOTEBOOKS)})")
    return NOTEBOOKS[notebook]


def _refuse_unknown(values, known: list, where: str) -> None:
    unknown = [k for k in values if k not in known]
    if unknown:
        close = difflib.get_close_matches(unknown[0], known, n=1, cutoff=0.75)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}{hint}; known: {', '.join(known)}")


def _checked(cls, values: dict, where: str):
    """An instance of ``cls`` from ``values``; unknown keys and wrong types raise ConfigError."""
    hints = get_type_hints(cls)
    _refuse_unknown(values, keys_of(cls), where)
    out = {}
    for key, value in values.items():
        want = hints[key]
        # bool is an int to Python, but `epochs: true` is a mistake; an int is a fine float (`buffer_km: 5`)
        ok = isinstance(value, want) and not (want is not bool and isinstance(value, bool))
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            ok, value = True, float(value)
        if not ok:
            raise ConfigError(f"{where}: key {key!r} must be {want.__name__}, got {value!r}")
        out[key] = value
    return cls(**out)


def sections_from(notebook: str, namespace: dict) -> tuple:
    """The typed sections of ``notebook`` from the variables of its parameters cell (``globals()``
    after papermill injected a profile's values), type-checked: one instance per NOTEBOOKS entry."""
    return tuple(_checked(SECTIONS[name], {k: namespace[k] for k in keys_of(SECTIONS[name])}, notebook)
                 for name in _sections_of(notebook))


@dataclass
class BookConfig:
    """A profile's settings: the common keys and every section, defaults filled in."""

    common: CommonConfig = field(default_factory=CommonConfig)
    sections: dict = field(default_factory=lambda: {name: cls() for name, cls in SECTIONS.items()})

    def __getattr__(self, name):  # cfg.phase1, cfg.cache, ...
        sections = self.__dict__.get("sections", {})
        if name in sections:
            return sections[name]
        raise AttributeError(name)

    def parameters_for(self, notebook: str) -> dict:
        """{key: value} ``notebook`` runs with (the flat form of its parameters cell)."""
        out = asdict(self.common)
        for name in _sections_of(notebook):
            out.update(asdict(self.sections[name]))
        return out

    @classmethod
    def from_profile(cls, common: dict, notebooks: dict, source: str = "profile") -> "BookConfig":
        """Validate a profile's ``common`` and ``notebooks`` sections against the typed tree.
        A section shared by several notebooks (the cache of 02 and 03) must be given the same keys
        and values in each of them, since papermill passes every notebook only its own keys."""
        base = _checked(CommonConfig, dict(common or {}), f"{source}: common")
        given: dict = {}
        for notebook in NOTEBOOKS:
            values = dict((notebooks or {}).get(notebook) or {})  # a notebook the profile omits: defaults
            where = f"{source}: notebooks.{notebook}"
            _refuse_unknown(values, [k for n in NOTEBOOKS[notebook] for k in keys_of(SECTIONS[n])], where)
            for name in NOTEBOOKS[notebook]:
                mine = {k: v for k, v in values.items() if k in keys_of(SECTIONS[name])}
                if name in given and given[name][0] != mine:
                    raise ConfigError(f"{where}: the {name} keys {mine} differ from notebooks.{given[name][1]}'s "
                                      f"{given[name][0]}; both read one {name}, so give both the same")
                given.setdefault(name, (mine, notebook))
        unknown = [n for n in (notebooks or {}) if n not in NOTEBOOKS]
        if unknown:
            raise ConfigError(f"{source}: notebooks.{unknown[0]}: not a notebook of the book")
        return cls(base, {name: _checked(SECTIONS[name], given.get(name, ({},))[0], f"{source}: {name}")
                         for name in SECTIONS})
