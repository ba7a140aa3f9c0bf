"""DivPrune (Alvar et al., CVPR 2025, "DivPrune: Diversity-based Visual Token Pruning for
Large Multimodal Models"; official code https://github.com/vbdi/divprune).

* :func:`maxmin_order`: DivPrune's greedy max-min diversity selection, batched,
  optionally weighted by relevance; from the ``(B, N, N)`` distance matrix, or,
  when that would exceed a memory bound, one distance row per step (same picks).
* :class:`MaxMinSelection` (registered as selection ``"maxmin"``): the same as a
  selection strategy, composable with any relevance, e.g.
  ``create_pruner("composed", relevance="text", selection="maxmin")``.
* :class:`DivPrune` (registered as pruner ``"divprune"``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from prunekit.core.errors import check_choice
from prunekit.core.inputs import PruneInputs
from prunekit.core.pruner import Picks, TokenPruner
from prunekit.strategies.selection.base import SelectionStrategy

#: larger than any cosine distance (which lies in [0, 2]); marks padded neighbours
_FAR = 4.0

#: how distances are obtained: the ``N x N`` matrix, one row per step, or chosen by memory
MaxMinMethod = Literal["auto", "matrix", "rows"]
#: the values of :data:`MaxMinMethod`
MAXMIN_METHODS = ("auto", "matrix", "rows")

#: Default bound of the ``B x N x N`` distance matrices above which ``"auto"`` takes the rows
#: path; also the bound of the rows path's ``(B, block, N)`` slabs.
DEFAULT_MAX_MATRIX_BYTES = 256 * 2**20


def cosine_distances(tokens: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``(B, N, N)`` ``D = 1 - cos(x_i, x_j)``, clamped at 0, exactly 0 on the diagonal.

    Rows of padded tokens are :data:`_FAR`, so a padded token is never anyone's
    nearest neighbour nor a picked row. A zero token has cosine 0 with every
    other token (distance 1).
    """
    unit = F.normalize(tokens, dim=-1)
    dist = (1.0 - torch.bmm(unit, unit.transpose(1, 2))).clamp_min_(0.0)
    dist.diagonal(dim1=1, dim2=2).zero_()
    return dist.masked_fill_(~valid.unsqueeze(2), _FAR)


def nearest_distances(dist: torch.Tensor) -> torch.Tensor:
    """``(B, N)``: per column, the second-smallest entry of ``D`` with its zero diagonal
    included, i.e. the distance from each token to its nearest other (valid) token
    (DivPrune's first-step score); :data:`_FAR` for a sample's only valid token."""
    if dist.shape[1] < 2:
        return dist.new_full(dist.shape[:2], _FAR)
    return torch.topk(dist, 2, dim=1, largest=False).values[:, 1, :]


def nearest_distances_by_rows(
    unit: torch.Tensor, valid: torch.Tensor, max_slab_bytes: int
) -> torch.Tensor:
    """:func:`nearest_distances` from unit tokens ``(B, N, d)`` without the ``N x N`` matrix.

    Distances are symmetric, so a token's nearest other valid token is found in its
    own row: rows are taken a ``(B, block, N)`` slab at a time, ``block`` the most
    that fits ``max_slab_bytes`` (at least 1), padded columns and the token itself
    set to :data:`_FAR` before the row minimum.
    """
    batch, n, _ = unit.shape
    if n < 2:
        return unit.new_full((batch, n), _FAR)
    block = max(1, max_slab_bytes // max(1, batch * n * unit.element_size()))
    padded = ~valid.unsqueeze(1)  # (B, 1, N)
    nearest = unit.new_empty(batch, n)
    for start in range(0, n, block):
        stop = min(n, start + block)
        slab = torch.bmm(unit[:, start:stop], unit.transpose(1, 2))  # (B, block, N) cosines
        slab = slab.neg_().add_(1.0).clamp_min_(0.0).masked_fill_(padded, _FAR)
        slab[:, :, start:stop].diagonal(dim1=1, dim2=2).fill_(_FAR)  # not its own neighbour
        nearest[:, start:stop] = slab.amin(dim=2)
    return nearest


def _pick_distances(
    unit: torch.Tensor, pick: torch.Tensor, valid: torch.Tensor, batch_index: torch.Tensor
) -> torch.Tensor:
    """``(B, N)`` row ``pick`` of :func:`cosine_distances`, computed alone (one GEMV)."""
    picked = unit[batch_index, pick].unsqueeze(2)  # (B, d, 1)
    row = (1.0 - torch.bmm(unit, picked).squeeze(2)).clamp_min_(0.0)
    row.scatter_(1, pick.unsqueeze(1), 0.0)  # exactly 0 at the pick itself
    pick_valid = valid.gather(1, pick.unsqueeze(1))  # (B, 1)
    return row.masked_fill_(~pick_valid, _FAR)


def maxmin_method(
    tokens: torch.Tensor,
    method: MaxMinMethod = "auto",
    max_matrix_bytes: int = DEFAULT_MAX_MATRIX_BYTES,
) -> str:
    """The path :func:`maxmin_order` takes on ``tokens``: ``"matrix"`` or ``"rows"``.

    ``"auto"`` is ``"matrix"`` while the ``(B, N, N)`` distance matrices of ``tokens``
    (in their dtype) fit in ``max_matrix_bytes``, ``"rows"`` above.
    """
    check_choice("method", method, MAXMIN_METHODS)
    if method != "auto":
        return method
    batch, n, _ = tokens.shape
    return "matrix" if batch * n * n * tokens.element_size() <= max_matrix_bytes else "rows"


def _first_near_max(key: torch.Tensor, tol: torch.Tensor | float) -> torch.Tensor:
    """Per row, the lowest index whose key is within ``tol`` (a float or ``(B, 1)``) of the row's maximum."""
    best = key.amax(dim=1, keepdim=True)
    return (key >= best - tol).max(dim=1).indices  # the first True of each row


def _maxmin(
    tokens: torch.Tensor,
    weights: torch.Tensor,
    num_keep: int,
    valid: torch.Tensor,
    tie_atol: float,
    method: MaxMinMethod = "auto",
    max_matrix_bytes: int = DEFAULT_MAX_MATRIX_BYTES,
) -> tuple[torch.Tensor, torch.Tensor]:
    batch, n, _ = tokens.shape
    device = tokens.device
    tokens = tokens.detach()  # a selection: no gradient flows through the picks
    batch_index = torch.arange(batch, device=device)
    if maxmin_method(tokens, method, max_matrix_bytes) == "matrix":
        dist = cosine_distances(tokens, valid)
        nearest = nearest_distances(dist)
        dist_rows = dist.view(batch * n, n)
        row_offset = batch_index * n  # flat row of each sample's token 0

        def distances_to(pick: torch.Tensor) -> torch.Tensor:
            return dist_rows.index_select(0, pick + row_offset)

    else:  # memory O(B N d + one slab): never the (B, N, N) matrix
        unit = F.normalize(tokens, dim=-1)
        nearest = nearest_distances_by_rows(unit, valid, max_matrix_bytes)

        def distances_to(pick: torch.Tensor) -> torch.Tensor:
            return _pick_distances(unit, pick, valid, batch_index)

    weights = weights.to(tokens.dtype).clamp_min(0.0)
    available = valid.clone()
    neg_inf = torch.full((), -math.inf, dtype=tokens.dtype, device=device)
    reach = nearest  # step 0: distance to the nearest other token; then: to the picked set
    picks = []
    # K steps known on the host, every decision on the device: no host-device sync
    for step in range(num_keep):
        score = torch.where(available, weights * reach, neg_inf)
        w_max = torch.where(available, weights, 0.0).amax(dim=1, keepdim=True)
        tol = tie_atol * w_max
        pick = _first_near_max(score, tol)
        # nothing positive left (all remaining duplicate a pick, or weigh 0): most distant first
        fill = _first_near_max(torch.where(available, reach, neg_inf), tie_atol)
        pick = torch.where(score.amax(dim=1) > tol.squeeze(1), pick, fill)
        picks.append(pick)
        available.scatter_(1, pick.unsqueeze(1), False)
        row = distances_to(pick)  # (B, N) distances to the new pick
        reach = row if step == 0 else torch.minimum(reach, row)
    return torch.stack(picks, dim=1), nearest


def maxmin_order(
    tokens: torch.Tensor,
    weights: torch.Tensor,
    num_keep: int,
    valid: torch.Tensor | None = None,
    *,
    tie_atol: float = 1e-5,
    method: MaxMinMethod = "auto",
    max_matrix_bytes: int = DEFAULT_MAX_MATRIX_BYTES,
) -> torch.Tensor:
    """DivPrune's greedy max-min selection on cosine distance, weighted, batched.

    With ``D = 1 - cos`` and weights ``w`` (``B, N``), the first pick maximises
    ``w_i * nn_i`` (``nn_i``: distance to the nearest other token, the per-column
    second-smallest entry of ``D`` with its zero diagonal), then each step picks
    the not-yet-picked token maximising ``w_i * min_{s in S} D_is``. Uniform
    weights give DivPrune exactly.

    Args:
        tokens: ``(B, N, d)`` float32/float64 tokens.
        weights: ``(B, N)`` non-negative weights (relevance); 1 is neutral.
        num_keep: steps to run.
        valid: ``(B, N)`` bool; padded tokens are never picked while valid ones remain.
        tie_atol: scores within ``tie_atol * max(w)`` of the best tie (distances lie
            in [0, 2], so this is an absolute distance tolerance) and the lowest
            index wins; 0 is the official exact ``argmax``.
        method: ``"matrix"`` (the ``(B, N, N)`` distances from one GEMM), ``"rows"``
            (no ``N x N`` matrix: the first-step scores from ``(B, block, N)`` slabs
            of at most ``max_matrix_bytes``, then one distance row per step, a GEMV;
            memory ``O(B N d)`` plus one slab) or ``"auto"`` (``"matrix"`` unless
            the matrices would exceed ``max_matrix_bytes``), see :func:`maxmin_method`.
            Both select the same tokens up to float rounding (a GEMV and a GEMM may
            differ in the last bits, far below ``tie_atol``).
        max_matrix_bytes: the memory bound of ``"auto"`` and of the rows path's slabs.

    Returns:
        ``(B, num_keep)`` int64 picks in the order they were made. Never repeats a
        token: when every remaining score is ~0 (all remaining tokens duplicate a
        pick, or have weight 0), the token farthest from the picked set comes next,
        ties to the lowest index.
    """
    if valid is None:
        valid = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
    return _maxmin(tokens, weights, num_keep, valid, tie_atol, method, max_matrix_bytes)[0]


def _check_fields(tie_atol: float, max_matrix_bytes: int) -> None:
    if not (0 <= tie_atol < 1):
        raise ValueError(f"tie_atol must be in [0, 1), got {tie_atol}")
    if max_matrix_bytes < 0:
        raise ValueError(f"max_matrix_bytes must be >= 0, got {max_matrix_bytes}")


@dataclass
class MaxMinSelection(SelectionStrategy):
    """Greedy max-min diversity (DivPrune's selection), weighted by relevance.

    Each step keeps the token maximising ``w_i * min_{s in S} (1 - cos(x_i, x_s))``
    (first step: ``w_i`` times the distance to its nearest other token). The
    weight multiplies the distance, so a token twice as relevant may be half as
    far from the kept set; weight 0 tokens come only after every positive-weight
    token is a duplicate of a kept one. Uniform weights (relevance ``"none"``)
    reproduce DivPrune. See :func:`maxmin_order`.

    Args:
        tie_atol: distance tolerance under which scores tie (lowest index wins).
        method: ``"matrix"``, ``"rows"`` (no ``N x N`` matrix, same picks) or
            ``"auto"`` (rows once the matrices would exceed ``max_matrix_bytes``).
        max_matrix_bytes: bound of ``"auto"`` and of the rows path's slabs.
    """

    tie_atol: float = 1e-5
    method: MaxMinMethod = "auto"
    max_matrix_bytes: int = DEFAULT_MAX_MATRIX_BYTES
    name = "maxmin"

    def __post_init__(self) -> None:
        super().__post_init__()  # types and method's choices, from the annotations
        _check_fields(self.tie_atol, self.max_matrix_bytes)

    def select(self, inputs: PruneInputs, weights: torch.Tensor, num_keep: int) -> torch.Tensor:
        return maxmin_order(
            inputs.tokens,
            weights,
            num_keep,
            inputs.token_mask,
            tie_atol=self.tie_atol,
            method=self.method,
            max_matrix_bytes=self.max_matrix_bytes,
        )


@dataclass
class DivPrune(TokenPruner):
    """DivPrune: keep a maximally diverse subset (greedy max-min cosine distance).

    Paper: Alvar, Singh, Akbari, Zhang, "DivPrune: Diversity-based Visual Token
    Pruning for Large Multimodal Models", CVPR 2025. Official code:
    https://github.com/vbdi/divprune (the ``DivPrune`` and
    ``pairwise_cosine_similarity`` methods it adds to its bundled LLaVA's
    ``LlavaMetaForCausalLM``, run by ``run_DivPrune.sh``).

    What the official code computes, reproduced here: on the post-projector
    tokens of one image, ``D = 1 - cos``; the first pick is the ``argmax`` over
    columns of the second-smallest entry of ``D`` (``topk(D, 2, largest=False)``,
    the ~0 diagonal included, i.e. the distance to the nearest other token); each
    later pick is the ``argmax`` of the column-wise minimum of ``D`` over the
    picked rows; ties go to the first index. Budget: the official scripts keep
    ``int(round(0.098 * N))`` (``SUBSET_RATIO``); prunekit takes any budget,
    e.g. ``budget=0.098`` (prunekit rounds halves up where Python's ``round``
    rounds them to even: 24 vs 25 only when ``0.098 N`` ends in exactly .5).

    Departures, all at degenerate inputs:

    * Exact duplicates: the official ``argmax`` runs over all columns, so once
      every remaining token duplicates a pick (min distance ~0 everywhere) it may
      re-pick a token and keep fewer distinct tokens than asked; prunekit never
      re-picks and fills with the remaining token farthest from the picked set.
    * Ties: scores within ``tie_atol`` (1e-5 in cosine distance) of the best tie
      and the lowest index wins, so float rounding (which differs between batch
      shapes) cannot decide between duplicates; ``tie_atol=0`` is the exact
      ``argmax``.
    * Numerics: float32 or wider (the official runs in the model's fp16, where
      its selection is unstable), negative rounding of ``D`` clamped to 0 and the
      diagonal exactly 0; a zero token has distance 1 to everything instead of NaN.
    * Batched over images with padding masks (the official handles one image).
    * Memory: past ``max_matrix_bytes`` of ``(B, N, N)`` distances (256 MiB: N of
      about 8,000 for one image) the same picks come from one distance row per
      step instead of the matrix (``method="rows"``, see :func:`maxmin_order`).

    ``scores`` are the first-step scores: each token's cosine distance to its
    nearest other token, 0 at or below ``tie_atol`` (a duplicate's distance is
    rounding noise, which must not depend on the batch it is computed in).

    Args:
        tie_atol: see :func:`maxmin_order`.
        method: ``"matrix"``, ``"rows"`` (no ``N x N`` matrix, same picks) or
            ``"auto"`` (rows once the matrices would exceed ``max_matrix_bytes``).
        max_matrix_bytes: bound of ``"auto"`` and of the rows path's slabs.
    """

    name = "divprune"

    tie_atol: float = 1e-5
    method: MaxMinMethod = "auto"
    max_matrix_bytes: int = DEFAULT_MAX_MATRIX_BYTES

    def __post_init__(self) -> None:
        super().__post_init__()  # types and method's choices, from the annotations
        _check_fields(self.tie_atol, self.max_matrix_bytes)

    def select(self, inputs: PruneInputs, num_keep: int) -> Picks:
        weights = torch.ones_like(inputs.tokens[..., 0])
        order, nearest = _maxmin(
            inputs.tokens,
            weights,
            num_keep,
            inputs.token_mask,
            self.tie_atol,
            self.method,
            self.max_matrix_bytes,
        )
        scores = nearest.masked_fill(~inputs.token_mask | (nearest <= self.tie_atol), 0.0)
        scores = scores.clamp_max(2.0)
        return Picks(order=order, scores=scores)


def register(registry) -> None:
    registry.add_pruner(DivPrune)
    registry.add_selection(MaxMinSelection)
