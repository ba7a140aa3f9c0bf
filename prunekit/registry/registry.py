"""Component registry: names to factories, filled by plugins through pluggy.

Plugins are the modules named in the ``prunekit`` entry-point group. prunekit's
own components come through the same hook, from :mod:`prunekit.builtin`, which the
``prunekit`` package adds to :data:`BUILTIN_PLUGINS` when it is imported (the registry
imports nothing above it, by name or by string); they are registered before any
third-party plugin. Each
plugin registers atomically: if its hook raises (a duplicate name included),
none of its components are kept, a :class:`PluginLoadWarning` names it and the
error, and the rest of the registry keeps working.
"""

from __future__ import annotations

import fnmatch
import inspect
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib.metadata import entry_points
from types import ModuleType
from typing import Any

import pluggy

from prunekit.core.errors import did_you_mean
from prunekit.core.points import check_pruning_points
from prunekit.registry import hookspecs

#: the entry-point group plugin distributions announce their module in
ENTRY_POINT_GROUP = "prunekit"
#: ``(name, plugin)`` registered before the entry points, so that no plugin takes their
#: names: prunekit's own components (:mod:`prunekit.builtin`), added by the ``prunekit``
#: package on import, as timm's model modules add themselves to its registry
BUILTIN_PLUGINS: list[tuple[str, object]] = []
#: the kinds of components the registry holds
KINDS = ("pruner", "relevance", "selection", "noun_extractor", "adapter")


class PluginLoadWarning(UserWarning):
    """A plugin could not be imported or registered (or registered nothing); it was skipped."""


#: ``add(kind, name, factory)``'s second argument: a name, or a class carrying its ``name``
NameOrFactory = str | Callable[..., Any]


@dataclass(frozen=True)
class ComponentSpec:
    """One registered component: its kind, name, factory and the plugin it came from."""

    kind: str
    name: str
    factory: Callable[..., Any]
    plugin: str

    @property
    def description(self) -> str:
        """The first paragraph of the factory's docstring, on one line."""
        doc = inspect.getdoc(self.factory) or ""
        return doc.split("\n\n")[0].replace("\n", " ")

    def parameters(self) -> dict[str, Any]:
        """Keyword parameters of the factory and their defaults (``inspect.Parameter.empty`` if required).

        A class whose ``__init__`` passes ``**kwargs`` on to its base classes also
        lists the parameters of the bases' ``__init__`` (e.g. an adapter's inherited options).
        A dataclass's parameters are its ``__init__`` fields (its hyperparameters).
        """
        return self._signature()[0]

    def _signature(self) -> tuple[dict[str, Any], bool]:
        """:meth:`parameters`, and whether the factory also takes keywords it does not name."""
        targets = [self.factory]
        if inspect.isclass(self.factory):
            targets = [c.__init__ for c in self.factory.__mro__ if "__init__" in vars(c)]
        out: dict[str, Any] = {}
        for target in targets:
            try:
                signature = inspect.signature(target)
            except (TypeError, ValueError):
                return out, True
            for name, p in signature.parameters.items():
                if name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
                    out.setdefault(name, p.default)
            if not any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values()):
                return out, False
        return out, True

    def check_arguments(self, kwargs: Iterable[str]) -> None:
        """Raise ``TypeError`` for a keyword the factory does not take, with a suggestion.

        ``create_pruner("resprune", alpah=1)`` says: did you mean 'alpha'?
        """
        known, open_ended = self._signature()
        if open_ended:
            return
        for key in kwargs:
            if key not in known:
                raise TypeError(
                    f"{self.kind} {self.name!r} has no parameter {key!r}."
                    f"{did_you_mean(key, known)} Its parameters: {list(known)}"
                )


class _Staging:
    """The object handed to one plugin's hook; collects its components."""

    def __init__(self, registry: Registry, plugin: str) -> None:
        self._registry = registry
        self._plugin = plugin
        self.added: list[ComponentSpec] = []

    def add(
        self, kind: str, name: NameOrFactory, factory: Callable[..., Any] | None = None
    ) -> None:
        """Add a component: ``add(kind, MyClass)`` (the key is ``MyClass.name``) or
        ``add(kind, "name", factory)``."""
        name, factory = _name_and_factory(kind, name, factory)
        spec = self._registry._make_spec(kind, name, factory, self._plugin)
        if any(s.kind == kind and s.name == name for s in self.added):
            raise ValueError(f"plugin {self._plugin!r} registers {kind} {name!r} twice")
        self.added.append(spec)

    def add_pruner(self, name: NameOrFactory, factory: Callable[..., Any] | None = None) -> None:
        """``add_pruner(MyPruner)`` registers it under ``MyPruner.name``."""
        self.add("pruner", name, factory)

    def add_relevance(self, name: NameOrFactory, factory: Callable[..., Any] | None = None) -> None:
        self.add("relevance", name, factory)

    def add_selection(self, name: NameOrFactory, factory: Callable[..., Any] | None = None) -> None:
        self.add("selection", name, factory)

    def add_noun_extractor(
        self, name: NameOrFactory, factory: Callable[..., Any] | None = None
    ) -> None:
        self.add("noun_extractor", name, factory)

    def add_adapter(self, name: NameOrFactory, factory: Callable[..., Any] | None = None) -> None:
        self.add("adapter", name, factory)


def _name_and_factory(
    kind: str, name: NameOrFactory, factory: Callable[..., Any] | None
) -> tuple[str, Callable[..., Any]]:
    """``(name, factory)`` from ``add(kind, name, factory)`` or ``add(kind, factory)``;
    in the second form the name is the factory's ``name`` attribute."""
    if factory is not None:
        return name, factory
    factory = name
    key = getattr(factory, "name", None)
    if not isinstance(key, str) or not key:
        raise TypeError(
            f"add({kind!r}, factory) takes the registry key from factory.name, but "
            f"{getattr(factory, '__name__', factory)!r} has no non-empty str `name`; set "
            f'`name = "..."` on the class or pass it: add({kind!r}, "my_name", factory)'
        )
    return key, factory


class Registry:
    """Names to factories for every component kind.

    Args:
        load_plugins: load the modules of the ``prunekit`` entry-point group
            now, after the :data:`BUILTIN_PLUGINS`.
    """

    def __init__(self, *, load_plugins: bool = True) -> None:
        self._specs: dict[str, dict[str, ComponentSpec]] = {kind: {} for kind in KINDS}
        self.failed_plugins: dict[str, str] = {}
        self.plugin_manager = pluggy.PluginManager(hookspecs.PROJECT)
        self.plugin_manager.add_hookspecs(hookspecs)
        if load_plugins:
            # prunekit's own components first, so their names are never taken by a plugin.
            for name, plugin in BUILTIN_PLUGINS:
                self.register_plugin(plugin, name=name)
            self.load_entry_points()

    # -- plugins -----------------------------------------------------------------
    def load_entry_points(self, group: str = ENTRY_POINT_GROUP) -> None:
        """Import and register every module announced in the entry-point ``group``."""
        for ep in sorted(entry_points(group=group), key=lambda e: e.name):
            try:
                module = ep.load()
            except Exception as exc:  # a broken plugin must not break the host
                self._report(ep.name, f"import of {ep.value!r} failed: {type(exc).__name__}: {exc}")
                continue
            self.register_plugin(module, name=ep.name)

    def register_plugin(self, plugin: ModuleType | object, name: str | None = None) -> bool:
        """Register a plugin object (usually a module with a ``prunekit_register`` hookimpl).

        Returns ``True`` on success; on failure the plugin is reported with a
        :class:`PluginLoadWarning`, recorded in :attr:`failed_plugins` and skipped.
        """
        name = name or getattr(plugin, "__name__", repr(plugin))
        try:
            self.plugin_manager.register(plugin, name=name)
        except Exception as exc:
            self._report(name, f"{type(exc).__name__}: {exc}")
            return False
        staging = _Staging(self, name)
        impls = [
            impl
            for impl in self.plugin_manager.hook.prunekit_register.get_hookimpls()
            if impl.plugin is plugin
        ]
        if not impls:
            self.plugin_manager.unregister(plugin)
            self._report(name, _no_hook_message(plugin))
            return False
        for impl in impls:
            try:
                impl.function(registry=staging)
                for spec in staging.added:
                    self._check_free(spec)
            except Exception as exc:
                self.plugin_manager.unregister(plugin)
                self._report(name, f"{type(exc).__name__}: {exc}")
                return False
        if not staging.added:
            self.plugin_manager.unregister(plugin)
            self._report(name, "its prunekit_register hook registered no component")
            return False
        for spec in staging.added:
            self._specs[spec.kind][spec.name] = spec
        return True

    def _report(self, plugin: str, message: str) -> None:
        self.failed_plugins[plugin] = message
        warnings.warn(
            f"prunekit plugin {plugin!r} was skipped: {message}", PluginLoadWarning, stacklevel=3
        )

    # -- components --------------------------------------------------------------
    def _make_spec(
        self, kind: str, name: str, factory: Callable[..., Any], plugin: str
    ) -> ComponentSpec:
        self._check_kind(kind)
        if not isinstance(name, str) or not name or any(c in name for c in "*?[] "):
            raise ValueError(
                f"component name must be a non-empty string without wildcards, got {name!r}"
            )
        if not callable(factory):
            raise TypeError(
                f"factory for {kind} {name!r} must be callable, got {type(factory).__name__}"
            )
        if kind == "pruner":  # a misspelt point would silently never match an adapter
            check_pruning_points(f"pruner {name!r}", getattr(factory, "pruning_points", None))
        return ComponentSpec(kind=kind, name=name, factory=factory, plugin=plugin)

    def _check_free(self, spec: ComponentSpec) -> None:
        taken = self._specs[spec.kind].get(spec.name)
        if taken is not None:
            raise ValueError(
                f"{spec.kind} name {spec.name!r} is already registered by plugin "
                f"{taken.plugin!r}; plugin {spec.plugin!r} cannot register it again"
            )

    def add(
        self,
        kind: str,
        name: NameOrFactory,
        factory: Callable[..., Any] | None = None,
        *,
        plugin: str = "__main__",
    ) -> None:
        """Register one component directly (outside any plugin): ``add(kind, MyClass)``
        (the key is ``MyClass.name``) or ``add(kind, "name", factory)``.
        Duplicate names raise ``ValueError``."""
        name, factory = _name_and_factory(kind, name, factory)
        spec = self._make_spec(kind, name, factory, plugin)
        self._check_free(spec)
        self._specs[kind][name] = spec

    def _check_kind(self, kind: str) -> None:
        if kind not in KINDS:
            raise ValueError(
                f"kind must be one of {list(KINDS)}, got {kind!r}.{did_you_mean(str(kind), KINDS)}"
            )

    def names(self, kind: str, pattern: str = "*") -> list[str]:
        """Sorted names of ``kind`` matching the shell-style wildcard ``pattern``."""
        self._check_kind(kind)
        return sorted(n for n in self._specs[kind] if fnmatch.fnmatchcase(n, pattern))

    def spec(self, kind: str, name: str) -> ComponentSpec:
        """The :class:`ComponentSpec` for ``name``; unknown names raise ``ValueError`` with a suggestion."""
        self._check_kind(kind)
        if not isinstance(name, str):
            raise TypeError(f"{kind} name must be a str, got {type(name).__name__}")
        try:
            return self._specs[kind][name]
        except KeyError:
            known = sorted(self._specs[kind])
            raise ValueError(
                f"unknown {kind} {name!r}.{did_you_mean(name, known)} Registered: {known}"
            ) from None

    def specs(self, kind: str, pattern: str = "*") -> list[ComponentSpec]:
        """The :class:`ComponentSpec` of every name of ``kind`` matching ``pattern``, sorted by name."""
        return [self._specs[kind][n] for n in self.names(kind, pattern)]

    def create(self, kind: str, name: str, **kwargs: Any) -> Any:
        """Build the component ``name`` of ``kind`` with ``kwargs``.

        A keyword the factory does not take raises ``TypeError`` with a suggestion;
        a dataclass component checks its values' types itself.
        """
        spec = self.spec(kind, name)
        spec.check_arguments(kwargs)
        return spec.factory(**kwargs)

    def __contains__(self, item: tuple[str, str]) -> bool:
        kind, name = item
        return name in self._specs.get(kind, {})

    def kinds(self) -> Iterable[str]:
        """The component kinds (:data:`KINDS`)."""
        return KINDS


def _no_hook_message(plugin: object) -> str:
    """Why ``plugin`` registered nothing: no ``prunekit_register`` hook implementation."""
    hook = hookspecs.prunekit_register.__name__
    close = [n for n in dir(plugin) if did_you_mean(n, [hook]) and n != hook]
    if callable(getattr(plugin, hook, None)):
        return f"its {hook} function is not marked @prunekit.hookimpl, so it registers nothing"
    found = f"; found {close[0]!r}, a misspelling?" if close else ""
    return f"it defines no @hookimpl {hook}(registry) function, so it registers nothing{found}"


_DEFAULT: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry, built (and plugins loaded) on first use."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = Registry()
    return _DEFAULT
