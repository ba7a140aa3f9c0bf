"""ResPrune (Li et al., arXiv 2603.21105): text-conditioned greedy subspace expansion.

``ResPrune`` is the composition ``TextRelevance(aggregation, alpha, center)``
x ``GreedyResidualSelection``: at every step it keeps the token maximising
``w_i * ||x_i - P_S x_i||^2``, where ``w_i`` is the min-max normalised text
relevance raised to ``alpha``. It runs on post-projector visual tokens and needs
no attention map. Without text (or when the prompt has no usable word) all
weights are 1: pure residual-energy selection. With ``energy`` the budget is adaptive:
each image keeps the shortest greedy prefix that explains that fraction of its token
energy (the budget being the ceiling).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from prunekit.core.errors import check_fields
from prunekit.pruners.composed import ComposedPruner
from prunekit.strategies.relevance.text import Aggregation, TextRelevance
from prunekit.strategies.selection.greedy_residual import (
    DEFAULT_MAX_GRAM_BYTES,
    Backend,
    GramMethod,
    GreedyResidualSelection,
)


@dataclass
class ResPrune(ComposedPruner):
    """ResPrune with the paper's defaults.

    Args:
        alpha: text-guidance strength (``w = r~ ** alpha``); 0 turns guidance off.
        aggregation: ``"max"`` (paper), ``"mean"`` or ``"pooled"`` over the text rows.
        center: optional ``(d,)`` vector removed from tokens and text before the
            cosine, or ``"embedding_mean"`` (the mean row of the LLM's input-embedding
            table, supplied by the VLM adapters); ``None`` is the paper's plain cosine.
        eps: stabiliser of the min-max normalisation.
        rank_tol: relative residual treated as zero (``None``: by dtype).
        method: ``"auto"``, ``"gram"`` or ``"rows"`` (see :func:`greedy_residual_order`).
        max_gram_bytes: memory bound above which ``"auto"`` avoids the ``N x N`` Gram matrix.
        backend: what runs the greedy steps, ``"auto"``, ``"native"``, ``"triton"`` or
            ``"torch"`` (see :func:`selection_backend`); all select the same tokens.
        energy: adaptive budget, in ``(0, 1]``: each sample keeps the fewest greedy picks
            whose span leaves at most ``1 - energy`` of its total weighted token energy
            unexplained, the budget's count being the ceiling (see :func:`energy_counts`);
            ``None`` keeps exactly the budget.
        min_keep: with ``energy``, the fewest tokens a sample keeps (``>= 1``).

    ``relevance`` and ``selection`` are built from these (not constructor arguments).
    ``merge`` (``"none"``, ``"lstsq"``, ``"nearest"``) and ``merge_norm`` come from
    :class:`ComposedPruner`: ``ResPrune(merge="lstsq")`` merges each dropped token into
    the kept token it loads on most in its projection on the kept span.
    """

    name = "resprune"

    alpha: float = 1.0
    aggregation: Aggregation = "max"
    center: torch.Tensor | str | None = None
    eps: float = 1e-6
    rank_tol: float | None = None
    method: GramMethod = "auto"
    max_gram_bytes: int = DEFAULT_MAX_GRAM_BYTES
    backend: Backend = "auto"
    energy: float | None = None
    min_keep: int = 1
    relevance: TextRelevance = field(init=False, repr=False)
    selection: GreedyResidualSelection = field(init=False, repr=False)

    def __post_init__(self) -> None:
        check_fields(self)  # errors name ResPrune's own fields, before the strategies are built
        self.relevance = TextRelevance(
            aggregation=self.aggregation, alpha=self.alpha, center=self.center, eps=self.eps
        )
        self.selection = GreedyResidualSelection(
            rank_tol=self.rank_tol,
            method=self.method,
            max_gram_bytes=self.max_gram_bytes,
            backend=self.backend,
            energy=self.energy,
            min_keep=self.min_keep,
        )
        super().__post_init__()
