"""Signals are validated like tokens: against the SignalSpec table, with errors naming them.

Every pruner that reads a signal (FasterVLM, VisPruner, VisionZip, FastV, DART and
ResPrune's ``center="embedding_mean"``) gets, for each signal it reads, a wrong rank, a
wrong axis size, the wrong dtype kind and NaN / Inf values; each must raise before the
pruner runs, with a message naming the signal.
"""

from __future__ import annotations

import re

import pytest
import torch

import prunekit
from prunekit.core.inputs import validate_inputs
from prunekit.core.signals import SIGNALS, SignalSpec
from prunekit.testing import synthesize_signals

B, N, D = 2, 12, 8

#: every pruner that reads signals, by the signals it reads
READERS = [
    ("fastervlm", {}),
    ("vispruner", {}),
    ("visionzip", {}),
    ("fastv", {}),
    ("dart", {}),
    ("resprune", {"center": "embedding_mean"}),
    ("composed", {"relevance": "llm_attention"}),
    ("composed", {"relevance": "logit_lens"}),
    ("composed", {"relevance": "clip_text"}),
]


def make(name, kwargs):
    return prunekit.create_pruner(name, **kwargs)


def good_inputs(pruner, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(B, N, D, generator=g)
    signals = synthesize_signals(pruner.required_signals, B, N, D, g)
    return tokens, signals


def cases():
    """``(pruner name, kwargs, signal)`` for every signal each pruner reads."""
    out = []
    for name, kwargs in READERS:
        for signal in sorted(make(name, kwargs).required_signals):
            out.append(pytest.param(name, kwargs, signal, id=f"{name}-{signal}"))
    return out


def test_the_table_covers_every_signal_read():
    read = set().union(*(make(n, k).required_signals for n, k in READERS))
    assert read == set(SIGNALS) - {"received_attention"}  # no built-in pruner reads it


def wrong_rank(value):
    """One axis fewer (the last two merged, as ``(B, N, H*d)`` keys) or one more."""
    return value.flatten(-2) if value.dim() >= 3 else value.unsqueeze(-1)


def wrong_size(name, value):
    """The token axis one short, or (no token axis) the last axis one short: that axis is
    shared with another signal (``T``, ``D``, ``d_head``) or with the tokens (``d``)."""
    axis = SIGNALS[name].token_axis
    axis = value.dim() - 1 if axis is None else axis
    return value.narrow(axis, 0, value.shape[axis] - 1)


def wrong_kind(name, value):
    return value.float() if SIGNALS[name].kind != "float" else (value * 100).long()


def with_value(name, value, bad):
    """``bad`` at sample 1, first index of every other axis (a real token)."""
    value = value.clone()
    value[(1,) + (0,) * (value.dim() - 1)] = bad
    return value


def run(name, kwargs, signals, tokens, token_mask=None):
    return make(name, kwargs).prune(tokens, budget=5, token_mask=token_mask, signals=signals)


def named(signal):
    return re.escape(f"signals[{signal!r}]")


@pytest.mark.parametrize(("name", "kwargs", "signal"), cases())
def test_good_signals_pass(name, kwargs, signal):
    pruner = make(name, kwargs)
    tokens, signals = good_inputs(pruner)
    assert run(name, kwargs, signals, tokens).counts.tolist() == [5, 5]


@pytest.mark.parametrize(("name", "kwargs", "signal"), cases())
def test_wrong_rank_names_the_signal(name, kwargs, signal):
    tokens, signals = good_inputs(make(name, kwargs))
    signals[signal] = wrong_rank(signals[signal])
    spec = SIGNALS[signal]
    with pytest.raises(
        ValueError, match=named(signal) + f" must have shape {re.escape(spec.shape)}"
    ):
        run(name, kwargs, signals, tokens)


@pytest.mark.parametrize(("name", "kwargs", "signal"), cases())
def test_wrong_axis_size_names_the_signal(name, kwargs, signal):
    tokens, signals = good_inputs(make(name, kwargs))
    signals[signal] = wrong_size(signal, signals[signal])
    with pytest.raises(ValueError, match=named(signal)):
        run(name, kwargs, signals, tokens)


@pytest.mark.parametrize(("name", "kwargs", "signal"), cases())
def test_wrong_batch_names_the_signal(name, kwargs, signal):
    tokens, signals = good_inputs(make(name, kwargs))
    signals[signal] = signals[signal][:1]
    with pytest.raises(ValueError, match=named(signal) + " must have the batch size 2"):
        run(name, kwargs, signals, tokens)


@pytest.mark.parametrize(("name", "kwargs", "signal"), cases())
def test_wrong_dtype_kind_names_the_signal(name, kwargs, signal):
    tokens, signals = good_inputs(make(name, kwargs))
    signals[signal] = wrong_kind(signal, signals[signal])
    kind = {"float": "a floating-point", "bool": "a bool", "integer": "an integer"}
    message = named(signal) + f" must be {kind[SIGNALS[signal].kind]} tensor"
    with pytest.raises(TypeError, match=message):
        run(name, kwargs, signals, tokens)


float_cases = [c for c in cases() if SIGNALS[c.values[2]].kind == "float"]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize(("name", "kwargs", "signal"), float_cases)
def test_nan_or_inf_names_the_signal(name, kwargs, signal, bad):
    tokens, signals = good_inputs(make(name, kwargs))
    signals[signal] = with_value(signal, signals[signal], bad)
    with pytest.raises(ValueError, match=named(signal) + " contains NaN or Inf"):
        run(name, kwargs, signals, tokens)


token_cases = [c for c in float_cases if SIGNALS[c.values[2]].token_axis is not None]


@pytest.mark.parametrize(("name", "kwargs", "signal"), token_cases)
def test_nan_at_padded_tokens_is_ignored(name, kwargs, signal):
    """Values at padded tokens are never read, so they are not checked (as for tokens)."""
    pruner = make(name, kwargs)
    tokens, signals = good_inputs(pruner)
    mask = torch.ones(B, N, dtype=torch.bool)
    mask[1, 9:] = False
    reference = run(name, kwargs, signals, tokens, mask)
    axis = SIGNALS[signal].token_axis % signals[signal].dim()
    index = [slice(None)] * signals[signal].dim()
    index[0], index[axis] = 1, slice(9, None)
    signals[signal] = signals[signal].clone()
    signals[signal][tuple(index)] = float("nan")
    result = run(name, kwargs, signals, tokens, mask)
    assert torch.equal(result.indices, reference.indices)


@pytest.mark.parametrize(
    ("name", "kwargs"), [("vispruner", {"important_ratio": 1.0}), ("fastv", {})]
)
def test_head_less_attention_is_refused_not_read_as_ones(name, kwargs):
    """A (B, N) attention used to be accepted: its "head mean" then averaged over the
    tokens, so at B=1 every token scored the same and tokens 0..K-1 were kept (at B=2 a
    broadcasting error); now it is refused, naming the signal."""
    signal = next(iter(make(name, kwargs).required_signals))
    attention = torch.zeros(1, 10)
    attention[0, 7:] = 1.0  # tokens 7, 8, 9 are the most attended
    with pytest.raises(ValueError, match=named(signal) + r" must have shape \(B, H, N\)"):
        make(name, kwargs).prune(torch.randn(1, 10, 4), budget=3, signals={signal: attention})
    result = make(name, kwargs).prune(
        torch.randn(1, 10, 4), budget=3, signals={signal: attention.unsqueeze(1)}
    )
    assert result.indices.tolist() == [[7, 8, 9]]


def test_dart_refuses_flattened_keys():
    """(B, N, H*d) keys: the L1 norm over heads would run over the wrong axes."""
    pruner = make("dart", {})
    tokens, signals = good_inputs(pruner)
    signals["llm_image_keys"] = signals["llm_image_keys"].flatten(2)
    with pytest.raises(
        ValueError, match=named("llm_image_keys") + r" must have shape \(B, N, H, d_head\)"
    ):
        pruner.prune(tokens, budget=5, signals=signals)


def test_float_text_mask_is_a_type_error():
    pruner = make("dart", {})
    tokens, signals = good_inputs(pruner)
    signals["llm_text_mask"] = signals["llm_text_mask"].float()
    with pytest.raises(TypeError, match=named("llm_text_mask") + " must be a bool tensor"):
        pruner.prune(tokens, budget=5, signals=signals)


def test_shared_axis_names_must_agree():
    """VisionZip's attention and keys come from one layer: the same H heads."""
    pruner = make("visionzip", {})
    tokens, signals = good_inputs(pruner)
    signals["vision_keys"] = signals["vision_keys"][:, :, :3]
    message = named("vision_keys") + r".* H = 4 \(from signals\['cls_attention'\]\)"
    with pytest.raises(ValueError, match=message):
        pruner.prune(tokens, budget=5, signals=signals)


def test_unknown_signals_are_only_checked_for_batch_and_device():
    tokens = torch.randn(B, N, D)
    inputs = validate_inputs(tokens, signals={"mine": torch.full((B, 3), float("nan"))})
    assert inputs.signals["mine"].shape == (B, 3)
    with pytest.raises(ValueError, match=named("mine") + " must have the batch size"):
        validate_inputs(tokens, signals={"mine": torch.zeros(3, 3)})


def test_float_signals_are_cast_to_the_compute_dtype():
    tokens = torch.randn(B, N, D, dtype=torch.float64)
    attention = torch.rand(B, 4, N, dtype=torch.float16)
    positions = torch.arange(N, dtype=torch.int32).expand(B, -1)
    inputs = validate_inputs(
        tokens, signals={"cls_attention": attention, "llm_image_positions": positions}
    )
    assert inputs.signals["cls_attention"].dtype == torch.float64
    assert inputs.signals["llm_image_positions"].dtype == torch.int32


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("s", "(N, B)", None, "x"), "batch axis B first"),
        (("s", "B, N", -1, "x"), "shape must be like"),
        (("s", "(B, H*d)", None, "x"), "neither a name nor a size"),
        (("s", "(B, H, N)", 1, "x"), "token_axis 1 must point at the axis N"),
    ],
)
def test_signal_specs_are_checked_when_declared(args, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        SignalSpec(*args)
    with pytest.raises(ValueError, match="kind must be one of"):
        SignalSpec("s", "(B, N)", -1, "x", kind="half")


def test_fixed_axis_sizes():
    spec = SignalSpec("pairs", "(B, N, 2)", 1, "two values per token")
    tokens = torch.randn(B, N, D)
    try:
        SIGNALS["pairs"] = spec
        validate_inputs(tokens, signals={"pairs": torch.zeros(B, N, 2)})
        with pytest.raises(ValueError, match=r"with 2 = 2 \(fixed\), got shape \(2, 12, 3\)"):
            validate_inputs(tokens, signals={"pairs": torch.zeros(B, N, 3)})
    finally:
        del SIGNALS["pairs"]


# --------------------------------------------------------------------------- no text


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("resprune", {}),
        ("composed", {"relevance": "text", "selection": "greedy_residual"}),
        ("cdpruner", {}),
    ],
)
def test_text_embeds_with_zero_rows_means_no_text(name, kwargs):
    """``text_embeds`` of shape (B, 0, d) used to raise an IndexError from ``amax``; it is
    now the same as no text (uniform text relevance), with or without a (B, 0) mask."""
    tokens = torch.randn(B, N, D, generator=torch.Generator().manual_seed(3))
    pruner = prunekit.create_pruner(name, **kwargs)
    expected = pruner.prune(tokens, budget=5)
    empty = torch.zeros(B, 0, D)
    assert torch.equal(pruner.prune(tokens, budget=5, text_embeds=empty).indices, expected.indices)
    mask = torch.zeros(B, 0, dtype=torch.bool)
    again = pruner.prune(tokens, budget=5, text_embeds=empty, text_mask=mask)
    assert torch.equal(again.indices, expected.indices)
    inputs = validate_inputs(tokens, text_embeds=empty)
    assert inputs.text_embeds is None and inputs.text_mask is None
    assert not inputs.has_text.any()
