"""Where each visual token of an image or video sits: the data model behind kept-token pictures.

An adapter knows how its family turns a picture into tokens (crops, tiles, a
resized grid, frames); :mod:`prunekit.viz` only draws. The two meet in a
:class:`TokenLayout`, one per image or video of a model call, in the order of
the rows of ``handle.results`` (placeholder order):

* the item's token *sequence* is what the pruner saw for it: the valid part of its
  ``handle.results`` row, or of its :attr:`TokenLayout.rows` consecutive rows
  concatenated (a budget per tile or per frame splits an item over several rows);
* each :class:`Panel` is a ``(rows, cols)`` grid of indices into that sequence
  (``-1``: a grid cell that is no token, e.g. padding the model removed) drawn over
  one region of one picture, as the model sees it (resized, centred on a black
  canvas, cropped);
* panels form titled *groups* (a base view, a crop grid, a thumbnail, a video frame)
  drawn side by side, each panel at its ``cell`` of its group's grid.

Tokens of the sequence that no panel shows (LLaVA-NeXT's row-newline tokens, a
[CLS] token) are simply absent from every grid. :func:`merged_grid_layout` and
:func:`mrope_token_layouts` are the layouts of the Qwen-VL families (merged patch
grids, video frames as a strip); the other families build theirs in their adapter
modules (``token_layouts`` on :class:`~prunekit.adapters.base.Adapter`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

Size = tuple[int, int]
Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class Panel:
    """A grid of tokens over one region of one picture.

    Attributes:
        tokens: ``(rows, cols)`` int64; cell ``(r, c)`` holds the index of its token in
            the item's sequence, ``-1`` where the cell is no token.
        picture: which picture of the item the panel shows (0 for an image; for a video
            the index of the frame in the frames given to the processor).
        resize: ``(width, height)`` the picture is resized to, as the model's processor
            does (``None``: kept as is).
        canvas: ``(width, height)`` of a black canvas the resized picture is centred on
            (padding, as LLaVA-NeXT's processor pads); ``None``: no padding.
        box: ``(left, top, right, bottom)`` of the canvas region the grid covers
            (``None``: the whole canvas).
        group: index into :attr:`TokenLayout.groups`.
        cell: ``(row, col)`` of the panel in its group's grid of panels.
    """

    tokens: np.ndarray
    picture: int = 0
    resize: Size | None = None
    canvas: Size | None = None
    box: Box | None = None
    group: int = 0
    cell: tuple[int, int] = (0, 0)

    def __post_init__(self) -> None:
        tokens = np.array(self.tokens, dtype=np.int64)
        if tokens.ndim != 2 or tokens.size == 0:
            raise ValueError(f"Panel.tokens must be a non-empty 2-D grid, got shape {tokens.shape}")
        tokens.setflags(write=False)
        object.__setattr__(self, "tokens", tokens)

    @property
    def grid(self) -> Size:
        """``(rows, cols)`` of the token grid."""
        return (int(self.tokens.shape[0]), int(self.tokens.shape[1]))


@dataclass(frozen=True)
class TokenLayout:
    """Where the tokens of one image or video sit (see the module docstring).

    Attributes:
        length: number of tokens in the item's sequence (also those drawn nowhere).
        panels: the token grids, each over a region of a picture.
        groups: titles of the panel groups (e.g. ``"base view"``, ``"frames 0-1"``);
            pictures name each group with its kept count, ``"<title>: k/n kept"``.
        rows: how many consecutive rows of ``handle.results`` the sequence spans
            (1, or one per tile / frame with a budget per tile / frame).
    """

    length: int
    panels: tuple[Panel, ...]
    groups: tuple[str, ...] = ("image",)
    rows: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "panels", tuple(self.panels))
        object.__setattr__(self, "groups", tuple(self.groups))
        if self.length < 1 or self.rows < 1:
            raise ValueError(f"a layout needs length >= 1 and rows >= 1, got {self}")
        if not self.panels:
            raise ValueError("a layout needs at least one panel")
        tokens = np.concatenate([p.tokens.ravel() for p in self.panels])
        if (tokens < -1).any() or (tokens >= self.length).any():
            raise ValueError(f"panel tokens must be -1 or in [0, {self.length})")
        drawn = tokens[tokens >= 0]
        if np.unique(drawn).size != drawn.size:
            raise ValueError("a token sits in two grid cells")
        for panel in self.panels:
            if not 0 <= panel.group < len(self.groups):
                raise ValueError(
                    f"panel group {panel.group} is not one of {len(self.groups)} groups"
                )

    @property
    def num_pictures(self) -> int:
        """How many pictures the panels draw on (frames of a video, else 1)."""
        return 1 + max(p.picture for p in self.panels)

    def cells(self) -> np.ndarray:
        """``(length, 3)`` int64 ``(panel, row, col)`` of every token; ``(-1, -1, -1)``
        for tokens drawn nowhere."""
        out = np.full((self.length, 3), -1, dtype=np.int64)
        for i, panel in enumerate(self.panels):
            r, c = np.nonzero(panel.tokens >= 0)
            out[panel.tokens[r, c]] = np.stack([np.full_like(r, i), r, c], 1)
        return out


def join_layouts(layouts: Sequence[TokenLayout], *, rows: int | None = None) -> TokenLayout:
    """Several items (e.g. the images of one prompt) as one layout: their sequences
    concatenated, their pictures numbered on (item 0's pictures first), groups in order.
    ``rows``: the result rows the joined sequence spans (default: the items' rows summed;
    1 for in-LLM pruning, whose row holds all visual tokens of a prompt)."""
    if not layouts:
        raise ValueError("join_layouts needs at least one layout")
    panels, groups, offset, first_picture = [], [], 0, 0
    for layout in layouts:
        for p in layout.panels:
            tokens = np.where(p.tokens >= 0, p.tokens + offset, -1)
            panels.append(
                Panel(
                    tokens,
                    picture=p.picture + first_picture,
                    resize=p.resize,
                    canvas=p.canvas,
                    box=p.box,
                    group=p.group + len(groups),
                    cell=p.cell,
                )
            )
        groups.extend(layout.groups)
        offset += layout.length
        first_picture += layout.num_pictures
    if rows is None:
        rows = sum(x.rows for x in layouts)
    return TokenLayout(offset, tuple(panels), tuple(groups), rows=rows)


def per_prompt(layouts: Sequence[TokenLayout], counts: Sequence[int]) -> list[TokenLayout]:
    """In-LLM pruning's layouts: one row per prompt, holding all its visual tokens; the
    items (placeholder order) joined prompt by prompt, ``counts[b]`` items for prompt ``b``."""
    if sum(counts) != len(layouts):
        raise ValueError(
            f"the prompts hold {sum(counts)} images / videos, the inputs {len(layouts)}"
        )
    out, start = [], 0
    for count in counts:
        if count:
            out.append(join_layouts(layouts[start : start + count], rows=1))
        start += count
    return out


def item_sequences(
    layouts: Sequence[TokenLayout], values: Any, valid_counts: Any
) -> list[np.ndarray]:
    """Each item's per-token values (e.g. a result's ``mask`` or ``scores``) from the rows of
    one :class:`~prunekit.core.result.PruneResult`: item by item, its :attr:`TokenLayout.rows`
    consecutive rows, each cut to its valid count, concatenated."""
    array = (
        values.detach().float().cpu().numpy()
        if isinstance(values, torch.Tensor)
        else np.asarray(values, dtype=np.float64)
    )
    counts = [
        int(c)
        for c in (valid_counts.tolist() if isinstance(valid_counts, torch.Tensor) else valid_counts)
    ]
    needed = sum(layout.rows for layout in layouts)
    if array.ndim != 2 or array.shape[0] != needed or len(counts) != needed:
        raise ValueError(
            f"the layouts span {needed} result rows; got values of shape {array.shape} and "
            f"{len(counts)} valid counts (a layout per image, from the same call's inputs?)"
        )
    out, row = [], 0
    for layout in layouts:
        parts = [array[r, : counts[r]] for r in range(row, row + layout.rows)]
        row += layout.rows
        sequence = np.concatenate(parts)
        if sequence.size != layout.length:
            raise ValueError(
                f"an item's rows hold {sequence.size} tokens but its layout has {layout.length}"
            )
        out.append(sequence)
    return out


def patch_grid_layout(grid: Sequence[int], *, prefix: int = 0) -> TokenLayout:
    """One ``(rows, cols)`` patch grid over the whole picture (a ViT, LLaVA-1.5), row-major,
    after ``prefix`` tokens ([CLS], registers) that are in the sequence but drawn nowhere."""
    rows, cols = int(grid[0]), int(grid[1])
    if rows < 1 or cols < 1 or prefix < 0:
        raise ValueError(
            f"a patch grid needs rows, cols >= 1 and prefix >= 0, got {grid}, {prefix}"
        )
    tokens = prefix + np.arange(rows * cols).reshape(rows, cols)
    return TokenLayout(prefix + rows * cols, (Panel(tokens),), ("image",))


# --------------------------------------------------------------------------- Qwen-VL


def merged_grid_layout(
    grid_thw: Sequence[int],
    merge_size: int = 2,
    *,
    patch_size: int = 14,
    temporal_patch_size: int = 2,
    video: bool = False,
    rows_per_frame: bool = False,
) -> TokenLayout:
    """The layout of one Qwen-VL image or video of patch grid ``(t, h, w)``.

    The vision tower sees the picture resized to ``w * patch_size`` x ``h * patch_size``
    pixels (the processor's ``smart_resize``); the merger folds each ``merge_size`` x
    ``merge_size`` patch block into one token, row-major over the merged grid, frame
    after frame: token ``f * H * W + r * W + c`` (``H = h / merge_size``,
    ``W = w / merge_size``) covers merged cell ``(r, c)`` of temporal slice ``f``.

    An image (``t = 1``) is one panel over the resized picture. A video is ``t``
    panels, one per temporal slice, side by side (a strip); slice ``f`` stands for the
    processor's frames ``f * temporal_patch_size`` to ``(f + 1) * temporal_patch_size - 1``
    and is drawn over the first of them. ``rows_per_frame``: each slice is its own row of
    ``handle.results`` (a budget per frame).
    """
    t, h, w = (int(v) for v in grid_thw)
    if min(t, h, w) < 1 or h % merge_size or w % merge_size:
        raise ValueError(
            f"grid_thw must be positive with h and w divisible by merge_size={merge_size}, "
            f"got {(t, h, w)}"
        )
    if t > 1 and not video:
        raise ValueError(f"an image has t = 1 in its grid_thw, got {(t, h, w)}; pass video=True")
    rows, cols = h // merge_size, w // merge_size
    size = (w * patch_size, h * patch_size)
    per_frame = rows * cols
    grid = np.arange(per_frame).reshape(rows, cols)
    if not video:
        return TokenLayout(per_frame, (Panel(grid, resize=size),), ("image",))
    step = max(1, temporal_patch_size)
    panels = tuple(
        Panel(grid + f * per_frame, picture=f * step, resize=size, group=f) for f in range(t)
    )
    groups = tuple(
        f"frame {f * step}" if step == 1 else f"frames {f * step}-{(f + 1) * step - 1}"
        for f in range(t)
    )
    return TokenLayout(t * per_frame, panels, groups, rows=t if rows_per_frame else 1)


def mrope_token_layouts(
    config: Any, inputs: Mapping[str, Any], *, budget_scope: str = "frame", in_llm: bool = False
) -> list[TokenLayout]:
    """The layouts of a Qwen2.5-VL / Qwen3-VL call's images and videos, in placeholder order.

    Reads ``image_grid_thw`` / ``video_grid_thw`` and the vision config's
    ``spatial_merge_size``, ``patch_size`` and ``temporal_patch_size``. With
    ``input_ids`` the items follow the prompt (row by row, left to right, images and
    videos interleaved as their placeholders are); without them images come first.
    ``budget_scope="frame"``: a video spans one result row per temporal slice.
    ``in_llm`` (pruning with ``llm_layer``): one layout per prompt, its items joined
    (:func:`per_prompt`; needs ``input_ids``).
    """
    if budget_scope not in ("frame", "clip"):
        raise ValueError(f"budget_scope must be 'frame' or 'clip', got {budget_scope!r}")
    vision = config.vision_config
    merge = int(vision.spatial_merge_size)
    common = dict(
        patch_size=int(vision.patch_size), temporal_patch_size=int(vision.temporal_patch_size)
    )

    def grids(name: str) -> list[list[int]]:
        value = inputs.get(name)
        return [] if value is None else torch.as_tensor(value).reshape(-1, 3).tolist()

    images = [merged_grid_layout(g, merge, **common) for g in grids("image_grid_thw")]
    videos = [
        merged_grid_layout(g, merge, video=True, rows_per_frame=budget_scope == "frame", **common)
        for g in grids("video_grid_thw")
    ]
    if not images and not videos:
        raise ValueError("inputs have neither image_grid_thw nor video_grid_thw")
    input_ids = inputs.get("input_ids")
    if input_ids is None:
        if in_llm:
            raise ValueError("in-LLM token layouts need the call's input_ids")
        return images + videos
    image_id, video_id = config.image_token_id, config.video_token_id
    queues = {image_id: list(images), video_id: list(videos)}
    ordered, counts = [], []
    for row in torch.as_tensor(input_ids).reshape(-1, torch.as_tensor(input_ids).shape[-1]):
        visual = row[(row == image_id) | (row == video_id)].tolist()
        counts.append(0)
        i = 0
        while i < len(visual):
            queue = queues[visual[i]]
            if not queue:
                raise ValueError("input_ids hold more image / video placeholders than the grids")
            layout = queue.pop(0)
            ordered.append(layout)
            counts[-1] += 1
            i += layout.length
    if any(queues.values()):
        raise ValueError("the grids describe more images / videos than input_ids hold")
    return per_prompt(ordered, counts) if in_llm else ordered


__all__ = [
    "Panel",
    "TokenLayout",
    "item_sequences",
    "join_layouts",
    "merged_grid_layout",
    "mrope_token_layouts",
    "patch_grid_layout",
    "per_prompt",
]
