"""VisPruner (Zhang et al., ICCV 2025, "Beyond Text-Visual Attention: Exploiting
Visual Cues for Effective Token Pruning in VLMs"; arXiv 2412.01818, the later
version of the FasterVLM paper)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from prunekit.core.inputs import PruneInputs
from prunekit.core.pruner import Picks, TokenPruner
from prunekit_baselines.fastervlm import (
    CLS_ATTENTION,
    cosine,
    gather_tokens,
    head_mean,
    unit_rows,
    valid_groups,
)


def _rank_descending(scores: torch.Tensor) -> torch.Tensor:
    """Indices sorting each row of ``scores`` descending; ties keep the lower index first."""
    return torch.sort(scores, dim=-1, descending=True, stable=True).indices


def vispruner_indices(
    features: torch.Tensor,
    attention: torch.Tensor,
    num_keep: int,
    important_ratio: float = 0.5,
    drop_per_round: int = 8,
) -> torch.Tensor:
    """VisPruner's selection for a batch of equal-size samples.

    Args:
        features: ``(B, N, C)`` visual tokens (the pre-projector patch features).
        attention: ``(B, N)`` head-mean [CLS] attention.
        num_keep: ``K`` tokens kept per sample, ``K <= N``.
        important_ratio: ``r``; ``int(K * r)`` important tokens.
        drop_per_round: most even-position tokens dropped per round (8 officially).

    Returns:
        ``(B, K)`` indices: the important tokens in attention order, then the
        diverse ones in their final residual order.
    """
    batch, n, dim = features.shape
    n_important = int(num_keep * important_ratio)
    n_diverse = num_keep - n_important
    ranking = _rank_descending(attention)
    important, residual = ranking[:, :n_important], ranking[:, n_important:]
    if n_diverse == 0:  # the official loop would index an empty odd half; nothing stays anyway
        return important
    normed = unit_rows(features)
    while True:
        size = residual.shape[1]
        drop = min(drop_per_round, size - n_diverse)
        if drop <= 0:
            break
        tokens = gather_tokens(normed, residual)  # (B, R, C) in residual order
        even, odd = tokens[:, ::2], tokens[:, 1::2]  # ceil(R/2) and floor(R/2) tokens
        similarity = cosine(even, odd).amax(dim=-1)  # (B, ceil(R/2))
        # drop the `drop` even tokens most similar to an odd one; the others follow in
        # descending similarity, then every odd token in its current order
        kept_even = _rank_descending(similarity)[:, drop:]
        residual = torch.cat([residual[:, ::2].gather(1, kept_even), residual[:, 1::2]], dim=1)
    return torch.cat([important, residual], dim=1)


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
    * similarities are computed in float64 and compared at float32 resolution
      (:func:`~prunekit_baselines.fastervlm.cosine`; the official code runs in
      float16, where near-ties flip between runs), features of norm 0 are
      treated as orthogonal to everything instead of giving NaN;
    * ties in both rankings keep the lower index / earlier token first
      (``torch.argsort`` is not stable);
    * ragged batches: each sample runs on its own valid tokens and its own count.
    """

    important_ratio: float = 0.5
    drop_per_round: int = 8

    name = "vispruner"
    required_signals: ClassVar[frozenset[str]] = frozenset({CLS_ATTENTION})
    pruning_points: ClassVar[frozenset[str] | None] = frozenset({"pre_projector"})

    def __post_init__(self) -> None:
        if isinstance(self.important_ratio, bool) or not isinstance(
            self.important_ratio, (int, float)
        ):
            raise TypeError(
                f"important_ratio must be a real number, got {type(self.important_ratio).__name__}"
            )
        if not (0.0 <= self.important_ratio <= 1.0):
            raise ValueError(f"important_ratio must be in [0, 1], got {self.important_ratio}")
        if isinstance(self.drop_per_round, bool) or not isinstance(self.drop_per_round, int):
            raise TypeError(
                f"drop_per_round must be an int, got {type(self.drop_per_round).__name__}"
            )
        if self.drop_per_round < 1:
            raise ValueError(f"drop_per_round must be >= 1, got {self.drop_per_round}")

    def select(self, inputs: PruneInputs, num_keep: int) -> Picks:
        attention = head_mean(inputs.signals[CLS_ATTENTION])
        order = torch.zeros(
            inputs.batch_size, num_keep, dtype=torch.int64, device=inputs.tokens.device
        )
        for rows, positions, count in valid_groups(inputs):
            local = vispruner_indices(
                gather_tokens(inputs.tokens[rows], positions),
                gather_tokens(attention[rows], positions),
                count,
                self.important_ratio,
                self.drop_per_round,
            )
            order[rows, :count] = positions.gather(1, local)
        return Picks(order=order, scores=attention.masked_fill(~inputs.token_mask, 0.0))


def register(registry) -> None:
    registry.add_pruner("vispruner", VisPruner)
