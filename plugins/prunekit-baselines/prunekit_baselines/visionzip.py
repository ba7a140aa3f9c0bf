"""VisionZip (Yang et al., CVPR 2025, "VisionZip: Longer is Better but Not Necessary
in Vision Language Models", arXiv 2412.04467)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from prunekit.core.inputs import PruneInputs, compute_dtype
from prunekit.core.points import PRE_PROJECTOR
from prunekit.core.pruner import Picks, TokenPruner
from prunekit.core.tensor_ops import gather_rows
from prunekit_baselines._ops import (
    CLS_ATTENTION,
    ZERO_NORM_EPS,
    cosine,
    cosine_tie_atol,
    unit_rows,
    widest_float,
)

VISION_KEYS = "vision_keys"

#: the official split 64 = 54 + 10, 128 = 108 + 20, 192 = 162 + 30: 10 of every 64 tokens
#: are contextual
CONTEXTUAL_RATIO = 10 / 64


def contextual_count(
    num_keep: int, ratio: float = CONTEXTUAL_RATIO, fixed: int | None = None
) -> int:
    """Contextual tokens in a budget of ``num_keep``: ``fixed`` (at most ``num_keep``) if
    given, else ``floor(num_keep * ratio + 1/2)``.

    >>> [contextual_count(k) for k in (64, 128, 192, 1, 4, 100)]
    [10, 20, 30, 0, 1, 16]
    """
    if fixed is not None:
        return min(fixed, num_keep)
    return min(num_keep, math.floor(num_keep * ratio + 0.5 + 1e-9))


def contextual_counts(
    keep_counts: torch.Tensor, ratio: float = CONTEXTUAL_RATIO, fixed: int | None = None
) -> torch.Tensor:
    """:func:`contextual_count` of every entry of a ``(B,)`` int64 tensor, on its device."""
    if fixed is not None:
        return keep_counts.clamp(max=fixed)
    ratioed = torch.floor(keep_counts.double() * ratio + 0.5 + 1e-9).long()
    return torch.minimum(keep_counts, ratioed)


def visionzip_merge(
    tokens: torch.Tensor,
    attention: torch.Tensor,
    keys: torch.Tensor,
    valid: torch.Tensor,
    keep_counts: torch.Tensor,
    num_contextual: torch.Tensor,
    num_keep: int,
    max_contextual: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """VisionZip's dominant selection and contextual merging, batched over ragged samples.

    Args:
        tokens: ``(B, N, d)`` features (the pre-projector hidden states).
        attention: ``(B, H, N)`` [CLS] attention per head.
        keys: ``(B, N, H, d_head)`` keys of the same attention layer.
        valid: ``(B, N)`` bool, the real tokens.
        keep_counts: ``(B,)`` tokens kept per sample, ``K_b <=`` its valid tokens.
        num_contextual: ``(B,)`` ``C_b <= K_b`` of them contextual; ``K_b - C_b`` dominant.
        num_keep: ``max K_b`` and ``max_contextual``: ``>= max C_b`` (shapes, known on the host).

    Returns:
        ``(B, num_keep)`` indices, each sample's ``K_b`` kept tokens in position order
        first, and ``(B, num_keep, d)`` their values (dominant: unchanged; contextual:
        target plus the mean of the tokens merged into it). No host synchronisation.
    """
    batch, n, _ = tokens.shape
    position = torch.arange(n, device=tokens.device)
    keep, contextual = keep_counts.unsqueeze(1), num_contextual.unsqueeze(1)  # (B, 1)
    score = attention.sum(dim=1).masked_fill(~valid, -torch.inf)
    ranking = torch.sort(score, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(ranking).scatter_(1, ranking, position.expand(batch, -1))
    dominant = valid & (rank < keep - contextual)
    # the remaining tokens in position order; every step-th of them (the first C) is a target
    remaining = valid & ~dominant
    slot = remaining.cumsum(dim=1) - 1
    step = (remaining.sum(dim=1, keepdim=True) // contextual.clamp_min(1)).clamp_min(1)
    target_slot = slot // step
    is_target = remaining & (slot % step == 0) & (target_slot < contextual)
    order = torch.sort((~(dominant | is_target)).to(torch.uint8), dim=1, stable=True).indices
    order = order[:, :num_keep]
    values = gather_rows(tokens, order)
    if max_contextual == 0:
        return order, values

    # targets in position order (B, C); each other remaining token joins its most similar one
    targets = torch.sort((~is_target).to(torch.uint8), dim=1, stable=True).indices
    targets = targets[:, :max_contextual]
    real_target = torch.arange(max_contextual, device=tokens.device) < contextual  # (B, C)
    metric = keys.mean(dim=2)  # head-averaged keys, (B, N, d_head)
    metric = unit_rows(metric.to(widest_float(metric.device)), eps=ZERO_NORM_EPS)
    precision = compute_dtype(tokens.dtype)  # float64 stays float64
    similarity = cosine(metric, gather_rows(metric, targets), precision)  # (B, N, C)
    similarity = similarity.masked_fill(~real_target.unsqueeze(1), -torch.inf)
    # the first target within the tie tolerance of the most similar one
    best = similarity.amax(dim=-1, keepdim=True) - cosine_tie_atol(precision, metric.shape[-1])
    choice = (similarity >= best).to(torch.uint8).argmax(dim=-1)
    member = (remaining & ~is_target).unsqueeze(-1)
    assign = F.one_hot(choice, max_contextual).to(tokens.dtype) * member
    members = assign.sum(dim=1).clamp_min(1).unsqueeze(-1)  # (B, C, 1)
    sources = tokens.masked_fill(~member, 0.0)  # padded rows may hold anything, even NaN
    merged = assign.transpose(1, 2) @ sources / members  # (B, C, d)
    # a kept target's value: itself plus the mean of its members
    at_target = is_target.gather(1, order).unsqueeze(-1)
    which = target_slot.gather(1, order).clamp(0, max_contextual - 1)
    return order, torch.where(at_target, values + gather_rows(merged, which), values)


@dataclass
class VisionZip(TokenPruner):
    """VisionZip: dominant tokens by [CLS] attention plus contextual tokens merged by key similarity.

    Paper: Yang et al., "VisionZip: Longer is Better but Not Necessary in Vision
    Language Models" (CVPR 2025, arXiv 2412.04467).
    Official code: https://github.com/dvlab-research/VisionZip
    (``visionzip/clip_encoder.py``, ``CLIPVisionTower_VisionZip.forward``;
    ``visionzip/utils.py``, ``CLIPAttention_forward`` returning the head mean of
    the raw keys ``k_proj(x)`` as the merging metric; ``visionzip/main.py``,
    ``visionzip(model, dominant, contextual)``, which passes ``dominant - 1``
    patches because [CLS] counts as one dominant token).

    For a budget of ``K`` tokens split into ``D`` dominant and ``C`` contextual:

    1. *dominant*: the ``D`` tokens with the largest [CLS] attention summed over
       heads;
    2. *contextual*: the ``R = N - D`` other tokens, in position order; the
       ``C`` targets are every ``max(1, R // C)``-th of them (the first ``C``);
       every other remaining token joins the target whose head-averaged key is
       most cosine-similar (first target on ties), and a target becomes
       ``target + mean(its members)`` (the target alone if it has none).

    The result's ``values`` carry the contextual tokens (``PruneResult.values``):
    at a target's slot its merged value, elsewhere the original token.

    Split: ``C = floor(K * contextual_ratio + 1/2)`` with ``contextual_ratio =
    10/64``, which gives exactly the official settings 64 = 54 + 10,
    128 = 108 + 20 and 192 = 162 + 30, and keeps that proportion for other
    budgets; ``contextual=`` fixes ``C`` instead (capped at ``K``).

    Tokens: the vision tower's features before the projector (LLaVA: layer -2);
    signals ``"cls_attention"`` ``(B, H, N)`` and ``"vision_keys"``
    ``(B, N, H, d_head)`` from the same layer. Pruning point
    ``"pre_projector"``: ``prunekit.attach(model, "visionzip", budget=64,
    before_projector=True)``. The result's scores are the head-summed attention.

    Args:
        contextual_ratio: share of the budget that is contextual, in [0, 1].
        contextual: a fixed number of contextual tokens instead (``None``: use the ratio).

    Departures from the official code:

    * [CLS]: the official code always keeps the [CLS] hidden state as one of the
      ``D`` dominant tokens and feeds it to the LLM. In LLaVA-1.5 as
      transformers runs it (``vision_feature_select_strategy="default"``),
      [CLS] is not an image token and the budget counts image tokens, so
      prunekit gives its slot to one more dominant patch: ``D`` patches by
      attention instead of [CLS] + ``D - 1``. That extra patch (the ``D``-th
      most attended) also shifts the contextual targets: it leaves the
      remaining set, which has ``R = N - D`` patches instead of the official
      ``N - D + 1`` (both exclude [CLS]). The stride becomes ``max(1, (N - D)
      // C)`` instead of ``max(1, (N - D + 1) // C)`` (the same unless ``C``
      divides ``N - D + 1``; 52 for both at K = 64 on 576 patches), and every
      remaining patch after the extra one moves one slot earlier, so each
      target from there on is the remaining patch that follows the official
      target in position order (the extra patch's own slot, if it was a
      target, goes to the next remaining patch); the members merged into each
      target change with them, and the extra patch is kept as it is (officially
      it is a target or merged into one). Equivalently, prunekit with budget
      ``K`` equals the official code with ``D`` patches + [CLS] and ``C``
      contextual tokens, [CLS] removed. With a ``"full"`` feature strategy
      [CLS] is token 0 and ranks by its own attention like any token.
    * order: the official code feeds [CLS, dominant in position order,
      contextual in target order]; prunekit keeps every kept token at its
      original position, a contextual token at its target's.
    * ties: attention ties go to the lower index (``torch.topk`` leaves them
      unspecified).
    * numerics: cosines computed in float64 and compared in the input's
      precision, at least float32 (rounded to float32, or kept in float64 with
      ties within ``d_head * eps``: :func:`~prunekit_baselines._ops.cosine`,
      :func:`~prunekit_baselines._ops.cosine_tie_atol`), merging in float32 or wider
      (officially all in the model's dtype, float16); a key of norm 0 counts as
      orthogonal to every target (officially NaN).
    * ragged batches: each sample runs on its own valid tokens with its own split,
      batched (padding masked, no loop over the samples).
    """

    contextual_ratio: float = CONTEXTUAL_RATIO
    contextual: int | None = None

    name = "visionzip"
    required_signals: ClassVar[frozenset[str]] = frozenset({CLS_ATTENTION, VISION_KEYS})
    pruning_points: ClassVar[frozenset[str] | None] = frozenset({PRE_PROJECTOR})

    def __post_init__(self) -> None:
        super().__post_init__()  # types, from the annotations
        if not (0.0 <= self.contextual_ratio <= 1.0):
            raise ValueError(f"contextual_ratio must be in [0, 1], got {self.contextual_ratio}")
        if self.contextual is not None and self.contextual < 0:
            raise ValueError(f"contextual must be >= 0, got {self.contextual}")

    def split(self, num_keep: int) -> tuple[int, int]:
        """``(dominant, contextual)`` token counts for a budget of ``num_keep``."""
        c = contextual_count(num_keep, self.contextual_ratio, self.contextual)
        return num_keep - c, c

    def select(self, inputs: PruneInputs, num_keep: int) -> Picks:
        attention = inputs.signals[CLS_ATTENTION]
        keys = inputs.signals[VISION_KEYS]  # shapes checked by validate_inputs
        counts = inputs.keep_counts
        if counts is None:
            counts = inputs.valid_counts.clamp(max=num_keep)
        contextual = contextual_counts(counts, self.contextual_ratio, self.contextual)
        order, values = visionzip_merge(
            inputs.tokens,
            attention,
            keys,
            inputs.token_mask,
            counts,
            contextual,
            num_keep,
            self.split(num_keep)[1],  # the count is non-decreasing in the budget
        )
        scores = attention.sum(dim=1).masked_fill(~inputs.token_mask, 0.0)
        return Picks(order=order, scores=scores, values=values)


def register(registry) -> None:
    registry.add_pruner(VisionZip)
