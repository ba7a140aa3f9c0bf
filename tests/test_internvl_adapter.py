"""prunekit.attach on a tiny random InternVL (tiles + pixel shuffle): pruned generate / forward, token for token."""

from __future__ import annotations

import pytest
import torch
import transformers
from tiny_models import left_pad

import prunekit
from prunekit.adapters.attach import find_adapter
from prunekit.adapters.internvl import InternVLAdapter, placeholder_runs

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


def clone(inputs):
    return {k: v.clone() for k, v in inputs.items()}


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


def reference_prompt(model, inputs, kept, scope, positions="contiguous"):
    """Hand-built reference: the model's own features, only the kept rows, spliced into the
    embeddings of a prompt whose dropped placeholders are removed."""
    feats = entries(model, inputs, scope)
    flags = [i in set(k) for f, k in zip(feats, kept) for i in range(f.shape[0])]
    rows, pos, cursor = [], [], 0
    for b in range(inputs["input_ids"].shape[0]):
        ids = inputs["input_ids"][b][inputs["attention_mask"][b].bool()].tolist()
        drop = set()
        for i, t in enumerate(ids):
            if t == IMAGE_TOKEN_ID:
                if not flags[cursor]:
                    drop.add(i)
                cursor += 1
        rows.append([t for i, t in enumerate(ids) if i not in drop])
        pos.append([i for i in range(len(ids)) if i not in drop])
    assert cursor == len(flags)
    ids, mask = left_pad(rows)
    kept_feats = torch.cat([f[sorted(k)] for f, k in zip(feats, kept)])
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


def kept_of(handle):
    (result,) = handle.results
    return [row.tolist() for row in result.split()]


def test_registered_and_found(model):
    assert "internvl" in prunekit.list_adapters()
    assert find_adapter(model) is InternVLAdapter


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
    ("scope", "budget"), [("image", 3 * T), ("image", 1.0), ("tile", T), ("tile", 1.0)]
)
def test_full_budget_is_the_unpruned_model(model, scope, budget):
    inputs = batch()
    expected = model.generate(**clone(inputs), **GEN)
    with prunekit.attach(model, "resprune", budget=budget, budget_scope=scope) as handle:
        got = model.generate(**clone(inputs), **GEN)
    assert torch.equal(got, expected)
    counts = handle.results[0].counts.tolist()
    assert counts == ([3 * T, T, 2 * T] if scope == "image" else [T] * 6)


@pytest.mark.parametrize("positions", ["contiguous", "original"])
@pytest.mark.parametrize(
    ("scope", "budget"), [("image", 3), ("image", 0.4), ("tile", 1), ("tile", 0.5)]
)
def test_pruned_generate_equals_hand_built_reference(model, scope, budget, positions):
    inputs = batch()
    with prunekit.attach(
        model, "resprune", budget=budget, budget_scope=scope, positions=positions
    ) as handle:
        got = model.generate(**clone(inputs), **GEN)
    kept = kept_of(handle)
    ids, embeds, mask, extra = reference_prompt(model, inputs, kept, scope, positions)
    expected = model.generate(
        input_ids=ids, inputs_embeds=embeds, attention_mask=mask, **extra, **GEN
    )
    # generate keeps the caller's layout: their input_ids, then the new tokens
    assert torch.equal(got, torch.cat([inputs["input_ids"], expected[:, ids.shape[1] :]], dim=1))
    tiles = [k for per_prompt in TILES for k in per_prompt]
    sizes = [k * T for k in tiles] if scope == "image" else [T] * sum(tiles)
    assert [len(k) for k in kept] == [prunekit.num_kept(n, budget) for n in sizes]
    assert int((ids == IMAGE_TOKEN_ID).sum()) == sum(len(k) for k in kept)
    assert ids.shape[1] < inputs["input_ids"].shape[1]
    assert got.shape[1] == inputs["input_ids"].shape[1] + GEN["max_new_tokens"]


def test_pruned_forward_equals_reference_forward(model):
    inputs = batch()
    with prunekit.attach(model, "resprune", budget=0.5) as handle:
        logits = model(**clone(inputs)).logits
    _, embeds, mask, _ = reference_prompt(model, inputs, kept_of(handle), "image")
    expected = model(inputs_embeds=embeds, attention_mask=mask).logits
    torch.testing.assert_close(logits, expected, rtol=0, atol=0)
    unpruned = model(**inputs).logits
    assert not torch.allclose(logits[:, -1], unpruned[:, -1])  # the tiny model does see the images


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


def test_model_restored_after_exit_and_on_error(model):
    inputs = batch()
    before = model(**inputs).logits
    forward_attr = type(model).forward
    with prunekit.attach(model, "resprune", budget=2):
        assert "forward" in model.__dict__ and "generate" in model.__dict__
        pruned = model(**inputs).logits
    assert pruned.shape[1] < before.shape[1]
    assert "forward" not in model.__dict__ and "generate" not in model.__dict__
    assert type(model).forward is forward_attr
    assert torch.equal(model(**inputs).logits, before)
    with pytest.raises(RuntimeError, match="boom"), prunekit.attach(model, "resprune", budget=2):
        model(**inputs)
        raise RuntimeError("boom")
    assert "forward" not in model.__dict__ and "generate" not in model.__dict__
    assert torch.equal(model(**inputs).logits, before)
    expected = model.generate(**clone(inputs), **GEN)
    assert torch.equal(model.generate(**clone(inputs), **GEN), expected)


@pytest.mark.parametrize("scope", ["image", "tile"])
def test_batch_equals_each_prompt_alone(model, scope):
    texts, tiles = ((7, 8, 9, 12, 13), (10, 11)), ((2, 1), (3,))
    inputs = batch(texts, tiles, seed=3)
    with prunekit.attach(model, "resprune", budget=0.5, budget_scope=scope):
        together = model.generate(**clone(inputs), **GEN)
    start = 0
    for b, (t, k) in enumerate(zip(texts, tiles)):
        alone_inputs = batch((t,), (k,))
        alone_inputs["pixel_values"] = inputs["pixel_values"][start : start + sum(k)]
        start += sum(k)
        with prunekit.attach(model, "resprune", budget=0.5, budget_scope=scope):
            alone = model.generate(**alone_inputs, **GEN)
        width = alone.shape[1]
        assert together[b, -width:].tolist() == alone[0].tolist()
        assert not together[b, :-width].any()  # the rest is left padding


@pytest.mark.parametrize("scope", ["image", "tile"])
def test_kv_cache_equals_recomputation(model, scope):
    inputs = batch()
    with prunekit.attach(model, "resprune", budget=0.5, budget_scope=scope):
        cached = model.generate(**clone(inputs), **GEN, use_cache=True)
        uncached = model.generate(**clone(inputs), **GEN, use_cache=False)
    assert torch.equal(cached, uncached)


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


def test_mismatched_image_tokens(model):
    inputs = batch()
    inputs["input_ids"] = inputs["input_ids"].clone()
    inputs["input_ids"][0, -1] = IMAGE_TOKEN_ID
    for scope in ("image", "tile"):
        with (
            prunekit.attach(model, "resprune", budget=4, budget_scope=scope),
            pytest.raises(ValueError, match="image tokens but the images give"),
        ):
            model(**inputs)


def test_bad_budget_scope(model):
    with pytest.raises(ValueError, match=r"budget_scope must be one of \['image', 'tile'\]"):
        with prunekit.attach(model, "resprune", budget=4, budget_scope="images"):
            pass
    assert "forward" not in model.__dict__
    with pytest.raises(TypeError, match="unexpected keyword argument 'layr'"):
        with prunekit.attach(model, "resprune", budget=4, budget_scope="tile", layr=3):
            pass


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
