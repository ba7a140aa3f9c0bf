"""Top-k by relevance weight (the paper's "text ranking only" ablation)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prunekit.core.inputs import PruneInputs
from prunekit.strategies.selection.base import SelectionStrategy, rank_descending


@dataclass
class TopKSelection(SelectionStrategy):
    """Keep the tokens with the largest relevance weights; ties go to the lowest index.

    With uniform weights (relevance ``none``) this keeps the first tokens.
    Weights within ``tie_rtol`` of the row's largest weight of each other
    (float rounding of duplicate tokens) tie.
    """

    tie_rtol: float = 1e-5
    name = "topk"

    def select(self, inputs: PruneInputs, weights: torch.Tensor, num_keep: int) -> torch.Tensor:
        return rank_descending(weights, inputs.token_mask, num_keep, self.tie_rtol)
