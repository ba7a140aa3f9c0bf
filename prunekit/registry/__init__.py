"""The plugin registry: pluggy hooks plus the ``prunekit`` entry-point group."""

from prunekit.registry.hookspecs import hookimpl, hookspec
from prunekit.registry.registry import (
    KINDS,
    ComponentSpec,
    PluginLoadWarning,
    Registry,
    get_registry,
)

__all__ = [
    "KINDS",
    "ComponentSpec",
    "PluginLoadWarning",
    "Registry",
    "get_registry",
    "hookimpl",
    "hookspec",
]
