"""Adapter for ``transformers.LlavaNextForConditionalGeneration`` (LLaVA-NeXT / LLaVA-1.6, any resolution)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from prunekit.adapters.layout import Panel, TokenLayout
from prunekit.adapters.llava import pooled_features
from prunekit.adapters.vlm import ImageFeatures, PreLLMAdapter


class LlavaNextAdapter(PreLLMAdapter):
    """LLaVA-NeXT: a base view plus an unpadded grid of crops, with a newline token per grid row.

    The model turns every image into one sequence of projected tokens: the base
    (downscaled) view's tokens, then the crops' tokens stitched into one grid,
    unpadded to the image's aspect ratio, with the learned ``image_newline``
    token after each row of that grid. The pruning point is after the projector,
    on exactly that sequence.

    Counting convention: the budget counts an image's visual tokens in total,
    base view and all crops together (one pruning decision over the whole
    sequence, so the pruner chooses how to spread the budget over base and crop
    tokens); a float budget is a fraction of that total. The row-newline tokens
    are not visual tokens: they are always kept, in place, and do not count
    towards the budget (also when every token of their row is dropped; they
    cost one token per grid row, e.g. 48 for a 672x672 LLaVA-1.6 image).

    The vision feature layer and selection strategy are the model's (or the
    call's) own; ``image_sizes`` must be passed as the processor returns it.
    """

    model_class = "LlavaNextForConditionalGeneration"
    family = "llava_next"
    vision_kwargs: ClassVar[tuple[str, ...]] = (
        "pixel_values",
        "image_sizes",
        "vision_feature_layer",
        "vision_feature_select_strategy",
    )

    def image_features(
        self, vision_inputs: dict[str, Any], call_kwargs: dict[str, Any]
    ) -> ImageFeatures:
        if vision_inputs.get("image_sizes") is None:
            raise ValueError("LLaVA-NeXT needs image_sizes (as the processor returns them)")
        output = self.model.get_image_features(**vision_inputs)
        features = pooled_features(output)
        prunable = self._visual_token_flags(vision_inputs)
        for i, (f, p) in enumerate(zip(features, prunable)):
            if f.shape[0] != p.shape[0]:
                raise ValueError(
                    f"image {i}: the model gives {f.shape[0]} features but its layout has "
                    f"{p.shape[0]} tokens; unsupported vision tower / strategy combination"
                )
        return ImageFeatures(features=features, prunable=prunable)

    def _visual_token_flags(self, vision_inputs: dict[str, Any]) -> list[torch.Tensor]:
        """Per image, ``True`` for visual tokens and ``False`` for row-newline tokens.

        Runs the model's own ``pack_image_features`` on a 1-channel dummy (0 for
        visual tokens, 1 for the newline), so the layout (grid shape, unpadding,
        newline placement) is the model's, not a re-implementation.
        """
        from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

        config = self.model.config
        vision = config.vision_config
        side = vision.image_size // vision.patch_size
        image_sizes = vision_inputs["image_sizes"]
        if isinstance(image_sizes, torch.Tensor):
            image_sizes = image_sizes.cpu()
        dummy = [
            torch.zeros(
                image_size_to_num_patches(
                    image_size=size,
                    grid_pinpoints=config.image_grid_pinpoints,
                    patch_size=vision.image_size,
                ),
                side * side,
                1,
            )
            for size in image_sizes
        ]
        strategy = vision_inputs.get("vision_feature_select_strategy")
        packed, _ = self.model.pack_image_features(
            dummy,
            image_sizes,
            vision_feature_select_strategy=strategy or config.vision_feature_select_strategy,
            image_newline=torch.ones(1),
        )
        return [p[:, 0] == 0 for p in packed]

    def token_layouts(self, inputs: Mapping[str, Any], **options: Any) -> list[TokenLayout]:
        """Per image: the base view, then the crop grid (see :func:`anyres_layout`)."""
        return anyres_token_layouts(self.model.config, inputs)


# --------------------------------------------------------------------------- token layout

#: LLaVA-1.6's ``image_grid_pinpoints`` ((height, width) canvases of 336 px crops), the
#: default of :func:`image_layout`
LLAVA_NEXT_PINPOINTS: tuple[tuple[int, int], ...] = (
    (336, 672),
    (672, 336),
    (672, 672),
    (1008, 336),
    (336, 1008),
)


def crop_grid_shape(
    image_size: Sequence[int], grid_pinpoints: Any, crop_px: int
) -> tuple[int, int]:
    """``(crop_rows, crop_cols)`` the model cuts an image of ``(height, width)`` into (its own
    ``get_anyres_image_grid_shape`` over ``config.image_grid_pinpoints``)."""
    from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape

    rows, cols = get_anyres_image_grid_shape(
        [int(image_size[0]), int(image_size[1])], [list(p) for p in grid_pinpoints], crop_px
    )
    return (int(rows), int(cols))


def anyres_layout(
    image_size: Sequence[int],
    crop_grid: Sequence[int],
    side: int,
    crop_px: int,
    *,
    max_patches: int | None = None,
    crops: bool = True,
) -> TokenLayout:
    """The layout of one any-resolution image (LLaVA-NeXT, LLaVA-OneVision).

    The sequence is the base view's ``side x side`` tokens (the image squashed to
    ``crop_px`` square, row-major), then the crops stitched into one
    ``(crop_rows * side) x (crop_cols * side)`` grid, unpadded to the image's aspect
    ratio by ``transformers``' own ``unpad_image``, row-major with one newline token
    (drawn nowhere) after each row. The crops show the processor's canvas: the image
    resized into ``crop_rows * crop_px`` x ``crop_cols * crop_px`` keeping its aspect
    ratio, centred on black padding; cells removed by unpadding are no token.

    ``max_patches`` (LLaVA-OneVision's ``anyres_max_N``): when the unpadded grid has
    more than about ``N`` crops' worth of tokens (ratio ``> 1.1``) the model shrinks
    it bilinearly; the crops are then one panel over the unpadded region with the
    shrunk grid. ``crops=False`` (OneVision, several images in a prompt): the base
    view and one newline token only.
    """
    from transformers.models.llava_next.modeling_llava_next import unpad_image

    height, width = int(image_size[0]), int(image_size[1])
    base = Panel(np.arange(side * side).reshape(side, side), resize=(crop_px, crop_px))
    if not crops:
        return TokenLayout(side * side + 1, (base,), ("base view",))
    crop_rows, crop_cols = int(crop_grid[0]), int(crop_grid[1])
    grid_h, grid_w = crop_rows * side, crop_cols * side
    coords = torch.stack(torch.meshgrid(torch.arange(grid_h), torch.arange(grid_w), indexing="ij"))
    kept = unpad_image(coords, [height, width])  # (2, h', w'): each left cell's own row, col
    ys, xs = kept[0, :, 0].numpy(), kept[1, 0, :].numpy()

    canvas_w, canvas_h = crop_cols * crop_px, crop_rows * crop_px
    scale_w, scale_h = canvas_w / width, canvas_h / height
    if scale_w < scale_h:  # the processor's get_patch_output_size
        resize = (canvas_w, min(math.ceil(height * scale_w), canvas_h))
    else:
        resize = (min(math.ceil(width * scale_h), canvas_w), canvas_h)
    view = dict(resize=resize, canvas=(canvas_w, canvas_h), group=1)
    title = f"{crop_rows} x {crop_cols} crops"

    ratio = 0.0 if max_patches is None else math.sqrt(len(ys) * len(xs) / (max_patches * side**2))
    if ratio > 1.1:  # OneVision's bilinear shrink: one panel over the unpadded region
        rows, cols = int(len(ys) // ratio), int(len(xs) // ratio)
        grid = side * side + np.arange(rows)[:, None] * (cols + 1) + np.arange(cols)[None, :]
        cell = crop_px / side
        box = (
            round(xs[0] * cell),
            round(ys[0] * cell),
            round((xs[-1] + 1) * cell),
            round((ys[-1] + 1) * cell),
        )
        panel = Panel(grid, box=box, **view)
        return TokenLayout(side * side + rows * (cols + 1), (base, panel), ("base view", title))

    tokens = np.full((crop_rows * crop_cols, side, side), -1, dtype=np.int64)
    index = side * side + np.arange(len(ys))[:, None] * (len(xs) + 1) + np.arange(len(xs))[None, :]
    y, x = np.meshgrid(ys, xs, indexing="ij")
    tokens[(y // side) * crop_cols + x // side, y % side, x % side] = index
    panels = [base]
    for i in range(crop_rows * crop_cols):
        r, c = divmod(i, crop_cols)
        box = (c * crop_px, r * crop_px, (c + 1) * crop_px, (r + 1) * crop_px)
        panels.append(Panel(tokens[i], box=box, cell=(r, c), **view))
    length = side * side + len(ys) * (len(xs) + 1)
    return TokenLayout(length, tuple(panels), ("base view", title))


def image_layout(
    image_size: Sequence[int],
    *,
    grid_pinpoints: Sequence[Sequence[int]] = LLAVA_NEXT_PINPOINTS,
    crop_px: int = 336,
    patch_px: int = 14,
    crop_grid: Sequence[int] | None = None,
    max_patches: int | None = None,
    crops: bool = True,
) -> TokenLayout:
    """The layout of one any-resolution image of ``image_size = (height, width)``, no model
    needed: its crop grid from ``grid_pinpoints`` as the model computes it
    (:func:`crop_grid_shape`), then :func:`anyres_layout`. The adapter's
    ``token_layouts`` calls this for every image of a call, with the model's config.

    Args:
        image_size: ``(height, width)`` the model gets in ``image_sizes`` (the picture
            given to the processor).
        grid_pinpoints: the model's ``config.image_grid_pinpoints`` (default LLaVA-1.6's).
        crop_px / patch_px: crop and patch side of the vision tower (336 / 14 for
            LLaVA-1.6: 24 x 24 tokens per crop).
        crop_grid: ``(crop_rows, crop_cols)`` instead of the one ``grid_pinpoints`` gives.
        max_patches / crops: as :func:`anyres_layout` (LLaVA-OneVision).

    Draw an image's kept tokens with :func:`prunekit.viz.layout_picture` (``mask``: one
    row of ``PruneResult.mask`` of the image, batch padding after it allowed); this
    replaces ``viz.llava_next_layout(image, mask, image_size=size, ...)``, which is now
    ``viz.layout_picture(image, image_layout(size, ...), mask)``:

    >>> import numpy as np, torch
    >>> from prunekit import viz
    >>> layout = image_layout((400, 600))  # 2 x 2 crops of 24 x 24 tokens, unpadded
    >>> layout.length, layout.groups
    (2144, ('base view', '2 x 2 crops'))
    >>> picture = np.zeros((400, 600, 3), dtype=np.uint8)
    >>> viz.layout_picture(picture, layout, torch.ones(layout.length), tile_size=96).size
    (308, 216)
    """
    crop_px, patch_px = int(crop_px), int(patch_px)
    if patch_px < 1 or crop_px < patch_px:
        raise ValueError(
            f"need crop_px >= patch_px >= 1, got crop_px={crop_px}, patch_px={patch_px}"
        )
    if crop_grid is None:
        crop_grid = crop_grid_shape(image_size, grid_pinpoints, crop_px)
    side = crop_px // patch_px  # the tower's patch grid (a convolution's floor)
    return anyres_layout(image_size, crop_grid, side, crop_px, max_patches=max_patches, crops=crops)


def anyres_token_layouts(
    config: Any,
    inputs: Mapping[str, Any],
    *,
    max_patches: int | None = None,
    crops: Sequence[bool] | None = None,
) -> list[TokenLayout]:
    """The layouts of a call's images, in order, from ``inputs["image_sizes"]`` and the
    model's config (``image_grid_pinpoints``, the vision tower's image and patch size)."""
    sizes = inputs.get("image_sizes")
    if sizes is None:
        raise ValueError("the token layout of an any-resolution image needs image_sizes")
    from prunekit.adapters.llava import CLS_TOWERS

    vision = config.vision_config
    strategy = inputs.get("vision_feature_select_strategy") or config.vision_feature_select_strategy
    if strategy == "full" and getattr(vision, "model_type", "") in CLS_TOWERS:
        raise ValueError(
            "token layouts of any-resolution images assume views of patch tokens only; "
            "vision_feature_select_strategy='full' keeps the tower's [CLS] token"
        )
    sizes = torch.as_tensor(sizes).reshape(-1, 2).tolist()
    crops = [True] * len(sizes) if crops is None else list(crops)
    return [
        image_layout(
            size,
            grid_pinpoints=config.image_grid_pinpoints,
            crop_px=vision.image_size,
            patch_px=vision.patch_size,
            max_patches=max_patches,
            crops=c,
        )
        for size, c in zip(sizes, crops)
    ]


def onevision_token_layouts(config: Any, inputs: Mapping[str, Any]) -> list[TokenLayout]:
    """LLaVA-OneVision's layouts: as LLaVA-NeXT's, with the model's ``anyres_max_N`` shrink of
    large crop grids (``config.vision_aspect_ratio``) and, for prompts of several images
    (``batch_num_images > 1``), each image's base view only (plus one newline token)."""
    aspect = str(config.vision_aspect_ratio)
    if not aspect.startswith("anyres_max_"):
        raise ValueError(f"vision_aspect_ratio must be 'anyres_max_N', got {aspect!r}")
    per_sample = inputs.get("batch_num_images")
    crops = None
    if per_sample is not None:  # the model's rule: only a prompt's single image is cropped
        counts = [int(n) for n in torch.as_tensor(per_sample).reshape(-1).tolist()]
        crops = [n == 1 for n in counts for _ in range(n)]
    max_patches = int(aspect.removeprefix("anyres_max_"))
    return anyres_token_layouts(config, inputs, max_patches=max_patches, crops=crops)
