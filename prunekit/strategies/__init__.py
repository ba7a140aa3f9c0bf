"""Strategy components: *relevance* (how much each token matters) x *selection*
(which tokens to keep given those weights). Any relevance composes with any
selection through :class:`prunekit.pruners.ComposedPruner`."""

from prunekit.strategies.relevance import NoRelevance, RelevanceStrategy, TextRelevance
from prunekit.strategies.selection import (
    GreedyResidualSelection,
    RandomSelection,
    SelectionStrategy,
    TopKSelection,
)

__all__ = [
    "GreedyResidualSelection",
    "NoRelevance",
    "RandomSelection",
    "RelevanceStrategy",
    "SelectionStrategy",
    "TextRelevance",
    "TopKSelection",
]
