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


# a prompt is a list of text ids and images; images of different sizes (ragged grids)
SINGLE = ([9, Grid((1, 4, 6)), 10, 11, 12],)
RAGGED = ([9, Grid((1, 4, 6)), 10, 11, 12, 13, 14], [15, 16, Grid((1, 6, 8)), 17])
TWO_IMAGES = ([9, Grid((1, 4, 4)), 10, Grid((1, 6, 4)), 11, 12], [13, Grid((1, 4, 8)), 14])


def tiny_qwen2_5_vl(seed: int = 0) -> transformers.Qwen2_5_VLForConditionalGeneration:
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
    config._attn_implementation = "sdpa"
    return transformers.Qwen2_5_VLForConditionalGeneration(config).eval().double()


@pytest.fixture(scope="module")
def model():
    return tiny_qwen2_5_vl()


def batch(prompts=RAGGED, seed=0):
    """Left-padded ids with <|vision_start|> + pads + <|vision_end|> per image, flattened
    patches and grids, as the Qwen processor lays them out."""
    rows, grids = [], []
    for prompt in prompts:
        row = [BOS]
        for item in prompt:
            if isinstance(item, Grid):
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
    grid = torch.tensor(grids)
    n_patches = int(grid.prod(dim=1).sum())
    pixels = torch.randn(
        n_patches, PATCH_DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)
    )
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "mm_token_type_ids": (ids == IMAGE).long(),
        "pixel_values": pixels,
        "image_grid_thw": grid,
    }


def clone(inputs):
    return {k: v.clone() for k, v in inputs.items()}


def kept_of(handle):
    (result,) = handle.results
    return [row.tolist() for row in result.split()]


@torch.no_grad()
def reference_prompt(model, inputs, kept=None, positions="original"):
    """Embeddings, mask and (3, B, L) positions of the pruned prompt, built by hand from the
    model's own features and its own get_rope_index on the unpruned prompt; kept=None keeps all."""
    features = list(
        model.model.get_image_features(
            inputs["pixel_values"], inputs["image_grid_thw"], return_dict=True
        ).pooler_output
    )
    if kept is None:
        kept = [list(range(f.shape[0])) for f in features]
    full, _ = model.model.get_rope_index(
        inputs["input_ids"],
        mm_token_type_ids=inputs["mm_token_type_ids"],
        image_grid_thw=inputs["image_grid_thw"],
        attention_mask=inputs["attention_mask"],
    )
    embed = model.get_input_embeddings()
    rows, image = [], 0
    for b in range(inputs["input_ids"].shape[0]):
        vectors, pos, token = [], [], 0
        for col in inputs["attention_mask"][b].nonzero()[:, 0].tolist():
            t = int(inputs["input_ids"][b, col])
            if t == IMAGE:
                if token in kept[image]:
                    vectors.append(features[image][token])
                    pos.append(full[:, b, col])
                token += 1
                if token == features[image].shape[0]:
                    image, token = image + 1, 0
            else:
                vectors.append(embed(torch.tensor(t)))
                pos.append(full[:, b, col])
        rows.append((torch.stack(vectors), torch.stack(pos, dim=1)))
    assert image == len(features)
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
    "prompts", [SINGLE, RAGGED, TWO_IMAGES], ids=["B1", "ragged", "two_images"]
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
    with prunekit.attach(model, "resprune", budget=2), pytest.raises(ValueError, match="video"):
        model(
            **inputs,
            pixel_values_videos=inputs["pixel_values"],
            video_grid_thw=inputs["image_grid_thw"],
        )
    with pytest.raises(ValueError, match="llm_layer"):
        prunekit.attach(model, "resprune", budget=2, llm_layer=1).__enter__()


def test_cached_decoding_continues_at_the_unpruned_positions(model):
    """After a pruned forward, the model's own cached decoding step (positions: cache length
    + ``rope_deltas``) continues where the unpruned prompt would. One unpadded prompt, and no
    attention mask in the step: with a mask, transformers 5.24's
    ``Qwen2_5_VLModel.compute_3d_position_ids`` returns positions for the whole mask, not the
    new token (the model's own cached forward fails the same way without prunekit)."""
    inputs = batch(SINGLE)
    with torch.no_grad(), prunekit.attach(model, "resprune", budget=2) as handle:
        out = model(**clone(inputs), use_cache=True)
        embeds, mask, position_ids = reference_prompt(model, inputs, kept_of(handle))
        token = out.logits[:, -1].argmax(dim=-1)
        step = model(input_ids=token[:, None], cache=out.cache).logits[:, -1]
        embeds = torch.cat([embeds, model.get_input_embeddings()(token)[:, None]], dim=1)
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        position_ids = torch.cat([position_ids, position_ids[..., -1:] + 1], dim=-1)
        expected = model(
            inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids, use_cache=False
        ).logits[:, -1]
    torch.testing.assert_close(step, expected, rtol=1e-9, atol=1e-9)
    assert model.model.rope_deltas.tolist() == [[int(position_ids[0, 0, -1]) - (mask.shape[1] - 1)]]


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
