"""Concept heads: shapes, the bottleneck, the loss by hand, weight 0 == no term, a step
that lowers the concept loss, concept targets from concepts.json, and the checkpoint round trip."""

import math

import pandas as pd
import pytest
import torch

from geopak_lib.data.concepts import concept_mapping
from geopak_lib.model.geopak import GeopakModel, ModelConfig
from geopak_lib.model.losses import ConceptLoss
from geopak_lib.training.checkpoints import (build_model_from_checkpoint, checkpoint_state, load_checkpoint,
                                             save_checkpoint)
from geopak_lib.training.inputs import add_concept_heads, make_loss
from geopak_lib.training.passes import epoch_metrics
from synthetic_training import CLASSES, cfg1, synthetic, tiny_model, with_concepts
from geopak_lib.training.trainer import train_phase

def test_config_needs_classes_and_weight_together():
    base = dict(clip_dim=6, scene_dim=5)
    with pytest.raises(ValueError, match="concept_weight > 0"):
        ModelConfig(**base, concept_classes=CLASSES)
    with pytest.raises(ValueError, match="concept_weight > 0"):
        ModelConfig(**base, concept_weight=0.5)
    with pytest.raises(ValueError, match="bottleneck"):
        ModelConfig(**base, concept_bottleneck=True)
    with pytest.raises(ValueError, match="distinct"):
        ModelConfig(**base, concept_weight=1.0, concept_classes={"climate": ["a", "a"]})


def test_shapes_and_bottleneck():
    cells, _ = synthetic()
    base = tiny_model(cells)
    x = (torch.randn(4, 6), torch.randn(4, 5))
    assert "concept_logits" not in base.forward_features(*x)
    on = add_concept_heads(base, {"concepts": {k: {"classes": v} for k, v in CLASSES.items()}}, 0.5)
    out = on.forward_features(*x)
    assert {k: tuple(v.shape) for k, v in out["concept_logits"].items()} == {"climate": (4, 2), "land_cover": (4, 3)}
    # every weight of the model without heads is kept, so its other outputs are unchanged
    for k in ("province_logits", "aux_latlon"):
        torch.testing.assert_close(out[k], base.forward_features(*x)[k])
    torch.testing.assert_close(out["geocell_logits"][0], base.forward_features(*x)["geocell_logits"][0])
    neck = add_concept_heads(base, {"concepts": {k: {"classes": v} for k, v in CLASSES.items()}}, 0.5, bottleneck=True)
    assert neck.geocell_heads["0"][0].in_features == 16 + 5  # fused (16) + 2 + 3 concept probabilities
    probs = neck.concept_heads.probabilities(neck.forward_features(*x)["concept_logits"])
    assert probs.shape == (4, 5) and torch.allclose(probs[:, :2].sum(1), torch.ones(4))
    # the cell heads depend on the concept probabilities: change a concept head, the cell logits move
    before = neck.forward_features(*x)["geocell_logits"][0].clone()
    with torch.no_grad():
        neck.concept_heads.heads["climate"][-1].bias += torch.tensor([3.0, -3.0])
    assert not torch.allclose(neck.forward_features(*x)["geocell_logits"][0], before)
    assert add_concept_heads(on, {}, 0.0).concept_heads is None  # weight 0 removes them


def test_concept_loss_by_hand():
    logits = {"climate": torch.tensor([[2.0, 0.0], [0.0, 1.0], [5.0, 5.0]]),
              "land_cover": torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])}
    targets = {"climate": torch.tensor([0, 0, -1]), "land_cover": torch.tensor([-1, -1, -1])}
    got = ConceptLoss()(logits, targets)
    # climate: CE of row 0 (target 0) = log(1 + e^-2); row 1 (target 0) = log(1 + e^1); row 2 ignored
    climate = (math.log(1 + math.exp(-2)) + math.log(1 + math.exp(1))) / 2
    assert got["concept_climate"].item() == pytest.approx(climate, rel=1e-6)
    assert got["concept_land_cover"].item() == 0.0  # no labelled sample: 0, and left out of the mean
    assert got["concept"].item() == pytest.approx(climate, rel=1e-6)
    targets["land_cover"] = torch.tensor([2, 0, -1])
    lc = (math.log(math.exp(1) + math.exp(2) + math.exp(3)) - 3 + math.log(3)) / 2
    got = ConceptLoss()(logits, targets)
    assert got["concept"].item() == pytest.approx((climate + lc) / 2, rel=1e-6)


def test_weight_zero_is_no_term_and_weight_adds_it():
    cells, data = synthetic()
    data = with_concepts(data)
    base = tiny_model(cells)
    on = add_concept_heads(base, concept_mapping(data.table), 0.7)
    rows = data.rows("train")[:16]
    labels = data.labels(rows, "cpu")
    args = lambda m: (m, m.forward_features(*data.cache.gather(rows)), labels["province_id"],  # noqa: E731
                      labels["cell_id"], labels["lat"], labels["lon"], 3, labels["concepts"])
    off = make_loss(base, data)(*args(base))
    assert "concept" not in off and make_loss(base, data).concept_weight == 0.0
    with_term = make_loss(on, data)(*args(on))  # weight from the model's config: 0.7
    without = make_loss(on, data, concept_weight=0.0)(*args(on))
    assert "concept" not in without and torch.equal(without["total"], off["total"])  # same other weights
    assert with_term["total"].item() == pytest.approx(without["total"].item() + 0.7 * with_term["concept"].item(),
                                                      rel=1e-6)


def test_sgd_step_lowers_concept_loss():
    cells, data = synthetic()
    data = with_concepts(data)
    model = add_concept_heads(tiny_model(cells), concept_mapping(data.table), 1.0)
    loss_fn = ConceptLoss()
    rows = data.rows("train")[:32]
    labels = data.labels(rows, "cpu")
    opt = torch.optim.SGD(model.concept_heads.parameters(), lr=0.5)
    first = None
    for _ in range(5):
        loss = loss_fn(model.forward_features(*data.cache.gather(rows))["concept_logits"], labels["concepts"])["concept"]
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first


def test_targets_metrics_training_and_checkpoint_round_trip(tmp_path):
    cells, data = synthetic()
    data = with_concepts(data)
    t = data.table
    assert data.concept_names == ("climate", "land_cover")
    assert t.loc[t.land_cover == "unknown", "concept_land_cover"].eq(-1).all()
    assert t.loc[t.land_cover == "urban", "concept_land_cover"].eq(2).all()
    frame = pd.DataFrame({"province_id": [0, 0, 1], "province_pred": [0, 0, 1], "alpha": 0.5,
                          "climate_pred": [0, 1, 1], "concept_climate": [0, 0, 1],
                          "land_cover_pred": [2, 2, 0], "concept_land_cover": [2, -1, -1]})
    assert epoch_metrics(frame, {})["concept_acc"] == pytest.approx((2 / 3 + 1) / 2)

    model = add_concept_heads(tiny_model(cells), concept_mapping(data.table), 0.5, bottleneck=True)
    res = train_phase(cfg1(epochs=3, batches_per_epoch=8, lr_heads=1e-2), model, data, tmp_path / "run",
                      progress=False, device="cpu")
    val = res.history[res.history.split == "val"]
    assert val.loss_concept.iloc[-1] < val.loss_concept.iloc[0] and val.concept_acc.iloc[-1] > 0.8

    ckpt = load_checkpoint(res.best_path)  # weights_only load
    assert ckpt["model_meta"]["config"]["concept_classes"] == CLASSES
    back = build_model_from_checkpoint(ckpt, with_encoders=False)
    x = data.cache.gather(data.rows("val")[:5])
    model.eval()
    back.eval()
    for k in ("climate", "land_cover"):
        torch.testing.assert_close(back.forward_features(*x)["concept_logits"][k],
                                   model.forward_features(*x)["concept_logits"][k])
    save_checkpoint(checkpoint_state(back, None, None, {"phase": 1}, epoch=1, metrics={}, history=[], best={},
                                     epochs_since_best=0, stopped=False, sampler={}), tmp_path / "b.pt")
    assert GeopakModel.from_meta(load_checkpoint(tmp_path / "b.pt")["model_meta"]).config.concept_bottleneck
