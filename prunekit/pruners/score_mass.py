"""Adaptive budgets for any scoring pruner: keep the prefix that holds a share of the score mass.

``ScoreMass`` wraps a pruner whose :class:`~prunekit.core.pruner.Picks` are a priority
order with per-token ``scores`` (FastV, FasterVLM, norm top-k, ResPrune, DivPrune, ...).
It runs the inner pruner's ``select`` at the budget's count, the ceiling, then keeps,
per sample, the shortest prefix of the inner priority order whose scores (clamped at 0)
sum to at least ``mass`` of the sample's total score over its valid tokens, clamped to
``[min_keep, ceiling]``. Baselines can so be compared with adaptive ResPrune at equal
*average* tokens kept::

    create_pruner("score_mass", pruner="fastv", mass=0.9)      # attach(..., llm_layer=2)
    create_pruner("score_mass", pruner={"name": "norm_topk", "p": 1.0}, mass=0.8, min_keep=4)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from prunekit.core.inputs import PruneInputs
from prunekit.core.pruner import Picks, TokenPruner
from prunekit.pruners.composed import build_strategy

#: an inner pruner by registered name, by ``{"name": ..., **params}`` or as an object
PrunerSpec = str | Mapping[str, Any] | TokenPruner
#: relative slack of the mass test (times the sample's total): float32 scores summed in
#: another order must not miss a prefix that reaches the mass exactly (0.5 + 0.3 of 1.0)
MASS_RTOL = 1e-6


def mass_counts(
    scores: torch.Tensor,
    order: torch.Tensor,
    token_mask: torch.Tensor,
    ceiling: torch.Tensor,
    mass: float,
    min_keep: int = 1,
) -> torch.Tensor:
    """``(B,)`` int64 tokens kept per sample by the score-mass criterion.

    Args:
        scores: ``(B, N)`` per-token scores; negative ones count as 0, padded ones are ignored.
        order: ``(B, K)`` int64 priority order; entries past a sample's ceiling are ignored.
        token_mask: ``(B, N)`` bool, ``True`` for valid tokens.
        ceiling: ``(B,)`` int64 at most ``K``, the budget's count of each sample.
        mass: share of the sample's total score the kept prefix must hold, in (0, 1].
        min_keep: floor of the count (the ceiling wins when it is lower).

    The count is the length of the shortest prefix of ``order`` whose scores sum to at
    least ``mass`` times the sample's total over its valid tokens (up to
    :data:`MASS_RTOL`), the ceiling if no prefix within it does; a sample whose scores
    are all 0 keeps ``min_keep``. Sums run in float64.
    """
    weights = scores.double().clamp_min(0.0).masked_fill(~token_mask, 0.0)
    total = weights.sum(dim=1)
    ranked = weights.gather(1, order.clamp(0, weights.shape[1] - 1))
    # weights are >= 0, so the running sum only grows: the slots still below the target
    # are those before the prefix reaches it (slots past the ceiling are cut by the clamp)
    below = ranked.cumsum(dim=1) < ((mass - MASS_RTOL) * total).unsqueeze(1)
    return torch.minimum((below.sum(dim=1) + 1).clamp_min(min_keep), ceiling)


class _WatchedInputs(PruneInputs):
    """:class:`PruneInputs` that note whether ``keep_counts`` was read (by a pruner that
    splits its choice by the count, whose order is then no priority order)."""

    def __getattribute__(self, name: str) -> Any:
        if name == "keep_counts":
            object.__setattr__(self, "read_keep_counts", True)
        return object.__getattribute__(self, name)


def _watched(inputs: PruneInputs) -> _WatchedInputs:
    values = {f.name: object.__getattribute__(inputs, f.name) for f in dataclasses.fields(inputs)}
    watched = _WatchedInputs(**values)
    object.__setattr__(watched, "read_keep_counts", False)
    return watched


def _refusal(picks: Picks, read_keep_counts: bool) -> str | None:
    """Why the inner pruner's picks are no scored priority order (``None``: they are one)."""
    if picks.values is not None:
        return "merges tokens (Picks.values)"
    if picks.counts is not None:
        return "chooses its own counts (Picks.counts)"
    if read_keep_counts:
        return "reads inputs.keep_counts to split its choice"
    if picks.scores is None:
        return "returns no scores"
    return None


@dataclass
class ScoreMass(TokenPruner):
    """Any scoring pruner with an adaptive budget: each sample keeps the shortest prefix of
    the inner pruner's priority order that holds ``mass`` of its total score.

    Args:
        pruner: the inner pruner: a registered name (``"fastv"``), a mapping
            ``{"name": "norm_topk", **params}`` or a :class:`TokenPruner`; built at construction.
        mass: share of each sample's total score (over its valid tokens, scores clamped
            at 0) that the kept tokens must hold, in (0, 1]. ``1.0`` (the default) keeps the
            budget's count: the inner pruner unchanged, not adaptive.
        min_keep: the fewest tokens a sample keeps (``>= 1``); the budget's count is the
            ceiling and wins over it.

    The inner pruner's ``select`` runs once, at the budget's count; its scores are
    reported. The inner pruner's required signals and pruning points are the wrapper's,
    so an in-LLM pruner such as FastV is attached as usual (``llm_layer=K``).

    Refused, with an error naming ``pruner``: an adaptive inner pruner, one whose picks
    carry no ``scores``, merge tokens (``Picks.values``: VisionZip, pooling), or read
    ``inputs.keep_counts`` to split their choice (VisPruner, DART): for these the order is
    not a priority order, so a shorter prefix is not the method's choice at that count.
    The last three are found when ``select`` first runs. A pruner that reorders its
    picks after choosing them in any other way cannot be detected; do not wrap it.
    """

    name = "score_mass"

    pruner: PrunerSpec = "resprune"
    mass: float = 1.0
    min_keep: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < self.mass <= 1.0:
            raise ValueError(f"mass must be in (0, 1], got {self.mass!r}")
        if self.min_keep < 1:
            raise ValueError(f"min_keep must be >= 1, got {self.min_keep!r}")
        self.pruner = build_strategy("pruner", self.pruner, TokenPruner)
        if self.pruner.adaptive:
            raise ValueError(
                f"pruner: {type(self.pruner).__name__} already chooses its own counts "
                "(adaptive); score_mass needs a pruner with a fixed budget"
            )
        self.required_signals = self.pruner.required_signals
        self.pruning_points = self.pruner.pruning_points

    @property
    def adaptive(self) -> bool:
        return self.mass < 1.0

    @property
    def relevance(self) -> Any:
        """The inner pruner's relevance strategy, if any (adapters read it to tell a
        text-conditioned pruner)."""
        return getattr(self.pruner, "relevance", None)

    def select(self, inputs: PruneInputs, num_keep: int) -> Picks:
        inner = type(self.pruner).__name__
        watched = _watched(inputs)
        picks = self.pruner.select(watched, num_keep)
        if not isinstance(picks, Picks):
            raise TypeError(f"pruner: {inner}.select must return prunekit.Picks")
        shape = (inputs.batch_size, num_keep)
        order = picks.order
        if (
            not isinstance(order, torch.Tensor)
            or tuple(order.shape) != shape
            or order.dtype != torch.int64
        ):
            raise RuntimeError(
                f"pruner: {inner}.select must return an int64 order of shape {shape}"
            )
        refusal = _refusal(picks, watched.read_keep_counts)
        if refusal is not None:
            raise ValueError(
                f"pruner: {inner} {refusal}; score_mass needs a priority order with per-token "
                "scores (FastV, FasterVLM, norm top-k, ResPrune, ...)"
            )
        scores = picks.scores
        if tuple(scores.shape) != (inputs.batch_size, inputs.num_tokens):
            raise RuntimeError(
                f"pruner: {inner}.select returned scores of shape {tuple(scores.shape)}, "
                f"expected {(inputs.batch_size, inputs.num_tokens)}"
            )
        if not bool(torch.isfinite(scores[inputs.token_mask]).all()):
            raise ValueError(f"pruner: {inner} returned NaN or infinite scores of valid tokens")
        if not self.adaptive:
            return Picks(order=order, scores=scores)
        counts = mass_counts(
            scores, order, inputs.token_mask, inputs.keep_counts, self.mass, self.min_keep
        )
        return Picks(order=order, scores=scores, counts=counts)
