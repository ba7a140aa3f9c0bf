"""Core contracts: budgets, validated inputs, results and the ``TokenPruner`` base class.

Nothing in this sub-package imports from strategies, pruners, adapters or the CLI.
"""

from prunekit.core.budget import Budget, num_kept
from prunekit.core.inputs import PruneInputs, validate_inputs
from prunekit.core.pruner import TokenPruner
from prunekit.core.result import PAD_INDEX, PruneResult

__all__ = [
    "PAD_INDEX",
    "Budget",
    "PruneInputs",
    "PruneResult",
    "TokenPruner",
    "num_kept",
    "validate_inputs",
]
