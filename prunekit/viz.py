"""Pictures of what a pruner kept (PNG-ready ``PIL`` images).

* :func:`kept_overlay`: the image with the dropped patches dimmed and the kept ones outlined,
  optionally under a title naming the pruner and budget;
* :func:`relevance_heatmap`: per-patch scores (e.g. :attr:`PruneResult.scores`, ResPrune's
  relevance weights) colour-mapped over the image, with a colour bar;
* :func:`layout_picture`: the kept tokens of one image or video of any model family, laid out
  as the model sees it, from a :class:`~prunekit.adapters.layout.TokenLayout` (where each
  token sits). The layout comes from the family's adapter (:func:`token_layouts`: crops,
  tiles, a dynamic-resolution grid, video frames as a strip), so the geometry lives in the
  adapters and this one renderer draws them all; :func:`result_pictures` draws every image
  of a pruned call from ``handle.results``. For one image given by its size, no model
  needed, the family modules give its layout (e.g.
  :func:`prunekit.adapters.llava_next.image_layout`,
  :func:`prunekit.adapters.internvl.image_layout`);
* :func:`tile_layout`: several tiles, each with its own patch grid and kept mask, on a grid
  of panels;
* :func:`side_by_side`: what several pruners keep on the same image, one titled panel each.

Every function returns an RGB ``PIL.Image.Image`` and also writes it to ``save`` (a path,
format from the suffix) when given. Sizes never depend on the data or the font: each
function documents its size formula, in which ``s`` is the panel side, ``g`` the gap
between panels and ``t`` the title height (:data:`TITLE_HEIGHT` by default).

Masks and scores are per token, row-major over a ``(rows, cols)`` patch grid (token ``i``
covers grid cell ``(i // cols, i % cols)``); ``torch`` tensors and NumPy arrays both work.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

ImageLike = Image.Image | np.ndarray
Color = tuple[int, int, int]
Grid = tuple[int, int]

#: height in pixels of a panel title bar
TITLE_HEIGHT = 20
#: width in pixels of the colour bar :func:`relevance_heatmap` appends with ``colorbar=True``
COLORBAR_WIDTH = 64
#: height in pixels of the colour bar at the foot of :func:`side_by_side`'s heatmaps
STRIP_HEIGHT = 20
#: height in pixels of that bar's colour ramp (under its label row)
STRIP_RAMP = 6
#: gap in pixels between the crops / tiles of one view in :func:`tile_layout`
TILE_GAP = 4
#: gap in pixels between two groups of a model layout (e.g. base view and crop grid)
GROUP_GAP = 16
#: gap in pixels between the panels of :func:`side_by_side`
PANEL_GAP = 8
#: colour of grid cells that are no token at all (e.g. LLaVA-NeXT padding removed by unpadding)
ABSENT_COLOR: Color = (200, 200, 200)
BACKGROUND: Color = (255, 255, 255)

# matplotlib's viridis at 0, 1/8, ..., 1: the colour map used when matplotlib is absent
_VIRIDIS = np.array(
    [
        (68, 1, 84),
        (71, 44, 122),
        (59, 82, 139),
        (44, 114, 142),
        (33, 145, 140),
        (39, 173, 129),
        (92, 200, 99),
        (170, 220, 50),
        (253, 231, 37),
    ],
    dtype=np.float64,
)


# --------------------------------------------------------------------------- helpers


def _as_image(image: ImageLike) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"image must be HxWx3, got shape {array.shape}")
    return Image.fromarray(array.astype(np.uint8))


def _flat(values: Any) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().flatten().float().cpu().numpy()
    return np.asarray(values, dtype=np.float64).reshape(-1)


def _grid_mask(values: Any, grid: Grid) -> np.ndarray:
    rows, cols = grid
    flat = _flat(values)
    if flat.size != rows * cols:
        raise ValueError(f"{flat.size} values do not fill a {rows} x {cols} grid")
    return flat.reshape(rows, cols)


def _size(picture: Image.Image, size: int | tuple[int, int] | None) -> tuple[int, int]:
    if size is None:
        return picture.size
    if isinstance(size, int):
        return (size, size)
    return (int(size[0]), int(size[1]))


def _cells(width: int, height: int, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """The patch row of every pixel row and the patch column of every pixel column."""
    rows, cols = grid
    return np.arange(height) * rows // height, np.arange(width) * cols // width


def _outline(
    out: np.ndarray, cells: np.ndarray, row_of: np.ndarray, col_of: np.ndarray, colour: Color
) -> None:
    for r, c in zip(*np.nonzero(cells)):
        y0, y1 = np.searchsorted(row_of, r), np.searchsorted(row_of, r, side="right") - 1
        x0, x1 = np.searchsorted(col_of, c), np.searchsorted(col_of, c, side="right") - 1
        out[y0, x0 : x1 + 1] = colour
        out[y1, x0 : x1 + 1] = colour
        out[y0 : y1 + 1, x0] = colour
        out[y0 : y1 + 1, x1] = colour


def colormap(values: np.ndarray, cmap: str = "viridis") -> np.ndarray:
    """RGB ``uint8`` colours ``(..., 3)`` of ``values`` in [0, 1] under the colour map ``cmap``.

    Uses matplotlib's colour maps when matplotlib is installed; without it only
    ``"viridis"`` is available (a built-in 9-step linear approximation).
    """
    values = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0)
    try:
        import matplotlib
    except ModuleNotFoundError:
        matplotlib = None
    if matplotlib is not None:
        rgba = matplotlib.colormaps[cmap](values)
        return np.round(np.asarray(rgba)[..., :3] * 255).astype(np.uint8)
    if cmap != "viridis":
        raise ModuleNotFoundError(
            f"colour map {cmap!r} needs matplotlib (`pip install matplotlib`); "
            "without it only 'viridis' is available",
            name="matplotlib",
        )
    position = values * (len(_VIRIDIS) - 1)
    low = np.floor(position).astype(int).clip(0, len(_VIRIDIS) - 2)
    frac = (position - low)[..., None]
    colours = _VIRIDIS[low] * (1 - frac) + _VIRIDIS[low + 1] * frac
    return np.round(colours).astype(np.uint8)


def _normalise(
    values: np.ndarray, vmin: float | None, vmax: float | None
) -> tuple[np.ndarray, float, float]:
    """Scores to [0, 1] (NaN stays NaN); constant scores map to 0.5. Returns (t, lo, hi)."""
    finite = values[np.isfinite(values)]
    lo = float(vmin) if vmin is not None else (float(finite.min()) if finite.size else 0.0)
    hi = float(vmax) if vmax is not None else (float(finite.max()) if finite.size else 1.0)
    with np.errstate(invalid="ignore"):
        scaled = (values - lo) / (hi - lo) if hi > lo else np.full_like(values, 0.5)
        t = np.clip(scaled, 0.0, 1.0)
    t[~np.isfinite(values)] = np.nan
    return t, lo, hi


def _render(
    image: ImageLike,
    grid: Grid,
    *,
    size: int | tuple[int, int] | None,
    kept: Any = None,
    scores: Any = None,
    present: Any = None,
    dim: float = 0.25,
    outline: Color | None = (255, 200, 0),
    cmap: str = "viridis",
    alpha: float = 0.6,
    vmin: float | None = None,
    vmax: float | None = None,
    absent_color: Color = ABSENT_COLOR,
) -> tuple[np.ndarray, float, float]:
    """One panel: dimmed dropped patches (no ``scores``) or the heatmap (``scores``),
    kept patches outlined, absent cells flat. Returns (pixels, score min, score max)."""
    picture = _as_image(image)
    width, height = _size(picture, size)
    if picture.size != (width, height):
        picture = picture.resize((width, height), Image.BICUBIC)
    row_of, col_of = _cells(width, height, grid)
    pixels = np.asarray(picture, dtype=np.float32)
    keep = None if kept is None else _grid_mask(kept, grid) > 0.5
    exists = np.ones(grid, dtype=bool) if present is None else _grid_mask(present, grid) > 0.5
    lo = hi = math.nan
    if scores is not None:
        t, lo, hi = _normalise(_grid_mask(scores, grid), vmin, vmax)
        colours = colormap(np.nan_to_num(t, nan=0.0), cmap).astype(np.float32)
        exists = exists & np.isfinite(t)
        blend = (1 - alpha) * pixels + alpha * colours[row_of][:, col_of]
        out = np.round(blend).astype(np.uint8)
    elif keep is not None:
        factor = np.where(keep[row_of][:, col_of], 1.0, dim)[..., None]
        out = np.round(pixels * factor).astype(np.uint8)
    else:
        out = pixels.astype(np.uint8)
    out[~exists[row_of][:, col_of]] = absent_color
    if keep is not None and outline is not None:
        _outline(out, keep & exists, row_of, col_of, outline)
    return out, lo, hi


@functools.lru_cache(maxsize=4)
def _font(size: int = 12) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # old Pillow or no FreeType: the bitmap font
        return ImageFont.load_default()


def _text(
    draw: ImageDraw.ImageDraw,
    xy: tuple[int, int],
    text: str,
    width: int,
    height: int,
    *,
    fill: Color = (0, 0, 0),
    centre: bool = True,
) -> None:
    """Draw ``text`` in the box at ``xy`` of ``width`` x ``height``, shortened to fit."""
    font = _font(max(8, min(13, height - 6)))
    while text and draw.textlength(text, font=font) > width - 4:
        text = text[:-2] + "…" if len(text) > 2 else ""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    x = xy[0] + ((width - (right - left)) // 2 if centre else 2) - left
    y = xy[1] + (height - (bottom - top)) // 2 - top
    draw.text((x, y), text, fill=fill, font=font)


def _colour_strip(
    canvas: Image.Image, xy: tuple[int, int], width: int, lo: float, hi: float, cmap: str
) -> None:
    """A horizontal colour bar at ``xy``: black label row (``lo`` left, ``hi`` right), then
    the ramp from ``cmap(0)`` (score ``lo``) to ``cmap(1)`` (score ``hi``); uniform scores
    (``hi <= lo``) show the one colour they all get, ``cmap(0.5)``."""
    x, y = xy
    text_h = STRIP_HEIGHT - STRIP_RAMP
    draw = ImageDraw.Draw(canvas)
    draw.rectangle((x, y, x + width - 1, y + text_h - 1), fill=(0, 0, 0))
    white = (255, 255, 255)
    if hi > lo:
        ramp = colormap(np.linspace(0.0, 1.0, width), cmap)
        _text(draw, (x, y), f"{lo:.3g}", width // 2, text_h, fill=white, centre=False)
        label = f"{hi:.3g}"
        label_w = int(draw.textlength(label, font=_font(max(8, min(13, text_h - 6))))) + 4
        _text(draw, (x + width - label_w, y), label, label_w, text_h, fill=white, centre=False)
    else:
        ramp = colormap(np.full(width, 0.5), cmap)
        _text(draw, (x, y), f"uniform scores {lo:.3g}", width, text_h, fill=white)
    canvas.paste(Image.fromarray(np.repeat(ramp[None], STRIP_RAMP, axis=0)), (x, y + text_h))


def _finish(picture: Image.Image, save: str | Path | None) -> Image.Image:
    if save is not None:
        picture.save(Path(save))
    return picture


# --------------------------------------------------------------------------- single pictures


def kept_overlay(
    image: ImageLike,
    kept: torch.Tensor,
    grid: Grid,
    *,
    size: int | tuple[int, int] | None = None,
    dim: float = 0.25,
    outline: Color | None = (255, 200, 0),
    present: torch.Tensor | None = None,
    absent_color: Color = ABSENT_COLOR,
    title: str | None = None,
    title_height: int = TITLE_HEIGHT,
    save: str | Path | None = None,
) -> Image.Image:
    """The image with dropped patches darkened to ``dim`` brightness, optionally titled.

    Args:
        image: the picture (PIL or HxWx3 uint8).
        kept: ``(rows * cols,)`` bool, row-major patch order (one sample of
            :attr:`PruneResult.mask`).
        grid: ``(rows, cols)`` of the patch grid.
        size: output side in pixels, or ``(width, height)`` (default: the image's own size).
        outline: colour of kept-patch borders, or ``None``.
        present: optional ``(rows * cols,)`` bool, ``False`` for grid cells that are no
            token (drawn flat in ``absent_color``).
        title: a title bar above the picture, e.g. the pruner and budget
            (``"resprune, budget 0.25: 64/256 kept"``), so that the picture says what it shows.
        save: path to write the picture to.

    Size: ``W x (t + H)`` where ``W x H`` is ``size x size`` (or the image's size) and
    ``t = title_height`` when ``title`` is given (else 0).
    """
    out, _, _ = _render(
        image,
        grid,
        size=size,
        kept=kept,
        present=present,
        dim=dim,
        outline=outline,
        absent_color=absent_color,
    )
    picture = Image.fromarray(out)
    if title is not None and title_height > 0:
        titled = Image.new("RGB", (picture.width, title_height + picture.height), BACKGROUND)
        titled.paste(picture, (0, title_height))
        _text(ImageDraw.Draw(titled), (0, 0), title, picture.width, title_height)
        picture = titled
    return _finish(picture, save)


def relevance_heatmap(
    image: ImageLike,
    scores: torch.Tensor,
    grid: Grid,
    *,
    size: int | tuple[int, int] | None = None,
    cmap: str = "viridis",
    alpha: float = 0.6,
    vmin: float | None = None,
    vmax: float | None = None,
    kept: torch.Tensor | None = None,
    outline: Color | None = (255, 255, 255),
    colorbar: bool = True,
    save: str | Path | None = None,
) -> Image.Image:
    """Per-patch ``scores`` colour-mapped over the image (e.g. ``result.scores[b]``).

    Each patch is blended as ``(1 - alpha) * pixel + alpha * cmap(t)`` with
    ``t = (score - vmin) / (vmax - vmin)`` clipped to [0, 1]; ``vmin`` / ``vmax``
    default to the scores' finite minimum / maximum (constant scores give ``t = 0.5``).
    Non-finite scores (e.g. padding) are drawn in :data:`ABSENT_COLOR`.

    Args:
        scores: ``(rows * cols,)`` floats, row-major.
        kept: optional kept mask whose patches get an ``outline``.
        colorbar: append a :data:`COLORBAR_WIDTH` px strip on the right with the colour
            scale, labelled with the top and bottom values (on by default: colours
            without their scale cannot be read).

    Size: ``(W + COLORBAR_WIDTH * colorbar) x H`` where ``W x H`` is ``size x size``
    (or the image's size).
    """
    out, lo, hi = _render(
        image,
        grid,
        size=size,
        kept=kept,
        scores=scores,
        outline=outline,
        cmap=cmap,
        alpha=alpha,
        vmin=vmin,
        vmax=vmax,
    )
    picture = Image.fromarray(out)
    if colorbar:
        height = out.shape[0]
        full = Image.new("RGB", (out.shape[1] + COLORBAR_WIDTH, height), BACKGROUND)
        full.paste(picture, (0, 0))
        top, bottom = 6, max(7, height - 6)
        ramp = colormap(np.linspace(1.0, 0.0, bottom - top), cmap)  # top = high scores
        bar = np.repeat(ramp[:, None, :], 12, axis=1)
        full.paste(Image.fromarray(bar), (out.shape[1] + 6, top))
        draw = ImageDraw.Draw(full)
        label_x, label_w = out.shape[1] + 20, COLORBAR_WIDTH - 20
        _text(draw, (label_x, top - 2), f"{hi:.3g}", label_w, 16, centre=False)
        _text(draw, (label_x, bottom - 14), f"{lo:.3g}", label_w, 16, centre=False)
        picture = full
    return _finish(picture, save)


# --------------------------------------------------------------------------- tiles


def _per_tile(value: Any, n: int, what: str) -> list[Any]:
    if value is None:
        return [None] * n
    value = list(value)
    if len(value) != n:
        raise ValueError(f"{len(value)} {what} for {n} tiles")
    return value


def _is_grid(value: Any) -> bool:
    return (
        isinstance(value, Sequence)
        and len(value) == 2
        and all(isinstance(v, (int, np.integer)) for v in value)
    )


def tile_layout(
    tiles: Sequence[ImageLike],
    masks: Sequence[torch.Tensor | None],
    grids: Grid | Sequence[Grid],
    *,
    layout: Grid | None = None,
    tile_size: int = 224,
    gap: int = TILE_GAP,
    titles: Sequence[str] | None = None,
    title_height: int = TITLE_HEIGHT,
    scores: Sequence[torch.Tensor | None] | None = None,
    present: Sequence[torch.Tensor | None] | None = None,
    dim: float = 0.25,
    outline: Color | None = (255, 200, 0),
    cmap: str = "viridis",
    alpha: float = 0.6,
    vmin: float | None = None,
    vmax: float | None = None,
    save: str | Path | None = None,
) -> Image.Image:
    """Tiles with their kept masks on a ``layout = (rows, cols)`` grid of panels.

    Tile ``i`` goes to panel ``(i // cols, i % cols)`` (row-major, like the tile order of
    tiled models), resized to ``tile_size`` square, with its own patch grid ``grids[i]``
    (or one ``(rows, cols)`` for all). ``masks[i]`` dims the dropped patches (``None``:
    the tile as is); with ``scores[i]`` the tile shows the relevance heatmap instead,
    kept patches outlined; ``present[i]`` marks the cells that are tokens at all.
    Pass ``vmin`` / ``vmax`` for one colour scale over all tiles (default: per tile).

    Size, with ``R x C = layout`` (default ``1 x len(tiles)``), ``s = tile_size``,
    ``g = gap`` and ``t = title_height`` when ``titles`` is given (else 0):
    ``(C * s + (C - 1) * g) x (R * (t + s) + (R - 1) * g)``.
    """
    n = len(tiles)
    if n == 0:
        raise ValueError("tile_layout needs at least one tile")
    rows, cols = layout if layout is not None else (1, n)
    if rows * cols < n:
        raise ValueError(f"a {rows} x {cols} layout has no room for {n} tiles")
    grid_list = [tuple(grids)] * n if _is_grid(grids) else _per_tile(grids, n, "grids")
    masks = _per_tile(masks, n, "masks")
    scores = _per_tile(scores, n, "score vectors")
    present = _per_tile(present, n, "presence masks")
    titles = None if titles is None else _per_tile(titles, n, "titles")
    t = title_height if titles is not None else 0
    s = tile_size
    canvas = Image.new(
        "RGB", (cols * s + (cols - 1) * gap, rows * (t + s) + (rows - 1) * gap), BACKGROUND
    )
    draw = ImageDraw.Draw(canvas)
    for i in range(n):
        x, y = (i % cols) * (s + gap), (i // cols) * (t + s + gap)
        out, _, _ = _render(
            tiles[i],
            grid_list[i],
            size=s,
            kept=masks[i],
            scores=scores[i],
            present=present[i],
            dim=dim,
            outline=outline,
            cmap=cmap,
            alpha=alpha,
            vmin=vmin,
            vmax=vmax,
        )
        canvas.paste(Image.fromarray(out), (x, y + t))
        if titles is not None and t > 0:
            _text(draw, (x, y), titles[i], s, t)
    return _finish(canvas, save)


def _groups(
    groups: Sequence[tuple[Image.Image, str]],
    title_height: int,
    group_gap: int,
) -> Image.Image:
    """Groups side by side, top-aligned, each under its title bar."""
    width = sum(g.width for g, _ in groups) + group_gap * (len(groups) - 1)
    height = title_height + max(g.height for g, _ in groups)
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    x = 0
    for picture, title in groups:
        canvas.paste(picture, (x, title_height))
        if title_height > 0:
            _text(draw, (x, 0), title, picture.width, title_height)
        x += picture.width + group_gap
    return canvas


def _count(flags: np.ndarray) -> int:
    return int((flags > 0.5).sum())


def _flat_mask(mask: Any, length: int, what: str) -> np.ndarray:
    """A ``(>= length,)`` per-token mask cut to ``length``; a longer tail must be padding."""
    flat = _flat(mask)
    if flat.size < length or (flat.size > length and (flat[length:] > 0.5).any()):
        raise ValueError(f"{what}; got a mask of {flat.size} values")
    return flat[:length]


def _flat_scores(scores: Any, length: int, what: str) -> np.ndarray | None:
    if scores is None:
        return None
    flat = _flat(scores)
    if flat.size < length:
        raise ValueError(f"{what}; got {flat.size} scores")
    return flat[:length]


def _score_range(scores: np.ndarray | None) -> dict[str, float]:
    """Common ``vmin`` / ``vmax`` of all tiles of an image (one colour scale for the image)."""
    if scores is None:
        return {}
    finite = scores[np.isfinite(scores)]
    return {} if finite.size == 0 else {"vmin": float(finite.min()), "vmax": float(finite.max())}


# --------------------------------------------------------------------------- token layouts


def _pictures(pictures: ImageLike | Sequence[ImageLike]) -> list[ImageLike]:
    """One picture, or a sequence of them (a video's frames, also as a ``(T, H, W, 3)`` array)."""
    if isinstance(pictures, Image.Image):
        return [pictures]
    if isinstance(pictures, np.ndarray):
        return list(pictures) if pictures.ndim == 4 else [pictures]
    return list(pictures)


def _panel_size(grid: Grid, side: int) -> tuple[int, int]:
    """``(width, height)`` of a panel: its longer side ``side``, the token grid's aspect ratio."""
    rows, cols = grid
    if cols >= rows:
        return side, max(1, round(side * rows / cols))
    return max(1, round(side * cols / rows)), side


def _panel_view(picture: Image.Image, panel: Any) -> Image.Image:
    """The region of ``picture`` under ``panel``'s grid, as the model sees it."""
    view = picture if panel.resize is None else picture.resize(panel.resize, Image.BICUBIC)
    if panel.canvas is not None:
        canvas = Image.new("RGB", panel.canvas, (0, 0, 0))
        canvas.paste(
            view, ((panel.canvas[0] - view.width) // 2, (panel.canvas[1] - view.height) // 2)
        )
        view = canvas
    return view if panel.box is None else view.crop(panel.box)


def _tokens_of(layout: Any) -> str:
    """``"the layout has 2144 tokens (576 in base view, 1536 in 2 x 2 crops, 32 drawn
    nowhere)"``: what a mask or score vector of the layout must cover."""
    counts = np.zeros(len(layout.groups), dtype=np.int64)
    for panel in layout.panels:
        counts[panel.group] += int((panel.tokens >= 0).sum())
    parts = [f"{n} in {title}" for n, title in zip(counts.tolist(), layout.groups) if n]
    if layout.length > counts.sum():
        parts.append(f"{layout.length - int(counts.sum())} drawn nowhere")
    return f"the layout has {layout.length} tokens ({', '.join(parts)})"


def layout_picture(
    pictures: ImageLike | Sequence[ImageLike],
    layout: Any,
    mask: torch.Tensor,
    *,
    scores: torch.Tensor | None = None,
    tile_size: int = 224,
    gap: int = TILE_GAP,
    group_gap: int = GROUP_GAP,
    title_height: int = TITLE_HEIGHT,
    dim: float = 0.25,
    outline: Color | None = (255, 200, 0),
    cmap: str = "viridis",
    alpha: float = 0.6,
    save: str | Path | None = None,
) -> Image.Image:
    """The kept tokens of one image or video drawn over it, laid out as the model sees it.

    ``layout`` is a :class:`~prunekit.adapters.layout.TokenLayout`, from the model's adapter
    (:func:`token_layouts`) or a family's layout of one image given by its size
    (:func:`prunekit.adapters.llava_next.image_layout`,
    :func:`prunekit.adapters.internvl.image_layout`), so this one renderer draws
    every family: a base view and its crops, tiles and a thumbnail, a dynamic-resolution
    grid, a video's frames as a strip. Every group of panels gets a title bar
    ``"<group>: <kept>/<tokens> kept"``; groups stand side by side, top-aligned.

    Args:
        pictures: the picture given to the processor, or a video's frames (a sequence or
            a ``(T, H, W, 3)`` array), indexed by
            :attr:`~prunekit.adapters.layout.Panel.picture`.
        mask: the item's per-token kept flags (``layout.length`` of them, batch padding
            after them allowed; a ``(rows, T)`` tensor is read row-major), e.g.
            ``result.mask[b]``, or one sequence of
            :func:`~prunekit.adapters.layout.item_sequences`.
        scores: optional per-token scores: heatmaps (one colour scale for the item)
            instead of dimming, kept tokens outlined.

    Size: a panel of a ``(rows, cols)`` token grid is ``s`` on its longer side
    (``s = tile_size``) with the grid's aspect ratio; a group whose panels fill an
    ``R x C`` grid of cells is ``C * w + (C - 1) * g`` by ``R * h + (R - 1) * g`` (``w x h``
    its largest panel, ``g = gap``); the picture is the groups' widths plus
    ``(n_groups - 1) * group_gap`` by ``title_height`` plus the tallest group.
    """
    from prunekit.adapters.layout import TokenLayout

    if not isinstance(layout, TokenLayout):
        raise TypeError(f"layout must be a prunekit TokenLayout, got {type(layout).__name__}")
    frames = [_as_image(p) for p in _pictures(pictures)]
    if len(frames) < layout.num_pictures:
        raise ValueError(
            f"the layout draws on {layout.num_pictures} pictures (frames), got {len(frames)}"
        )
    what = _tokens_of(layout)
    keep = _flat_mask(mask, layout.length, what)
    score = _flat_scores(scores, layout.length, what)
    scale = _score_range(score)
    views: dict[tuple, Image.Image] = {}
    groups = []
    for g, title in enumerate(layout.groups):
        members = [p for p in layout.panels if p.group == g]
        if not members:
            continue
        sizes = [_panel_size(p.grid, tile_size) for p in members]
        cell_w, cell_h = max(w for w, _ in sizes), max(h for _, h in sizes)
        n_rows = 1 + max(p.cell[0] for p in members)
        n_cols = 1 + max(p.cell[1] for p in members)
        canvas = Image.new(
            "RGB",
            (n_cols * cell_w + (n_cols - 1) * gap, n_rows * cell_h + (n_rows - 1) * gap),
            BACKGROUND,
        )
        tokens = np.concatenate([p.tokens[p.tokens >= 0] for p in members])
        for panel, size in zip(members, sizes):
            key = (panel.picture, panel.resize, panel.canvas, panel.box)
            if key not in views:
                views[key] = _panel_view(frames[panel.picture], panel)
            present = panel.tokens >= 0
            index = np.where(present, panel.tokens, 0)
            out, _, _ = _render(
                views[key],
                panel.grid,
                size=size,
                kept=np.where(present, keep[index], 0.0),
                scores=None if score is None else np.where(present, score[index], np.nan),
                present=present,
                dim=dim,
                outline=outline,
                cmap=cmap,
                alpha=alpha,
                **scale,
            )
            canvas.paste(
                Image.fromarray(out),
                (panel.cell[1] * (cell_w + gap), panel.cell[0] * (cell_h + gap)),
            )
        groups.append((canvas, f"{title}: {_count(keep[tokens])}/{tokens.size} kept"))
    return _finish(_groups(groups, title_height, group_gap), save)


def token_layouts(
    model: torch.nn.Module,
    inputs: Mapping[str, Any],
    *,
    adapter_options: Mapping[str, Any] | None = None,
    **options: Any,
) -> list[Any]:
    """The :class:`~prunekit.adapters.layout.TokenLayout` of every image / video of a model
    call, in the order of the rows of ``handle.results``: the model's adapter's
    ``token_layouts`` (the family's own geometry).

    Args:
        inputs: the keyword arguments the model was called with (what its processor
            returned: ``pixel_values``, ``image_sizes``, ``image_grid_thw``, ``input_ids``).
        adapter_options: the options given to ``prunekit.attach`` that change the rows
            (e.g. ``budget_scope="tile"``); ``options``: what the inputs do not carry
            (InternVL: ``image_sizes=[(height, width), ...]``).
    """
    from prunekit.adapters.attach import find_adapter

    adapter = find_adapter(model)(model, **dict(adapter_options or {}))
    return adapter.token_layouts(inputs, **options)


def result_pictures(
    pictures: Sequence[ImageLike | Sequence[ImageLike]],
    layouts: Sequence[Any],
    result: Any,
    *,
    heatmap: bool = False,
    **kwargs: Any,
) -> list[Image.Image]:
    """One :func:`layout_picture` per image / video of a pruned call: ``pictures[i]`` (a
    picture or a video's frames) with ``layouts[i]`` and its rows of ``result`` (a
    :class:`~prunekit.core.result.PruneResult`, e.g. ``handle.results[0]``). ``heatmap``:
    draw the scores the pruner reported instead of dimming (``ValueError`` without them).
    ``kwargs`` go to :func:`layout_picture` (``save`` excepted)."""
    from prunekit.adapters.layout import item_sequences

    if len(pictures) != len(layouts):
        raise ValueError(f"{len(pictures)} pictures for {len(layouts)} layouts")
    if "save" in kwargs:
        raise TypeError("result_pictures returns the pictures; save each one itself")
    masks = item_sequences(layouts, result.mask, result.valid_counts)
    if heatmap and result.scores is None:
        raise ValueError("heatmap=True needs a result with scores; this pruner reports none")
    scores = (
        item_sequences(layouts, result.scores, result.valid_counts)
        if heatmap
        else [None] * len(layouts)
    )
    return [
        layout_picture(p, layout, m, scores=s, **kwargs)
        for p, layout, m, s in zip(pictures, layouts, masks, scores)
    ]


# --------------------------------------------------------------------------- comparison


def _entry(value: Any, row: int) -> tuple[Any, Any, int | None]:
    """(mask, scores, valid count) of one ``side_by_side`` entry."""
    from prunekit.core.result import PruneResult

    if isinstance(value, PruneResult):
        scores = None if value.scores is None else value.scores[row]
        return value.mask[row], scores, int(value.valid_counts[row])
    if isinstance(value, tuple):
        if len(value) != 2:
            raise ValueError("a side_by_side entry must be (mask, scores or None)")
        return value[0], value[1], None
    return value, None, None


def side_by_side(
    image: ImageLike,
    results: Mapping[str, Any],
    grid: Grid,
    *,
    size: int = 224,
    heatmap: bool = False,
    columns: int | None = None,
    gap: int = PANEL_GAP,
    title_height: int = TITLE_HEIGHT,
    row: int = 0,
    dim: float = 0.25,
    outline: Color | None = (255, 200, 0),
    cmap: str = "viridis",
    alpha: float = 0.6,
    save: str | Path | None = None,
) -> Image.Image:
    """What several pruners keep on the same image, one titled panel each.

    Args:
        results: label (e.g. the pruner name) -> a :class:`PruneResult` (its batch row
            ``row``), a ``(mask, scores or None)`` pair or a bare mask, all over the
            ``grid`` of the image's tokens. Panels follow the mapping's order.
        heatmap: add under each panel the relevance heatmap of its scores (kept patches
            outlined, min-max normalised per panel), with a colour bar along its bottom
            edge (:data:`STRIP_HEIGHT` px: the panel's minimum and maximum score above
            the colour ramp from the one to the other; uniform scores get one colour),
            or a grey "no scores" panel.
        columns: panels per row (default: all in one row).

    Each title reads ``"<label>: <kept>/<tokens> kept"`` (tokens: the result's valid
    count, else the mask's length).

    Size, with ``n`` entries, ``C = min(columns or n, n)`` columns, ``R = ceil(n / C)``
    rows, ``p = 2`` with ``heatmap`` (else 1), ``s = size``, ``g = gap``,
    ``t = title_height``: ``(C * s + (C - 1) * g) x (R * (t + p * s + (p - 1) * g) +
    (R - 1) * g)``.
    """
    n = len(results)
    if n == 0:
        raise ValueError("side_by_side needs at least one result")
    picture = _as_image(image)
    cols = min(columns or n, n)
    rows = math.ceil(n / cols)
    panels = 2 if heatmap else 1
    s, t = size, title_height
    cell_h = t + panels * s + (panels - 1) * gap
    canvas = Image.new(
        "RGB", (cols * s + (cols - 1) * gap, rows * cell_h + (rows - 1) * gap), BACKGROUND
    )
    draw = ImageDraw.Draw(canvas)
    for i, (label, value) in enumerate(results.items()):
        mask, scores, total = _entry(value, row)
        keep = _flat(mask)
        total = keep.size if total is None else total
        x, y = (i % cols) * (s + gap), (i // cols) * (cell_h + gap)
        if t > 0:
            _text(draw, (x, y), f"{label}: {_count(keep)}/{total} kept", s, t)
        out, _, _ = _render(picture, grid, size=s, kept=keep, dim=dim, outline=outline)
        canvas.paste(Image.fromarray(out), (x, y + t))
        if not heatmap:
            continue
        y_map = y + t + s + gap
        if scores is None:
            canvas.paste((225, 225, 225), (x, y_map, x + s, y_map + s))
            _text(draw, (x, y_map), "no scores", s, s, fill=(90, 90, 90))
            continue
        out, lo, hi = _render(
            picture,
            grid,
            size=s,
            kept=keep,
            scores=scores,
            outline=(255, 255, 255),
            cmap=cmap,
            alpha=alpha,
        )
        canvas.paste(Image.fromarray(out), (x, y_map))
        _colour_strip(canvas, (x, y_map + s - STRIP_HEIGHT), s, lo, hi, cmap)
    return _finish(canvas, save)


__all__ = [
    "ABSENT_COLOR",
    "COLORBAR_WIDTH",
    "GROUP_GAP",
    "PANEL_GAP",
    "STRIP_HEIGHT",
    "STRIP_RAMP",
    "TILE_GAP",
    "TITLE_HEIGHT",
    "colormap",
    "kept_overlay",
    "layout_picture",
    "relevance_heatmap",
    "result_pictures",
    "side_by_side",
    "tile_layout",
    "token_layouts",
]
