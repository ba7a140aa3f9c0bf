"""Reusable contract suites for plugin authors: pruners and model-family adapters.

* :mod:`prunekit.testing.pruners`: the contract every pruner honours
  (:class:`PrunerContract`, :func:`check_pruner`), run by prunekit over every
  registered pruner;
* :mod:`prunekit.testing.adapters`: the contract every adapter honours
  (:class:`AdapterCase`, :class:`AdapterContract`, :func:`check_adapter`), run by
  prunekit over every registered adapter family with a tiny model per family.

Everything is importable from ``prunekit.testing``::

    from prunekit.testing import AdapterContract, PrunerContract
"""

from __future__ import annotations

from prunekit.testing.adapters import (
    CHECKS,
    GENERATE_KWARGS,
    UNKNOWN_OPTION,
    AdapterCase,
    AdapterContract,
    ReferencePrompt,
    Refusal,
    check_adapter,
    generate_from,
    greedy_without_cache,
    hand_built_prompt,
    kept_indices,
    model_state,
    state_differences,
)
from prunekit.testing.pruners import (
    DTYPES,
    FULL_BUDGETS,
    KEPT_BUDGETS,
    RAGGED_BUDGETS,
    PrunerCase,
    PrunerContract,
    PrunerContractTests,
    PrunerPropertyTests,
    as_case,
    case_id,
    check_pruner,
    check_well_formed,
    problems,
    registered_cases,
    run_properties,
    synthesize_signals,
)

__all__ = [
    "CHECKS",
    "DTYPES",
    "FULL_BUDGETS",
    "GENERATE_KWARGS",
    "KEPT_BUDGETS",
    "RAGGED_BUDGETS",
    "UNKNOWN_OPTION",
    "AdapterCase",
    "AdapterContract",
    "PrunerCase",
    "PrunerContract",
    "PrunerContractTests",
    "PrunerPropertyTests",
    "ReferencePrompt",
    "Refusal",
    "as_case",
    "case_id",
    "check_adapter",
    "check_pruner",
    "check_well_formed",
    "generate_from",
    "greedy_without_cache",
    "hand_built_prompt",
    "kept_indices",
    "model_state",
    "problems",
    "registered_cases",
    "run_properties",
    "state_differences",
    "synthesize_signals",
]
