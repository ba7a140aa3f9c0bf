"""Adapter for ``transformers.InternVLForConditionalGeneration`` (InternVL 2.5 / 3, tiles and pixel shuffle)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from prunekit.adapters.layout import Panel, TokenLayout
from prunekit.adapters.llava import pooled_features
from prunekit.adapters.vlm import ImageFeatures, PreLLMAdapter
from prunekit.core.errors import check_choice

#: what an InternVL budget counts: a whole image (all its tiles) or each tile
BudgetScope = Literal["image", "tile"]


def placeholder_runs(input_ids: torch.Tensor, token_id: int) -> list[int]:
    """Lengths of the maximal runs of ``token_id`` in ``input_ids``, row by row, left to right
    (the order in which the model scatters features into the placeholders)."""
    is_token = (input_ids == token_id).to(torch.int8)
    edges = torch.nn.functional.pad(is_token, (1, 1)).diff(dim=1)
    starts = (edges == 1).nonzero()[:, 1]  # row-major, like the ends
    ends = (edges == -1).nonzero()[:, 1]
    return (ends - starts).tolist()


class InternVLAdapter(PreLLMAdapter):
    """InternVL (``InternVLForConditionalGeneration``): dynamic tiles, pixel shuffle, MLP projector.

    The processor cuts an image into tiles (plus a thumbnail tile when there
    are several), ``k`` tiles in all; the vision tower encodes every tile, pixel shuffle folds each
    2x2 patch neighbourhood into one token and the projector maps it to the
    LLM: ``T`` tokens per tile (``image_seq_length``, 256 for InternVL3 at
    448 px). The prompt holds each image as one contiguous run of ``k * T``
    placeholders (between ``<img>`` and ``</img>``); ``pixel_values`` is
    ``(total_tiles, 3, H, W)`` without per-image grouping, so the adapter reads
    the tiles of each image off the placeholder runs: ``run length / T``.
    The pruning point is after the projector.

    Counting convention (``budget_scope``):

    * ``"image"`` (default): one pruning sample per image, made of all its
      tiles' tokens (thumbnail included) in tile order; the budget applies to
      the image as a whole, so an image of ``k`` tiles keeps
      ``num_kept(k * T, budget)`` tokens in total, spread over its tiles as the
      pruner chooses. ``handle.results`` has one row per image.
    * ``"tile"``: every tile is its own sample with the budget applied per tile,
      so each tile keeps ``num_kept(T, budget)`` tokens and an image of ``k``
      tiles ``k * num_kept(T, budget)``. ``handle.results`` has one row per tile.

    Rows of ``handle.results`` follow placeholder order (prompt by prompt, left
    to right); kept indices index the tokens of the row's image (tile-major:
    token ``j`` of tile ``t`` is index ``t * T + j``) or of its tile.

    A video frame is its own ``<img>...</img>`` run of one tile, hence its own
    image. Images whose placeholder runs touch (no token in between, which the
    processor never produces) are indistinguishable and count as one image.

    Options: ``budget_scope`` (``"image"`` or ``"tile"``), plus those of
    :class:`PreLLMAdapter` (``tokenizer``, ``positions``, ...).
    """

    model_class = "InternVLForConditionalGeneration"
    family = "internvl"
    vision_kwargs: ClassVar[tuple[str, ...]] = (
        "pixel_values",
        "vision_feature_layer",
        "vision_feature_select_strategy",
        "image_sizes",  # in forward's signature; the vision side never uses it
    )

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        budget_scope: BudgetScope = "image",
        **options: Any,
    ) -> None:
        super().__init__(model, **options)
        self.budget_scope = check_choice("budget_scope", budget_scope, ("image", "tile"))
        if self.llm_pruning is not None and self.budget_scope != "image":
            raise ValueError(
                "budget_scope='tile' applies to pre-LLM pruning; with llm_layer the budget "
                "counts all image tokens of a prompt"
            )

    def image_features(
        self, vision_inputs: dict[str, Any], call_kwargs: dict[str, Any]
    ) -> ImageFeatures:
        # exactly the model's own call (forward passes only these three to the vision side)
        output = self.model.get_image_features(
            pixel_values=vision_inputs["pixel_values"],
            vision_feature_layer=vision_inputs.get("vision_feature_layer"),
            vision_feature_select_strategy=vision_inputs.get("vision_feature_select_strategy"),
            return_dict=True,
        )
        tiles = pooled_features(output)  # one (T, d) per tile, in placeholder order
        if self.budget_scope == "tile":
            return ImageFeatures(features=tiles)
        per_tile = tiles[0].shape[0]
        runs = placeholder_runs(call_kwargs["input_ids"], self.image_token_id)
        if sum(runs) != per_tile * len(tiles):
            return ImageFeatures(features=tiles)  # the caller reports the mismatch
        images, start = [], 0
        for run in runs:
            if run % per_tile:
                raise ValueError(
                    f"a run of {run} image tokens is not a whole number of tiles of "
                    f"{per_tile} tokens; the processor and the model disagree"
                )
            images.append(torch.cat(tiles[start : start + run // per_tile]))
            start += run // per_tile
        return ImageFeatures(features=images)

    def token_layouts(
        self,
        inputs: Mapping[str, Any],
        *,
        image_sizes: Sequence[Sequence[int]] | None = None,
        min_tiles: int = 1,
        max_tiles: int = 12,
        **options: Any,
    ) -> list[TokenLayout]:
        """Per image (placeholder order): its tile grid, then the thumbnail (see
        :func:`image_layout`); with ``budget_scope="tile"`` one result row per tile.

        The inputs give each image's number of tiles (its placeholder run), not their
        arrangement: ``image_sizes`` (``(height, width)`` of each picture given to the
        processor) and the processor's ``min_tiles`` / ``max_tiles`` (``min_patches`` /
        ``max_patches``) give the grid; without them only single-tile images work.
        """
        vision = self.model.config.vision_config
        tile_px = int(_pair(vision.image_size)[0])
        side = int(tile_px // _pair(vision.patch_size)[0] * self.model.config.downsample_ratio)
        per_tile = side * side
        runs = placeholder_runs(torch.as_tensor(inputs["input_ids"]), self.image_token_id)
        if image_sizes is not None and len(image_sizes) != len(runs):
            raise ValueError(f"image_sizes has {len(image_sizes)} sizes for {len(runs)} images")
        layouts = []
        for i, run in enumerate(runs):
            if run % per_tile:
                raise ValueError(f"a run of {run} image tokens is not whole tiles of {per_tile}")
            tiles = run // per_tile
            if image_sizes is None and tiles > 1:
                raise ValueError(
                    f"image {i} has {tiles} tiles, whose arrangement its inputs do not give; pass "
                    "image_sizes=[(height, width), ...] of the pictures given to the processor"
                )
            layout = image_layout(
                None if image_sizes is None else image_sizes[i],
                grid=(1, 1) if image_sizes is None else None,
                tokens_per_tile=per_tile,
                min_tiles=min_tiles,
                max_tiles=max_tiles,
                tile_px=tile_px,
                rows_per_tile=self.budget_scope == "tile",
            )
            if layout.length != run:
                raise ValueError(
                    f"image {i}: its size gives {layout.length // per_tile} tiles "
                    f"({' + '.join(layout.groups)}), which does not match its {tiles} tiles "
                    "(check image_sizes, min_tiles and max_tiles against the processor's)"
                )
            layouts.append(layout)
        return layouts


def _pair(value: Any) -> tuple[int, int]:
    return tuple(value) if isinstance(value, (list, tuple)) else (value, value)


def tile_grid(
    image_size: Sequence[int], *, min_tiles: int = 1, max_tiles: int = 12, tile_px: int = 448
) -> tuple[int, int]:
    """``(rows, cols)`` of the tiles InternVL's processor cuts an image of ``(height, width)``
    into (``transformers``' ``get_optimal_tiled_canvas``; the thumbnail is extra)."""
    try:
        from transformers.models.got_ocr2.image_processing_got_ocr2 import (
            get_optimal_tiled_canvas,
        )
    except ImportError:  # e.g. no torchvision: transformers 5's PIL image processor has it too
        try:
            from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import (
                get_optimal_tiled_canvas,
            )
        except ImportError as exc:  # older transformers: no InternVL either
            raise ImportError(
                "computing InternVL's tile grid needs transformers with GOT-OCR2 / InternVL "
                "support; pass grid=(rows, cols) to image_layout instead"
            ) from exc
    cols, rows = get_optimal_tiled_canvas(
        (int(image_size[0]), int(image_size[1])), (tile_px, tile_px), min_tiles, max_tiles
    )
    return (int(rows), int(cols))


def image_layout(
    image_size: Sequence[int] | None,
    *,
    grid: Sequence[int] | None = None,
    tokens_per_tile: int = 256,
    min_tiles: int = 1,
    max_tiles: int = 12,
    tile_px: int = 448,
    rows_per_tile: bool = False,
) -> TokenLayout:
    """The layout of one InternVL image of ``image_size = (height, width)``, no model needed:
    its tile grid as the processor computes it (:func:`tile_grid`), then
    :func:`tiled_layout`. The adapter's ``token_layouts`` calls this for every image of a
    call, with the model's config.

    Args:
        image_size: ``(height, width)`` of the picture given to the processor (``None``
            only with ``grid``).
        grid: ``(rows, cols)`` of the tiles instead of the one the size gives.
        tokens_per_tile: ``T``, tokens per tile after pixel shuffle (``image_seq_length``,
            256 for InternVL3 at 448 px).
        min_tiles / max_tiles: the processor's ``min_patches`` / ``max_patches``.
        tile_px: the tile side in pixels (the vision tower's ``image_size``).
        rows_per_tile: as :func:`tiled_layout` (``budget_scope="tile"``).

    Draw an image's kept tokens with :func:`prunekit.viz.layout_picture` (``mask``: the
    image's row of ``PruneResult.mask``, or its ``k`` rows with ``budget_scope="tile"``
    as a ``(k, T)`` tensor); this replaces ``viz.internvl_layout(image, mask, ...)``,
    which is now ``viz.layout_picture(image, image_layout((height, width), ...), mask)``:

    >>> import numpy as np, torch
    >>> from prunekit import viz
    >>> layout = image_layout((400, 600))  # 2 x 3 tiles and a thumbnail, 256 tokens each
    >>> layout.length, layout.groups
    (1792, ('2 x 3 tiles', 'thumbnail'))
    >>> picture = np.zeros((400, 600, 3), dtype=np.uint8)
    >>> viz.layout_picture(picture, layout, torch.ones(7, 256), tile_size=64).size
    (280, 152)
    """
    if grid is None:
        if image_size is None:
            raise ValueError("image_layout needs image_size or grid")
        grid = tile_grid(image_size, min_tiles=min_tiles, max_tiles=max_tiles, tile_px=tile_px)
    return tiled_layout(grid, tokens_per_tile, tile_px, rows_per_tile=rows_per_tile)


def tiled_layout(
    grid: Sequence[int], tokens_per_tile: int, tile_px: int = 448, *, rows_per_tile: bool = False
) -> TokenLayout:
    """The layout of one InternVL image of ``grid = (rows, cols)`` tiles.

    The tiles are the picture resized to ``cols * tile_px`` x ``rows * tile_px`` (aspect
    ratio not kept), row-major; with several tiles a thumbnail (the whole picture
    squashed into one tile) follows. The sequence is tile-major: token ``j`` of tile
    ``t`` is index ``t * T + j`` (``T = tokens_per_tile``), row-major on the
    ``sqrt(T) x sqrt(T)`` grid left by pixel shuffle. ``rows_per_tile``: each tile is
    its own row of ``handle.results`` (``budget_scope="tile"``).
    """
    side = math.isqrt(tokens_per_tile)
    if side * side != tokens_per_tile:
        raise ValueError(f"tokens_per_tile must be a square number, got {tokens_per_tile}")
    rows, cols = int(grid[0]), int(grid[1])
    if rows < 1 or cols < 1:
        raise ValueError(f"a tile grid needs rows, cols >= 1, got {(rows, cols)}")
    n_grid = rows * cols
    n_tiles = n_grid + (1 if n_grid > 1 else 0)
    cell = np.arange(tokens_per_tile).reshape(side, side)
    panels = [
        Panel(
            cell + i * tokens_per_tile,
            resize=(cols * tile_px, rows * tile_px),
            box=(
                (i % cols) * tile_px,
                (i // cols) * tile_px,
                (i % cols + 1) * tile_px,
                (i // cols + 1) * tile_px,
            ),
            cell=divmod(i, cols),
        )
        for i in range(n_grid)
    ]
    groups = [f"{rows} x {cols} tile{'s' if n_grid > 1 else ''}"]
    if n_tiles > n_grid:
        panels.append(Panel(cell + n_grid * tokens_per_tile, resize=(tile_px, tile_px), group=1))
        groups.append("thumbnail")
    return TokenLayout(
        n_tiles * tokens_per_tile,
        tuple(panels),
        tuple(groups),
        rows=n_tiles if rows_per_tile else 1,
    )
