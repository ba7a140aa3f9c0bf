"""Relevance from the language model's own attention: how much the prompt's text looks at each
image token in a shallow decoder layer.

``r_i`` is the attention probability from the prompt's text tokens to image token ``i``
at decoder layer ``K-1`` (the ``"text_attention"`` signal, averaged over the text
queries), averaged over heads; then, as :class:`~prunekit.strategies.relevance.TextRelevance`,
``w_i = minmax(r)_i ** alpha`` over the sample's image tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from prunekit.core.inputs import PruneInputs
from prunekit.strategies.relevance.base import RelevanceStrategy, check_guidance, minmax_weights

#: the signal this strategy reads (see :mod:`prunekit.core.signals`)
TEXT_ATTENTION = "text_attention"


@dataclass
class LLMAttentionRelevance(RelevanceStrategy):
    """Weights from the attention the prompt's text pays to each image token inside the LLM.

    ``r_i`` is the ``"text_attention"`` signal ``(B, H, N)`` (attention probabilities
    from the text queries to image token ``i`` at decoder layer ``K-1``, averaged over
    the sample's text queries) averaged over the heads, and ``w_i = minmax(r)_i ** alpha``
    over the sample's image tokens (:func:`~prunekit.strategies.relevance.base.minmax_weights`).

    It needs the in-LLM pruning point: ``prunekit.attach(model, pruner, budget=...,
    llm_layer=K)`` (configs: ``adapter.llm_layer=K``), where the VLM adapters compute
    the signal from layer ``K-1``'s own projections on the prompt's prefill, which the
    model runs anyway (only the ``T`` text query rows are recomputed; no eager layer,
    no ``output_attentions``). At any other pruning point the adapter cannot provide
    ``"text_attention"`` and :func:`prunekit.attach` refuses the pruner.

    A sample without text (a prompt that ends with its image) has an all-zero signal
    and gets ``w = 1`` (no guidance): every real image token receives a strictly
    positive softmax probability from any text query, so a zero sum means no text rows.

    Args:
        alpha: guidance strength ``>= 0``; 0 disables the guidance.
        eps: the min-max normalisation's stabiliser. Smaller than TextRelevance's: the
            relevances are probabilities, a few ``1e-3`` per token in a long prompt.
        tie_rtol: relevances within ``tie_rtol * (max r - min r)`` of the minimum count
            as the minimum (weight 0).
    """

    alpha: float = 1.0
    eps: float = 1e-9
    tie_rtol: float = 1e-5

    name = "llm_attention"
    required_signals: ClassVar[frozenset[str]] = frozenset({TEXT_ATTENTION})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_guidance(self.alpha, self.eps)

    def relevance(self, inputs: PruneInputs) -> torch.Tensor:
        """Raw ``r`` ``(B, N)``: the text-to-image attention averaged over heads."""
        return inputs.signals[TEXT_ATTENTION].mean(dim=1)

    def weights(self, inputs: PruneInputs) -> torch.Tensor:
        attention = inputs.signals[TEXT_ATTENTION]
        valid = inputs.token_mask
        # padded slots may hold anything: only the real tokens' attention counts
        has_text = attention.masked_fill(~valid.unsqueeze(1), 0.0).sum(dim=(1, 2)) > 0
        return minmax_weights(
            self.relevance(inputs),
            valid,
            has_text,
            alpha=self.alpha,
            eps=self.eps,
            tie_rtol=self.tie_rtol,
        )
