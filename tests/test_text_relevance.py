"""Text relevance: the three aggregations, the normalisation and the centre, by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from reference import text_relevance as ref_relevance
from reference import weights_from_relevance

from prunekit.core.inputs import validate_inputs
from prunekit.strategies.relevance.text import TextRelevance

# Tokens and text in 2-D so cosines are easy to do by hand.
TOKENS = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [1.0, 1.0], [-3.0, 0.0]]])
TEXT = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
S = 1 / math.sqrt(2)


def run(strategy, tokens=TOKENS, text=TEXT, **kwargs):
    inputs = validate_inputs(tokens, text_embeds=text, **kwargs)
    return strategy.relevance(inputs), strategy.weights(inputs)


def test_max_aggregation_by_hand():
    # cos with e1 / e2: t0: 1, 0; t1: 0, 1; t2: s, s; t3: -1, 0
    rel, w = run(TextRelevance(aggregation="max", alpha=1.0))
    assert rel[0].tolist() == pytest.approx([1.0, 1.0, S, 0.0])
    # min 0, max 1 -> weights are r / (1 + 1e-6)
    assert w[0].tolist() == pytest.approx([1 / (1 + 1e-6), 1 / (1 + 1e-6), S / (1 + 1e-6), 0.0])


def test_mean_aggregation_by_hand():
    rel, w = run(TextRelevance(aggregation="mean", alpha=1.0))
    assert rel[0].tolist() == pytest.approx([0.5, 0.5, S, -0.5])
    spread = S + 0.5
    assert w[0].tolist() == pytest.approx(
        [1 / (spread + 1e-6), 1 / (spread + 1e-6), spread / (spread + 1e-6), 0.0]
    )


def test_pooled_aggregation_by_hand():
    # pooled text = (0.5, 0.5) -> direction (s, s)
    rel, _ = run(TextRelevance(aggregation="pooled"))
    assert rel[0].tolist() == pytest.approx([S, S, 1.0, -S])


def test_alpha_powers_the_normalised_relevance():
    _, w1 = run(TextRelevance(alpha=1.0))
    _, w3 = run(TextRelevance(alpha=3.0))
    assert torch.allclose(w3, w1**3)
    _, w0 = run(TextRelevance(alpha=0.0))
    assert torch.equal(w0, torch.ones_like(w0))  # 0 ** 0 == 1: no guidance


def test_center_is_removed_from_both_sides():
    center = torch.tensor([5.0, 5.0])
    rel, _ = run(TextRelevance(center=center), tokens=TOKENS + center, text=TEXT + center)
    plain, _ = run(TextRelevance())
    assert torch.allclose(rel, plain, atol=1e-6)


@pytest.mark.parametrize("aggregation", ["max", "mean", "pooled"])
@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
def test_matches_float64_reference(aggregation, alpha):
    g = torch.Generator().manual_seed(7)
    tokens = torch.randn(2, 30, 8, generator=g)
    text = torch.randn(2, 5, 8, generator=g)
    center = torch.randn(8, generator=g)
    strategy = TextRelevance(aggregation=aggregation, alpha=alpha, center=center)
    rel, w = run(strategy, tokens=tokens, text=text)
    for b in range(2):
        r = ref_relevance(tokens[b].numpy(), text[b].numpy(), aggregation, center.numpy())
        np.testing.assert_allclose(rel[b].numpy(), r, atol=1e-5)
        np.testing.assert_allclose(w[b].numpy(), weights_from_relevance(r, alpha), atol=1e-5)


def test_normalisation_uses_only_valid_tokens():
    mask = torch.tensor([[True, True, True, False]])  # drop t3 (the minimum)
    _, w = run(TextRelevance(), token_mask=mask)
    # valid relevances 1, 1, s -> min s, max 1
    expected = [(1 - S) / (1 - S + 1e-6)] * 2 + [0.0]
    assert w[0, :3].tolist() == pytest.approx(expected)
    assert w[0, 3] == 0.0


def test_no_text_or_empty_text_means_uniform_weights():
    strategy = TextRelevance(alpha=2.0)
    _, w = run(strategy, text=None)
    assert torch.equal(w, torch.ones_like(w))
    _, w = run(strategy, text_mask=torch.tensor([[False, False]]))
    assert torch.equal(w, torch.ones_like(w))


def test_flat_relevance_means_uniform_weights():
    tokens = torch.tensor([[[1.0, 0.0], [2.0, 0.0], [5.0, 0.0]]])
    _, w = run(TextRelevance(alpha=1.0), tokens=tokens, text=TEXT)
    assert torch.equal(w, torch.ones_like(w))


def test_per_sample_text_mask():
    text = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, 1.0]]])
    tokens = TOKENS.expand(2, -1, -1)
    mask = torch.tensor([[True, False], [True, True]])
    rel, _ = run(TextRelevance(aggregation="max"), tokens=tokens, text=text, text_mask=mask)
    assert rel[0].tolist() == pytest.approx([1.0, 0.0, S, -1.0])
    assert rel[1].tolist() == pytest.approx([1.0, 1.0, S, 0.0])


@pytest.mark.parametrize("aggregation", ["mean", "pooled"])
def test_padded_text_rows_do_not_count_in_the_average(aggregation):
    """Sample 0 has one real text row (e1) and a padded one that must not be averaged in:
    its raw relevance is each token's cosine with e1 alone, as sample 1's with e1 only."""
    text = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, 0.0]]])
    tokens = TOKENS.expand(2, -1, -1)
    mask = torch.tensor([[True, False], [True, False]])
    rel, _ = run(TextRelevance(aggregation=aggregation), tokens=tokens, text=text, text_mask=mask)
    assert rel[0].tolist() == pytest.approx([1.0, 0.0, S, -1.0])  # cos with e1, not half of it
    assert rel[1].tolist() == pytest.approx(rel[0].tolist())


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"aggregation": "maxx"}, ValueError, "aggregation.*Did you mean 'max'"),
        ({"alpha": -1.0}, ValueError, "alpha"),
        ({"alpha": float("nan")}, ValueError, "alpha"),
        ({"alpha": "1"}, TypeError, "alpha"),
        ({"center": [1.0, 2.0]}, TypeError, "center"),
        ({"center": torch.zeros(2, 2)}, ValueError, "center"),
    ],
)
def test_bad_parameters(kwargs, error, match):
    with pytest.raises(error, match=match):
        TextRelevance(**kwargs)


def test_center_width_mismatch():
    with pytest.raises(ValueError, match="center has 3 features"):
        run(TextRelevance(center=torch.zeros(3)))
