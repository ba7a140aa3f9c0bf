"""prunekit.testing: the reusable contract suites catch broken pruners and adapters."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from test_llava_adapter import CONTRACT_CASES as LLAVA_CASES

from prunekit import Picks, TokenPruner
from prunekit.adapters.vlm import PreLLMAdapter
from prunekit.core.signals import SIGNALS, SignalSpec
from prunekit.testing import (
    AdapterCase,
    AdapterContract,
    PrunerContract,
    Refusal,
    as_case,
    case_id,
    check_adapter,
    check_pruner,
    model_state,
    registered_cases,
    state_differences,
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


# -- the adapter contract ------------------------------------------------------------------------
def small_llava_case() -> AdapterCase:
    """The LLaVA contract case cut to one budget and option set, with a fresh model."""
    (case,) = LLAVA_CASES
    return dataclasses.replace(
        case, label="llava_small", budgets=(4,), full_budgets=(1.0,), variants=({},), refusals=()
    )


class TestAdapterMixinOnOneCase(AdapterContract):
    """What a plugin writes: the mixin with ``case = AdapterCase(...)``."""

    case = small_llava_case()


def test_adapter_contract_catches_wrong_kept_rows(monkeypatch):
    """An adapter that feeds the LLM other rows than the ones it records fails the reference check."""
    original = PreLLMAdapter._prune
    monkeypatch.setattr(
        PreLLMAdapter, "_prune", lambda self, *a, **k: [f.roll(1) for f in original(self, *a, **k)]
    )
    with pytest.raises(AssertionError, match="'reference, budget 4.*generated tokens vs the ref"):
        check_adapter(small_llava_case(), checks=("reference",))


def test_adapter_contract_catches_an_override_left_behind(monkeypatch):
    """An adapter whose install forgets to return the undo of its generate override fails
    the restore check (and names the attribute)."""
    original = PreLLMAdapter.install
    monkeypatch.setattr(PreLLMAdapter, "install", lambda self, handle: original(self, handle)[:-1])
    with pytest.raises(AssertionError, match=r"model restored.*instance attributes \['generate'\]"):
        check_adapter(small_llava_case(), checks=("restored",))


def test_adapter_contract_catches_a_swallowed_option(monkeypatch):
    original = PreLLMAdapter.__init__

    def lenient(self, model, **options):
        options.pop("not_an_option_of_any_adapter", None)
        original(self, model, **options)

    monkeypatch.setattr(PreLLMAdapter, "__init__", lenient)
    with pytest.raises(AssertionError, match="refusal .* nothing was refused"):
        check_adapter(small_llava_case(), checks=("refusal",))


def test_check_adapter_reports_passed_and_skipped_checks():
    from test_encoder_adapters import CONTRACT_CASES as ENCODER_CASES

    case = dataclasses.replace(ENCODER_CASES[0], budgets=(5,), variants=({"layer": 1},))
    report = check_adapter(case, checks=("reference", "kv_cache", "restored"))
    assert list(report) == [
        "reference, budget 5, {'layer': 1}",
        "KV cache, budget 5, {'layer': 1}",
        "model restored",
    ]
    assert report["KV cache, budget 5, {'layer': 1}"] == (
        "skipped: encoders have no generate, so no KV cache"
    )
    assert report["reference, budget 5, {'layer': 1}"] == "passed"
    assert report["model restored"] == "passed"


def test_model_state_sees_every_kind_of_change():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    before = model_state(model)
    assert state_differences(before, model_state(model)) == []
    model[0].forward = lambda x: x
    assert "instance attributes ['forward']" in state_differences(before, model_state(model))[0]
    del model[0].forward
    hook = model[0].register_forward_hook(lambda *a: None)
    assert "_forward_hooks" in state_differences(before, model_state(model))[0]
    hook.remove()
    weight = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
    assert state_differences(before, model_state(model)) == [
        "0.weight: value, dtype or requires_grad changed"
    ]
    with torch.no_grad():
        model[0].weight.copy_(weight)
    assert state_differences(before, model_state(model)) == []

    class Patched(torch.nn.Linear):
        pass

    patched = Patched(2, 2)
    state = model_state(patched)
    Patched.forward = lambda self, x: x
    (problem,) = state_differences(state, model_state(patched))
    assert problem.endswith("Patched was patched: ['forward']")


def test_adapter_case_errors():
    def build():
        return torch.nn.Linear(2, 2)

    with pytest.raises(ValueError, match="needs run="):
        AdapterCase(family="x", kind="encoder", build=build, inputs=None, reference=None)
    with pytest.raises(ValueError, match="kind must be 'vlm' or 'encoder'"):
        AdapterCase(family="x", kind="llm", build=build, inputs=None, reference=None)
    with pytest.raises(ValueError, match="n_prompts must be at least 2"):
        AdapterCase(family="x", build=build, inputs=None, reference=None, n_prompts=1)
    with pytest.raises(ValueError, match="non-empty regular expression"):
        Refusal(match="")

    class TestNothing(AdapterContract):
        pass

    with pytest.raises(TypeError, match="must set `case = AdapterCase"):
        TestNothing().contract_cases()
    with pytest.raises(ValueError, match=r"checks: unknown names \['kv'\]"):
        check_adapter(small_llava_case(), checks=("kv",))
