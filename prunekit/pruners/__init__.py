"""Pruners: compositions of strategies, ResPrune, and score-mass adaptive budgets."""

from prunekit.pruners.composed import ComposedPruner, build_strategy
from prunekit.pruners.resprune import ResPrune
from prunekit.pruners.score_mass import ScoreMass

__all__ = ["ComposedPruner", "ResPrune", "ScoreMass", "build_strategy"]
