"""ResPrune's greedy residual steps on CPU through the native kernel (:mod:`.native`).

Two paths, both selecting what :func:`~prunekit.strategies.selection.greedy_residual.
greedy_residual_order`'s PyTorch loop selects:

* :func:`greedy_gram_cpu`: all ``K`` steps of a sample in one native call on its
  ``N x N`` Gram matrix (a few microseconds per step instead of ~15 PyTorch dispatches).
* :func:`greedy_rows_cpu`: no ``N x N`` matrix. Gram rows are computed in blocks ahead of
  need: when a pick has no computed row, the ``block_rows`` tokens that score highest now
  (the pick first) get their Gram rows in one GEMM, already reduced by the factor rows so
  far (a second GEMM), and the native call resumes. Greedy picks mostly come from the
  current top scores, so a block serves many steps, and the Gram rows cost GEMM (not GEMV)
  speed. Memory: the ``K x N`` factor rows plus one ``block_rows x N`` block.

Inputs are the prepared state of the loop: ``energy`` (already zeroed at or below
``tol``), ``tol``, ``weights`` and ``available`` (``B x N``); they are updated in place.
With ``return_residuals=True`` both also return ``(B, K)`` residuals: after each step, the
sum of ``weights * energy`` over the ``N`` tokens (the caller zeroes padded tokens' energies, which
then stay 0), accumulated in double by the kernel.
"""

from __future__ import annotations

import ctypes

import torch

from prunekit.kernels.native import native_library

#: default number of Gram rows computed together on the rows path
DEFAULT_BLOCK_ROWS = 64


def _pointer(tensor: torch.Tensor | None) -> ctypes.c_void_p:
    """The tensor's data pointer; ``None`` is the C ``NULL`` (an output not wanted)."""
    return ctypes.c_void_p(None if tensor is None else tensor.data_ptr())


def _kernel(dtype: torch.dtype):
    library = native_library()
    if library is None:
        raise RuntimeError("the native CPU kernel is unavailable (see prunekit.kernels.native)")
    if dtype == torch.float32:
        return library.prunekit_greedy_f32
    if dtype == torch.float64:
        return library.prunekit_greedy_f64
    raise TypeError(f"tokens: the native kernel takes float32 or float64, got {dtype}")


def _check_state(energy, tol, weights, available) -> None:
    for name, tensor in (("energy", energy), ("tol", tol), ("weights", weights)):
        if (
            tensor.device.type != "cpu"
            or not tensor.is_contiguous()
            or tensor.dtype != energy.dtype
        ):
            raise ValueError(f"{name}: expected a contiguous CPU tensor of {energy.dtype}")
    if available.dtype != torch.bool or not available.is_contiguous():
        raise ValueError("available: expected a contiguous bool tensor")


def greedy_gram_cpu(
    gram: torch.Tensor,
    energy: torch.Tensor,
    tol: torch.Tensor,
    weights: torch.Tensor,
    available: torch.Tensor,
    num_keep: int,
    tie_rtol: float,
    return_residuals: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """``(B, K)`` int64 picks from the ``(B, N, N)`` Gram matrices, one native call per sample
    (and the ``(B, K)`` residuals with ``return_residuals``, see the module docstring)."""
    batch, n, _ = gram.shape
    kernel = _kernel(gram.dtype)
    gram = gram.contiguous()
    _check_state(energy, tol, weights, available)
    slot = torch.arange(n, dtype=torch.int64)  # token i's Gram row is row i
    slot_step = torch.zeros(n, dtype=torch.int64)  # nothing subtracted from the Gram rows yet
    factors = gram.new_empty(num_keep, n)
    picks = torch.empty(batch, num_keep, dtype=torch.int64)
    residuals = gram.new_empty(batch, num_keep) if return_residuals else None
    for b in range(batch):
        kernel(
            n, 0, num_keep, _pointer(gram[b]), _pointer(slot), _pointer(slot_step),
            _pointer(factors), _pointer(energy[b]), _pointer(tol[b]), _pointer(weights[b]),
            _pointer(available[b]), tie_rtol, _pointer(picks[b]),
            _pointer(None if residuals is None else residuals[b]),
        )  # fmt: skip
    return picks if residuals is None else (picks, residuals)


def greedy_rows_cpu(
    tokens: torch.Tensor,
    energy: torch.Tensor,
    tol: torch.Tensor,
    weights: torch.Tensor,
    available: torch.Tensor,
    num_keep: int,
    tie_rtol: float,
    block_rows: int = DEFAULT_BLOCK_ROWS,
    return_residuals: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """``(B, K)`` int64 picks from the ``(B, N, d)`` tokens without an ``N x N`` matrix
    (and the ``(B, K)`` residuals with ``return_residuals``, see the module docstring)."""
    batch, n, _ = tokens.shape
    kernel = _kernel(tokens.dtype)
    if block_rows < 1:
        raise ValueError(f"block_rows must be >= 1, got {block_rows}")
    tokens = tokens.contiguous()
    _check_state(energy, tol, weights, available)
    block_rows = min(block_rows, n)
    factors = tokens.new_empty(num_keep, n)
    picks = torch.empty(batch, num_keep, dtype=torch.int64)
    residuals = tokens.new_empty(batch, num_keep) if return_residuals else None
    rows = tokens.new_empty(block_rows, n)
    slot = torch.empty(n, dtype=torch.int64)
    slot_step = torch.empty(block_rows, dtype=torch.int64)
    for b in range(batch):
        x = tokens[b]
        slot.fill_(-1)  # no rows yet: the first step stops at once
        step = 0
        while True:
            step = kernel(
                n, step, num_keep, _pointer(rows), _pointer(slot), _pointer(slot_step),
                _pointer(factors), _pointer(energy[b]), _pointer(tol[b]), _pointer(weights[b]),
                _pointer(available[b]), tie_rtol, _pointer(picks[b]),
                _pointer(None if residuals is None else residuals[b]),
            )  # fmt: skip
            if step == num_keep:
                break
            block = _next_block(picks[b, step], energy[b], weights[b], available[b], block_rows)
            count = block.numel()
            torch.mm(x.index_select(0, block), x.t(), out=rows[:count])
            if step > 0:  # reduce the rows by the factor rows so far: one GEMM
                done = factors[:step]
                rows[:count].addmm_(done.index_select(1, block).t(), done, alpha=-1)
            slot.fill_(-1)
            slot[block] = torch.arange(count)
            slot_step.fill_(step)
    return picks if residuals is None else (picks, residuals)


def _next_block(pick, energy, weights, available, block_rows) -> torch.Tensor:
    """The pick, then the available tokens that score highest now (the likely next picks)."""
    score = torch.where(available, weights * energy, -torch.inf)
    if not bool((score > 0).any()):
        score = torch.where(available, weights, -torch.inf)  # the fill-by-weight phase
    score[pick] = torch.inf
    count = min(block_rows, int(available.sum()))
    return torch.topk(score, max(count, 1)).indices
