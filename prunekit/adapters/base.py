"""The adapter contract: what prunekit needs to know about one model family.

An adapter knows where a family's visual tokens are at each pruning point,
how to get text embeddings in the same space, and how to rebuild the model's
inputs with only the kept tokens. ``install`` touches only the model
*instance* (instance attributes, forward hooks) and returns the callables that
undo every change; :func:`prunekit.attach` runs them on exit, whatever happens.
Changes made with :func:`override_attribute` and hooks returned as their
``RemovableHandle.remove`` are also removed from any deep copy of the model
taken inside the block.
"""

from __future__ import annotations

import abc
import contextlib
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import torch

if TYPE_CHECKING:
    from prunekit.adapters.attach import AttachHandle
    from prunekit.adapters.layout import TokenLayout

#: a callable that reverts one change ``install`` made to the model instance
Undo = Callable[[], None]


class Adapter(abc.ABC):
    """Base class of model-family adapters.

    Subclasses set :attr:`family` (a human-readable name listed in errors),
    :attr:`points` (the pruning points they support), implement
    :meth:`matches` and :meth:`install`, and take their options as keyword
    arguments of ``__init__`` (unknown options therefore fail loudly).
    """

    family: ClassVar[str] = ""
    points: ClassVar[tuple[str, ...]] = ()

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model

    @classmethod
    @abc.abstractmethod
    def matches(cls, model: object) -> bool:
        """Whether this adapter handles ``model``."""

    def available_signals(self) -> frozenset[str]:
        """Model signals (see :attr:`prunekit.TokenPruner.required_signals`) this adapter
        can provide with its current options; ``attach`` refuses pruners needing others."""
        return frozenset()

    def missing_signals_note(self, missing: frozenset[str]) -> str:
        """Why this family cannot provide the signals ``missing`` (appended to ``attach``'s
        refusal; ``""`` when there is nothing to add)."""
        return ""

    def pruning_point(self) -> str:
        """Where this adapter prunes with its current options (one of :attr:`points`)."""
        return self.points[0]

    def llm_layer(self) -> int | None:
        """The decoder layer after which the language model prunes (point ``IN_LLM``),
        ``None`` at the other points; recorded on the handle by ``attach``."""
        return None

    @abc.abstractmethod
    def install(self, handle: AttachHandle) -> list[Undo]:
        """Make the model instance prune through ``handle``; return the undo callables
        (:func:`override_attribute` undos and hooks' ``remove`` methods, so that
        ``attach`` can also strip them from deep copies)."""

    def token_layouts(self, inputs: Mapping[str, Any], **options: Any) -> list[TokenLayout]:
        """Where the visual tokens of a model call sit, for kept-token pictures.

        One :class:`~prunekit.adapters.layout.TokenLayout` per image or video of the call
        whose ``inputs`` (the keyword arguments given to the model: ``pixel_values``,
        ``image_sizes``, ``image_grid_thw``, ``input_ids``, ...) are passed, in the order
        of the rows of ``handle.results`` with this adapter's options; ``options`` are
        what the inputs do not carry (e.g. InternVL's ``image_sizes``). The geometry is
        the family's, so :mod:`prunekit.viz` draws any family with one renderer.
        Families without a layout raise ``NotImplementedError``.
        """
        raise NotImplementedError(
            f"the {self.family or type(self).__name__!r} adapter does not describe where its "
            "tokens sit (no token_layouts); draw its results with prunekit.viz.kept_overlay"
        )


class AttributeOverride:
    """An instance attribute set by ``install`` (shadowing the class's method); calling it undoes it.

    :meth:`revert_in` undoes it in a deep copy of the object, so that a copy taken
    inside ``attach`` does not carry the change (see :func:`prunekit.attach`).
    """

    _MISSING = object()

    def __init__(self, obj: object, name: str, value: Any) -> None:
        self.obj = obj
        self.name = name
        self.previous = obj.__dict__.get(name, self._MISSING)
        setattr(obj, name, value)

    def __call__(self) -> None:
        self._restore(self.obj, self.previous)

    def revert_in(self, memo: dict[int, Any]) -> None:
        """Undo the change in the deep copy of :attr:`obj` recorded in ``memo``, if any."""
        import copy

        copied = memo.get(id(self.obj))
        if copied is None or copied is self.obj:
            return
        previous = self.previous
        if previous is not self._MISSING:
            previous = copy.deepcopy(previous, memo)
        self._restore(copied, previous)

    def _restore(self, obj: object, previous: Any) -> None:
        if previous is self._MISSING:
            obj.__dict__.pop(self.name, None)
        else:
            setattr(obj, self.name, previous)


def override_attribute(obj: object, name: str, value: Any) -> Undo:
    """Set an *instance* attribute (shadowing the class's method) and return its undo."""
    return AttributeOverride(obj, name, value)


def caller_stacklevel() -> int:
    """The ``stacklevel`` that makes a ``warnings.warn`` called by the caller of this
    function point at the first frame outside prunekit (the user's line)."""
    frame = sys._getframe(1)
    level = 1
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame = frame.f_back
        level += 1
    return level


#: prunekit's source directory (frames under it are skipped by :func:`caller_stacklevel`)
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


@contextlib.contextmanager
def undo_on_error(undos: list[Undo]) -> Iterator[list[Undo]]:
    """Collect undo callables; if installation fails half-way, run those collected so far."""
    try:
        yield undos
    except BaseException:
        for undo in reversed(undos):
            undo()
        raise
