"""Token layouts (where each visual token sits) and the one renderer that draws them.

References are independent of the layout code: hand-worked indices, the models' own
M-RoPE positions (``get_rope_index`` gives every Qwen token its (t, h, w)), the models'
own packing (``pack_image_features`` fed coordinates), feature counts and pixels.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers
from PIL import Image

import prunekit
from prunekit.adapters.layout import (
    Panel,
    TokenLayout,
    item_sequences,
    join_layouts,
    merged_grid_layout,
    mrope_token_layouts,
    patch_grid_layout,
)
from prunekit.core.result import PruneResult
from prunekit.viz import (
    GROUP_GAP,
    TILE_GAP,
    TITLE_HEIGHT,
    layout_picture,
    result_pictures,
    token_layouts,
)

IMAGE, VIDEO, START, END = 4, 5, 6, 7


# --------------------------------------------------------------------------- the data model


def test_merged_grid_layout_hand_worked():
    image = merged_grid_layout((1, 4, 6), 2, patch_size=14)
    assert image.length == 6 and image.rows == 1 and image.groups == ("image",)
    (panel,) = image.panels
    assert panel.tokens.tolist() == [[0, 1, 2], [3, 4, 5]]
    assert panel.resize == (6 * 14, 4 * 14) and panel.box is None and panel.picture == 0

    video = merged_grid_layout((3, 4, 4), 2, temporal_patch_size=2, video=True)
    assert video.length == 12 and video.rows == 1
    assert [p.tokens.tolist() for p in video.panels] == [
        [[0, 1], [2, 3]],
        [[4, 5], [6, 7]],
        [[8, 9], [10, 11]],
    ]
    assert [p.picture for p in video.panels] == [0, 2, 4]  # first frame of each slice
    assert [p.group for p in video.panels] == [0, 1, 2]
    assert video.groups == ("frames 0-1", "frames 2-3", "frames 4-5")
    assert merged_grid_layout((3, 4, 4), video=True, rows_per_frame=True).rows == 3
    assert video.cells()[5].tolist() == [1, 0, 1]  # token 5: panel 1, row 0, col 1


def test_layout_validation():
    with pytest.raises(ValueError, match="divisible by merge_size"):
        merged_grid_layout((1, 3, 4), 2)
    with pytest.raises(ValueError, match="pass video=True"):
        merged_grid_layout((2, 4, 4), 2)
    with pytest.raises(ValueError, match="two grid cells"):
        TokenLayout(4, (Panel([[0, 1]]), Panel([[1, 2]])))
    with pytest.raises(ValueError, match=r"in \[0, 3\)"):
        TokenLayout(3, (Panel([[0, 3]]),))
    with pytest.raises(ValueError, match="2-D"):
        Panel(np.arange(4))
    with pytest.raises(ValueError, match="group 1"):
        TokenLayout(2, (Panel([[0, 1]], group=1),))


def test_join_and_item_sequences():
    a, b = (
        patch_grid_layout((1, 2)),
        merged_grid_layout((2, 2, 2), 2, video=True, rows_per_frame=True),
    )
    joined = join_layouts([a, b])
    assert (
        joined.length == 4
        and joined.rows == 3
        and joined.groups == ("image", "frames 0-1", "frames 2-3")
    )
    assert [p.tokens.tolist() for p in joined.panels] == [[[0, 1]], [[2]], [[3]]]
    assert [p.picture for p in joined.panels] == [0, 1, 3]
    # rows: image (2 valid of 3 slots), then two frame rows (1 valid each), padding after
    mask = torch.tensor([[1, 0, 0], [1, 0, 0], [0, 0, 0]], dtype=torch.bool)
    seqs = item_sequences([a, b], mask, torch.tensor([2, 1, 1]))
    assert [s.tolist() for s in seqs] == [[1.0, 0.0], [1.0, 0.0]]
    with pytest.raises(ValueError, match="span 3 result rows"):
        item_sequences([a, b], mask[:2], torch.tensor([2, 1]))
    with pytest.raises(ValueError, match="layout has 2"):
        item_sequences([a, b], mask, torch.tensor([3, 1, 1]))


# --------------------------------------------------------------------------- Qwen-VL


def tiny_qwen(temporal_patch_size: int = 2) -> transformers.Qwen2_5_VLForConditionalGeneration:
    torch.manual_seed(0)
    vision = dict(
        depth=1,
        hidden_size=16,
        intermediate_size=16,
        num_heads=2,
        patch_size=2,
        spatial_merge_size=2,
        temporal_patch_size=temporal_patch_size,
        window_size=8,
        out_hidden_size=32,
        fullatt_block_indexes=[0],
    )
    text = dict(
        vocab_size=32,
        hidden_size=32,  # head_dim 16: mrope_section [2, 3, 3] covers its 8 frequencies
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        bos_token_id=1,
        eos_token_id=None,
        pad_token_id=0,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
    )
    config = transformers.Qwen2_5_VLConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=IMAGE,
        video_token_id=VIDEO,
        vision_start_token_id=START,
        vision_end_token_id=END,
    )
    return transformers.Qwen2_5_VLForConditionalGeneration(config).eval()


def qwen_inputs(prompts, temporal_patch_size=2):
    """Prompts of text ids and ("image" | "video", (t, h, w)) items, laid out as the processor
    does (vision start, pads, vision end), right-padded."""
    rows, images, videos = [], [], []
    for prompt in prompts:
        row = [1]
        for item in prompt:
            if isinstance(item, tuple):
                kind, grid = item
                token = IMAGE if kind == "image" else VIDEO
                row += [START] + [token] * (grid[0] * grid[1] * grid[2] // 4) + [END]
                (images if kind == "image" else videos).append(grid)
            else:
                row.append(item)
        rows.append(row)
    width = max(map(len, rows))
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for b, row in enumerate(rows):
        ids[b, : len(row)], mask[b, : len(row)] = torch.tensor(row), 1
    inputs = {"input_ids": ids, "attention_mask": mask}
    inputs["mm_token_type_ids"] = (ids == IMAGE).long() + 2 * (ids == VIDEO).long()
    dim = 3 * temporal_patch_size * 2 * 2
    if images:
        grid = torch.tensor(images)
        inputs["image_grid_thw"] = grid
        inputs["pixel_values"] = torch.randn(int(grid.prod(1).sum()), dim)
    if videos:
        grid = torch.tensor(videos)
        inputs["video_grid_thw"] = grid
        inputs["pixel_values_videos"] = torch.randn(int(grid.prod(1).sum()), dim)
    return inputs


MIXED = (
    [9, ("image", (1, 4, 6)), 10, ("video", (3, 4, 4)), 11, ("image", (1, 2, 4))],
    [12, ("video", (2, 2, 6)), ("image", (1, 6, 2)), 13],
)


@pytest.fixture(scope="module")
def qwen():
    return tiny_qwen()


def test_qwen_layouts_are_the_models_positions(qwen):
    """Every token's panel cell is where the model's own 3-D M-RoPE puts it: (t, h, w)
    relative to the item's first token = (panel, row, col); items in placeholder order."""
    inputs = qwen_inputs(MIXED)
    layouts = mrope_token_layouts(qwen.config, inputs)
    assert [len(x.panels) for x in layouts] == [1, 3, 1, 2, 1]  # image, video, image | video, image
    positions, _ = qwen.model.get_rope_index(
        inputs["input_ids"],
        inputs["mm_token_type_ids"],
        inputs["image_grid_thw"],
        inputs["video_grid_thw"],
        attention_mask=inputs["attention_mask"],
    )
    items = iter(layouts)
    for b in range(2):
        ids = inputs["input_ids"][b]
        visual = torch.nonzero((ids == IMAGE) | (ids == VIDEO)).flatten()
        start = 0
        while start < len(visual):
            layout = next(items)
            where = visual[start : start + layout.length]
            thw = positions[:, b, where]
            t_rank = torch.unique(thw[0], return_inverse=True)[1]  # video: temporal steps of 50
            rel = torch.stack([t_rank, thw[1] - thw[1].min(), thw[2] - thw[2].min()], 1)
            assert (layout.cells() == rel.numpy()).all()
            start += layout.length
    with pytest.raises(StopIteration):
        next(items)


def tiny_qwen3() -> transformers.Qwen3VLForConditionalGeneration:
    torch.manual_seed(0)
    vision = dict(
        depth=1,
        hidden_size=16,
        intermediate_size=16,
        num_heads=2,
        patch_size=2,
        spatial_merge_size=2,
        temporal_patch_size=2,
        out_hidden_size=32,
        num_position_embeddings=16,
        deepstack_visual_indexes=[0],
    )
    text = dict(
        vocab_size=32,
        hidden_size=32,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        bos_token_id=1,
        eos_token_id=None,
        pad_token_id=0,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 10000.0,
            "mrope_section": [2, 3, 3],
            "mrope_interleaved": True,
        },
    )
    config = transformers.Qwen3VLConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=IMAGE,
        video_token_id=VIDEO,
        vision_start_token_id=START,
        vision_end_token_id=END,
    )
    return transformers.Qwen3VLForConditionalGeneration(config).eval()


def test_qwen3_layouts_are_the_models_positions():
    """Qwen3-VL writes a video frame by frame, a timestamp between frames: every frame panel's
    cells are its tokens' own (h, w) positions, frames in the order of their t positions."""
    model = tiny_qwen3()
    row = [1, 9, START] + [IMAGE] * 6 + [END, 10]  # an image of grid (1, 4, 6)
    for frame in range(3):  # a video of grid (3, 4, 4): timestamp, then the frame
        row += [20 + frame, START] + [VIDEO] * 4 + [END]
    ids = torch.tensor([row + [11]])
    inputs = {
        "input_ids": ids,
        "mm_token_type_ids": (ids == IMAGE).long() + 2 * (ids == VIDEO).long(),
        "image_grid_thw": torch.tensor([[1, 4, 6]]),
        "video_grid_thw": torch.tensor([[3, 4, 4]]),
    }
    layouts = mrope_token_layouts(model.config, inputs)
    assert [x.length for x in layouts] == [6, 12] and layouts[1].rows == 3
    positions, _ = model.model.get_rope_index(
        ids, inputs["mm_token_type_ids"], inputs["image_grid_thw"], inputs["video_grid_thw"]
    )
    visual = torch.nonzero((ids[0] == IMAGE) | (ids[0] == VIDEO)).flatten()
    start, previous_t = 0, -1
    for layout in layouts:
        where = visual[start : start + layout.length]
        for panel in layout.panels:
            tokens = torch.from_numpy(panel.tokens.ravel().copy())
            thw = positions[:, 0, where[tokens]]
            assert thw[0].unique().numel() == 1 and int(thw[0, 0]) > previous_t
            previous_t = int(thw[0, 0])
            rows, cols = np.divmod(np.arange(tokens.numel()), panel.grid[1])
            assert (thw[1] - thw[1].min()).tolist() == rows.tolist()
            assert (thw[2] - thw[2].min()).tolist() == cols.tolist()
        start += layout.length


def test_qwen_layout_lengths_are_the_models_feature_counts(qwen):
    inputs = qwen_inputs(MIXED)
    layouts = mrope_token_layouts(qwen.config, inputs)
    with torch.no_grad():
        image = qwen.model.get_image_features(
            inputs["pixel_values"], inputs["image_grid_thw"], return_dict=True
        ).pooler_output
        video = qwen.model.get_video_features(
            inputs["pixel_values_videos"], inputs["video_grid_thw"], return_dict=True
        ).pooler_output
    images = [x for x in layouts if len(x.panels) == 1]
    videos = [x for x in layouts if len(x.panels) > 1]
    assert [x.length for x in images] == [f.shape[0] for f in image]
    assert [x.length for x in videos] == [f.shape[0] for f in video]
    # without input_ids: images first, then videos; a budget per frame: a row per slice
    plain = mrope_token_layouts(
        qwen.config,
        {k: inputs[k] for k in ("image_grid_thw", "video_grid_thw")},
        budget_scope="frame",
    )
    assert [x.rows for x in plain] == [1, 1, 1, 3, 2]
    with pytest.raises(ValueError, match="budget_scope"):
        mrope_token_layouts(qwen.config, inputs, budget_scope="tile")


@pytest.mark.parametrize("scope", ["frame", "clip"])
def test_qwen_adapter_rows_are_the_layouts_rows(qwen, scope):
    """The qwen2_5_vl adapter's handle.results rows (placeholder order, a row per frame or
    per clip) are the layouts' rows: every item's rows hold exactly its layout's tokens."""
    inputs = qwen_inputs(MIXED)
    with prunekit.attach(qwen, "random", budget=0.5, budget_scope=scope) as handle:
        with torch.no_grad():
            qwen(**inputs)
    (result,) = handle.results
    layouts = mrope_token_layouts(qwen.config, inputs, budget_scope=scope)
    assert sum(x.rows for x in layouts) == result.batch_size
    masks = item_sequences(layouts, result.mask, result.valid_counts)
    assert [m.size for m in masks] == [x.length for x in layouts]
    # per prompt (llm_layer): a row holds all visual tokens of the prompt
    joined = mrope_token_layouts(qwen.config, inputs, in_llm=True)
    ids = inputs["input_ids"]
    assert [x.length for x in joined] == ((ids == IMAGE) | (ids == VIDEO)).sum(1).tolist()
    assert [len(x.groups) for x in joined] == [5, 3]


GREEN = (0, 255, 0)


def solid(colour, size=(40, 30)):
    return Image.new("RGB", size, colour)


def test_ragged_grid_picture_pixels():
    """Two images of different merged grids in one result (rows padded to the longest):
    each drawn over its own picture, kept cells bright, dropped ones dimmed."""
    layouts = [merged_grid_layout((1, 4, 6), 2), merged_grid_layout((1, 8, 4), 2)]  # 2x3, 4x2
    kept = [[0, 4, 5], [1, 2, 7]]
    mask = torch.zeros(2, 8, dtype=torch.bool)
    for b, k in enumerate(kept):
        mask[b, k] = True
    result = PruneResult(
        indices=torch.tensor(kept),
        mask=mask,
        counts=torch.tensor([3, 3]),
        valid_counts=torch.tensor([6, 8]),
    )
    s, t = 60, 20
    pics = result_pictures(
        [solid(GREEN), solid(GREEN)], layouts, result, tile_size=s, outline=None, dim=0.5
    )
    assert pics[0].size == (60, t + 40) and pics[1].size == (30, t + 60)  # the grids' aspect
    for picture, layout, k in zip(pics, layouts, kept):
        pixels = np.asarray(picture)
        rows, cols = layout.panels[0].grid
        cell = s // max(rows, cols)
        for i in range(layout.length):
            r, c = divmod(i, cols)
            centre = tuple(pixels[t + r * cell + cell // 2, c * cell + cell // 2])
            assert centre == (GREEN if i in k else (0, 128, 0)), (i, centre)


def test_video_strip_pixels():
    """A video of 3 temporal slices (6 frames) with a budget per frame: the frames side by
    side, slice f over frame 2f, kept cells in that frame's colour, dropped ones dimmed."""
    colours = [(200, 0, 0), (0, 0, 0), (0, 200, 0), (0, 0, 0), (0, 0, 200), (0, 0, 0)]
    frames = np.stack([np.full((28, 28, 3), c, dtype=np.uint8) for c in colours])
    layout = merged_grid_layout((3, 4, 4), 2, video=True, rows_per_frame=True)
    image = merged_grid_layout((1, 6, 6), 2)  # a longer row in the same result: padding
    kept = {0: [0, 3], 1: [1], 2: []}
    mask = torch.zeros(4, 9, dtype=torch.bool)
    mask[0, :5] = True  # the image's row
    for f, k in kept.items():
        mask[1 + f, k] = True
    result = PruneResult(
        indices=torch.zeros(4, 5, dtype=torch.long),
        mask=mask,
        counts=mask.sum(1),
        valid_counts=torch.tensor([9, 4, 4, 4]),
    )
    s, t = 40, 20
    pic_image, pic_video = result_pictures(
        [GREEN_PICTURE, frames], [image, layout], result, tile_size=s, outline=None, dim=0.5
    )
    assert pic_video.size == (3 * s + 2 * GROUP_GAP, t + s)
    pixels = np.asarray(pic_video)
    for f in range(3):
        x0 = f * (s + GROUP_GAP)
        for i in range(4):
            r, c = divmod(i, 2)
            centre = pixels[t + r * 20 + 10, x0 + c * 20 + 10]
            expected = np.array(colours[2 * f]) * (1.0 if i in kept[f] else 0.5)
            assert (centre == np.round(expected)).all(), (f, i, centre)
    assert (pixels[t + 5, s + 2] == 255).all()  # the gap between frames
    assert int(np.asarray(pic_image)[20 + 2, 2, 1]) == 255  # image token 0 kept


GREEN_PICTURE = np.zeros((30, 30, 3), dtype=np.uint8)
GREEN_PICTURE[..., 1] = 255


def test_layout_picture_checks_its_inputs():
    layout = merged_grid_layout((2, 2, 2), 2, video=True, temporal_patch_size=1)
    with pytest.raises(ValueError, match="2 pictures"):
        layout_picture(GREEN_PICTURE, layout, torch.ones(2))
    with pytest.raises(ValueError, match="has 2 tokens"):
        layout_picture([GREEN_PICTURE] * 2, layout, torch.ones(5))
    with pytest.raises(TypeError, match="TokenLayout"):
        layout_picture(GREEN_PICTURE, "grid", torch.ones(2))


def test_scores_share_one_scale_over_the_frames():
    layout = merged_grid_layout((2, 2, 2), 2, video=True, temporal_patch_size=1)
    out = np.asarray(
        layout_picture(
            [GREEN_PICTURE] * 2,
            layout,
            torch.ones(2, dtype=torch.bool),
            scores=torch.tensor([0.0, 1.0]),
            alpha=1.0,
            outline=None,
            tile_size=20,
        )
    )
    from prunekit.viz import colormap

    assert tuple(out[30, 10]) == tuple(colormap(np.array(0.0)))
    assert tuple(out[30, 20 + GROUP_GAP + 10]) == tuple(colormap(np.array(1.0)))


# --------------------------------------------------------------------------- other families


def test_llava_layout_from_the_adapter_draws_the_kept_tokens():
    """End to end on a tiny LLaVA: the adapter's layout, handle.results, one green cell per
    kept token."""
    from tiny_models import left_pad, prompt_ids, tiny_llava

    model = tiny_llava()
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    ids, mask = left_pad([prompt_ids([7], 16), prompt_ids([8, 9], 16)])
    inputs = {"input_ids": ids, "attention_mask": mask, "pixel_values": pixels}
    with prunekit.attach(model, "random", budget=5) as handle, torch.no_grad():
        model(**inputs)
    layouts = token_layouts(model, inputs)
    assert [x.panels[0].grid for x in layouts] == [(4, 4), (4, 4)]
    pics = result_pictures(
        [GREEN_PICTURE] * 2,
        layouts,
        handle.results[0],
        tile_size=32,
        dim=0.0,
        outline=None,
        title_height=0,
    )
    for b, picture in enumerate(pics):
        pixels_out = np.asarray(picture)
        green = {
            (r, c) for r in range(4) for c in range(4) if pixels_out[8 * r + 4, 8 * c + 4, 1] == 255
        }
        expected = {divmod(int(i), 4) for i in handle.results[0].indices[b]}
        assert green == expected and len(green) == 5
    # in the LLM (llm_layer): one row per prompt over all its images, the layouts joined
    from tiny_models import IMAGE_TOKEN_ID

    two = prompt_ids([7], 16) + [IMAGE_TOKEN_ID] * 16 + [8]
    ids, mask = left_pad([two, prompt_ids([8, 9], 16)])
    inputs = {"input_ids": ids, "attention_mask": mask, "pixel_values": torch.randn(3, 3, 32, 32)}
    with prunekit.attach(model, "random", budget=5, llm_layer=1) as handle, torch.no_grad():
        model(**inputs)
    layouts = token_layouts(model, inputs, adapter_options={"llm_layer": 1})
    assert [x.length for x in layouts] == handle.results[0].valid_counts.tolist() == [32, 16]
    assert layouts[0].groups == ("image", "image") and layouts[0].num_pictures == 2
    assert layouts[0].panels[1].tokens[0, 0] == 16


PINPOINTS = [[32, 32], [32, 64], [64, 32], [64, 64]]


def tiny_next():
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
    return transformers.LlavaNextForConditionalGeneration(config).eval()


def coordinate_features(views: int, side: int = 4) -> torch.Tensor:
    """Per view, per patch: (view, row, col) + 1 as a 3-channel feature."""
    index = torch.arange(side * side)
    return (
        torch.stack(
            [
                torch.stack([torch.full_like(index, v), index // side, index % side], 1)
                for v in range(views)
            ]
        ).float()
        + 1
    )


def test_llava_next_adapter_layouts_are_the_models_packing():
    from prunekit.adapters.llava_next import LlavaNextAdapter

    model = tiny_next()
    sizes = [(40, 20), (48, 30), (64, 64), (20, 70)]
    layouts = LlavaNextAdapter(model).token_layouts({"image_sizes": torch.tensor(sizes)})
    for size, layout in zip(sizes, layouts):
        views = len(layout.panels)
        packed, _ = model.model.pack_image_features(
            [coordinate_features(views)],
            torch.tensor([size]),
            vision_feature_select_strategy="default",
            image_newline=torch.zeros(3),
        )
        cells = packed[0].long().numpy() - 1  # newline: (-1, -1, -1)
        assert (layout.cells() == cells).all()


def tiny_onevision():
    torch.manual_seed(0)
    vision = transformers.SiglipVisionConfig(
        hidden_size=16,
        intermediate_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
    )
    text = transformers.Qwen2Config(
        vocab_size=32,
        hidden_size=16,
        intermediate_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    config = transformers.LlavaOnevisionConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=3,
        image_grid_pinpoints=[[32, 32], [32, 64], [64, 32], [64, 64], [96, 96]],
        vision_aspect_ratio="anyres_max_1",
        vision_feature_select_strategy="full",
    )
    return transformers.LlavaOnevisionForConditionalGeneration(config).eval()


@pytest.mark.parametrize("size", [(40, 20), (64, 64), (50, 96), (20, 64), (30, 30)])
def test_onevision_anyres_layout_is_the_models_packing(size):
    """LLaVA-OneVision's packing, incl. its bilinear shrink (anyres_max_1: more than one
    crop's worth of tokens): the layout's length is the packed length; without the shrink
    every cell is the model's; with it the shrunk grid sits on the unpadded region."""
    from prunekit.adapters.llava_next import anyres_layout, crop_grid_shape

    model = tiny_onevision()
    grid = crop_grid_shape(size, model.config.image_grid_pinpoints, 32)
    layout = anyres_layout(size, grid, 4, 32, max_patches=1)
    views = 1 + grid[0] * grid[1]
    packed, lengths = model.model.pack_image_features(
        [coordinate_features(views)],
        torch.tensor([size]),
        image_newline=torch.zeros(3),
        vision_aspect_ratio="anyres_max_1",
    )
    assert int(lengths[0]) == layout.length
    if len(layout.panels) == views:  # no shrink
        assert (layout.cells() == packed[0].long().numpy() - 1).all()
    else:
        (crops,) = layout.panels[1:]
        newline = packed[0][:, 0] == 0
        assert int(newline.sum()) == crops.grid[0]  # one newline per shrunk row
        assert int((~newline).sum()) == 16 + crops.grid[0] * crops.grid[1]
        left, top, right, bottom = crops.box  # inside the canvas, the padding cut off
        assert crops.canvas == (grid[1] * 32, grid[0] * 32)
        assert 0 <= left < right <= crops.canvas[0] and 0 <= top < bottom <= crops.canvas[1]


def test_shrunk_crops_show_the_unpadded_region():
    """OneVision's shrunk crop grid covers the canvas region left by unpadding: the picture
    centred on its black padding, so the panel shows only the picture."""
    from prunekit.adapters.llava_next import anyres_layout

    layout = anyres_layout((50, 96), (3, 3), 4, 32, max_patches=1)
    crops = layout.panels[1]
    assert crops.canvas == (96, 96) and crops.resize == (96, 50) and crops.box == (0, 24, 96, 72)
    out = layout_picture(
        solid(GREEN, (96, 50)), layout, torch.ones(layout.length), outline=None, tile_size=40
    )
    panel = np.asarray(out)[TITLE_HEIGHT:, 40 + GROUP_GAP :]
    height = round(40 * crops.grid[0] / crops.grid[1])
    assert (panel[:height] == GREEN).all()


def test_onevision_layouts_are_the_models_feature_counts():
    """The real forward's packed features (base + crops, shrunk, newlines; a prompt of two
    images gets base views only) have exactly the layouts' lengths."""
    from transformers.models.llava_onevision.modeling_llava_onevision import (
        image_size_to_num_patches,
    )

    from prunekit.adapters.llava_next import onevision_token_layouts

    model = tiny_onevision()
    sizes = [(40, 20), (50, 96), (30, 30)]
    views = [image_size_to_num_patches(s, model.config.image_grid_pinpoints, 32) for s in sizes]
    pixels = torch.randn(len(sizes), max(views), 3, 32, 32)
    for per_sample in (None, torch.tensor([1, 2])):
        inputs = {"image_sizes": torch.tensor(sizes), "batch_num_images": per_sample}
        layouts = onevision_token_layouts(model.config, inputs)
        with torch.no_grad():
            packed = model.model.get_image_features(
                pixel_values=pixels,
                image_sizes=torch.tensor(sizes),
                batch_num_images=per_sample,
                vision_feature_layer=-1,
                vision_feature_select_strategy="full",
            ).pooler_output
        assert [x.length for x in layouts] == [f.shape[0] for f in packed]
    assert [len(x.panels) for x in layouts] == [2, 1, 1]  # image 0 alone: crops (shrunk)


def tiny_internvl():
    pytest.importorskip("transformers.models.internvl")
    vision = transformers.InternVLVisionConfig(
        hidden_size=16,
        intermediate_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
    )
    text = transformers.Qwen2Config(
        vocab_size=32,
        hidden_size=16,
        intermediate_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    config = transformers.InternVLConfig(vision_config=vision, text_config=text, image_token_id=3)
    return transformers.InternVLForConditionalGeneration(config).eval()


def test_internvl_adapter_layouts():
    from prunekit.adapters.internvl import InternVLAdapter, tiled_layout

    model = tiny_internvl()
    # 2 x 2 tokens per 32 px tile; image 0: 1 tile; image 1: 2 x 3 tiles + thumbnail
    ids = torch.tensor([[1, 9] + [3] * 4 + [10, 11] + [3] * 28 + [12]])
    adapter = InternVLAdapter(model, budget_scope="tile")
    with pytest.raises(ValueError, match="image_sizes"):
        adapter.token_layouts({"input_ids": ids})
    layouts = adapter.token_layouts(
        {"input_ids": ids}, image_sizes=[(30, 30), (64, 96)], max_tiles=6
    )
    assert [x.rows for x in layouts] == [1, 7]
    assert layouts[1].panels[4].tokens.tolist() == [[16, 17], [18, 19]]  # tile (1, 1)
    assert layouts[1].panels[4].box == (32, 32, 64, 64) and layouts[1].panels[4].resize == (96, 64)
    assert layouts[1].groups == ("2 x 3 tiles", "thumbnail")
    assert layouts[1].cells()[27].tolist() == [6, 1, 1]  # the thumbnail's last token
    with pytest.raises(ValueError, match="does not match"):
        adapter.token_layouts({"input_ids": ids}, image_sizes=[(30, 30), (64, 64)], max_tiles=6)
    assert tiled_layout((1, 1), 4, 32).groups == ("1 x 1 tile",)


def test_encoder_adapter_layouts():
    from tiny_models import tiny_clip_vision_config

    model = transformers.CLIPVisionModel(
        tiny_clip_vision_config(image_size=32, patch_size=8)
    ).eval()
    pixels = torch.randn(3, 3, 32, 32)
    with prunekit.attach(model, "random", budget=0.5, layer=1) as handle, torch.no_grad():
        model(pixel_values=pixels)
    layouts = token_layouts(model, {"pixel_values": pixels}, adapter_options={"layer": 1})
    assert len(layouts) == 3 and layouts[0].panels[0].grid == (4, 4)
    assert [x.length for x in layouts] == handle.results[0].valid_counts.tolist()  # patches only
    assert (
        item_sequences(layouts, handle.results[0].mask, handle.results[0].valid_counts)[2].sum()
        == 8
    )


def _timm():
    from timm.models.vision_transformer import VisionTransformer

    model = VisionTransformer(img_size=32, patch_size=8, embed_dim=16, depth=2, num_heads=2)
    return model.eval(), lambda m, x: m(x)


def _open_clip():
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    vision = CLIPVisionCfg(layers=2, width=16, patch_size=8, image_size=32, head_width=8)
    text = CLIPTextCfg(context_length=8, vocab_size=32, width=16, heads=2, layers=1)
    return CLIP(embed_dim=8, vision_cfg=vision, text_cfg=text).eval(), lambda m, x: m.encode_image(
        x
    )


def _dinov2_registers():
    config = transformers.Dinov2WithRegistersConfig(
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
        num_register_tokens=2,
    )
    model = transformers.Dinov2WithRegistersModel(config).eval()
    return model, lambda m, x: m(pixel_values=x)


@pytest.mark.parametrize("build", [_timm, _open_clip, _dinov2_registers])
def test_other_encoder_layouts(build):
    """timm, open_clip and a DINOv2 with registers: the patch grid, prefix tokens left out,
    exactly the tokens the adapter prunes."""
    model, forward = build()
    pixels = torch.randn(2, 3, 32, 32)
    with prunekit.attach(model, "random", budget=0.5, layer=1) as handle, torch.no_grad():
        forward(model, pixels)
    layouts = token_layouts(model, {"pixel_values": pixels}, adapter_options={"layer": 1})
    assert [x.panels[0].grid for x in layouts] == [(4, 4), (4, 4)]
    assert [x.length for x in layouts] == handle.results[0].valid_counts.tolist() == [16, 16]


def test_families_without_layout_say_so():
    from prunekit.adapters.base import Adapter

    class Plain(Adapter):
        family = "plain"

        @classmethod
        def matches(cls, model):
            return False

        def install(self, handle):
            return []

    with pytest.raises(NotImplementedError, match="'plain' adapter"):
        Plain(torch.nn.Linear(1, 1)).token_layouts({})


def test_size_based_layouts_default_to_the_released_models():
    """With no config given: LLaVA-1.6 (336 px crops of 14 px patches, its pinpoints) and
    InternVL3 (448 px tiles of 256 tokens, 1 to 12 tiles)."""
    from prunekit.adapters import internvl, llava_next

    assert internvl.tile_grid((400, 600)) == (2, 3)
    cells = llava_next.image_layout((400, 600)).cells()
    assert (cells == llava_next.anyres_layout((400, 600), (2, 2), 24, 336).cells()).all()
    tiles = internvl.image_layout((400, 600))
    assert same_layout(tiles, internvl.tiled_layout((2, 3), 256, 448))
    assert internvl.image_layout((30, 30)).length == 256  # one tile, no thumbnail
    with pytest.raises(ValueError, match="image_size or grid"):
        internvl.image_layout(None)
    with pytest.raises(ValueError, match="crop_px >= patch_px"):
        llava_next.image_layout((400, 600), crop_px=8, patch_px=14)
    assert TILE_GAP > 0


def same_layout(a: TokenLayout, b: TokenLayout) -> bool:
    """Field by field (panels hold arrays, so dataclass equality cannot compare them)."""
    fields = ("picture", "resize", "canvas", "box", "group", "cell")
    return (a.length, a.groups, a.rows, len(a.panels)) == (
        b.length,
        b.groups,
        b.rows,
        len(b.panels),
    ) and all(
        np.array_equal(p.tokens, q.tokens) and all(getattr(p, f) == getattr(q, f) for f in fields)
        for p, q in zip(a.panels, b.panels)
    )


def test_adapter_and_size_based_layouts_agree():
    """One derivation per family: a tiny model's adapter gives, image by image, exactly the
    layout the size-based function gives with the model's numbers."""
    from prunekit.adapters import internvl, llava_next

    sizes = [(40, 20), (30, 30), (64, 64), (20, 70), (33, 61)]
    adapter = llava_next.LlavaNextAdapter(tiny_next())
    layouts = adapter.token_layouts({"image_sizes": torch.tensor(sizes)})
    assert len(layouts) == len(sizes)
    for size, layout in zip(sizes, layouts):
        expected = llava_next.image_layout(size, grid_pinpoints=PINPOINTS, crop_px=32, patch_px=8)
        assert same_layout(layout, expected)
    assert {len(x.panels) for x in layouts} == {2, 3, 5}  # 1 x 1, 1 x 2 / 2 x 1, 2 x 2 crops

    model = tiny_internvl()
    sizes = [(30, 30), (64, 96), (96, 32)]  # 1 tile; 2 x 3 + thumbnail; 3 x 1 + thumbnail
    per_image = [
        internvl.image_layout(s, tokens_per_tile=4, max_tiles=6, tile_px=32) for s in sizes
    ]
    assert [x.length // 4 for x in per_image] == [1, 7, 4]
    ids = [1]
    for x in per_image:
        ids += [9] + [3] * x.length + [10]
    for scope in ("image", "tile"):
        adapter = internvl.InternVLAdapter(model, budget_scope=scope)
        layouts = adapter.token_layouts(
            {"input_ids": torch.tensor([ids])}, image_sizes=sizes, max_tiles=6
        )
        for layout, size in zip(layouts, sizes):
            expected = internvl.image_layout(
                size, tokens_per_tile=4, max_tiles=6, tile_px=32, rows_per_tile=scope == "tile"
            )
            assert same_layout(layout, expected)
        assert [x.rows for x in layouts] == ([1, 1, 1] if scope == "image" else [1, 7, 4])


# --------------------------------------------------------------------------- prunekit viz --model


@pytest.fixture(scope="module")
def qwen_checkpoint(tmp_path_factory):
    from prunekit.models.tiny import save_tiny_checkpoint

    return save_tiny_checkpoint("qwen2_5_vl", tmp_path_factory.mktemp("qwen") / "ckpt")


def test_viz_command_draws_a_qwen_checkpoint_with_its_layout(
    qwen_checkpoint, tmp_path, monkeypatch, capsys
):
    """`prunekit viz --model` on a tiny Qwen2.5-VL checkpoint: the picture is the adapter's
    layout (the processor's merged grid, aspect ratio kept), one row per pruner, with exactly
    the kept tokens bright."""
    from prunekit.adapters.base import Adapter
    from prunekit.adapters.qwen2_5_vl import Qwen2_5_VLAdapter
    from prunekit.vizcmd import main

    if Qwen2_5_VLAdapter.token_layouts is Adapter.token_layouts:  # until the adapter has it
        monkeypatch.setattr(
            Qwen2_5_VLAdapter,
            "token_layouts",
            lambda self, inputs, **options: mrope_token_layouts(self.model.config, inputs),
            raising=False,
        )
    photo = tmp_path / "photo.png"
    Image.new("RGB", (56, 40), (0, 255, 0)).save(photo)
    out = tmp_path / "viz.png"
    argv = ["--model", str(qwen_checkpoint), "--pruners", "random,resprune", "--budget", "12"]
    assert main([*argv, "--image", str(photo), "--out", str(out), "--size", "70"]) == 0
    printed = capsys.readouterr().out
    assert "Qwen2_5_VLForConditionalGeneration" in printed
    assert "random       kept 12 / 35 tokens" in printed  # a 10 x 14 patch grid: 5 x 7 merged
    picture = np.asarray(Image.open(out).convert("RGB"))
    t, s, g = TITLE_HEIGHT, 70, 8
    assert picture.shape[:2] == (2 * (2 * t + 50) + g, s)  # 5 x 7 tokens of 10 px
    for row in range(2):
        y0 = row * (2 * t + 50 + g) + 2 * t
        bright = sum(
            int(picture[y0 + 10 * r + 5, 10 * c + 5, 1]) > 200 for r in range(5) for c in range(7)
        )
        assert bright == 12


def test_viz_command_draws_internvl_tiles(tmp_path, capsys):
    """`prunekit viz --model` on a tiny InternVL checkpoint: the tiles' arrangement comes from
    the picture's size and the processor's min / max patches (the inputs only count tiles)."""
    from prunekit.adapters.internvl import tile_grid
    from prunekit.models.tiny import save_tiny_checkpoint
    from prunekit.vizcmd import main

    checkpoint = save_tiny_checkpoint("internvl", tmp_path / "ckpt")
    processor = transformers.AutoProcessor.from_pretrained(checkpoint).image_processor
    photo = tmp_path / "photo.png"
    Image.new("RGB", (96, 40), (0, 255, 0)).save(photo)
    out = tmp_path / "viz.png"
    argv = ["--model", str(checkpoint), "--pruners", "random", "--image", str(photo)]
    assert main([*argv, "--out", str(out), "--size", "30"]) == 0
    assert "wrote" in capsys.readouterr().out
    rows, cols = tile_grid(
        (40, 96), min_tiles=processor.min_patches, max_tiles=processor.max_patches, tile_px=32
    )
    assert rows * cols > 1  # tiles and a thumbnail
    s = 30
    width = cols * s + (cols - 1) * TILE_GAP + GROUP_GAP + s
    height = 2 * TITLE_HEIGHT + rows * s + (rows - 1) * TILE_GAP
    assert Image.open(out).size == (width, height)
