"""DivPrune and the max-min selection: hand-worked cases, the official algorithm, the fixes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

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
