"""create_pruner("resprune", ...) against an independent float64 implementation of the method page."""

from __future__ import annotations

import pytest
import torch
from reference import resprune_reference, text_relevance, weights_from_relevance
from test_greedy_residual import replay_check

import prunekit
from prunekit import ResPrune


def reference_indices(tokens, text, k, alpha, aggregation, center=None):
    x = tokens.double().numpy()
    r = text_relevance(
        x, text.double().numpy(), aggregation, None if center is None else center.double().numpy()
    )
    w = weights_from_relevance(r, alpha)
    picks, _ = resprune_reference(x, k, w)
    return sorted(picks), picks, torch.tensor(w)


def replay_diagnostic(pruner, tokens, scores, weights, k) -> str:
    """Why a sample disagrees with the reference, for the failure message only.

    Re-runs the pruner's selection on this one sample with its own weights and
    replays the picks against the reference: if the replay agrees (up to float
    ties), the selection is sound and the batch wiring or a float tie is at fault.
    """
    inputs = prunekit.core.validate_inputs(tokens[None])
    alone = pruner.selection.select(inputs, scores[None], k)[0].tolist()
    try:
        replay_check(tokens, weights, alone)
    except AssertionError as err:
        return f"selecting this sample alone also departs from the reference ({err})"
    return f"selecting this sample alone picks {sorted(alone)}, within float ties of the reference"


@pytest.mark.parametrize("aggregation", ["max", "mean", "pooled"])
@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0, 3.0])
@pytest.mark.parametrize("seed", range(3))
def test_matches_float64_reference(aggregation, alpha, seed):
    g = torch.Generator().manual_seed(100 + seed)
    b, n, d, m, k = 3, 64, 24, 4, 16
    tokens = torch.randn(b, n, d, generator=g) + 0.5 * torch.randn(d, generator=g)
    text = torch.randn(b, m, d, generator=g)
    pruner = prunekit.create_pruner("resprune", alpha=alpha, aggregation=aggregation)
    result = pruner.prune(tokens, budget=k, text_embeds=text)
    for i in range(b):
        expected, _, w = reference_indices(tokens[i], text[i], k, alpha, aggregation)
        torch.testing.assert_close(result.scores[i].double(), w, rtol=1e-4, atol=1e-5)
        got = result.indices[i].tolist()
        assert got == expected, (
            f"sample {i}: kept {got}, the reference keeps {expected}; "
            + replay_diagnostic(pruner, tokens[i], result.scores[i], w, k)
        )


def test_center_changes_relevance_not_the_residual_space():
    g = torch.Generator().manual_seed(5)
    tokens = torch.randn(2, 50, 16, generator=g) + 3.0
    text = torch.randn(2, 3, 16, generator=g) + 3.0
    center = torch.full((16,), 3.0)
    result = ResPrune(center=center).prune(tokens, budget=10, text_embeds=text)
    for i in range(2):
        expected, _, _ = reference_indices(tokens[i], text[i], 10, 1.0, "max", center)
        assert result.indices[i].tolist() == expected


def test_without_text_is_pure_residual_selection():
    g = torch.Generator().manual_seed(9)
    tokens = torch.randn(2, 40, 10, generator=g)
    with_none = prunekit.create_pruner("composed", relevance="none", selection="greedy_residual")
    a = ResPrune(alpha=2.0).prune(tokens, budget=12)
    b = with_none.prune(tokens, budget=12)
    assert torch.equal(a.indices, b.indices)
    for i in range(2):
        picks, _ = resprune_reference(tokens[i].double().numpy(), 12, torch.ones(40).numpy())
        assert a.indices[i].tolist() == sorted(picks)


def test_text_guidance_moves_selection_towards_the_text():
    """Tokens aligned with the text get kept when alpha is large."""
    g = torch.Generator().manual_seed(11)
    tokens = torch.randn(1, 80, 32, generator=g)
    target = tokens[0, :8].mean(0, keepdim=True).unsqueeze(0)  # text close to tokens 0..7
    plain = ResPrune(alpha=0.0).prune(tokens, budget=8).indices[0]
    guided = ResPrune(alpha=8.0).prune(tokens, budget=8, text_embeds=target).indices[0]
    assert (guided < 8).sum() > (plain < 8).sum()
    assert (guided < 8).sum() >= 4


def test_resprune_is_the_text_greedy_composition():
    pruner = prunekit.create_pruner("resprune", alpha=1.5, aggregation="mean")
    assert pruner.relevance.alpha == 1.5 and pruner.relevance.aggregation == "mean"
    assert pruner.selection.name == "greedy_residual"
    composed = prunekit.create_pruner(
        "composed",
        relevance={"name": "text", "alpha": 1.5, "aggregation": "mean"},
        selection="greedy_residual",
    )
    g = torch.Generator().manual_seed(2)
    tokens, text = torch.randn(2, 50, 8, generator=g), torch.randn(2, 3, 8, generator=g)
    assert torch.equal(
        pruner.prune(tokens, budget=0.2, text_embeds=text).indices,
        composed.prune(tokens, budget=0.2, text_embeds=text).indices,
    )
