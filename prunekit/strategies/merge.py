"""Merging dropped tokens into kept ones, instead of dropping them.

After a selection has chosen the kept tokens ``S`` of a sample, every dropped
token joins one kept token and each kept token's new value is the mean of
itself and the dropped tokens that joined it. Two ways to choose whom a dropped
token ``x_j`` joins:

* ``"lstsq"`` (ResPrune's own machinery): the least-squares coefficients
  ``a_j`` of ``x_j`` on the kept tokens, ``P_S x_j = sum_i a_ji x_i`` (the
  coefficients the greedy factorisation holds); ``x_j`` joins the kept token it
  loads on most, ``argmax_i |a_ji| * ||x_i||`` (its largest component in the
  kept span). A token with no component in the kept span (relative projection
  at most :data:`SPAN_RTOL`, e.g. a zero token) is dropped, not merged.
* ``"nearest"`` (the plain baseline): the kept token of highest cosine
  similarity. A token of norm 0 has no direction and is dropped, not merged.

Ties (scores within a relative ``tie_rtol`` of the best, e.g. duplicate kept
tokens) go to the earliest pick. ``preserve_norm`` rescales each merged value to the norm of
the kept token it replaces: averaging shrinks norms when members disagree, and
a language model is sensitive to token norms. Kept tokens that nothing joined
keep their exact original values.

Everything runs in the compute dtype (float32, float64 for float64 tokens),
batched over ragged samples (padding masked, so whatever it holds is ignored),
with ``K x K`` and ``K x N`` Gram blocks only (never ``N x N``). The
assignment carries no gradient; the means do.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from prunekit.core.errors import check_choice
from prunekit.core.inputs import compute_dtype
from prunekit.core.tensor_ops import gather_rows

#: how dropped tokens are merged: not at all, by least-squares loading, or by cosine
MergeMethod = Literal["none", "lstsq", "nearest"]
#: the values of :data:`MergeMethod`
MERGE_METHODS = ("none", "lstsq", "nearest")

#: A token's projection on the kept span counts as zero at or below this share of its norm.
SPAN_RTOL = {torch.float32: 1e-3, torch.float64: 1e-7}
#: Smallest tie tolerance of ``"lstsq"`` scores: coefficients shared by dependent picks
#: (duplicates, past the rank) carry rounding noise of about ``eps / jitter = sqrt(eps)``.
LSTSQ_TIE_RTOL = {torch.float32: 1e-3, torch.float64: 1e-6}


def jitter_rtol(dtype: torch.dtype) -> float:
    """Relative jitter added to the diagonal of ``G_SS`` (times its mean diagonal):
    ``sqrt(eps)`` of ``dtype`` (3.5e-4 for float32, 1.5e-8 for float64).

    Enough for the Cholesky of a Gram matrix whose picks are dependent past the rank
    (its rounding errors are ``O(K eps)``), small for independent picks (it biases a
    coefficient by about ``jitter / eigenvalue``, the classic Tikhonov trade-off at
    ``sqrt(eps)``), and it turns the solve for dependent picks into a ridge that
    converges to the minimum-norm least-squares coefficients.
    """
    return torch.finfo(dtype).eps ** 0.5


def lstsq_coefficients(
    kept: torch.Tensor, tokens: torch.Tensor, kept_valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Least-squares coefficients of every token on the kept tokens, batched.

    Solves ``G_SS A = G_SX`` with ``G_SS = X_S X_S^T`` ``(K, K)`` and
    ``G_SX = X_S X^T`` ``(K, N)`` by a Cholesky factorisation of ``G_SS``, so that
    ``P_S x_j = sum_i A[i, j] x_i``. ``G_SS`` gets a relative jitter
    (:func:`jitter_rtol` times its mean diagonal): the greedy picks are independent
    up to ``rank_tol``, so ``G_SS`` is well conditioned except for picks past the
    rank, where the jitter makes the solve a tiny ridge regression (finite
    coefficients, the minimum-norm ones, shared between dependent picks). If the
    factorisation still fails, it is retried with a 1000 times larger jitter; a
    sample where even that fails (non-finite tokens) gets zero coefficients.

    Args:
        kept: ``(B, K, d)`` the kept tokens ``X_S``.
        tokens: ``(B, N, d)`` the tokens ``X`` to express.
        kept_valid: ``(B, K)`` bool, the real kept slots (``None``: all); the
            others get zero coefficients and do not take part.

    Returns:
        ``(B, K, N)`` coefficients ``A`` in the compute dtype (float32 or float64).
    """
    if kept.dim() != 3 or tokens.dim() != 3 or kept.shape[::2] != tokens.shape[::2]:
        raise ValueError(
            f"kept (B, K, d) and tokens (B, N, d) must share B and d, got {tuple(kept.shape)} "
            f"and {tuple(tokens.shape)}"
        )
    batch, k, _ = kept.shape
    dtype = compute_dtype(torch.promote_types(kept.dtype, tokens.dtype))
    if kept_valid is None:
        kept_valid = torch.ones(batch, k, dtype=torch.bool, device=kept.device)
    kept = kept.to(dtype).masked_fill(~kept_valid.unsqueeze(-1), 0.0)
    gram_sx = kept @ tokens.to(dtype).transpose(1, 2)  # (B, K, N)
    gram_ss = kept @ kept.transpose(1, 2)  # (B, K, K)
    diag = gram_ss.diagonal(dim1=1, dim2=2)
    live = kept_valid.to(dtype)
    scale = (diag * live).sum(dim=1) / live.sum(dim=1).clamp_min(1.0)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # all-zero tokens: any jitter
    # a padding slot's row and column are zero: put 1 on its diagonal so the system stays regular
    pad_diag = torch.diag_embed((~kept_valid).to(dtype))
    rtol = jitter_rtol(dtype)

    def factor(rtol: float) -> tuple[torch.Tensor, torch.Tensor]:
        jitter = torch.diag_embed((rtol * scale).unsqueeze(1).expand(-1, k))
        return torch.linalg.cholesky_ex(gram_ss + jitter + pad_diag)

    chol, info = factor(rtol)
    failed = info > 0
    if bool(failed.any()):  # should not happen for finite tokens; keep the result finite anyway
        retry, retry_info = factor(1e3 * rtol)
        chol = torch.where(failed[:, None, None], retry, chol)
        failed = failed & (retry_info > 0)
    coefficients = torch.cholesky_solve(gram_sx, chol)
    return coefficients.masked_fill(failed[:, None, None] | ~kept_valid.unsqueeze(-1), 0.0)


def _first_near_max(score: torch.Tensor, tie_rtol: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per column of ``score`` ``(B, K, N)``: the best value and the first row within
    ``tie_rtol`` (relative) of it, ``(B, N)`` each."""
    best = score.amax(dim=1)
    near = score >= (best - best.abs() * tie_rtol).unsqueeze(1)
    return best, near.to(torch.uint8).argmax(dim=1)


def assign_dropped(
    tokens: torch.Tensor,
    kept: torch.Tensor,
    kept_valid: torch.Tensor,
    method: Literal["lstsq", "nearest"],
    tie_rtol: float = 1e-5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Which kept token each token would join (see the module docstring).

    Args:
        tokens: ``(B, N, d)`` tokens (padding already zeroed).
        kept: ``(B, K, d)`` kept tokens in pick order, ``kept_valid`` ``(B, K)`` the real slots.
        method: ``"lstsq"`` or ``"nearest"``.
        tie_rtol: scores within this relative distance of the best tie; the earliest pick
            wins (``"lstsq"``: at least :data:`LSTSQ_TIE_RTOL`).

    Returns:
        ``(B, N)`` int64 slot of the chosen kept token, and ``(B, N)`` bool: whether the
        token can be merged at all (it has a component in the kept span, resp. a direction).
    """
    check_choice("method", method, ("lstsq", "nearest"))
    dtype = compute_dtype(tokens.dtype)
    tokens, kept = tokens.detach().to(dtype), kept.detach().to(dtype)
    norms = tokens.norm(dim=-1)  # (B, N)
    kept_norms = kept.norm(dim=-1)  # (B, K)
    if method == "lstsq":
        coefficients = lstsq_coefficients(kept, tokens, kept_valid)
        score = coefficients.abs() * kept_norms.unsqueeze(-1)  # |a_ji| * ||x_i||, (B, K, N)
    else:
        tiny = torch.finfo(dtype).tiny
        unit = tokens / norms.clamp_min(tiny).unsqueeze(-1)
        kept_unit = kept / kept_norms.clamp_min(tiny).unsqueeze(-1)
        score = kept_unit @ unit.transpose(1, 2)  # cosines, (B, K, N)
    score = score.masked_fill(~kept_valid.unsqueeze(-1), -torch.inf)
    if method == "lstsq":
        tie_rtol = max(tie_rtol, LSTSQ_TIE_RTOL.get(dtype, LSTSQ_TIE_RTOL[torch.float32]))
    best, slot = _first_near_max(score, tie_rtol)
    if method == "lstsq":
        mergeable = best > SPAN_RTOL.get(dtype, SPAN_RTOL[torch.float32]) * norms
    else:
        mergeable = norms > 0
    return slot, mergeable


def merge_dropped(
    tokens: torch.Tensor,
    token_mask: torch.Tensor,
    order: torch.Tensor,
    counts: torch.Tensor,
    method: MergeMethod,
    preserve_norm: bool = False,
    tie_rtol: float = 1e-5,
) -> torch.Tensor:
    """The kept tokens' values after merging every dropped token into one of them.

    Args:
        tokens: ``(B, N, d)`` tokens, any float dtype (padding may hold anything).
        token_mask: ``(B, N)`` bool, the real tokens.
        order: ``(B, K)`` int64 kept token indices in pick order; entries past a
            sample's count are ignored.
        counts: ``(B,)`` int64 tokens each sample keeps (``order[b, :counts[b]]``).
        method: ``"lstsq"``, ``"nearest"`` (see the module docstring) or ``"none"``
            (the kept tokens unchanged).
        preserve_norm: rescale each merged value to the norm of the kept token it
            replaces (a kept token that nothing joined, or whose mean is 0, is left as is).
        tie_rtol: see :func:`assign_dropped`.

    Returns:
        ``(B, K, d)`` values in pick order, in the compute dtype (float32 or float64):
        each kept token's mean with the dropped tokens that joined it; zero past a
        sample's count.
    """
    check_choice("method", method, MERGE_METHODS)
    if tokens.dim() != 3:
        raise ValueError(f"tokens must have shape (B, N, d), got {tuple(tokens.shape)}")
    batch, n, _ = tokens.shape
    if tuple(token_mask.shape) != (batch, n) or token_mask.dtype != torch.bool:
        raise ValueError(
            f"token_mask must be ({batch}, {n}) bool, got {tuple(token_mask.shape)} "
            f"{token_mask.dtype}"
        )
    if order.dim() != 2 or order.shape[0] != batch:
        raise ValueError(f"order must have shape ({batch}, K), got {tuple(order.shape)}")
    if tuple(counts.shape) != (batch,):
        raise ValueError(f"counts must have shape ({batch},), got {tuple(counts.shape)}")
    k = order.shape[1]
    dtype = compute_dtype(tokens.dtype)
    x = tokens.to(dtype).masked_fill(~token_mask.unsqueeze(-1), 0.0)
    live = torch.arange(k, device=order.device).unsqueeze(0) < counts.unsqueeze(1)  # (B, K)
    index = order.clamp(0, n - 1)
    kept = gather_rows(x, index).masked_fill(~live.unsqueeze(-1), 0.0)
    if method == "none":
        return kept
    is_kept = torch.zeros(batch, n + 1, dtype=torch.bool, device=order.device)
    is_kept.scatter_(1, torch.where(live, index, n), True)
    dropped = token_mask & ~is_kept[:, :n]

    slot, mergeable = assign_dropped(x, kept, live, method, tie_rtol)
    member = dropped & mergeable  # (B, N)
    assign = F.one_hot(slot, k).to(dtype) * member.unsqueeze(-1).to(dtype)  # (B, N, K)
    members = assign.sum(dim=1).unsqueeze(-1)  # (B, K, 1)
    # a kept token nothing joined: kept + 0, divided by 1, exactly itself
    merged = (kept + assign.transpose(1, 2) @ x) / (members + 1.0)
    if preserve_norm:
        norm = merged.norm(dim=-1, keepdim=True)
        rescale = (members > 0) & (norm > 0)
        target = kept.norm(dim=-1, keepdim=True)
        merged = torch.where(
            rescale, merged * (target / norm.clamp_min(torch.finfo(dtype).tiny)), merged
        )
    return merged
