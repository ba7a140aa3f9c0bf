"""ResPrune's greedy residual steps in one Triton launch: one program per sample.

:func:`~prunekit.strategies.selection.greedy_residual.greedy_residual_order` runs ``K``
steps of about 15 small PyTorch ops each on its Gram path, so ``15 K`` kernel launches on
a GPU. :func:`greedy_steps_triton` runs all ``K`` steps of a sample inside one program
(grid ``(B,)``) and picks what that loop picks, ties included. Each step makes three
passes over the ``N`` tokens in blocks of ``BLOCK_N``: the best score, the first token
near it, then the new factor row and residual energies. The factor rows (``B x K x N``),
the energies and the availability live in global scratch that the wrapper allocates.
With ``return_residuals`` the third pass also sums the new weighted energies (in float64) into
one residual per step, for adaptive budgets; without, that code is compiled out.

Triton is imported, and the kernel jitted, on first use: the module imports without
Triton, and ``TRITON_INTERPRET=1`` (Triton's CPU interpreter, which runs on CPU tensors)
works when it is set before that first use, as Triton requires.
"""

from __future__ import annotations

import functools
import numbers

import torch

from prunekit.kernels.triton_support import triton_available, triton_interpreting

#: ``triton.language`` once :func:`_jitted` has imported it; the kernel's body names it.
#: Not imported with this module: Triton's interpreter mode is fixed when Triton is imported.
tl = None

__all__ = ["greedy_steps_triton", "triton_available"]

#: most tokens a program handles per block (a power of two)
MAX_BLOCK_N = 256
#: factor rows reduced together when a Gram row is corrected by the earlier steps
BLOCK_K = 16


def _greedy_steps_kernel(
    gram_ptr,  # (B, N, N)
    energy_ptr,  # (B, N) scratch: residual energies, updated
    tol_ptr,  # (B, N)
    weight_ptr,  # (B, N)
    avail_ptr,  # (B, N) int8 scratch: 1 while a token can be picked
    factor_ptr,  # (B, K, N) scratch: rows of the incremental Cholesky factor
    pick_ptr,  # (B, K) int64 output
    resid_ptr,  # (B, K) output: sum of the energies after each step (if HAS_RESIDUALS)
    rtol_ptr,  # (1,) tie_rtol in the data's dtype
    n,
    num_keep,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    IS_FP64: tl.constexpr,
    HAS_RESIDUALS: tl.constexpr,
):
    sample = tl.program_id(0).to(tl.int64)
    gram_ptr += sample * n * n
    energy_ptr += sample * n
    tol_ptr += sample * n
    weight_ptr += sample * n
    avail_ptr += sample * n
    factor_ptr += sample * num_keep * n
    pick_ptr += sample * num_keep
    resid_ptr += sample * num_keep
    dtype = energy_ptr.dtype.element_ty
    rtol = tl.load(rtol_ptr)
    offsets = tl.arange(0, BLOCK_N)
    neg_inf = float("-inf")

    for step in range(num_keep):
        # pass 1: the best weighted residual and the best weight among available tokens
        best_vec = tl.full([BLOCK_N], neg_inf, dtype)
        fill_vec = tl.full([BLOCK_N], neg_inf, dtype)
        for start in range(0, n, BLOCK_N):
            idx = start + offsets
            inside = idx < n
            avail = tl.load(avail_ptr + idx, mask=inside, other=0) != 0
            w = tl.load(weight_ptr + idx, mask=inside, other=0.0)
            e = tl.load(energy_ptr + idx, mask=inside, other=0.0)
            best_vec = tl.maximum(best_vec, tl.where(avail, w * e, neg_inf))
            fill_vec = tl.maximum(fill_vec, tl.where(avail, w, neg_inf))
        best = tl.max(best_vec, axis=0)
        # nothing positive left (K beyond the rank, or only weight-0 tokens): fill by weight
        positive = best > 0
        top = tl.where(positive, best, tl.max(fill_vec, axis=0))
        # -inf (nothing available) is kept as is: every token is then near, and 0 is picked
        threshold = tl.where(top == neg_inf, top, top - tl.abs(top) * rtol)

        # pass 2: the lowest index whose key is within tie_rtol of the top
        first_vec = tl.zeros([BLOCK_N], tl.int32) + n
        for start in range(0, n, BLOCK_N):
            idx = start + offsets
            inside = idx < n
            avail = tl.load(avail_ptr + idx, mask=inside, other=0) != 0
            w = tl.load(weight_ptr + idx, mask=inside, other=0.0)
            e = tl.load(energy_ptr + idx, mask=inside, other=0.0)
            key = tl.where(avail, tl.where(positive, w * e, w), neg_inf)
            near = (key >= threshold) & inside
            first_vec = tl.minimum(first_vec, tl.where(near, idx, n))
        first = tl.min(first_vec, axis=0)
        pick = tl.where(first < n, first, 0).to(tl.int64)  # none near (NaN): 0, as torch
        tl.store(pick_ptr + step, pick)

        picked = tl.load(energy_ptr + pick)
        safe = tl.where(picked > 0, picked, 1.0)
        # IEEE-rounded 1 / sqrt: float32's default sqrt and division are approximate on GPUs
        inv_sqrt = 1.0 / tl.sqrt(safe) if IS_FP64 else tl.div_rn(1.0, tl.sqrt_rn(safe))
        scale = tl.where(picked > 0, inv_sqrt, 0.0)
        tl.debug_barrier()  # every thread has read E[pick] before pass 3 writes it

        # pass 3: factor row = (Gram row - earlier factors' share) * scale; energies shrink
        resid_vec = tl.zeros([BLOCK_N], tl.float64)
        for start in range(0, n, BLOCK_N):
            idx = start + offsets
            inside = idx < n
            row = tl.load(gram_ptr + pick * n + idx, mask=inside, other=0.0)
            for j0 in range(0, step, BLOCK_K):
                rows = j0 + tl.arange(0, BLOCK_K)
                done = rows < step
                coef = tl.load(factor_ptr + rows * n + pick, mask=done, other=0.0)
                tile = tl.load(
                    factor_ptr + rows[:, None] * n + idx[None, :],
                    mask=done[:, None] & inside[None, :],
                    other=0.0,
                )
                row -= tl.sum(coef[:, None] * tile, axis=0)
            column = row * scale
            tl.store(factor_ptr + step * n + idx, column, mask=inside)
            e = tl.load(energy_ptr + idx, mask=inside, other=0.0)
            t = tl.load(tol_ptr + idx, mask=inside, other=0.0)
            e = e - column * column
            e = tl.where(e <= t, 0.0, e)
            tl.store(energy_ptr + idx, e, mask=inside)
            if HAS_RESIDUALS:  # weighted: the objective the greedy pursues
                w = tl.load(weight_ptr + idx, mask=inside, other=0.0)
                resid_vec += tl.where(inside, w * e, 0.0).to(tl.float64)
        if HAS_RESIDUALS:
            tl.store(resid_ptr + step, tl.sum(resid_vec, axis=0).to(dtype))
        tl.store(avail_ptr + pick, 0)
        tl.debug_barrier()  # the next step reads what every thread wrote


@functools.cache
def _jitted(interpret: bool):
    """The kernel jitted by ``triton.jit`` (which decides then whether to interpret it).

    Triton is imported here, not with this module, because ``TRITON_INTERPRET`` must be
    set before ``triton.language`` is imported (its own helpers such as ``tl.max`` are
    jitted then): importing this module must not fix the mode for the whole process.
    """
    global tl
    try:
        import triton
        import triton.language
    except ImportError as error:
        raise RuntimeError("greedy_steps_triton needs Triton, which is not installed") from error
    tl = triton.language
    return triton.jit(_greedy_steps_kernel)


def _check_args(gram, energy, tol, weights, available, num_keep, tie_rtol) -> None:
    if not isinstance(gram, torch.Tensor) or gram.dim() != 3 or gram.shape[1] != gram.shape[2]:
        shape = tuple(gram.shape) if isinstance(gram, torch.Tensor) else type(gram).__name__
        raise ValueError(f"gram must be a (B, N, N) tensor, got {shape}")
    if gram.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"gram must be float32 or float64, got {gram.dtype}")
    batch, n, _ = gram.shape
    for name, tensor, dtype in (
        ("energy", energy, gram.dtype),
        ("tol", tol, gram.dtype),
        ("weights", weights, gram.dtype),
        ("available", available, torch.bool),
    ):
        if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) != (batch, n):
            shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor)
            raise ValueError(f"{name} must have shape (B, N) = {(batch, n)}, got {shape}")
        if tensor.dtype != dtype:
            raise TypeError(f"{name} must be {dtype} like gram, got {tensor.dtype}")
        if tensor.device != gram.device:
            raise ValueError(f"{name} must be on gram's device {gram.device}, got {tensor.device}")
    if not isinstance(num_keep, numbers.Integral) or isinstance(num_keep, bool) or num_keep < 0:
        raise ValueError(f"num_keep must be an int >= 0, got {num_keep!r}")
    if n == 0 and num_keep > 0:
        raise ValueError(f"num_keep must be 0 when gram has no tokens (N = 0), got {num_keep}")
    if not isinstance(tie_rtol, numbers.Real) or isinstance(tie_rtol, bool):
        raise TypeError(f"tie_rtol must be a float, got {type(tie_rtol).__name__}")
    if not 0 <= tie_rtol < 1:
        raise ValueError(f"tie_rtol must be in [0, 1), got {tie_rtol}")
    if gram.device.type != "cuda" and not triton_interpreting():
        raise ValueError(
            f"gram must be on a CUDA device (or TRITON_INTERPRET=1 set), got {gram.device}"
        )


def greedy_steps_triton(
    gram: torch.Tensor,
    energy: torch.Tensor,
    tol: torch.Tensor,
    weights: torch.Tensor,
    available: torch.Tensor,
    num_keep: int,
    tie_rtol: float,
    return_residuals: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The ``K`` greedy steps of :func:`~prunekit.strategies.selection.greedy_residual.
    greedy_residual_order`'s Gram path in one Triton launch, one program per sample.

    Args:
        gram: ``(B, N, N)`` float32/float64 Gram matrices ``X X^T``.
        energy: ``(B, N)`` residual energies, already zero at or below ``tol``.
        tol: ``(B, N)`` energy at or below which a token counts as explained.
        weights: ``(B, N)`` non-negative weights, in ``gram``'s dtype.
        available: ``(B, N)`` bool, the tokens that may be picked (invalid ones never).
        num_keep: steps to run (``K``).
        tie_rtol: scores within this relative distance of the best are ties, won by the
            lowest index.
        return_residuals: also return the ``(B, K)`` sums of the energies over the ``N``
            tokens after each step (summed in float64, stored in ``gram``'s dtype).

    Returns:
        ``(B, K)`` int64 picks in the order they were made (and the residuals with
        ``return_residuals``); the inputs are not modified.

    All tensors on one CUDA device, or anywhere under ``TRITON_INTERPRET=1``.
    """
    _check_args(gram, energy, tol, weights, available, num_keep, tie_rtol)
    batch, n, _ = gram.shape
    picks = torch.empty(batch, num_keep, dtype=torch.int64, device=gram.device)
    # without residuals the kernel never touches resid_ptr: any pointer of the dtype will do
    residuals = gram.new_empty(batch, num_keep) if return_residuals else gram.new_empty(1)
    done = (picks, residuals) if return_residuals else picks
    if batch == 0 or num_keep == 0:
        return done
    kernel = _jitted(triton_interpreting())
    factors = gram.new_empty(batch, num_keep, n)
    rtol = torch.full((1,), tie_rtol, dtype=gram.dtype, device=gram.device)
    block_n = min(MAX_BLOCK_N, max(16, 1 << (n - 1).bit_length()))
    kernel[(batch,)](
        gram.contiguous(),
        energy.clone(memory_format=torch.contiguous_format),  # scratch, updated by the kernel
        tol.contiguous(),
        weights.contiguous(),
        available.to(torch.int8, memory_format=torch.contiguous_format),  # scratch copy
        factors,
        picks,
        residuals,
        rtol,
        n,
        num_keep,
        BLOCK_N=block_n,
        BLOCK_K=BLOCK_K,
        IS_FP64=gram.dtype == torch.float64,
        HAS_RESIDUALS=return_residuals,
    )
    return done
