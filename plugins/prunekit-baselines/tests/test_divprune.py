"""DivPrune and the max-min selection: hand-worked cases, the official algorithm, the fixes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import prunekit
from prunekit.core.inputs import validate_inputs
from prunekit.strategies.relevance.text import TextRelevance
from prunekit.testing import PrunerContract
from prunekit_baselines.divprune import DivPrune, MaxMinSelection, maxmin_order


def official_divprune(x: np.ndarray, k: int, weights: np.ndarray | None = None) -> list[int]:
    """DivPrune as the official code runs it, in float64 loops (no fixes).

    ``D = 1 - cos``; step 0 scores are the second-smallest entry of each column of
    ``D`` (diagonal included); later steps the column minimum over the picked rows;
    ``argmax`` (first index) over *all* columns, picked ones included. ``weights``
    (not in the official code) multiply the scores, for the weighted variant.
    """
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    dist = 1.0 - unit @ unit.T
    w = np.ones(len(x)) if weights is None else weights
    picks: list[int] = []
    for i in range(k):
        scores = np.sort(dist, axis=0)[1, :] if i == 0 else dist[picks].min(axis=0)
        picks.append(int(np.argmax(w * scores)))
    return picks


def order(tokens, k, weights=None, valid=None, **kwargs) -> list[list[int]]:
    tokens = torch.as_tensor(tokens)
    if tokens.dim() == 2:
        tokens = tokens.unsqueeze(0)
    if weights is None:
        weights = torch.ones(tokens.shape[:2], dtype=tokens.dtype)
    return maxmin_order(
        tokens, torch.as_tensor(weights).reshape(tokens.shape[:2]), k, valid, **kwargs
    ).tolist()


def test_registered():
    assert isinstance(prunekit.create_pruner("divprune"), DivPrune)
    assert isinstance(prunekit.create_selection("maxmin"), MaxMinSelection)


def test_hand_worked_example():
    # unit vectors at 0, 45, 90 and 180 degrees; D(45 deg) = 1 - 1/sqrt2 = 0.293, D(90) = 1, D(180) = 2.
    # nearest-other distances: 0.293, 0.293, 0.293, 1 -> pick x3 (180 deg) first;
    # distances to {x3}: 2, 1.707, 1 -> x0; min distances to {x3, x0}: x1 0.293, x2 1 -> x2; then x1.
    s = 1 / math.sqrt(2)
    tokens = torch.tensor([[1.0, 0], [s, s], [0, 1], [-1, 0]], dtype=torch.float64)
    assert order(tokens, 4) == [[3, 0, 2, 1]]
    assert official_divprune(tokens.numpy(), 4) == [3, 0, 2, 1]
    result = DivPrune().prune(tokens.unsqueeze(0), budget=2)
    assert result.indices.tolist() == [[0, 3]]
    expected_nn = [1 - s, 1 - s, 1 - s, 1.0]
    assert torch.allclose(
        result.scores[0].double(), torch.tensor(expected_nn, dtype=torch.float64), atol=1e-6
    )
    # scaling a token does not change cosine distances
    assert order(tokens * torch.tensor([[3.0], [0.5], [2.0], [7.0]], dtype=torch.float64), 4) == [
        [3, 0, 2, 1]
    ]


def test_first_pick_uses_second_smallest_with_the_diagonal():
    # a tight pair (x0, x1) and a loner x2: the loner's nearest other token is farthest.
    tokens = [[1.0, 0.0, 0.0], [1.0, 0.05, 0.0], [0.2, 0.0, 1.0]]
    assert order(tokens, 1) == [[2]]
    assert official_divprune(np.array(tokens), 1) == [2]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_official_algorithm_on_random_tokens(seed, dtype):
    rng = np.random.default_rng(seed)
    n, d, k = int(rng.integers(8, 60)), int(rng.integers(2, 40)), None
    k = int(rng.integers(1, n))
    x = rng.normal(size=(n, d))
    expected = official_divprune(x, k)
    assert order(torch.tensor(x, dtype=dtype), k) == [expected]
    kept = DivPrune().prune(torch.tensor(x, dtype=dtype).unsqueeze(0), budget=k)
    assert kept.indices[0].tolist() == sorted(expected)


def test_budget_0_098_of_576_keeps_56():
    x = np.random.default_rng(0).normal(size=(576, 32))
    result = DivPrune().prune(torch.tensor(x, dtype=torch.float32).unsqueeze(0), budget=0.098)
    assert result.counts.tolist() == [int(round(0.098 * 576))] == [56]
    assert result.indices[0].tolist() == sorted(official_divprune(x, 56))


def test_batched_with_padding_matches_each_sample():
    rng = np.random.default_rng(3)
    lengths = [40, 23, 9]
    x = rng.normal(size=(3, 40, 16))
    tokens = torch.tensor(x, dtype=torch.float32)
    mask = torch.arange(40).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)
    picks = order(tokens.masked_fill(~mask.unsqueeze(-1), 5.0), 7, valid=mask)
    for i, n in enumerate(lengths):
        assert picks[i] == official_divprune(x[i, :n], 7)


def test_exact_duplicates_are_never_repicked():
    """The official argmax re-picks a token once only duplicates remain; prunekit keeps K distinct."""
    rng = np.random.default_rng(0)
    base = rng.normal(size=(3, 8))
    x = np.concatenate([base, base, base])  # tokens i, i+3, i+6 are identical
    official = official_divprune(x, 5)
    assert len(set(official)) < 5, "the official code keeps fewer distinct tokens than asked"
    for dtype in (torch.float32, torch.float64):
        picks = order(torch.tensor(x, dtype=dtype), 9)[0]
        assert sorted(picks) == list(range(9))
        assert sorted(p % 3 for p in picks[:3]) == [0, 1, 2], "one per direction first"
        assert picks[:3] == official[:3]
        # then duplicates in index order (all at distance 0: ties to the lowest index)
        assert picks[3:] == sorted(set(range(9)) - set(picks[:3]))
    result = DivPrune().prune(torch.tensor(x, dtype=torch.float32).unsqueeze(0), budget=5)
    assert result.counts.tolist() == [5] and len(set(result.indices[0].tolist())) == 5


def test_duplicate_ties_go_to_the_lowest_index():
    x = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [-1.0, 0.2]])
    # x1 and x2 are identical: whichever is chosen must be x1
    picks = order(torch.tensor(x, dtype=torch.float32), 3)[0]
    assert 1 in picks and 2 not in picks


def test_zero_tokens_do_not_produce_nan():
    x = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])
    result = DivPrune().prune(x, budget=3)
    assert result.counts.tolist() == [3]
    assert torch.isfinite(result.scores).all()


def test_weights_multiply_the_distance():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(30, 6))
    w = rng.uniform(0.1, 1.0, size=30)
    assert order(torch.tensor(x), 10, weights=torch.tensor(w)) == [official_divprune(x, 10, w)]
    # uniform weights of any scale equal DivPrune
    assert order(torch.tensor(x), 10, weights=torch.full((30,), 0.3, dtype=torch.float64)) == [
        official_divprune(x, 10)
    ]


def test_zero_weight_tokens_come_last_then_by_distance():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.7, 0.7]], dtype=torch.float64)
    w = torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    picks = order(x, 4, weights=w)[0]
    assert set(picks[:2]) == {0, 3}
    # remaining zero-weight tokens by distance to the kept set: x2 (180 deg from x0) before x1
    assert picks[2:] == [2, 1]


def test_composes_with_text_relevance():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(2, 25, 10, generator=g)
    text = torch.randn(2, 3, 10, generator=g)
    pruner = prunekit.create_pruner("composed", relevance="text", selection="maxmin")
    result = pruner.prune(tokens, budget=8, text_embeds=text)
    weights = TextRelevance().weights(validate_inputs(tokens, text_embeds=text))
    for b in range(2):
        expected = official_divprune(tokens[b].double().numpy(), 8, weights[b].double().numpy())
        assert result.indices[b].tolist() == sorted(expected)
    uniform = prunekit.create_pruner("composed", relevance="none", selection="maxmin")
    assert torch.equal(
        uniform.prune(tokens, budget=8).indices, DivPrune().prune(tokens, budget=8).indices
    )


def test_rejects_bad_tolerance():
    with pytest.raises(ValueError, match="tie_atol"):
        DivPrune(tie_atol=-1)
    with pytest.raises(ValueError, match="tie_atol"):
        MaxMinSelection(tie_atol=2.0)


class TestMaxMinContract(PrunerContract):
    """The contract for max-min selection under other relevances."""

    cases = [
        ("composed", {"relevance": "text", "selection": "maxmin"}),
        ("composed", {"relevance": {"name": "text", "alpha": 2.0}, "selection": "maxmin"}),
        ("composed", {"relevance": "cdpruner", "selection": "maxmin"}),
    ]


# --------------------------------------------------------------------------- the rows path


def random_batch(seed: int, dtype: torch.dtype = torch.float32):
    """Padded tokens (garbage in the padding), some exact duplicates and a zero token."""
    g = torch.Generator().manual_seed(seed)
    batch, n, d = 3, 90, 12
    tokens = torch.randn(batch, n, d, generator=g, dtype=dtype)
    tokens[0, 40:50] = tokens[0, 10:20]  # exact duplicates
    tokens[1, 5] = 3.0 * tokens[1, 6]  # same direction, other norm
    tokens[2, 7] = 0.0
    lengths = torch.tensor([n, 61, 17])
    valid = torch.arange(n).unsqueeze(0) < lengths.unsqueeze(1)
    return tokens, valid


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rows_path_selects_what_the_matrix_path_selects(seed, dtype):
    tokens, valid = random_batch(seed, dtype)
    g = torch.Generator().manual_seed(100 + seed)
    weights = torch.rand(tokens.shape[:2], generator=g, dtype=dtype)
    for w in (torch.ones_like(weights), weights):
        for k in (1, 17, 60, 90):  # 90: past the shorter samples' valid tokens
            matrix = maxmin_order(tokens, w, k, valid, method="matrix")
            # a 7-row slab bound: many slabs, the last one partial
            slab = 7 * tokens.shape[0] * tokens.shape[1] * tokens.element_size()
            rows = maxmin_order(tokens, w, k, valid, method="rows", max_matrix_bytes=slab)
            assert torch.equal(rows, matrix)
    # and through the pruner, scores (the nearest-token distances) included
    by_matrix = DivPrune(method="matrix").prune(tokens, budget=20, token_mask=valid)
    by_rows = DivPrune(method="rows", max_matrix_bytes=1).prune(tokens, budget=20, token_mask=valid)
    assert torch.equal(by_rows.indices, by_matrix.indices)
    assert torch.allclose(by_rows.scores, by_matrix.scores, atol=1e-6)


def test_rows_path_matches_the_official_algorithm():
    x = np.random.default_rng(11).normal(size=(70, 9))
    assert order(torch.tensor(x), 30, method="rows", max_matrix_bytes=0) == [
        official_divprune(x, 30)
    ]


def test_auto_takes_the_rows_path_past_the_bound(monkeypatch):
    from prunekit_baselines import divprune

    tokens = torch.randn(2, 50, 4)
    assert divprune.maxmin_method(tokens) == "matrix"
    assert divprune.maxmin_method(tokens, max_matrix_bytes=2 * 50 * 50 * 4) == "matrix"
    assert divprune.maxmin_method(tokens, max_matrix_bytes=2 * 50 * 50 * 4 - 1) == "rows"
    assert divprune.maxmin_method(tokens, "rows") == "rows"
    # auto past the bound never builds the matrix
    monkeypatch.setattr(divprune, "cosine_distances", lambda *a: pytest.fail("built D"))
    picks = maxmin_order(tokens, torch.ones(2, 50), 10, max_matrix_bytes=1000)
    assert torch.equal(picks, maxmin_order(tokens, torch.ones(2, 50), 10, method="rows"))


class LargestOutput(TorchDispatchMode):
    """Records the largest tensor any torch op returns (every allocation of a result)."""

    def __init__(self):
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for value in tree_leaves(out):
            if isinstance(value, torch.Tensor):
                self.numel = max(self.numel, value.numel())
        return out


def test_rows_path_never_allocates_an_n_by_n_tensor():
    batch, n = 2, 3000
    tokens = torch.randn(batch, n, 16, generator=torch.Generator().manual_seed(0))
    weights = torch.ones(batch, n)
    with LargestOutput() as seen:
        matrix = maxmin_order(tokens, weights, 40, method="matrix")
    assert seen.numel == batch * n * n  # the probe sees the matrix path's (B, N, N) GEMM
    bound = 2**20
    with LargestOutput() as seen:
        rows = maxmin_order(tokens, weights, 40, method="rows", max_matrix_bytes=bound)
    assert torch.equal(rows, matrix)
    assert seen.numel * 4 <= bound  # one slab of at most 1 MiB: 1/69 of the matrices
    assert seen.numel == batch * (bound // (batch * n * 4)) * n


def test_rejects_bad_method_and_bound():
    with pytest.raises(ValueError, match="method"):
        DivPrune(method="gram")
    with pytest.raises(ValueError, match="method"):
        maxmin_order(torch.randn(1, 5, 3), torch.ones(1, 5), 2, method="row")
    with pytest.raises(ValueError, match="max_matrix_bytes"):
        MaxMinSelection(max_matrix_bytes=-1)
    with pytest.raises(TypeError, match="max_matrix_bytes"):
        DivPrune(max_matrix_bytes=1.5)
