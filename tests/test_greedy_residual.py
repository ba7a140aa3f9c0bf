"""Greedy residual selection against hand-worked cases and a float64 reference.

Every test runs twice: on the native CPU kernel (``auto``'s choice on CPU) and on the
PyTorch reference loop (``auto`` with the native kernel unavailable)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from reference import resprune_reference

import prunekit
import prunekit.strategies.selection.greedy_residual as greedy_module
from prunekit.kernels.native import native_library
from prunekit.strategies.selection.greedy_residual import (
    gram_method,
    greedy_residual_order,
    selection_backend,
)


@pytest.fixture(autouse=True, params=["native", "torch"])
def backend(request, monkeypatch):
    """The backend ``auto`` resolves to on CPU in this test."""
    if request.param == "torch":
        monkeypatch.setattr(greedy_module, "native_library", lambda: None)
    elif native_library() is None:
        pytest.skip("no C compiler: the native kernel cannot be built here")
    assert selection_backend(torch.zeros(1, 2, 2)) == request.param
    return request.param


def order_of(tokens, k, weights=None, **kwargs):
    tokens = torch.as_tensor(tokens, dtype=torch.float64)
    if tokens.dim() == 2:
        tokens = tokens.unsqueeze(0)
    if weights is None:
        weights = torch.ones(tokens.shape[:2], dtype=tokens.dtype)
    return greedy_residual_order(
        tokens, torch.as_tensor(weights).reshape(tokens.shape[:2]), k, **kwargs
    )[0].tolist()


def test_hand_worked_example():
    # x0 = (3, 0), x1 = (2, 2), x2 = (0, 1). Energies 9, 8, 1 -> pick x0.
    # Residuals after projecting out e1: x1 -> (0, 2): 4, x2 -> (0, 1): 1 -> pick x1.
    assert order_of([[3, 0], [2, 2], [0, 1]], 2) == [0, 1]
    # With weights (0.1, 1, 1): scores 0.9, 8, 1 -> x1 first; then x0's residual
    # w.r.t. (1,1)/sqrt2 is 4.5 -> 0.45, x2's is 0.5 -> 0.5: x2 wins.
    assert order_of([[3, 0], [2, 2], [0, 1]], 2, weights=[0.1, 1, 1]) == [1, 2]


def test_recovers_orthogonal_basis():
    """Scaled copies of 6 orthogonal directions: the first 6 picks are one per direction."""
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(16, 6)))
    basis = q.T  # (6, 16) orthonormal rows
    copies = np.concatenate([basis * s for s in (1.0, 0.9, 0.8, 0.7)])  # 24 tokens
    perm = rng.permutation(len(copies))
    tokens = torch.tensor(copies[perm], dtype=torch.float32)
    picks = order_of(tokens, 6)
    directions = {int(perm[p]) % 6 for p in picks}
    assert directions == set(range(6))
    # and it takes the largest copy of each direction (largest energy)
    assert all(perm[p] < 6 for p in picks)


def test_no_duplicate_before_every_direction_is_taken():
    rng = np.random.default_rng(1)
    base = rng.normal(size=(5, 32))
    tokens = np.concatenate([base, base, base[:2] * 3.0])  # exact duplicates and rescaled copies
    picks = order_of(torch.tensor(tokens, dtype=torch.float32), 5)
    directions = [p % 5 if p < 10 else p - 10 for p in picks]
    assert sorted(directions) == [0, 1, 2, 3, 4]


def test_fill_by_weight_when_budget_exceeds_rank():
    """Rank 2, K = 4: after two directions the rest are filled by weight, ties to the lowest index."""
    tokens = [[1, 0, 0], [0, 1, 0], [2, 0, 0], [0, 3, 0], [1, 1, 0]]
    weights = [1.0, 1.0, 0.5, 1.0, 0.9]
    # first: scores 1, 1, 2, 9, 1.8 -> 3; then (x1 explained) x0: 1, x2: 4 * 0.5 = 2, x4: 0.9 -> 2
    # then all explained -> fill by weight: 0 (1.0), 1 (1.0) in index order
    assert order_of(tokens, 4, weights=weights) == [3, 2, 0, 1]


def test_zero_tokens_are_never_preferred():
    tokens = [[0, 0], [1, 0], [0, 0], [0, 2]]
    assert order_of(tokens, 2) == [3, 1]
    assert order_of(tokens, 4) == [3, 1, 0, 2]


def replay_check(tokens, weights, picks, rtol=1e-3):
    """Every pick of ``picks`` is (up to float ties) the reference's argmax given the same prefix."""
    x = tokens.double().numpy()
    w = weights.double().numpy()
    _, steps = resprune_reference_steps(x, w, picks)
    for t, (pick, score) in enumerate(zip(picks, steps)):
        best = score.max()
        if best > 1e-9 * (x**2).sum(axis=1).max():
            assert score[pick] >= best * (1 - rtol), (
                f"step {t}: picked {pick} score {score[pick]} < best {best}"
            )
        else:
            remaining = [i for i in range(len(w)) if i not in picks[:t]]
            assert w[pick] >= max(w[i] for i in remaining) - 1e-6


def resprune_reference_steps(x, w, picks):
    """Reference scores at each step given a forced prefix of picks."""
    from reference import residual_energies

    norms = (x**2).sum(axis=1)
    steps = []
    for t in range(len(picks)):
        kept = list(picks[:t])
        energy = residual_energies(x, kept)
        score = np.where(energy > 1e-10 * norms, w * energy, 0.0)
        score[kept] = -np.inf
        steps.append(score)
    return picks, steps


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("shape", [(60, 16, 10), (40, 64, 25), (30, 8, 20)])
def test_agrees_with_float64_reference(seed, shape):
    n, d, k = shape
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(n, d, generator=g) * torch.rand(n, 1, generator=g)
    weights = torch.rand(n, generator=g)
    ours = order_of(tokens.float(), k, weights=weights.float())
    ref, _ = resprune_reference(tokens.double().numpy(), k, weights.double().numpy())
    replay_check(tokens, weights, ours)
    # Random inputs have no near-ties in practice: the sequences agree exactly.
    assert ours == ref


@pytest.mark.parametrize("seed", range(4))
def test_gram_and_row_paths_agree(seed):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(3, 200, 48, generator=g)
    weights = torch.rand(3, 200, generator=g)
    gram = greedy_residual_order(tokens, weights, 60, method="gram")
    rows = greedy_residual_order(tokens, weights, 60, method="rows")
    assert torch.equal(gram, rows)
    auto_small = greedy_residual_order(tokens, weights, 60, method="auto", max_gram_bytes=0)
    assert torch.equal(auto_small, rows)


def test_bad_method_names_the_argument():
    with pytest.raises(ValueError, match="method.*Did you mean 'gram'"):
        prunekit.create_selection("greedy_residual", method="gramm")


def test_gram_method_follows_the_memory_bound():
    tokens = torch.zeros(2, 100, 8)  # Gram matrices: 2 x 100 x 100 float32 = 80,000 bytes
    assert gram_method(tokens) == "gram"
    assert gram_method(tokens, max_gram_bytes=80_000) == "gram"
    assert gram_method(tokens, max_gram_bytes=79_999) == "rows"
    assert gram_method(tokens.double(), max_gram_bytes=80_000) == "rows"
    assert gram_method(tokens, "rows") == "rows"
    assert gram_method(tokens, "gram", max_gram_bytes=0) == "gram"
    with pytest.raises(ValueError, match="method"):
        gram_method(tokens, "dense")


@pytest.mark.parametrize("seed", range(3))
def test_rows_path_equals_gram_path_at_mid_size(seed):
    """N = 1500 forced through the rows path by the memory bound (auto), ragged samples and
    text-like weights with zeros: the same tokens as the Gram path, step for step."""
    g = torch.Generator().manual_seed(seed)
    n = 1500
    tokens = torch.randn(2, n, 96, generator=g) * torch.rand(2, n, 1, generator=g)
    weights = torch.rand(2, n, generator=g).pow(2)
    weights[:, :50] = 0.0
    valid = torch.arange(n).unsqueeze(0) < torch.tensor([[n], [1203]])
    bound = 2 * n * n * 4 - 1  # one byte short of the float32 Gram matrices
    assert gram_method(tokens, max_gram_bytes=bound) == "rows"
    rows = greedy_residual_order(tokens, weights, 320, valid, max_gram_bytes=bound)
    gram = greedy_residual_order(tokens, weights, 320, valid, method="gram")
    assert torch.equal(rows[0], gram[0])
    assert torch.equal(rows[1], gram[1])  # sample 1 keeps 320 of its 1203 valid tokens


def test_resprune_switches_to_rows_and_selects_the_same():
    g = torch.Generator().manual_seed(7)
    tokens = torch.randn(3, 700, 64, generator=g)
    text = torch.randn(3, 4, 64, generator=g)
    mask = torch.arange(700).unsqueeze(0) < torch.tensor([[700], [650], [333]])
    default = prunekit.create_pruner("resprune")
    small = prunekit.create_pruner("resprune", max_gram_bytes=2**20)  # < 3 x 700^2 x 4 bytes
    assert gram_method(tokens, max_gram_bytes=2**20) == "rows"
    a = default.prune(tokens, budget=0.2, text_embeds=text, token_mask=mask)
    b = small.prune(tokens, budget=0.2, text_embeds=text, token_mask=mask)
    assert torch.equal(a.indices, b.indices)
    assert torch.equal(a.counts, b.counts)
