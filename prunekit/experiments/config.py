"""Compose, check and build: from command-line overrides to prunekit objects.

:func:`compose` turns overrides such as ``["pruner=resprune", "pruner.alpha=2",
"budget=64"]`` into the checked config (Hydra's Compose API over
:mod:`prunekit.conf`); :func:`build_pruner`, :func:`build_model`,
:func:`load_data` and :func:`attach_options` turn a config into the same
objects the Python API builds::

    cfg = compose(["pruner=composed", "relevance=text", "relevance.alpha=2", "selection=topk"])
    build_pruner(cfg)   # == prunekit.create_pruner("composed",
                        #        relevance={"name": "text", "alpha": 2.0}, selection="topk")

Every mistake in a config (unknown key, unknown option, wrong type, invalid
value) raises :class:`ConfigError`, whose message names the key and suggests
the closest valid one; nothing is loaded before the config is checked.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf

from prunekit.core.errors import did_you_mean
from prunekit.experiments.schema import COMPOSED_FROM_GROUPS, GROUPS, register_configs

#: the package holding the config groups
CONFIG_MODULE = "prunekit.conf"
#: the primary config (``prunekit/conf/config.yaml``)
CONFIG_NAME = "config"
#: the Hydra ``version_base`` prunekit composes with
VERSION_BASE = "1.3"


class ConfigError(ValueError):
    """A config that cannot run; the message says which key and what to write instead."""


def _run_name(override_dirname: str) -> str:
    return override_dirname or "default"


_REGISTERED = False


def setup() -> None:
    """Register prunekit's schemas (and its OmegaConf resolver) once per process."""
    global _REGISTERED
    if not _REGISTERED:
        OmegaConf.register_new_resolver("prunekit_run_name", _run_name, replace=True)
        register_configs()
        _REGISTERED = True


def search_path_override(config_dirs: Iterable[str]) -> list[str]:
    """The Hydra override adding the user's config folders (their groups extend prunekit's)."""
    import os

    dirs = [f"file://{os.path.abspath(d)}" for d in config_dirs]
    return [f"hydra.searchpath=[{','.join(dirs)}]"] if dirs else []


# -- overrides ------------------------------------------------------------------------
def override_key(override: str) -> str:
    """The key (or group) an override sets: ``'+pruner.alpha=2'`` -> ``'pruner.alpha'``."""
    key = override.split("=", 1)[0].lstrip("+~")
    return key.split("@", 1)[0]


def task_overrides(overrides: Sequence[str]) -> list[str]:
    """``overrides`` without those of Hydra's own config (``hydra.*``, ``hydra/...``)."""
    return [o for o in overrides if not override_key(o).startswith("hydra")]


def expand_sweep(overrides: Sequence[str]) -> list[list[str]]:
    """The runs of a grid sweep, as Hydra's basic sweeper expands them (one override list each)."""
    import itertools

    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    loader = (
        GlobalHydra.instance().config_loader() if GlobalHydra.instance().is_initialized() else None
    )
    parsed = OverridesParser.create(config_loader=loader).parse_overrides(list(overrides))
    axes: dict[str, list[str]] = {}
    for override in parsed:
        key = override.get_key_element()
        if override.is_sweep_override():
            if not override.is_discrete_sweep():
                raise ConfigError(
                    f"'{override.input_line}': only lists, choice(), range() and glob() sweeps "
                    "run on the basic sweeper"
                )
            axes[key] = [f"{key}={v}" for v in override.sweep_string_iterator()]
        else:
            axes[key] = [f"{key}={override.get_value_element_as_str()}"]
    return [list(run) for run in itertools.product(*axes.values())]


# -- composition ----------------------------------------------------------------------
def compose(
    overrides: Sequence[str] = (),
    *,
    return_hydra_config: bool = False,
    config_dirs: Sequence[str] = (),
) -> DictConfig:
    """The checked config for ``overrides`` (no sweep syntax); raises :class:`ConfigError`."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    setup()
    overrides = [*overrides, *search_path_override(config_dirs)]
    with initialize_config_module(CONFIG_MODULE, version_base=VERSION_BASE):
        return _compose_checked(hydra_compose, overrides, return_hydra_config)


def compose_sweep(
    overrides: Sequence[str], *, config_dirs: Sequence[str] = ()
) -> list[tuple[list[str], DictConfig]]:
    """Every run of a sweep, composed and checked (with its Hydra config), before any runs."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.errors import HydraException

    setup()
    extra = search_path_override(config_dirs)
    with initialize_config_module(CONFIG_MODULE, version_base=VERSION_BASE):
        try:
            runs = expand_sweep(list(overrides))
        except HydraException as exc:
            raise ConfigError(explain(exc, list(overrides))) from None
        return [(run, _compose_checked(hydra_compose, [*run, *extra], True)) for run in runs]


def _compose_checked(hydra_compose: Any, overrides: list[str], with_hydra: bool) -> DictConfig:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        cfg = hydra_compose(CONFIG_NAME, overrides=overrides, return_hydra_config=with_hydra)
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(explain(exc, overrides, hydra_compose)) from None
    return finalize(cfg, overrides)


# -- checks after composition -----------------------------------------------------------
def _check_typed_keys(node: Any, path: str = "") -> None:
    """Keys added with '+' to a schema'd node are unknown keys too."""
    if not isinstance(node, DictConfig):
        return
    schema = OmegaConf.get_type(node)
    for key in node:
        full = f"{path}.{key}" if path else str(key)
        if key == "hydra" and not path:
            continue
        if dataclasses.is_dataclass(schema):
            names = [f.name for f in dataclasses.fields(schema)]
            if key not in names:
                raise ConfigError(f"unknown key '{full}'.{_suggest(str(key), names, path)}")
        _check_typed_keys(node._get_node(key), full)


def _suggest(key: str, choices: Iterable[str], prefix: str = "") -> str:
    choices = list(choices)
    hint = did_you_mean(key, choices)
    if hint and prefix:
        close = hint.split("'")[1]
        return f" Did you mean '{prefix}.{close}'?"
    return hint


def finalize(cfg: DictConfig, overrides: Sequence[str]) -> DictConfig:
    """Checks Hydra cannot make: schema'd keys, pruner x strategy groups, budget, device, pruner arguments."""
    from prunekit.core.budget import check_budget
    from prunekit.core.errors import check_choice

    _check_typed_keys(cfg)
    pruner = cfg.pruner.name
    if pruner != "composed":
        for group in COMPOSED_FROM_GROUPS:
            explicit = [o for o in overrides if override_key(o).split(".")[0] == group]
            if explicit:
                raise ConfigError(
                    f"'{explicit[0]}' applies to pruner=composed only; pruner={pruner} has its "
                    f"own parameters (pruner.<key>=..., see `prunekit list {pruner}`)"
                )
            cfg[group] = None
    try:
        check_budget(cfg.budget)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"budget: {exc}") from None
    try:
        check_choice("adapter.positions", cfg.adapter.positions, ("contiguous", "original"))
        resolve_device(cfg.device)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    try:
        build_pruner(cfg)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"pruner={pruner}: {exc}") from None
    return cfg


def resolve_device(device: str) -> Any:
    """The ``torch.device`` of a ``device`` config value (``auto``: CUDA when available, else CPU)."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError:
        raise ValueError(f"device must be cpu, cuda, cuda:N or auto, got {device!r}") from None


# -- error messages ---------------------------------------------------------------------
_FULL_KEY = re.compile(r"full_key: (\S+)")
_NOT_FOUND = re.compile(r"Could not find '([^']+)'")
_COULD_NOT_OVERRIDE = re.compile(r"Could not override '([^']+)'")


def explain(exc: BaseException, overrides: Sequence[str], hydra_compose: Any = None) -> str:
    """A one-line message naming the key at fault and the closest valid key or option."""
    from hydra.errors import MissingConfigException, OverrideParseException
    from omegaconf.errors import ValidationError

    text = str(exc)
    cause = exc.__cause__ or exc.__context__
    if isinstance(exc, OverrideParseException):
        return f"cannot parse override: {text.splitlines()[0]}"
    if isinstance(exc, MissingConfigException) or _NOT_FOUND.search(text):
        match = _NOT_FOUND.search(text)
        missing = match.group(1) if match else text
        group, _, option = missing.rpartition("/")
        options = re.findall(r"^\t(\S+)$", text, flags=re.M)
        options = [o for o in options if not o.startswith("schema")]
        if group:
            hint = (
                " (launchers are Hydra plugins: pip install hydra-submitit-launcher for "
                "submitit_slurm / submitit_local, hydra-ray-launcher for ray, "
                "hydra-joblib-launcher for joblib)"
                if group == "hydra/launcher"
                else ""
            )
            return (
                f"unknown option '{option}' for config group '{group}'."
                f"{did_you_mean(option, options)} Options: {', '.join(options)}{hint}"
            )
        return f"config '{missing}' not found"
    if isinstance(cause, ValidationError) or isinstance(exc, ValidationError):
        err = cause if isinstance(cause, ValidationError) else exc
        key = _FULL_KEY.search(str(err))
        first = str(err).splitlines()[0]
        return f"wrong type for '{key.group(1) if key else '?'}': {first}"
    match = _COULD_NOT_OVERRIDE.search(text) or _FULL_KEY.search(str(cause or ""))
    if match:
        key = match.group(1)
        if "No match in the defaults list" in text:
            return f"unknown config group '{key}'.{did_you_mean(key, GROUPS)}"
        parent, _, leaf = key.rpartition(".")
        return f"unknown key '{key}'.{_suggest(leaf, _keys_at(parent, overrides, hydra_compose), parent)}"
    return text.splitlines()[0] if text else type(exc).__name__


def _keys_at(path: str, overrides: Sequence[str], hydra_compose: Any) -> list[str]:
    """The valid keys at ``path`` of the config the group choices in ``overrides`` compose."""
    if hydra_compose is None:
        return list(GROUPS) if not path else []
    # the group choices (and the search path) of the failing command, without its other overrides
    keep = [
        o
        for o in overrides
        if not o.startswith(("+", "~"))
        and (override_key(o) in GROUPS or override_key(o) == "hydra.searchpath")
    ]
    try:
        base = hydra_compose(CONFIG_NAME, overrides=keep)
    except Exception:
        base = hydra_compose(CONFIG_NAME, overrides=[])
    node = OmegaConf.select(base, path) if path else base
    return [str(k) for k in node] if isinstance(node, DictConfig) else []


# -- building objects ------------------------------------------------------------------
def _plain(node: Any) -> Any:
    if isinstance(node, DictConfig):
        return OmegaConf.to_container(node, resolve=True)
    return dict(node) if isinstance(node, Mapping) else node


def build_pruner(cfg: DictConfig | Mapping[str, Any]) -> Any:
    """The pruner of ``cfg``, built through the registry exactly as the Python API builds it."""
    from prunekit import create_pruner

    params = dict(_plain(cfg["pruner"]))
    name = params.pop("name")
    if name == "composed":
        return create_pruner(
            "composed", relevance=_plain(cfg["relevance"]), selection=_plain(cfg["selection"])
        )
    return create_pruner(name, **params)


#: the last model built, reused by the next run of a sweep with the same loader and device
_LAST_MODEL: dict[str, tuple[Any, Any]] = {}


def build_model(cfg: DictConfig) -> tuple[Any, Any]:
    """``(model, processor)`` from the model group's ``loader`` (``_target_``), on ``cfg.device``, eval mode.

    The last model built is kept and returned again for the same loader config and
    device: the runs of a sweep run in one process load it once. Sharing is safe because
    :func:`prunekit.attach` leaves the model as it found it.
    """
    from hydra.utils import instantiate

    key = json.dumps(
        {"loader": _plain(cfg.model.loader), "device": str(cfg.device)}, sort_keys=True
    )
    if key in _LAST_MODEL:
        return _LAST_MODEL[key]
    _LAST_MODEL.clear()
    model, processor = instantiate(cfg.model.loader)
    model = model.to(resolve_device(cfg.device)).eval()
    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is not None and hasattr(tokenizer, "padding_side"):
        tokenizer.padding_side = "left"  # batched generation
    _LAST_MODEL[key] = (model, processor)
    return model, processor


def load_data(cfg: DictConfig) -> Any:
    """The :class:`~prunekit.experiments.datasets.VQADataset` of the data group."""
    from hydra.utils import instantiate

    node = _plain(cfg.data)
    node.pop("name", None)
    return instantiate(node)


def attach_options(cfg: DictConfig, processor: Any) -> dict[str, Any]:
    """The keyword options for :func:`prunekit.attach` (only those that differ from the defaults)."""
    adapter = cfg.adapter
    options: dict[str, Any] = {}
    if adapter.tokenizer and getattr(processor, "tokenizer", None) is not None:
        options["tokenizer"] = processor.tokenizer
    if adapter.positions != "contiguous":
        options["positions"] = adapter.positions
    if adapter.llm_layer is not None:
        options["llm_layer"] = adapter.llm_layer
    if adapter.before_projector:
        options["before_projector"] = True
    return options


def group_options(config_dirs: Sequence[str] = ()) -> dict[str, list[str]]:
    """The options of every config group (YAML files and registered components)."""
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    setup()
    with initialize_config_module(CONFIG_MODULE, version_base=VERSION_BASE):
        loader = GlobalHydra.instance().config_loader()
        extra = search_path_override(config_dirs)
        return {g: loader.get_group_options(g, overrides=extra) for g in GROUPS}
