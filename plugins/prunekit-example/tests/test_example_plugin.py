"""Tests of the example plugin: the shared contract, the method itself, the entry point."""

from __future__ import annotations

import pytest
import torch

import prunekit
from prunekit.testing import PrunerContract
from prunekit_example import NormTopK


# (a) Every contract test prunekit runs on its own pruners, on ours.
class TestNormTopK(PrunerContract):
    pruner = "norm_topk"


class TestNormTopKSmallestL1(PrunerContract):
    pruner = NormTopK
    kwargs = {"p": 1.0, "largest": False}


# (b) The defining computation, on inputs worked out by hand.
# Token norms: L2 = 5, 1, 5, sqrt(8) ~ 2.83, 0;  L1 = 7, 1, 5, 4, 0.
TOKENS = torch.tensor([[[3.0, 4.0], [1.0, 0.0], [0.0, -5.0], [2.0, 2.0], [0.0, 0.0]]])


@pytest.mark.parametrize(
    "kwargs, budget, kept",
    [
        ({}, 1, [0]),  # norms 5 and 5 tie: the lower index wins
        ({}, 2, [0, 2]),
        ({}, 3, [0, 2, 3]),
        ({}, 0.8, [0, 1, 2, 3]),  # 0.8 * 5 = 4 tokens: only the zero token goes
        ({"p": 1.0}, 1, [0]),
        ({"p": 1.0}, 3, [0, 2, 3]),
        ({"p": float("inf")}, 2, [0, 2]),  # max |x|: 4, 1, 5, 2, 0
        ({"p": float("inf")}, 1, [2]),
        ({"largest": False}, 2, [1, 4]),
    ],
)
def test_keeps_the_largest_norms(kwargs, budget, kept):
    result = prunekit.create_pruner("norm_topk", **kwargs).prune(TOKENS, budget=budget)
    assert result.indices.tolist() == [kept]


def test_scores_are_the_norms_and_padding_is_skipped():
    mask = torch.tensor([[False, True, True, True, True]])  # token 0 (norm 5) is padding
    result = NormTopK().prune(TOKENS, budget=2, token_mask=mask)
    assert result.indices.tolist() == [[2, 3]]
    torch.testing.assert_close(result.scores, torch.tensor([[5.0, 1.0, 5.0, 8**0.5, 0.0]]))


def test_rejects_a_bad_norm_order():
    with pytest.raises(ValueError, match="p must be > 0"):
        NormTopK(p=0)
    with pytest.raises(TypeError, match="p must be a float, got str"):  # from the field's type
        prunekit.create_pruner("norm_topk", p="2")
    with pytest.raises(TypeError, match="Did you mean 'largest'"):
        prunekit.create_pruner("norm_topk", larger=False)


def test_repr_names_the_hyperparameters():
    assert repr(NormTopK(p=1.0)) == "NormTopK(p=1.0, largest=True)"


# (c) Found through the entry point, like any installed plugin.
def test_registered_through_the_entry_point():
    from importlib.metadata import entry_points

    assert "norm_topk" in prunekit.list_pruners()
    spec = prunekit.get_registry().spec("pruner", "norm_topk")
    assert spec.plugin == "example" and spec.factory is NormTopK
    (entry_point,) = [ep for ep in entry_points(group="prunekit") if ep.name == "example"]
    assert entry_point.value == "prunekit_example.plugin"
    assert "example" not in prunekit.get_registry().failed_plugins
    assert isinstance(prunekit.create_pruner("norm_topk", p=1.0), NormTopK)
