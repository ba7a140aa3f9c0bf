"""The relevance-strategy contract."""

from __future__ import annotations

import abc
import math
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


def minmax_weights(
    relevance: torch.Tensor,
    valid: torch.Tensor,
    informative: torch.Tensor,
    *,
    alpha: float,
    eps: float,
    tie_rtol: float,
) -> torch.Tensor:
    """Weights ``w_i = minmax(r)_i ** alpha`` from a raw relevance ``r`` ``(B, N)``.

    The min and max run over each sample's ``valid`` tokens; relevances within
    ``tie_rtol * (max r - min r)`` of the minimum count as the minimum (weight 0), so
    float noise between duplicate tokens cannot decide which one is "the minimum".
    Samples not ``informative`` ``(B,)`` (no text, no signal) and samples whose
    relevance is flat (``max r - min r <= eps``) get ``w = 1``: a flat relevance ranks
    nothing. Padded slots get 0. Every text-like relevance strategy ends with this.
    """
    r_min = relevance.masked_fill(~valid, math.inf).amin(dim=1, keepdim=True)
    r_max = relevance.masked_fill(~valid, -math.inf).amax(dim=1, keepdim=True)
    spread = r_max - r_min
    normed = ((relevance - r_min) / (spread + eps)).clamp(0.0, 1.0)
    normed = normed.masked_fill(relevance - r_min <= spread * tie_rtol, 0.0)
    w = normed.pow(alpha)
    keep = informative.view(-1, 1) & (spread > eps)
    w = torch.where(keep, w, torch.ones_like(w))
    return w.masked_fill(~valid, 0.0)


def check_guidance(alpha: float, eps: float) -> None:
    """Raise ``ValueError`` naming ``alpha`` (not finite and >= 0) or ``eps`` (not > 0),
    the two parameters every min-max-normalised relevance shares."""
    if not (math.isfinite(alpha) and alpha >= 0):
        raise ValueError(f"alpha must be finite and >= 0, got {alpha}")
    if not (eps > 0):
        raise ValueError(f"eps must be > 0, got {eps}")
