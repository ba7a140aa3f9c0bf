"""FasterVLM (Zhang et al., arXiv 2412.01818v1, "[CLS] Attention is All You Need for
Training-Free Visual Token Pruning: Make VLM Inference Faster").

* :class:`FasterVLM`: keep the tokens the vision encoder's [CLS] query attends to
  most (head mean), in position order.
* :class:`ClsAttentionRelevance` (registered as relevance ``"cls_attention"``):
  the same head-mean [CLS] attention as relevance weights, so it composes with
  any selection, e.g. ``create_pruner("composed", relevance="cls_attention",
  selection="greedy_residual")``.

The [CLS]-attention signal and the cosine helpers VisionZip and VisPruner share live in
:mod:`prunekit_baselines._ops`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch

from prunekit.core.inputs import PruneInputs
from prunekit.pruners.composed import ComposedPruner
from prunekit.strategies.relevance.base import RelevanceStrategy
from prunekit.strategies.selection.topk import TopKSelection
from prunekit_baselines._ops import CLS_ATTENTION, head_mean

Normalization = Literal["max", "sum", "minmax", "none"]
NORMALIZATIONS = ("max", "sum", "minmax", "none")


@dataclass
class ClsAttentionRelevance(RelevanceStrategy):
    """Relevance from the vision encoder's [CLS] attention: ``w_i = norm(a)_i ** alpha``.

    ``a_i`` is the attention of the [CLS] query to token ``i`` averaged over
    heads (signal ``"cls_attention"``, ``(B, H, N)``, e.g. layer -2 of
    LLaVA-1.5's CLIP tower). Because the softmax row also covers [CLS] itself
    (and, with LLaVA's ``"default"`` feature strategy, [CLS] is not a token),
    ``a`` does not sum to 1 over the tokens; ``normalize`` fixes the scale per
    sample, over its valid tokens:

    * ``"max"`` (default): ``a / max(a)``, in [0, 1], the most attended token 1.
      Proportional to the attention, comparable across images.
    * ``"sum"``: ``a / sum(a)``, a distribution over the valid tokens.
    * ``"minmax"``: ``(a - min a) / (max a - min a)``, as ResPrune's text
      relevance; the least attended token gets 0 (chosen last).
    * ``"none"``: the raw head-mean probabilities.

    ``"max"``, ``"sum"`` and ``"none"`` differ only by a positive factor per
    sample, to which every built-in selection (top-k, Gumbel top-k, greedy
    residual) is invariant: they select the same tokens, only the reported
    scores differ. ``"minmax"`` and ``alpha != 1`` change the ratios and hence
    what the weighted selections (``"greedy_residual"``, ``"random"``) pick.

    A sample whose normalisation is undefined (all-zero attention; flat
    attention under ``"minmax"``) gets the neutral weight 1; padded slots get 0.

    Args:
        normalize: ``"max"``, ``"sum"``, ``"minmax"`` or ``"none"``.
        alpha: exponent ``>= 0`` sharpening (``> 1``) or flattening (``< 1``) the weights.
    """

    normalize: Normalization = "max"
    alpha: float = 1.0

    name = CLS_ATTENTION
    required_signals: ClassVar[frozenset[str]] = frozenset({CLS_ATTENTION})

    def __post_init__(self) -> None:
        super().__post_init__()  # types and normalize's choices, from the annotations
        if not (math.isfinite(self.alpha) and self.alpha >= 0):
            raise ValueError(f"alpha must be finite and >= 0, got {self.alpha}")

    def attention(self, inputs: PruneInputs) -> torch.Tensor:
        """Head-mean [CLS] attention ``(B, N)``, 0 at padded slots."""
        signal = inputs.signals[CLS_ATTENTION]
        if signal.dim() != 3:
            raise ValueError(
                f"signals['cls_attention'] must be (B, H, N), got shape {tuple(signal.shape)}"
            )
        return head_mean(signal).masked_fill(~inputs.token_mask, 0.0)

    def weights(self, inputs: PruneInputs) -> torch.Tensor:
        a = self.attention(inputs)
        valid = inputs.token_mask
        if self.normalize == "none":
            w = a
            defined = torch.ones_like(valid[:, :1])
        elif self.normalize == "max":
            scale = a.amax(dim=1, keepdim=True)
            defined = scale > 0
            w = a / torch.where(defined, scale, 1.0)
        elif self.normalize == "sum":
            scale = a.sum(dim=1, keepdim=True)
            defined = scale > 0
            w = a / torch.where(defined, scale, 1.0)
        else:
            low = a.masked_fill(~valid, math.inf).amin(dim=1, keepdim=True)
            spread = a.masked_fill(~valid, -math.inf).amax(dim=1, keepdim=True) - low
            defined = spread > 0
            w = ((a - low) / torch.where(defined, spread, 1.0)).clamp(0.0, 1.0)
        w = w.clamp_min(0.0).pow(self.alpha)
        w = torch.where(defined, w, torch.ones_like(w))
        return w.masked_fill(~valid, 0.0)


@dataclass
class FasterVLM(ComposedPruner):
    """FasterVLM: the top-``K`` tokens by head-mean [CLS] attention, in position order.

    Paper: Zhang et al., "[CLS] Attention is All You Need for Training-Free
    Visual Token Pruning: Make VLM Inference Faster" (arXiv 2412.01818v1; later
    versions of that arXiv entry are the VisPruner paper).
    Official code: https://github.com/Theia-4869/FasterVLM
    (``llava/model/llava_arch.py``, ``LlavaMetaForCausalLM.encode_images``:
    ``image_attentions.mean(dim=1)`` over heads, ``torch.topk`` with
    ``k = visual_token_num``, scattered into an index mask, so the kept tokens
    stay in position order; the attention is the [CLS] row of the vision
    feature layer, -2 for LLaVA-1.5).

    Defaults: no hyperparameter besides the budget, given directly as a token
    count as in the official scripts (``--visual-token-num``). Needs the signal
    ``"cls_attention"`` ``(B, H, N)``; prunekit's LLaVA adapter provides it at
    the feature layer, both after the projector (the official pruning point:
    attention-selected projected tokens) and with ``before_projector=True``
    (the same tokens, projected after selection: identical output, since the
    projector is per token). Any pruning point where the signal exists is fine.

    It is ``ComposedPruner(ClsAttentionRelevance(normalize="none"),
    TopKSelection(tie_rtol=0))``; the result's scores are the head-mean attention.

    Departures from the official code:

    * ties are broken towards the lowest index (``torch.topk`` leaves them
      unspecified), without snapping near-ties together;
    * the ranking runs in float32 or wider (the official code in the model's
      dtype, usually float16), and padded tokens of ragged batches are never kept.
    """

    name = "fastervlm"
    required_signals: ClassVar[frozenset[str]] = frozenset({CLS_ATTENTION})

    relevance: ClsAttentionRelevance = field(init=False, repr=False)
    selection: TopKSelection = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.relevance = ClsAttentionRelevance(normalize="none")
        self.selection = TopKSelection(tie_rtol=0.0)
        super().__post_init__()


def register(registry) -> None:
    registry.add_pruner(FasterVLM)
    registry.add_relevance(ClsAttentionRelevance)
