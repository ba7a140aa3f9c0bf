"""The pooling baseline: uniform spatial downsampling of the token grid."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from prunekit.core.inputs import PruneInputs
from prunekit.core.pruner import Picks, TokenPruner

PoolMode = Literal["avg", "stride"]
POOL_MODES = ("avg", "stride")


def infer_grid(n_tokens: int) -> tuple[int, int]:
    """``(h, w)`` for ``n_tokens`` row-major tokens: ``(s, s)`` for a perfect square,
    else the most nearly square factorisation ``h * w = n`` with ``h <= w``
    (``(1, n)`` for a prime ``n``, i.e. 1-D pooling of a strip)."""
    h = math.isqrt(n_tokens)
    while n_tokens % h:
        h -= 1
    return h, n_tokens // h


def band_count(h: int, w: int, k: int) -> int:
    """Number of row bands of the layout of ``k`` cells on an ``h x w`` grid.

    The ``r`` whose square layout ``r x (r w / h)`` has the area closest to ``k``
    (``argmin_r |r^2 w - k h|``, ties to the smaller ``r``), clamped to
    ``[ceil(k / w), min(h, k)]`` so that every band has between 1 and ``w`` cells.
    """
    root = math.isqrt(k * h // w)
    r = min((c for c in (root, root + 1) if c >= 1), key=lambda c: (abs(c * c * w - k * h), c))
    return max(-(-k // w), min(r, h, k))


def _window(i: int, cells: int, size: int) -> tuple[int, int]:
    """Adaptive-pooling window ``[floor(i size / cells), ceil((i + 1) size / cells))``."""
    return (i * size) // cells, -(-(i + 1) * size // cells)


@functools.lru_cache(maxsize=256)
def pooling_layout(h: int, w: int, k: int) -> tuple[tuple[int, ...], tuple[tuple[int, ...], ...]]:
    """The ``k`` cells of an ``h x w`` row-major grid: (center index, member indices) per cell.

    ``r = band_count(h, w, k)`` bands of rows, ``k`` cells spread over them as
    evenly as possible (band ``i`` gets ``floor((i+1) k / r) - floor(i k / r)``),
    windows following adaptive average pooling (band ``i`` covers rows
    ``[floor(i h / r), ceil((i+1) h / r))``, cell ``j`` of ``c`` covers columns
    ``[floor(j w / c), ceil((j+1) w / c))``). The center token of a cell is row
    ``floor((i + 1/2) h / r)``, column ``floor((j + 1/2) w / c)``: distinct cells have
    distinct centers. When ``r`` divides ``h`` and each band has the same number
    ``c`` of cells dividing ``w``, the windows are exactly ``avg_pool2d`` with
    kernel = stride = ``(h / r, w / c)``.
    """
    r = band_count(h, w, k)
    centers: list[int] = []
    members: list[tuple[int, ...]] = []
    for i in range(r):
        cells = (i + 1) * k // r - i * k // r
        row0, row1 = _window(i, r, h)
        row_c = (2 * i + 1) * h // (2 * r)
        for j in range(cells):
            col0, col1 = _window(j, cells, w)
            col_c = (2 * j + 1) * w // (2 * cells)
            centers.append(row_c * w + col_c)
            members.append(tuple(y * w + x for y in range(row0, row1) for x in range(col0, col1)))
    return tuple(centers), tuple(members)


@functools.lru_cache(maxsize=64)
def _gather_plan(h: int, w: int, k: int) -> tuple[torch.Tensor, ...]:
    """The window means of :func:`pooling_layout` as two weighted gathers (windows are rectangles).

    ``band_index``, ``band_weight`` ``(r * w, Lr)``: the grid tokens ``y * w + x`` of
    the rows of band ``i``'s window, averaged into the band mean ``i * w + x``;
    ``cell_index``, ``cell_weight`` ``(k, Lc)``: the band means averaged into each
    cell; ``centers`` ``(k,)``. Indices are padded with 0, weights with 0.
    """
    r = band_count(h, w, k)
    rows = [_window(i, r, h) for i in range(r)]
    band_index = torch.zeros(r * w, max(b - a for a, b in rows), dtype=torch.int64)
    band_weight = torch.zeros(band_index.shape, dtype=torch.float64)
    columns = torch.arange(w)
    for i, (row0, row1) in enumerate(rows):
        for j, y in enumerate(range(row0, row1)):
            band_index[i * w : (i + 1) * w, j] = y * w + columns
        band_weight[i * w : (i + 1) * w, : row1 - row0] = 1.0 / (row1 - row0)
    cells = []
    for i in range(r):
        count = (i + 1) * k // r - i * k // r
        for j in range(count):
            col0, col1 = _window(j, count, w)
            cells.append(range(i * w + col0, i * w + col1))
    cell_index = torch.zeros(k, max(len(c) for c in cells), dtype=torch.int64)
    cell_weight = torch.zeros(cell_index.shape, dtype=torch.float64)
    for row, members in enumerate(cells):
        cell_index[row, : len(members)] = torch.tensor(members)
        cell_weight[row, : len(members)] = 1.0 / len(members)
    centers = torch.tensor(pooling_layout(h, w, k)[0], dtype=torch.int64)
    return centers, band_index, band_weight, cell_index, cell_weight


def _pad_stack(tables: list[torch.Tensor]) -> torch.Tensor:
    """Stack tensors of equal rank, zero-padded to their largest size along every dimension."""
    shape = [max(t.shape[i] for t in tables) for i in range(tables[0].dim())]
    out = tables[0].new_zeros(len(tables), *shape)
    for g, table in enumerate(tables):
        out[(g, *(slice(0, size) for size in table.shape))] = table
    return out


def _weighted_rows(rows: torch.Tensor, index: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``(B, R, d)``: ``out[b, i] = sum_j weight[b, i, j] * rows[b, index[b, i, j]]``, batched.

    ``rows`` ``(B, M, d)``; ``index``, ``weight`` ``(B, R, L)``.
    """
    batch, m, dim = rows.shape
    flat = (index + torch.arange(batch, device=index.device).view(-1, 1, 1) * m).flatten()
    gathered = rows.reshape(batch * m, dim).index_select(0, flat).view(*index.shape, dim)
    return torch.matmul(weight.unsqueeze(-2), gathered).squeeze(-2)


@dataclass
class PoolingPruner(TokenPruner):
    """Uniform spatial downsampling of the token grid (the "pooling" baseline).

    The "pooling" baseline of visual-token-reduction papers: LLaVA-style 2D average
    pooling of the token grid, e.g. the ``24 x 24`` CLIP grid of LLaVA-1.5 with
    ``2 x 2`` windows giving 144 tokens or ``3 x 3`` giving 64, as LLaVA-NeXT's
    ``get_2dPool`` does for video frames (``mm_spatial_pool_mode="average"``:
    ``F.avg_pool2d(., mm_spatial_pool_stride)``). There is no official
    repository for the baseline itself; prunekit's choices for budgets that are
    not a regular grid are below.

    Layout (see :func:`pooling_layout`): the sample's valid tokens, in order, are
    taken as a row-major ``h x w`` grid (``grid``, or :func:`infer_grid` of the
    sample's own valid-token count). ``K`` cells are laid out as ``r`` row bands
    (:func:`band_count`: the square-ish layout closest to ``K``) with ``K``
    cells spread as evenly as possible over the bands; windows follow adaptive
    average pooling. So every budget keeps exactly ``K`` tokens that cover the
    whole grid: ``K = 144`` on ``24 x 24`` is ``12 x 12`` windows of ``2 x 2``
    (exactly ``avg_pool2d(., 2)``), ``K = 64`` is ``8 x 8`` windows of ``3 x 3``,
    ``K = 128`` is 11 bands of 12 or 11 cells (about ``2.2 x 2.1`` windows),
    rather than a smaller regular grid padded with leftovers.

    Modes:

    * ``"avg"`` (default, what the pooling baselines do): each kept token's value
      is the mean of its window (returned as ``PruneResult.values``; apply with
      ``result.kept_tokens(tokens)``); its index, used for position ids, is the
      window's center token.
    * ``"stride"``: keep the center token of each window unchanged (evenly
      spaced selection; ``values`` is ``None``).

    Notes: windows of non-divisible sizes overlap by at most one row / column,
    as in ``adaptive_avg_pool2d``. The tokens must be one image's grid in
    row-major order (no [CLS], no LLaVA-NeXT newline tokens); for multi-crop
    inputs prune each crop as its own sample. ``scores`` are ``None``.

    Args:
        mode: ``"avg"`` or ``"stride"``.
        grid: ``(h, w)`` of every sample (each must have ``h * w`` valid tokens);
            ``None`` infers it per sample.
    """

    mode: PoolMode = "avg"
    grid: Sequence[int] | None = None

    name = "pooling"

    def __post_init__(self) -> None:
        super().__post_init__()  # types and mode's choices, from the annotations
        if self.grid is not None:
            grid = tuple(self.grid)
            if len(grid) != 2 or not all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in grid
            ):
                raise ValueError(f"grid must be a pair of positive ints (h, w), got {self.grid!r}")
            self.grid = grid

    def _grid_of(self, n_valid: int) -> tuple[int, int]:
        if self.grid is None:
            return infer_grid(n_valid)
        h, w = self.grid
        if h * w != n_valid:
            raise ValueError(
                f"grid={self.grid} needs {h * w} valid tokens per sample, got a sample with {n_valid}"
            )
        return h, w

    def select(self, inputs: PruneInputs, num_keep: int) -> Picks:
        batch, _, dim = inputs.tokens.shape
        device, dtype = inputs.tokens.device, inputs.tokens.dtype
        counts = inputs.keep_counts
        if counts is None:
            counts = inputs.valid_counts.clamp(max=num_keep)
        # The layout is integer arithmetic on a sample's (valid tokens, kept) pair: one host
        # read of the counts per call, one (cached) table per distinct pair, gathered per
        # sample; every tensor operation is batched over the samples.
        pairs = torch.stack([inputs.valid_counts, counts], dim=1).cpu()
        layouts, group = torch.unique(pairs, dim=0, return_inverse=True)
        plans = [_gather_plan(*self._grid_of(n_valid), k) for n_valid, k in layouts.tolist()]
        centers, band_index, band_weight, cell_index, cell_weight = (
            _pad_stack([plan[i] for plan in plans])[group].to(device) for i in range(5)
        )
        # positions of each sample's valid tokens, ascending (its grid in row-major order), first
        padded = (~inputs.token_mask).to(torch.uint8)
        positions = torch.sort(padded, dim=1, stable=True).indices
        order = torch.zeros(batch, num_keep, dtype=torch.int64, device=device)
        order[:, : centers.shape[1]] = positions.gather(1, centers)
        if self.mode == "stride":
            return Picks(order=order)
        # band means read the grid's tokens at their original positions
        grid_index = positions.gather(1, band_index.flatten(1)).view_as(band_index)
        bands = _weighted_rows(inputs.tokens, grid_index, band_weight.to(dtype))  # (B, r w, d)
        cells = _weighted_rows(bands, cell_index, cell_weight.to(dtype))  # (B, k, d)
        values = inputs.tokens.new_zeros(batch, num_keep, dim)
        values[:, : cells.shape[1]] = cells
        return Picks(order=order, values=values)


def register(registry) -> None:
    registry.add_pruner(PoolingPruner)
