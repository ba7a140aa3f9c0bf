"""prunekit.testing: the reusable contract suite catches broken pruners and covers signals."""

from __future__ import annotations

import pytest
import torch

from prunekit import Picks, TokenPruner
from prunekit.core.signals import SIGNALS, SignalSpec
from prunekit.testing import (
    PrunerContract,
    as_case,
    case_id,
    check_pruner,
    registered_cases,
    synthesize_signals,
)


def _top(scores: torch.Tensor, mask: torch.Tensor, num_keep: int) -> torch.Tensor:
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :num_keep]


class ClsAttentionTopK(TokenPruner):
    """Keeps the tokens the [CLS] query attends to most (averaged over heads)."""

    required_signals = frozenset({"cls_attention"})
    pruning_points = frozenset({"pre_llm"})

    def __init__(self, *, heads: str = "mean") -> None:
        self.heads = heads

    def select(self, inputs, num_keep):
        attention = inputs.signals["cls_attention"]
        scores = attention.mean(1) if self.heads == "mean" else attention.amax(1)
        return Picks(order=_top(scores, inputs.token_mask, num_keep), scores=scores)


class TestSignalPruner(PrunerContract):
    """The mixin on a class that needs a signal, with constructor arguments."""

    pruner = ClsAttentionTopK
    kwargs = {"heads": "max"}


class TestMakePrunerOverride(PrunerContract):
    def make_pruner(self):
        return ClsAttentionTopK()


def test_synthesize_signals_shapes():
    g = torch.Generator().manual_seed(0)
    signals = synthesize_signals(frozenset(SIGNALS), 2, 7, 5, g)
    assert set(signals) == set(SIGNALS)
    for name, value in signals.items():
        assert value.shape[0] == 2
        if SIGNALS[name].token_axis is not None:
            assert value.shape[SIGNALS[name].token_axis] == 7
    attention = signals["cls_attention"]
    assert attention.shape == (2, 4, 7) and (attention > 0).all() and (attention.sum(-1) < 1).all()
    again = synthesize_signals({"cls_attention"}, 2, 7, 5, torch.Generator().manual_seed(0))
    assert torch.equal(
        again["cls_attention"],
        synthesize_signals(["cls_attention"], 2, 7, 5, torch.Generator().manual_seed(0))[
            "cls_attention"
        ],
    )
    assert synthesize_signals(frozenset(), 2, 7, 5, g) == {}


def test_synthesize_signals_errors(monkeypatch):
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="'nope' is not registered"):
        synthesize_signals({"nope"}, 1, 3, 2, g)
    monkeypatch.setitem(SIGNALS, "bare", SignalSpec("bare", "(B, N)", -1, "no example"))
    with pytest.raises(ValueError, match="'bare' has no example factory"):
        synthesize_signals({"bare"}, 1, 3, 2, g)
    wrong = SignalSpec(
        "wrong", "(B, N)", -1, "bad example", lambda b, n, d, g: torch.zeros(b, n + 1)
    )
    monkeypatch.setitem(SIGNALS, "wrong", wrong)
    with pytest.raises(ValueError, match="must return 3 tokens on axis -1"):
        synthesize_signals({"wrong"}, 1, 3, 2, g)


def test_check_pruner_passes_good_pruners():
    check_pruner("resprune", alpha=2.0, max_examples=5)
    check_pruner(ClsAttentionTopK, heads="max", max_examples=5)
    check_pruner(ClsAttentionTopK(), max_examples=0)


class BatchDependent(TokenPruner):
    """Keeps tokens far from the batch-wide mean: a sample depends on the others."""

    def select(self, inputs, num_keep):
        center = inputs.tokens[..., 0].mean()
        return Picks(
            order=_top((inputs.tokens[..., 0] - center).abs(), inputs.token_mask, num_keep)
        )


class ReadsPaddedSignal(ClsAttentionTopK):
    """Weights heads by their total attention, padded positions included."""

    def select(self, inputs, num_keep):
        attention = inputs.signals["cls_attention"]
        scores = (attention * attention.sum(-1, keepdim=True)).sum(1)
        return Picks(order=_top(scores, inputs.token_mask, num_keep))


class IgnoresTextMask(TokenPruner):
    """Scores tokens against every text row, masked ones included."""

    def select(self, inputs, num_keep):
        if inputs.text_embeds is None:
            scores = inputs.tokens[..., 0]
        else:
            scores = (inputs.tokens @ inputs.text_embeds.transpose(1, 2)).amax(-1)
        return Picks(order=_top(scores, inputs.token_mask, num_keep))


class KeepsPadding(TokenPruner):
    """Ignores the token mask (the base class refuses its picks)."""

    def select(self, inputs, num_keep):
        return Picks(order=inputs.tokens.norm(dim=-1).argsort(1, descending=True)[:, :num_keep])


class Unseeded(TokenPruner):
    def select(self, inputs, num_keep):
        scores = torch.rand(inputs.token_mask.shape)
        return Picks(order=_top(scores, inputs.token_mask, num_keep))


class NaNScores(TokenPruner):
    """Picks well, but reports a NaN score (e.g. a 0 / 0 normalisation) for the last token."""

    def select(self, inputs, num_keep):
        scores = inputs.tokens[..., 0].clone()
        order = _top(scores, inputs.token_mask, num_keep)
        scores[:, -1] = float("nan")
        return Picks(order=order, scores=scores)


@pytest.mark.parametrize(
    "broken, check",
    [
        (NaNScores, "kept count, budget=1"),
        (BatchDependent, "batch invariance"),
        (ReadsPaddedSignal, "ragged masks, budget=5"),
        (IgnoresTextMask, "masked text rows"),
        (KeepsPadding, "ragged masks, budget=5"),
        (Unseeded, "determinism"),
    ],
    ids=lambda value: value if isinstance(value, str) else value.__name__,
)
def test_check_pruner_catches_broken_pruners(broken, check):
    with pytest.raises(AssertionError, match=f"{broken.__name__}: contract check '{check}' failed"):
        check_pruner(broken, max_examples=0)


def test_check_pruner_reports_the_falsifying_example():
    class FlipsOnTinyInputs(TokenPruner):
        """Right on the fixed checks (never 2 or 3 token slots there), wrong in general."""

        def select(self, inputs, num_keep):
            scores = inputs.tokens[..., 0]
            if inputs.num_tokens in (2, 3):
                scores = -scores
            return Picks(order=_top(scores, inputs.token_mask, num_keep))

    check_pruner(FlipsOnTinyInputs, max_examples=0)
    with pytest.raises(AssertionError, match="'properties' failed: sample (.|\n)*problem="):
        check_pruner(FlipsOnTinyInputs, max_examples=200)


def test_case_ids_and_cases():
    assert case_id("resprune") == "resprune"
    assert case_id(("resprune", {"alpha": 2.0})) == "resprune[alpha=2.0]"
    assert case_id(("composed", {"relevance": "none", "selection": {"name": "random"}})) == (
        "composed[nonexrandom]"
    )
    assert case_id(ClsAttentionTopK) == "ClsAttentionTopK"
    assert as_case(ClsAttentionTopK(), None).label == "ClsAttentionTopK"
    assert isinstance(as_case(("resprune", {"alpha": 2.0}))(), TokenPruner)
    with pytest.raises(TypeError, match="kwargs cannot be given with a pruner instance"):
        as_case(ClsAttentionTopK(), {"heads": "max"})
    with pytest.raises(TypeError, match="must be a registered name"):
        as_case(3)
    with pytest.raises(TypeError, match="not a TokenPruner"):
        as_case(dict)()
    assert ("resprune", {}) in registered_cases()
    assert registered_cases(plugin="no-such-plugin") == []
    assert {name for name, _ in registered_cases(plugin="builtin")} >= {"resprune", "composed"}


def test_mixin_without_a_pruner_says_what_to_set():
    class TestNothing(PrunerContract):
        pass

    with pytest.raises(TypeError, match="must set `pruner = ...`"):
        TestNothing().make_pruner()
