"""Every config error before any work (issue 13, item 3): ``prunekit ablate ... --dry-run`` and
:func:`prunekit.experiments.compose` refuse what would otherwise fail mid-sweep; a run that fails
at run time still leaves the summary of the runs that finished."""

from __future__ import annotations

import csv
import dataclasses
import inspect
import warnings
from pathlib import Path

import pytest
import torch

import prunekit
from prunekit.cli import main
from prunekit.core.pruner import TokenPruner
from prunekit.experiments import ConfigError, build_pruner, compose
from prunekit.experiments import schema as schema_module
from prunekit.registry import PluginLoadWarning, Registry


# -- pruners registered by the tests ---------------------------------------------------------
class NeedsK(TokenPruner):
    """A plugin pruner with a required parameter, written with a plain ``__init__``."""

    def __init__(self, k: int, scale: float = 1.0) -> None:
        self.k = k
        self.scale = scale

    def select(self, inputs, num_keep):
        raise NotImplementedError


@dataclasses.dataclass(repr=False)
class NeedsKField(TokenPruner):
    """The same with its hyperparameters declared as dataclass fields."""

    k: int
    scale: float = 1.0

    def select(self, inputs, num_keep):
        raise NotImplementedError


class Boom(TokenPruner):
    """A pruner that fails inside a run (at its first prune call)."""

    def select(self, inputs, num_keep):
        raise RuntimeError("boom inside select")


@pytest.fixture
def registry(monkeypatch):
    """A fresh process registry (plugins loaded) with the tests' pruners; Hydra's store cleaned after."""
    from hydra.core.config_store import ConfigStore

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PluginLoadWarning)
        fresh = Registry()
    added = {"needs_k": NeedsK, "needs_k_field": NeedsKField, "boom": Boom}
    for name, factory in added.items():
        fresh.add("pruner", name, factory)
    monkeypatch.setattr("prunekit.registry.registry._DEFAULT", fresh)
    yield fresh
    repo = ConfigStore.instance().repo
    for name in added:
        repo.get("pruner", {}).pop(f"{name}.yaml", None)
        repo.get("schema", {}).get("pruner", {}).pop(f"{name}.yaml", None)


def _ablate_error(tmp_path: Path, capsys, *overrides: str) -> str:
    """Run ``prunekit ablate OVERRIDES --dry-run``; it must exit 2 before writing anything."""
    out = tmp_path / "sweep"
    capsys.readouterr()
    assert main(["ablate", *overrides, "--out", str(out), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("prunekit: error: ") and len(err.strip().splitlines()) == 1
    assert not out.exists()
    return err


# -- required parameters ---------------------------------------------------------------------
@pytest.mark.parametrize("name", ["needs_k", "needs_k_field"])
def test_a_required_pruner_parameter_must_be_set(name, registry, tmp_path, capsys):
    assert registry.spec("pruner", name).parameters()["k"] is inspect.Parameter.empty
    err = _ablate_error(tmp_path, capsys, f"pruner={name}")
    assert f"pruner.k is required (pruner={name} has no default for it)" in err
    with pytest.raises(ConfigError, match=r"pruner\.k is required"):
        compose([f"pruner={name}"])
    # set, it reaches the pruner as the value given (not the string '???')
    pruner = build_pruner(compose([f"pruner={name}", "pruner.k=3"]))
    assert type(pruner) is registry.spec("pruner", name).factory
    assert pruner.k == 3 and pruner.scale == 1.0


# -- pruning point and layer -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["pruner=fastv"], "set adapter.llm_layer=K"),
        (["pruner=dart"], "set adapter.llm_layer=K"),
        (["pruner=visionzip"], "set adapter.before_projector=true"),
        (["pruner=vispruner"], "set adapter.before_projector=true"),
        (["pruner=visionzip", "adapter.llm_layer=1"], "prunes at 'in_llm'"),
        (["pruner=fastv", "adapter.before_projector=true"], "prunes at 'pre_projector'"),
        (
            ["pruner=fastv", "adapter.llm_layer=1", "adapter.before_projector=true"],
            "two different pruning points",
        ),
    ],
)
def test_a_pruner_at_a_pruning_point_it_is_not_defined_for(overrides, expected, tmp_path, capsys):
    err = _ablate_error(tmp_path, capsys, *overrides)
    assert expected in err


@pytest.mark.parametrize(
    "overrides",
    [
        ["pruner=fastv", "adapter.llm_layer=1"],
        ["pruner=dart", "adapter.llm_layer=1"],
        ["pruner=visionzip", "adapter.before_projector=true"],
        ["pruner=vispruner", "adapter.before_projector=true"],
        ["pruner=resprune", "adapter.llm_layer=1"],
    ],
)
def test_a_pruner_at_its_own_pruning_point_composes(overrides):
    cfg = compose(overrides)
    points = build_pruner(cfg).pruning_points
    point = "in_llm" if cfg.adapter.llm_layer is not None else "pre_projector"
    assert points is None or point in points


def test_llm_layer_is_checked_against_the_models_decoder_layers_like_the_adapter():
    """Composition accepts exactly the llm_layer values the adapter accepts on the loaded model."""
    from prunekit.adapters.attach import find_adapter
    from prunekit.models.tiny import load

    for num_layers in (2, 3):
        model, _ = load(num_layers=num_layers)
        for k in range(0, num_layers + 2):
            try:
                find_adapter(model)(model, llm_layer=k)
                adapter_accepts = True
            except ValueError:
                adapter_accepts = False
            overrides = [f"model.loader.num_layers={num_layers}", f"adapter.llm_layer={k}"]
            try:
                compose(overrides)
                config_accepts = True
            except ConfigError as exc:
                assert "adapter.llm_layer must be" in str(exc)
                config_accepts = False
            assert config_accepts == adapter_accepts, (num_layers, k)
    assert adapter_accepts is False  # the loop ended past the last layer


def test_llm_layer_99_and_minillava_without_loading_it(tmp_path, capsys):
    err = _ablate_error(tmp_path, capsys, "adapter.llm_layer=99")
    assert "adapter.llm_layer must be in [1, 1]" in err and "2 decoder layers" in err
    err = _ablate_error(tmp_path, capsys, "model=minillava", "adapter.llm_layer=30")
    assert "adapter.llm_layer must be in [1, 29]" in err
    assert compose(["model=minillava", "adapter.llm_layer=29"]).adapter.llm_layer == 29


def test_a_model_without_llm_layers_is_checked_on_the_loaded_model_before_any_run(tmp_path, capsys):
    out = tmp_path / "sweep"
    args = ["ablate", "model.llm_layers=null", "adapter.llm_layer=1,99", "data=tiny"]
    assert main([*args, "data.n_samples=2", "bench.progress=false", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "run model.llm_layers=null adapter.llm_layer=99 data=tiny" in err
    assert "llm_layer must be in [1, 1]" in err
    assert not out.exists()  # not even the valid run (adapter.llm_layer=1) started


# -- value ranges --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["data.n_samples=0"], "data.n_samples must be >= 1, got 0"),
        (["data.n_samples=-3"], "data.n_samples must be >= 1, got -3"),
        (["data=tiny", "data.n_samples=0"], "data.n_samples must be >= 1, got 0"),
        (["data=shapes", "data.n_images=0"], "data.n_images must be >= 1, got 0"),
        (["data=shapes", "data.per_kind=0"], "data.per_kind must be >= 1, got 0"),
        (["data.split=val"], "data.split must be one of ['train', 'test'], got 'val'"),
        (["bench.batch_size=0"], "bench.batch_size must be >= 1, got 0"),
        (["bench.max_new_tokens=-1"], "bench.max_new_tokens must be >= 1, got -1"),
        (["adapter.llm_layer=0"], "adapter.llm_layer must be >= 1, got 0"),
        (["adapter.positions=orig"], "adapter.positions must be one of"),
        (["model.loader.image_size=60"], "model.loader.image_size must be a multiple of"),
        (["model.loader.num_layers=0"], "model.loader.num_layers must be >= 1, got 0"),
        (["model=minillava", "model.loader.image_size=100"], "must be >= 112, got 100"),
        (["model=minillava", "model.loader.image_size=150"], "must be a multiple of 14"),
        (["budget=16,32", "bench.batch_size=2,0"], "run budget=16 bench.batch_size=0: bench."),
    ],
)
def test_values_out_of_range_fail_at_composition(overrides, expected, tmp_path, capsys):
    assert expected in _ablate_error(tmp_path, capsys, *overrides)


def test_every_int_field_of_the_fixed_schemas_has_a_range():
    """A new int field of the fixed schemas must say its range (seeds take any int)."""
    schemas = [
        schema_module.AdapterConf,
        schema_module.BenchConf,
        schema_module.TinyLoaderConf,
        schema_module.MiniLlavaLoaderConf,
        schema_module.ModelConf,
        schema_module.TinyDataConf,
        schema_module.EasyVQAConf,
        schema_module.ShapesConf,
        schema_module.PrunekitConf,
    ]
    unbounded = []
    for schema in schemas:
        for f in dataclasses.fields(schema):
            if f.type in ("int", "Optional[int]") and f.name != "seed" and not f.metadata:
                unbounded.append(f"{schema.__name__}.{f.name}")
    assert unbounded == []
    assert dataclasses.fields(schema_module.BenchConf)[0].metadata["ge"] == 1


def test_the_defaults_and_valid_values_still_compose():
    cfg = compose(["bench.batch_size=1", "bench.max_new_tokens=1", "data.n_samples=1"])
    assert (cfg.bench.batch_size, cfg.bench.max_new_tokens, cfg.data.n_samples) == (1, 1, 1)
    assert compose(["model.loader.num_layers=4"]).model.llm_layers == 4  # follows the loader
    assert compose(["model=minillava", "model.loader.image_size=112"]).model.llm_layers == 30


# -- a parameter the chosen pruner does not have ---------------------------------------------
def test_a_parameter_of_another_pruner_names_the_pruners_that_have_it(tmp_path, capsys):
    registry = prunekit.get_registry()
    owners = [s.name for s in registry.specs("pruner") if "alpha" in s.parameters()]
    assert "resprune" in owners and "composed" not in owners
    for override in ("pruner.alpha=2", "+pruner.alpha=2"):
        err = _ablate_error(tmp_path, capsys, override)
        assert "unknown key 'pruner.alpha'" in err
        assert "pruner=composed has no parameter 'alpha'" in err
        assert (
            f"pruners with a parameter 'alpha': {', '.join(f'pruner={n}' for n in owners)}" in err
        )
        assert "with pruner=composed, relevance.alpha (" in err and "relevance=text" in err
    # a typo keeps its did-you-mean and gets no list
    err = _ablate_error(tmp_path, capsys, "pruner=resprune", "pruner.alpah=2")
    assert "Did you mean 'pruner.alpha'?" in err and "pruners with" not in err


# -- a run that fails at run time ------------------------------------------------------------
def test_a_failed_run_keeps_the_summary_of_the_others_and_exits_non_zero(
    registry, tmp_path, capsys
):
    out = tmp_path / "sweep"
    args = ["ablate", "pruner=resprune,boom", "budget=16", "data=tiny", "data.n_samples=2"]
    code = main([*args, "bench.progress=false", "bench.loyalty=false", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 1
    # the failed run: one line with its overrides and the error
    failed = [line for line in captured.err.splitlines() if "run failed" in line]
    assert failed == [
        "prunekit: error: run failed: pruner=boom budget=16 data=tiny data.n_samples=2 "
        "bench.progress=False bench.loyalty=False: RuntimeError: boom inside select"
    ]
    assert "Traceback" not in captured.err
    boom_dir = out / "bench.loyalty=False,budget=16,data.n_samples=2,data=tiny,pruner=boom"
    assert not (boom_dir / "result.json").exists()
    assert "boom inside select" in (boom_dir / "failure.json").read_text()
    # the summary of the run that finished
    with (out / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["run"] for r in rows] == [
        "bench.loyalty=False,budget=16,data.n_samples=2,data=tiny,pruner=resprune"
    ]
    assert rows[0]["n"] == "2"
    markdown = (out / "summary.md").read_text()
    assert "Failed (not in the table):" in markdown and "pruner=boom" in markdown
    assert "1 / 2 runs finished (1 now, 0 earlier), 1 failed" in captured.out
    # a rerun skips the finished run and reports the failed one again
    assert main([*args, "bench.progress=false", "bench.loyalty=false", "--out", str(out)]) == 1
    assert "[skip]" in capsys.readouterr().out


def test_boom_really_raises_outside_a_sweep():
    """The failing pruner fails in a plain prune call too (the sweep test's failure is real)."""
    with pytest.raises(RuntimeError, match="boom inside select"):
        Boom().prune(torch.randn(1, 8, 4), budget=2)


def test_runs_recorded_before_model_llm_layers_existed_still_count_as_finished(tmp_path):
    """``model.llm_layers`` is a check, not a result: a rerun does not redo older finished runs."""
    import json

    from prunekit.experiments.runner import finished_result, resolved_config

    config = resolved_config(compose(["data=tiny"]))
    assert config["model"]["llm_layers"] == 2
    older = json.loads(json.dumps(config))
    del older["model"]["llm_layers"]
    (tmp_path / "result.json").write_text(json.dumps({"config": older}))
    assert finished_result(tmp_path, config) is not None
    older["model"]["prompt"] = "other {question}"  # a key that changes results still counts
    (tmp_path / "result.json").write_text(json.dumps({"config": older}))
    assert finished_result(tmp_path, config) is None
