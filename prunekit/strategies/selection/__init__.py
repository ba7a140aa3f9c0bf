"""Selection strategies: which tokens to keep, given relevance weights."""

from prunekit.strategies.selection.base import SelectionStrategy
from prunekit.strategies.selection.greedy_residual import (
    GreedyResidualSelection,
    gram_method,
    greedy_residual_order,
)
from prunekit.strategies.selection.random import RandomSelection, position_noise
from prunekit.strategies.selection.topk import TopKSelection

__all__ = [
    "GreedyResidualSelection",
    "RandomSelection",
    "SelectionStrategy",
    "TopKSelection",
    "gram_method",
    "greedy_residual_order",
    "position_noise",
]
