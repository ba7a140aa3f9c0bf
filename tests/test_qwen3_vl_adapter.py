"""prunekit.attach on a tiny random Qwen3-VL (dynamic resolution, 3-D M-RoPE, DeepStack).

The reference is independent of the adapter: the model's own image features, DeepStack features
and ``get_rope_index`` positions on the unpruned prompt, the kept rows, their positions and their
DeepStack rows gathered, then a greedy loop without KV cache calling the language model with
``inputs_embeds``, explicit 3-D ``position_ids``, ``visual_pos_masks`` and
``deepstack_visual_embeds`` (first shown to reproduce the unpruned ``generate`` exactly). Images
and videos (Qwen3-VL's frame-by-frame layout) at the pre-LLM point; ``llm_layer`` against the
decoder run by hand; the adapter contract case is ``CONTRACT_CASES`` at the end.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import transformers
from test_qwen2_5_vl_adapter import (
    BOS,
    IMAGE,
    MERGE,
    NEW,
    PAD,
    RAGGED,
    SINGLE,
    TWO_IMAGES,
    VIDEO,
    VISION_END,
    VISION_START,
    Grid,
    batch,
    clone,
    kept_of,
)
from tiny_models import Words

import prunekit
from prunekit.adapters.attach import find_adapter
from prunekit.adapters.qwen3_vl import Qwen3VLAdapter
from prunekit.testing import AdapterCase, ReferencePrompt, Refusal, kept_indices

GEN = dict(max_new_tokens=NEW, do_sample=False, eos_token_id=None, pad_token_id=PAD)
PROMPTS = pytest.mark.parametrize(
    "prompts", [SINGLE, RAGGED, TWO_IMAGES], ids=["B1", "ragged", "two_images"]
)


def tiny_qwen3_vl(seed: int = 0) -> transformers.Qwen3VLForConditionalGeneration:
    """2 vision blocks, both feeding DeepStack; 3 decoder layers, so that the DeepStack
    features added after decoder layers 0 and 1 both reach the logits; float64 and a large
    initializer range so that positions, DeepStack and every image token change the output."""
    torch.manual_seed(seed)
    vision = dict(
        depth=2,
        hidden_size=16,
        intermediate_size=32,
        num_heads=2,
        patch_size=2,
        spatial_merge_size=MERGE,
        temporal_patch_size=1,
        out_hidden_size=32,
        num_position_embeddings=16,
        deepstack_visual_indexes=[0, 1],
        initializer_range=0.2,
    )
    text = dict(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=512,
        initializer_range=0.2,
        pad_token_id=PAD,
        bos_token_id=BOS,
        eos_token_id=None,
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
        vision_start_token_id=VISION_START,
        vision_end_token_id=VISION_END,
    )
    # sdpa, not eager: eager + float64 + left padding gives NaN rows (see the Qwen2.5-VL tests)
    config._attn_implementation = "sdpa"
    return transformers.Qwen3VLForConditionalGeneration(config).eval().double()


@pytest.fixture(scope="module")
def model():
    return tiny_qwen3_vl()


@torch.no_grad()
def reference_prompt(model, inputs, kept=None, positions="original", scope="frame"):
    """The pruned prompt built by hand from the model's own features, DeepStack features and
    get_rope_index on the unpruned prompt: embeddings, mask, (3, B, L) positions, the visual
    positions and per DeepStack layer the kept rows in their order. ``kept``: per pruned row
    (an image, a video frame or, with ``scope="clip"``, a whole video, in placeholder order)
    the kept indices; None keeps all."""
    sources = {}  # placeholder id -> (features per item, DeepStack [layer][item], grids)
    for token, pixels, grid, encode in (
        (IMAGE, "pixel_values", "image_grid_thw", model.model.get_image_features),
        (VIDEO, "pixel_values_videos", "video_grid_thw", model.model.get_video_features),
    ):
        if inputs.get(pixels) is not None:
            output = encode(inputs[pixels], inputs[grid], return_dict=True)
            layers = [list(layer) for layer in output.deepstack_features]
            sources[token] = (list(output.pooler_output), layers, inputs[grid].tolist())
    n_layers = len(next(iter(sources.values()))[1])
    assert n_layers  # DeepStack is on in this model
    full, _ = model.model.get_rope_index(
        inputs["input_ids"],
        mm_token_type_ids=inputs["mm_token_type_ids"],
        image_grid_thw=inputs.get("image_grid_thw"),
        video_grid_thw=inputs.get("video_grid_thw"),
        attention_mask=inputs["attention_mask"],
    )
    embed = model.get_input_embeddings()
    at = {token: [0, 0] for token in sources}  # per kind: item, token within the item
    rows, deepstack, row = [], [[] for _ in range(n_layers)], -1
    for b in range(inputs["input_ids"].shape[0]):
        vectors, pos, visual = [], [], []
        for col in inputs["attention_mask"][b].nonzero()[:, 0].tolist():
            t = int(inputs["input_ids"][b, col])
            if t not in sources:
                vectors.append(embed(torch.tensor(t)))
                pos.append(full[:, b, col])
                visual.append(False)
                continue
            features, layers, grids = sources[t]
            item, j = at[t]
            frame = grids[item][1] * grids[item][2] // MERGE**2  # tokens of one frame
            per_frame = t == VIDEO and scope == "frame"
            if j == 0 or (per_frame and j % frame == 0):
                row += 1  # a new pruned row starts
            index = j % frame if per_frame else j
            if kept is None or index in kept[row]:
                vectors.append(features[item][j])
                pos.append(full[:, b, col])
                visual.append(True)
                for rows_of_layer, layer in zip(deepstack, layers):
                    rows_of_layer.append(layer[item][j])
            at[t] = [item + 1, 0] if j + 1 == features[item].shape[0] else [item, j + 1]
        rows.append((torch.stack(vectors), torch.stack(pos, dim=1), torch.tensor(visual)))
    assert all(at[t][0] == len(sources[t][0]) for t in sources)  # every item consumed
    assert kept is None or row + 1 == len(kept)
    width = max(v.shape[0] for v, _, _ in rows)
    batch_size = len(rows)
    embeds = embed(torch.full((batch_size, width), PAD)).clone()
    mask = torch.zeros(batch_size, width, dtype=torch.long)
    position_ids = torch.zeros(3, batch_size, width, dtype=torch.long)
    visual_pos_masks = torch.zeros(batch_size, width, dtype=torch.bool)
    for b, (vectors, pos, visual) in enumerate(rows):
        n = vectors.shape[0]
        embeds[b, width - n :] = vectors
        mask[b, width - n :] = 1
        visual_pos_masks[b, width - n :] = visual
        if positions == "original":
            position_ids[:, b, width - n :] = pos
        else:
            position_ids[:, b, width - n :] = torch.arange(n)
    deepstack = [torch.stack(rows_of_layer) for rows_of_layer in deepstack]
    return embeds, mask, position_ids, visual_pos_masks, deepstack


@torch.no_grad()
def logits_by_hand(model, embeds, mask, position_ids, visual_pos_masks, deepstack):
    """The language model called with explicit positions and DeepStack inputs, then the LM head."""
    hidden = model.model.language_model(
        inputs_embeds=embeds,
        attention_mask=mask,
        position_ids=position_ids,
        visual_pos_masks=visual_pos_masks,
        deepstack_visual_embeds=deepstack,
        use_cache=False,
    ).last_hidden_state
    return model.lm_head(hidden)


@torch.no_grad()
def greedy_without_cache(model, embeds, mask, position_ids, visual_pos_masks, deepstack, steps=NEW):
    """Greedy decoding, the whole sequence recomputed at every step (no KV cache), each new
    token one position after the last one on every axis and no visual token."""
    new = []
    for _ in range(steps):
        logits = logits_by_hand(model, embeds, mask, position_ids, visual_pos_masks, deepstack)
        logits = logits[:, -1]
        assert not logits.isnan().any()  # argmax of NaN would make every run agree
        token = logits.argmax(dim=-1)
        new.append(token)
        embeds = torch.cat([embeds, model.get_input_embeddings()(token)[:, None]], dim=1)
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        position_ids = torch.cat([position_ids, position_ids[..., -1:] + 1], dim=-1)
        visual_pos_masks = torch.cat(
            [visual_pos_masks, visual_pos_masks.new_zeros(mask.shape[0], 1)], dim=1
        )
    return torch.stack(new, dim=1)


def image_sizes(prompts):
    return [item.tokens for prompt in prompts for item in prompt if isinstance(item, Grid)]


# -- the reference itself --------------------------------------------------------------------
@PROMPTS
def test_reference_loop_reproduces_unpruned_generate(model, prompts):
    inputs = batch(prompts)
    with torch.no_grad():
        unpruned = model.generate(**clone(inputs), **GEN)[:, inputs["input_ids"].shape[1] :]
    embeds, mask, position_ids, visual, deepstack = reference_prompt(model, inputs)
    assert torch.equal(
        greedy_without_cache(model, embeds, mask, position_ids, visual, deepstack), unpruned
    )
    # and positions and DeepStack matter: 1-D positions, or no DeepStack, give other tokens
    _, _, contiguous, _, _ = reference_prompt(model, inputs, positions="contiguous")
    assert not torch.equal(
        greedy_without_cache(model, embeds, mask, contiguous, visual, deepstack), unpruned
    )
    no_deepstack = greedy_without_cache(model, embeds, mask, position_ids, visual, None)
    assert not torch.equal(no_deepstack, unpruned)


def test_registered_and_found(model):
    assert "qwen3_vl" in prunekit.list_adapters()
    assert find_adapter(model) is Qwen3VLAdapter


def _language_model_inputs(model, call):
    """The keyword arguments the language model receives during ``call()`` (its first call)."""
    seen = []
    hook = model.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs), with_kwargs=True
    )
    try:
        with torch.no_grad():
            call()
    finally:
        hook.remove()
    return seen[0]


def test_image_features_are_what_the_model_uses(model):
    inputs = batch()
    adapter = Qwen3VLAdapter(model)
    vision = {k: inputs[k] for k in ("pixel_values", "image_grid_thw")}
    with torch.no_grad():
        got = adapter.image_features(vision, dict(inputs))
    assert [f.shape[0] for f in got.features] == [6, 12]
    seen = _language_model_inputs(model, lambda: model(**clone(inputs)))
    is_image = inputs["input_ids"] == IMAGE
    assert torch.equal(torch.cat(got.features), seen["inputs_embeds"][is_image])
    assert torch.equal(got.positions, seen["position_ids"])  # the model's own 3-D positions
    assert torch.equal(seen["visual_pos_masks"], is_image)
    assert len(got.deepstack) == len(seen["deepstack_visual_embeds"]) == 2
    for per_image, expected in zip(got.deepstack, seen["deepstack_visual_embeds"]):
        assert torch.equal(torch.cat(per_image), expected)


# -- pruned generate against the reference -----------------------------------------------------
@pytest.mark.parametrize("positions", ["original", "contiguous"])
@pytest.mark.parametrize("budget", [0.5, 2])
@PROMPTS
def test_pruned_generate_equals_reference(model, prompts, budget, positions):
    inputs = batch(prompts)
    options = {} if positions == "original" else {"positions": positions}
    with torch.no_grad(), prunekit.attach(model, "resprune", budget=budget, **options) as handle:
        got = model.generate(**clone(inputs), **GEN)
    kept = kept_of(handle)
    assert [len(k) for k in kept] == [prunekit.num_kept(n, budget) for n in image_sizes(prompts)]
    expected = greedy_without_cache(model, *reference_prompt(model, inputs, kept, positions))
    # the caller's layout: their input_ids as given, then the new tokens
    assert torch.equal(got[:, : inputs["input_ids"].shape[1]], inputs["input_ids"])
    assert torch.equal(got[:, inputs["input_ids"].shape[1] :], expected)


@PROMPTS
def test_pruned_call_carries_the_kept_deepstack_rows(model, prompts):
    """What the language model receives in a pruned forward: the kept features, their
    positions, the shortened visual positions and the kept DeepStack rows, in order."""
    inputs = batch(prompts)
    with prunekit.attach(model, "resprune", budget=0.5) as handle:
        seen = _language_model_inputs(model, lambda: model(**clone(inputs)))
    embeds, mask, position_ids, visual, deepstack = reference_prompt(model, inputs, kept_of(handle))
    real = mask.bool()
    assert torch.equal(seen["attention_mask"], mask)
    assert torch.equal(seen["inputs_embeds"][real], embeds[real])
    assert torch.equal(seen["position_ids"][:, real], position_ids[:, real])
    assert torch.equal(seen["visual_pos_masks"], visual)
    assert len(seen["deepstack_visual_embeds"]) == len(deepstack)
    for got, expected in zip(seen["deepstack_visual_embeds"], deepstack):
        assert torch.equal(got, expected)


def test_merging_pruner_keeps_the_kept_tokens_deepstack_rows(model):
    """A pruner that merges dropped tokens into kept ones ("pooling") changes the kept
    features; their DeepStack rows stay the kept tokens' own."""
    inputs = batch(TWO_IMAGES)
    with prunekit.attach(model, "pooling", budget=0.5) as handle:
        seen = _language_model_inputs(model, lambda: model(**clone(inputs)))
    (result,) = handle.results
    assert result.values is not None
    embeds, _, _, visual, deepstack = reference_prompt(model, inputs, kept_of(handle))
    merged = torch.cat([v[:n] for v, n in zip(result.values, result.counts.tolist())])
    own = embeds[visual]  # the kept tokens' own features
    assert torch.equal(seen["inputs_embeds"][visual], merged.to(own.dtype))
    assert not torch.allclose(merged.to(own.dtype), own)
    assert torch.equal(seen["visual_pos_masks"], visual)
    for got, expected in zip(seen["deepstack_visual_embeds"], deepstack, strict=True):
        assert torch.equal(got, expected)


def test_original_positions_are_the_default_and_matter(model):
    inputs = batch()
    with torch.no_grad(), prunekit.attach(model, "resprune", budget=0.5) as handle:
        original = model.generate(**clone(inputs), **GEN)
    embeds, mask, _, visual, deepstack = reference_prompt(model, inputs, kept_of(handle))
    _, _, contiguous, _, _ = reference_prompt(model, inputs, kept_of(handle), "contiguous")
    other = greedy_without_cache(model, embeds, mask, contiguous, visual, deepstack)
    assert not torch.equal(original[:, inputs["input_ids"].shape[1] :], other)


@pytest.mark.parametrize("positions", ["original", "contiguous"])
def test_pruned_forward_equals_reference_forward(model, positions):
    inputs = batch()
    with (
        torch.no_grad(),
        prunekit.attach(model, "resprune", budget=2, positions=positions) as handle,
    ):
        logits = model(**clone(inputs)).logits
    reference = reference_prompt(model, inputs, kept_of(handle), positions)
    expected = logits_by_hand(model, *reference)
    real = reference[1].bool()
    assert not real.all()  # the shortened prompts have different lengths: left padding
    assert not logits[real].isnan().any()
    torch.testing.assert_close(logits[real], expected[real], rtol=0, atol=0)


@pytest.mark.parametrize("prompts", [RAGGED, TWO_IMAGES], ids=["ragged", "two_images"])
def test_kv_cache_equals_recomputation(model, prompts):
    """Without a cache, generate recomputes the whole pruned prompt at every step (the
    model's own path, DeepStack included): the same tokens as with the cache."""
    inputs = batch(prompts)
    with torch.no_grad(), prunekit.attach(model, "resprune", budget=0.5):
        cached = model.generate(**clone(inputs), **GEN, use_cache=True)
        uncached = model.generate(**clone(inputs), **GEN, use_cache=False)
    assert torch.equal(cached, uncached)


def test_model_restored_after_exit_and_on_error(model):
    inputs = batch()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        before = model(**clone(inputs)).logits
        with (
            pytest.raises(RuntimeError, match="boom"),
            prunekit.attach(model, "resprune", budget=2),
        ):
            assert "forward" in vars(model) and "generate" in vars(model)
            model.generate(**clone(inputs), **GEN)
            raise RuntimeError("boom")
        assert "forward" not in vars(model) and "generate" not in vars(model)
        assert "forward" not in vars(model.model.language_model)
        assert torch.equal(model(**clone(inputs)).logits, before)
    after = model.state_dict()
    assert state.keys() == after.keys()
    assert all(torch.equal(state[k], after[k]) for k in state)


def test_unsupported_inputs_are_refused(model):
    inputs = batch()
    without_types = {k: v for k, v in inputs.items() if k != "mm_token_type_ids"}
    without_grid = {k: v for k, v in inputs.items() if k != "image_grid_thw"}
    with prunekit.attach(model, "resprune", budget=2):
        with pytest.raises(ValueError, match="mm_token_type_ids"):
            model(**clone(without_types))
        with pytest.raises(ValueError, match="image_grid_thw"):
            model(**clone(without_grid))
        videos = {k: v for k, v in video_batch().items() if k != "video_grid_thw"}
        with pytest.raises(ValueError, match="video_grid_thw"):
            model(**videos)
        encoded = model.model.get_image_features(
            inputs["pixel_values"], inputs["image_grid_thw"], return_dict=True
        )
        with pytest.raises(ValueError, match="mm_encoder_outputs"):
            model.generate(**clone(inputs), mm_encoder_outputs={"image": encoded}, **GEN)
        without_pixels = {k: v for k, v in inputs.items() if k != "pixel_values"}
        with pytest.raises(ValueError, match="mm_encoder_outputs"):
            model(**clone(without_pixels), mm_encoder_outputs={"image": encoded})
    with pytest.raises(ValueError, match="llm_layer"):
        prunekit.attach(model, "resprune", budget=2, llm_layer=1).__enter__()
    with pytest.raises(ValueError, match="budget_scope"):
        prunekit.attach(model, "resprune", budget=2, budget_scope="video").__enter__()
    assert "forward" not in vars(model) and "generate" not in vars(model)


@pytest.mark.parametrize(
    ("pruner", "signal"), [("visionzip", "cls_attention"), ("fastv", "last_query_attention")]
)
def test_missing_signals_are_refused_at_attach(model, pruner, signal):
    """No vision-tower signals (no [CLS] token, tokens merged 2x2); the in-LLM ones only with
    llm_layer. attach refuses, naming the signal and the family."""
    with pytest.raises(ValueError, match=signal) as error:
        prunekit.attach(model, pruner, budget=2)
    assert "qwen3_vl" in str(error.value)
    assert "forward" not in vars(model) and "generate" not in vars(model)


def test_cached_decoding_continues_at_the_unpruned_positions(model):
    """After a pruned forward, the model's own cached decoding step (positions: cache length
    + ``rope_deltas``, no DeepStack) continues where the unpruned prompt would. One unpadded
    prompt and no attention mask in the step (transformers 5.24's compute_3d_position_ids
    returns positions for the whole mask there, with or without prunekit)."""
    inputs = batch(SINGLE)
    with torch.no_grad(), prunekit.attach(model, "resprune", budget=2) as handle:
        out = model(**clone(inputs), use_cache=True)
        embeds, mask, position_ids, visual, deepstack = reference_prompt(
            model, inputs, kept_of(handle)
        )
        token = out.logits[:, -1].argmax(dim=-1)
        step = model(input_ids=token[:, None], cache=out.cache).logits[:, -1]
    embeds = torch.cat([embeds, model.get_input_embeddings()(token)[:, None]], dim=1)
    mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
    position_ids = torch.cat([position_ids, position_ids[..., -1:] + 1], dim=-1)
    visual = torch.cat([visual, visual.new_zeros(1, 1)], dim=1)
    expected = logits_by_hand(model, embeds, mask, position_ids, visual, deepstack)[:, -1]
    torch.testing.assert_close(step, expected, rtol=1e-9, atol=1e-9)


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


# -- videos (Qwen3-VL layout: each frame after its timestamp, in its own vision start / end) ----
class Video(tuple):
    """A video of patch grid (t, h, w): t frames of h * w / 4 merged tokens each."""

    @property
    def frame_tokens(self) -> int:
        return self[1] * self[2] // MERGE**2


TIMESTAMP = 20  # the text token standing for frame f's "<x seconds>": TIMESTAMP + f
# a video alone, and an image then a video in a longer prompt (a ragged batch)
VIDEOS = ([9, Video((2, 4, 4)), 10, 11], [12, Grid((1, 4, 6)), 13, Video((3, 4, 6)), 14])


def video_batch(prompts=VIDEOS, seed=0):
    """Left-padded ids laid out as the Qwen3-VL processor does, with image and video pixels."""
    rows, images, videos = [], [], []
    for prompt in prompts:
        row = [BOS]
        for item in prompt:
            if isinstance(item, Video):
                for f in range(item[0]):
                    row += [TIMESTAMP + f, VISION_START, *[VIDEO] * item.frame_tokens, VISION_END]
                videos.append(item)
            elif isinstance(item, Grid):
                row += [VISION_START, *[IMAGE] * item.tokens, VISION_END]
                images.append(item)
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
        (images, "pixel_values", "image_grid_thw"),
        (videos, "pixel_values_videos", "video_grid_thw"),
    ):
        if items:
            inputs[grid] = torch.tensor(items)
            n_patches = int(inputs[grid].prod(dim=1).sum())
            inputs[pixels] = torch.randn(
                n_patches, 3 * 2 * 2, dtype=torch.float64, generator=generator
            )
    return inputs


def test_video_reference_loop_reproduces_unpruned_generate(model):
    inputs = video_batch()
    with torch.no_grad():
        unpruned = model.generate(**clone(inputs), **GEN)[:, inputs["input_ids"].shape[1] :]
    reference = reference_prompt(model, inputs)
    assert torch.equal(greedy_without_cache(model, *reference), unpruned)
    embeds, mask, position_ids, visual, _ = reference
    assert not torch.equal(
        greedy_without_cache(model, embeds, mask, position_ids, visual, None), unpruned
    )


@pytest.mark.parametrize(
    ("scope", "positions", "budget"),
    [("frame", "original", 0.5), ("frame", "contiguous", 2), ("clip", "original", 0.5)],
)
def test_video_pruned_generate_equals_reference(model, scope, positions, budget):
    """Each frame (or each whole video) has its budget, images theirs; the kept tokens keep
    their DeepStack rows and their 3-D positions (temporal axis included)."""
    inputs = video_batch()
    with (
        torch.no_grad(),
        prunekit.attach(
            model, "resprune", budget=budget, budget_scope=scope, positions=positions
        ) as handle,
    ):
        got = model.generate(**clone(inputs), **GEN)
        seen = _language_model_inputs(model, lambda: model(**clone(inputs)))
    kept = [row.tolist() for row in handle.results[0].split()]
    frames = [Video((1, 4, 4))] * 2 + [Grid((1, 4, 6))] + [Video((1, 4, 6))] * 3
    clips = [Video((2, 4, 4)), Grid((1, 4, 6)), Video((3, 4, 6))]
    units = frames if scope == "frame" else clips
    sizes = [u.tokens if isinstance(u, Grid) else u[0] * u.frame_tokens for u in units]
    assert [len(k) for k in kept] == [prunekit.num_kept(n, budget) for n in sizes]
    reference = reference_prompt(model, inputs, kept, positions, scope)
    expected = greedy_without_cache(model, *reference)
    assert torch.equal(got[:, : inputs["input_ids"].shape[1]], inputs["input_ids"])
    assert torch.equal(got[:, inputs["input_ids"].shape[1] :], expected)
    # what the language model receives: the kept visual positions and their DeepStack rows
    assert torch.equal(seen["visual_pos_masks"], reference[3])
    for got_rows, expected_rows in zip(seen["deepstack_visual_embeds"], reference[4], strict=True):
        assert torch.equal(got_rows, expected_rows)


def test_video_kv_cache_equals_recomputation(model):
    """Without a cache generate hands the pruned images and videos to every step (the model's
    own path, DeepStack included): the same tokens as with the cache."""
    inputs = video_batch()
    with torch.no_grad(), prunekit.attach(model, "resprune", budget=0.5):
        cached = model.generate(**clone(inputs), **GEN, use_cache=True)
        uncached = model.generate(**clone(inputs), **GEN, use_cache=False)
    assert torch.equal(cached, uncached)


# -- pruning inside the LLM (llm_layer=K, after the DeepStack layers) ---------------------------
def causal(n):
    return torch.ones(n, n, dtype=torch.bool).tril()[None, None]


def sample_prompt(model, inputs, b):
    """Sample ``b`` alone, unpadded: the model's own embeddings (features scattered), its own
    3-D positions, its visual columns and per DeepStack layer their rows."""
    embeds, mask, positions, visual, deepstack = reference_prompt(model, inputs)
    real = mask[b].bool()
    start, n = int(visual[:b].sum()), int(visual[b].sum())
    rows = [layer[start : start + n] for layer in deepstack]
    columns = visual[b, real].nonzero()[:, 0]
    return embeds[b : b + 1, real], positions[:, b : b + 1, real], columns, rows


@torch.no_grad()
def run_layers(model, embeds, positions, visual, deepstack, layer, keep=None):
    """Logits of one unpadded prompt with the decoder run by hand: after decoder layer i the
    DeepStack rows of layer i added at the visual columns; layers >= K on the columns ``keep``
    only, with their rotary embeddings (of the unpruned 3-D positions) gathered."""
    assert len(deepstack) <= layer  # DeepStack is over before the pruning point
    lm = model.model.language_model
    cos, sin = lm.rotary_emb(embeds, positions)
    hidden = embeds
    for i, decoder_layer in enumerate(lm.layers):
        if i == layer and keep is not None:
            hidden, cos, sin = hidden[:, keep], cos[:, keep], sin[:, keep]
        hidden = decoder_layer(
            hidden, attention_mask=causal(hidden.shape[1]), position_embeddings=(cos, sin)
        )
        if i < len(deepstack):
            hidden = hidden.clone()
            hidden[:, visual] += deepstack[i]
    return model.lm_head(lm.norm(hidden))


@torch.no_grad()
def greedy_by_layers(model, embeds, positions, visual, deepstack, layer, keep, steps=NEW):
    """Greedy decoding without cache through :func:`run_layers`; new tokens are kept, one
    position after the last on every axis."""
    new = []
    for _ in range(steps):
        logits = run_layers(
            model, embeds, positions, visual, deepstack, layer, keep.nonzero()[:, 0]
        )
        assert not logits.isnan().any()
        token = logits[0, -1].argmax()
        new.append(token)
        embeds = torch.cat([embeds, model.get_input_embeddings()(token)[None, None]], dim=1)
        positions = torch.cat([positions, positions[..., -1:] + 1], dim=-1)
        keep = torch.cat([keep, keep.new_ones(1)])
    return torch.stack(new)


@pytest.mark.parametrize(
    ("pruner", "prompts", "budget"),
    [
        ("resprune", SINGLE, 3),
        ("resprune", RAGGED, 0.5),
        ("dart", RAGGED, 2),
        ("fastv", RAGGED, 2),
    ],
    ids=["resprune-B1", "resprune-ragged", "dart-ragged", "fastv-ragged"],
)
def test_llm_layer_generate_equals_layers_run_by_hand(model, pruner, prompts, budget):
    """llm_layer=K >= the DeepStack layers: the model adds every DeepStack row, then the kept
    tokens go on with their 3-D positions. The hand-run reference first reproduces the
    unpruned generate, and without DeepStack it does not."""
    layer = Qwen3VLAdapter.deepstack_layers(model)
    inputs = batch(prompts)
    width = inputs["input_ids"].shape[1]
    with torch.no_grad():
        unpruned = model.generate(**clone(inputs), **GEN)[:, width:]
        with prunekit.attach(model, pruner, budget=budget, llm_layer=layer) as handle:
            got = model.generate(**clone(inputs), **GEN)
    # a generated placeholder id would be read as a new image (the tiny vocabulary's artefact)
    assert not ((got[:, width:] == IMAGE) | (got[:, width:] == VIDEO)).any()
    assert handle.pruning_point == "in_llm"
    assert torch.equal(got[:, :width], inputs["input_ids"])
    (result,) = handle.results
    for b, kept in enumerate(result.split()):
        embeds, positions, visual, deepstack = sample_prompt(model, inputs, b)
        assert len(kept) == prunekit.num_kept(len(visual), budget)
        keep = torch.ones(embeds.shape[1], dtype=torch.bool)
        every = greedy_by_layers(model, embeds, positions, visual, deepstack, layer, keep)
        assert every.tolist() == unpruned[b].tolist()
        no_deepstack = greedy_by_layers(model, embeds, positions, visual, [], layer, keep)
        assert no_deepstack.tolist() != unpruned[b].tolist()
        keep[visual] = False
        keep[visual[kept]] = True
        expected = greedy_by_layers(model, embeds, positions, visual, deepstack, layer, keep)
        assert got[b, width:].tolist() == expected.tolist()


def test_llm_layer_kv_cache_restored_and_refusals(model):
    inputs = batch(RAGGED)
    layer = Qwen3VLAdapter.deepstack_layers(model)
    with torch.no_grad():
        before = model(**clone(inputs)).logits
        with prunekit.attach(model, "resprune", budget=0.5, llm_layer=layer):
            cached = model.generate(**clone(inputs), **GEN)
            uncached = model.generate(**clone(inputs), **GEN, use_cache=False)
        assert torch.equal(cached, uncached)
        with (
            pytest.raises(RuntimeError, match="boom"),
            prunekit.attach(model, "resprune", budget=0.5, llm_layer=layer),
        ):
            assert model(**clone(inputs)).logits.shape[1] < before.shape[1]
            raise RuntimeError("boom")
        assert all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())
        assert torch.equal(model(**clone(inputs)).logits, before)
    with pytest.raises(ValueError, match="DeepStack"):
        prunekit.attach(model, "resprune", budget=0.5, llm_layer=layer - 1)
    with (
        prunekit.attach(model, "resprune", budget=0.5, llm_layer=layer),
        pytest.raises(ValueError, match="video"),
    ):
        model(**_with_video(clone(inputs)))


# -- the adapter contract (run by tests/test_adapter_contract.py) ------------------------------
#: prompt 0 has two images, prompt 1 one image of another size (a ragged batch)
CONTRACT_PROMPTS = (TWO_IMAGES[0], RAGGED[1])


def contract_inputs(model, which):
    """The contract's prompts ``which``, left-padded; each prompt's pixels seeded by its index."""
    inputs = batch(tuple(CONTRACT_PROMPTS[i] for i in which))
    pixels = [batch((CONTRACT_PROMPTS[i],), seed=i)["pixel_values"] for i in which]
    inputs["pixel_values"] = torch.cat(pixels)
    return inputs


@dataclass(frozen=True)
class DeepStackPrompt(ReferencePrompt):
    """A reference prompt plus its visual positions and per DeepStack layer the kept rows."""

    visual_pos_masks: torch.Tensor | None = None
    deepstack: list[torch.Tensor] | None = None
    image_embedding: torch.Tensor | None = None

    def model_kwargs(self, *, generate: bool = False) -> dict[str, torch.Tensor]:
        """The model's own pre-encoded-images argument carries the kept features and DeepStack
        rows: the visual positions hold the image token's embedding, where the model scatters
        them (it finds the placeholders of ``inputs_embeds`` by that embedding)."""
        from transformers.models.qwen3_vl.modeling_qwen3_vl import (
            BaseModelOutputWithDeepstackFeatures,
        )

        kwargs = super().model_kwargs(generate=generate)
        embeds = self.inputs_embeds.clone()
        features = embeds[self.visual_pos_masks]
        embeds[self.visual_pos_masks] = self.image_embedding
        kwargs["inputs_embeds"] = embeds
        encoded = BaseModelOutputWithDeepstackFeatures(
            pooler_output=(features,), deepstack_features=[[rows] for rows in self.deepstack]
        )
        kwargs["mm_encoder_outputs"] = {"image": encoded}
        return kwargs


def contract_reference(model, inputs, results, options):
    embeds, mask, position_ids, visual, deepstack = reference_prompt(
        model, inputs, kept_indices(results[0]), options.get("positions", "original")
    )
    return DeepStackPrompt(
        inputs_embeds=embeds,
        attention_mask=mask,
        position_ids=position_ids,
        visual_pos_masks=visual,
        deepstack=deepstack,
        image_embedding=model.get_input_embeddings().weight[IMAGE].detach(),
    )


def contract_decode(model, prompt, generate_kwargs):
    return greedy_without_cache(
        model,
        prompt.inputs_embeds,
        prompt.attention_mask,
        prompt.position_ids,
        prompt.visual_pos_masks,
        prompt.deepstack,
        steps=generate_kwargs["max_new_tokens"],
    )


def contract_features(model, inputs, options):
    """What the pruner must see: the model's own merged features, per image."""
    output = model.model.get_image_features(
        inputs["pixel_values"], inputs["image_grid_thw"], return_dict=True
    )
    return list(output.pooler_output)


#: prompt 0 reads "what red ball ? and", prompt 1 "blue box on table" (other nouns)
CONTRACT_WORDS = {
    9: "what",
    10: "red",
    11: "ball",
    12: "?",
    13: "and",
    15: "blue",
    16: "box",
    17: "table",
}


def _without_types(inputs):
    return {k: v for k, v in inputs.items() if k != "mm_token_type_ids"}


def _with_video(inputs):
    return {
        **inputs,
        "pixel_values_videos": inputs["pixel_values"],
        "video_grid_thw": inputs["image_grid_thw"],
    }


CONTRACT_CASES = [
    AdapterCase(
        family="qwen3_vl",
        build=tiny_qwen3_vl,
        inputs=contract_inputs,
        reference=contract_reference,
        decode=contract_decode,
        recompute=contract_decode,  # already a loop without KV cache
        features=contract_features,
        tokenizer=Words(CONTRACT_WORDS),
        variants=({"positions": "original"}, {"positions": "contiguous"}),
        budgets=(2, 0.5),
        full_budgets=(1.0, 10_000),
        generate_kwargs=GEN,
        refusals=(
            Refusal(options={"llm_layer": 1}, match="llm_layer"),
            Refusal(inputs=_without_types, match="mm_token_type_ids"),
            Refusal(options={"llm_layer": 2}, inputs=_with_video, match="video"),
        ),
    ),
]
