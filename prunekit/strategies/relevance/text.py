"""Text-conditioned relevance, as in ResPrune (arXiv 2603.21105).

For visual token ``x_i`` and text embeddings ``e_t`` of the prompt's nouns, in
the same space (for VLMs: the LLM input-embedding space):

* ``r_i = max_t cos(x_i, e_t)``          (aggregation ``"max"``, the paper's choice)
* ``r_i = mean_t cos(x_i, e_t)``         (``"mean"``)
* ``r_i = cos(x_i, mean_t e_t)``         (``"pooled"``)

then min-max normalisation over the valid tokens of one sample,
``r~_i = (r_i - min r) / (max r - min r + eps)``, and the guidance
``w_i = r~_i ** alpha``. Optional ``center`` ``c`` is subtracted from tokens and
text before the cosine (prunekit's addition: projected tokens and word
embeddings share a large common offset that dominates the plain cosine).

Choices of prunekit where the paper is silent, each a parameter:
``eps=1e-6``; a sample without text rows gets ``w = 1`` (no guidance); a sample
whose relevance is flat (``max r - min r <= eps``) also gets ``w = 1`` rather
than all zeros, since a flat relevance ranks nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from prunekit.core.errors import check_choice
from prunekit.core.inputs import PruneInputs
from prunekit.strategies.relevance.base import RelevanceStrategy, check_guidance, minmax_weights

#: how the cosines to the text rows become one relevance per token
Aggregation = Literal["max", "mean", "pooled"]
#: the values of :data:`Aggregation`
AGGREGATIONS = ("max", "mean", "pooled")
#: model signals usable as ``center`` (see :mod:`prunekit.core.signals`)
CENTER_SIGNALS = ("embedding_mean",)


def text_relevance(
    tokens: torch.Tensor,
    text_embeds: torch.Tensor,
    text_mask: torch.Tensor,
    *,
    aggregation: Aggregation = "max",
    center: torch.Tensor | None = None,
) -> torch.Tensor:
    """Raw relevance ``r`` ``(B, N)`` of each token to the valid text rows.

    Rows of samples without any valid text row are ``NaN``. The ``(B, N, M)``
    cosine matrix is token x text, never token x token; the tokens are not
    copied (their dot products with the unit text rows are divided by their norms).
    """
    if center is not None:
        center = center.to(tokens.dtype)
        if center.dim() == 2:  # one centre per sample (B, d)
            center = center.unsqueeze(1)
        tokens = tokens - center
        text_embeds = text_embeds - center
    # 1 / max(||x||, 1e-12), as F.normalize, without a normalised copy of the tokens
    inv_norm = torch.linalg.vector_norm(tokens, dim=-1, keepdim=True).clamp_min(1e-12).reciprocal()
    valid = text_mask.unsqueeze(1)  # (B, 1, M)
    n_text = text_mask.sum(dim=1).clamp_min(1).to(tokens.dtype)  # (B,)
    if aggregation == "pooled":
        pooled = (text_embeds * text_mask.unsqueeze(-1)).sum(dim=1) / n_text.unsqueeze(-1)
        unit_text = F.normalize(pooled, dim=-1).unsqueeze(-1)  # (B, d, 1)
        rel = (torch.bmm(tokens, unit_text) * inv_norm).squeeze(-1)
    else:
        unit_text = F.normalize(text_embeds, dim=-1).transpose(1, 2)  # (B, d, M)
        cos = torch.bmm(tokens, unit_text) * inv_norm
        if aggregation == "max":
            rel = cos.masked_fill(~valid, -math.inf).amax(dim=-1)
        else:
            rel = (cos * valid).sum(dim=-1) / n_text.unsqueeze(-1)
    has_text = text_mask.any(dim=1, keepdim=True)
    return rel.masked_fill(~has_text, math.nan)


@dataclass
class TextRelevance(RelevanceStrategy):
    """ResPrune's text relevance ``w_i = minmax(r)_i ** alpha``.

    Args:
        aggregation: ``"max"`` (paper default), ``"mean"`` or ``"pooled"``.
        alpha: guidance strength ``>= 0``; 0 disables the guidance.
        center: optional ``(d,)`` vector subtracted from tokens and text before
            the cosine; ``"embedding_mean"``: the mean row of the LLM's
            input-embedding table, supplied by the VLM adapters as the
            ``embedding_mean`` signal (the common offset that projected tokens and
            word embeddings share; see the ResPrune page); ``None`` is the paper's
            plain cosine.
        eps: the min-max normalisation's stabiliser.
        tie_rtol: relevances within ``tie_rtol * (max r - min r)`` of the minimum
            count as the minimum (weight 0), so rounding differences between
            duplicate tokens cannot decide which of them gets a zero weight.
    """

    aggregation: Aggregation = "max"
    alpha: float = 1.0
    center: torch.Tensor | str | None = None
    eps: float = 1e-6
    tie_rtol: float = 1e-5

    name = "text"

    def __post_init__(self) -> None:
        super().__post_init__()  # types and aggregation's choices, from the annotations
        check_guidance(self.alpha, self.eps)
        if isinstance(self.center, str):
            check_choice("center", self.center, CENTER_SIGNALS)
            self.required_signals = frozenset({self.center})
        elif self.center is not None and self.center.dim() != 1:
            raise ValueError(f"center must be 1-D (d,), got shape {tuple(self.center.shape)}")

    def relevance(self, inputs: PruneInputs) -> torch.Tensor:
        """Raw ``r`` ``(B, N)``; ``NaN`` for samples without text."""
        if inputs.text_embeds is None:
            return torch.full_like(inputs.tokens[..., 0], math.nan)
        center = self.center
        if isinstance(center, str):
            center = inputs.signals[center]
        if center is not None:
            if center.shape[-1] != inputs.tokens.shape[-1]:
                raise ValueError(
                    f"center has {center.shape[-1]} features but tokens have {inputs.tokens.shape[-1]}"
                )
            center = center.to(inputs.tokens.device)
        return text_relevance(
            inputs.tokens,
            inputs.text_embeds,
            inputs.text_mask,
            aggregation=self.aggregation,
            center=center,
        )

    def weights(self, inputs: PruneInputs) -> torch.Tensor:
        return minmax_weights(
            self.relevance(inputs),
            inputs.token_mask,
            inputs.has_text,
            alpha=self.alpha,
            eps=self.eps,
            tie_rtol=self.tie_rtol,
        )
