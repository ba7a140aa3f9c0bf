"""The relevance-strategy contract."""

from __future__ import annotations

import abc
from typing import ClassVar

import torch

from prunekit.core.errors import check_fields
from prunekit.core.inputs import PruneInputs


class RelevanceStrategy(abc.ABC):
    """Scores how much each token matters, as non-negative weights.

    ``weights(inputs)`` returns ``(B, N)`` weights in the compute dtype; 1 is
    neutral, 0 means "only if nothing else is left". Values at padded slots are
    ignored by selections.
    """

    #: the registry key users type (``registry.add_relevance(MyStrategy)``)
    name: ClassVar[str] = ""
    #: model signals this strategy reads from ``inputs.signals`` (see :mod:`prunekit.core.signals`)
    required_signals: ClassVar[frozenset[str]] = frozenset()

    def __post_init__(self) -> None:
        """Check every field (hyperparameter) of a ``@dataclass`` subclass against its
        annotation; a subclass adding value checks calls ``super().__post_init__()`` first."""
        check_fields(self)

    @abc.abstractmethod
    def weights(self, inputs: PruneInputs) -> torch.Tensor:
        """``(B, N)`` non-negative token weights."""
