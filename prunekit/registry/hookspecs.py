"""Hook specifications. A plugin module implements them with :data:`hookimpl`.

A plugin distribution announces its module in the ``prunekit`` entry-point
group, e.g. in its ``pyproject.toml``::

    [project.entry-points.prunekit]
    my_pruners = "my_package.plugin"

and the module registers its components::

    from prunekit.registry import hookimpl

    @hookimpl
    def prunekit_register(registry):
        registry.add_pruner(MyPruner)      # under MyPruner.name

A module announced in the group that registers nothing (a misspelled hook name,
a hook without ``@hookimpl``) is reported with a ``PluginLoadWarning``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from prunekit.registry.registry import Registry

#: the pluggy project name of prunekit's hooks
PROJECT = "prunekit"
#: marks hook specifications (prunekit's own, below)
hookspec = pluggy.HookspecMarker(PROJECT)
#: marks a plugin's hook implementations: ``@hookimpl def prunekit_register(registry): ...``
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def prunekit_register(registry: Registry) -> None:
    """Add this plugin's components with ``registry.add(kind, factory)`` (the key is
    ``factory.name``) or ``registry.add(kind, name, factory)``; ``add_pruner(factory)``
    and the other ``add_<kind>`` methods are shorthands.

    ``kind`` is one of ``"pruner"``, ``"relevance"``, ``"selection"``,
    ``"noun_extractor"``, ``"adapter"``. A name already taken raises ``ValueError``; the
    plugin is then reported and skipped as a whole.
    """
