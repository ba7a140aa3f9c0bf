"""Helpers the baselines share: the [CLS]-attention signal, unit rows and cosines.

* :data:`CLS_ATTENTION` / :func:`head_mean`: the vision encoder's [CLS] attention
  ``(B, H, N)`` and its mean over heads (FasterVLM, VisionZip, VisPruner).
* :func:`unit_rows`, :func:`cosine`, :func:`cosine_tie_atol`: cosine similarities whose
  ties (duplicate tokens) stay ties whatever the batch layout (VisionZip, VisPruner;
  DART uses :func:`unit_rows` with ``F.cosine_similarity``'s epsilon).

Row gathers live in the core: :func:`prunekit.core.tensor_ops.gather_rows`.
"""

from __future__ import annotations

import torch

CLS_ATTENTION = "cls_attention"

#: :func:`unit_rows` guard for VisionZip and VisPruner, ``F.normalize``'s default. Their
#: official codes divide by the bare norm (a row of norm 0 gives NaN); prunekit keeps
#: such a row 0 (orthogonal to everything) and every other row exactly unit.
ZERO_NORM_EPS = 1e-12
#: :func:`unit_rows` guard for DART: the ``eps`` of ``F.cosine_similarity``, which
#: DART's official code calls (each side over ``max(norm, 1e-8)``).
COSINE_SIMILARITY_EPS = 1e-8


def head_mean(attention: torch.Tensor) -> torch.Tensor:
    """``(B, N)`` mean over the heads of a ``(B, H, N)`` attention signal."""
    return attention.mean(dim=1)


def widest_float(device: torch.device) -> torch.dtype:
    """float64, or float32 on a device without float64 (MPS): where cosines are computed."""
    return torch.float32 if device.type == "mps" else torch.float64


def unit_rows(x: torch.Tensor, *, eps: float) -> torch.Tensor:
    """``x`` over its L2 norm along the last dimension, the norm at least ``eps``, in
    ``x``'s dtype.

    ``eps`` has no default because the methods differ: rows of norm below ``eps``
    are scaled by ``1 / eps`` rather than to unit norm, which changes their cosines.
    Pass the caller's official value, :data:`ZERO_NORM_EPS` (VisionZip, VisPruner:
    only rows of norm 0 differ, staying 0) or :data:`COSINE_SIMILARITY_EPS` (DART).
    """
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    return x / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(eps)


def cosine(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``(..., M, K)`` cosines of the :func:`unit_rows` ``a`` (..., M, C) and ``b`` (..., K, C),
    in ``dtype``, the precision of the inputs they come from (float32 or float64).

    Computed in the rows' dtype (:func:`widest_float`) and rounded to ``dtype``. A
    matrix product's rounding depends on the batch layout, so two duplicate tokens'
    similarities (exactly equal in exact arithmetic) can differ in the last bit one way
    in a batch and the other way alone, flipping a ranking. For float32 inputs, rounding
    the float64 result to float32 makes such ties exact (still ~8x finer than the
    float16 the official codes run in); float64 inputs keep float64 (rounding them to
    float32 would turn distinct similarities into ties), and their rankings treat
    cosines within :func:`cosine_tie_atol` as ties. (On MPS, which has no float64,
    everything runs in float32.)
    """
    return (a @ b.transpose(-1, -2)).to(dtype)


def cosine_tie_atol(dtype: torch.dtype, features: int) -> float:
    """The distance at which two :func:`cosine` values of ``dtype`` over ``features``
    (``C``) coordinates are ties.

    0 for float32 (the values are already rounded to float32: exact ties). For float64,
    ``C * eps`` (float64's machine epsilon, 2.2e-16; ~2.3e-13 at ``C = 1024``): a float64
    dot product of unit vectors is within ``C * eps / 2`` of the exact value whatever
    its summation order, so two computations of the same cosine (a duplicate token in
    another row or batch layout) are never further apart and always tie, while
    similarities float64 can tell apart by more than that stay ordered (float32 could
    not see differences below ~6e-8 near 1).
    """
    if dtype != torch.float64:
        return 0.0
    return features * torch.finfo(torch.float64).eps
