"""prunekit: training-free visual token pruning for vision-language models.

The public API::

    import prunekit
    pruner = prunekit.create_pruner("resprune", alpha=1.0)
    result = pruner.prune(tokens, budget=128, text_embeds=text)   # tokens (B, N, d)
    kept = result.gather(tokens)                                   # (B, 128, d)
"""

from __future__ import annotations

from typing import Any

from prunekit import accounting
from prunekit import builtin as _builtin
from prunekit.accounting import KeptTokens, Savings
from prunekit.adapters import AttachHandle, attach
from prunekit.core import PAD_INDEX, Budget, PruneInputs, PruneResult, TokenPruner, num_kept
from prunekit.core.pruner import Picks
from prunekit.pruners import ComposedPruner, ResPrune, ScoreMass
from prunekit.registry import Registry, get_registry, hookimpl
from prunekit.registry.registry import BUILTIN_PLUGINS as _BUILTIN_PLUGINS
from prunekit.strategies import RelevanceStrategy, SelectionStrategy

# prunekit's own components: every Registry registers them before any plugin. The package
# (the top of the import graph) hands them to the registry, which imports nothing above it.
if all(plugin is not _builtin for _, plugin in _BUILTIN_PLUGINS):
    _BUILTIN_PLUGINS.append(("builtin", _builtin))

#: prunekit's version
__version__ = "0.1.0"


def create_pruner(name: str, **kwargs: Any) -> TokenPruner:
    """Build the registered pruner ``name`` with keyword arguments, e.g. ``create_pruner("resprune", alpha=2.0)``."""
    return get_registry().create("pruner", name, **kwargs)


def list_pruners(pattern: str = "*") -> list[str]:
    """Registered pruner names matching the wildcard ``pattern`` (e.g. ``"*prune*"``)."""
    return get_registry().names("pruner", pattern)


def create_relevance(name: str, **kwargs: Any) -> RelevanceStrategy:
    """Build the registered relevance strategy ``name`` (``"none"``, ``"text"``, ...)."""
    return get_registry().create("relevance", name, **kwargs)


def list_relevances(pattern: str = "*") -> list[str]:
    """Registered relevance strategy names matching ``pattern``."""
    return get_registry().names("relevance", pattern)


def create_selection(name: str, **kwargs: Any) -> SelectionStrategy:
    """Build the registered selection strategy ``name`` (``"greedy_residual"``, ``"topk"``, ...)."""
    return get_registry().create("selection", name, **kwargs)


def list_selections(pattern: str = "*") -> list[str]:
    """Registered selection strategy names matching ``pattern``."""
    return get_registry().names("selection", pattern)


def create_noun_extractor(name: str, **kwargs: Any):
    """Build the registered noun extractor ``name`` (``"heuristic"``, ``"spacy"``)."""
    return get_registry().create("noun_extractor", name, **kwargs)


def list_noun_extractors(pattern: str = "*") -> list[str]:
    """Registered noun extractor names matching ``pattern``."""
    return get_registry().names("noun_extractor", pattern)


def list_adapters(pattern: str = "*") -> list[str]:
    """Registered model adapters matching ``pattern``."""
    return get_registry().names("adapter", pattern)


__all__ = [
    "PAD_INDEX",
    "AttachHandle",
    "attach",
    "list_adapters",
    "Budget",
    "ComposedPruner",
    "KeptTokens",
    "Picks",
    "PruneInputs",
    "PruneResult",
    "Registry",
    "RelevanceStrategy",
    "ResPrune",
    "Savings",
    "ScoreMass",
    "SelectionStrategy",
    "TokenPruner",
    "__version__",
    "accounting",
    "create_noun_extractor",
    "create_pruner",
    "create_relevance",
    "create_selection",
    "get_registry",
    "hookimpl",
    "list_noun_extractors",
    "list_pruners",
    "list_relevances",
    "list_selections",
    "num_kept",
]
