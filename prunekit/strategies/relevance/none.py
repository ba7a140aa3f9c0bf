"""No relevance: every token weighs the same."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prunekit.core.inputs import PruneInputs
from prunekit.strategies.relevance.base import RelevanceStrategy


@dataclass
class NoRelevance(RelevanceStrategy):
    """Uniform weights ``w_i = 1``: selection alone decides (e.g. ResPrune without text)."""

    name = "none"

    def weights(self, inputs: PruneInputs) -> torch.Tensor:
        return torch.ones_like(inputs.tokens[..., 0])
