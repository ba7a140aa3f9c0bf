"""CDPruner (Zhang et al., "Beyond Attention or Similarity: Maximizing Conditional Diversity
for Token Pruning in MLLMs", arXiv 2506.10967; official code
https://github.com/Theia-4869/CDPruner).

* :func:`dpp_greedy_order`: greedy MAP inference of the DPP with kernel
  ``L = diag(q) S diag(q)``, ``S`` the cosine similarity of the tokens, batched.
* :class:`DPPSelection` (registered as selection ``"dpp"``): the same as a
  selection strategy whose quality ``q`` is any relevance's weights, e.g.
  ``create_pruner("composed", relevance="text", selection="dpp")``.
* :class:`CDPrunerRelevance` (registered as relevance ``"cdpruner"``): CDPruner's
  min-max normalised, negated mean text cosine.
* :class:`CDPruner` (registered as pruner ``"cdpruner"``): the two together.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from prunekit.core.errors import check_choice, check_fields
from prunekit.core.inputs import PruneInputs
from prunekit.pruners.composed import ComposedPruner
from prunekit.strategies.relevance.base import RelevanceStrategy
from prunekit.strategies.selection.base import SelectionStrategy
from prunekit.strategies.selection.greedy_residual import (
    BACKENDS,
    DEFAULT_MAX_GRAM_BYTES,
    GRAM_METHODS,
    Backend,
    GramMethod,
    greedy_residual_order,
)


def dpp_greedy_order(
    tokens: torch.Tensor,
    quality: torch.Tensor,
    num_keep: int,
    valid: torch.Tensor | None = None,
    *,
    rank_tol: float | None = None,
    tie_rtol: float = 1e-5,
    method: GramMethod = "auto",
    max_gram_bytes: int = DEFAULT_MAX_GRAM_BYTES,
    backend: Backend = "auto",
) -> torch.Tensor:
    """Greedy MAP of the DPP with kernel ``L = diag(q) S diag(q)``, ``S_ij = cos(x_i, x_j)``.

    The fast greedy MAP algorithm (Chen et al., NeurIPS 2018) that CDPruner's code
    runs: keep ``d_i^2``, the Schur complement of ``L_ii`` given the picked set
    (initially ``L_ii = q_i^2``), pick ``j = argmax d^2``, extend the incremental
    Cholesky factor by ``e = (L_j - c_j^T C) / d_j`` and update ``d^2 -= e^2``.
    Since ``L``'s Cholesky factor is ``diag(q)`` times that of ``S``,
    ``d_i^2 = q_i^2 ||u_i - P_S u_i||^2`` with ``u_i = x_i / ||x_i||``: this is
    prunekit's greedy residual selection
    (:func:`~prunekit.strategies.selection.greedy_residual.greedy_residual_order`)
    on the unit-normalised tokens with weights ``q^2``, which is how it is computed
    (one ``N x N`` Gram GEMM plus ``O(N K)`` per step, or without the Gram matrix
    for large ``N``).

    Where the official recursion divides by ``d_j = 0`` (the budget exceeds the
    rank of ``S``, or ``q_j = 0``) and fills the selection with NaN, tokens whose
    residual is below ``rank_tol`` of their own energy count as spanned and the
    rest of the budget is filled in order of ``q``, ties to the lowest index.

    Args:
        tokens: ``(B, N, d)`` float32/float64 tokens (any scale; only directions matter).
        quality: ``(B, N)`` non-negative ``q``.
        num_keep: steps to run.
        valid: ``(B, N)`` bool; padded tokens are never picked while valid ones remain.
        rank_tol, tie_rtol, method, max_gram_bytes, backend: as for ``greedy_residual_order``
            (``tie_rtol``: ``d^2`` values within this relative distance of the best
            tie, the lowest index wins; the official ``argmax`` is exact).

    Returns:
        ``(B, num_keep)`` int64 picks in the order they were made.
    """
    unit = F.normalize(tokens, dim=-1)
    q = quality.to(tokens.dtype).clamp_min(0.0)
    return greedy_residual_order(
        unit,
        q.square(),
        num_keep,
        valid,
        rank_tol=rank_tol,
        tie_rtol=tie_rtol,
        method=method,
        max_gram_bytes=max_gram_bytes,
        backend=backend,
    )


def _check_dpp_options(rank_tol, tie_rtol, method, max_gram_bytes, backend) -> None:
    check_choice("method", method, GRAM_METHODS)
    check_choice("backend", backend, BACKENDS)
    if rank_tol is not None and not (0 <= rank_tol < 1):
        raise ValueError(f"rank_tol must be in [0, 1), got {rank_tol}")
    if not (0 <= tie_rtol < 1):
        raise ValueError(f"tie_rtol must be in [0, 1), got {tie_rtol}")
    if max_gram_bytes < 0:
        raise ValueError(f"max_gram_bytes must be >= 0, got {max_gram_bytes}")


@dataclass
class DPPSelection(SelectionStrategy):
    """Greedy MAP of a conditional DPP (CDPruner's selection), with the relevance as quality.

    The kernel is ``L = diag(w) S diag(w)``: the relevance weights ``w`` are the
    DPP quality ``q`` and ``S`` is the cosine similarity of the tokens, so each
    step keeps the token maximising ``w_i^2`` times its squared distance to the
    span of the kept (unit-normalised) tokens. Uniform weights (relevance
    ``"none"``) give the plain similarity DPP; the first pick is then the first
    token. See :func:`dpp_greedy_order` for the arguments.
    """

    rank_tol: float | None = None
    tie_rtol: float = 1e-5
    method: GramMethod = "auto"
    max_gram_bytes: int = DEFAULT_MAX_GRAM_BYTES
    backend: Backend = "auto"

    name = "dpp"

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_dpp_options(
            self.rank_tol, self.tie_rtol, self.method, self.max_gram_bytes, self.backend
        )

    def select(self, inputs: PruneInputs, weights: torch.Tensor, num_keep: int) -> torch.Tensor:
        return dpp_greedy_order(
            inputs.tokens,
            weights,
            num_keep,
            inputs.token_mask,
            rank_tol=self.rank_tol,
            tie_rtol=self.tie_rtol,
            method=self.method,
            max_gram_bytes=self.max_gram_bytes,
            backend=self.backend,
        )


def theta_to_alpha(theta: float) -> float:
    """CDPruner's trade-off ``alpha = theta / (2 (1 - theta))`` (quality ``exp(alpha r)``)."""
    return theta / (2.0 * (1.0 - theta))


@dataclass
class CDPrunerRelevance(RelevanceStrategy):
    """CDPruner's instruction relevance, as the official code computes it.

    For tokens ``x_i`` and the valid text rows ``e_t`` of a sample:

    * ``r_i = mean_t (s * cos(x_i, e_t))`` with ``s = -1`` when ``negate`` (the
      official code's sign) and ``+1`` otherwise;
    * ``q_i = (r_i - min r + offset) / (max r - min r)`` over the sample's valid
      tokens (``offset = 1e-6`` as in the code), so ``q`` lies in
      ``[offset / spread, 1 + offset / spread]``;
    * if ``theta`` is set, ``q_i = exp(alpha q_i)`` with
      ``alpha = theta / (2 (1 - theta))`` (the paper's trade-off; commented out in
      the released code, so ``None`` by default).

    The sign: the released code uses the *negated* cosine, the opposite of the
    paper's description; asked about it (CDPruner issue #14, referring to #9), the
    authors call it a phenomenon they have observed only with CLIP as used in
    LLaVA. prunekit's relevance lives in the tokens' own space (for VLMs:
    post-projector tokens against the LLM's input embeddings of the prompt's
    nouns, see the adapters), where the observation was not made: ``negate=True``
    keeps the official convention, ``negate=False`` is the paper's "higher cosine,
    higher quality".

    prunekit's choices where the code is undefined or batch-dependent: min and
    max are per sample over its valid tokens (the code takes them over the
    whole batch, i.e. across the crops of an anyres image); a sample without text
    rows, or whose relevance spread is at most ``flat_tol``, gets ``q = 1`` (the
    code needs text, and divides by a zero spread); relevances within
    ``tie_rtol * spread`` of the minimum count as the minimum, so float rounding
    between duplicate tokens cannot be amplified by the tiny ``offset``; padded
    slots get 0.

    Args:
        negate: use the official code's negated cosine (default) or the plain one.
        theta: ``None`` (released code) or the paper's trade-off in [0, 1).
        offset: the code's ``1e-6`` added to the shifted relevance.
        flat_tol: spread at or below which the relevance counts as flat.
        tie_rtol: see above.
    """

    negate: bool = True
    theta: float | None = None
    offset: float = 1e-6
    flat_tol: float = 1e-6
    tie_rtol: float = 1e-5

    name = "cdpruner"

    def __post_init__(self) -> None:
        super().__post_init__()  # types, from the annotations
        if self.theta is not None and not (0 <= self.theta < 1):
            raise ValueError(f"theta must be None or in [0, 1), got {self.theta}")
        if not (self.offset >= 0 and math.isfinite(self.offset)):
            raise ValueError(f"offset must be finite and >= 0, got {self.offset}")
        if not (self.flat_tol >= 0):
            raise ValueError(f"flat_tol must be >= 0, got {self.flat_tol}")
        if not (0 <= self.tie_rtol < 1):
            raise ValueError(f"tie_rtol must be in [0, 1), got {self.tie_rtol}")

    def relevance(self, inputs: PruneInputs) -> torch.Tensor:
        """Signed mean cosine ``r`` ``(B, N)``; ``NaN`` for samples without text rows."""
        tokens = inputs.tokens
        if inputs.text_embeds is None:
            return torch.full_like(tokens[..., 0], math.nan)
        text_mask = inputs.text_mask
        cos = torch.einsum(
            "bnd,bmd->bnm", F.normalize(tokens, dim=-1), F.normalize(inputs.text_embeds, dim=-1)
        )
        n_text = text_mask.sum(dim=1).clamp_min(1).to(tokens.dtype)
        rel = (cos * text_mask.unsqueeze(1)).sum(dim=-1) / n_text.unsqueeze(-1)
        if self.negate:
            rel = -rel
        return rel.masked_fill(~text_mask.any(dim=1, keepdim=True), math.nan)

    def weights(self, inputs: PruneInputs) -> torch.Tensor:
        rel = self.relevance(inputs)
        valid = inputs.token_mask
        r_min = rel.masked_fill(~valid, math.inf).amin(dim=1, keepdim=True)
        r_max = rel.masked_fill(~valid, -math.inf).amax(dim=1, keepdim=True)
        spread = r_max - r_min
        shifted = rel - r_min
        shifted = shifted.masked_fill(shifted <= spread * self.tie_rtol, 0.0)
        informative = inputs.has_text.unsqueeze(1) & (spread > self.flat_tol)
        q = (shifted + self.offset) / torch.where(informative, spread, 1.0)
        if self.theta is not None:
            q = torch.exp(theta_to_alpha(self.theta) * q)
        q = torch.where(informative, q, torch.ones_like(q))
        return q.masked_fill(~valid, 0.0)


@dataclass
class CDPruner(ComposedPruner):
    """CDPruner: greedy MAP of an instruction-conditioned DPP over the visual tokens.

    Paper: Zhang et al., "Beyond Attention or Similarity: Maximizing Conditional
    Diversity for Token Pruning in MLLMs", arXiv 2506.10967. Official code:
    https://github.com/Theia-4869/CDPruner (``LlavaMetaForCausalLM.encode_images``
    in ``llava/model/llava_arch.py``; the CLIP text tower and projected patch
    embeddings in ``CLIPVisionTower.forward``, ``llava/model/multimodal_encoder/clip_encoder.py``).

    What the official code computes: ``S = U U^T`` with ``U`` the L2-normalised
    post-projector tokens (float32); relevance ``r`` = min-max normalised mean
    over text chunks of the *negated* cosine between CLIP patch embeddings (layer
    -2, ``post_layernorm``, ``visual_projection``) and CLIP text embeddings of the
    prompt (tokenised, split into 77-token chunks, one embedding per chunk), with
    ``+1e-6`` in the numerator; kernel ``L = diag(r) S diag(r)``; greedy MAP by
    incremental Cholesky for ``visual_token_num`` steps, first pick
    ``argmax r_i^2``, ties to the first index (``torch.argmax``); the ``theta``
    re-weighting ``exp(alpha r)`` is commented out. The budget is given directly
    (``visual_token_num``); with LLaVA-NeXT the crops of an anyres image form the
    batch, so it applies to every crop and the min-max spans all crops.

    Here: ``CDPrunerRelevance(negate, theta)`` x ``DPPSelection``; ``scores`` are
    the quality ``q``. Departures from the official code:

    * Relevance space: the code compares CLIP joint-space patch and text
      embeddings; prunekit compares the pruned tokens themselves (post-projector)
      with ``text_embeds`` in the same space (the VLM adapters pass LLM
      input-embedding rows of the prompt's nouns; each row plays the role of a
      text chunk and ``r`` averages over them). The sign is the option
      ``negate`` (default: the code's), see :class:`CDPrunerRelevance`.
    * Without text the quality is uniform (the code requires text): the plain
      similarity DPP.
    * Min-max per sample (the code normalises over the whole batch).
    * Budget beyond the rank of ``S`` (or ``q_j = 0``): the code divides by zero
      and emits NaN indices; prunekit fills the rest in order of ``q``
      (see :func:`dpp_greedy_order`). Ties within ``tie_rtol`` go to the lowest
      index (float rounding between duplicate tokens must not decide).
    * Numerics in float32 or wider; tokens normalised with an epsilon (a zero
      token has no direction and is picked only by the fill).

    Args:
        negate: official negated cosine (default) or the paper's sign.
        theta: ``None`` (released code) or the paper's trade-off ``theta`` in [0, 1).
        rank_tol, tie_rtol, method, max_gram_bytes, backend: see :func:`dpp_greedy_order`.
    """

    name = "cdpruner"

    negate: bool = True
    theta: float | None = None
    rank_tol: float | None = None
    tie_rtol: float = 1e-5
    method: GramMethod = "auto"
    max_gram_bytes: int = DEFAULT_MAX_GRAM_BYTES
    backend: Backend = "auto"
    relevance: CDPrunerRelevance = field(init=False, repr=False)
    selection: DPPSelection = field(init=False, repr=False)

    def __post_init__(self) -> None:
        check_fields(self)  # errors name CDPruner's fields, before the strategies are built
        self.relevance = CDPrunerRelevance(negate=self.negate, theta=self.theta)
        self.selection = DPPSelection(
            rank_tol=self.rank_tol,
            tie_rtol=self.tie_rtol,
            method=self.method,
            max_gram_bytes=self.max_gram_bytes,
            backend=self.backend,
        )
        super().__post_init__()


def register(registry) -> None:
    registry.add_pruner(CDPruner)
    registry.add_selection(DPPSelection)
    registry.add_relevance(CDPrunerRelevance)
