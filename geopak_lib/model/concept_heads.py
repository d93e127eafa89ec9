"""Concept heads (spec 002; docs/decisions/concepts.md): one small classifier per geographic concept (climate, land
cover) on the fused embedding, trained as an auxiliary task; in the bottleneck variant the geocell
heads also see the concept probabilities. Classes come from the run's concepts.json.
Decisions: docs/decisions/concepts.md.
"""

from __future__ import annotations

import torch
from torch import nn


def head(d_in: int, d_hidden: int, n_classes: int, dropout: float = 0.0) -> nn.Sequential:
    """Linear -> LayerNorm -> GELU -> [Dropout] -> Linear (geopak.mlp_block's shape): (B, d_in) -> (B, n_classes)."""
    drop = [nn.Dropout(dropout)] if dropout > 0 else []
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.LayerNorm(d_hidden), nn.GELU(), *drop,
                         nn.Linear(d_hidden, n_classes))


class ConceptHeads(nn.Module):
    """{concept: [class names]} -> one Linear -> LayerNorm -> GELU -> Linear head per concept.

    forward: fused (B, D) -> {concept: logits (B, C_concept)}, concepts in sorted-name order.
    """

    def __init__(self, dim: int, classes: dict, hidden: int = 128, dropout: float = 0.0):
        super().__init__()
        self.names = sorted(classes)
        self.classes = {k: list(classes[k]) for k in self.names}
        self.heads = nn.ModuleDict({k: head(dim, hidden, len(self.classes[k]), dropout) for k in self.names})

    @property
    def total_classes(self) -> int:
        """Sum of the concepts' class counts: the width of :meth:`probabilities`."""
        return sum(len(c) for c in self.classes.values())

    def forward(self, fused: torch.Tensor) -> dict:
        return {k: self.heads[k](fused) for k in self.names}

    def probabilities(self, logits: dict) -> torch.Tensor:
        """Softmax of each concept's logits, concatenated in sorted-name order: (B, total_classes)."""
        return torch.cat([torch.softmax(logits[k], -1) for k in self.names], -1)


def validate_concept_classes(classes) -> dict:
    """Check {concept name: [class names]}: names are identifiers, each list non-empty, distinct strings."""
    if not isinstance(classes, dict):
        raise ValueError(f"concept_classes must be a dict {{concept: [class names]}}, got {type(classes).__name__}")
    for name, names in classes.items():
        if not (isinstance(name, str) and name.isidentifier()):
            raise ValueError(f"concept name {name!r} must be an identifier (it names a module)")
        if not isinstance(names, (list, tuple)) or not names or not all(isinstance(n, str) for n in names) \
                or len(set(names)) != len(names):
            raise ValueError(f"concept {name!r}: classes must be a non-empty list of distinct strings, got {names!r}")
    return {k: list(v) for k, v in classes.items()}
