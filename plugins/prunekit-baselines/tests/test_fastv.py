"""FastV: the head-mean last-query attention rule, by hand, against a straightforward
implementation of the official code, and end to end inside a tiny LLaVA."""

from __future__ import annotations

import pytest
import torch
from in_llm_reference import (
    FirstSelection,
    batch,
    prompt_ids,
    reference_logits,
    reference_signals,
    tiny_llava_layers,
)

import prunekit
from prunekit.testing import PrunerContract
from prunekit_baselines.fastv import FastV

GEN = dict(max_new_tokens=5, min_new_tokens=5, do_sample=False)


def official_fastv(attention: torch.Tensor, ratio: float) -> list[int]:
    """``fastv_forward`` for one prompt: ``attention`` (H, N) is the last query's row at
    the image columns; head mean, ``topk(round(N * (1 - R)))``, as sorted indices."""
    scores = attention.mean(dim=0)
    keep = round(attention.shape[-1] * (1 - ratio))
    return sorted(scores.topk(keep).indices.tolist())


def signal(attention: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"last_query_attention": attention}


def test_head_mean_top_k_by_hand():
    # head means: [0.15, 0.3, 0.05, 0.25, 0.2, 0.05]
    attention = torch.tensor(
        [[[0.1, 0.4, 0.0, 0.2, 0.3, 0.0], [0.2, 0.2, 0.1, 0.3, 0.1, 0.1]]], dtype=torch.float32
    )
    tokens = torch.randn(1, 6, 3)
    result = FastV().prune(tokens, budget=3, signals=signal(attention))
    assert result.indices.tolist() == [[1, 3, 4]]
    torch.testing.assert_close(
        result.scores, torch.tensor([[0.15, 0.3, 0.05, 0.25, 0.2, 0.05]]), rtol=0, atol=1e-7
    )
    assert FastV().prune(tokens, budget=0.5, signals=signal(attention)).indices.tolist() == [
        [1, 3, 4]
    ]
    # ties go to the lowest index: tokens 2 and 5 tie for the 5th place
    assert FastV().prune(tokens, budget=5, signals=signal(attention)).indices.tolist() == [
        [0, 1, 2, 3, 4]
    ]


def test_padded_tokens_are_never_kept():
    attention = torch.tensor([[[0.1, 0.2, 0.9, 0.9]], [[0.4, 0.3, 0.2, 0.1]]])
    mask = torch.tensor([[True, True, False, False], [True, True, True, True]])
    result = FastV().prune(
        torch.randn(2, 4, 3), budget=2, token_mask=mask, signals=signal(attention)
    )
    assert result.indices.tolist() == [[0, 1], [0, 1]]


@pytest.mark.parametrize("ratio", [0.5, 0.75, 0.25])
def test_matches_the_official_rule(ratio):
    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        n = int(torch.randint(8, 80, (1,), generator=g))
        attention = torch.softmax(torch.randn(3, 4, n + 10, generator=g) * 3, dim=-1)[..., 5:-5]
        keep = round(n * (1 - ratio))
        result = FastV().prune(
            torch.randn(3, n, 8, generator=g), budget=keep, signals=signal(attention)
        )
        for b in range(3):
            assert result.indices[b].tolist() == official_fastv(attention[b], ratio)


class TestFastVContract(PrunerContract):
    pruner = "fastv"


def test_registered_for_the_in_llm_point_only():
    pruner = prunekit.create_pruner("fastv")
    assert isinstance(pruner, FastV)
    assert pruner.pruning_points == frozenset({"in_llm"})


ROW = prompt_ids([7, 8, 9, 10], 16)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize(("layer", "ratio"), [(2, 0.5), (1, 0.75)])
def test_forward_equals_hand_built_reference(attn, layer, ratio):
    """Paper (K=2, R=50%) and demo-like (R=75%) settings on a 3-layer tiny LLaVA."""
    model = tiny_llava_layers(3, attn)
    inputs = batch([ROW], seed=4)
    with prunekit.attach(model, "fastv", budget=1 - ratio, llm_layer=layer) as handle:
        logits = model(**inputs).logits

    ids, pixels = inputs["input_ids"], inputs["pixel_values"]
    ref = reference_signals(model, ids, pixels, layer)
    image = ref["image"]
    kept = official_fastv(ref["attention"][:, -1, image], ratio)
    assert handle.results[0].indices.tolist() == [kept]
    dropped = {int(p) for i, p in enumerate(image) if i not in kept}
    expected = reference_logits(model, ids, pixels, layer, dropped)
    assert logits.shape == expected.shape == (1, ids.shape[1] - len(dropped), 64)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_generate_with_cache_equals_without(attn):
    """Cached decoding keeps the prompt's selection; uncached decoding re-runs the prompt
    at every step, so it is compared with the prompt's selection replayed."""
    model = tiny_llava_layers(3, attn)
    inputs = batch([prompt_ids([7, 8, 9], 16), prompt_ids([10], 32)], seed=5)
    with prunekit.attach(model, "fastv", budget=0.25, llm_layer=2) as handle:
        cached = model.generate(**inputs, **GEN, use_cache=True)
    assert len(handle.results) == 1
    assert handle.results[0].counts.tolist() == [4, 8]
    with prunekit.attach(model, FirstSelection(FastV()), budget=0.25, llm_layer=2) as replay:
        uncached = model.generate(**inputs, **GEN, use_cache=False)
    assert len(replay.results) == GEN["max_new_tokens"]
    assert all(torch.equal(r.indices, handle.results[0].indices) for r in replay.results)
    assert torch.equal(cached, uncached)


def test_uncached_generation_re_prunes_with_the_newest_token():
    """As the official code without a KV cache: each step's last token is the query."""
    model = tiny_llava_layers(3)
    inputs = batch([prompt_ids([7, 8, 9], 16)], seed=6)
    with prunekit.attach(model, "fastv", budget=4, llm_layer=2) as handle:
        out = model.generate(**inputs, **GEN, use_cache=False)
    assert len(handle.results) == GEN["max_new_tokens"]
    for step, result in enumerate(handle.results):
        ids = out[:, : inputs["input_ids"].shape[1] + step]
        ref = reference_signals(model, ids, inputs["pixel_values"], 2)
        kept = official_fastv(ref["attention"][:, -1, ref["image"]], 0.75)
        assert result.indices.tolist() == [kept]


def test_batch_equals_each_prompt_alone():
    model = tiny_llava_layers(3)
    rows = [prompt_ids([7, 8, 9], 16), prompt_ids([10], 32)]
    inputs = batch(rows, seed=7)
    with prunekit.attach(model, "fastv", budget=0.5, llm_layer=2):
        together = model.generate(**inputs, **GEN)
    images = [inputs["pixel_values"][:1], inputs["pixel_values"][1:]]
    for b, row in enumerate(rows):
        alone = batch([row])
        alone["pixel_values"] = images[b]
        with prunekit.attach(model, "fastv", budget=0.5, llm_layer=2):
            single = model.generate(**alone, **GEN)
        steps = GEN["max_new_tokens"]
        assert together[b, -steps:].tolist() == single[0, -steps:].tolist()
