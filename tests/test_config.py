"""The typed config (geopak_lib.config) is the single source of the notebooks' defaults: every
parameters cell declares exactly its sections' keys with the same defaults, profiles are
validated against it (unknown keys, types, one cache), and a phase section gives the trainer the
PhaseConfig the notebooks built by hand before."""

import ast

import papermill
import pytest

from geopak_lib import config
from geopak_lib.book.runner import REPO_ROOT, notebook_paths
from geopak_lib.training.config import PhaseConfig
from geopak_lib.training.run_phase import phase_config


def cell_defaults(nb_path) -> dict:
    """{key: default value} of a notebook's parameters cell, read by papermill (literals only)."""
    return {k: ast.literal_eval(v["default"]) for k, v in papermill.inspect_notebook(str(nb_path)).items()}


def disagreements(notebook: str, declared: dict) -> list[str]:
    """Each key where a parameters cell and the typed config differ: missing, extra, other default."""
    want = config.notebook_defaults(notebook)
    out = [f"{notebook}: config key {k!r} is not in the parameters cell" for k in want if k not in declared]
    out += [f"{notebook}: parameters cell key {k!r} is not in the config" for k in declared if k not in want]
    out += [f"{notebook}: {k} = {declared[k]!r} in the parameters cell, {want[k]!r} in the config"
            for k in want if k in declared and (declared[k] != want[k] or type(declared[k]) is not type(want[k]))]
    return out


def test_every_book_notebook_has_config_sections():
    assert [p.stem for p in notebook_paths(REPO_ROOT)] == list(config.NOTEBOOKS)


@pytest.mark.parametrize("nb_path", notebook_paths(REPO_ROOT), ids=lambda p: p.stem)
def test_parameters_cell_declares_the_config_defaults(nb_path):
    assert disagreements(nb_path.stem, cell_defaults(nb_path)) == []


def test_a_changed_default_is_caught():
    declared = cell_defaults(REPO_ROOT / "notebooks" / "05_phase3_finetune.ipynb")
    assert disagreements("05_phase3_finetune", {**declared, "clip_unfreeze": 1.0}) == [
        "05_phase3_finetune: clip_unfreeze = 1.0 in the parameters cell, 0.5 in the config"]
    assert disagreements("05_phase3_finetune", {**declared, "epochs": 1.0}) != []  # same value, other type
    missing = {k: v for k, v in declared.items() if k != "beta"}
    assert disagreements("05_phase3_finetune", missing) == [
        "05_phase3_finetune: config key 'beta' is not in the parameters cell"]


def test_a_notebook_declares_each_key_once():
    for notebook, names in config.NOTEBOOKS.items():
        keys = config.keys_of(config.CommonConfig)
        for name in names:
            keys += config.keys_of(config.SECTIONS[name])
        assert len(keys) == len(set(keys)), notebook


def test_profile_values_are_typed_and_overlay_the_defaults():
    cfg = config.BookConfig.from_profile({"seed": 3}, {"03_phase1_geography": {"epochs": 2, "beta": 1},
                                                       "00_data_audit": {"buffer_km": 5}})
    assert cfg.common.seed == 3 and cfg.phase1.epochs == 2 and cfg.phase1.batches_per_epoch == 10
    assert cfg.phase1.beta == 1.0 and isinstance(cfg.phase1.beta, float)  # an int is a fine float
    assert cfg.data.buffer_km == 5.0 and cfg.phase2 == config.Phase2Config()
    assert cfg.parameters_for("03_phase1_geography")["epochs"] == 2


@pytest.mark.parametrize("common, notebooks, message", [
    ({}, {"04_phase2_adaptation": {"lr": 1e-4}}, "notebooks.04_phase2_adaptation: unknown key 'lr'"),
    ({}, {"04_phase2_adaptation": {"lr_head": 1e-4}}, "unknown key 'lr_head' (did you mean 'lr_heads'?)"),
    ({"sed": 1}, {}, "common: unknown key 'sed' (did you mean 'seed'?)"),
    ({}, {"02_phase0_province": {"epochs": "3"}}, "key 'epochs' must be int, got '3'"),
    ({}, {"02_phase0_province": {"epochs": True}}, "key 'epochs' must be int, got True"),
    ({}, {"05_phase3_finetune": {"enabled": 1}}, "key 'enabled' must be bool, got 1"),
    ({}, {"02_phase0_province": {"cache_views": 2}}, "the cache keys {} differ from notebooks.02_phase0_province's"),
    ({}, {"09_extra": {}}, "notebooks.09_extra: not a notebook of the book"),
])
def test_profile_mistakes_are_named(common, notebooks, message):
    with pytest.raises(config.ConfigError) as err:
        config.BookConfig.from_profile(common, notebooks, "p.yaml")
    assert message in str(err.value) and str(err.value).startswith("p.yaml")


def test_sections_from_a_notebook_namespace_are_checked():
    names = {**config.notebook_defaults("04_phase2_adaptation"), "epochs": 2, "unrelated": object()}
    (section,) = config.sections_from("04_phase2_adaptation", names)
    assert section == config.Phase2Config(epochs=2)
    with pytest.raises(config.ConfigError, match="04_phase2_adaptation: key 'lr_clip' must be float"):
        config.sections_from("04_phase2_adaptation", {**names, "lr_clip": "1e-5"})


def test_phase_config_equals_what_the_notebooks_built_by_hand():
    # 05's former cell: PhaseConfig.for_phase(3, ...every key of its parameters cell..., seed=seed)
    s = config.Phase3Config()
    by_hand = PhaseConfig.for_phase(3, epochs=1, batch_size=16, batches_per_epoch=2, lr_heads=1e-5, lr_clip=5e-6,
                                    lr_scene=2e-6, clip_unfreeze=0.5, scene_unfreeze=0.5, weight_decay=1e-5,
                                    shares="equal", amp="auto", carry_optimizer=True, num_workers=0,
                                    eval_batch_size=64, seed=7)
    assert phase_config(s, seed=7) == by_hand
    one = phase_config(config.Phase1Config(), seed=0)
    assert one.offset_rampup and one.shares == "spec003" and one.eval_batch_size == 256  # trainer's default
    assert PhaseConfig.for_phase(3).clip_unfreeze == 0.5  # no second default for phase 3 (was 1.0)
