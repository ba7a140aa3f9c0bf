"""Paired statistics (prunekit.stats) against hand-worked examples and slow reference loops."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from prunekit.stats import (
    McNemar,
    PairedDifference,
    kl_divergence,
    mcnemar,
    paired_bootstrap,
    significant,
)


def _slow_bootstrap(a, b, n_resamples, seed, confidence):
    """Question by question, with the same random stream, and the percentile interpolated by hand."""
    rng = np.random.default_rng(seed)
    n = len(a)
    means = []
    for _ in range(n_resamples):
        total = 0.0
        for _ in range(n):
            index = int(rng.integers(0, n))
            total += a[index] - b[index]
        means.append(total / n)
    means.sort()

    def percentile(q):
        position = q * (n_resamples - 1)
        below = math.floor(position)
        above = min(below + 1, n_resamples - 1)
        return means[below] + (position - below) * (means[above] - means[below])

    tail = (1 - confidence) / 2
    return percentile(tail), percentile(1 - tail)


def test_kl_of_two_answer_distributions_worked_by_hand():
    # P = (1/2, 1/2), Q = (1/4, 3/4):
    # KL = 1/2 ln(1/2 / 1/4) + 1/2 ln(1/2 / 3/4) = 1/2 ln 2 + 1/2 ln(2/3) = 1/2 ln(4/3).
    p = np.log([0.5, 0.5])
    q = np.log([0.25, 0.75])
    assert kl_divergence(p, q) == pytest.approx(0.5 * math.log(4 / 3), abs=1e-12)
    # KL(Q || P) = 1/4 ln(1/2) + 3/4 ln(3/2): not symmetric.
    assert kl_divergence(q, p) == pytest.approx(
        0.25 * math.log(0.5) + 0.75 * math.log(1.5), abs=1e-12
    )


def test_kl_per_row_torch_float32_zero_mass_and_identity():
    p = torch.log(torch.tensor([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]], dtype=torch.float32))
    q = torch.log(torch.tensor([[0.25, 0.25, 0.5], [0.2, 0.3, 0.5]], dtype=torch.float32))
    kl = kl_divergence(p, q)
    assert isinstance(kl, np.ndarray) and kl.dtype == np.float64 and kl.shape == (2,)
    # Row 0: the zero-probability answer contributes nothing; 2 * 1/2 ln(1/2 / 1/4) = ln 2.
    assert kl[0] == pytest.approx(math.log(2), abs=1e-6)
    assert kl[1] == 0.0
    # Mass where Q has none: infinite.
    assert kl_divergence(np.log([0.5, 0.5]), np.array([0.0, -np.inf])) == np.inf


def test_kl_refuses_bad_input():
    with pytest.raises(ValueError, match="same shape"):
        kl_divergence(np.log([0.5, 0.5]), np.log([0.2, 0.3, 0.5]))
    with pytest.raises(ValueError, match="normalised"):
        kl_divergence(np.log([0.5, 0.6]), np.log([0.5, 0.5]))
    with pytest.raises(ValueError, match="NaN"):
        kl_divergence(np.array([np.nan, 0.0]), np.log([0.5, 0.5]))
    with pytest.raises(ValueError, match="last axis"):
        kl_divergence(np.float64(0.0), np.float64(0.0))


def test_paired_bootstrap_matches_a_slow_loop_on_a_fixed_seed():
    rng = np.random.default_rng(123)
    a = rng.random(17).tolist()
    b = (np.asarray(a) - 0.1 + 0.2 * rng.random(17)).tolist()
    result = paired_bootstrap(a, b, n_resamples=400, seed=7, confidence=0.9)
    low, high = _slow_bootstrap(a, b, 400, 7, 0.9)
    assert result.low == pytest.approx(low, abs=1e-12)
    assert result.high == pytest.approx(high, abs=1e-12)
    assert result.n == 17
    assert result.mean_a == pytest.approx(sum(a) / 17, abs=1e-12)
    assert result.mean_b == pytest.approx(sum(b) / 17, abs=1e-12)
    assert result.difference == pytest.approx(sum(x - y for x, y in zip(a, b)) / 17, abs=1e-12)
    assert result.low < result.difference < result.high


def test_paired_bootstrap_keeps_the_pairing():
    # b = a + 0.01 question by question, with a spread far wider than 0.01: the paired
    # interval is the single point -0.01, which an unpaired resampling would blur.
    a = np.linspace(0.0, 1.0, 30)
    result = paired_bootstrap(a, a + 0.01, n_resamples=2000, seed=0)
    assert result.low == pytest.approx(-0.01, abs=1e-12)
    assert result.high == pytest.approx(-0.01, abs=1e-12)
    assert significant(result) == "A < B"


def test_paired_bootstrap_of_identical_scores_is_zero_and_level():
    a = [0.3, 0.9, 0.1, 0.5]
    result = paired_bootstrap(a, list(a))
    assert (result.difference, result.low, result.high) == (0.0, 0.0, 0.0)
    assert significant(result) == "level"


def test_paired_bootstrap_refuses_bad_arguments():
    with pytest.raises(ValueError, match="same questions"):
        paired_bootstrap([1.0, 0.0], [1.0])
    with pytest.raises(ValueError, match="empty"):
        paired_bootstrap([], [])
    with pytest.raises(ValueError, match="NaN"):
        paired_bootstrap([1.0, float("nan")], [1.0, 0.0])
    with pytest.raises(ValueError, match="one-dimensional"):
        paired_bootstrap([[1.0]], [[1.0]])
    with pytest.raises(ValueError, match="n_resamples"):
        paired_bootstrap([1.0], [0.0], n_resamples=0)
    with pytest.raises(ValueError, match="confidence"):
        paired_bootstrap([1.0], [0.0], confidence=1.0)
    with pytest.raises(TypeError, match="seed"):
        paired_bootstrap([1.0], [0.0], seed=0.5)


def test_significant_reads_the_interval():
    assert significant(PairedDifference(0.6, 0.5, 0.1, 0.02, 0.18, 50)) == "A > B"
    assert significant(PairedDifference(0.5, 0.6, -0.1, -0.18, -0.02, 50)) == "A < B"
    assert significant(PairedDifference(0.55, 0.5, 0.05, 0.0, 0.1, 50)) == "level"
    with pytest.raises(TypeError, match="PairedDifference"):
        significant((0.1, 0.2))


def test_mcnemar_on_a_two_by_two_table_worked_by_hand():
    # Table: both right 3, A only 1, B only 6, both wrong 2.
    # Discordant n = 7: P[Bin(7, 1/2) <= 1] = (1 + 7) / 128, p = 2 * 8/128 = 0.125.
    a = [1] * 3 + [1] * 1 + [0] * 6 + [0] * 2
    b = [1] * 3 + [0] * 1 + [1] * 6 + [0] * 2
    assert mcnemar(a, b) == McNemar(a_only=1, b_only=6, p_value=0.125)
    assert mcnemar(b, a) == McNemar(a_only=6, b_only=1, p_value=0.125)
    # Balanced discordance: p = min(1, 2 * P[Bin(4, 1/2) <= 2]) = min(1, 2 * 11/16) = 1.
    assert mcnemar([True, True, False, False], [False, False, True, True]).p_value == 1.0
    # 0 vs 5 discordant: p = 2 / 32.
    assert mcnemar([True] * 5, [False] * 5).p_value == pytest.approx(2 / 32)
    # No discordant pairs.
    assert mcnemar([1, 0, 1], [1, 0, 1]) == McNemar(0, 0, 1.0)


def test_mcnemar_refuses_bad_arguments():
    with pytest.raises(ValueError, match="same questions"):
        mcnemar([1, 0], [1])
    with pytest.raises(ValueError, match="0/1"):
        mcnemar([0.5, 1.0], [1.0, 1.0])
    with pytest.raises(ValueError, match="empty"):
        mcnemar([], [])
