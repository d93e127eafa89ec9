"""The concept heads' scores for one prediction (what the predictor reports beside the location).
Evaluation of the concept heads over a split: geopak_lib/analysis/concepts_eval.py."""

from __future__ import annotations

import numpy as np
import torch


def concept_scores(model, outputs: dict, top: int = 3) -> list[dict]:
    """Each row's concept predictions: [{concept: [(class, probability), ... top, best
    first]}] from outputs['concept_logits']; [] per row for a model without concept heads."""
    logits = outputs.get("concept_logits")
    n = len(outputs["province_logits"])
    if not logits:
        return [{} for _ in range(n)]
    classes = model.config.concept_classes
    tops = {k: top_classes(torch.softmax(v.float(), -1).cpu().numpy(), classes[k], top) for k, v in logits.items()}
    return [{k: rows[i] for k, rows in tops.items()} for i in range(n)]


def top_classes(probs, classes, top: int) -> list[list[tuple]]:
    """probs (B, C) -> each row's top classes [(class name, probability)], best first, ties in class
    order (a stable sort per row, done for the whole batch at once)."""
    probs = np.asarray(probs)
    order = np.argsort(-probs, axis=-1, kind="stable")[:, :top]
    values = np.take_along_axis(probs, order, -1).tolist()
    return [[(classes[j], v) for j, v in zip(idx, val)] for idx, val in zip(order.tolist(), values)]
