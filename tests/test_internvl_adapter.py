"""prunekit.attach on a tiny random InternVL (tiles + pixel shuffle): the family-specific tests.

The adapter contract (both budget scopes) runs on ``CONTRACT_CASES`` in
tests/test_adapter_contract.py.
"""

from __future__ import annotations

import pytest
import torch
import transformers
from tiny_models import Words, left_pad

import prunekit
from prunekit.adapters.internvl import InternVLAdapter, placeholder_runs
from prunekit.testing import AdapterCase, Refusal, hand_built_prompt, kept_indices

IMAGE_TOKEN_ID = 3
IMG_START, IMG_END = 60, 61  # <img> and </img>
VOCAB = 64
T = 4  # tokens per tile: 32 px / 8 px patches = 4x4, pixel shuffle 0.5 -> 2x2
GEN = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False)

# prompt 0: one image of 3 tiles; prompt 1: an image of 1 tile, then one of 2 tiles
TEXTS = ((7, 8, 9), (10, 11))
TILES = ((3,), (1, 2))


def tiny_internvl(seed: int = 0) -> transformers.InternVLForConditionalGeneration:
    """InternVL3 shaped: InternViT with CLS (dropped by 'default'), pixel shuffle 0.5, 2-layer Qwen2."""
    torch.manual_seed(seed)
    vision = transformers.InternVLVisionConfig(
        hidden_size=16,
        intermediate_size=32,
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
        max_position_embeddings=256,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        initializer_range=0.2,  # outputs that depend on the input
    )
    config = transformers.InternVLConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=IMAGE_TOKEN_ID,
        image_seq_length=T,
        downsample_ratio=0.5,
    )
    config._attn_implementation = "sdpa"
    return transformers.InternVLForConditionalGeneration(config).eval()


@pytest.fixture(scope="module")
def model():
    return tiny_internvl()


def prompt(text: tuple[int, ...], tiles: tuple[int, ...]) -> list[int]:
    """BOS, then per image <img> + tiles*T placeholders + </img>, then the text."""
    ids = [1]
    for k in tiles:
        ids += [IMG_START] + [IMAGE_TOKEN_ID] * (k * T) + [IMG_END]
    return ids + list(text)


def batch(texts=TEXTS, tiles=TILES, seed=0):
    ids, mask = left_pad([prompt(t, k) for t, k in zip(texts, tiles)])
    n_tiles = sum(sum(k) for k in tiles)
    pixels = torch.randn(n_tiles, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    return {"input_ids": ids, "attention_mask": mask, "pixel_values": pixels}


def entries(model, inputs, scope):
    """The model's own features, split into pruning samples: per image (its tiles concatenated) or per tile."""
    tiles = list(model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output)
    if scope == "tile":
        return tiles
    out, start = [], 0
    for run in placeholder_runs(inputs["input_ids"], IMAGE_TOKEN_ID):
        out.append(torch.cat(tiles[start : start + run // T]))
        start += run // T
    return out


# -- the adapter contract's cases: one per budget scope -------------------------------------------
CONTRACT_PROMPTS = (((7, 8, 9), (3,)), ((10, 11), (1, 2)))  # (text, tiles per image)


def contract_inputs(model, which):
    """Prompts ``which`` of CONTRACT_PROMPTS, left padded; the tiles of prompt i are seeded by i."""
    ids, mask = left_pad([prompt(*CONTRACT_PROMPTS[i]) for i in which])
    pixels = [
        torch.randn(
            sum(CONTRACT_PROMPTS[i][1]), 3, 32, 32, generator=torch.Generator().manual_seed(i)
        )
        for i in which
    ]
    return {"input_ids": ids, "attention_mask": mask, "pixel_values": torch.cat(pixels)}


def contract_reference(model, inputs, results, options):
    """The model's own features, split into the pruning samples of the scope; kept rows gathered."""
    with torch.no_grad():
        features = entries(model, inputs, options.get("budget_scope", "image"))
    positions = options.get("positions", "contiguous")
    return hand_built_prompt(model, inputs, features, kept_indices(results[0]), positions=positions)


def contract_features(model, inputs, options):
    """What the pruner must see: the model's own features per pruned row of the scope."""
    return entries(model, inputs, options.get("budget_scope", "image"))


def one_placeholder_too_many(inputs):
    inputs["input_ids"][0, -1] = IMAGE_TOKEN_ID
    return inputs


CONTRACT_CASES = [
    AdapterCase(
        family="internvl",
        label=f"internvl_{scope}",
        build=tiny_internvl,
        inputs=contract_inputs,
        reference=contract_reference,
        features=contract_features,
        tokenizer=Words(),  # prompt 0 reads "red triangle ?", prompt 1 "blue circle"
        options={"budget_scope": scope},
        variants=({"positions": "contiguous"}, {"positions": "original"}),
        budgets=budgets,
        full_budgets=(1.0, full),
        refusals=(
            Refusal(options={"budget_scope": "images"}, match="budget_scope must be one of"),
            Refusal(inputs=one_placeholder_too_many, match="image tokens but the images give"),
        ),
    )
    for scope, budgets, full in (("image", (3, 0.4), 3 * T), ("tile", (1, 0.5), T))
]


def test_placeholder_runs():
    ids = torch.tensor([[0, 3, 3, 5, 3, 3, 3], [3, 3, 3, 3, 0, 0, 3]])
    assert placeholder_runs(ids, 3) == [2, 3, 4, 1]


@pytest.mark.parametrize("scope", ["image", "tile"])
def test_image_features_are_what_the_model_scatters(model, scope):
    inputs = batch()
    adapter = InternVLAdapter(model, budget_scope=scope)
    got = adapter.image_features({"pixel_values": inputs["pixel_values"]}, dict(inputs))
    sizes = [f.shape[0] for f in got.features]
    assert sizes == ([3 * T, 1 * T, 2 * T] if scope == "image" else [T] * 6)
    own = model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output
    assert torch.equal(torch.cat(got.features), own.flatten(0, 1))
    # what the model really feeds its language model at the placeholders
    seen = {}
    hook = model.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.update(embeds=kwargs["inputs_embeds"]), with_kwargs=True
    )
    try:
        model(**inputs)
    finally:
        hook.remove()
    scattered = seen["embeds"][inputs["input_ids"] == IMAGE_TOKEN_ID]
    assert torch.equal(torch.cat(got.features), scattered)


@pytest.mark.parametrize(
    ("scope", "budget"), [("image", 3), ("image", 0.3), ("tile", 2), ("tile", 0.3)]
)
def test_budget_scopes_count(model, scope, budget):
    inputs = batch()
    with prunekit.attach(model, "resprune", budget=budget, budget_scope=scope) as handle:
        model(**inputs)
    counts = handle.results[0].counts.tolist()
    tiles = [k for per_prompt in TILES for k in per_prompt]
    if scope == "image":
        assert counts == [prunekit.num_kept(k * T, budget) for k in tiles]
    else:
        assert counts == [prunekit.num_kept(T, budget)] * sum(tiles)
    assert handle.results[0].valid_counts.tolist() == (
        [k * T for k in tiles] if scope == "image" else [T] * sum(tiles)
    )


def test_tile_scope_keeps_tokens_in_every_tile(model):
    inputs = batch()
    with prunekit.attach(model, "resprune", budget=1, budget_scope="tile") as handle:
        model(**inputs)
    assert handle.results[0].indices.shape == (6, 1)
    with prunekit.attach(model, "resprune", budget=1, budget_scope="image") as handle:
        model(**inputs)
    assert handle.results[0].indices.shape == (3, 1)
    assert int(handle.results[0].indices.max()) < 3 * T


def test_runs_that_are_not_whole_tiles(model):
    inputs = batch()
    ids = inputs["input_ids"].clone()
    first = int((ids[0] == IMAGE_TOKEN_ID).nonzero()[0])
    ids[0, first + 1] = 7  # splits a 12-token run into 1 + 11
    ids[0, -1] = IMAGE_TOKEN_ID  # the total still matches
    inputs["input_ids"] = ids
    with (
        prunekit.attach(model, "resprune", budget=4),
        pytest.raises(ValueError, match="not a whole number of tiles of 4 tokens"),
    ):
        model(**inputs)


@pytest.mark.parametrize("scope", ["image", "tile"])
def test_text_conditioning_reads_each_images_prompt(model, scope):
    class Words:
        """A tiny word-level tokenizer over the tiny vocabulary."""

        words = {7: "red", 8: "triangle", 9: "?", 10: "blue", 11: "circle"}

        def decode(self, ids, skip_special_tokens=True):
            return " ".join(self.words.get(i, "") for i in ids).strip()

        def __call__(self, text, add_special_tokens=False):
            inverse = {v: k for k, v in self.words.items()}
            return {"input_ids": [inverse[w] for w in text.split() if w in inverse]}

    inputs = batch()
    pruner = prunekit.ResPrune(alpha=4.0)
    with prunekit.attach(model, pruner, budget=2, budget_scope=scope, tokenizer=Words()) as h:
        model(**inputs)
    scores = h.results[0].scores
    assert scores is not None and not torch.all(scores == 1)
    first = 1 if scope == "image" else 3  # prompt 1's images (or tiles) start at this row
    assert scores.shape[0] == (3 if scope == "image" else 6)
    alone = batch(TEXTS[1:], TILES[1:])
    alone["pixel_values"] = inputs["pixel_values"][3:]
    with prunekit.attach(model, pruner, budget=2, budget_scope=scope, tokenizer=Words()) as h1:
        model(**alone)
    n = h1.results[0].scores.shape[1]  # prompt 1's images are weighted by prompt 1's nouns
    torch.testing.assert_close(scores[first:, :n], h1.results[0].scores)


def test_tile_scope_is_refused_inside_the_llm():
    model = tiny_internvl()
    with pytest.raises(ValueError, match="budget_scope='tile' applies to pre-LLM"):
        with prunekit.attach(model, "resprune", budget=2, budget_scope="tile", llm_layer=1):
            pass
