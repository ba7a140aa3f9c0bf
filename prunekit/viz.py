"""Pictures of what a pruner kept: kept patches over the image, relevance heatmaps."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def _as_image(image: Image.Image | np.ndarray) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"image must be HxWx3, got shape {array.shape}")
    return Image.fromarray(array.astype(np.uint8))


def _grid_mask(values: torch.Tensor, grid: tuple[int, int]) -> np.ndarray:
    rows, cols = grid
    flat = values.detach().flatten().float().cpu().numpy()
    if flat.size != rows * cols:
        raise ValueError(f"{flat.size} values do not fill a {rows} x {cols} grid")
    return flat.reshape(rows, cols)


def kept_overlay(
    image: Image.Image | np.ndarray,
    kept: torch.Tensor,
    grid: tuple[int, int],
    *,
    size: int | None = None,
    dim: float = 0.25,
    outline: tuple[int, int, int] | None = (255, 200, 0),
) -> Image.Image:
    """The image with dropped patches darkened to ``dim`` brightness.

    Args:
        image: the picture (PIL or HxWx3 uint8).
        kept: ``(rows * cols,)`` bool, row-major patch order (one sample of
            :attr:`PruneResult.mask`).
        grid: ``(rows, cols)`` of the patch grid.
        size: output side in pixels (default: the image's own size).
        outline: colour of kept-patch borders, or ``None``.
    """
    picture = _as_image(image)
    if size is not None:
        picture = picture.resize((size, size), Image.BICUBIC)
    keep = _grid_mask(kept, grid) > 0.5
    rows, cols = grid
    width, height = picture.size
    row_of = np.arange(height) * rows // height  # patch row of every pixel row
    col_of = np.arange(width) * cols // width
    factor = np.where(keep[row_of][:, col_of], 1.0, dim)[..., None]
    out = np.round(np.asarray(picture, dtype=np.float32) * factor).astype(np.uint8)
    if outline is not None:
        for r, c in zip(*np.nonzero(keep)):
            y0, y1 = np.searchsorted(row_of, r), np.searchsorted(row_of, r, side="right") - 1
            x0, x1 = np.searchsorted(col_of, c), np.searchsorted(col_of, c, side="right") - 1
            out[y0, x0 : x1 + 1] = outline
            out[y1, x0 : x1 + 1] = outline
            out[y0 : y1 + 1, x0] = outline
            out[y0 : y1 + 1, x1] = outline
    return Image.fromarray(out)
