"""Hyperparameters as dataclass fields: checked types, named errors, readable reprs,
registry keys from the class, and the errors that name the argument (issue 13, items 6-7)."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
import warnings
from dataclasses import dataclass
from typing import Literal

import pytest
import torch

import prunekit
from prunekit import Picks, TokenPruner, hookimpl
from prunekit.core.errors import check_type, field_types
from prunekit.registry import PluginLoadWarning, Registry

# --------------------------------------------------------------------------- check_type


@pytest.mark.parametrize(
    ("value", "hint"),
    [
        (3, int),
        (3, float),  # an int is a float
        (2.5, float),
        (True, bool),
        ("max", str),
        (None, None),
        (None, float | None),
        (0.1, float | None),
        ("max", Literal["max", "mean"]),
        (torch.zeros(2), torch.Tensor | str | None),
        ("embedding_mean", torch.Tensor | str | None),
        ([1, 2], list[int]),  # generics: the container only
        ({"name": "text"}, typing.Mapping[str, typing.Any]),
        (object(), typing.Any),
    ],
)
def test_check_type_accepts(value, hint):
    assert check_type("x", value, hint) is value


@pytest.mark.parametrize(
    ("value", "hint", "error", "message"),
    [
        ("x", float, TypeError, "alpha must be a float, got str: 'x'"),
        (True, float, TypeError, "alpha must be a float, got bool: True"),  # bool is no number
        (True, int, TypeError, "alpha must be an int, got bool: True"),
        (2.0, int, TypeError, "alpha must be an int, got float: 2.0"),
        (1, bool, TypeError, "alpha must be a bool, got int: 1"),
        ("1GB", int, TypeError, "alpha must be an int, got str: '1GB'"),
        (None, float, TypeError, "alpha must be a float, got NoneType: None"),
        ("x", float | None, TypeError, "alpha must be a float or None, got str: 'x'"),
        (3, Literal["max", "mean"], TypeError, r"alpha must be one of \['max', 'mean'\], got int"),
        (
            "maxx",
            Literal["max", "mean"],
            ValueError,
            r"alpha must be one of \['max', 'mean'\], got 'maxx'. Did you mean 'max'\?",
        ),
        (3, torch.Tensor | str | None, TypeError, "alpha must be a Tensor, a str or None, got int"),
    ],
)
def test_check_type_names_the_argument(value, hint, error, message):
    with pytest.raises(error, match=f"^Owner: {message}"):
        check_type("alpha", value, hint, owner="Owner")


# --------------------------------------------------------------------------- the pruners

PRUNERS = prunekit.list_pruners()


@pytest.mark.parametrize("name", PRUNERS)
def test_every_pruner_is_a_dataclass_keyed_by_its_class(name):
    """The registry key comes from the class, and the repr names every hyperparameter."""
    spec = prunekit.get_registry().spec("pruner", name)
    pruner = prunekit.create_pruner(name)
    cls = type(pruner)
    assert dataclasses.is_dataclass(cls)
    assert cls.name == name
    params = spec.parameters()
    assert list(params) == [f.name for f in dataclasses.fields(cls) if f.init]
    expected = ", ".join(f"{k}={getattr(pruner, k)!r}" for k in params)
    if name != "composed":  # its strategies are built from their specs: the repr shows them
        assert repr(pruner) == f"{cls.__name__}({expected})"
    assert " object at 0x" not in repr(pruner)


def _wrong_value() -> object:
    """A value no annotation but ``Any`` accepts."""
    return types.SimpleNamespace(wrong=True)


@pytest.mark.parametrize(
    ("name", "field"),
    [
        (name, field)
        for name in PRUNERS
        for field, hint in field_types(
            type(prunekit.create_pruner(name))  # the class, whatever the factory
        ).items()
        if hint is not typing.Any
    ],
)
def test_every_hyperparameter_of_the_wrong_type_is_named(name, field):
    cls = type(prunekit.create_pruner(name))
    with pytest.raises(
        TypeError, match=f"^{cls.__name__}: {field} must be .*, got SimpleNamespace"
    ):
        prunekit.create_pruner(name, **{field: _wrong_value()})


def test_resprune_errors_name_the_argument():
    with pytest.raises(TypeError, match="^ResPrune: alpha must be a float, got str: 'x'$"):
        prunekit.create_pruner("resprune", alpha="x")
    with pytest.raises(TypeError, match="^ResPrune: max_gram_bytes must be an int, got str: '1GB'"):
        prunekit.create_pruner("resprune", max_gram_bytes="1GB")
    with pytest.raises(ValueError, match="method must be one of .* Did you mean 'rows'"):
        prunekit.create_pruner("resprune", method="row")
    with pytest.raises(ValueError, match="alpha must be finite and >= 0"):  # a value check
        prunekit.create_pruner("resprune", alpha=-1.0)
    # an int is a valid float; the value is kept as given
    assert prunekit.create_pruner("resprune", alpha=2).relevance.alpha == 2


def test_misspelled_keyword_gets_a_suggestion():
    with pytest.raises(
        TypeError, match=r"^pruner 'resprune' has no parameter 'alpah'\. Did you mean 'alpha'\?"
    ):
        prunekit.create_pruner("resprune", alpah=1)
    with pytest.raises(TypeError, match="Did you mean 'seed'"):
        prunekit.create_selection("random", sed=1)
    with pytest.raises(
        TypeError,
        match="no parameter 'zzz'. Its parameters: \\['tie_atol', 'method', 'max_matrix_bytes'\\]",
    ):
        prunekit.create_pruner("divprune", zzz=1)


def test_strategies_check_their_fields_too():
    with pytest.raises(TypeError, match="GreedyResidualSelection: max_gram_bytes must be an int"):
        prunekit.create_selection("greedy_residual", max_gram_bytes="1GB")
    with pytest.raises(TypeError, match="TextRelevance: alpha must be a float"):
        prunekit.create_relevance("text", alpha="2")
    with pytest.raises(TypeError, match="RandomSelection: seed must be an int, got bool"):
        prunekit.create_selection("random", seed=True)
    with pytest.raises(TypeError, match="ComposedPruner: relevance must be a str, a Mapping"):
        prunekit.create_pruner("composed", relevance=3)
    composed = prunekit.create_pruner("composed", relevance={"name": "text", "alpha": 2.0})
    assert repr(composed.relevance).startswith("TextRelevance(aggregation='max', alpha=2.0,")


# --------------------------------------------------------------------------- a plugin's pruner


@dataclass
class Shifted(TokenPruner):
    """Keeps the tokens with the largest ``first feature + shift``, ties to the lowest index."""

    name = "shifted"
    shift: float = 0.0
    mode: Literal["first", "last"] = "first"
    count: int | None = None

    def select(self, inputs, num_keep):
        key = (inputs.tokens[..., 0] + self.shift).masked_fill(~inputs.token_mask, -math.inf)
        order = torch.sort(key, dim=1, descending=True, stable=True).indices[:, :num_keep]
        return Picks(order=order)


def _plugin(**hooks) -> types.SimpleNamespace:
    return types.SimpleNamespace(**hooks)


def test_plugin_pruner_registered_by_class_with_checked_fields():
    @hookimpl
    def prunekit_register(registry):
        registry.add_pruner(Shifted)  # the key is Shifted.name

    registry = Registry(load_plugins=False)
    assert registry.register_plugin(_plugin(prunekit_register=prunekit_register), name="mine")
    spec = registry.spec("pruner", "shifted")
    assert spec.factory is Shifted and spec.plugin == "mine"
    assert spec.parameters() == {"shift": 0.0, "mode": "first", "count": None}
    pruner = registry.create("pruner", "shifted", shift=1, count=3)
    assert repr(pruner) == "Shifted(shift=1, mode='first', count=3)"
    tokens = torch.tensor([[[0.0], [3.0], [1.0], [2.0]]])
    assert pruner.prune(tokens, budget=2).indices.tolist() == [[1, 3]]
    with pytest.raises(TypeError, match="^Shifted: shift must be a float, got str: '1'"):
        registry.create("pruner", "shifted", shift="1")
    with pytest.raises(TypeError, match="^Shifted: count must be an int or None, got float"):
        registry.create("pruner", "shifted", count=2.0)
    with pytest.raises(ValueError, match="mode must be one of .* Did you mean 'last'"):
        registry.create("pruner", "shifted", mode="lsat")
    with pytest.raises(TypeError, match="no parameter 'shfit'. Did you mean 'shift'"):
        registry.create("pruner", "shifted", shfit=1.0)


def test_named_registration_still_works_and_a_nameless_class_is_refused():
    class Nameless(Shifted):
        name = ""

    registry = Registry(load_plugins=False)
    registry.add("pruner", "other_key", Shifted)  # the old form: the given name wins
    assert registry.spec("pruner", "other_key").factory is Shifted
    registry.add("pruner", Shifted)
    assert registry.names("pruner") == ["other_key", "shifted"]
    with pytest.raises(TypeError, match="factory.name.*Nameless.*add\\('pruner', \"my_name\""):
        registry.add("pruner", Nameless)


def test_old_style_pruner_gets_a_readable_repr():
    class OldStyle(TokenPruner):
        def __init__(self, k: int = 3) -> None:
            self.k = k
            self._cache = None

        def select(self, inputs, num_keep):
            return Picks(order=torch.arange(num_keep).expand(inputs.batch_size, -1))

    assert repr(OldStyle(k=5)) == "OldStyle(k=5)"


# --------------------------------------------------------------------------- plugins that register nothing


def _register_with_warnings(plugin, name):
    registry = Registry(load_plugins=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ok = registry.register_plugin(plugin, name=name)
    messages = [str(w.message) for w in caught if issubclass(w.category, PluginLoadWarning)]
    return registry, ok, messages


def test_misspelled_hook_gets_a_plugin_load_warning():
    @hookimpl
    def prunekit_regster(registry):
        registry.add_pruner(Shifted)

    registry, ok, messages = _register_with_warnings(
        _plugin(prunekit_regster=prunekit_regster), "typo"
    )
    assert not ok and "shifted" not in registry.names("pruner")
    assert messages == [
        "prunekit plugin 'typo' was skipped: it defines no @hookimpl prunekit_register(registry) "
        "function, so it registers nothing; found 'prunekit_regster', a misspelling?"
    ]
    assert "typo" in registry.failed_plugins


def test_unmarked_hook_and_empty_hook_get_a_plugin_load_warning():
    def prunekit_register(registry):  # no @hookimpl: pluggy never calls it
        registry.add_pruner(Shifted)

    _, ok, messages = _register_with_warnings(
        _plugin(prunekit_register=prunekit_register), "unmarked"
    )
    assert not ok
    assert messages == [
        "prunekit plugin 'unmarked' was skipped: its prunekit_register function is not marked "
        "@prunekit.hookimpl, so it registers nothing"
    ]

    @hookimpl
    def registers_nothing(registry):
        pass

    _, ok, messages = _register_with_warnings(_plugin(prunekit_register=registers_nothing), "empty")
    assert not ok
    assert messages == [
        "prunekit plugin 'empty' was skipped: its prunekit_register hook registered no component"
    ]


# --------------------------------------------------------------------------- select's return


class ReturnsAList(TokenPruner):
    def select(self, inputs, num_keep):
        return list(range(num_keep))


class ReturnsAListOrder(TokenPruner):
    def select(self, inputs, num_keep):
        return Picks(order=[list(range(num_keep))] * inputs.batch_size)


@pytest.mark.parametrize("cls", [ReturnsAList, ReturnsAListOrder])
def test_select_returning_a_list_is_a_named_type_error(cls):
    with pytest.raises(
        TypeError,
        match=rf"^{cls.__name__}\.select must return prunekit\.Picks\(order=\.\.\.\) with a "
        r"\(2, 3\) int64 tensor as order, got list$",
    ):
        cls().prune(torch.randn(2, 6, 4), budget=3)
