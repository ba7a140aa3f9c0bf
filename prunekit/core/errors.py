"""Helpers for error messages that tell the user what to type instead."""

from __future__ import annotations

import dataclasses
import difflib
import functools
import numbers
import reprlib
import types
import typing
from collections.abc import Iterable
from typing import Any, Literal, Union


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """A " Did you mean 'x'?" suffix for the closest choice, or "" if none is close."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" Did you mean {close[0]!r}?" if close else ""


def check_choice(argument: str, value: object, choices: Iterable[str]) -> str:
    """Return ``value`` if it is one of ``choices``, else raise a ValueError naming ``argument``."""
    choices = list(choices)
    if not isinstance(value, str) or value not in choices:
        hint = did_you_mean(value, choices) if isinstance(value, str) else ""
        raise ValueError(f"{argument} must be one of {choices}, got {value!r}.{hint}")
    return value


# --------------------------------------------------------------------------- hyperparameters


def _matches(value: object, hint: Any) -> bool:
    """Whether ``value`` fits the annotation ``hint`` (see :func:`check_type` for the rules)."""
    if hint is Any or hint is object:
        return True
    if hint is None or hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    origin = typing.get_origin(hint)
    if origin is Literal:
        return any(
            value == choice and type(value) is type(choice) for choice in typing.get_args(hint)
        )
    if origin in (Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(hint))
    if origin is not None:  # list[int], Mapping[str, Any], tuple[int, int]: the container only
        hint = origin
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True  # an annotation these rules do not cover (a TypeVar, a Callable, ...)


def _describe(hint: Any) -> str:
    """``hint`` in words, e.g. ``"a float"``, ``"one of ['max', 'mean']"``, ``"an int or None"``."""
    if hint is None or hint is type(None):
        return "None"
    origin = typing.get_origin(hint)
    if origin is Literal:
        return f"one of {list(typing.get_args(hint))}"
    if origin in (Union, types.UnionType):
        parts = [_describe(arg) for arg in typing.get_args(hint)]
        return ", ".join(parts[:-1]) + " or " + parts[-1]
    kind = origin if isinstance(origin, type) else hint  # list[int]: a list
    name = kind.__name__ if isinstance(kind, type) else str(hint).replace("typing.", "")
    return f"{'an' if name[0] in 'aeiouAEIOU' else 'a'} {name}"


def _choices(hint: Any) -> list[Any]:
    """The values of every ``Literal`` in ``hint`` (itself or a member of a union)."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        return list(typing.get_args(hint))
    if origin in (Union, types.UnionType):
        return [c for arg in typing.get_args(hint) for c in _choices(arg)]
    return []


def check_type(argument: str, value: object, hint: Any, owner: str = "") -> object:
    """Return ``value`` if it fits the annotation ``hint``, else raise naming ``argument``.

    The rules, kept simple: ``int``, ``float`` (an int is accepted), ``bool`` (an int is
    not, nor is a bool an int), ``str``, ``None``, ``Literal[...]``, ``X | Y`` unions of
    these, any class (``isinstance``), and generics by their container only
    (``list[int]``: a list). Anything else is not checked.

    Raises:
        ValueError: ``hint`` has ``Literal`` choices of the value's type and the value is
            none of them (with a "did you mean" suggestion).
        TypeError: otherwise, naming ``argument``, the expected and the given type.
    """
    if _matches(value, hint):
        return value
    where = f"{owner}: " if owner else ""
    choices = [c for c in _choices(hint) if type(c) is type(value)]
    if choices:
        suggestion = did_you_mean(value, choices) if isinstance(value, str) else ""
        raise ValueError(f"{where}{argument} must be {_describe(hint)}, got {value!r}.{suggestion}")
    raise TypeError(
        f"{where}{argument} must be {_describe(hint)}, "
        f"got {type(value).__name__}: {reprlib.repr(value)}"
    )


@functools.cache
def field_types(cls: type) -> dict[str, Any]:
    """The resolved annotation of every ``__init__`` field of the dataclass ``cls``.

    Annotations that cannot be resolved (a name imported only for type checking)
    leave every field of ``cls`` unchecked (``Any``).
    """
    if not dataclasses.is_dataclass(cls):
        return {}
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # an unresolvable forward reference
        hints = {}
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls) if f.init}


def check_fields(obj: object) -> None:
    """Check every ``__init__`` field of the dataclass instance ``obj`` with :func:`check_type`.

    This is how a pruner's (or strategy's) hyperparameters are validated from their
    declarations alone: ``ResPrune(alpha="x")`` raises ``TypeError`` naming ``alpha``.
    """
    owner = type(obj).__name__
    for name, hint in field_types(type(obj)).items():
        check_type(name, getattr(obj, name), hint, owner)
