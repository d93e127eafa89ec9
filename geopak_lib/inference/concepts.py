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
    probs = {k: torch.softmax(v.float(), -1).cpu().numpy() for k, v in logits.items()}
    out = []
    for i in range(n):
        row = {}
        for k, p in probs.items():
            order = np.argsort(-p[i], kind="stable")[:top]
            row[k] = [(classes[k][j], float(p[i, j])) for j in order]
        out.append(row)
    return out
