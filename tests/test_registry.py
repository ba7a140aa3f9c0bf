"""The pluggy registry: listing, creation, entry points, duplicates and broken plugins."""

from __future__ import annotations

import re
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch

import prunekit
from prunekit.registry import PluginLoadWarning, Registry


def test_builtin_components_listed():
    assert "resprune" in prunekit.list_pruners()
    assert set(prunekit.list_relevances()) >= {"none", "text"}
    assert set(prunekit.list_selections()) >= {"greedy_residual", "topk", "random"}
    assert set(prunekit.list_noun_extractors()) >= {"heuristic", "spacy"}


def test_wildcards():
    assert prunekit.list_pruners("res*") == ["resprune"]
    assert prunekit.list_selections("*resid*") == ["greedy_residual"]
    assert prunekit.list_pruners("nothing*") == []


def test_builtins_come_from_the_builtin_plugin():
    registry = prunekit.get_registry()
    assert registry.spec("pruner", "resprune").plugin == "builtin"
    assert registry.plugin_manager.has_plugin("builtin")


def test_create_passes_kwargs():
    pruner = prunekit.create_pruner("resprune", alpha=2.5, aggregation="pooled")
    assert isinstance(pruner, prunekit.ResPrune)
    assert pruner.relevance.alpha == 2.5
    assert prunekit.create_selection("random", seed=4).seed == 4


def test_direct_duplicate_is_rejected():
    registry = Registry()
    with pytest.raises(ValueError, match="'resprune' is already registered by plugin 'builtin'"):
        registry.add("pruner", "resprune", prunekit.ResPrune)


def test_bad_kind_and_name():
    registry = Registry(load_plugins=False)
    with pytest.raises(ValueError, match="kind must be one of .* Did you mean 'pruner'"):
        registry.add("pruners", "x", prunekit.ResPrune)
    with pytest.raises(ValueError, match="without wildcards"):
        registry.add("pruner", "x*", prunekit.ResPrune)
    with pytest.raises(TypeError, match="must be callable"):
        registry.add("pruner", "x", 3)


PLUGIN_SOURCES = {
    "pk_good_plugin.py": """
        import torch
        from prunekit import Picks, TokenPruner, hookimpl

        class LastTokens(TokenPruner):
            '''Keeps the last valid tokens (a toy third-party pruner).'''
            name = "last_tokens"
            def select(self, inputs, num_keep):
                positions = torch.arange(inputs.num_tokens).expand(inputs.batch_size, -1)
                keys = torch.where(inputs.token_mask, positions, -1)
                return Picks(order=keys.argsort(dim=1, descending=True)[:, :num_keep])

        @hookimpl
        def prunekit_register(registry):
            registry.add_pruner("last_tokens", LastTokens)
    """,
    "pk_broken_plugin.py": """
        raise ImportError("this plugin needs a package that is not installed")
    """,
    "pk_dup_plugin.py": """
        from prunekit import ResPrune, hookimpl

        @hookimpl
        def prunekit_register(registry):
            registry.add_pruner("dup_first_ok", ResPrune)
            registry.add_pruner("resprune", ResPrune)
    """,
    "pk_bad_hook_plugin.py": """
        from prunekit import hookimpl

        @hookimpl
        def prunekit_register(registry, extra_argument):
            pass
    """,
    "pk_typo_plugin.py": """
        from prunekit import ResPrune, hookimpl

        @hookimpl
        def prunekit_regster(registry):  # misspelled: pluggy never calls it
            registry.add_pruner("typo_resprune", ResPrune)
    """,
}

ENTRY_POINTS = """
[prunekit]
good = pk_good_plugin
broken = pk_broken_plugin
dup = pk_dup_plugin
badhook = pk_bad_hook_plugin
typo = pk_typo_plugin
"""


@pytest.fixture
def plugin_dist(tmp_path, monkeypatch):
    """Install fake plugin distributions the way pip would: modules plus a dist-info with entry points."""
    for filename, source in PLUGIN_SOURCES.items():
        (tmp_path / filename).write_text(textwrap.dedent(source))
    info = tmp_path / "pk_test_plugins-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: pk-test-plugins\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in PLUGIN_SOURCES:
        sys.modules.pop(name.removesuffix(".py"), None)


def test_entry_point_plugins(plugin_dist):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        registry = Registry()
    messages = [str(w.message) for w in caught if issubclass(w.category, PluginLoadWarning)]

    # the good third-party plugin works end to end
    assert "last_tokens" in registry.names("pruner")
    assert registry.spec("pruner", "last_tokens").plugin == "good"
    pruner = registry.create("pruner", "last_tokens")
    result = pruner.prune(torch.randn(2, 6, 3), budget=2)
    assert result.indices.tolist() == [[4, 5], [4, 5]]

    # broken ones are reported by name and skipped; the builtins still work
    assert set(registry.failed_plugins) == {"broken", "dup", "badhook", "typo"}
    assert "found 'prunekit_regster', a misspelling?" in registry.failed_plugins["typo"]
    assert any("'typo' was skipped" in m for m in messages)
    assert "needs a package that is not installed" in registry.failed_plugins["broken"]
    assert "'resprune' is already registered by plugin 'builtin'" in registry.failed_plugins["dup"]
    assert any("'broken'" in m for m in messages) and any("'dup'" in m for m in messages)
    # a failing plugin registers nothing at all, not even its valid names
    assert "dup_first_ok" not in registry.names("pruner")
    assert registry.spec("pruner", "resprune").plugin == "builtin"
    assert isinstance(registry.create("pruner", "resprune"), prunekit.ResPrune)


def test_registry_parametrized_suite_picks_up_plugins(plugin_dist, monkeypatch):
    """A plugin's pruner runs through the same contract checks as the builtins."""
    from conftest import pruner_cases

    from prunekit.testing import check_pruner, registered_cases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PluginLoadWarning)
        registry = Registry()
    monkeypatch.setattr("prunekit.registry.registry._DEFAULT", registry)
    assert "last_tokens" in prunekit.list_pruners()
    assert ("last_tokens", {}) in pruner_cases()  # what the contract suites run over
    assert registered_cases(plugin="good") == [("last_tokens", {})]
    check_pruner("last_tokens", max_examples=10)


def test_plugins_guide_shows_the_example_plugin_files_verbatim():
    """Each ``code-block`` of docs/plugins.rst captioned with a path is that file, whole."""
    root = Path(__file__).resolve().parents[1]
    page = (root / "docs" / "plugins.rst").read_text(encoding="utf-8")
    blocks = re.findall(
        r"^\.\. code-block:: \w+\n   :caption: (\S+)\n\n((?:   .*\n|\n)+)", page, re.MULTILINE
    )
    shown = {path: textwrap.dedent(body).strip("\n") for path, body in blocks}
    files = ["pyproject.toml", "prunekit_example/__init__.py", "prunekit_example/plugin.py"]
    files += ["tests/test_example_plugin.py"]
    assert sorted(shown) == sorted(f"plugins/prunekit-example/{f}" for f in files)
    for path, body in shown.items():
        assert body == (root / path).read_text(encoding="utf-8").strip("\n"), f"{path} differs"


def test_a_pruner_declaring_an_unknown_pruning_point_is_refused():
    from dataclasses import dataclass
    from typing import ClassVar

    from prunekit.core.points import IN_LLM, PRE_LLM

    @dataclass
    class Misspelt(prunekit.TokenPruner):
        name = "misspelt"
        pruning_points: ClassVar[frozenset[str] | None] = frozenset({"pre-llm"})

        def select(self, inputs, num_keep):  # pragma: no cover - never built
            raise AssertionError

    registry = Registry(load_plugins=False)
    with pytest.raises(
        ValueError, match=r"pruner 'misspelt' .* 'pre-llm'\. Did you mean 'pre_llm'"
    ):
        registry.add("pruner", Misspelt)

    Misspelt.pruning_points = frozenset({PRE_LLM, IN_LLM})  # the constants register fine
    registry.add("pruner", Misspelt)
    assert registry.spec("pruner", "misspelt").factory is Misspelt


def test_every_registered_pruner_declares_known_points():
    from prunekit.core.points import PRUNING_POINTS

    registry = prunekit.get_registry()
    for name in registry.names("pruner"):
        points = getattr(registry.spec("pruner", name).factory, "pruning_points", None)
        assert points is None or set(points) <= PRUNING_POINTS, name


def test_two_adapters_matching_one_model_is_an_error_naming_both(monkeypatch):
    from tiny_models import tiny_llava

    from prunekit.adapters import find_adapter
    from prunekit.adapters.llava import LlavaAdapter

    class Rival(LlavaAdapter):
        family = "rival"
        name = "rival_llava"

    registry = prunekit.get_registry()
    model = tiny_llava()
    assert find_adapter(model) is LlavaAdapter
    registry.add("adapter", Rival, plugin="rival_plugin")
    try:
        with pytest.raises(
            TypeError,
            match=r"2 adapters match .*'llava'.*'rival_llava' \(plugin 'rival_plugin'\).*adapter=NAME",
        ):
            find_adapter(model)
    finally:
        del registry._specs["adapter"]["rival_llava"]
    assert find_adapter(model) is LlavaAdapter


def test_the_registry_imports_nothing_above_it():
    """The builtin components reach the registry from the package, not by an import by name."""
    from prunekit.registry import registry as registry_module
    from prunekit.registry.registry import BUILTIN_PLUGINS

    source = Path(registry_module.__file__).read_text()
    assert "prunekit.builtin" not in source.replace(":mod:`prunekit.builtin`", "")
    assert [name for name, _ in BUILTIN_PLUGINS] == ["builtin"]
