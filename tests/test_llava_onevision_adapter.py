"""prunekit.attach on a tiny random LLaVA-OneVision (SigLIP, any-res crops + anyres_max pooling, Qwen2).

The family-specific tests; the adapter contract (budget >= N, pruned generate / forward == the
hand-built reference, batch == each prompt alone, KV cache, model restored, refusals) runs on
``CONTRACT_CASES`` in tests/test_adapter_contract.py.
"""

from __future__ import annotations

import pytest
import torch
import transformers
from tiny_models import IMAGE_TOKEN_ID, VOCAB, Words, left_pad, prompt_ids

import prunekit
from prunekit.adapters.attach import find_adapter
from prunekit.adapters.llava_next import LlavaNextAdapter
from prunekit.adapters.llava_onevision import LlavaOnevisionAdapter
from prunekit.testing import AdapterCase, Refusal, hand_built_prompt

VIDEO_TOKEN_ID = 4
GEN = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False)
# 32 px crops of 8 px patches: 16 tokens per crop (SigLIP, 'full' strategy)
PINPOINTS = [[32, 32], [32, 64], [64, 32], [64, 64]]
# anyres_max_2: a crop grid of more than 1.21 * 2 * 16 tokens is pooled. (height, width) -> layout:
# (40, 20): 8 x 4 grid, not pooled: 16 + 32 visual + 8 newlines = 56
# (64, 64): 8 x 8 grid pooled to 5 x 5: 16 + 25 visual + 5 newlines = 46
# (48, 30): 8 x 4 unpadded to 6 x 4: 16 + 24 + 6 = 46;  (32, 32): 4 x 4: 16 + 16 + 4 = 36
SIZES = ((40, 20), (64, 64))
MAX_PATCHES = 5  # base view + 2 x 2 crops


def tiny_onevision(seed: int = 0) -> transformers.LlavaOnevisionForConditionalGeneration:
    torch.manual_seed(seed)
    vision = transformers.SiglipVisionConfig(
        hidden_size=24,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
    )
    text = transformers.Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        initializer_range=0.2,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=None,
    )
    config = transformers.LlavaOnevisionConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=IMAGE_TOKEN_ID,
        video_token_index=VIDEO_TOKEN_ID,
        image_grid_pinpoints=PINPOINTS,
        vision_aspect_ratio="anyres_max_2",
        initializer_range=0.2,
    )
    config._attn_implementation = "sdpa"
    model = transformers.LlavaOnevisionForConditionalGeneration(config)
    return model.to(torch.float64).eval()


@pytest.fixture(scope="module")
def model():
    return tiny_onevision()


def image_inputs(sizes, seed=0):
    pixels = torch.randn(
        len(sizes),
        MAX_PATCHES,
        3,
        32,
        32,
        dtype=torch.float64,
        generator=torch.Generator().manual_seed(seed),
    )
    return {"pixel_values": pixels, "image_sizes": torch.tensor(sizes)}


def vision_part(inputs):
    return {
        k: inputs[k] for k in ("pixel_values", "image_sizes", "batch_num_images") if k in inputs
    }


def model_features(model, inputs):
    """The model's own per-image features (what it scatters into the placeholders)."""
    with torch.no_grad():
        return list(model.get_image_features(**vision_part(inputs)).pooler_output)


def newline_slots(model, feature):
    """Slots of an image's sequence that hold the model's image_newline vector."""
    newline = model.model.image_newline.to(feature.dtype)
    return (feature == newline).all(dim=-1).nonzero()[:, 0].tolist()


def batch(model, texts=((7, 8, 9), (10, 11)), sizes=SIZES, seed=0):
    """Left-padded prompts (one image each) whose placeholders match the model's feature counts."""
    vision = image_inputs(sizes, seed)
    counts = [f.shape[0] for f in model_features(model, vision)]
    ids, mask = left_pad([prompt_ids(list(t), n) for t, n in zip(texts, counts)])
    return {"input_ids": ids, "attention_mask": mask, **vision}


def two_image_batch(model, seed=5):
    """Prompt 0 holds two images (base view + one newline each), prompt 1 one cropped image."""
    vision = image_inputs(((40, 20), (64, 64), (48, 30)), seed)
    vision["batch_num_images"] = torch.tensor([2, 1])
    counts = [f.shape[0] for f in model_features(model, vision)]
    assert counts == [17, 17, 46]
    image = [IMAGE_TOKEN_ID]
    rows = [
        [1, 5] + image * counts[0] + [6, 7] + image * counts[1] + [8],
        [1, 5] + image * counts[2] + [9, 10, 11, 12, 13],
    ]
    ids, mask = left_pad(rows)
    return {"input_ids": ids, "attention_mask": mask, **vision}


def visual_counts(model, inputs):
    return [f.shape[0] - len(newline_slots(model, f)) for f in model_features(model, inputs)]


def kept_slots(model, inputs, result):
    """Per image, the slots kept: the pruner's picks plus every newline slot."""
    feats = model_features(model, inputs)
    return [
        sorted(set(picks.tolist()) | set(newline_slots(model, f)))
        for f, picks in zip(feats, result.split())
    ]


def reference_embeds(model, inputs, kept, positions="contiguous"):
    """Hand-built reference: the model's own image features, only the kept rows, spliced
    into inputs_embeds of a prompt whose dropped placeholders are removed (images are
    assigned to the placeholders in order, as the model scatters them)."""
    feats = model_features(model, inputs)
    rows, pos, kept_feats = [], [], []
    image = 0
    for b in range(inputs["input_ids"].shape[0]):
        ids = inputs["input_ids"][b][inputs["attention_mask"][b].bool()].tolist()
        slots = [i for i, t in enumerate(ids) if t == IMAGE_TOKEN_ID]
        drop, start = set(), 0
        while start < len(slots):
            n = feats[image].shape[0]
            drop |= {slots[start + j] for j in range(n) if j not in set(kept[image])}
            kept_feats.append(feats[image][kept[image]])
            start += n
            image += 1
        rows.append([t for i, t in enumerate(ids) if i not in drop])
        pos.append([i for i in range(len(ids)) if i not in drop])
    assert image == len(feats)
    ids, mask = left_pad(rows)
    embeds = model.get_input_embeddings()(ids).masked_scatter(
        (ids == IMAGE_TOKEN_ID).unsqueeze(-1), torch.cat(kept_feats)
    )
    extra = {}
    if positions == "original":
        position_ids = torch.zeros_like(ids)
        for b, p in enumerate(pos):
            position_ids[b, ids.shape[1] - len(p) :] = torch.tensor(p)
        extra["position_ids"] = position_ids
    return ids, embeds, mask, extra


def generate(model, **kwargs):
    """``model.generate`` asserting that no step's logits are NaN (greedy argmax of NaN is 0)."""
    out = model.generate(**kwargs, **GEN, return_dict_in_generate=True, output_logits=True)
    assert not any(bool(step.isnan().any()) for step in out.logits)
    return out.sequences


def clone(inputs):
    return {k: v.clone() for k, v in inputs.items()}


# -- the adapter contract's case ----------------------------------------------------------------
#: (text ids, image sizes): one unpooled image, one pooled image, two images (base views only)
CONTRACT_PROMPTS = (
    ((7, 8, 9), ((40, 20),)),
    ((10, 11), ((64, 64),)),
    ((12,), ((48, 30), (32, 32))),
)


def contract_inputs(model, which):
    """Prompts ``which`` of CONTRACT_PROMPTS, left padded; the images of prompt i are seeded by i."""
    vision = [image_inputs(CONTRACT_PROMPTS[i][1], seed=i) for i in which]
    vision = {k: torch.cat([v[k] for v in vision]) for k in ("pixel_values", "image_sizes")}
    vision["batch_num_images"] = torch.tensor([len(CONTRACT_PROMPTS[i][1]) for i in which])
    counts = iter(f.shape[0] for f in model_features(model, vision))
    rows = []
    for i in which:
        text, sizes = CONTRACT_PROMPTS[i]
        row = [1, 5]
        for j in range(len(sizes)):
            row += [IMAGE_TOKEN_ID] * next(counts) + [20 + j]
        rows.append(row + list(text))
    ids, mask = left_pad(rows)
    return {"input_ids": ids, "attention_mask": mask, **vision}


def contract_reference(model, inputs, results, options):
    """The model's own features; kept: the pruner's picks plus every newline slot."""
    kept = kept_slots(model, inputs, results[0])
    features = model_features(model, inputs)
    positions = options.get("positions", "contiguous")
    return hand_built_prompt(model, inputs, features, kept, positions=positions)


def contract_features(model, inputs, options):
    """What the pruner must see: the model's own features per image, newlines included
    (kept without being offered, see ``always_kept``)."""
    return model_features(model, inputs)


def without_image_sizes(inputs):
    return {k: v for k, v in inputs.items() if k != "image_sizes"}


def with_a_video(inputs):
    return {**inputs, "pixel_values_videos": torch.zeros(1, 2, 3, 32, 32, dtype=torch.float64)}


def with_another_aspect_ratio(inputs):
    return {**inputs, "vision_aspect_ratio": "anyres_max_9"}


CONTRACT_CASES = [
    AdapterCase(
        family="llava_onevision",
        build=tiny_onevision,
        inputs=contract_inputs,
        reference=contract_reference,
        features=contract_features,
        always_kept=newline_slots,
        tokenizer=Words(),  # prompts read "red triangle ?", "blue circle", "square"
        n_prompts=len(CONTRACT_PROMPTS),
        variants=({"positions": "contiguous"}, {"positions": "original"}),
        budgets=(10, 0.3),
        refusals=(
            Refusal(inputs=without_image_sizes, match="image_sizes"),
            Refusal(inputs=with_a_video, match="pixel_values_videos"),
            Refusal(inputs=with_another_aspect_ratio, match="vision_aspect_ratio"),
            Refusal(options={"llm_layer": 2}, match="llm_layer"),
        ),
    )
]


def test_registered_and_matched(model):
    assert find_adapter(model) is LlavaOnevisionAdapter
    assert "llava_onevision" in prunekit.list_adapters()
    assert not LlavaNextAdapter.matches(model)
    assert not LlavaOnevisionAdapter.matches(torch.nn.Linear(2, 2))


def test_image_features_are_what_the_model_scatters(model):
    inputs = batch(model, sizes=((40, 20), (64, 64)))
    captured = {}

    def grab(module, args, kwargs):
        captured["embeds"] = kwargs["inputs_embeds"].detach().clone()

    hook = model.model.language_model.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        hook.remove()
    scattered = captured["embeds"][inputs["input_ids"] == IMAGE_TOKEN_ID]

    adapter = LlavaOnevisionAdapter(model)
    with torch.no_grad():
        images = adapter.image_features(vision_part(inputs), {})
    assert torch.equal(torch.cat(images.features), scattered)
    # the newline flags are exactly the rows holding image_newline, one per (pooled) grid row
    for f, prunable, rows in zip(images.features, images.prunable, (8, 5)):
        assert prunable.dtype == torch.bool and prunable.shape == (f.shape[0],)
        assert (~prunable).nonzero()[:, 0].tolist() == newline_slots(model, f)
        assert int((~prunable).sum()) == rows
        assert bool(prunable[:16].all())  # the base view comes first, without newlines
    assert [int(p.sum()) for p in images.prunable] == [16 + 8 * 4, 16 + 5 * 5]


def test_unpadded_pooled_and_multi_image_layouts(model):
    """Unpadded and single-crop grids, anyres_max pooling, and the base-only view of images
    in a multi-image prompt (batch_num_images) all get the model's own layout."""
    adapter = LlavaOnevisionAdapter(model)
    for vision, visual in (
        (image_inputs(((48, 30), (32, 32), (20, 40), (64, 64))), [40, 32, 48, 41]),
        (
            {**image_inputs(((40, 20), (64, 64), (48, 30))), "batch_num_images": [2, 1]},
            [16, 16, 40],
        ),
    ):
        with torch.no_grad():
            images = adapter.image_features(vision, {})
        for f, own, prunable in zip(
            images.features, model_features(model, vision), images.prunable
        ):
            assert torch.equal(f, own)
            assert (~prunable).nonzero()[:, 0].tolist() == newline_slots(model, f)
        assert [int(p.sum()) for p in images.prunable] == visual
    # the multi-image views are the base view plus one newline at the end
    assert newline_slots(model, images.features[0]) == [16]


def test_two_images_in_one_prompt(model):
    """batch_num_images: each image of a multi-image prompt is pruned on its own (budget per
    image), base view only; generate == the hand-built reference at the original positions."""
    positions = "original"
    inputs = two_image_batch(model)
    with prunekit.attach(model, "resprune", budget=0.5, positions=positions) as handle:
        got = generate(model, **clone(inputs))
    (result,) = handle.results
    assert result.counts.tolist() == [8, 8, 20]
    kept = kept_slots(model, inputs, result)
    ids, embeds, mask, extra = reference_embeds(model, inputs, kept, positions)
    expected = generate(model, input_ids=ids, inputs_embeds=embeds, attention_mask=mask, **extra)
    assert torch.equal(got, torch.cat([inputs["input_ids"], expected[:, ids.shape[1] :]], dim=1))


def test_token_layouts_place_every_visual_token(model):
    """The pictures' layouts: one per image, the model's sequence length, and the drawn
    tokens are exactly the visual (non-newline) slots."""
    inputs = contract_inputs(model, [0, 1, 2])
    layouts = LlavaOnevisionAdapter(model).token_layouts(inputs)
    feats = model_features(model, inputs)
    assert len(layouts) == len(feats) == 4
    for layout, f in zip(layouts, feats):
        assert layout.length == f.shape[0]
        drawn = sorted(t for p in layout.panels for t in p.tokens.ravel().tolist() if t >= 0)
        visual = sorted(set(range(f.shape[0])) - set(newline_slots(model, f)))
        assert drawn == visual


@pytest.mark.parametrize("budget", [1, 7, 40, 0.05, 0.5, 0.9])
def test_counting_convention(model, budget):
    """Kept visual tokens per image == num_kept(visual tokens of base + pooled crops, budget);
    every newline token is kept on top and never picked by the pruner."""
    sizes = ((40, 20), (48, 30), (64, 64))
    inputs = batch(model, texts=((7, 8), (9,), (10, 11, 12)), sizes=sizes)
    n_visual = visual_counts(model, inputs)
    assert n_visual == [48, 40, 41]
    with prunekit.attach(model, "resprune", budget=budget) as handle:
        logits = model(**clone(inputs)).logits
    (result,) = handle.results
    assert result.counts.tolist() == [prunekit.num_kept(n, budget) for n in n_visual]
    assert result.valid_counts.tolist() == n_visual
    feats = model_features(model, inputs)
    for f, picks in zip(feats, result.split()):
        assert not set(picks.tolist()) & set(newline_slots(model, f))
    # the LLM saw kept visual tokens + all newlines per image
    n_newlines = [len(newline_slots(model, f)) for f in feats]
    assert n_newlines == [8, 6, 5]
    lengths = [
        int(m.sum()) - f.shape[0] + k + nl
        for m, f, k, nl in zip(inputs["attention_mask"], feats, result.counts.tolist(), n_newlines)
    ]
    assert logits.shape[1] == max(lengths)


def test_newline_tokens_reach_the_llm(model):
    """Budget 1: the LLM gets one visual token per image plus every newline vector, in order."""
    inputs = batch(model)
    captured = {}

    def grab(module, args, kwargs):
        captured["embeds"] = kwargs["inputs_embeds"].detach().clone()
        captured["mask"] = kwargs["attention_mask"].detach().clone()

    hook = model.model.language_model.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with prunekit.attach(model, "resprune", budget=1), torch.no_grad():
            model(**clone(inputs))
    finally:
        hook.remove()
    newline = model.model.image_newline
    for b, f in enumerate(model_features(model, inputs)):
        row = captured["embeds"][b][captured["mask"][b].bool()]
        is_newline = (row == newline).all(dim=-1)
        assert int(is_newline.sum()) == len(newline_slots(model, f))
        assert row.shape[0] == int(inputs["attention_mask"][b].sum()) - f.shape[0] + 1 + int(
            is_newline.sum()
        )


# -- refusals ---------------------------------------------------------------------------
def video_inputs():
    frames = torch.randn(1, 2, 3, 32, 32, dtype=torch.float64)
    ids = torch.tensor([[1, 5] + [VIDEO_TOKEN_ID] * 9 + [7]])
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values_videos": frames}


@pytest.mark.parametrize("options", [{}, {"llm_layer": 1}])
@pytest.mark.parametrize("call", ["forward", "generate"])
def test_video_is_refused(model, options, call):
    inputs = video_inputs()
    with torch.no_grad():  # the unpruned model takes it (2 frames of 2 x 2 pooled tokens + newline)
        model(**inputs)
    run = model if call == "forward" else lambda **kw: model.generate(**kw, **GEN)
    with (
        prunekit.attach(model, "resprune", budget=2, **options),
        pytest.raises(ValueError, match="pixel_values_videos"),
    ):
        run(**inputs)
    assert "forward" not in model.__dict__


def test_call_vision_aspect_ratio(model):
    """The model's forward ignores a per-call vision_aspect_ratio (transformers 5.24): the
    adapter refuses one that differs from the config and accepts the config's."""
    inputs = batch(model)
    with torch.no_grad():
        plain = model(**clone(inputs)).logits
        ignored = model(**clone(inputs), vision_aspect_ratio="anyres_max_9").logits
    assert torch.equal(
        plain, ignored
    )  # if this fails, transformers honours it: revisit the refusal
    with (
        prunekit.attach(model, "resprune", budget=4),
        pytest.raises(ValueError, match="vision_aspect_ratio"),
    ):
        model(**clone(inputs), vision_aspect_ratio="anyres_max_9")
    with prunekit.attach(model, "resprune", budget=4), torch.no_grad():
        same = model(**clone(inputs), vision_aspect_ratio="anyres_max_2").logits
        default = model(**clone(inputs)).logits
    assert torch.equal(same, default)


def test_placeholder_mismatch_is_refused(model):
    inputs = batch(model)
    inputs["input_ids"][0, -1] = IMAGE_TOKEN_ID
    with (
        prunekit.attach(model, "resprune", budget=4),
        pytest.raises(ValueError, match="image tokens"),
    ):
        model(**inputs)


# -- llm_layer=K (in-LLM pruning, the base class's Qwen2 decoder support) ----------------
def test_llm_layer_full_budget_is_the_unpruned_model(model):
    inputs = batch(model)
    expected = generate(model, **clone(inputs))
    with prunekit.attach(model, "composed", budget=10_000, llm_layer=1) as handle:
        got = generate(model, **clone(inputs))
    assert torch.equal(got, expected)
    # in the LLM the candidates are every image placeholder of the prompt, newlines included
    placeholders = (inputs["input_ids"] == IMAGE_TOKEN_ID).sum(dim=1)
    assert handle.results[0].counts.tolist() == placeholders.tolist() == [56, 46]


def test_llm_layer_forward_equals_hand_built_reference(model):
    """The Qwen2 decoder run by hand: layer 0 on the whole prompt, then only the kept tokens,
    at their original positions, through layer 1, the norm and the LM head."""
    inputs = batch(model, texts=((7, 8, 9),), sizes=((64, 64),))
    pruner = prunekit.create_pruner("composed", relevance="none", selection="greedy_residual")
    with prunekit.attach(model, pruner, budget=5, llm_layer=1) as handle:
        logits = model(**clone(inputs)).logits

    ids = inputs["input_ids"]
    (feats,) = model_features(model, inputs)
    embeds = model.get_input_embeddings()(ids).masked_scatter(
        (ids == IMAGE_TOKEN_ID).unsqueeze(-1), feats
    )
    lm = model.model.language_model

    def causal(n):
        return torch.ones(n, n, dtype=torch.bool).tril()[None, None]

    positions = torch.arange(ids.shape[1]).unsqueeze(0)
    cos, sin = lm.rotary_emb(embeds, position_ids=positions)
    with torch.no_grad():
        hidden = lm.layers[0](
            embeds,
            attention_mask=causal(ids.shape[1]),
            position_embeddings=(cos, sin),
            position_ids=positions,
        )
        image_positions = (ids[0] == IMAGE_TOKEN_ID).nonzero()[:, 0]
        # the selection ran on the hidden states entering layer K
        expected_pick = pruner.prune(hidden[:, image_positions].float(), budget=5)
        assert torch.equal(handle.results[0].indices, expected_pick.indices)
        dropped = set(image_positions[~expected_pick.mask[0]].tolist())
        keep = torch.tensor([p for p in range(ids.shape[1]) if p not in dropped])
        hidden = lm.layers[1](
            hidden[:, keep],
            attention_mask=causal(len(keep)),
            position_embeddings=(cos[:, keep], sin[:, keep]),
            position_ids=positions[:, keep],
        )
        expected = model.lm_head(lm.norm(hidden))
    assert logits.shape == expected.shape == (1, ids.shape[1] - 46 + 5, VOCAB)
    assert not bool(logits.isnan().any())
    torch.testing.assert_close(logits, expected, rtol=1e-12, atol=1e-12)


def test_llm_layer_kv_cache_and_batch_equal_recomputation_and_each_alone(model):
    texts = ((7, 8, 9, 12, 13), (10, 11))
    sizes = ((40, 20), (64, 64))
    inputs = batch(model, texts, sizes, seed=3)
    with prunekit.attach(model, "resprune", budget=4, llm_layer=1):
        cached = generate(model, **clone(inputs), use_cache=True)
        uncached = generate(model, **clone(inputs), use_cache=False)
        assert torch.equal(cached, uncached)
        for b, t in enumerate(texts):
            alone_inputs = batch(model, (t,), (sizes[b],), seed=3)
            alone_inputs["pixel_values"] = inputs["pixel_values"][b : b + 1].clone()
            alone = generate(model, **alone_inputs)
            assert cached[b, -alone.shape[1] :].tolist() == alone[0].tolist()


def test_llm_layer_restored_after_exit(model):
    inputs = batch(model)
    before = model(**clone(inputs)).logits
    with (
        pytest.raises(RuntimeError, match="boom"),
        prunekit.attach(model, "resprune", budget=3, llm_layer=1),
    ):
        assert model(**clone(inputs)).logits.shape[1] < before.shape[1]
        raise RuntimeError("boom")
    assert all(not layer._forward_pre_hooks for layer in model.model.language_model.layers)
    assert "forward" not in model.__dict__ and "generate" not in model.__dict__
    assert torch.equal(model(**clone(inputs)).logits, before)


@pytest.mark.parametrize(("layer", "error"), [(0, ValueError), (2, ValueError), (1.0, TypeError)])
def test_bad_llm_layer(model, layer, error):
    with (
        pytest.raises(error, match="llm_layer"),
        prunekit.attach(model, "resprune", budget=3, llm_layer=layer),
    ):
        pass
