"""The selection-strategy contract."""

from __future__ import annotations

import abc
from typing import ClassVar

import torch

from prunekit.core.errors import check_fields
from prunekit.core.inputs import PruneInputs
from prunekit.core.pruner import Picks


class SelectionStrategy(abc.ABC):
    """Chooses tokens from validated inputs and relevance weights.

    ``select`` returns ``(B, num_keep)`` int64 indices in priority order (the
    first ``c`` of a row are the sample's choice when it keeps ``c``): distinct
    valid tokens for as long as the sample has any; entries past its valid
    tokens are ignored. Implementations are vectorised over the batch and the
    result of one sample never depends on the others.
    """

    #: the registry key users type (``registry.add_selection(MyStrategy)``)
    name: ClassVar[str] = ""
    #: model signals this strategy reads from ``inputs.signals`` (see :mod:`prunekit.core.signals`)
    required_signals: ClassVar[frozenset[str]] = frozenset()

    def __post_init__(self) -> None:
        """Check every field (hyperparameter) of a ``@dataclass`` subclass against its
        annotation; a subclass adding value checks calls ``super().__post_init__()`` first."""
        check_fields(self)

    @property
    def adaptive(self) -> bool:
        """Whether :meth:`select` chooses each sample's count (then it returns
        :class:`prunekit.Picks` with ``order`` and ``counts``, the budget being a ceiling)."""
        return False

    @abc.abstractmethod
    def select(
        self, inputs: PruneInputs, weights: torch.Tensor, num_keep: int
    ) -> torch.Tensor | Picks:
        """``(B, num_keep)`` picks in priority order; an :attr:`adaptive` selection returns
        ``Picks(order=..., counts=...)`` instead."""


def rank_descending(
    keys: torch.Tensor, valid: torch.Tensor, num_keep: int, tie_rtol: float = 0.0
) -> torch.Tensor:
    """Indices of the ``num_keep`` largest ``keys`` per row among ``valid`` ones, ties to the lowest index.

    With ``tie_rtol > 0`` non-negative keys are first snapped to a grid of
    ``tie_rtol`` times the row's largest key, so values that differ only by
    float rounding (duplicate tokens) tie.
    """
    if tie_rtol > 0:
        scale = keys.masked_fill(~valid, 0).amax(dim=1, keepdim=True) * tie_rtol
        keys = torch.where(scale > 0, torch.round(keys / scale.clamp_min(1e-30)), keys)
    keys = keys.masked_fill(~valid, -torch.inf)
    return torch.sort(keys, dim=1, descending=True, stable=True).indices[:, :num_keep]
