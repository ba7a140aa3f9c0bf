"""prunekit.attach on a tiny random LLaVA-NeXT (base view + any-resolution crops + row newlines)."""

from __future__ import annotations

import pytest
import torch
import transformers
from tiny_models import (
    IMAGE_TOKEN_ID,
    left_pad,
    prompt_ids,
    tiny_clip_vision_config,
    tiny_llama_config,
)

import prunekit
from prunekit.adapters.attach import find_adapter
from prunekit.adapters.llava_next import LlavaNextAdapter

GEN = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False)
# 32 px crops of 8 px patches: 16 tokens per crop ('default' strategy drops CLS)
PINPOINTS = [[32, 32], [32, 64], [64, 32], [64, 64]]
# (height, width) -> grid rows x cols: (40, 20) -> 8 x 4, (64, 64) -> 8 x 8, (48, 30) -> 6 x 4 (unpadded from 8 x 4)
SIZES = ((40, 20), (64, 64))
MAX_PATCHES = 5  # base view + 2 x 2 crops


def tiny_llava_next(seed: int = 0) -> transformers.LlavaNextForConditionalGeneration:
    torch.manual_seed(seed)
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


@pytest.fixture(scope="module")
def model():
    return tiny_llava_next()


def image_inputs(sizes, seed=0):
    pixels = torch.randn(
        len(sizes), MAX_PATCHES, 3, 32, 32, generator=torch.Generator().manual_seed(seed)
    )
    return {"pixel_values": pixels, "image_sizes": torch.tensor(sizes)}


def model_features(model, inputs):
    """The model's own per-image features (what it scatters into the placeholders)."""
    with torch.no_grad():
        return list(
            model.get_image_features(
                pixel_values=inputs["pixel_values"], image_sizes=inputs["image_sizes"]
            ).pooler_output
        )


def newline_slots(model, feature):
    """Slots of an image's sequence that hold the model's image_newline vector."""
    newline = model.model.image_newline.to(feature.dtype)
    return (feature == newline).all(dim=-1).nonzero()[:, 0].tolist()


def batch(model, texts=((7, 8, 9), (10, 11)), sizes=SIZES, seed=0):
    """Left-padded prompts whose image placeholders match the model's feature counts."""
    vision = image_inputs(sizes, seed)
    counts = [f.shape[0] for f in model_features(model, vision)]
    ids, mask = left_pad([prompt_ids(list(t), n) for t, n in zip(texts, counts)])
    return {"input_ids": ids, "attention_mask": mask, **vision}


def visual_counts(model, inputs):
    feats = model_features(model, inputs)
    return [f.shape[0] - len(newline_slots(model, f)) for f in feats]


def kept_slots(model, inputs, result):
    """Per image, the slots kept: the pruner's picks plus every row-newline slot."""
    feats = model_features(model, inputs)
    return [
        sorted(set(picks.tolist()) | set(newline_slots(model, f)))
        for f, picks in zip(feats, result.split())
    ]


def reference_embeds(model, inputs, kept, positions="contiguous"):
    """Hand-built reference: the model's own image features, only the kept rows, spliced
    into inputs_embeds of a prompt whose dropped placeholders are removed."""
    feats = model_features(model, inputs)
    rows, pos = [], []
    for b in range(inputs["input_ids"].shape[0]):
        ids = inputs["input_ids"][b][inputs["attention_mask"][b].bool()].tolist()
        image_slots = [i for i, t in enumerate(ids) if t == IMAGE_TOKEN_ID]
        assert len(image_slots) == feats[b].shape[0]
        drop = {s for j, s in enumerate(image_slots) if j not in set(kept[b])}
        rows.append([t for i, t in enumerate(ids) if i not in drop])
        pos.append([i for i in range(len(ids)) if i not in drop])
    ids, mask = left_pad(rows)
    kept_feats = torch.cat([f[k] for f, k in zip(feats, kept)])
    embeds = model.get_input_embeddings()(ids).masked_scatter(
        (ids == IMAGE_TOKEN_ID).unsqueeze(-1), kept_feats
    )
    extra = {}
    if positions == "original":
        position_ids = torch.zeros_like(ids)
        for b, p in enumerate(pos):
            position_ids[b, ids.shape[1] - len(p) :] = torch.tensor(p)
        extra["position_ids"] = position_ids
    return ids, embeds, mask, extra


def clone(inputs):
    return {k: v.clone() for k, v in inputs.items()}


def test_registered_and_matched(model):
    assert find_adapter(model) is LlavaNextAdapter
    assert "llava_next" in {spec.name for spec in prunekit.registry.get_registry().specs("adapter")}
    assert not LlavaNextAdapter.matches(torch.nn.Linear(2, 2))


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

    adapter = LlavaNextAdapter(model)
    vision = {k: inputs[k] for k in ("pixel_values", "image_sizes")}
    with torch.no_grad():
        images = adapter.image_features(vision, {})
    assert torch.equal(torch.cat(images.features), scattered)
    # the newline flags are exactly the rows holding image_newline, one per grid row
    for f, prunable, rows in zip(images.features, images.prunable, (8, 8)):
        assert prunable.dtype == torch.bool and prunable.shape == (f.shape[0],)
        assert (~prunable).nonzero()[:, 0].tolist() == newline_slots(model, f)
        assert int((~prunable).sum()) == rows
        assert bool(prunable[:16].all())  # the base view comes first, without newlines
    assert [int(p.sum()) for p in images.prunable] == [16 + 8 * 4, 16 + 8 * 8]


def test_unpadded_grid_and_single_crop_layouts(model):
    """Aspect ratios that unpad the grid, and a 1 x 1 grid, get the model's own layout."""
    adapter = LlavaNextAdapter(model)
    vision = image_inputs(((48, 30), (32, 32), (20, 40)))
    with torch.no_grad():
        images = adapter.image_features(vision, {})
    for f, own, prunable in zip(images.features, model_features(model, vision), images.prunable):
        assert torch.equal(f, own)
        assert (~prunable).nonzero()[:, 0].tolist() == newline_slots(model, f)
    assert [int(p.sum()) for p in images.prunable] == [16 + 6 * 4, 16 + 4 * 4, 16 + 4 * 8]


@pytest.mark.parametrize("pruner", ["resprune", "composed"])
@pytest.mark.parametrize("budget", [10_000, 1.0])
def test_full_budget_is_the_unpruned_model(model, pruner, budget):
    inputs = batch(model)
    expected = model.generate(**clone(inputs), **GEN)
    with prunekit.attach(model, pruner, budget=budget) as handle:
        got = model.generate(**clone(inputs), **GEN)
    assert torch.equal(got, expected)
    assert handle.results[0].counts.tolist() == visual_counts(model, inputs)


@pytest.mark.parametrize("positions", ["contiguous", "original"])
@pytest.mark.parametrize("budget", [10, 0.3])
def test_pruned_generate_equals_hand_built_reference(model, positions, budget):
    inputs = batch(model)
    with prunekit.attach(model, "resprune", budget=budget, positions=positions) as handle:
        got = model.generate(**clone(inputs), **GEN)
    (result,) = handle.results
    kept = kept_slots(model, inputs, result)
    ids, embeds, mask, extra = reference_embeds(model, inputs, kept, positions)
    expected = model.generate(
        input_ids=ids, inputs_embeds=embeds, attention_mask=mask, **extra, **GEN
    )
    lengths = [  # real prompt length minus dropped placeholders
        int(m.sum()) - f.shape[0] + len(k)
        for m, f, k in zip(inputs["attention_mask"], model_features(model, inputs), kept)
    ]
    assert expected.shape[1] == max(lengths) + GEN["max_new_tokens"]
    # generate keeps the caller's layout: their input_ids, then the new tokens
    new_tokens = expected[:, ids.shape[1] :]
    assert torch.equal(got, torch.cat([inputs["input_ids"], new_tokens], dim=1))


def test_pruned_forward_equals_reference_forward(model):
    inputs = batch(model)
    with prunekit.attach(model, "resprune", budget=0.25) as handle:
        logits = model(**clone(inputs)).logits
    kept = kept_slots(model, inputs, handle.results[0])
    _, embeds, mask, _ = reference_embeds(model, inputs, kept)
    expected = model(inputs_embeds=embeds, attention_mask=mask).logits
    torch.testing.assert_close(logits, expected, rtol=0, atol=0)


@pytest.mark.parametrize("budget", [1, 7, 40, 0.05, 0.5, 0.9])
def test_counting_convention(model, budget):
    """Kept visual tokens per image == num_kept(visual tokens of base + crops, budget);
    every row-newline token is kept on top and never picked by the pruner."""
    sizes = ((40, 20), (48, 30), (64, 64))
    inputs = batch(model, texts=((7, 8), (9,), (10, 11, 12)), sizes=sizes)
    n_visual = visual_counts(model, inputs)
    assert n_visual == [48, 40, 80]
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
    lengths = [
        int(m.sum()) - f.shape[0] + k + nl
        for m, f, k, nl in zip(inputs["attention_mask"], feats, result.counts.tolist(), n_newlines)
    ]
    assert logits.shape[1] == max(lengths)


def test_model_restored_after_exit_and_on_error(model):
    inputs = batch(model)
    before = model(**clone(inputs)).logits
    forward_attr = type(model).forward
    with prunekit.attach(model, "resprune", budget=3):
        assert "forward" in model.__dict__ and "generate" in model.__dict__
        pruned = model(**clone(inputs)).logits
    assert pruned.shape[1] < before.shape[1]
    assert "forward" not in model.__dict__ and "generate" not in model.__dict__
    assert type(model).forward is forward_attr
    assert torch.equal(model(**clone(inputs)).logits, before)
    expected = model.generate(**clone(inputs), **GEN)
    with pytest.raises(RuntimeError, match="boom"), prunekit.attach(model, "resprune", budget=3):
        model.generate(**clone(inputs), **GEN)
        raise RuntimeError("boom")
    assert "forward" not in model.__dict__ and "generate" not in model.__dict__
    assert torch.equal(model(**clone(inputs)).logits, before)
    assert torch.equal(model.generate(**clone(inputs), **GEN), expected)


def test_batch_equals_each_prompt_alone(model):
    texts = ((7, 8, 9, 12, 13), (10, 11))
    sizes = ((48, 30), (64, 64))  # 46 and 88 placeholders
    inputs = batch(model, texts, sizes, seed=3)
    assert inputs["attention_mask"][0, 0] == 0  # left padded
    for budget in (6, 0.4):
        with prunekit.attach(model, "resprune", budget=budget):
            together = model.generate(**clone(inputs), **GEN)
        for b, t in enumerate(texts):
            alone_inputs = batch(model, (t,), (sizes[b],), seed=3)
            alone_inputs["pixel_values"] = inputs["pixel_values"][b : b + 1].clone()
            with prunekit.attach(model, "resprune", budget=budget):
                alone = model.generate(**alone_inputs, **GEN)
            width = alone.shape[1]
            assert together[b, -width:].tolist() == alone[0].tolist()


def test_kv_cache_equals_recomputation(model):
    inputs = batch(model)
    with prunekit.attach(model, "resprune", budget=5):
        cached = model.generate(**clone(inputs), **GEN, use_cache=True)
        uncached = model.generate(**clone(inputs), **GEN, use_cache=False)
    assert torch.equal(cached, uncached)


def test_missing_image_sizes(model):
    inputs = batch(model)
    del inputs["image_sizes"]
    with (
        prunekit.attach(model, "resprune", budget=4),
        pytest.raises(ValueError, match="image_sizes"),
    ):
        model(**inputs)
