"""Compose, check and build: from command-line overrides to prunekit objects.

:func:`compose` turns overrides such as ``["pruner=resprune", "pruner.alpha=2",
"budget=64"]`` into the checked config (Hydra's Compose API over
:mod:`prunekit.conf`); :func:`build_pruner`, :func:`build_model`,
:func:`load_data` and :func:`attach_options` turn a config into the same
objects the Python API builds::

    cfg = compose(["pruner=composed", "relevance=text", "relevance.alpha=2", "selection=topk"])
    build_pruner(cfg)   # == prunekit.create_pruner("composed",
                        #        relevance={"name": "text", "alpha": 2.0}, selection="topk")

Every mistake in a config (unknown key, unknown option, wrong type, a value
out of range, a required parameter not set, a pruner at a pruning point it is
not defined for) raises :class:`ConfigError`, whose message names the key and
suggests the closest valid one; nothing is loaded before the config is checked.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf

from prunekit.core.errors import did_you_mean
from prunekit.experiments.schema import (
    COMPONENT_GROUPS,
    COMPOSED_FROM_GROUPS,
    GROUPS,
    check_value,
    register_configs,
)

#: the package holding the config groups
CONFIG_MODULE = "prunekit.conf"
#: the primary config (``prunekit/conf/config.yaml``)
CONFIG_NAME = "config"
#: the Hydra ``version_base`` prunekit composes with
VERSION_BASE = "1.3"


class ConfigError(ValueError):
    """A config that cannot run; the message says which key and what to write instead."""


def _run_name(override_dirname: str) -> str:
    """A run's folder name: its overrides, one path component (``data.path=/a/b.jsonl``
    gets ``_`` for its slashes), shortened with a hash beyond 200 bytes (a file name's limit
    is 255)."""
    import hashlib

    name = (override_dirname or "default").replace("/", "_")
    if len(name.encode()) > 200:
        digest = hashlib.sha1(name.encode()).hexdigest()[:12]
        name = f"{name.encode()[:180].decode(errors='ignore')}~{digest}"
    return name


#: the registry contents whose schemas are in Hydra's ConfigStore (``None``: none yet)
_REGISTERED: tuple[Any, ...] | None = None


def setup() -> None:
    """Register prunekit's schemas (and its OmegaConf resolver); again when the registry changed.

    A component registered after the first composition (``registry.add(...)`` in a
    notebook or a test) is then a config option too.
    """
    global _REGISTERED
    from prunekit.registry import get_registry

    registry = get_registry()
    state = (id(registry), *((k, *registry.names(k)) for k in COMPONENT_GROUPS))
    if state != _REGISTERED:
        OmegaConf.register_new_resolver("prunekit_run_name", _run_name, replace=True)
        register_configs()
        _REGISTERED = state


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
        composed = []
        for run in runs:
            try:
                composed.append((run, _compose_checked(hydra_compose, [*run, *extra], True)))
            except ConfigError as exc:
                if len(runs) == 1:
                    raise
                raise ConfigError(f"run {' '.join(task_overrides(run))}: {exc}") from None
        return composed


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
    """Keys added with '+' to a schema'd node are unknown keys too; values within their fields' limits."""
    if not isinstance(node, DictConfig):
        return
    schema = OmegaConf.get_type(node)
    fields = (
        {f.name: f for f in dataclasses.fields(schema)} if dataclasses.is_dataclass(schema) else {}
    )
    for key in node:
        full = f"{path}.{key}" if path else str(key)
        if key == "hydra" and not path:
            continue
        if fields and key not in fields:
            raise ConfigError(
                f"unknown key '{full}'.{_suggest(str(key), fields, path)}"
                f"{_parameter_hint(path, str(key), node)}"
            )
        if key in fields and fields[key].metadata:
            try:
                check_value(full, node[key], fields[key].metadata)
            except (TypeError, ValueError) as exc:
                raise ConfigError(str(exc)) from None
        _check_typed_keys(node._get_node(key), full)
    check = getattr(schema, "check", None)
    if callable(check):
        try:
            check(node, path)
        except (TypeError, ValueError) as exc:
            raise ConfigError(str(exc)) from None


def _parameter_hint(group: str, key: str, node: Any = None) -> str:
    """For an unknown ``pruner.<key>``: the registered pruners (or strategies) that have ``key``."""
    from prunekit.registry import get_registry

    if group not in COMPONENT_GROUPS or key == "name":
        return ""
    registry = get_registry()
    current = node.get("name") if isinstance(node, DictConfig) else None
    hints = []
    owners = [s.name for s in registry.specs(group) if key in s.parameters() and s.name != current]
    if owners:
        options = ", ".join(f"{group}={name}" for name in owners)
        hints.append(f"{group}s with a parameter '{key}': {options}")
    if group == "pruner":
        for strategy in COMPOSED_FROM_GROUPS:
            names = [s.name for s in registry.specs(strategy) if key in s.parameters()]
            if names:
                options = ", ".join(f"{strategy}={name}" for name in names)
                hints.append(f"with pruner=composed, {strategy}.{key} ({options})")
    if not hints:
        return ""
    has = f" {group}={current} has no parameter '{key}';" if current else ""
    return f"{has} {'; '.join(hints)}."


def _missing_keys(node: Any, path: str = "") -> list[str]:
    """Keys left ``???`` under ``node``, found without resolving interpolations (a key that
    interpolates a missing one, e.g. ``model.loader.path: ${..path}``, is not reported twice)."""
    from omegaconf import ListConfig

    found = []
    for key in node if isinstance(node, DictConfig) else range(len(node)):
        full = f"{path}.{key}" if path else str(key)
        if not path and key == "hydra":
            continue
        if OmegaConf.is_missing(node, key):
            found.append(full)
            continue
        child = node._get_node(key)
        if isinstance(child, (DictConfig, ListConfig)) and not child._is_none():
            found.extend(_missing_keys(child, full))
    return found


def _check_required(cfg: DictConfig) -> None:
    """Every value left ``???`` (a parameter without a default) must be set."""
    missing = sorted(_missing_keys(cfg))
    if not missing:
        return
    group = missing[0].split(".")[0]
    owner = ""
    if group in COMPONENT_GROUPS and isinstance(cfg.get(group), DictConfig):
        owner = f" ({group}={cfg[group].name} has no default for it)"
    verb = "is" if len(missing) == 1 else "are"
    raise ConfigError(
        f"{' and '.join(missing)} {verb} required{owner}: add "
        f"{' '.join(f'{k}=VALUE' for k in missing)}"
    )


def _check_pruning_point(cfg: DictConfig, pruner: Any) -> None:
    """The adapter options pick a pruning point the pruner is defined for, and a layer the model has."""
    from prunekit.core.points import IN_LLM, PRE_LLM, PRE_PROJECTOR

    adapter = cfg.adapter
    if adapter.llm_layer is not None and adapter.before_projector:
        raise ConfigError(
            "adapter.llm_layer and adapter.before_projector are two different pruning points; "
            "set one of them"
        )
    point = (
        IN_LLM
        if adapter.llm_layer is not None
        else PRE_PROJECTOR
        if adapter.before_projector
        else PRE_LLM
    )
    points = getattr(pruner, "pruning_points", None)
    if points is not None and point not in points:
        how = {
            IN_LLM: "adapter.llm_layer=K (prune after K decoder layers)",
            PRE_PROJECTOR: "adapter.before_projector=true",
            PRE_LLM: "neither adapter.llm_layer nor adapter.before_projector",
        }
        ways = " or ".join(how.get(p, p) for p in sorted(points))
        raise ConfigError(
            f"pruner={cfg.pruner.name} is defined for the pruning points {sorted(points)}, but "
            f"this config prunes at {point!r}: set {ways}"
        )
    n_layers = cfg.model.get("llm_layers") if isinstance(cfg.model, DictConfig) else None
    if adapter.llm_layer is not None and n_layers is not None and adapter.llm_layer >= n_layers:
        raise ConfigError(
            f"adapter.llm_layer must be in [1, {n_layers - 1}] (prune after that many of the "
            f"{n_layers} decoder layers of model={cfg.model.name}), got {adapter.llm_layer}"
        )


def _check_checkpoint(cfg: DictConfig) -> None:
    """``model=hf``: the checkpoint exists (a local folder, or cached when offline), and
    ``model.llm_layers`` is read from its ``config.json`` when it is on disk (no weights read)."""
    model = cfg.model
    if not isinstance(model, DictConfig) or "path" not in model:
        return
    from prunekit.models.hf import checkpoint_config, num_llm_layers

    try:
        config = checkpoint_config(model.path, model.get("revision"))
    except (FileNotFoundError, ValueError) as exc:
        raise ConfigError(f"model.path: {exc}") from None
    if config is not None and model.get("llm_layers") is None:
        model.llm_layers = num_llm_layers(config)


def _suggest(key: str, choices: Iterable[str], prefix: str = "") -> str:
    choices = list(choices)
    hint = did_you_mean(key, choices)
    if hint and prefix:
        close = hint.split("'")[1]
        return f" Did you mean '{prefix}.{close}'?"
    return hint


def finalize(cfg: DictConfig, overrides: Sequence[str]) -> DictConfig:
    """Checks Hydra cannot make: schema'd keys, value limits, pruner x strategy groups, required
    parameters, budget, device, pruner arguments, pruning point and layer."""
    from prunekit.core.budget import check_budget

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
    _check_required(cfg)
    _check_typed_keys(cfg)
    _check_checkpoint(cfg)
    try:
        check_budget(cfg.budget)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"budget: {exc}") from None
    try:
        resolve_device(cfg.device)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    _check_data_paths(cfg)
    try:
        built = build_pruner(cfg)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"pruner={pruner}: {exc}") from None
    _check_pruning_point(cfg, built)
    return cfg


def _check_data_paths(cfg: DictConfig) -> None:
    """A benchmark's ``data.path`` (and ``data.image_root``) must exist: one message, before any run."""
    import os

    data = cfg.get("data")
    if not isinstance(data, DictConfig):
        return
    for key in ("path", "image_root"):
        value = data.get(key) if key in data else None
        if isinstance(value, str) and not os.path.exists(os.path.expanduser(value)):
            raise ConfigError(
                f"data.{key}={value!r} does not exist (benchmarks are read from local copies; "
                "nothing is downloaded)"
            )


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
                " (launchers are Hydra plugins: pip install 'prunekit[slurm]' for "
                "submitit_slurm / submitit_local, 'prunekit[ray]' for ray, "
                "'prunekit[joblib]' for joblib)"
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
        node = _node_at(parent, overrides, hydra_compose)
        keys = [str(k) for k in node] if isinstance(node, DictConfig) else []
        if hydra_compose is None and not parent:
            keys = list(GROUPS)
        return (
            f"unknown key '{key}'.{_suggest(leaf, keys, parent)}"
            f"{_parameter_hint(parent, leaf, node)}"
        )
    return text.splitlines()[0] if text else type(exc).__name__


def _node_at(path: str, overrides: Sequence[str], hydra_compose: Any) -> Any:
    """The node at ``path`` of the config the group choices in ``overrides`` compose."""
    if hydra_compose is None:
        return None
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
    return OmegaConf.select(base, path) if path else base


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
        # pruner.merge, pruner.merge_norm, ...: the composed pruner's own keys
        return create_pruner(
            "composed",
            relevance=_plain(cfg["relevance"]),
            selection=_plain(cfg["selection"]),
            **params,
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
    placed = cfg.model.get("device_map") is not None or getattr(model, "hf_device_map", None)
    if not placed:  # a device_map (model=hf) placed it already, maybe over several GPUs
        model = model.to(resolve_device(cfg.device))
    model = model.eval()
    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is not None and hasattr(tokenizer, "padding_side"):
        tokenizer.padding_side = "left"  # batched generation
    _LAST_MODEL[key] = (model, processor)
    return model, processor


def load_data(cfg: DictConfig) -> Any:
    """The :class:`~prunekit.experiments.datasets.VQADataset` of the data group, named ``data.name``."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    node = _plain(cfg.data)
    name = node.pop("name", None)
    try:
        data = instantiate(node, _convert_="all")
    except InstantiationException as exc:  # the loader's own error, not Hydra's wrapper
        if exc.__cause__ is None:
            raise
        raise exc.__cause__ from None
    if name is not None and hasattr(data, "name"):
        data.name = name
    return data


def attach_options(cfg: DictConfig, processor: Any) -> dict[str, Any]:
    """The keyword options for :func:`prunekit.attach` (only those that differ from the defaults)."""
    adapter = cfg.adapter
    options: dict[str, Any] = {}
    if adapter.tokenizer and getattr(processor, "tokenizer", None) is not None:
        options["tokenizer"] = processor.tokenizer
    if adapter.positions is not None:  # None: the adapter's own default
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
