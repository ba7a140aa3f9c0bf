"""Paired statistics for comparing two configurations on the same questions.

Every configuration of a sweep answers the same questions, so two of them are compared
per question: the mean of the per-question differences with a paired percentile
bootstrap interval (:func:`paired_bootstrap`), McNemar's exact test for right/wrong
scores (:func:`mcnemar`), and the wording "A > B" only where the interval excludes zero
(:func:`significant`). :func:`kl_divergence` gives the per-question KL divergence of two
answer distributions over a closed answer set. Pure numpy and the standard library.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "McNemar",
    "PairedDifference",
    "kl_divergence",
    "mcnemar",
    "paired_bootstrap",
    "significant",
]


@dataclass(frozen=True)
class PairedDifference:
    """The mean per-question difference ``a - b`` with its bootstrap interval ``[low, high]``."""

    mean_a: float
    mean_b: float
    difference: float
    low: float
    high: float
    n: int


@dataclass(frozen=True)
class McNemar:
    """Discordant pairs (``a_only``: A right and B wrong; ``b_only``: the reverse) and the exact p-value."""

    a_only: int
    b_only: int
    p_value: float


def _scores(values: Any, name: str) -> np.ndarray:
    """``values`` as a 1-D float64 array, refusing empty, non-1-D and non-finite input."""
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise TypeError(
            f"{name} must be a sequence of numbers, got {type(values).__name__}"
        ) from error
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return array


def _paired(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray]:
    first, second = _scores(a, "a"), _scores(b, "b")
    if first.shape != second.shape:
        raise ValueError(
            f"a and b must score the same questions: {first.size} vs {second.size} values"
        )
    return first, second


#: resampled indices drawn at once by :func:`paired_bootstrap` (rows x questions)
_BOOTSTRAP_BLOCK = 1 << 21


def paired_bootstrap(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    *,
    n_resamples: int = 10_000,
    seed: int = 0,
    confidence: float = 0.95,
) -> PairedDifference:
    """The mean of ``a - b`` per question with a percentile bootstrap interval.

    Resamples question indices with replacement (the same indices for ``a`` and ``b``,
    so the pairing is kept) ``n_resamples`` times from ``np.random.default_rng(seed)``;
    the interval is the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles
    of the resampled mean differences (numpy's default linear interpolation).
    """
    first, second = _paired(a, b)
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, int) or n_resamples < 1:
        raise ValueError(f"n_resamples must be a positive integer, got {n_resamples!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an integer, got {type(seed).__name__}")
    if (
        isinstance(confidence, bool)
        or not isinstance(confidence, (int, float))
        or not 0 < confidence < 1
    ):
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence!r}")
    differences = first - second
    n = differences.size
    rng = np.random.default_rng(seed)
    # resamples in blocks of rows, so memory stays flat for thousands of questions
    block = max(1, _BOOTSTRAP_BLOCK // n)
    means = np.concatenate(
        [
            differences[rng.integers(0, n, size=(min(block, n_resamples - start), n))].mean(axis=1)
            for start in range(0, n_resamples, block)
        ]
    )
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return PairedDifference(
        mean_a=float(first.mean()),
        mean_b=float(second.mean()),
        difference=float(differences.mean()),
        low=float(low),
        high=float(high),
        n=int(n),
    )


def _binary(values: Any, name: str) -> np.ndarray:
    array = _scores(values, name)
    if not np.isin(array, (0.0, 1.0)).all():
        raise ValueError(f"{name} must hold right/wrong scores (0/1 or booleans)")
    return array.astype(bool)


def mcnemar(
    correct_a: Sequence[bool | float] | np.ndarray, correct_b: Sequence[bool | float] | np.ndarray
) -> McNemar:
    """McNemar's exact two-sided test of two right/wrong score lists on the same questions.

    Under the null hypothesis each discordant question is A-only or B-only with probability
    1/2, so ``p = min(1, 2 * P[Binomial(a_only + b_only, 1/2) <= min(a_only, b_only)])``;
    ``p = 1`` without discordant pairs.
    """
    first, second = _binary(correct_a, "correct_a"), _binary(correct_b, "correct_b")
    if first.shape != second.shape:
        raise ValueError(
            f"correct_a and correct_b must score the same questions: {first.size} vs {second.size} values"
        )
    a_only = int(np.count_nonzero(first & ~second))
    b_only = int(np.count_nonzero(~first & second))
    discordant = a_only + b_only
    if discordant == 0:
        return McNemar(a_only=0, b_only=0, p_value=1.0)
    smaller = min(a_only, b_only)
    tail = sum(math.comb(discordant, k) for k in range(smaller + 1)) / 2**discordant
    return McNemar(a_only=a_only, b_only=b_only, p_value=min(1.0, 2.0 * tail))


def _log_probabilities(values: Any, name: str) -> np.ndarray:
    if hasattr(values, "detach"):  # a torch tensor: no torch import needed here
        values = values.detach().to("cpu").double().numpy()
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise TypeError(
            f"{name} must be an array of log-probabilities, got {type(values).__name__}"
        ) from error
    if array.ndim == 0 or array.shape[-1] == 0:
        raise ValueError(f"{name} needs a last axis over the answers, got shape {array.shape}")
    if np.isnan(array).any() or np.isposinf(array).any():
        raise ValueError(f"{name} contains NaN or +inf")
    return array


def kl_divergence(p_log: Any, q_log: Any) -> np.ndarray:
    """Per-row ``KL(P || Q)`` in nats, from log-probabilities over the same closed answer set.

    ``p_log`` and ``q_log`` (numpy arrays or torch tensors of the same shape, the last axis
    over the answers) are log-probabilities, each row summing to one; computed in float64.
    Answers with ``P = 0`` contribute nothing; an answer with ``P > 0`` and ``Q = 0``
    gives ``inf``. Returns an array of the leading shape (a 0-d array for one row).
    """
    p, q = _log_probabilities(p_log, "p_log"), _log_probabilities(q_log, "q_log")
    if p.shape != q.shape:
        raise ValueError(f"p_log and q_log must have the same shape, got {p.shape} and {q.shape}")
    for array, name in ((p, "p_log"), (q, "q_log")):
        totals = np.exp(array).sum(axis=-1)
        if not np.allclose(totals, 1.0, rtol=0.0, atol=1e-6):
            raise ValueError(f"{name} rows must be normalised log-probabilities (exp sums to 1)")
    probabilities = np.exp(p)
    with np.errstate(invalid="ignore"):
        terms = np.where(probabilities > 0, probabilities * (p - q), 0.0)
    return terms.sum(axis=-1)


def significant(diff: PairedDifference) -> str:
    """``"A > B"`` or ``"A < B"`` where the interval of ``a - b`` excludes zero, else ``"level"``."""
    if not isinstance(diff, PairedDifference):
        raise TypeError(f"diff must be a PairedDifference, got {type(diff).__name__}")
    if diff.low > 0:
        return "A > B"
    if diff.high < 0:
        return "A < B"
    return "level"
