"""prunekit's own components, registered through the same hook a third-party plugin uses."""

from __future__ import annotations

from prunekit.adapters.internvl import InternVLAdapter
from prunekit.adapters.llava import LlavaAdapter
from prunekit.adapters.llava_next import LlavaNextAdapter
from prunekit.pruners import ComposedPruner, ResPrune
from prunekit.registry import hookimpl
from prunekit.strategies import (
    GreedyResidualSelection,
    NoRelevance,
    RandomSelection,
    TextRelevance,
    TopKSelection,
)
from prunekit.text.nouns import HeuristicNounExtractor, SpacyNounExtractor


@hookimpl
def prunekit_register(registry) -> None:
    registry.add_pruner("resprune", ResPrune)
    registry.add_pruner("composed", ComposedPruner)
    registry.add_relevance("none", NoRelevance)
    registry.add_relevance("text", TextRelevance)
    registry.add_selection("greedy_residual", GreedyResidualSelection)
    registry.add_selection("topk", TopKSelection)
    registry.add_selection("random", RandomSelection)
    registry.add_noun_extractor("heuristic", HeuristicNounExtractor)
    registry.add_noun_extractor("spacy", SpacyNounExtractor)
    registry.add_adapter("llava", LlavaAdapter)
    registry.add_adapter("llava_next", LlavaNextAdapter)
    registry.add_adapter("internvl", InternVLAdapter)
