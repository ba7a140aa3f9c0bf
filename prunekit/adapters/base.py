"""The adapter contract: what prunekit needs to know about one model family.

An adapter knows where a family's visual tokens are at each pruning point,
how to get text embeddings in the same space, and how to rebuild the model's
inputs with only the kept tokens. ``install`` touches only the model
*instance* (instance attributes, forward hooks) and returns the callables that
undo every change; :func:`prunekit.attach` runs them on exit, whatever happens.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, ClassVar

import torch

if TYPE_CHECKING:
    from prunekit.adapters.attach import AttachHandle

#: a callable that reverts one change ``install`` made to the model instance
Undo = Callable[[], None]

#: Pruning points an adapter may support.
PRE_LLM = "pre_llm"  # after the multimodal projector, before the language model (ResPrune)
IN_ENCODER = "in_encoder"  #: inside the vision encoder, after layer L
IN_LLM = "in_llm"  #: inside the language model, after decoder layer K
PRE_PROJECTOR = "pre_projector"  #: vision-tower features, before the multimodal projector


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

    def pruning_point(self) -> str:
        """Where this adapter prunes with its current options (one of :attr:`points`)."""
        return self.points[0]

    @abc.abstractmethod
    def install(self, handle: AttachHandle) -> list[Undo]:
        """Make the model instance prune through ``handle``; return the undo callables."""


def override_attribute(obj: object, name: str, value: Any) -> Undo:
    """Set an *instance* attribute (shadowing the class's method) and return its undo."""
    missing = object()
    previous = obj.__dict__.get(name, missing)
    setattr(obj, name, value)

    def undo() -> None:
        if previous is missing:
            obj.__dict__.pop(name, None)
        else:
            setattr(obj, name, previous)

    return undo


@contextlib.contextmanager
def undo_on_error(undos: list[Undo]) -> Iterator[list[Undo]]:
    """Collect undo callables; if installation fails half-way, run those collected so far."""
    try:
        yield undos
    except BaseException:
        for undo in reversed(undos):
            undo()
        raise
