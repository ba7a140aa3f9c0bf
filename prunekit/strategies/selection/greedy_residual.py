"""Greedy residual selection: ResPrune's greedy subspace expansion.

At every step pick ``i* = argmax_{i not in S} w_i * E_S(x_i)`` where
``E_S(x) = ||x - P_S x||^2`` is the residual energy of ``x`` after projecting
onto the span of the kept tokens, add it to ``S``, and update every residual by
one Gram-Schmidt step. This equals pivoted (incremental) Cholesky on the Gram
matrix ``X X^T`` with weighted pivoting, so it costs one GEMM plus ``O(N K)``
work per step; for very large ``N`` a path without the ``N x N`` Gram matrix
computes one Gram row per step instead (``O(N d)`` per step, ``O(N K)`` memory).

Numerics: float32 or wider; energies clamped at 0; a token whose residual is at
most ``rank_tol`` of its own energy counts as already explained (score 0).
When no remaining token has a positive weighted residual (``K`` exceeds the
rank, or only zero-weight tokens are left), the rest are filled in order of
weight, ties to the lowest index; picking such a token still projects out
whatever direction it adds. Ties are scores within ``tie_rtol`` (relative) of
the best, so duplicate tokens are broken the same way whatever the batch shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from prunekit.core.errors import check_choice
from prunekit.core.inputs import PruneInputs
from prunekit.strategies.selection.base import SelectionStrategy

GramMethod = Literal["auto", "gram", "rows"]
GRAM_METHODS = ("auto", "gram", "rows")

#: Relative tolerance below which a residual counts as explained, per dtype.
DEFAULT_RANK_TOL = {torch.float32: 1e-4, torch.float64: 1e-10}


def _first_near_max(score: torch.Tensor, best: torch.Tensor, tie_rtol: float) -> torch.Tensor:
    """Per row, the lowest index whose score is within ``tie_rtol`` (relative) of the row's best.

    Float rounding differs between shapes (a sample alone or padded in a batch),
    so exact ties such as duplicate tokens would otherwise be broken by noise.
    """
    near = score >= best - best.abs() * tie_rtol
    return near.to(torch.uint8).argmax(dim=1)


def _gram_bytes(tokens: torch.Tensor) -> int:
    batch, n, _ = tokens.shape
    return batch * n * n * tokens.element_size()


def greedy_residual_order(
    tokens: torch.Tensor,
    weights: torch.Tensor,
    num_keep: int,
    valid: torch.Tensor | None = None,
    *,
    rank_tol: float | None = None,
    tie_rtol: float = 1e-5,
    method: GramMethod = "auto",
    max_gram_bytes: int = 256 * 2**20,
) -> torch.Tensor:
    """Greedy weighted residual selection, batched.

    Args:
        tokens: ``(B, N, d)`` float32/float64 tokens.
        weights: ``(B, N)`` non-negative weights ``w_i``.
        num_keep: steps to run (``K``).
        valid: ``(B, N)`` bool; invalid tokens are never picked while valid ones remain.
        rank_tol: relative residual below which a token counts as explained;
            ``None`` picks 1e-4 for float32 and 1e-10 for float64.
        tie_rtol: scores within this relative distance of the best are ties,
            won by the lowest index.
        method: ``"gram"`` (one ``N x N`` GEMM), ``"rows"`` (one Gram row per
            step, no ``N x N`` matrix) or ``"auto"`` (``"gram"`` unless the Gram
            matrices would exceed ``max_gram_bytes``).

    Returns:
        ``(B, K)`` int64 picks in the order they were made.
    """
    check_choice("method", method, GRAM_METHODS)
    batch, n, _ = tokens.shape
    device = tokens.device
    if valid is None:
        valid = torch.ones(batch, n, dtype=torch.bool, device=device)
    if rank_tol is None:
        rank_tol = DEFAULT_RANK_TOL.get(tokens.dtype, 1e-4)
    use_gram = method == "gram" or (method == "auto" and _gram_bytes(tokens) <= max_gram_bytes)
    gram = torch.bmm(tokens, tokens.transpose(1, 2)) if use_gram else None

    weights = weights.to(tokens.dtype)
    # (B, N) residual energies E_S, starting at ||x_i||^2 (the Gram diagonal when there is one)
    if gram is not None:
        energy = gram.diagonal(dim1=1, dim2=2).clone()
    else:
        energy = torch.einsum("bnd,bnd->bn", tokens, tokens)
    gram_rows = None if gram is None else gram.view(batch * n, n)
    row_offset = torch.arange(batch, device=device) * n
    tol = energy * rank_tol
    factors = tokens.new_zeros(batch, num_keep, n)  # rows of the incremental Cholesky factor
    order = torch.empty(batch, num_keep, dtype=torch.int64, device=device)
    available = valid.clone()
    neg_inf = torch.tensor(-torch.inf, dtype=tokens.dtype, device=device)

    for step in range(num_keep):
        candidate = available & (energy > tol)
        score = torch.where(candidate, weights * energy, neg_inf)
        best_score = score.amax(dim=1, keepdim=True)
        best = _first_near_max(score, best_score, tie_rtol)
        fill_score = torch.where(available, weights, neg_inf)
        fill = _first_near_max(fill_score, fill_score.amax(dim=1, keepdim=True), tie_rtol)
        pick = torch.where(best_score.squeeze(1) > 0, best, fill)

        picked_energy = energy.gather(1, pick.unsqueeze(1)).squeeze(1)
        independent = picked_energy > tol.gather(1, pick.unsqueeze(1)).squeeze(1)
        if gram is not None:
            row = gram_rows.index_select(0, row_offset + pick)  # (B, N) Gram row of the pick
        else:
            picked = tokens.view(batch * n, -1).index_select(0, row_offset + pick)
            row = torch.bmm(tokens, picked.unsqueeze(-1)).squeeze(-1)
        if step > 0:
            done = factors[:, :step]  # (B, step, N)
            coef = done.gather(2, pick.view(batch, 1, 1).expand(batch, step, 1))  # (B, step, 1)
            row = row - torch.bmm(coef.transpose(1, 2), done).squeeze(1)
        scale = torch.where(independent, picked_energy.clamp_min(1e-30).rsqrt(), 0.0)
        column = row * scale.unsqueeze(1)
        factors[:, step] = column
        energy = (energy - column.pow(2)).clamp_min(0.0)
        available.scatter_(1, pick.unsqueeze(1), False)
        order[:, step] = pick
    return order


@dataclass
class GreedyResidualSelection(SelectionStrategy):
    """Greedy subspace expansion by weighted residual energy (ResPrune's selection).

    See :func:`greedy_residual_order` for the parameters.
    """

    rank_tol: float | None = None
    tie_rtol: float = 1e-5
    method: GramMethod = "auto"
    max_gram_bytes: int = 256 * 2**20

    name = "greedy_residual"

    def __post_init__(self) -> None:
        check_choice("method", self.method, GRAM_METHODS)
        if self.rank_tol is not None and not (0 <= self.rank_tol < 1):
            raise ValueError(f"rank_tol must be in [0, 1), got {self.rank_tol}")
        if not (0 <= self.tie_rtol < 1):
            raise ValueError(f"tie_rtol must be in [0, 1), got {self.tie_rtol}")
        if self.max_gram_bytes < 0:
            raise ValueError(f"max_gram_bytes must be >= 0, got {self.max_gram_bytes}")

    def select(self, inputs: PruneInputs, weights: torch.Tensor, num_keep: int) -> torch.Tensor:
        return greedy_residual_order(
            inputs.tokens,
            weights,
            num_keep,
            inputs.token_mask,
            rank_tol=self.rank_tol,
            tie_rtol=self.tie_rtol,
            method=self.method,
            max_gram_bytes=self.max_gram_bytes,
        )
