"""Greedy residual selection: ResPrune's greedy subspace expansion.

At every step pick ``i* = argmax_{i not in S} w_i * E_S(x_i)`` where
``E_S(x) = ||x - P_S x||^2`` is the residual energy of ``x`` after projecting
onto the span of the kept tokens, add it to ``S``, and update every residual by
one Gram-Schmidt step. This equals pivoted (incremental) Cholesky on the Gram
matrix ``X X^T`` with weighted pivoting, so it costs one GEMM plus ``O(N K)``
work per step; for very large ``N`` a path without the ``N x N`` Gram matrix
computes only the Gram rows it needs (``O(N K)`` memory). The steps run on a
backend (:func:`selection_backend`): a native CPU kernel, a Triton kernel on
CUDA, or the reference loop of PyTorch operations (:func:`_greedy_torch`); all
select the same tokens.

Numerics: float32 or wider; energies clamped at 0; a token whose residual is at
most ``rank_tol`` of its own energy counts as already explained (score 0).
When no remaining token has a positive weighted residual (``K`` exceeds the
rank, or only zero-weight tokens are left), the rest are filled in order of
weight, ties to the lowest index; picking such a token still projects out
whatever direction it adds. Ties are scores within ``tie_rtol`` (relative) of
the best, so duplicate tokens are broken the same way whatever the batch shape.

Adaptive budgets (``energy``): each sample keeps the shortest prefix of its greedy
order whose span explains at least ``energy`` of its total weighted token energy, i.e.
leaves ``sum_i w_i ||x_i - P_S x_i||^2 <= (1 - energy) * sum_i w_i ||x_i||^2`` over its
valid tokens (:func:`energy_counts`); the budget is then a ceiling. The energy is weighted
like the greedy's own objective: with uniform weights (no text) it is the plain token
energy; with text weights a token of weight 0, which the greedy leaves for last, does not
hold the count up to the ceiling. The residual sums come out of the
same greedy loop (``return_residuals``), so the adaptive count costs ``O(N)`` per step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from prunekit.core.errors import check_choice
from prunekit.core.inputs import PruneInputs
from prunekit.core.pruner import Picks
from prunekit.kernels.greedy_cpu import greedy_gram_cpu, greedy_rows_cpu
from prunekit.kernels.native import native_library
from prunekit.kernels.triton_support import triton_available, triton_interpreting
from prunekit.strategies.selection.base import SelectionStrategy

#: how residuals are updated: the ``N x N`` Gram matrix, token rows, or chosen by memory
GramMethod = Literal["auto", "gram", "rows"]
#: the values of :data:`GramMethod`
GRAM_METHODS = ("auto", "gram", "rows")

#: what runs the greedy steps: a compiled CPU kernel, a Triton kernel, PyTorch, or chosen by device
Backend = Literal["auto", "native", "triton", "torch"]
#: the values of :data:`Backend`
BACKENDS = ("auto", "native", "triton", "torch")
#: the token dtypes the native kernel takes
NATIVE_DTYPES = (torch.float32, torch.float64)

#: Relative tolerance below which a residual counts as explained, per dtype.
DEFAULT_RANK_TOL = {torch.float32: 1e-4, torch.float64: 1e-10}

#: Default memory bound of the ``B x N x N`` Gram matrices above which ``"auto"`` takes the rows path.
DEFAULT_MAX_GRAM_BYTES = 256 * 2**20


def _first_near_max(score: torch.Tensor, best: torch.Tensor, tie_rtol: float) -> torch.Tensor:
    """``(B, 1)``: per row, the lowest index whose score is within ``tie_rtol`` (relative)
    of the row's best ``(B, 1)``.

    Float rounding differs between shapes (a sample alone or padded in a batch),
    so exact ties such as duplicate tokens would otherwise be broken by noise.
    """
    near = score >= best - best.abs() * tie_rtol
    return near.max(dim=1, keepdim=True).indices  # the first True of each row


def gram_method(
    tokens: torch.Tensor,
    method: GramMethod = "auto",
    max_gram_bytes: int = DEFAULT_MAX_GRAM_BYTES,
) -> str:
    """The path :func:`greedy_residual_order` takes on ``tokens``: ``"gram"`` or ``"rows"``.

    ``"auto"`` is ``"gram"`` while the ``(B, N, N)`` Gram matrices of ``tokens``
    (in their dtype) fit in ``max_gram_bytes``, ``"rows"`` above.
    """
    check_choice("method", method, GRAM_METHODS)
    if method != "auto":
        return method
    batch, n, _ = tokens.shape
    return "gram" if batch * n * n * tokens.element_size() <= max_gram_bytes else "rows"


def selection_backend(tokens: torch.Tensor, backend: Backend = "auto", path: str = "gram") -> str:
    """The backend :func:`greedy_residual_order` uses for ``tokens`` on ``path``.

    ``"auto"``: on CPU the native kernel when it could be built (see
    :mod:`prunekit.kernels.native`), on CUDA the Triton kernel for the Gram path when
    Triton is installed; the PyTorch loop otherwise. An explicit backend that cannot
    run on ``tokens`` raises a ``ValueError`` naming ``backend``.
    """
    check_choice("backend", backend, BACKENDS)
    device = tokens.device.type
    if backend == "auto":
        if device == "cpu" and tokens.dtype in NATIVE_DTYPES and native_library() is not None:
            return "native"
        if device == "cuda" and path == "gram" and triton_available():
            return "triton"
        return "torch"
    if backend == "native":
        if device != "cpu" or tokens.dtype not in NATIVE_DTYPES:
            raise ValueError(
                f"backend='native' needs float32/float64 CPU tokens, got {tokens.dtype} on {device}"
            )
        if native_library() is None:
            raise ValueError(
                "backend='native': the native CPU kernel could not be built (see the warning)"
            )
    if backend == "triton":
        if path != "gram":
            raise ValueError(
                "backend='triton' runs the Gram path only: use method='gram' or backend='torch'"
            )
        if not triton_available() or (device != "cuda" and not triton_interpreting()):
            raise ValueError(
                f"backend='triton' needs Triton and CUDA tokens, got tokens on {device}"
            )
    return backend


def greedy_residual_order(
    tokens: torch.Tensor,
    weights: torch.Tensor,
    num_keep: int,
    valid: torch.Tensor | None = None,
    *,
    rank_tol: float | None = None,
    tie_rtol: float = 1e-5,
    method: GramMethod = "auto",
    max_gram_bytes: int = DEFAULT_MAX_GRAM_BYTES,
    backend: Backend = "auto",
    return_residuals: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
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
            matrices would exceed ``max_gram_bytes``), see :func:`gram_method`.
        backend: what runs the ``K`` steps, see :func:`selection_backend`: ``"native"``
            (CPU: a compiled kernel, all steps of a sample in one call), ``"triton"``
            (CUDA, Gram path: all steps of the batch in one kernel launch), ``"torch"``
            (the reference loop of PyTorch operations, any device) or ``"auto"``. All
            select the same tokens; they differ only in float rounding order.
        return_residuals: also return, after every step, the residual energy the kept span
            leaves in the sample: ``sum_i w_i ||x_i - P_S x_i||^2`` over its valid tokens
            (weighted as the greedy's objective, each residual clamped as above), for adaptive budgets
            (:func:`energy_counts`). Every backend records it as it updates the energies,
            ``O(N)`` per step, summed in float64.

    Returns:
        ``(B, K)`` int64 picks in the order they were made; with ``return_residuals``,
        ``(picks, residuals)``, residuals ``(B, K)`` in the tokens' dtype (column ``k``:
        after ``k + 1`` picks).
    """
    batch, n, _ = tokens.shape
    device, dtype = tokens.device, tokens.dtype
    if valid is None:
        valid = torch.ones(batch, n, dtype=torch.bool, device=device)
    if rank_tol is None:
        rank_tol = DEFAULT_RANK_TOL.get(dtype, 1e-4)
    path = gram_method(tokens, method, max_gram_bytes)
    backend = selection_backend(tokens, backend, path)
    tokens = tokens.detach().contiguous()  # a selection: no gradient flows through the picks
    gram = None
    if path == "gram":
        gram = torch.bmm(tokens, tokens.transpose(1, 2))
        energy = gram.diagonal(dim1=1, dim2=2).clone()  # (B, N) ||x_i||^2
    else:
        energy = torch.einsum("bnd,bnd->bn", tokens, tokens)

    # Residual energies E_S; a token at or below ``tol`` is explained and held at exactly 0,
    # so that its score w * E is 0 (energies only decrease: it stays explained). Padded
    # tokens start (and so stay) at 0: they are never picked while a valid token is left,
    # and the residual sums then cover the valid tokens only.
    tol = energy * rank_tol
    energy = energy.masked_fill((energy <= tol) | ~valid, 0.0)
    weights = weights.detach().to(dtype).contiguous()
    available = valid.contiguous().clone()
    state = (energy, tol, weights, available, num_keep, tie_rtol)
    if backend == "native":
        if gram is not None:
            return greedy_gram_cpu(gram, *state, return_residuals=return_residuals)
        return greedy_rows_cpu(tokens, *state, return_residuals=return_residuals)
    if backend == "triton":
        from prunekit.kernels.greedy_triton import greedy_steps_triton

        return greedy_steps_triton(gram, *state, return_residuals=return_residuals)
    return _greedy_torch(tokens, gram, *state, return_residuals=return_residuals)


def _greedy_torch(
    tokens: torch.Tensor,
    gram: torch.Tensor | None,
    energy: torch.Tensor,
    tol: torch.Tensor,
    weights: torch.Tensor,
    available: torch.Tensor,
    num_keep: int,
    tie_rtol: float,
    return_residuals: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The reference loop: ``K`` steps of PyTorch operations, batched, on any device.

    ``gram`` is ``(B, N, N)`` or ``None`` (then one Gram row per step from ``tokens``).
    The loop runs ``K`` steps, a number known on the host; every decision stays on the
    device (no ``.item()``, no data-dependent shape), so on CUDA it never waits for the GPU.
    """
    batch, n, _ = tokens.shape
    flat_tokens = tokens.view(batch * n, -1)
    # flat row of each sample's token 0 (none needed for a single sample)
    row_offset = torch.arange(batch, device=tokens.device).unsqueeze(1) * n if batch > 1 else None
    if gram is not None:
        gram = gram.view(batch * n, n)
    neg_inf = torch.full((), -torch.inf, dtype=tokens.dtype, device=tokens.device)
    factors = tokens.new_empty(batch, num_keep, n)  # rows of the incremental Cholesky factor
    residuals = tokens.new_empty(batch, num_keep) if return_residuals else None
    picks = []
    for step in range(num_keep):
        score = torch.where(available, weights * energy, neg_inf)
        fill = torch.where(available, weights, neg_inf)
        best = score.amax(dim=1, keepdim=True)
        # nothing positive left (K beyond the rank, or only weight-0 tokens): fill by weight
        positive = best > 0
        key = torch.where(positive, score, fill)
        top = torch.where(positive, best, fill.amax(dim=1, keepdim=True))
        pick = _first_near_max(key, top, tie_rtol)  # (B, 1)

        flat = (pick if row_offset is None else pick + row_offset).view(batch)
        if gram is not None:
            row = gram.index_select(0, flat)  # (B, N) Gram row of the pick
        else:
            row = torch.bmm(tokens, flat_tokens.index_select(0, flat).unsqueeze(-1)).view(batch, n)
        if step > 0:
            done = factors[:, :step]  # (B, step, N)
            coef = done.gather(2, pick.unsqueeze(1).expand(batch, step, 1))  # (B, step, 1)
            row = torch.baddbmm(row.unsqueeze(1), coef.transpose(1, 2), done, alpha=-1)
            row = row.view(batch, n)
        picked = energy.gather(1, pick)  # (B, 1); 0 if the pick adds no direction
        scale = torch.where(picked > 0, picked.rsqrt(), 0.0)
        column = torch.mul(row, scale, out=factors[:, step])
        energy = torch.addcmul(energy, column, column, value=-1.0)
        energy.masked_fill_(energy <= tol, 0.0)
        available.scatter_(1, pick, False)
        picks.append(pick)
        if residuals is not None:
            residuals[:, step] = (weights * energy).sum(dim=1, dtype=torch.float64)
    order = torch.cat(picks, dim=1) if picks else available.new_empty(batch, 0, dtype=torch.int64)
    return order if residuals is None else (order, residuals)


def energy_counts(
    residuals: torch.Tensor,
    total: torch.Tensor,
    energy: float,
    min_keep: int,
    ceiling: torch.Tensor | int,
) -> torch.Tensor:
    """Per sample, the fewest greedy picks whose span explains ``energy`` of the total.

    Args:
        residuals: ``(B, K)`` residual energy left after each step (column ``k``: after
            ``k + 1`` picks), from ``greedy_residual_order(..., return_residuals=True)``.
        total: ``(B,)`` the samples' total weighted energy ``sum_i w_i ||x_i||^2`` over
            valid tokens (the same weights as the residuals).
        energy: the fraction of ``total`` to explain, in ``(0, 1]``.
        min_keep: the floor, ``>= 1``.
        ceiling: ``(B,)`` (or one int) most tokens a sample keeps, the budget's count.

    Returns:
        ``(B,)`` int64: the first ``k`` with ``residuals[:, k - 1] <= (1 - energy) * total``
        (compared in float64), the ceiling when no step reaches it, then clamped to
        ``[min_keep, ceiling]`` (the ceiling wins over the floor).
    """
    if not 0 < energy <= 1:
        raise ValueError(f"energy must be in (0, 1], got {energy}")
    if min_keep < 1:
        raise ValueError(f"min_keep must be >= 1, got {min_keep}")
    batch, steps = residuals.shape
    ceiling = torch.as_tensor(ceiling, dtype=torch.int64, device=residuals.device).expand(batch)
    threshold = (1.0 - energy) * total.to(device=residuals.device, dtype=torch.float64)
    met = residuals.to(torch.float64) <= threshold.unsqueeze(1)  # (B, K)
    # the first step that meets it (argmax of bool: the first True), else the ceiling
    first = met.to(torch.uint8).argmax(dim=1) + 1 if steps else ceiling
    counts = torch.where(met.any(dim=1), first, ceiling)
    return torch.minimum(counts.clamp_min(min_keep), ceiling)


@dataclass
class GreedyResidualSelection(SelectionStrategy):
    """Greedy subspace expansion by weighted residual energy (ResPrune's selection).

    See :func:`greedy_residual_order` for the parameters. With ``energy`` set the
    selection is adaptive: each sample keeps the fewest greedy picks (at least
    ``min_keep``, at most the budget's count) whose span explains ``energy`` of its
    total (weighted) token energy, see :func:`energy_counts`; ``min_keep`` is
    ignored without ``energy``.
    """

    rank_tol: float | None = None
    tie_rtol: float = 1e-5
    method: GramMethod = "auto"
    max_gram_bytes: int = DEFAULT_MAX_GRAM_BYTES
    backend: Backend = "auto"
    energy: float | None = None
    min_keep: int = 1

    name = "greedy_residual"

    def __post_init__(self) -> None:
        super().__post_init__()  # types and method's choices, from the annotations
        if self.rank_tol is not None and not (0 <= self.rank_tol < 1):
            raise ValueError(f"rank_tol must be in [0, 1), got {self.rank_tol}")
        if not (0 <= self.tie_rtol < 1):
            raise ValueError(f"tie_rtol must be in [0, 1), got {self.tie_rtol}")
        if self.max_gram_bytes < 0:
            raise ValueError(f"max_gram_bytes must be >= 0, got {self.max_gram_bytes}")
        if self.energy is not None and not (0 < self.energy <= 1):
            raise ValueError(f"energy must be in (0, 1] or None, got {self.energy}")
        if self.min_keep < 1:
            raise ValueError(f"min_keep must be >= 1, got {self.min_keep}")

    @property
    def adaptive(self) -> bool:
        return self.energy is not None

    def select(
        self, inputs: PruneInputs, weights: torch.Tensor, num_keep: int
    ) -> torch.Tensor | Picks:
        picked = greedy_residual_order(
            inputs.tokens,
            weights,
            num_keep,
            inputs.token_mask,
            rank_tol=self.rank_tol,
            tie_rtol=self.tie_rtol,
            method=self.method,
            max_gram_bytes=self.max_gram_bytes,
            backend=self.backend,
            return_residuals=self.energy is not None,
        )
        if self.energy is None:
            return picked
        order, residuals = picked
        tokens = inputs.tokens.detach()
        norms = torch.einsum("bnd,bnd->bn", tokens, tokens).masked_fill(~inputs.token_mask, 0.0)
        total = (weights.to(norms.dtype) * norms).sum(dim=1, dtype=torch.float64)
        counts = energy_counts(residuals, total, self.energy, self.min_keep, inputs.keep_counts)
        return Picks(order=order, counts=counts)
