"""The concept ablation's orchestration on synthetic cached features: the main variant is reused,
the other two train with the same PhaseConfig from the same start, rows for val and test."""

import logging

import numpy as np
import pandas as pd
import pytest

from geopak_lib.data.concepts import concept_mapping
from geopak_lib.data.rundir import RunDir
from geopak_lib.analysis import concept_ablation as ablation
from geopak_lib.training.inputs import PhaseInputs, add_concept_heads
from geopak_lib.training.trainer import train_phase
from synthetic_training import cfg1, synthetic, tiny_model, with_concepts


def test_variant_settings():
    assert ablation.variant_settings("off", 0.3) == (0.0, False)
    assert ablation.variant_settings("bottleneck", 0.3) == (0.3, True)
    assert ablation.variant_of(0.3, False) == "on" and ablation.variant_of(0.0, True) == "off"
    with pytest.raises(ValueError, match="unknown"):
        ablation.variant_settings("half", 0.3)


def test_ablation_trains_the_other_variants_and_writes_the_table(tmp_path, monkeypatch, caplog):
    cells, data = synthetic()
    data = with_concepts(data)
    data.table["split"] = ["train" if i % 10 < 6 else ("val" if i % 10 < 8 else "test") for i in range(len(data.table))]
    mapping = concept_mapping(data.table)
    calls = []

    def fake_inputs(run_dir, phase, cache, device, progress, concept_weight=None, concept_bottleneck=False):
        calls.append((concept_weight, concept_bottleneck))
        logging.getLogger("geopak_lib.model.encoders").warning("encoder runs on RANDOM weights (variant rebuild)")
        model = add_concept_heads(tiny_model(cells), mapping, concept_weight, bottleneck=concept_bottleneck)
        return PhaseInputs({}, tmp_path / "p0.pt", model, data)

    monkeypatch.setattr(ablation, "load_phase_inputs", fake_inputs)
    cfg = cfg1(epochs=2, batches_per_epoch=4)
    main = add_concept_heads(tiny_model(cells), mapping, 0.5)
    train_phase(cfg, main, data, tmp_path / "run", progress=False, device="cpu")
    table = ablation.concept_ablation(tmp_path / "run", cfg, None, 0.5, main_variant="on", main_model=main, data=data,
                                      main_seconds=1.0)
    # 'on' was the main run: not trained again; each other variant is set up to train, then to evaluate
    assert calls == [(0.0, False), (0.5, True), (0.0, False), (0.5, True)]
    assert "variant rebuild" not in caplog.text  # 03 reported the encoders once; the variants stay quiet
    logging.getLogger("geopak_lib.model.encoders").warning("after the ablation")
    assert "after the ablation" in caplog.text  # logging is back on
    assert table[["variant", "split"]].values.tolist() == [
        ["off", "val"], ["on", "val"], ["bottleneck", "val"], ["off", "test"], ["on", "test"], ["bottleneck", "test"]]
    assert table.loc[table.variant == "off", "concept_weight"].eq(0).all()
    assert table.loc[table.variant == "off", "climate_acc"].isna().all()  # no heads, no accuracy
    assert table.loc[table.variant != "off", "climate_acc"].between(0, 1).all()
    variant_dir = tmp_path / "run" / "ablations" / "concepts_bottleneck" / "checkpoints" / "phase1"
    assert (variant_dir / "best.pt").is_file()
    assert not list(variant_dir.glob("epoch_*.pt"))  # nobody resumes a variant: no epoch files
    assert list((tmp_path / "run" / "checkpoints" / "phase1").glob("epoch_*.pt"))  # the main run keeps its own
    back = RunDir(tmp_path / "run").read_table("concept_ablation.csv")
    rule = list(ablation.RULE_COLUMNS)
    pd.testing.assert_frame_equal(back.drop(columns=rule), table.drop(columns=rule), check_dtype=False)
    np.testing.assert_allclose(back["val_diff_km"].astype(float), table["val_diff_km"].astype(float))
    assert ablation.rule_choice(back) == ablation.rule_choice(table)
    val = table[table.split == "val"].set_index("variant")["median_km"]
    assert ablation.best_on_validation(table) == val.idxmin()
    assert table.loc[table.this_run, "variant"].tolist() == ["on", "on"]  # val and test rows of the main run
    chosen = ablation.rule_choice(back)
    assert chosen in ablation.VARIANTS and back.loc[back.split == "test", "chosen"].isna().all()
    line = ablation.verdict_markdown(back)
    assert f"The adoption rule keeps **{chosen}**" in line and "This run's model: **on**" in line
    assert "This run's model: **unknown**" in ablation.verdict_markdown(back.drop(columns="this_run"))
    old = back.drop(columns=list(ablation.RULE_COLUMNS))  # a table written before the rule
    assert f"this table: **{val.idxmin()}**" in ablation.verdict_markdown(old)


def _val_frame(errors, blocks):
    return pd.DataFrame({"id": [f"i{k}" for k in range(len(errors))], "block_id": blocks, "error_km": errors})


def test_the_rule_keeps_off_unless_a_variant_beats_it_beyond_the_noise():
    """Hand-made validation errors on 40 blocks of 5 images: 'on' is 30 km better on every image (clearly
    adopted, interval [-30, -30]); 'bottleneck' is 'on' plus +-1 km noise with a lower median by 0.2 km,
    so its interval straddles zero and the rule keeps 'on'. With 'on' only +-1 km noise around 'off',
    the rule keeps 'off' although one variant has the lowest median."""
    rng = np.random.default_rng(0)
    blocks = np.repeat(np.arange(40), 5)
    off = rng.uniform(50, 400, 200)
    on = off - 30.0
    bottleneck = on + rng.normal(0, 1.0, 200) - 0.2
    frames = {v: _val_frame(e, blocks) for v, e in (("off", off), ("on", on), ("bottleneck", bottleneck))}
    rows = [{"variant": v, "split": s, "median_km": float(np.median(frames[v].error_km))}
            for s in ("val", "test") for v in ablation.VARIANTS]
    table = ablation.with_rule(pd.DataFrame(rows), frames)
    val = table[table.split == "val"].set_index("variant")
    assert ablation.rule_choice(table) == "on"
    assert val.loc["on", "adopted"] is True and val.loc["on", "against"] == "off"
    assert val.loc["on", "val_diff_km"] == pytest.approx(-30.0)
    assert val.loc["bottleneck", "adopted"] is False and val.loc["bottleneck", "against"] == "on"
    assert val.loc["bottleneck", "val_diff_lo"] < 0 < val.loc["bottleneck", "val_diff_hi"]
    noisy = {"off": frames["off"], "on": _val_frame(off + rng.normal(0, 1.0, 200) - 0.1, blocks),
             "bottleneck": _val_frame(off + rng.normal(0, 1.0, 200), blocks)}
    assert ablation.rule_choice(ablation.with_rule(pd.DataFrame(rows), noisy)) == "off"


@pytest.mark.book
def test_variants_trained_in_two_processes_equal_the_ones_trained_here(tmp_path, smoke_run):
    """The demo trains the two extra variants side by side in worker processes (spawned: nothing of
    this process's state comes along). On the smoke run's phase-0 checkpoint and feature cache, with
    one thread each, the table equals the one trained in this process, one variant after the other."""
    import shutil
    from dataclasses import asdict

    from geopak_lib.training.cache import CacheSettings
    from geopak_lib.training.config import PhaseConfig

    smoke = smoke_run.run_dir()
    assert (smoke / "concepts.json").is_file() and RunDir(smoke).best_checkpoint(0).is_file()
    cfg = PhaseConfig.for_phase(1, epochs=2, batch_size=16, batches_per_epoch=3, shares="spec003", seed=0)
    cache = CacheSettings(cache_root=smoke_run.notebooks["02_phase0_province"]["cache_dir"], views=1, seed=0)
    tables = {}
    for workers in (1, 2):
        run = tmp_path / f"run{workers}"
        (run / "checkpoints").mkdir(parents=True)
        for f in smoke.iterdir():
            if f.is_file():
                shutil.copy(f, run / f.name)
        shutil.copytree(smoke / "checkpoints" / "phase0", run / "checkpoints" / "phase0")
        seconds = ablation.train_variant(run, "on", 0.1, asdict(cfg), cache=asdict(cache))
        model, data = ablation.load_variant(run, "on", 0.1, cache)
        tables[workers] = ablation.concept_ablation(run, cfg, cache, 0.1, main_variant="on", main_model=model,
                                                    data=data, main_seconds=seconds,
                                                    workers=workers)
        assert not list((ablation.variant_dir(run, "off") / "checkpoints" / "phase1").glob("epoch_*.pt"))
    cols = ["variant", "split", "n", "median_km", "p90_km", "province_acc", "climate_acc", "land_cover_acc"]
    pd.testing.assert_frame_equal(tables[1][cols], tables[2][cols], check_exact=False, rtol=1e-6)
    assert tables[2]["variant"].tolist() == ["off", "on", "bottleneck"] * 2
