"""prunekit.attach on a tiny random Qwen2.5-VL (dynamic resolution, 3-D M-RoPE).

The reference is independent of the adapter: the model's own image features and its own
``get_rope_index`` positions on the unpruned prompt, the kept rows and their positions gathered,
then a greedy loop without KV cache over ``inputs_embeds`` with explicit 3-D ``position_ids``
(first shown to reproduce the unpruned ``generate`` exactly).
"""

from __future__ import annotations

import pytest
import torch
import transformers

import prunekit
from prunekit.adapters.attach import find_adapter
from prunekit.adapters.qwen2_5_vl import Qwen2_5_VLAdapter
from prunekit.core.points import IN_LLM

BOS, PAD = 1, 0
IMAGE, VIDEO, VISION_START, VISION_END = 4, 5, 6, 7
MERGE = 2  # spatial_merge_size: 2 x 2 patches -> one token
PATCH_DIM = 3 * 1 * 2 * 2  # channels x temporal_patch_size x patch_size^2
NEW = 6
GEN = dict(max_new_tokens=NEW, do_sample=False, eos_token_id=None, pad_token_id=PAD)


class Grid(tuple):
    """An image of patch grid (t, h, w) inside a prompt: its pads, between vision start and end."""

    @property
    def tokens(self) -> int:
        return self[0] * self[1] * self[2] // MERGE**2


class Video(Grid):
    """A video of merged-token grid (t, h, w): t temporal slices ("frames") of h * w / 4 tokens,
    ``seconds`` apart (the processor's ``second_per_grid_ts``)."""

    def __new__(cls, thw, seconds=0.5):
        video = super().__new__(cls, thw)
        video.seconds = seconds
        return video

    @property
    def frame_tokens(self) -> int:
        return self[1] * self[2] // MERGE**2


# a prompt is a list of text ids and images; images of different sizes (ragged grids)
SINGLE = ([9, Grid((1, 4, 6)), 10, 11, 12],)
RAGGED = ([9, Grid((1, 4, 6)), 10, 11, 12, 13, 14], [15, 16, Grid((1, 6, 8)), 17])
TWO_IMAGES = ([9, Grid((1, 4, 4)), 10, Grid((1, 6, 4)), 11, 12], [13, Grid((1, 4, 8)), 14])
# videos: alone, and mixed with images in a ragged batch (image first, then video first)
ONE_VIDEO = ([9, Video((3, 4, 4)), 10, 11],)
LONG_VIDEO = ([9, Video((3, 4, 4), seconds=1.0), 10, 11],)  # t positions beyond the text's
MIXED = (
    [9, Grid((1, 4, 6)), 10, Video((2, 4, 6), seconds=1.0), 11],
    [12, Video((3, 4, 4)), 13, 14, Grid((1, 4, 4)), 15],
)


def tiny_qwen2_5_vl(
    seed: int = 0, attn: str = "sdpa"
) -> transformers.Qwen2_5_VLForConditionalGeneration:
    """2 vision blocks (one windowed, one full), 2 decoder layers, float64 and a large
    initializer range so that positions and every image token change the output."""
    torch.manual_seed(seed)
    vision = dict(
        depth=2,
        hidden_size=16,
        intermediate_size=32,
        num_heads=2,
        patch_size=2,
        spatial_merge_size=MERGE,
        temporal_patch_size=1,
        window_size=8,
        out_hidden_size=32,
        fullatt_block_indexes=[1],
        initializer_range=0.2,
    )
    text = dict(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=512,
        initializer_range=0.2,
        pad_token_id=PAD,
        bos_token_id=BOS,
        eos_token_id=None,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
    )
    config = transformers.Qwen2_5_VLConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=IMAGE,
        video_token_id=VIDEO,
        vision_start_token_id=VISION_START,
        vision_end_token_id=VISION_END,
    )
    # sdpa, not eager: eager's softmax runs in float32, where float64's mask value is -inf,
    # so a left-padded float64 batch gives NaN on its padded rows, and then on the whole row
    config._attn_implementation = attn
    return transformers.Qwen2_5_VLForConditionalGeneration(config).eval().double()


@pytest.fixture(scope="module")
def model():
    return tiny_qwen2_5_vl()


def batch(prompts=RAGGED, seed=0):
    """Left-padded ids with <|vision_start|> + pads + <|vision_end|> per image or video,
    flattened patches and grids, as the Qwen processor lays them out."""
    rows, grids, videos = [], [], []
    for prompt in prompts:
        row = [BOS]
        for item in prompt:
            if isinstance(item, Video):
                row += [VISION_START] + [VIDEO] * item.tokens + [VISION_END]
                videos.append(item)
            elif isinstance(item, Grid):
                row += [VISION_START] + [IMAGE] * item.tokens + [VISION_END]
                grids.append(item)
            else:
                row.append(item)
        rows.append(row)
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), PAD, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, width - len(r) :] = torch.tensor(r)
        mask[b, width - len(r) :] = 1
    inputs = {
        "input_ids": ids,
        "attention_mask": mask,
        "mm_token_type_ids": (ids == IMAGE).long() + 2 * (ids == VIDEO).long(),
    }
    generator = torch.Generator().manual_seed(seed)
    for items, pixels, grid in (
        (grids, "pixel_values", "image_grid_thw"),
        (videos, "pixel_values_videos", "video_grid_thw"),
    ):
        if items:
            inputs[grid] = torch.tensor(items)
            n_patches = int(inputs[grid].prod(dim=1).sum())
            inputs[pixels] = torch.randn(
                n_patches, PATCH_DIM, dtype=torch.float64, generator=generator
            )
    if videos:
        inputs["second_per_grid_ts"] = torch.tensor([v.seconds for v in videos])
    return inputs


def clone(inputs):
    return {k: v.clone() for k, v in inputs.items()}


def kept_of(handle):
    (result,) = handle.results
    return [row.tolist() for row in result.split()]


@torch.no_grad()
def reference_prompt(model, inputs, kept=None, positions="original", scope="frame"):
    """Embeddings, mask and (3, B, L) positions of the pruned prompt, built by hand from the
    model's own features and its own get_rope_index on the unpruned prompt; kept=None keeps all.

    ``kept`` has one list of kept indices per pruning row, in placeholder order: per image,
    and per video frame (``scope="frame"``) or per whole video (``"clip"``)."""
    images, units = [], []  # per image; per video frame or clip
    if "pixel_values" in inputs:
        images = list(
            model.model.get_image_features(
                inputs["pixel_values"], inputs["image_grid_thw"], return_dict=True
            ).pooler_output
        )
    if "pixel_values_videos" in inputs:
        videos = model.model.get_video_features(
            inputs["pixel_values_videos"], inputs["video_grid_thw"], return_dict=True
        ).pooler_output
        for video, (t, _, _) in zip(videos, inputs["video_grid_thw"].tolist()):
            units += list(video.chunk(t)) if scope == "frame" else [video]
    full, _ = model.model.get_rope_index(
        inputs["input_ids"],
        mm_token_type_ids=inputs["mm_token_type_ids"],
        image_grid_thw=inputs.get("image_grid_thw"),
        video_grid_thw=inputs.get("video_grid_thw"),
        second_per_grid_ts=inputs.get("second_per_grid_ts"),
        attention_mask=inputs["attention_mask"],
    )
    embed = model.get_input_embeddings()
    images, units = iter(images), iter(units)
    rows, row_index, current, token = [], -1, None, 0
    for b in range(inputs["input_ids"].shape[0]):
        vectors, pos = [], []
        for col in inputs["attention_mask"][b].nonzero()[:, 0].tolist():
            t = int(inputs["input_ids"][b, col])
            if t in (IMAGE, VIDEO):
                if current is None:  # the next pruning row starts
                    current, token = next(images if t == IMAGE else units), 0
                    row_index += 1
                if kept is None or token in kept[row_index]:
                    vectors.append(current[token])
                    pos.append(full[:, b, col])
                token += 1
                if token == current.shape[0]:
                    current = None
            else:
                vectors.append(embed(torch.tensor(t)))
                pos.append(full[:, b, col])
        rows.append((torch.stack(vectors), torch.stack(pos, dim=1)))
    assert current is None and next(images, None) is None and next(units, None) is None
    assert kept is None or row_index + 1 == len(kept)
    width = max(v.shape[0] for v, _ in rows)
    batch_size = len(rows)
    embeds = embed(torch.full((batch_size, width), PAD)).clone()
    mask = torch.zeros(batch_size, width, dtype=torch.long)
    position_ids = torch.zeros(3, batch_size, width, dtype=torch.long)
    for b, (vectors, pos) in enumerate(rows):
        n = vectors.shape[0]
        embeds[b, width - n :] = vectors
        mask[b, width - n :] = 1
        if positions == "original":
            position_ids[:, b, width - n :] = pos
        else:
            position_ids[:, b, width - n :] = torch.arange(n)
    return embeds, mask, position_ids


@torch.no_grad()
def greedy_without_cache(model, embeds, mask, position_ids, steps=NEW):
    """Greedy decoding, the whole sequence recomputed at every step (no KV cache), each new
    token one position after the last one on every axis."""
    new = []
    for _ in range(steps):
        logits = model(
            inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids, use_cache=False
        ).logits[:, -1]
        assert not logits.isnan().any()  # argmax of NaN would make every run agree
        token = logits.argmax(dim=-1)
        new.append(token)
        embeds = torch.cat([embeds, model.get_input_embeddings()(token)[:, None]], dim=1)
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        position_ids = torch.cat([position_ids, position_ids[..., -1:] + 1], dim=-1)
    return torch.stack(new, dim=1)


# -- the reference itself --------------------------------------------------------------------
@pytest.mark.parametrize(
    "prompts",
    [SINGLE, RAGGED, TWO_IMAGES, ONE_VIDEO, LONG_VIDEO, MIXED],
    ids=["B1", "ragged", "two_images", "video", "long_video", "mixed"],
)
def test_reference_loop_reproduces_unpruned_generate(model, prompts):
    inputs = batch(prompts)
    with torch.no_grad():
        unpruned = model.generate(**clone(inputs), **GEN)[:, inputs["input_ids"].shape[1] :]
    assert torch.equal(greedy_without_cache(model, *reference_prompt(model, inputs)), unpruned)
    # and positions matter: 1-D positions give other tokens
    embeds, mask, position_ids = reference_prompt(model, inputs, positions="contiguous")
    assert not torch.equal(greedy_without_cache(model, embeds, mask, position_ids), unpruned)


def test_registered_and_found(model):
    assert "qwen2_5_vl" in prunekit.list_adapters()
    assert find_adapter(model) is Qwen2_5_VLAdapter


def test_image_features_are_what_the_model_scatters(model):
    inputs = batch()
    adapter = Qwen2_5_VLAdapter(model)
    vision = {k: inputs[k] for k in ("pixel_values", "image_grid_thw")}
    got = adapter.image_features(vision, dict(inputs))
    assert [f.shape[0] for f in got.features] == [6, 12]
    seen = {}
    hook = model.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.update(kwargs), with_kwargs=True
    )
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        hook.remove()
    scattered = seen["inputs_embeds"][inputs["input_ids"] == IMAGE]
    assert torch.equal(torch.cat(got.features), scattered)
    assert torch.equal(got.positions, seen["position_ids"])  # the model's own 3-D positions


# -- pruned generate against the reference -----------------------------------------------------
@pytest.mark.parametrize("positions", ["original", "contiguous"])
@pytest.mark.parametrize("budget", [0.5, 2])
@pytest.mark.parametrize(
    "prompts", [SINGLE, RAGGED, TWO_IMAGES], ids=["B1", "ragged", "two_images"]
)
def test_pruned_generate_equals_reference(model, prompts, budget, positions):
    inputs = batch(prompts)
    options = {} if positions == "original" else {"positions": positions}
    with torch.no_grad(), prunekit.attach(model, "resprune", budget=budget, **options) as handle:
        got = model.generate(**clone(inputs), **GEN)
    kept = kept_of(handle)
    sizes = [item.tokens for prompt in prompts for item in prompt if isinstance(item, Grid)]
    assert [len(k) for k in kept] == [prunekit.num_kept(n, budget) for n in sizes]
    expected = greedy_without_cache(model, *reference_prompt(model, inputs, kept, positions))
    # the caller's layout: their input_ids as given, then the new tokens
    assert torch.equal(got[:, : inputs["input_ids"].shape[1]], inputs["input_ids"])
    assert torch.equal(got[:, inputs["input_ids"].shape[1] :], expected)


def test_original_positions_are_the_default_and_matter(model):
    inputs = batch()
    with torch.no_grad(), prunekit.attach(model, "resprune", budget=0.5) as handle:
        original = model.generate(**clone(inputs), **GEN)
    embeds, mask, _ = reference_prompt(model, inputs, kept_of(handle), "original")
    _, _, contiguous = reference_prompt(model, inputs, kept_of(handle), "contiguous")
    other = greedy_without_cache(model, embeds, mask, contiguous)
    assert not torch.equal(original[:, inputs["input_ids"].shape[1] :], other)


@pytest.mark.parametrize("positions", ["original", "contiguous"])
def test_pruned_forward_equals_reference_forward(model, positions):
    inputs = batch()
    with (
        torch.no_grad(),
        prunekit.attach(model, "resprune", budget=2, positions=positions) as handle,
    ):
        logits = model(**clone(inputs)).logits
    embeds, mask, position_ids = reference_prompt(model, inputs, kept_of(handle), positions)
    with torch.no_grad():
        expected = model(
            inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids
        ).logits
    real = mask.bool()
    assert not real.all()  # the shortened prompts have different lengths: left padding
    assert not logits[real].isnan().any()
    torch.testing.assert_close(logits[real], expected[real], rtol=0, atol=0)


@pytest.mark.parametrize("budget", [1.0, 12])
@pytest.mark.parametrize("prompts", [SINGLE, RAGGED], ids=["B1", "ragged"])
def test_full_budget_is_the_unpruned_model(model, prompts, budget):
    inputs = batch(prompts)
    with torch.no_grad():
        expected = model.generate(**clone(inputs), **GEN)
        with prunekit.attach(model, "resprune", budget=budget) as handle:
            got = model.generate(**clone(inputs), **GEN)
    assert torch.equal(got, expected)
    sizes = [item.tokens for prompt in prompts for item in prompt if isinstance(item, Grid)]
    assert handle.results[0].counts.tolist() == sizes


def test_kv_cache_equals_recomputation(model):
    inputs = batch()
    with torch.no_grad(), prunekit.attach(model, "resprune", budget=0.5):
        cached = model.generate(**clone(inputs), **GEN, use_cache=True)
        uncached = model.generate(**clone(inputs), **GEN, use_cache=False)
    assert torch.equal(cached, uncached)


@pytest.mark.parametrize("prompts", [RAGGED, TWO_IMAGES], ids=["ragged", "two_images"])
@pytest.mark.parametrize("budget", [None, 0.5, 2])
def test_batch_equals_each_prompt_alone(model, budget, prompts):
    def generate(inputs):
        if budget is None:
            return model.generate(**clone(inputs), **GEN)
        with prunekit.attach(model, "resprune", budget=budget):
            return model.generate(**clone(inputs), **GEN)

    inputs = batch(prompts)
    with torch.no_grad():
        together = generate(inputs)
    start = 0
    for b, prompt in enumerate(prompts):
        alone_inputs = batch((prompt,))
        n = int(alone_inputs["image_grid_thw"].prod(dim=1).sum())
        alone_inputs["pixel_values"] = inputs["pixel_values"][start : start + n]
        start += n
        with torch.no_grad():
            alone = generate(alone_inputs)
        assert together[b, -NEW:].tolist() == alone[0, -NEW:].tolist()


def test_model_restored_after_exit_and_on_error(model):
    inputs = batch()
    with torch.no_grad():
        before = model(**inputs).logits
        with (
            pytest.raises(RuntimeError, match="boom"),
            prunekit.attach(model, "resprune", budget=2),
        ):
            assert "forward" in vars(model) and "generate" in vars(model)
            model(**clone(inputs))
            raise RuntimeError("boom")
        assert "forward" not in vars(model) and "generate" not in vars(model)
        assert torch.equal(model(**inputs).logits, before)


def test_unsupported_inputs_are_refused(model):
    inputs = batch()
    without_types = {k: v for k, v in inputs.items() if k != "mm_token_type_ids"}
    with (
        prunekit.attach(model, "resprune", budget=2),
        pytest.raises(ValueError, match="mm_token_type_ids"),
    ):
        model(**without_types)
    # video pixels without video placeholders in the prompt
    with (
        prunekit.attach(model, "resprune", budget=2),
        pytest.raises(ValueError, match="0 video placeholders"),
    ):
        model(
            **inputs,
            pixel_values_videos=inputs["pixel_values"],
            video_grid_thw=inputs["image_grid_thw"],
        )


@pytest.mark.parametrize("prompts", [SINGLE, LONG_VIDEO], ids=["image", "video"])
def test_cached_decoding_continues_at_the_unpruned_positions(model, prompts):
    """After a pruned forward, the model's own cached decoding step (positions: cache length
    + ``rope_deltas``) continues where the unpruned prompt would: at the largest position + 1
    (for the video, its temporal axis reaches beyond the text after it). One unpadded prompt,
    and no attention mask in the step: with a mask, transformers 5.24's
    ``Qwen2_5_VLModel.compute_3d_position_ids`` returns positions for the whole mask, not the
    new token (the model's own cached forward fails the same way without prunekit)."""
    inputs = batch(prompts)
    _, own_delta = model.model.get_rope_index(
        inputs["input_ids"],
        mm_token_type_ids=inputs["mm_token_type_ids"],
        image_grid_thw=inputs.get("image_grid_thw"),
        video_grid_thw=inputs.get("video_grid_thw"),
        second_per_grid_ts=inputs.get("second_per_grid_ts"),
    )
    with torch.no_grad(), prunekit.attach(model, "resprune", budget=2) as handle:
        out = model(**clone(inputs), use_cache=True)
        embeds, mask, position_ids = reference_prompt(model, inputs, kept_of(handle))
        token = out.logits[:, -1].argmax(dim=-1)
        step = model(input_ids=token[:, None], cache=out.cache).logits[:, -1]
        embeds = torch.cat([embeds, model.get_input_embeddings()(token)[:, None]], dim=1)
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        next_position = position_ids.amax().expand(3, 1, 1) + 1
        position_ids = torch.cat([position_ids, next_position], dim=-1)
        expected = model(
            inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids, use_cache=False
        ).logits[:, -1]
    torch.testing.assert_close(step, expected, rtol=1e-9, atol=1e-9)
    dropped = inputs["input_ids"].shape[1] - (mask.shape[1] - 1)
    assert model.model.rope_deltas.tolist() == (own_delta + dropped).tolist()


def test_callers_position_ids_are_the_unpruned_positions(model):
    """Explicit position ids (the 4-row layout generate uses, or 3 rows) stand for the
    unpruned prompt's: the same result as letting the model compute them."""
    inputs = batch()
    own, _ = model.model.get_rope_index(
        inputs["input_ids"],
        mm_token_type_ids=inputs["mm_token_type_ids"],
        image_grid_thw=inputs["image_grid_thw"],
        attention_mask=inputs["attention_mask"],
    )
    text = (inputs["attention_mask"].cumsum(dim=1) - 1).clamp_min(0)
    with torch.no_grad(), prunekit.attach(model, "resprune", budget=2):
        expected = model.generate(**clone(inputs), **GEN)
        four_rows = model.generate(
            **clone(inputs), position_ids=torch.cat([text[None], own]), **GEN
        )
        no_types = {k: v for k, v in clone(inputs).items() if k != "mm_token_type_ids"}
        three_rows = model.generate(**no_types, position_ids=own.clone(), **GEN)
    assert torch.equal(four_rows, expected)
    assert torch.equal(three_rows, expected)


# -- video --------------------------------------------------------------------------------------
def rows_of(prompts, scope):
    """Tokens of each pruning row in placeholder order: per image, per video frame or clip."""
    sizes = []
    for prompt in prompts:
        for item in prompt:
            if isinstance(item, Video) and scope == "frame":
                sizes += [item.frame_tokens] * item[0]
            elif isinstance(item, Grid):
                sizes.append(item.tokens)
    return sizes


@pytest.mark.parametrize("budget", [0.5, 2])
@pytest.mark.parametrize("scope", ["frame", "clip"])
@pytest.mark.parametrize("prompts", [ONE_VIDEO, MIXED], ids=["video", "mixed"])
def test_pruned_video_generate_equals_reference(model, prompts, scope, budget):
    """Images keep their per-image budget; a video's budget applies per frame or per clip;
    the kept tokens keep their (t, h, w) positions (temporal axis spaced by the video's
    seconds per grid step)."""
    inputs = batch(prompts)
    with (
        torch.no_grad(),
        prunekit.attach(model, "resprune", budget=budget, budget_scope=scope) as handle,
    ):
        got = model.generate(**clone(inputs), **GEN)
    kept = kept_of(handle)
    assert [len(k) for k in kept] == [prunekit.num_kept(n, budget) for n in rows_of(prompts, scope)]
    expected = greedy_without_cache(model, *reference_prompt(model, inputs, kept, scope=scope))
    assert torch.equal(got[:, : inputs["input_ids"].shape[1]], inputs["input_ids"])
    assert torch.equal(got[:, inputs["input_ids"].shape[1] :], expected)


def test_video_contiguous_positions_and_frame_rows(model):
    """positions="contiguous" with a video; each frame row holds one temporal slice: the
    model's own positions of its kept tokens share one t."""
    inputs = batch(MIXED)
    with (
        torch.no_grad(),
        prunekit.attach(model, "resprune", budget=0.5, positions="contiguous") as handle,
    ):
        got = model.generate(**clone(inputs), **GEN)
    kept = kept_of(handle)
    expected = greedy_without_cache(model, *reference_prompt(model, inputs, kept, "contiguous"))
    assert torch.equal(got[:, inputs["input_ids"].shape[1] :], expected)
    # rows 0: image, 1-2: the first video's frames, 3-5: the second video's, 6: an image
    _, _, original = reference_prompt(model, inputs)
    is_video = inputs["input_ids"] == VIDEO
    t_of_video = [original[0, b][is_video[b]] for b in range(2)]
    frames = [t_of_video[0][: 2 * 6].view(2, 6), t_of_video[1].view(3, 4)]
    for frame_t in frames:
        assert (frame_t == frame_t[:, :1]).all() and frame_t[:, 0].unique().numel() == len(frame_t)


@pytest.mark.parametrize("scope", ["frame", "clip"])
def test_video_full_budget_is_the_unpruned_model(model, scope):
    inputs = batch(MIXED)
    with torch.no_grad():
        expected = model.generate(**clone(inputs), **GEN)
        with prunekit.attach(model, "resprune", budget=1.0, budget_scope=scope) as handle:
            got = model.generate(**clone(inputs), **GEN)
    assert torch.equal(got, expected)
    assert handle.results[0].counts.tolist() == rows_of(MIXED, scope)


def test_video_features_are_what_the_model_scatters(model):
    """Rows in placeholder order (image, frames, frames, image) are the model's own image and
    video features; the positions are those it passes to its language model."""
    inputs = batch(MIXED)
    adapter = Qwen2_5_VLAdapter(model)
    vision = {k: inputs[k] for k in Qwen2_5_VLAdapter.vision_kwargs}
    call = {k: v for k, v in inputs.items() if k not in vision}
    got = adapter.image_features(vision, call)
    assert [f.shape[0] for f in got.features] == rows_of(MIXED, "frame")
    seen = {}
    hook = model.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.update(kwargs), with_kwargs=True
    )
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        hook.remove()
    visual = (inputs["input_ids"] == IMAGE) | (inputs["input_ids"] == VIDEO)
    assert torch.equal(torch.cat(got.features), seen["inputs_embeds"][visual])
    assert torch.equal(got.positions, seen["position_ids"])


def test_video_batch_equals_each_prompt_alone_and_kv_cache(model):
    inputs = batch(MIXED)
    with torch.no_grad(), prunekit.attach(model, "resprune", budget=0.5, budget_scope="clip"):
        together = model.generate(**clone(inputs), **GEN)
        uncached = model.generate(**clone(inputs), **GEN, use_cache=False)
        assert torch.equal(together, uncached)
        image_start = video_start = 0
        for b, prompt in enumerate(MIXED):
            alone = batch((prompt,))
            n = int(alone["image_grid_thw"].prod(dim=1).sum())
            alone["pixel_values"] = inputs["pixel_values"][image_start : image_start + n]
            image_start += n
            n = int(alone["video_grid_thw"].prod(dim=1).sum())
            alone["pixel_values_videos"] = inputs["pixel_values_videos"][
                video_start : video_start + n
            ]
            video_start += n
            single = model.generate(**alone, **GEN)
            assert together[b, -NEW:].tolist() == single[0, -NEW:].tolist()


def test_video_forward_equals_reference_forward(model):
    inputs = batch(MIXED)
    with torch.no_grad(), prunekit.attach(model, "resprune", budget=2) as handle:
        logits = model(**clone(inputs)).logits
    embeds, mask, position_ids = reference_prompt(model, inputs, kept_of(handle))
    with torch.no_grad():
        expected = model(
            inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids
        ).logits
    real = mask.bool()
    assert not real.all()
    assert not logits[real].isnan().any()
    torch.testing.assert_close(logits[real], expected[real], rtol=0, atol=0)


def test_video_refusals(model):
    inputs = batch(ONE_VIDEO)
    with pytest.raises(ValueError, match="budget_scope"):
        prunekit.attach(model, "resprune", budget=2, budget_scope="video")
    no_grid = {k: v for k, v in inputs.items() if k != "video_grid_thw"}
    no_types = {k: v for k, v in inputs.items() if k != "mm_token_type_ids"}
    with prunekit.attach(model, "resprune", budget=2):
        with pytest.raises(ValueError, match="video_grid_thw"):
            model(**no_grid)
        with pytest.raises(ValueError, match="mm_token_type_ids"):
            model(**no_types)


# -- pruning inside the LLM (llm_layer=K, the FastV / DART point) --------------------------------
def causal(n):
    return torch.ones(n, n, dtype=torch.bool).tril()[None, None]


@torch.no_grad()
def run_layers(model, embeds, positions, layer, keep=None):
    """Logits of one unpadded prompt ``(1, n, d)`` with the decoder run by hand: layers < K on
    every token, layers >= K on the columns ``keep`` only, with their rotary embeddings (the
    model's own, of the unpruned 3-D positions) gathered; also the hidden states entering K."""
    lm = model.model.language_model
    cos, sin = lm.rotary_emb(embeds, positions)
    hidden = embeds
    for decoder_layer in lm.layers[:layer]:
        hidden = decoder_layer(
            hidden, attention_mask=causal(hidden.shape[1]), position_embeddings=(cos, sin)
        )
    entering = hidden
    if keep is not None:
        hidden, cos, sin = hidden[:, keep], cos[:, keep], sin[:, keep]
    for decoder_layer in lm.layers[layer:]:
        hidden = decoder_layer(
            hidden, attention_mask=causal(hidden.shape[1]), position_embeddings=(cos, sin)
        )
    return model.lm_head(lm.norm(hidden)), entering


def sample_prompt(model, inputs, b):
    """Sample ``b`` alone, unpadded: the model's own embeddings (features scattered), its own
    3-D positions, and its visual columns."""
    embeds, mask, positions = reference_prompt(model, inputs)
    real = mask[b].bool()
    ids = inputs["input_ids"][b][inputs["attention_mask"][b].bool()]
    visual = ((ids == IMAGE) | (ids == VIDEO)).nonzero()[:, 0]
    return embeds[b : b + 1, real], positions[:, b : b + 1, real], visual


@torch.no_grad()
def greedy_by_layers(model, embeds, positions, layer, keep, steps=NEW):
    """Greedy decoding without cache: every step reruns the whole sequence through
    :func:`run_layers`; new tokens are kept, one position after the last on every axis."""
    new = []
    for _ in range(steps):
        logits, _ = run_layers(model, embeds, positions, layer, keep.nonzero()[:, 0])
        assert not logits.isnan().any()
        token = logits[0, -1].argmax()
        new.append(token)
        embeds = torch.cat([embeds, model.get_input_embeddings()(token)[None, None]], dim=1)
        positions = torch.cat([positions, positions[..., -1:] + 1], dim=-1)
        keep = torch.cat([keep, keep.new_ones(1)])
    return torch.stack(new)


@pytest.mark.parametrize(
    ("prompts", "budget"),
    [(SINGLE, 3), (RAGGED, 0.5), (MIXED, 4)],
    ids=["B1", "ragged", "mixed_video"],
)
def test_llm_layer_generate_equals_layers_run_by_hand(model, prompts, budget):
    """Each sample's visual tokens (images and video together) share one budget; the kept
    tokens keep their 3-D positions in layers >= K, and decoding continues after the unpruned
    prompt's last position. The hand-run reference first reproduces the unpruned generate."""
    inputs = batch(prompts)
    width = inputs["input_ids"].shape[1]
    with torch.no_grad():
        unpruned = model.generate(**clone(inputs), **GEN)[:, width:]
        with prunekit.attach(model, "resprune", budget=budget, llm_layer=1) as handle:
            got = model.generate(**clone(inputs), **GEN)
            uncached = model.generate(**clone(inputs), **GEN, use_cache=False)
    assert handle.pruning_point == IN_LLM
    assert torch.equal(got, uncached)  # KV cache == recomputation
    assert torch.equal(got[:, :width], inputs["input_ids"])
    (result, *_) = handle.results
    for b, kept in enumerate(result.split()):
        embeds, positions, visual = sample_prompt(model, inputs, b)
        assert len(kept) == prunekit.num_kept(len(visual), budget)
        keep = torch.ones(embeds.shape[1], dtype=torch.bool)
        assert greedy_by_layers(model, embeds, positions, 1, keep).tolist() == unpruned[b].tolist()
        keep[visual] = False
        keep[visual[kept]] = True
        expected = greedy_by_layers(model, embeds, positions, 1, keep)
        assert got[b, width:].tolist() == expected.tolist()


def test_llm_layer_forward_selects_on_layer_k_input(model):
    """The selection runs on the hidden states entering layer K; logits == the hand-run decoder."""
    inputs = batch(SINGLE)
    pruner = prunekit.create_pruner("composed", relevance="none", selection="greedy_residual")
    with torch.no_grad(), prunekit.attach(model, pruner, budget=3, llm_layer=1) as handle:
        logits = model(**clone(inputs)).logits
    embeds, positions, visual = sample_prompt(model, inputs, 0)
    keep = torch.ones(embeds.shape[1], dtype=torch.bool)
    _, entering = run_layers(model, embeds, positions, 1)
    pick = pruner.prune(entering[:, visual].float(), budget=3)
    assert torch.equal(handle.results[0].indices, pick.indices)
    keep[visual[~pick.mask[0]]] = False
    expected, _ = run_layers(model, embeds, positions, 1, keep.nonzero()[:, 0])
    assert logits.shape == expected.shape == (1, embeds.shape[1] - 3, 64)
    torch.testing.assert_close(logits, expected, rtol=1e-10, atol=1e-10)
    # and the unpruned positions matter: renumbered positions give other logits
    renumbered = torch.arange(embeds.shape[1]).expand(3, 1, -1)
    other, _ = run_layers(model, embeds, renumbered, 1, keep.nonzero()[:, 0])
    assert not torch.allclose(other, expected, rtol=1e-6, atol=1e-6)


def test_fastv_ranks_the_models_own_attention(model):
    """FastV's last_query_attention == the attention weights of decoder layer K-1 that the
    model itself returns (an eager twin with output_attentions), for the last prompt token."""
    eager = tiny_qwen2_5_vl(attn="eager")
    inputs = batch(SINGLE)
    with torch.no_grad():
        attentions = eager(**clone(inputs), output_attentions=True).attentions
        with prunekit.attach(model, "fastv", budget=3, llm_layer=1) as handle:
            model(**clone(inputs))
    visual = (inputs["input_ids"][0] == IMAGE).nonzero()[:, 0]
    row = attentions[0][0, :, -1, visual]  # layer K-1 = 0, every head, last query
    assert not row.isnan().any()
    expected = torch.sort(row.mean(dim=0).float(), descending=True, stable=True).indices[:3]
    assert handle.results[0].indices[0].tolist() == expected.tolist()
    torch.testing.assert_close(
        handle.results[0].scores[0].double(), row.mean(dim=0), rtol=1e-5, atol=1e-6
    )


def test_dart_signals_are_the_models_own_keys_and_hidden_states(model):
    """DART's llm_image_keys / llm_text_keys are layer K-1's post-RoPE keys as the model caches
    them; llm_image_hidden the hidden states entering layer K through the final norm."""
    inputs = batch(SINGLE)
    pruner = prunekit.create_pruner("dart")
    seen = {}
    original_prune = pruner.prune

    def recording_prune(tokens, **kwargs):
        seen.update(kwargs["signals"])
        return original_prune(tokens, **kwargs)

    pruner.prune = recording_prune
    with torch.no_grad():
        cache = model(**clone(inputs), use_cache=True).cache
        with prunekit.attach(model, pruner, budget=3, llm_layer=1) as handle:
            got = model.generate(**clone(inputs), **GEN)
    keys = cache.layers[0].keys  # (1, kv heads, L, d), post-RoPE
    keys = keys.repeat_interleave(2, dim=1).transpose(1, 2)  # (1, L, heads, d)
    ids = inputs["input_ids"][0]
    visual = (ids == IMAGE).nonzero()[:, 0]
    text = torch.arange(int(visual[-1]) + 1, len(ids))  # real tokens after the first image
    torch.testing.assert_close(seen["llm_image_keys"], keys[:, visual], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(seen["llm_text_keys"], keys[:, text], rtol=1e-10, atol=1e-10)
    embeds, positions, _ = sample_prompt(model, inputs, 0)
    _, entering = run_layers(model, embeds, positions, 1)
    lm = model.model.language_model
    torch.testing.assert_close(
        seen["llm_image_hidden"], lm.norm(entering[:, visual]), rtol=1e-10, atol=1e-10
    )
    # and the pruned generate is the hand-run decoder with DART's choice
    keep = torch.ones(embeds.shape[1], dtype=torch.bool)
    keep[visual] = False
    keep[visual[handle.results[0].split()[0]]] = True
    expected = greedy_by_layers(model, embeds, positions, 1, keep)
    assert got[0, ids.shape[0] :].tolist() == expected.tolist()


def test_llm_layer_restored_and_refusals(model):
    inputs = batch(SINGLE)
    with torch.no_grad():
        before = model(**clone(inputs)).logits
        with (
            pytest.raises(RuntimeError, match="boom"),
            prunekit.attach(model, "resprune", budget=3, llm_layer=1),
        ):
            assert model(**clone(inputs)).logits.shape[1] < before.shape[1]
            raise RuntimeError("boom")
        assert all(not layer._forward_pre_hooks for layer in model.model.language_model.layers)
        assert torch.equal(model(**clone(inputs)).logits, before)
    for option in (dict(positions="contiguous"), dict(budget_scope="clip")):
        with pytest.raises(ValueError, match="pre-LLM pruning only"):
            prunekit.attach(model, "resprune", budget=3, llm_layer=1, **option)
    with pytest.raises(ValueError, match="llm_layer"):
        prunekit.attach(model, "resprune", budget=3, llm_layer=2)


# -- signals -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("pruner", "options", "signal"),
    [
        ("visionzip", {}, "cls_attention"),
        ("vispruner", {}, "cls_attention"),
        ("fastervlm", {}, "cls_attention"),
        ("fastervlm", {"llm_layer": 1}, "cls_attention"),
        ("fastv", {}, "last_query_attention"),
    ],
)
def test_missing_signals_are_refused_at_attach(model, pruner, options, signal):
    """Vision-tower signals do not exist for this family (no [CLS] token, tokens merged 2x2);
    the in-LLM ones only with llm_layer. attach refuses, naming the signal and the family."""
    with pytest.raises(ValueError, match=signal) as error:
        prunekit.attach(model, pruner, budget=2, **options)
    assert "qwen2_5_vl" in str(error.value)
    adapter = Qwen2_5_VLAdapter(model, **options)
    missing = prunekit.create_pruner(pruner).required_signals - adapter.available_signals()
    note = adapter.missing_signals_note(missing)
    assert signal in note
    assert ("[CLS]" in note) == (signal == "cls_attention")
    assert ("llm_layer=K" in note) == (signal == "last_query_attention")
    assert note in str(error.value)  # attach's message says why
