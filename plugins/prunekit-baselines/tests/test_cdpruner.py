"""CDPruner: the relevance, the DPP greedy MAP, the official algorithm and the fixes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import prunekit
from prunekit.core.inputs import validate_inputs
from prunekit.strategies.relevance.text import TextRelevance
from prunekit.testing import PrunerContract
from prunekit_baselines.cdpruner import (
    CDPruner,
    CDPrunerRelevance,
    DPPSelection,
    dpp_greedy_order,
    theta_to_alpha,
)


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def official_relevance(x: np.ndarray, text: np.ndarray, negate: bool = True) -> np.ndarray:
    """``encode_images``' relevance: mean over text rows of the (negated) cosine, then
    ``(r - min + 1e-6) / (max - min)``."""
    rel = unit(x) @ unit(text).T
    rel = (-rel if negate else rel).mean(axis=-1)
    return (rel - rel.min() + 1e-6) / (rel.max() - rel.min())


def official_dpp(x: np.ndarray, q: np.ndarray, k: int) -> list[int]:
    """The official greedy MAP loop, in float64, without fixes (may return NaN-driven picks)."""
    s = unit(x) @ unit(x).T
    kernel = q[:, None] * s * q[None, :]
    n = len(x)
    cis = np.zeros((k, n))
    di2s = np.diag(kernel).copy()
    picks: list[int] = []
    with np.errstate(invalid="ignore", divide="ignore"):
        for i in range(k):
            j = int(np.argmax(di2s))
            picks.append(j)
            eis = (kernel[j] - cis[:i, j] @ cis[:i]) / np.sqrt(di2s[j])
            cis[i] = eis
            di2s = di2s - eis**2
            di2s[j] = -np.inf
    return picks


def official_cdpruner(x: np.ndarray, text: np.ndarray, k: int, negate: bool = True) -> list[int]:
    return official_dpp(x, official_relevance(x, text, negate), k)


def dpp_order(tokens, q, k, **kwargs) -> list[int]:
    tokens = torch.as_tensor(tokens).unsqueeze(0)
    return dpp_greedy_order(tokens, torch.as_tensor(q).unsqueeze(0), k, **kwargs)[0].tolist()


def test_registered():
    assert isinstance(prunekit.create_pruner("cdpruner"), CDPruner)
    assert isinstance(prunekit.create_selection("dpp"), DPPSelection)
    assert isinstance(prunekit.create_relevance("cdpruner"), CDPrunerRelevance)


def test_hand_worked_dpp():
    # x0 = e1, x1 = (e1 + e2)/sqrt2, x2 = e2 with q = (1, 0.9, 0.8): d^2 = 1, 0.81, 0.64 -> x0;
    # residuals w.r.t. e1: x1 -> 1/2, x2 -> 1, so d^2 = 0.405, 0.64 -> x2; then x1 is spanned (2-D).
    s = 1 / math.sqrt(2)
    x = np.array([[1.0, 0.0], [s, s], [0.0, 1.0]])
    q = np.array([1.0, 0.9, 0.8])
    assert official_dpp(x, q, 2) == [0, 2]
    assert dpp_order(torch.tensor(x), torch.tensor(q), 2) == [0, 2]
    # the official third step divides by d = 0 and goes NaN; prunekit fills by q
    assert dpp_order(torch.tensor(x), torch.tensor(q), 3) == [0, 2, 1]


def test_hand_worked_relevance():
    # tokens e1, e2, (e1+e2)/sqrt2 and one text row e1: cos = 1, 0, 0.707.
    s = 1 / math.sqrt(2)
    tokens = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [s, s]]], dtype=torch.float64)
    text = torch.tensor([[[2.0, 0.0]]], dtype=torch.float64)
    inputs = validate_inputs(tokens, text_embeds=text)
    # negated: r = -1, 0, -0.707; spread 1 -> q = 1e-6, 1 + 1e-6, 0.293 + 1e-6
    q = CDPrunerRelevance().weights(inputs)[0]
    assert torch.allclose(q, torch.tensor([1e-6, 1 + 1e-6, 1 - s + 1e-6], dtype=torch.float64))
    np.testing.assert_allclose(q.numpy(), official_relevance(tokens[0].numpy(), text[0].numpy()))
    # paper sign: q = 1 + 1e-6, 1e-6, 0.707 + 1e-6
    q_paper = CDPrunerRelevance(negate=False).weights(inputs)[0]
    assert torch.allclose(q_paper, torch.tensor([1 + 1e-6, 1e-6, s + 1e-6], dtype=torch.float64))
    # theta: exp(alpha q) with alpha = theta / (2 (1 - theta)); theta = 0.5 -> alpha = 0.5
    assert theta_to_alpha(0.5) == 0.5
    q_theta = CDPrunerRelevance(theta=0.5).weights(inputs)[0]
    assert torch.allclose(q_theta, torch.exp(0.5 * q))


def test_relevance_averages_the_valid_text_rows():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(1, 12, 6, generator=g, dtype=torch.float64)
    text = torch.randn(1, 4, 6, generator=g, dtype=torch.float64)
    mask = torch.tensor([[True, False, True, True]])
    q = CDPrunerRelevance().weights(validate_inputs(tokens, text_embeds=text, text_mask=mask))
    expected = official_relevance(tokens[0].numpy(), text[0, [0, 2, 3]].numpy())
    np.testing.assert_allclose(q[0].numpy(), expected, rtol=1e-12)


def test_relevance_without_text_or_flat_is_uniform():
    tokens = torch.randn(2, 5, 3)
    assert torch.equal(CDPrunerRelevance().weights(validate_inputs(tokens)), torch.ones(2, 5))
    same = torch.ones(1, 5, 3)
    text = torch.randn(1, 2, 3)
    flat = CDPrunerRelevance().weights(validate_inputs(same, text_embeds=text))
    assert torch.equal(flat, torch.ones(1, 5))


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("negate", [True, False])
def test_matches_official_algorithm_on_random_tokens(seed, negate):
    rng = np.random.default_rng(seed)
    n, d, m = int(rng.integers(10, 50)), int(rng.integers(12, 40)), int(rng.integers(1, 4))
    k = int(rng.integers(1, min(n, d) - 1))  # below the rank: the official loop is well defined
    x = rng.normal(size=(n, d))
    text = rng.normal(size=(m, d))
    expected = official_cdpruner(x, text, k, negate)
    for dtype in (torch.float32, torch.float64):
        tokens = torch.tensor(x, dtype=dtype).unsqueeze(0)
        text_t = torch.tensor(text, dtype=dtype).unsqueeze(0)
        inputs = validate_inputs(tokens, text_embeds=text_t)
        q = CDPrunerRelevance(negate=negate).weights(inputs)
        assert DPPSelection().select(inputs, q, k)[0].tolist() == expected
        result = CDPruner(negate=negate).prune(tokens, budget=k, text_embeds=text_t)
        assert result.indices[0].tolist() == sorted(expected)
        assert torch.allclose(result.scores[0], q[0].float(), rtol=1e-6)


def test_first_pick_is_the_argmax_of_q():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(20, 8))
    q = rng.uniform(size=20)
    assert dpp_order(torch.tensor(x), torch.tensor(q), 1) == [int(np.argmax(q))]


def test_budget_beyond_rank_keeps_k_distinct_without_nan():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(12, 2)) @ rng.normal(size=(2, 6))  # rank 2
    q = rng.uniform(0.2, 1.0, size=12)
    official = official_dpp(x, q, 5)
    for dtype in (torch.float32, torch.float64):
        picks = dpp_order(torch.tensor(x, dtype=dtype), torch.tensor(q, dtype=dtype), 5)
        assert picks[:2] == official[:2]
        assert len(set(picks)) == 5
        rest = sorted(set(range(12)) - set(picks[:2]), key=lambda i: (-q[i], i))
        assert picks[2:] == rest[:3], "the rest of the budget is filled by q"
    tokens = torch.tensor(x, dtype=torch.float32).unsqueeze(0)
    text = torch.tensor(rng.normal(size=(1, 2, 6)), dtype=torch.float32)
    result = CDPruner().prune(tokens, budget=9, text_embeds=text)
    assert result.counts.tolist() == [9] and len(set(result.indices[0].tolist())) == 9


def test_exact_duplicates_are_picked_only_after_every_direction():
    rng = np.random.default_rng(4)
    base = rng.normal(size=(4, 10))
    x = np.concatenate([base, base])
    picks = dpp_order(torch.tensor(x, dtype=torch.float32), torch.ones(8), 8)
    assert sorted(p % 4 for p in picks[:4]) == [0, 1, 2, 3]
    assert sorted(picks) == list(range(8))


def test_zero_token_and_zero_quality_do_not_produce_nan():
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    assert sorted(dpp_order(x, torch.tensor([1.0, 0.0, 1.0, 1.0]), 4)) == [0, 1, 2, 3]


def determinant_greedy(x: np.ndarray, q: np.ndarray, k: int) -> list[int]:
    """Greedy MAP by its definition: add the token that maximises ``det L_S``, in float64
    (``L = diag(q) S diag(q)``, ``S`` the cosine matrix), ties to the lowest index."""
    kernel = q[:, None] * (unit(x) @ unit(x).T) * q[None, :]
    picks: list[int] = []
    for _ in range(k):
        dets = np.full(len(x), -np.inf)
        for j in set(range(len(x))) - set(picks):
            rows = [*picks, j]
            dets[j] = np.linalg.det(kernel[np.ix_(rows, rows)])
        picks.append(int(np.argmax(dets)))
    return picks


@pytest.mark.parametrize("method", ["gram", "rows"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dpp_greedy_order_maximises_the_determinant(method, dtype):
    """Every sample of a batch against two independent float64 references: the greedy
    determinant maximisation itself and the official fast-MAP loop."""
    g = torch.Generator().manual_seed(3)
    tokens = torch.randn(3, 30, 16, generator=g) * torch.rand(3, 30, 1, generator=g) * 5
    q = torch.rand(3, 30, generator=g) + 0.05
    got = dpp_greedy_order(tokens.to(dtype), q.to(dtype), 12, method=method)
    for b in range(3):
        x, qb = tokens[b].double().numpy(), q[b].double().numpy()
        expected = determinant_greedy(x, qb, 12)
        assert official_dpp(x, qb, 12) == expected  # the two references agree
        assert got[b].tolist() == expected, f"sample {b}"


def test_composes_with_text_relevance_and_none():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(2, 25, 10, generator=g)
    text = torch.randn(2, 3, 10, generator=g)
    pruner = prunekit.create_pruner("composed", relevance="text", selection="dpp")
    result = pruner.prune(tokens, budget=8, text_embeds=text)
    weights = TextRelevance().weights(validate_inputs(tokens, text_embeds=text))
    for b in range(2):
        expected = official_dpp(tokens[b].double().numpy(), weights[b].double().numpy(), 8)
        assert result.indices[b].tolist() == sorted(expected)
    # without text, CDPruner is the plain similarity DPP (relevance "none")
    plain = prunekit.create_pruner("composed", relevance="none", selection="dpp")
    assert torch.equal(
        CDPruner().prune(tokens, budget=8).indices, plain.prune(tokens, budget=8).indices
    )
    # and CDPruner's relevance composes with other selections
    other = prunekit.create_pruner("composed", relevance="cdpruner", selection="maxmin")
    assert other.prune(tokens, budget=8, text_embeds=text).counts.tolist() == [8, 8]


def test_min_max_is_per_sample():
    """The official min-max spans the whole batch; prunekit's does not."""
    g = torch.Generator().manual_seed(5)
    tokens = torch.randn(2, 20, 8, generator=g)
    text = torch.randn(2, 2, 8, generator=g)
    q = CDPrunerRelevance().weights(validate_inputs(tokens, text_embeds=text))
    for b in range(2):
        expected = official_relevance(tokens[b].double().numpy(), text[b].double().numpy())
        np.testing.assert_allclose(q[b].numpy(), expected, rtol=1e-4, atol=1e-6)


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="theta"):
        CDPruner(theta=1.0)
    with pytest.raises(TypeError, match="negate"):
        CDPrunerRelevance(negate="yes")
    with pytest.raises(ValueError, match="method"):
        DPPSelection(method="dense")
    with pytest.raises(ValueError, match="tie_rtol"):
        CDPruner(tie_rtol=-0.1)


class TestCDPrunerContract(PrunerContract):
    """The contract for CDPruner's options and for its strategies in other compositions."""

    cases = [
        ("cdpruner", {"negate": False}),
        ("cdpruner", {"theta": 0.5, "method": "rows"}),
        ("composed", {"relevance": "text", "selection": "dpp"}),
        ("composed", {"relevance": "none", "selection": "dpp"}),
        ("composed", {"relevance": "cdpruner", "selection": "topk"}),
    ]
