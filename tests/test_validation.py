"""Every bad input raises the documented error, naming the argument."""

from __future__ import annotations

import pytest
import torch

import prunekit

PRUNER = prunekit.create_pruner("resprune")
_GEN = torch.Generator().manual_seed(0)
X = torch.randn(2, 10, 4, generator=_GEN)
T = torch.randn(2, 3, 4, generator=_GEN)


def with_value(value, where=(0, 0, 0)):
    x = X.clone()
    x[where] = value
    return x


BAD = [
    # (description, kwargs, error, message pattern)
    ("tokens not a tensor", {"tokens": X.tolist()}, TypeError, "tokens must be a torch.Tensor"),
    ("tokens 2-D", {"tokens": X[0]}, ValueError, "tokens must be 3-D"),
    ("tokens 4-D", {"tokens": X[None]}, ValueError, "tokens must be 3-D"),
    ("tokens integer", {"tokens": X.long()}, TypeError, "tokens must be a floating-point"),
    ("empty batch", {"tokens": X[:0]}, ValueError, "tokens is empty"),
    ("no tokens", {"tokens": X[:, :0]}, ValueError, "tokens is empty"),
    ("no features", {"tokens": X[..., :0]}, ValueError, "tokens is empty"),
    ("NaN token", {"tokens": with_value(float("nan"))}, ValueError, "tokens contains NaN or Inf"),
    ("Inf token", {"tokens": with_value(float("inf"), (1, 3, 2))}, ValueError, "sample 1, row 3"),
    ("int budget 0", {"budget": 0}, ValueError, "budget"),
    ("float budget 0", {"budget": 0.0}, ValueError, "budget"),
    ("float budget > 1", {"budget": 1.01}, ValueError, "budget"),
    ("bool budget", {"budget": True}, TypeError, "budget"),
    ("text 2-D", {"text_embeds": T[0]}, ValueError, "text_embeds must be 3-D"),
    ("text wrong batch", {"text_embeds": T[:1]}, ValueError, "text_embeds must have shape"),
    (
        "text wrong width",
        {"text_embeds": torch.randn(2, 3, 5)},
        ValueError,
        "text_embeds must have shape",
    ),
    ("text integer", {"text_embeds": T.long()}, TypeError, "text_embeds must be a floating-point"),
    (
        "text NaN",
        {
            "text_embeds": T.index_put(
                (torch.tensor([1]), torch.tensor([2]), torch.tensor([0])),
                torch.tensor(float("nan")),
            )
        },
        ValueError,
        "text_embeds contains NaN",
    ),
    (
        "text_mask without text",
        {"text_mask": torch.ones(2, 3, dtype=torch.bool)},
        ValueError,
        "text_mask was given without text_embeds",
    ),
    (
        "text_mask wrong shape",
        {"text_embeds": T, "text_mask": torch.ones(2, 4, dtype=torch.bool)},
        ValueError,
        "text_mask must have shape",
    ),
    (
        "text_mask not bool",
        {"text_embeds": T, "text_mask": torch.ones(2, 3)},
        TypeError,
        "text_mask must be a bool",
    ),
    (
        "token_mask wrong shape",
        {"token_mask": torch.ones(2, 9, dtype=torch.bool)},
        ValueError,
        "token_mask must have shape",
    ),
    (
        "token_mask not bool",
        {"token_mask": torch.ones(2, 10, dtype=torch.int64)},
        TypeError,
        "token_mask must be a bool",
    ),
    (
        "token_mask empties a sample",
        {"token_mask": torch.tensor([[True] * 10, [False] * 10])},
        ValueError,
        "token_mask leaves sample 1 with no valid token",
    ),
]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"), [b[1:] for b in BAD], ids=[b[0] for b in BAD]
)
def test_bad_input_raises(kwargs, error, match):
    call = {"tokens": X, "budget": 3, **kwargs}
    tokens = call.pop("tokens")
    with pytest.raises(error, match=match):
        PRUNER.prune(tokens, **call)


def test_nan_in_padding_is_allowed():
    """Values of padded rows are never read, so they are not validated either."""
    x = X.clone()
    x[1, 8:] = float("nan")
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[1, 8:] = False
    result = PRUNER.prune(x, budget=3, token_mask=mask)
    assert not result.mask[1, 8:].any()


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (
            lambda: prunekit.create_pruner("resprun"),
            "unknown pruner 'resprun'. Did you mean 'resprune'",
        ),
        (lambda: prunekit.create_relevance("txt"), "unknown relevance 'txt'. Did you mean 'text'"),
        (
            lambda: prunekit.create_selection("topK"),
            "unknown selection 'topK'. Did you mean 'topk'",
        ),
        (lambda: prunekit.create_selection("greedy"), "Did you mean 'greedy_residual'"),
        (
            lambda: prunekit.create_pruner("composed", relevance="nonee"),
            "unknown relevance 'nonee'. Did you mean 'none'",
        ),
        (lambda: prunekit.create_pruner("composed", selection={"alpha": 1}), "needs a 'name' key"),
    ],
)
def test_unknown_names_suggest(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_wrong_strategy_type():
    with pytest.raises(TypeError, match="relevance must be .*RelevanceStrategy, got int") as info:
        prunekit.create_pruner("composed", relevance=3)
    assert "SelectionStrategy" not in str(info.value)  # a selection is no relevance
    with pytest.raises(TypeError, match="no parameter 'alpah'. Did you mean 'alpha'"):
        prunekit.create_pruner("resprune", alpah=1.0)


class NeedsAttention(prunekit.TokenPruner):
    """Keeps the tokens with the most [CLS] attention (head mean)."""

    required_signals = frozenset({"cls_attention"})

    def select(self, inputs, num_keep):
        scores = inputs.signals["cls_attention"].mean(dim=1).masked_fill(~inputs.token_mask, -1)
        return prunekit.Picks(order=scores.argsort(dim=1, descending=True)[:, :num_keep])


def test_signals_reach_the_pruner():
    attention = torch.tensor([[[0.1, 0.5, 0.2, 0.0, 0.9, 0.3, 0.0, 0.0, 0.0, 0.0]]]).expand(
        2, 3, -1
    )
    result = NeedsAttention().prune(X, budget=2, signals={"cls_attention": attention})
    assert result.indices.tolist() == [[1, 4], [1, 4]]


@pytest.mark.parametrize(
    ("signals", "error", "match"),
    [
        (None, ValueError, r"needs the signals \['cls_attention'\]"),
        ({"other": torch.zeros(2, 10)}, ValueError, r"needs the signals \['cls_attention'\]"),
        (
            {"cls_attention": torch.zeros(3, 1, 10)},
            ValueError,
            r"signals\['cls_attention'\] must have the batch size 2",
        ),
        ({"cls_attention": [0.0]}, TypeError, r"signals\['cls_attention'\] must be a torch.Tensor"),
        ([("cls_attention", torch.zeros(2, 10))], TypeError, "signals must be a mapping"),
    ],
)
def test_bad_signals(signals, error, match):
    with pytest.raises(error, match=match):
        NeedsAttention().prune(X, budget=2, signals=signals)


def test_per_token_signal_must_span_the_tokens():
    with pytest.raises(
        ValueError, match=r"signals\['cls_attention'\] must have shape \(B, H, N\) with N = 10"
    ):
        NeedsAttention().prune(X, budget=2, signals={"cls_attention": torch.zeros(2, 3, 9)})
