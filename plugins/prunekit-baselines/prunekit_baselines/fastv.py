"""FastV (Chen et al., ECCV 2024, arXiv 2403.06764, "An Image is Worth 1/2 Tokens After
Layer 2: Plug-and-Play Inference Acceleration for Large Vision-Language Models").

Inside the language model, after decoder layer ``K``: keep the image tokens that the
last prompt token attends to most at layer ``K-1`` (head mean), drop the rest for
every later layer (and their KV cache).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from prunekit.core.inputs import PruneInputs
from prunekit.core.points import IN_LLM
from prunekit.core.pruner import Picks, TokenPruner

LAST_QUERY_ATTENTION = "last_query_attention"


def fastv_scores(attention: torch.Tensor) -> torch.Tensor:
    """``(B, N)`` FastV's score: the ``(B, H, N)`` last-query attention averaged over heads."""
    return attention.mean(dim=1)


def fastv_order(scores: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
    """``(B, N)`` token indices by decreasing score; ties towards the lowest index, padding last."""
    masked = scores.masked_fill(~token_mask, float("-inf"))
    return torch.sort(masked, dim=1, descending=True, stable=True).indices


@dataclass
class FastV(TokenPruner):
    """FastV: the top image tokens by head-mean attention from the last prompt token.

    Paper: Chen et al., "An Image is Worth 1/2 Tokens After Layer 2:
    Plug-and-Play Inference Acceleration for Large Vision-Language Models"
    (ECCV 2024, arXiv 2403.06764). Official code: https://github.com/pkunlp-icler/FastV
    (``src/FastV/llava-hf/transformers/src/transformers/models/llama/modeling_llama.py``,
    ``LlamaModel.fastv_forward``: at decoder layer ``K`` it takes layer ``K-1``'s
    attention weights (run with ``output_attentions`` on an eager model), averages
    them over heads, reads the row of the last prompt token at the image columns,
    keeps the top ``round(N * (1 - R))`` with ``topk``, drops the other image
    tokens from the hidden states and runs layers ``K ..`` with the kept tokens'
    original position ids; the mask-based variant of the paper's ablations is
    ``src/transformers/src/transformers/models/llama/modeling_llama.py``, and
    ``src/FastV/lmms-eval-with-kvcache/fastv_kvcache.py`` the KV-cache one).

    Defaults: the method's only knobs are ``K`` and ``R``, which prunekit takes
    from :func:`prunekit.attach`: ``llm_layer=K`` and ``budget=1 - R`` (or the
    token count ``round(N * (1 - R))``). The paper's default is ``K=2, R=50%``
    (``attach(model, "fastv", budget=0.5, llm_layer=2)``); the official Hugging
    Face demo (README, ``demo-hf.py``) uses ``K=3, R=75%``
    (``budget=0.25, llm_layer=3``). Defined for the in-LLM pruning point only;
    needs the signal ``"last_query_attention"`` ``(B, H, N)``, which prunekit's
    VLM adapters compute at that point by recomputing the one attention row of
    layer ``K-1`` (the model keeps SDPA; no eager layer, no ``output_attentions``).
    Survivors keep their original positions, as in the official code. The
    result's scores are the head-mean attention.

    Departures from the official code:

    * the ranking runs in float32 (the official code ranks the fp16 attention
      weights) and ties go to the lowest index (``torch.topk`` leaves them
      unspecified);
    * a float budget is resolved by :func:`prunekit.num_kept`, which rounds
      halves up where Python's ``round`` rounds them to even; give the count
      ``round(N * (1 - R))`` as an int budget to match exactly in those cases;
    * batches: the official code handles one prompt with one image at a fixed
      offset (``image_token_start_index``, ``image_token_length``). prunekit finds
      the image tokens of each sample, uses each sample's last real (non-padding)
      token as the query, and ranks all image tokens of a sample together under
      one per-sample budget (several images share it);
    * ``K=0`` (the official code's random choice before the first layer) is not
      supported: the in-LLM point needs ``llm_layer >= 1``.
    """

    name = "fastv"
    required_signals: ClassVar[frozenset[str]] = frozenset({LAST_QUERY_ATTENTION})
    pruning_points: ClassVar[frozenset[str] | None] = frozenset({IN_LLM})

    def select(self, inputs: PruneInputs, num_keep: int) -> Picks:
        scores = fastv_scores(inputs.signals[LAST_QUERY_ATTENTION])
        order = fastv_order(scores, inputs.token_mask)[:, :num_keep]
        return Picks(order=order, scores=scores.masked_fill(~inputs.token_mask, 0.0))


def register(registry) -> None:
    registry.add_pruner(FastV)
