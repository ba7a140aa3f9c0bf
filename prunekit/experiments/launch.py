"""Where the runs of a sweep run: ``prunekit ablate ... launcher=NAME launcher.KEY=VALUE``.

A sweep is Hydra's multirun, so the engines that run its jobs are Hydra's
launcher plugins, not a scheduler of prunekit's own: ``basic`` (Hydra's default:
one run after another in this process), ``joblib`` (local processes in
parallel), ``submitit_local`` / ``submitit_slurm`` (submitit: local processes or
a Slurm job array) and ``ray`` (Ray tasks). ``launcher=NAME`` and
``launcher.KEY=VALUE`` are prunekit's short forms of Hydra's
``hydra/launcher=NAME`` and ``hydra.launcher.KEY=VALUE``: they are checked at
composition against the plugin's own schema (unknown keys with a suggestion,
wrong types, values out of range) and then handed to Hydra unchanged. Being
Hydra settings, they are no part of a run's config: a run's folder name, its
``config.yaml`` and ``result.json`` are the same whichever launcher ran it, so a
sweep started on one machine resumes on a cluster and the other way round.

A launcher option that is not one of :data:`LAUNCHERS` is looked up in the
``--config-dir`` folders (``DIR/hydra/launcher/NAME.yaml``, a preset of the
user's own); Hydra checks its keys.
"""

from __future__ import annotations

import copy
import difflib
import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prunekit.core.errors import did_you_mean
from prunekit.experiments.config import ConfigError, override_key
from prunekit.experiments.schema import check_value


@dataclass(frozen=True)
class Launcher:
    """A Hydra launcher prunekit knows: the plugin that provides it and how to install it."""

    name: str
    #: what it does, in a few words (``prunekit ablate --help``, the docs)
    summary: str
    #: the module that registers the plugin's schema (``None``: part of hydra-core)
    module: str
    #: the PyPI package of the plugin and the prunekit extra that installs it
    package: str | None = None
    extra: str | None = None


#: the launchers of ``launcher=NAME``
LAUNCHERS = {
    launcher.name: launcher
    for launcher in (
        Launcher(
            "basic",
            "one run after another in this process (the default)",
            "hydra._internal.core_plugins.basic_launcher",
        ),
        Launcher(
            "joblib",
            "local processes in parallel, launcher.n_jobs at a time (joblib, loky backend)",
            "hydra_plugins.hydra_joblib_launcher.config",
            "hydra-joblib-launcher",
            "joblib",
        ),
        Launcher(
            "submitit_local",
            "local processes through submitit (checks a Slurm setup on one machine)",
            "hydra_plugins.hydra_submitit_launcher.config",
            "hydra-submitit-launcher",
            "slurm",
        ),
        Launcher(
            "submitit_slurm",
            "a Slurm job array through submitit, one job per run",
            "hydra_plugins.hydra_submitit_launcher.config",
            "hydra-submitit-launcher",
            "slurm",
        ),
        Launcher(
            "ray",
            "Ray tasks on the cluster ray.init connects to (launcher.ray.init.address)",
            "hydra_plugins.hydra_ray_launcher._config",
            "hydra-ray-launcher",
            "ray",
        ),
    )
}

#: value limits of launcher settings (checked for the launchers that have the key)
LIMITS: dict[str, dict[str, Any]] = {
    "timeout_min": {"ge": 1},
    "cpus_per_task": {"ge": 1},
    "gpus_per_node": {"ge": 0},
    "gpus_per_task": {"ge": 0},
    "cpus_per_gpu": {"ge": 1},
    "mem_gb": {"ge": 1},
    "array_parallelism": {"ge": 1},
    "max_num_timeout": {"ge": 0},
    "signal_delay_s": {"ge": 0},
    "verbose": {"ge": 0},
}

#: one process per run: settings that would start the same run several times at once
SINGLE_PROCESS = ("tasks_per_node", "nodes")


@dataclass
class LauncherChoice:
    """The launcher of a sweep and the Hydra overrides that select and configure it."""

    name: str | None
    #: ``hydra/launcher=...`` and ``hydra.launcher.KEY=VALUE`` overrides
    hydra_overrides: list[str]

    def describe(self) -> str:
        """``"joblib (n_jobs=2)"``: the launcher and the settings given on the command line."""
        settings = [
            o.split("hydra.launcher.", 1)[1] for o in self.hydra_overrides if "hydra.launcher." in o
        ]
        return f"{self.name} ({', '.join(settings)})" if settings else str(self.name)


def _is_launcher_key(key: str) -> bool:
    return key == "launcher" or key.startswith("launcher.")


def split_launcher(overrides: Sequence[str]) -> tuple[list[str], list[str]]:
    """``(other overrides, launcher overrides)``: the ``launcher=`` / ``launcher.KEY=`` ones apart."""
    rest, launcher = [], []
    for o in overrides:
        (launcher if _is_launcher_key(override_key(o)) else rest).append(o)
    return rest, launcher


def _parse(override: str) -> Any:
    """The parsed Hydra override (value typed as Hydra types it)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        return OverridesParser.create().parse_overrides([override])[0]
    except HydraException as exc:
        raise ConfigError(f"cannot parse override: {str(exc).splitlines()[0]}") from None


def _user_preset(name: str, config_dirs: Sequence[str]) -> bool:
    return any((Path(d) / "hydra" / "launcher" / f"{name}.yaml").is_file() for d in config_dirs)


def launcher_schema(name: str) -> Any:
    """The plugin's config node for ``launcher=name`` (its keys, types and defaults).

    Raises :class:`ConfigError` naming the package (and prunekit extra) to install
    when the plugin is not installed.
    """
    from hydra.core.config_store import ConfigStore

    launcher = LAUNCHERS[name]
    try:
        importlib.import_module(launcher.module)
    except ImportError as exc:
        raise ConfigError(
            f"launcher={name} needs the Hydra plugin {launcher.package}, which is not installed "
            f"({exc}): pip install 'prunekit[{launcher.extra}]' (or pip install {launcher.package})"
        ) from None
    return ConfigStore.instance().load(f"hydra/launcher/{name}.yaml").node


def _is_free_dict(node: Any) -> bool:
    """A ``Dict[str, Any]`` field of a plugin schema (any key may be added to it)."""
    return getattr(node._metadata, "object_type", None) in (None, dict)


def _check_setting(name: str, schema: Any, override: Any) -> bool:
    """Check one ``launcher.KEY=VALUE`` against the plugin's schema; ``True`` if KEY goes into a
    free dictionary (Hydra must add it: ``++``)."""
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    path = override.key_or_group.split(".", 1)[1]
    parts = path.split(".")
    node, free = schema, False
    for depth, part in enumerate(parts):
        if _is_free_dict(node):
            free = True
            break
        keys = [str(k) for k in node if not str(k).startswith("_")]
        if part not in keys:
            parent = ".".join(["launcher", *parts[:depth]])
            close = difflib.get_close_matches(part, keys, n=1, cutoff=0.5)
            hint = f" Did you mean '{parent}.{close[0]}'?" if close else ""
            raise ConfigError(
                f"unknown key '{parent}.{part}' for launcher={name}.{hint} Keys: {', '.join(keys)}"
            )
        child = node._get_node(part)
        if depth < len(parts) - 1 and not isinstance(child, DictConfig):
            raise ConfigError(f"launcher.{'.'.join(parts[: depth + 1])} is a value, not a group")
        node = child
    value = override.value()
    trial = copy.deepcopy(schema)
    try:
        OmegaConf.update(trial, path, value, merge=True, force_add=free)
    except OmegaConfBaseException as exc:
        raise ConfigError(
            f"wrong value for 'launcher.{path}' (launcher={name}): {str(exc).splitlines()[0]}"
        ) from None
    if path in LIMITS:
        try:
            check_value(f"launcher.{path}", value, LIMITS[path])
        except (TypeError, ValueError) as exc:
            raise ConfigError(str(exc)) from None
    if path == "n_jobs" and value == 0:
        raise ConfigError("launcher.n_jobs must be >= 1 (or -1: one per CPU), got 0")
    if path in SINGLE_PROCESS and value not in (None, 1):
        raise ConfigError(
            f"launcher.{path} must be 1, got {value!r}: each run of a sweep is one process, more "
            f"would run it {value} times at once (a model larger than one GPU: "
            "launcher.gpus_per_node=N with model.device_map=auto)"
        )
    return free


def choose_launcher(
    overrides: Sequence[str], *, config_dirs: Sequence[str] = ()
) -> tuple[list[str], LauncherChoice]:
    """Turn ``launcher=NAME launcher.KEY=VALUE`` into Hydra's launcher overrides, checked.

    Returns ``overrides`` without the launcher ones, and the :class:`LauncherChoice`
    (``name`` ``None`` when no ``launcher=`` was given). Raises :class:`ConfigError`
    for an unknown launcher or key, a wrong value, a launcher whose plugin is not
    installed, a swept launcher setting, or ``launcher=`` together with Hydra's own
    ``hydra/launcher=``.
    """
    rest, given = split_launcher(overrides)
    if not given:
        return rest, LauncherChoice(None, [])
    parsed = [_parse(o) for o in given]
    for override, text in zip(parsed, given):
        if override.is_delete():
            raise ConfigError(f"'{text}': a launcher setting cannot be deleted")
        if override.is_sweep_override():
            raise ConfigError(
                f"'{text}': a launcher setting takes one value (the sweep is over the run configs)"
            )
    names = [p for p in parsed if p.key_or_group == "launcher"]
    if not names:
        raise ConfigError(
            f"'{given[0]}' sets an option of a launcher: add launcher=NAME ({', '.join(LAUNCHERS)})"
        )
    if len(names) > 1:
        raise ConfigError("launcher is given more than once")
    if any(override_key(o) in ("hydra/launcher", "hydra.launcher") for o in rest):
        raise ConfigError(
            "launcher=... and hydra/launcher=... both choose the launcher: give one of them"
        )
    name = str(names[0].value())
    if name not in LAUNCHERS:
        if _user_preset(name, config_dirs):  # DIR/hydra/launcher/NAME.yaml: Hydra checks it
            schema = None
        else:
            raise ConfigError(
                f"unknown launcher '{name}'.{did_you_mean(name, LAUNCHERS)} Options: "
                f"{', '.join(LAUNCHERS)} (or a preset DIR/hydra/launcher/{name}.yaml "
                "with --config-dir DIR)"
            )
    else:
        schema = launcher_schema(name)
    hydra_overrides = [f"hydra/launcher={name}"]
    for override, text in zip(parsed, given):
        if override.key_or_group == "launcher":
            continue
        free = schema is not None and _check_setting(name, schema, override)
        key = override.key_or_group.split(".", 1)[1]
        value = text.split("=", 1)[1]
        hydra_overrides.append(f"{'++' if free else ''}hydra.launcher.{key}={value}")
    return rest, LauncherChoice(name, hydra_overrides)
