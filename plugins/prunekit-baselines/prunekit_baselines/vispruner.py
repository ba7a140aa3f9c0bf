"""VisPruner (Zhang et al., ICCV 2025, "Beyond Text-Visual Attention: Exploiting
Visual Cues for Effective Token Pruning in VLMs"; arXiv 2412.01818, the later
version of the FasterVLM paper)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from prunekit.core.inputs import PruneInputs, compute_dtype
from prunekit.core.points import PRE_PROJECTOR
from prunekit.core.pruner import Picks, TokenPruner
from prunekit.core.tensor_ops import gather_rows
from prunekit_baselines._ops import (
    CLS_ATTENTION,
    ZERO_NORM_EPS,
    cosine,
    cosine_tie_atol,
    head_mean,
    unit_rows,
    widest_float,
)


def _rank_descending(scores: torch.Tensor, tie_atol: float = 0.0) -> torch.Tensor:
    """Indices sorting each row of ``scores`` descending; ties keep the lower index first.

    With ``tie_atol > 0``, scores within ``tie_atol`` of their neighbour in that order
    tie (a run of such neighbours is one tie), so values that differ only by rounding
    rank by index, whichever way the rounding went.
    """
    ranked = torch.sort(scores, dim=-1, descending=True, stable=True)
    if tie_atol <= 0 or scores.shape[-1] < 2:
        return ranked.indices
    gap = ranked.values[..., :-1] - ranked.values[..., 1:]  # >= 0; NaN between two -inf
    start = torch.cat([torch.ones_like(gap[..., :1], dtype=torch.bool), gap > tie_atol], -1)
    group = torch.empty_like(ranked.indices).scatter_(-1, ranked.indices, start.cumsum(-1))
    return torch.sort(group, dim=-1, stable=True).indices


def _schedule(
    valid_counts: torch.Tensor,
    keep_counts: torch.Tensor,
    important_ratio: float,
    drop_per_round: int,
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor], list[int]]:
    """The rounds of every sample, from its counts alone (host integer arithmetic).

    Returns ``(B,)`` important counts, ``(B,)`` residual sizes before the first round
    (0 without diverse tokens), the ``(B,)`` even tokens dropped in each round (0 once
    a sample is done) and the widest residual before each round and after the last.
    """
    important = torch.floor(keep_counts.double() * important_ratio).long()
    diverse = keep_counts - important
    size = torch.where(diverse > 0, valid_counts - important, 0)  # no diverse token: no rounds
    first, drops, widths = size, [], [int(size.max())]
    while True:
        drop = (size - diverse).clamp(0, drop_per_round)
        if not bool(drop.any()):
            return important, first, drops, widths
        size = size - torch.minimum(drop, (size + 1) // 2)  # the even half holds ceil(R/2)
        drops.append(drop)
        widths.append(int(size.max()))


def vispruner_order(
    features: torch.Tensor,
    attention: torch.Tensor,
    valid: torch.Tensor,
    keep_counts: torch.Tensor,
    num_keep: int,
    important_ratio: float = 0.5,
    drop_per_round: int = 8,
) -> torch.Tensor:
    """VisPruner's selection, batched over samples with their own valid tokens and counts.

    Args:
        features: ``(B, N, C)`` visual tokens (the pre-projector patch features).
        attention: ``(B, N)`` head-mean [CLS] attention.
        valid: ``(B, N)`` bool, the real tokens.
        keep_counts: ``(B,)`` ``K_b`` tokens kept per sample, at most its valid tokens.
        num_keep: ``max K_b`` (the width of the result).
        important_ratio: ``r``; ``int(K_b * r)`` important tokens.
        drop_per_round: most even-position tokens dropped per round (8 officially).

    Returns:
        ``(B, num_keep)`` indices: sample ``b``'s important tokens in attention
        order, then its diverse ones in their final residual order, then padding.

    The number and sizes of the rounds follow from the counts alone: they are
    computed on the host from one read of the counts, before the rounds; the
    rounds themselves run on the device for every sample at once, without
    host synchronisation (a sample that is done keeps its residual).
    """
    batch, n, _ = features.shape
    device = features.device
    counts = torch.stack([valid.sum(dim=1), keep_counts]).cpu()
    schedule = _schedule(counts[0], counts[1], important_ratio, drop_per_round)
    important, first, drops, widths = schedule
    plan = torch.stack([important, first, *drops]).to(device).unsqueeze(-1)  # (2 + rounds, B, 1)
    ranking = _rank_descending(attention.masked_fill(~valid, -torch.inf))  # valid tokens first
    start = plan[0] + torch.arange(widths[0], device=device)
    residual = ranking.gather(1, start.clamp(max=n - 1))  # (B, R) in attention order
    normed = unit_rows(features.to(widest_float(device)), eps=ZERO_NORM_EPS)
    precision = compute_dtype(features.dtype)  # float64 stays float64
    tie_atol = cosine_tie_atol(precision, features.shape[-1])
    size = plan[1]
    for step, width in enumerate(widths[1:], start=2):
        drop = plan[step]
        tokens = gather_rows(normed, residual)  # (B, R, C) in residual order
        even, odd = tokens[:, ::2], tokens[:, 1::2]  # ceil(R/2) and floor(R/2) tokens
        real_odd = 2 * torch.arange(odd.shape[1], device=device) + 1 < size
        real_even = 2 * torch.arange(even.shape[1], device=device) < size
        similarity = cosine(even, odd, precision)
        similarity = similarity.masked_fill(~real_odd.unsqueeze(1), -torch.inf)
        similarity = similarity.amax(dim=-1).masked_fill(~real_even, -torch.inf)
        # drop the `drop` even tokens most similar to an odd one; the others follow in
        # descending similarity, then every odd token in its current order
        evens = residual[:, ::2].gather(1, _rank_descending(similarity, tie_atol))
        halves = torch.cat([evens, residual[:, 1::2]], dim=1)
        n_even = (size + 1) // 2
        kept_even = (n_even - drop).clamp_min(0)
        slot = torch.arange(width, device=device)
        source = torch.where(
            slot < kept_even, n_even - kept_even + slot, evens.shape[1] + slot - kept_even
        )
        shrunk = halves.gather(1, source.clamp(0, halves.shape[1] - 1))
        residual = torch.where(drop > 0, shrunk, residual[:, :width])
        size = size - (n_even - kept_even)
    slot = torch.arange(num_keep, device=device)
    source = torch.where(slot < plan[0], slot, n + slot - plan[0])
    chosen = torch.cat([ranking, residual], dim=1)
    return chosen.gather(1, source.clamp(max=chosen.shape[1] - 1))


def vispruner_indices(
    features: torch.Tensor,
    attention: torch.Tensor,
    num_keep: int,
    important_ratio: float = 0.5,
    drop_per_round: int = 8,
) -> torch.Tensor:
    """VisPruner's selection for a batch of equal-size samples (:func:`vispruner_order`
    with every token valid and ``K = num_keep`` each): ``(B, K)`` indices, the important
    tokens in attention order, then the diverse ones in their final residual order."""
    batch, n, _ = features.shape
    valid = torch.ones(batch, n, dtype=torch.bool, device=features.device)
    keep = torch.full((batch,), num_keep, dtype=torch.int64, device=features.device)
    return vispruner_order(
        features, attention, valid, keep, num_keep, important_ratio, drop_per_round
    )


@dataclass
class VisPruner(TokenPruner):
    """VisPruner: important tokens by [CLS] attention plus diverse tokens by duplicate removal.

    Paper: Zhang et al., "Beyond Text-Visual Attention: Exploiting Visual Cues
    for Effective Token Pruning in VLMs" (ICCV 2025; arXiv 2412.01818, which
    replaced the FasterVLM version of the paper).
    Official code: https://github.com/Theia-4869/VisPruner
    (``llava/model/llava_arch.py``, ``LlavaMetaForCausalLM.encode_images``; the
    attention is ``attentions[select_layer][:, :, 0, 1:]`` of the CLIP tower's
    feature layer, -2 for LLaVA-1.5, next to the patch features of that layer).

    For a budget of ``K`` tokens and ratio ``r`` (default 0.5):

    1. the ``int(K * r)`` tokens with the largest head-mean [CLS] attention are
       *important*;
    2. the others, in descending attention order, are the residual; in rounds,
       the residual's even positions are matched to its odd positions by the
       cosine of their features, the ``min(8, R - (K - int(K r)))`` even tokens
       whose best match is most similar are dropped, and the residual becomes
       [kept even tokens in descending best-match similarity, odd tokens in their
       order], until ``K - int(K r)`` remain (the *diverse* tokens).

    Tokens: the vision tower's features before the projector (LLaVA: layer -2
    patch features); signal ``"cls_attention"`` ``(B, H, N)`` from the same
    layer. Pruning point ``"pre_projector"``: ``prunekit.attach(model,
    "vispruner", budget=..., before_projector=True)``. The result's scores are
    the head-mean attention.

    Args:
        important_ratio: ``r`` in [0, 1], the share of the budget chosen by attention.
        drop_per_round: the most even tokens dropped per round (8 in the official code).

    Departures from the official code:

    * an odd residual size ``R`` (the even half has one token more than the odd
      half) breaks the official indexing, which sizes the kept even half as
      ``R // 2 - r``: it raises an index error, or, where the shapes happen to
      broadcast, matches the generalisation (``R // 2 - r = 1``) or loses a kept
      even token (``R // 2 - r = 0``, fewer tokens than asked). prunekit keeps
      ``ceil(R/2) - r`` even tokens, the natural generalisation, identical for
      even ``R`` (always the case with the official settings, e.g. 576 tokens,
      K = 64, r = 0.5);
    * a round asked to drop more even tokens than the residual's even half holds
      (``min(8, R - K + int(K r)) > ceil(R/2)``, which happens when fewer than 8
      diverse tokens are kept, e.g. K = 8, r = 0.5) also breaks the official
      indexing; prunekit drops the whole even half and goes on, so every sample
      still keeps exactly ``K`` tokens;
    * with no diverse token (``int(K r) == K``) the residual is simply dropped
      (the official loop would take the maximum over an empty odd half at ``R = 1``);
    * similarities are compared in the input's precision, as the official code
      does in the model's dtype, but never below float32 (the official float16
      runs flip near-ties between runs): computed in float64, then rounded to
      float32 for float16 / bfloat16 / float32 inputs (exact ties), kept in
      float64 for float64 inputs, where similarities within ``C * eps`` of each
      other tie (``C`` features, ``eps`` = 2.2e-16; ~2.3e-13 for ``C = 1024``,
      the most two float64 evaluations of one cosine can differ), so that a
      duplicate token's rounding, which depends on the batch layout, cannot flip
      a ranking
      (:func:`~prunekit_baselines._ops.cosine`,
      :func:`~prunekit_baselines._ops.cosine_tie_atol`); features of norm 0
      are treated as orthogonal to everything instead of giving NaN;
    * ties in both rankings keep the lower index / earlier token first
      (``torch.argsort`` is not stable);
    * ragged batches: each sample runs on its own valid tokens and its own count,
      batched (padding masked, no loop over the samples).
    """

    important_ratio: float = 0.5
    drop_per_round: int = 8

    name = "vispruner"
    required_signals: ClassVar[frozenset[str]] = frozenset({CLS_ATTENTION})
    pruning_points: ClassVar[frozenset[str] | None] = frozenset({PRE_PROJECTOR})

    def __post_init__(self) -> None:
        super().__post_init__()  # types, from the annotations
        if not (0.0 <= self.important_ratio <= 1.0):
            raise ValueError(f"important_ratio must be in [0, 1], got {self.important_ratio}")
        if self.drop_per_round < 1:
            raise ValueError(f"drop_per_round must be >= 1, got {self.drop_per_round}")

    def select(self, inputs: PruneInputs, num_keep: int) -> Picks:
        attention = head_mean(inputs.signals[CLS_ATTENTION])
        counts = inputs.keep_counts
        if counts is None:
            counts = inputs.valid_counts.clamp(max=num_keep)
        order = vispruner_order(
            inputs.tokens,
            attention,
            inputs.token_mask,
            counts,
            num_keep,
            self.important_ratio,
            self.drop_per_round,
        )
        return Picks(order=order, scores=attention.masked_fill(~inputs.token_mask, 0.0))


def register(registry) -> None:
    registry.add_pruner(VisPruner)
