"""DART: key-norm pivots and duplication-aware claims, by hand, against a straightforward
implementation of the official code, and end to end inside a tiny LLaVA."""

from __future__ import annotations

import math

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
from prunekit_baselines.dart import DART, claim_counts, set_iteration_order

GEN = dict(max_new_tokens=5, min_new_tokens=5, do_sample=False)


def official_dart(
    hidden: torch.Tensor,
    keys: torch.Tensor,
    image: list[int],
    text: list[int],
    max_num_trunction: int,
    pivot_image: int = 4,
    pivot_text: int = 4,
    order: str = "set",
) -> list[int]:
    """DART's ``get_retained_image_token`` for one prompt, on absolute positions.

    ``hidden`` (L, D) final-normed hidden states, ``keys`` (L, H, d) post-RoPE keys,
    ``image`` / ``text`` the positions of the image tokens and of the tokens after them.
    ``order="set"`` visits the pivots as the official code does (``list`` of a copy of
    the ``set`` of their positions); ``"norm"`` in insertion order (image pivots, then
    text pivots, each by decreasing key norm). Returns the kept positions, sorted.
    """
    per_pivot = max_num_trunction // (pivot_image + pivot_text)
    norms = keys.flatten(1).abs().sum(dim=-1)
    image_t, text_t = torch.tensor(image), torch.tensor(text)
    image_pivots = image_t[norms[image_t].topk(pivot_image).indices].tolist()
    text_pivots = text_t[norms[text_t].topk(pivot_text).indices].tolist()
    chosen = set(image_pivots + text_pivots)
    visit = list(chosen.copy()) if order == "set" else image_pivots + text_pivots
    remaining = set(image) - set(image_pivots)
    for pivot in visit:
        candidates = sorted(remaining)
        similarity = torch.nn.functional.cosine_similarity(
            hidden[pivot].unsqueeze(0), hidden[candidates], dim=-1
        )
        claimed = [candidates[i] for i in (-similarity).topk(per_pivot).indices.tolist()]
        chosen.update(claimed)
        remaining.difference_update(claimed)
    return sorted(chosen - set(text_pivots))


def dart_signals(hidden, keys, image, text) -> dict[str, torch.Tensor]:
    """prunekit's signals (batch of one) for the positions ``image`` and ``text``."""
    return {
        "llm_image_keys": keys[image].unsqueeze(0),
        "llm_image_hidden": hidden[image].unsqueeze(0),
        "llm_image_positions": torch.tensor([image]),
        "llm_text_keys": keys[text].unsqueeze(0),
        "llm_text_hidden": hidden[text].unsqueeze(0),
        "llm_text_mask": torch.ones(1, len(text), dtype=torch.bool),
        "llm_text_positions": torch.tensor([text]),
    }


def unit(degrees: float) -> list[float]:
    return [math.cos(math.radians(degrees)), math.sin(math.radians(degrees))]


# -- the defining computation, by hand ------------------------------------------------
# 6 image tokens (positions 10..15) and 2 text tokens (position 40 and 41); one image
# pivot (largest key norm: token 1) and one text pivot (larger norm: position 40).
# Hidden states are unit vectors at these angles (degrees):
ANGLES = [20, 0, 180, 150, 90, 270]
TEXT_ANGLE = 90
BY_HAND = {
    "llm_image_keys": torch.tensor([1.0, 5, 2, 3, 0.5, 4]).view(1, 6, 1, 1),
    "llm_image_hidden": torch.tensor([[unit(a) for a in ANGLES]]),
    "llm_image_positions": torch.arange(10, 16).unsqueeze(0),
    "llm_text_keys": torch.tensor([-3.0, 1.0]).view(1, 2, 1, 1),  # L1 norms 3 and 1
    "llm_text_hidden": torch.tensor([[unit(TEXT_ANGLE), unit(0)]]),
    "llm_text_mask": torch.ones(1, 2, dtype=torch.bool),
    "llm_text_positions": torch.tensor([[40, 41]]),
}


def test_pivots_claim_the_least_similar_tokens_by_hand():
    tokens = torch.randn(1, 6, 2)
    dart = DART(pivot_image_tokens=1, pivot_text_tokens=1, pivot_order="norm")
    # budget 5: pivot 1 + 2 claims each. Image pivot (0 deg) first: 180 (token 2) and
    # 150 (token 3); then the text pivot (90 deg) from {20, 90, 270}: 270 (5) and 20 (0).
    assert dart.prune(tokens, budget=5, signals=BY_HAND).indices.tolist() == [[0, 1, 2, 3, 5]]
    # budget 4: 3 claims, 2 for the first pivot (tokens 2, 3), 1 for the second (5)
    assert dart.prune(tokens, budget=4, signals=BY_HAND).indices.tolist() == [[1, 2, 3, 5]]
    # budget 1: the image pivot alone
    assert dart.prune(tokens, budget=1, signals=BY_HAND).indices.tolist() == [[1]]


def test_set_order_changes_which_pivot_claims_first_by_hand():
    assert list({11, 40}) == [40, 11]  # CPython: the text pivot (position 40) comes first
    tokens = torch.randn(1, 6, 2)
    dart = DART(pivot_image_tokens=1, pivot_text_tokens=1, pivot_order="set")
    # the text pivot (90 deg) first: 270 (5) and 180 (2); then the image pivot (0 deg)
    # from {20, 150, 90}: 150 (3) and 90 (4)
    assert dart.prune(tokens, budget=5, signals=BY_HAND).indices.tolist() == [[1, 2, 3, 4, 5]]


def test_set_iteration_order_is_pythons():
    positions = [40, 300, 77, 610, 612, 615, 620, 630]
    visit = set_iteration_order(positions)
    assert [positions[i] for i in visit] == list(set(positions).copy())
    assert [positions[i] for i in visit] != sorted(positions)  # so the order matters
    # a position given twice is visited once per entry, where the set visits it
    assert list({5, 3}) == [3, 5]
    assert set_iteration_order([5, 5, 3]) == [2, 0, 1]


def test_budget_arithmetic():
    assert DART().official_budget(128) == 132  # 4 + 8 x 16
    assert DART().official_budget(64) == 68
    assert DART(pivot_image_tokens=2, pivot_text_tokens=2).official_budget(10) == 10
    assert claim_counts(128, 8) == [16] * 8
    assert claim_counts(10, 4) == [3, 3, 2, 2]


def random_prompt(seed: int, n_image: int = 40, n_text: int = 9, start: int = 35):
    g = torch.Generator().manual_seed(seed)
    length = start + n_image + n_text
    hidden = torch.randn(length, 16, generator=g)
    keys = torch.randn(length, 4, 8, generator=g)
    image = list(range(start, start + n_image))
    text = list(range(start + n_image, length))
    return hidden, keys, image, text


@pytest.mark.parametrize("order", ["set", "norm"])
@pytest.mark.parametrize("max_num_trunction", [8, 16, 24])
def test_matches_the_official_rule(order, max_num_trunction):
    dart = DART(pivot_order=order)
    budget = dart.official_budget(max_num_trunction)
    for seed in range(15):
        hidden, keys, image, text = random_prompt(seed, start=30 + seed)
        expected = official_dart(hidden, keys, image, text, max_num_trunction, order=order)
        assert len(expected) == budget
        result = dart.prune(
            hidden[image].unsqueeze(0),
            budget=budget,
            signals=dart_signals(hidden, keys, image, text),
        )
        assert [image[i] for i in result.indices[0].tolist()] == expected


def generalised_dart(hidden, keys, image, text, budget, order, pivot_image=4, pivot_text=4):
    """:func:`official_dart` for any budget ``c`` (kept tokens), as documented: the ``c - 4``
    claims are split ``R // 8`` per pivot, the first ``R % 8`` visited pivots one more."""
    norms = keys.flatten(1).abs().sum(dim=-1)
    image_t, text_t = torch.tensor(image), torch.tensor(text)
    image_pivots = image_t[norms[image_t].topk(pivot_image).indices].tolist()
    text_pivots = text_t[norms[text_t].topk(pivot_text).indices].tolist()
    chosen = set(image_pivots + text_pivots)
    visit = list(chosen.copy()) if order == "set" else image_pivots + text_pivots
    share, extra = divmod(budget - pivot_image, len(visit))
    remaining = set(image) - set(image_pivots)
    for j, pivot in enumerate(visit):
        candidates = sorted(remaining)
        similarity = torch.nn.functional.cosine_similarity(
            hidden[pivot].unsqueeze(0), hidden[candidates], dim=-1
        )
        count = share + (j < extra)
        claimed = [candidates[i] for i in (-similarity).topk(count).indices.tolist()]
        chosen.update(claimed)
        remaining.difference_update(claimed)
    return sorted(chosen - set(text_pivots))


@pytest.mark.parametrize("order", ["set", "norm"])
def test_budgets_off_the_official_grid_in_a_ragged_batch(order):
    """Budgets whose claims do not split evenly: the first visited pivots claim one more,
    in the visiting order, for every sample of a padded batch at once."""
    prompts = [random_prompt(seed, n_image=40 - 3 * seed, start=30 + 5 * seed) for seed in range(4)]
    n = 40
    budgets = [13, 21, 30, 9]  # kept image tokens: 4 pivots + claims of 9, 17, 26, 5
    tokens = torch.zeros(4, n, 16)
    mask = torch.zeros(4, n, dtype=torch.bool)
    signals = {
        "llm_image_keys": torch.zeros(4, n, 4, 8),
        "llm_image_hidden": torch.zeros(4, n, 16),
        "llm_image_positions": torch.zeros(4, n, dtype=torch.int64),
    }
    text_signals = [dart_signals(*prompt) for prompt in prompts]
    for b, (hidden, _, image, _) in enumerate(prompts):
        m = len(image)
        tokens[b, :m] = hidden[image]
        mask[b, :m] = True
        for name in signals:
            signals[name][b, :m] = text_signals[b][name][0]
    for name in ("llm_text_keys", "llm_text_hidden", "llm_text_mask", "llm_text_positions"):
        signals[name] = torch.cat([t[name] for t in text_signals])
    dart = DART(pivot_order=order)
    batched = DART(pivot_order=order).select(
        *_prepared(dart, tokens, mask, signals, torch.tensor(budgets))
    )
    for b, (hidden, keys, image, text) in enumerate(prompts):
        expected = generalised_dart(hidden, keys, image, text, budgets[b], order)
        kept = sorted(image[i] for i in batched.order[b, : budgets[b]].tolist())
        assert kept == expected, f"sample {b}"


def _prepared(pruner, tokens, mask, signals, counts):
    """``select``'s inputs for per-sample budgets ``counts`` (as ``prune`` passes them)."""
    import dataclasses

    from prunekit.core.inputs import validate_inputs

    inputs = validate_inputs(tokens, token_mask=mask, signals=signals)
    return dataclasses.replace(inputs, keep_counts=counts), int(counts.max())


def test_set_and_norm_orders_differ_somewhere():
    differ = 0
    for seed in range(10):
        hidden, keys, image, text = random_prompt(seed)
        signals = dart_signals(hidden, keys, image, text)
        a = DART(pivot_order="set").prune(hidden[image].unsqueeze(0), budget=20, signals=signals)
        b = DART(pivot_order="norm").prune(hidden[image].unsqueeze(0), budget=20, signals=signals)
        differ += not torch.equal(a.indices, b.indices)
    assert differ > 0


def test_fewer_text_tokens_than_pivots_and_no_text():
    hidden, keys, image, text = random_prompt(0, n_text=2)
    signals = dart_signals(hidden, keys, image, text)
    result = DART().prune(hidden[image].unsqueeze(0), budget=10, signals=signals)
    assert result.counts.tolist() == [10]
    signals["llm_text_mask"][:] = False
    result = DART().prune(hidden[image].unsqueeze(0), budget=10, signals=signals)
    assert result.counts.tolist() == [10]


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="pivot_order"):
        DART(pivot_order="sorted")
    with pytest.raises(ValueError, match="pivot_image_tokens"):
        DART(pivot_image_tokens=0)
    with pytest.raises(TypeError, match="pivot_text_tokens"):
        DART(pivot_text_tokens=1.5)
    assert "llm_text_keys" not in DART(pivot_text_tokens=0).required_signals
    assert "llm_image_positions" not in DART(pivot_order="norm").required_signals
    assert DART().pruning_points == frozenset({"in_llm"})


class TestDARTContract(PrunerContract):
    cases = [
        ("dart", {}),
        ("dart", {"pivot_order": "norm"}),
        ("dart", {"pivot_image_tokens": 2, "pivot_text_tokens": 0}),
    ]


# -- end to end inside the tiny LLaVA ---------------------------------------------------
ROW = prompt_ids([7, 8, 9, 10, 11, 12], 16)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("order", ["set", "norm"])
def test_forward_equals_hand_built_reference(attn, order):
    """Official defaults on a 3-layer tiny LLaVA: K=2, 4 + 4 pivots, B=8 (keeps 12 of 16)."""
    model = tiny_llava_layers(3, attn)
    inputs = batch([ROW], seed=8)
    dart = DART(pivot_order=order)
    with prunekit.attach(model, dart, budget=dart.official_budget(8), llm_layer=2) as handle:
        logits = model(**inputs).logits

    ids, pixels = inputs["input_ids"], inputs["pixel_values"]
    ref = reference_signals(model, ids, pixels, 2)
    image, text = ref["image"].tolist(), ref["text"].tolist()
    kept = official_dart(ref["hidden"], ref["keys"], image, text, 8, order=order)
    assert [image[i] for i in handle.results[0].indices[0].tolist()] == kept
    dropped = set(image) - set(kept)
    expected = reference_logits(model, ids, pixels, 2, dropped)
    assert logits.shape == expected.shape == (1, ids.shape[1] - 4, 64)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_generate_with_cache_equals_without(attn):
    """Uncached decoding re-runs the prompt (whose text then includes generated tokens),
    so it is compared with the prompt's selection replayed."""
    model = tiny_llava_layers(3, attn)
    rows = [prompt_ids([7, 8, 9, 10, 11], 16), prompt_ids([10, 12], 32)]
    inputs = batch(rows, seed=9)
    with prunekit.attach(model, "dart", budget=0.5, llm_layer=2) as handle:
        cached = model.generate(**inputs, **GEN, use_cache=True)
    assert len(handle.results) == 1
    assert handle.results[0].counts.tolist() == [8, 16]
    with prunekit.attach(model, FirstSelection(DART()), budget=0.5, llm_layer=2) as replay:
        uncached = model.generate(**inputs, **GEN, use_cache=False)
    assert all(torch.equal(r.indices, handle.results[0].indices) for r in replay.results)
    assert torch.equal(cached, uncached)


def test_batch_equals_each_prompt_alone():
    model = tiny_llava_layers(3)
    rows = [prompt_ids([7, 8, 9, 10, 11], 16), prompt_ids([10, 12], 32)]
    inputs = batch(rows, seed=10)
    with prunekit.attach(model, "dart", budget=6, llm_layer=2) as together:
        joint = model.generate(**inputs, **GEN)
    images = [inputs["pixel_values"][:1], inputs["pixel_values"][1:]]
    steps = GEN["max_new_tokens"]
    for b, row in enumerate(rows):
        alone = batch([row])
        alone["pixel_values"] = images[b]
        with prunekit.attach(model, "dart", budget=6, llm_layer=2) as single:
            out = model.generate(**alone, **GEN)
        assert joint[b, -steps:].tolist() == out[0, -steps:].tolist()
        assert together.results[0].split()[b].tolist() == single.results[0].indices[0].tolist()
