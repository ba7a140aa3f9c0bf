"""Small tensor helpers shared by the core, the adapters and the pruners."""

from __future__ import annotations

import torch


def gather_rows(
    values: torch.Tensor, index: torch.Tensor, fill_value: float | None = None
) -> torch.Tensor:
    """The rows of ``values`` ``(B, L, ...)`` at ``index`` ``(B, K)`` along dim 1: ``(B, K, ...)``.

    Row ``k`` of sample ``b`` is ``values[b, index[b, k]]``, with every trailing
    dimension carried along. Without ``fill_value`` every index must lie in
    ``[0, L)``. With ``fill_value``, negative indices (:data:`~prunekit.core.result.PAD_INDEX`,
    the padding of ragged results) are padding slots: their rows hold ``fill_value``.
    ``index`` must be on the device of ``values``.
    """
    if values.dim() < 2:
        raise ValueError(f"values must have shape (B, L, ...), got {tuple(values.shape)}")
    if index.dim() != 2 or index.shape[0] != values.shape[0]:
        raise ValueError(
            f"index must have shape (B, K) with B = {values.shape[0]} (the batch of values), "
            f"got {tuple(index.shape)}"
        )
    if index.dtype.is_floating_point or index.dtype.is_complex or index.dtype == torch.bool:
        raise TypeError(f"index must be an integer tensor, got {index.dtype}")
    trailing = values.shape[2:]
    shape = (*index.shape, *([1] * len(trailing)))  # index broadcast over the trailing dims
    padding = index < 0 if fill_value is not None else None
    if padding is not None:
        index = index.clamp_min(0)
    rows = values.gather(1, index.long().view(shape).expand(*index.shape, *trailing))
    if padding is None:
        return rows
    return rows.masked_fill(padding.view(shape), fill_value)
