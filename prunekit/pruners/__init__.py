"""Pruners: compositions of strategies, and ResPrune."""

from prunekit.pruners.composed import ComposedPruner, build_strategy
from prunekit.pruners.resprune import ResPrune

__all__ = ["ComposedPruner", "ResPrune", "build_strategy"]
