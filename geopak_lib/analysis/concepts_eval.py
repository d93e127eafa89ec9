"""The concept heads on the test split (docs/decisions/concepts.md): per-sample concept predictions beside the truth
read from the rasters, accuracy per province, and the images whose predicted concept disagrees with
the place the model put them ("snow and ice", placed in Sindh). Used by 06_evaluation.
Decisions: docs/decisions/concepts.md.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from geopak_lib.constants import PROVINCES
from geopak_lib.data.concepts import UNKNOWN, concept_labels

DISAGREE_MIN_P = 0.5  # a concept prediction counts as a claim from this probability on


def concept_frame(model, outputs: dict, rows: pd.DataFrame) -> pd.DataFrame:
    """Per sample, for each concept head: ``<c>_pred`` (class), ``<c>_p`` (its probability) and
    ``<c>_true`` (the location's class under the run's mapping, 'unknown' where it has none; from
    the rows' concept_<c> target index). No columns for a model without concept heads."""
    logits = outputs.get("concept_logits") or {}
    out = pd.DataFrame(index=range(len(rows)))
    for name, lg in logits.items():
        classes = np.array(model.config.concept_classes[name], dtype=object)
        p = torch.softmax(lg.float(), -1).cpu().numpy()
        out[f"{name}_pred"], out[f"{name}_p"] = classes[p.argmax(1)], p.max(1)
        if f"concept_{name}" in rows:
            idx = rows[f"concept_{name}"].to_numpy(int)
            out[f"{name}_true"] = np.where(idx >= 0, classes[np.clip(idx, 0, None)], UNKNOWN)
    return out


def concept_names(frame: pd.DataFrame) -> list[str]:
    """The concepts a predictions frame has heads and truth for."""
    return [c[:-5] for c in frame if c.endswith("_pred") and f"{c[:-5]}_true" in frame]


def concept_accuracy(frame: pd.DataFrame) -> pd.DataFrame:
    """Per true province (and 'all'): for each concept, n (images with a known class) and the
    head's accuracy, beside the accuracy of always answering the province's most common class (a
    head that learnt only 'where' would reach it). Empty for a model without concept heads."""
    rows = []
    for province, part in [*((p, frame[frame["province"] == p]) for p in PROVINCES), ("all", frame)]:
        if not len(part):
            continue
        row = {"province": province}
        for c in concept_names(frame):
            known = part[part[f"{c}_true"] != UNKNOWN]
            row[f"{c}_n"] = len(known)
            row[f"{c}_acc"] = float((known[f"{c}_pred"] == known[f"{c}_true"]).mean()) if len(known) else np.nan
            row[f"{c}_majority_acc"] = float(known[f"{c}_true"].value_counts(normalize=True).iloc[0]) \
                if len(known) else np.nan
        rows.append(row)
    return pd.DataFrame(rows).set_index("province") if concept_names(frame) else pd.DataFrame()


def concept_disagreements(frame: pd.DataFrame, concepts_json: dict, min_p: float = DISAGREE_MIN_P):
    """Where the concept a head claims (probability >= min_p) is not what the rasters say at the
    point the model predicted. -> (summary per concept: n claims, share disagreeing, median error km
    when they agree / disagree; the disagreeing images, most confident first, with the predicted
    province, the claimed concept, the concept at the predicted point and at the truth)."""
    at_pred = concept_labels(frame["mixture_lat"].to_numpy(float), frame["mixture_lon"].to_numpy(float))
    summary, cases = [], []
    for c in concept_names(frame):
        spec = concepts_json["concepts"][c]
        here = at_pred[c].map(lambda v: spec["map"].get(v, UNKNOWN)).to_numpy()  # same classes as the head
        claim = (frame[f"{c}_p"] >= min_p).to_numpy() & (here != UNKNOWN)
        disagree = claim & (frame[f"{c}_pred"].to_numpy() != here)
        err = frame["error_km"].to_numpy(float)
        summary.append({"concept": c, "claims": int(claim.sum()),
                        "disagree_share": float(disagree.sum() / max(claim.sum(), 1)),
                        "median_km_agree": float(np.median(err[claim & ~disagree])) if (claim & ~disagree).any() else np.nan,
                        "median_km_disagree": float(np.median(err[disagree])) if disagree.any() else np.nan})
        part = frame.loc[disagree, ["id", "province", "province_pred", "error_km", f"{c}_pred", f"{c}_p", f"{c}_true"]]
        cases.append(part.assign(concept=c, at_predicted_point=here[disagree]).rename(columns={
            f"{c}_pred": "model_says", f"{c}_p": "p", f"{c}_true": "at_true_point", "province": "true_province"}))
    cases = pd.concat(cases, ignore_index=True) if cases else pd.DataFrame()
    if len(cases):
        cases["province_pred"] = [PROVINCES[int(p)] for p in cases["province_pred"]]
        cases = cases.sort_values("p", ascending=False, kind="stable")[
            ["id", "concept", "model_says", "p", "province_pred", "at_predicted_point", "at_true_point", "true_province",
             "error_km"]]
    return pd.DataFrame(summary), cases.reset_index(drop=True)


