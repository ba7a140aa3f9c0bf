"""prunekit.attach on a tiny random LLaVA-NeXT (base view + any-resolution crops + row newlines).

The family-specific tests; the adapter contract runs on ``CONTRACT_CASES`` in
tests/test_adapter_contract.py.
"""

from __future__ import annotations

import functools

import pytest
import torch
import transformers
from tiny_models import (
    IMAGE_TOKEN_ID,
    Words,
    left_pad,
    prompt_ids,
    tiny_clip_vision_config,
    tiny_llama_config,
)

import prunekit
from prunekit.adapters.attach import find_adapter
from prunekit.adapters.llava_next import LlavaNextAdapter
from prunekit.testing import AdapterCase, Refusal, hand_built_prompt

GEN = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False)
# 32 px crops of 8 px patches: 16 tokens per crop ('default' strategy drops CLS)
PINPOINTS = [[32, 32], [32, 64], [64, 32], [64, 64]]
# (height, width) -> grid rows x cols: (40, 20) -> 8 x 4, (64, 64) -> 8 x 8, (48, 30) -> 6 x 4 (unpadded from 8 x 4)
SIZES = ((40, 20), (64, 64))
MAX_PATCHES = 5  # base view + 2 x 2 crops


def tiny_llava_next(
    seed: int = 0, initializer_range: float = 0.02
) -> transformers.LlavaNextForConditionalGeneration:
    torch.manual_seed(seed)
    config = transformers.LlavaNextConfig(
        vision_config=tiny_clip_vision_config(),
        text_config=tiny_llama_config(initializer_range=initializer_range),
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


def clone(inputs):
    return {k: v.clone() for k, v in inputs.items()}


# -- the adapter contract's case ----------------------------------------------------------------
CONTRACT_PROMPTS = (((7, 8, 9), (40, 20)), ((10, 11), (64, 64)))  # (text, image size)


def contract_inputs(model, which):
    """Prompts ``which`` of CONTRACT_PROMPTS, left padded; the image of prompt i is seeded by i."""
    vision = [image_inputs((CONTRACT_PROMPTS[i][1],), seed=i) for i in which]
    vision = {k: torch.cat([v[k] for v in vision]) for k in ("pixel_values", "image_sizes")}
    counts = [f.shape[0] for f in model_features(model, vision)]
    rows = [prompt_ids(list(CONTRACT_PROMPTS[i][0]), n) for i, n in zip(which, counts)]
    ids, mask = left_pad(rows)
    return {"input_ids": ids, "attention_mask": mask, **vision}


def contract_reference(model, inputs, results, options):
    """The model's own features; kept: the pruner's picks plus every row-newline slot."""
    kept = kept_slots(model, inputs, results[0])
    features = model_features(model, inputs)
    positions = options.get("positions", "contiguous")
    return hand_built_prompt(model, inputs, features, kept, positions=positions)


def contract_features(model, inputs, options):
    """What the pruner must see: the model's own features per image, row newlines included
    (the newlines are kept without being offered, see ``always_kept``)."""
    return model_features(model, inputs)


def without_image_sizes(inputs):
    return {k: v for k, v in inputs.items() if k != "image_sizes"}


CONTRACT_CASES = [
    AdapterCase(
        family="llava_next",
        build=functools.partial(tiny_llava_next, initializer_range=0.2),
        inputs=contract_inputs,
        reference=contract_reference,
        features=contract_features,
        always_kept=newline_slots,
        tokenizer=Words(),  # prompt 0 reads "red triangle ?", prompt 1 "blue circle"
        variants=({"positions": "contiguous"}, {"positions": "original"}),
        budgets=(10, 0.3),
        refusals=(Refusal(inputs=without_image_sizes, match="image_sizes"),),
    )
]


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
