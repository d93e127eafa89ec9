"""06's concept sections: concept columns of the predictions frame, accuracy per province and the
disagreements between a claimed concept and the place predicted, on frames worked out by hand."""

import numpy as np
import pandas as pd
import pytest
import torch

from geopak_lib.data.concepts import UNKNOWN
from geopak_lib.analysis.concepts_eval import concept_accuracy, concept_disagreements, concept_frame


class FakeModel:
    class config:
        concept_classes = {"climate": ["B arid", "C temperate", "E polar"]}


def test_concept_frame_columns():
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]]))
    rows = pd.DataFrame({"concept_climate": [1, -1]}, index=[10, 11])  # table rows keep their own index
    f = concept_frame(FakeModel, {"concept_logits": {"climate": logits}}, rows)
    assert f["climate_pred"].tolist() == ["B arid", "E polar"]
    assert f["climate_p"].tolist() == pytest.approx([0.7, 0.6])
    assert f["climate_true"].tolist() == ["C temperate", UNKNOWN]
    assert concept_frame(FakeModel, {}, rows).shape == (2, 0)  # no heads: no columns


def frame():
    # Karachi (B arid, urban), Lahore (B arid), Islamabad (C temperate), the Karakoram (E polar)
    return pd.DataFrame({
        "id": list("abcde"), "province": ["Sindh", "Sindh", "Punjab", "Punjab", "Gilgit-Baltistan"],
        "province_pred": [0, 0, 1, 1, 4], "error_km": [10.0, 300.0, 20.0, 40.0, 80.0],
        "mixture_lat": [24.86, 24.86, 31.55, 33.69, 36.0], "mixture_lon": [67.0, 67.0, 74.35, 73.05, 75.0],
        "climate_pred": ["B arid", "E polar", "B arid", "B arid", "E polar"],
        "climate_p": [0.9, 0.95, 0.4, 0.8, 0.7],
        "climate_true": ["B arid", "B arid", "B arid", "C temperate", UNKNOWN]})


def test_concept_accuracy_by_hand():
    t = concept_accuracy(frame())
    assert t.loc["Sindh", "climate_n"] == 2 and t.loc["Sindh", "climate_acc"] == 0.5
    assert t.loc["Punjab", "climate_acc"] == 0.5 and t.loc["Punjab", "climate_majority_acc"] == 0.5
    assert t.loc["Gilgit-Baltistan", "climate_n"] == 0 and np.isnan(t.loc["Gilgit-Baltistan", "climate_acc"])
    assert t.loc["all", "climate_n"] == 4 and t.loc["all", "climate_acc"] == 0.5
    assert t.loc["all", "climate_majority_acc"] == 0.75


def test_disagreements_by_hand():
    mapping = {"concepts": {"climate": {"classes": ["B arid", "C temperate", "E polar"],
                                        "map": {"B arid": "B arid", "C temperate": "C temperate",
                                                "E polar": "E polar"}}}}
    summary, cases = concept_disagreements(frame(), mapping, min_p=0.5)
    # claims: a (B arid at Karachi: agrees), b (E polar at Karachi: disagrees), d (B arid at Islamabad,
    # which is C temperate: disagrees), e (E polar in the Karakoram: agrees); c is below min_p
    s = summary.set_index("concept").loc["climate"]
    assert s["claims"] == 4 and s["disagree_share"] == 0.5
    assert s["median_km_agree"] == 45.0 and s["median_km_disagree"] == 170.0
    assert cases["id"].tolist() == ["b", "d"]  # most confident first
    b = cases.iloc[0]
    assert (b["model_says"], b["province_pred"], b["at_predicted_point"], b["at_true_point"]) == \
        ("E polar", "Sindh", "B arid", "B arid")
