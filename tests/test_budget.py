"""num_kept and budget validation."""

from __future__ import annotations

import numpy as np
import pytest

from prunekit import num_kept


@pytest.mark.parametrize(
    ("n", "budget", "expected"),
    [
        (576, 128, 128),
        (576, 576, 576),
        (576, 1000, 576),
        (576, 1, 1),
        (576, 1.0, 576),
        (576, 0.5, 288),
        (576, 0.2222, 128),  # 127.99 rounds to 128
        (576, 1 / 9, 64),
        (576, 1 / 3, 192),
        (256, 0.0625, 16),
        (256, 0.111, 28),  # 28.4
        (10, 0.05, 1),  # 0.5 rounds up
        (10, 0.04, 1),  # never below one token
        (3, 0.5, 2),  # 1.5 rounds half up
        (7, np.int64(3), 3),
        (7, np.float32(0.5), 4),
    ],
)
def test_num_kept(n, budget, expected):
    assert num_kept(n, budget) == expected


@pytest.mark.parametrize(
    ("budget", "error", "match"),
    [
        (0, ValueError, "at least 1"),
        (-3, ValueError, "at least 1"),
        (0.0, ValueError, r"\(0, 1\]"),
        (1.5, ValueError, r"\(0, 1\]"),
        (-0.1, ValueError, r"\(0, 1\]"),
        (float("nan"), ValueError, r"\(0, 1\]"),
        (True, TypeError, "budget"),
        ("0.5", TypeError, "budget"),
        (None, TypeError, "budget"),
    ],
)
def test_bad_budget(budget, error, match):
    with pytest.raises(error, match=match):
        num_kept(10, budget)


@pytest.mark.parametrize(
    ("n", "error"), [(0, ValueError), (-1, ValueError), (2.0, TypeError), (True, TypeError)]
)
def test_bad_token_count(n, error):
    with pytest.raises(error, match="n_tokens"):
        num_kept(n, 0.5)


@pytest.mark.parametrize("budget", [2**63, 10**30])
def test_budget_beyond_int64_is_refused_by_name(budget):
    """Token counts are int64 tensors: a larger budget was an OverflowError (10**30) or a
    torch RuntimeError (2**63) from deep inside prune; now a ValueError naming the budget."""
    import torch

    import prunekit

    pruner = prunekit.create_pruner("resprune")
    with pytest.raises(ValueError, match=r"budget must be at most 2\*\*63 - 1.*budget=1\.0"):
        pruner.prune(torch.randn(1, 5, 3), budget=budget)
    with pytest.raises(ValueError, match="budget"):
        num_kept(10, budget)
    # the largest int64 is still a budget: it keeps every token, as any budget >= N does
    assert pruner.prune(torch.randn(1, 5, 3), budget=2**63 - 1).indices.tolist() == [
        [0, 1, 2, 3, 4]
    ]
