"""Text relevance read in the joint image-text space of a CLIP / SigLIP tower.

CDPruner's choice (arXiv 2506.10967): a patch token's relevance is its cosine
with the text, both in the joint space of the vision tower's contrastive
training, while the selection runs on the tokens the model keeps. The adapter
maps the patch tokens at the pruning point into the joint space with the
model's own head (:meth:`~prunekit.adapters.encoder.EncoderAdapter.joint_projection`)
and passes their cosines with the ``M`` text embeddings as the signal
``joint_text_cosine`` ``(B, N, M)``; the pruner's tokens stay the raw hidden
states. From that signal:

* ``r_i = max_t cos_it``   (aggregation ``"max"``)
* ``r_i = mean_t cos_it``  (``"mean"``, CDPruner's aggregation up to its sign)

then ``w_i = minmax(r)_i ** alpha`` over each sample's valid tokens
(:func:`~prunekit.strategies.relevance.base.minmax_weights`). A signal without
text rows (``M = 0``) gives ``w = 1``, as a flat relevance does.

Where the signal exists: the in-encoder adapters of models that carry a text
tower or accept ``text_embeds`` in their joint space: transformers
``CLIPModel``, ``CLIPVisionModelWithProjection`` and ``SiglipModel`` /
``SiglipVisionModel``, and open_clip CLIPs with a per-token head (``ln_post`` /
``proj``), with ``texts=`` (and ``tokenizer=``) or ``text_embeds=``. Not in VLMs
(LLaVA with a CLIP tower): their checkpoints do not carry the CLIP text tower,
so ``attach`` refuses this relevance there, as it does for DINOv2, timm ViTs, a
``CLIPVisionModel`` (no projection) and an encoder given no text.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from prunekit.core.inputs import PruneInputs
from prunekit.strategies.relevance.base import RelevanceStrategy, check_guidance, minmax_weights

#: the signal this relevance reads (see :mod:`prunekit.core.signals`)
JOINT_TEXT_COSINE = "joint_text_cosine"


@dataclass
class ClipTextRelevance(RelevanceStrategy):
    """``w_i = minmax(agg_t cos(x_i, e_t)) ** alpha`` from the ``joint_text_cosine`` signal.

    Args:
        aggregation: ``"max"`` over the text rows (as ResPrune's ``text``) or ``"mean"``.
        alpha: guidance strength ``>= 0``; 0 disables the guidance.
        eps: the min-max normalisation's stabiliser (a spread ``<= eps`` gives ``w = 1``).
        tie_rtol: relevances within ``tie_rtol * (max r - min r)`` of the minimum get weight 0.
    """

    aggregation: Literal["max", "mean"] = "max"
    alpha: float = 1.0
    eps: float = 1e-6
    tie_rtol: float = 1e-5

    name = "clip_text"
    required_signals: ClassVar[frozenset[str]] = frozenset({JOINT_TEXT_COSINE})

    def __post_init__(self) -> None:
        super().__post_init__()  # types and aggregation's choices, from the annotations
        check_guidance(self.alpha, self.eps)

    def relevance(self, inputs: PruneInputs) -> torch.Tensor:
        """Raw ``r`` ``(B, N)`` from the ``(B, N, M)`` cosines; ``NaN`` when ``M = 0``."""
        cosine = inputs.signals[JOINT_TEXT_COSINE]
        if cosine.shape[-1] == 0:
            return torch.full_like(inputs.tokens[..., 0], math.nan)
        if self.aggregation == "max":
            return cosine.amax(dim=-1)
        return cosine.mean(dim=-1)

    def weights(self, inputs: PruneInputs) -> torch.Tensor:
        cosine = inputs.signals[JOINT_TEXT_COSINE]
        informative = torch.full(
            (inputs.batch_size,), cosine.shape[-1] > 0, dtype=torch.bool, device=cosine.device
        )
        return minmax_weights(
            self.relevance(inputs),
            inputs.token_mask,
            informative,
            alpha=self.alpha,
            eps=self.eps,
            tie_rtol=self.tie_rtol,
        )
