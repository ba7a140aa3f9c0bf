"""Pruning inside the LLM after decoder layer K (the FastV / DART point) on the tiny LLaVA."""

from __future__ import annotations

import pytest
import torch
from tiny_models import IMAGE_TOKEN_ID, left_pad, prompt_ids, tiny_llava

import prunekit

GEN = dict(max_new_tokens=5, min_new_tokens=5, do_sample=False)


@pytest.fixture(scope="module", params=["sdpa", "eager"])
def model(request):
    return tiny_llava(attn_implementation=request.param)


def batch(rows, seed=0):
    ids, mask = left_pad(rows)
    n_images = sum(r.count(IMAGE_TOKEN_ID) for r in rows) // 16
    pixels = torch.randn(n_images, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    return {"input_ids": ids, "attention_mask": mask, "pixel_values": pixels}


def test_full_budget_is_the_unpruned_model(model):
    inputs = batch([prompt_ids([7, 8, 9], 16), prompt_ids([10], 16)])
    expected = model.generate(**inputs, **GEN)
    with prunekit.attach(model, "composed", budget=16, llm_layer=1) as handle:
        got = model.generate(**inputs, **GEN)
    assert torch.equal(got, expected)
    assert handle.results[0].counts.tolist() == [16, 16]


def test_forward_equals_hand_built_reference(model):
    """Run the decoder by hand: layers < K on everything, then only the kept tokens, original positions."""
    inputs = batch([prompt_ids([7, 8, 9], 16)])
    pruner = prunekit.create_pruner("composed", relevance="none", selection="greedy_residual")
    with prunekit.attach(model, pruner, budget=5, llm_layer=1) as handle:
        logits = model(**inputs).logits

    ids = inputs["input_ids"]
    feats = model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output[0]
    embeds = model.get_input_embeddings()(ids).masked_scatter(
        (ids == IMAGE_TOKEN_ID).unsqueeze(-1), feats
    )
    lm = model.model.language_model

    def causal(n):
        allowed = torch.ones(n, n, dtype=torch.bool).tril()[None, None]
        if lm.config._attn_implementation == "sdpa":
            return allowed
        return torch.zeros(1, 1, n, n).masked_fill(~allowed, torch.finfo(torch.float32).min)

    positions = torch.arange(ids.shape[1]).unsqueeze(0)
    cos, sin = lm.rotary_emb(embeds, position_ids=positions)
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
    hidden = hidden[:, keep]
    for layer in lm.layers[1:]:
        hidden = layer(
            hidden,
            attention_mask=causal(len(keep)),
            position_embeddings=(cos[:, keep], sin[:, keep]),
            position_ids=positions[:, keep],
        )
    expected = model.lm_head(lm.norm(hidden))
    assert logits.shape == expected.shape == (1, ids.shape[1] - 11, 64)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)


def test_kv_cache_equals_recomputation(model):
    inputs = batch([prompt_ids([7, 8, 9], 16), prompt_ids([10, 11], 16)])
    with prunekit.attach(model, "resprune", budget=4, llm_layer=1):
        cached = model.generate(**inputs, **GEN, use_cache=True)
        uncached = model.generate(**inputs, **GEN, use_cache=False)
    assert torch.equal(cached, uncached)


def test_ragged_batch_equals_each_alone(model):
    """Samples drop different numbers of tokens (one image vs two): filler slots keep the batch square."""
    rows = [prompt_ids([7, 8, 9], 16), prompt_ids([10], 32)]
    inputs = batch(rows, seed=2)
    with prunekit.attach(model, "resprune", budget=3, llm_layer=1):
        together = model.generate(**inputs, **GEN)
    images = [inputs["pixel_values"][:1], inputs["pixel_values"][1:]]
    for b, row in enumerate(rows):
        alone = batch([row])
        alone["pixel_values"] = images[b]
        with prunekit.attach(model, "resprune", budget=3, llm_layer=1):
            single = model.generate(**alone, **GEN)
        assert (
            together[b, -GEN["max_new_tokens"] :].tolist()
            == single[0, -GEN["max_new_tokens"] :].tolist()
        )


def test_restored_after_exit(model):
    inputs = batch([prompt_ids([7, 8, 9], 16)])
    before = model(**inputs).logits
    with (
        pytest.raises(RuntimeError, match="boom"),
        prunekit.attach(model, "resprune", budget=3, llm_layer=1),
    ):
        assert model(**inputs).logits.shape[1] < before.shape[1]
        raise RuntimeError("boom")
    assert all(not layer._forward_pre_hooks for layer in model.model.language_model.layers)
    assert torch.equal(model(**inputs).logits, before)


@pytest.mark.parametrize(
    ("layer", "error"), [(0, ValueError), (2, ValueError), (-1, ValueError), (1.0, TypeError)]
)
def test_bad_layer(model, layer, error):
    with (
        pytest.raises(error, match="llm_layer"),
        prunekit.attach(model, "resprune", budget=3, llm_layer=layer),
    ):
        pass
