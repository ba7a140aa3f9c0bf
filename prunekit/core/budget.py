"""Token budgets: how many tokens a sample keeps.

A budget is either an ``int`` (tokens kept per sample) or a ``float`` in (0, 1]
(the fraction of the sample's tokens kept). :func:`num_kept` resolves it for a
token count without any tensor, so callers can plan (e.g. allocate caches or
report accounting) before pruning runs.
"""

from __future__ import annotations

import math
import numbers

#: a budget: ``int`` tokens kept per sample, or ``float`` fraction kept in (0, 1]
Budget = int | float
#: the largest int budget: token counts are int64 tensors
MAX_INT_BUDGET = 2**63 - 1


def check_budget(budget: object) -> Budget:
    """Return ``budget`` if it is a valid budget, else raise naming the argument.

    Raises:
        TypeError: ``budget`` is not a real number (``bool`` is rejected too).
        ValueError: an int below 1 or above :data:`MAX_INT_BUDGET`, or a float outside
            (0, 1] (NaN included).
    """
    if isinstance(budget, bool) or not isinstance(budget, numbers.Real):
        raise TypeError(
            f"budget must be an int (tokens kept) or a float in (0, 1] (fraction kept), "
            f"got {type(budget).__name__}: {budget!r}"
        )
    if isinstance(budget, numbers.Integral):
        if budget < 1:
            raise ValueError(f"budget must keep at least 1 token, got int budget {budget}")
        if budget > MAX_INT_BUDGET:
            raise ValueError(
                f"an int budget must be at most 2**63 - 1 tokens (token counts are int64), "
                f"got {budget}; budget=1.0 keeps every token"
            )
        return int(budget)
    value = float(budget)
    if not (0.0 < value <= 1.0):  # also rejects NaN
        raise ValueError(f"a float budget is a fraction in (0, 1], got {budget!r}")
    return value


def num_kept(n_tokens: int, budget: Budget) -> int:
    """Number of tokens kept out of ``n_tokens`` under ``budget``.

    * int budget ``k``: ``min(k, n_tokens)``;
    * float budget ``f``: ``round(f * n_tokens)`` with halves rounded up, at
      least 1 and at most ``n_tokens``. ``f = 1.0`` keeps everything.

    >>> num_kept(576, 128), num_kept(576, 0.2222), num_kept(576, 1 / 9), num_kept(10, 0.05)
    (128, 128, 64, 1)

    Raises:
        TypeError / ValueError: ``n_tokens`` is not a positive int, or ``budget`` is invalid.
    """
    if isinstance(n_tokens, bool) or not isinstance(n_tokens, numbers.Integral):
        raise TypeError(f"n_tokens must be an int, got {type(n_tokens).__name__}")
    if n_tokens < 1:
        raise ValueError(
            f"n_tokens must be >= 1 (an empty token set cannot be pruned), got {n_tokens}"
        )
    budget = check_budget(budget)
    n_tokens = int(n_tokens)
    if isinstance(budget, int):
        return min(budget, n_tokens)
    # A small tolerance so that e.g. 0.2222 * 576 = 127.99 and 1/9 * 576 land where users expect.
    kept = math.floor(budget * n_tokens + 0.5 + 1e-9)
    return max(1, min(n_tokens, kept))
