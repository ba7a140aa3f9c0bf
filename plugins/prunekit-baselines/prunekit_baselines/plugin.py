"""Entry point of the plugin: every method module registers its components."""

from __future__ import annotations

import importlib

from prunekit.registry import hookimpl

#: one module per method; each exposes ``register(registry)``
METHOD_MODULES: tuple[str, ...] = (
    "random_pruner",
    "pooling",
    "divprune",
    "cdpruner",
    "fastervlm",
    "visionzip",
    "vispruner",
    "fastv",
    "dart",
)


@hookimpl
def prunekit_register(registry) -> None:
    for name in METHOD_MODULES:
        importlib.import_module(f"prunekit_baselines.{name}").register(registry)
