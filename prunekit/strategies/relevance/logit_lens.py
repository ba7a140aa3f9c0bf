"""Text relevance read through the language model's own output head (the logit lens).

ResPrune's ``text`` relevance is a cosine between projected visual tokens and the
nouns' input embeddings; directions that every word shares dominate it (on
MiniLLaVA it ranks the objects below the background). The logit lens reads each
visual token ``x_i`` as the language model would read it at its output:
``log_softmax(head(norm(x_i)))``, normalised over the whole vocabulary, so
directions shared by every word cancel. The VLM adapters pass, per token and
noun, the mean over the noun's sub-word ids of that log-probability as the signal
``text_logprobs`` ``(B, N, M)`` (:func:`prunekit.text.embed.phrase_logprobs`).
From it:

* ``r_i = max_m text_logprobs[i, m]``   (aggregation ``"max"``, the default)
* ``r_i = mean_m text_logprobs[i, m]``  (``"mean"``)

over the sample's nouns, then ``w_i = minmax(r)_i ** alpha`` over its valid tokens
(:func:`~prunekit.strategies.relevance.base.minmax_weights`).

Which nouns count: a noun column that is zero at every valid token of a sample is
padding (the adapters write zeros where a prompt has fewer nouns than the batch's
widest, or a noun has no token id; a real log-probability is negative). A sample
without any noun column (no tokenizer, no noun) gets ``w = 1``, as ``text`` does
without text. The signal alone decides: ``text_embeds`` are not read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from prunekit.core.inputs import PruneInputs
from prunekit.strategies.relevance.base import RelevanceStrategy, check_guidance, minmax_weights

#: the signal this relevance reads (see :mod:`prunekit.core.signals`)
TEXT_LOGPROBS = "text_logprobs"


def logit_lens_relevance(
    logprobs: torch.Tensor,
    token_mask: torch.Tensor,
    *,
    aggregation: Literal["max", "mean"] = "max",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw relevance ``r`` ``(B, N)`` and ``(B,)`` "has a noun" from ``(B, N, M)`` log-probs.

    Noun columns that are zero at every valid token are padding; ``r`` of a sample
    without any noun is 0 (its weights are 1 anyway).
    """
    live = logprobs.ne(0) & token_mask.unsqueeze(-1)
    nouns = live.any(dim=1)  # (B, M) real noun columns
    has_noun = nouns.any(dim=1)
    valid = nouns.unsqueeze(1)  # (B, 1, M)
    if aggregation == "max":
        rel = logprobs.masked_fill(~valid, -math.inf).amax(dim=-1)
    else:
        count = nouns.sum(dim=1).clamp_min(1).to(logprobs.dtype).unsqueeze(-1)
        rel = (logprobs * valid).sum(dim=-1) / count
    return rel.masked_fill(~has_noun.unsqueeze(-1), 0.0), has_noun


@dataclass
class LogitLensRelevance(RelevanceStrategy):
    """``w_i = minmax(agg_m log p(noun_m | x_i)) ** alpha`` from the ``text_logprobs`` signal.

    Args:
        aggregation: ``"max"`` over the prompt's nouns (the token most likely to read
            as one of them) or ``"mean"``.
        alpha: guidance strength ``>= 0``; 0 disables the guidance.
        eps: the min-max normalisation's stabiliser (a spread ``<= eps`` gives ``w = 1``).
        tie_rtol: relevances within ``tie_rtol * (max r - min r)`` of the minimum get weight 0.
    """

    aggregation: Literal["max", "mean"] = "max"
    alpha: float = 1.0
    eps: float = 1e-6
    tie_rtol: float = 1e-5

    name = "logit_lens"
    required_signals: ClassVar[frozenset[str]] = frozenset({TEXT_LOGPROBS})

    def __post_init__(self) -> None:
        super().__post_init__()  # types and aggregation's choices, from the annotations
        check_guidance(self.alpha, self.eps)

    def relevance(self, inputs: PruneInputs) -> torch.Tensor:
        """Raw ``r`` ``(B, N)``; 0 for samples without nouns."""
        rel, _ = logit_lens_relevance(
            inputs.signals[TEXT_LOGPROBS], inputs.token_mask, aggregation=self.aggregation
        )
        return rel

    def weights(self, inputs: PruneInputs) -> torch.Tensor:
        rel, has_noun = logit_lens_relevance(
            inputs.signals[TEXT_LOGPROBS], inputs.token_mask, aggregation=self.aggregation
        )
        return minmax_weights(
            rel,
            inputs.token_mask,
            has_noun,
            alpha=self.alpha,
            eps=self.eps,
            tie_rtol=self.tie_rtol,
        )
