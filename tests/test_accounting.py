"""prunekit.accounting against torch.utils.flop_counter and real KV caches on tiny models."""

from __future__ import annotations

import pytest
import torch
import transformers
from tiny_models import prompt_ids, tiny_clip_vision_config, tiny_llama_config, tiny_llava
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import prunekit
from prunekit import accounting
from prunekit.accounting import DecoderShape

N_IMAGE = 16  # tiny_llava: 32 px / 8 px patches, CLS dropped


def counted_flops(fn) -> tuple[int, dict[str, int]]:
    """Total FLOPs of ``fn()`` under FlopCounterMode, and per module.

    CPU SDPA runs a fused kernel the counter has no formula for, so SDPA is
    forced onto its math backend, which the counter sees as matmuls.
    """
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        with torch.no_grad():
            fn()
    per_module = {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}
    return counter.get_total_flops(), per_module


def tiny_llm(kv_heads: int, attn: str, dtype=torch.float32) -> transformers.LlamaForCausalLM:
    torch.manual_seed(0)
    config = tiny_llama_config(num_key_value_heads=kv_heads, num_hidden_layers=3)
    config._attn_implementation = attn
    return transformers.LlamaForCausalLM(config).to(dtype).eval()


def test_hand_worked_example():
    # hidden 8, 2 query heads of width 4, 1 kv head, MLP 16, vocab 10, 3 tokens
    shape = DecoderShape(
        hidden_size=8,
        num_layers=2,
        num_heads=2,
        num_kv_heads=1,
        intermediate_size=16,
        vocab_size=10,
    )
    q_o = 2 * (2 * 3 * 8 * 8)  # (3 x 8) @ (8 x 8), twice
    k_v = 2 * (2 * 3 * 8 * 4)  # (3 x 8) @ (8 x 4), twice
    attention = 2 * 2 * (2 * 3 * 4 * 3)  # per head: (3 x 4) @ (4 x 3) and (3 x 3) @ (3 x 4)
    mlp = 3 * (2 * 3 * 8 * 16)
    assert accounting.layer_flops(shape, 3) == q_o + k_v + attention + mlp == 3744
    assert accounting.head_flops(shape, 3) == 2 * 8 * 10
    assert accounting.head_flops(shape, 3, "all") == 3 * 2 * 8 * 10
    assert accounting.head_flops(shape, 3, "none") == 0
    cost = accounting.prefill_cost(shape, 3, dtype=torch.bfloat16)
    assert cost == accounting.PrefillCost(3, 2 * 3744 + 160, 2 * 2 * 1 * 4 * 3 * 2)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("kv_heads", [4, 2, 1])  # MHA and two GQA groupings
@pytest.mark.parametrize("logits", ["all", "last"])
def test_prefill_flops_equal_flop_counter(attn, kv_heads, logits):
    model = tiny_llm(kv_heads, attn)
    ids = torch.randint(5, 60, (1, 11), generator=torch.Generator().manual_seed(1))
    keep = 0 if logits == "all" else 1  # transformers: logits_to_keep=0 means every position
    total, _ = counted_flops(lambda: model(input_ids=ids, use_cache=True, logits_to_keep=keep))
    assert total == accounting.prefill_cost(model.config, 11, logits=logits).flops


def test_batch_of_prompts_is_the_sum():
    model = tiny_llm(2, "sdpa")
    ids = torch.randint(5, 60, (3, 9), generator=torch.Generator().manual_seed(2))
    total, _ = counted_flops(lambda: model(input_ids=ids, logits_to_keep=1))
    assert total == 3 * accounting.prefill_cost(model.config, 9).flops


def test_llava_text_config_and_language_model_flops():
    model = tiny_llava()
    embeds = torch.randn(1, 13, model.config.text_config.hidden_size)
    total, _ = counted_flops(lambda: model(inputs_embeds=embeds, use_cache=True))
    assert total == accounting.prefill_cost(model.config, 13, logits="all").flops
    assert accounting.decoder_shape(model.config) == accounting.decoder_shape(
        model.config.text_config
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kv_heads", [4, 2])
def test_kv_cache_bytes_equal_the_cache_tensors(dtype, kv_heads):
    model = tiny_llm(kv_heads, "sdpa", dtype)
    with torch.no_grad():
        out = model(input_ids=torch.randint(5, 60, (1, 7)), use_cache=True)
    cached = sum(layer.keys.nbytes + layer.values.nbytes for layer in out.cache.layers)
    assert cached == accounting.kv_cache_bytes(model.config, 7, dtype=dtype)
    assert cached == accounting.prefill_cost(model.config, 7, dtype=dtype).kv_cache_bytes


def test_savings_before_llm_are_two_prefills():
    config = tiny_llama_config()
    s = accounting.savings(config, 576, 128, 64, dtype=torch.float16)
    full = accounting.prefill_cost(config, 640, dtype=torch.float16)
    pruned = accounting.prefill_cost(config, 192, dtype=torch.float16)
    assert (s.flops_before, s.flops_after) == (full.flops, pruned.flops)
    assert (s.kv_cache_bytes_before, s.kv_cache_bytes_after) == (
        full.kv_cache_bytes,
        pruned.kv_cache_bytes,
    )
    assert s.theoretical_speedup == pytest.approx(640 / 192)
    assert s.kv_cache_ratio == pytest.approx(192 / 640)
    assert s.flops_speedup == pytest.approx(full.flops / pruned.flops)
    assert "576 -> 128 visual tokens" in s.summary()


def test_savings_inside_the_llm_split_the_layers():
    shape = DecoderShape(
        hidden_size=16, num_layers=4, num_heads=2, intermediate_size=32, vocab_size=50
    )
    s = accounting.savings(shape, 20, 5, 4, pruned_after_layer=1, dtype=2)
    one_layer = DecoderShape(
        hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, vocab_size=50
    )
    assert s.flops_after == (
        accounting.layer_flops(one_layer, 24)
        + 3 * accounting.layer_flops(one_layer, 9)
        + accounting.head_flops(one_layer, 9)
    )
    assert s.kv_cache_bytes_after == accounting.kv_cache_bytes(
        one_layer, 24, dtype=2
    ) + 3 * accounting.kv_cache_bytes(one_layer, 9, dtype=2)
    assert s.theoretical_speedup == pytest.approx(4 * 24 / (24 + 3 * 9))


def test_savings_add_up():
    config = tiny_llama_config()
    a = accounting.savings(config, 16, 4, 5)
    b = accounting.savings(config, 16, 8, 3)
    total = a + b
    assert (total.visual_tokens, total.kept_visual_tokens, total.text_tokens) == (32, 12, 8)
    assert total.flops_before == a.flops_before + b.flops_before
    assert total.sequences == 2
    with pytest.raises(ValueError, match="pruning layer"):
        _ = a + accounting.savings(config, 16, 4, 5, pruned_after_layer=1)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: accounting.layer_flops(tiny_llama_config(), -1), ValueError, "tokens"),
        (lambda: accounting.layer_flops(tiny_llama_config(), 2.0), TypeError, "tokens"),
        (lambda: accounting.head_flops(tiny_llama_config(), 2, "first"), ValueError, "logits"),
        (lambda: accounting.savings(tiny_llama_config(), 4, 5), ValueError, "kept_tokens"),
        (
            lambda: accounting.savings(tiny_llama_config(), 4, 2, pruned_after_layer=2),
            ValueError,
            "pruned_after_layer",
        ),
        (lambda: accounting.decoder_shape(object()), TypeError, "config"),
        (
            lambda: DecoderShape(
                hidden_size=8,
                num_layers=1,
                num_heads=4,
                num_kv_heads=3,
                intermediate_size=8,
                vocab_size=8,
            ),
            ValueError,
            "num_kv_heads",
        ),
        (lambda: accounting.kv_cache_bytes(tiny_llama_config(), 3, dtype=0), ValueError, "dtype"),
    ],
)
def test_bad_input_names_the_argument(call, error, match):
    with pytest.raises(error, match=match):
        call()


# -- the attach handle ---------------------------------------------------------------------


def llava_inputs(text: list[int], seed: int = 0) -> dict[str, torch.Tensor]:
    ids = torch.tensor([prompt_ids(text, N_IMAGE)])
    pixels = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": pixels}


def language_model_flops(per_module: dict[str, int]) -> int:
    """FLOPs the counter attributes to the decoder and the LM head (not the vision side)."""
    return sum(
        flops
        for name, flops in per_module.items()
        if name.endswith(".language_model") or name.endswith(".lm_head")
    )


@pytest.mark.parametrize("budget", [4, 0.5])
def test_handle_savings_match_the_counted_prefill(budget):
    model = tiny_llava()
    inputs = llava_inputs([7, 8, 9])
    n_text = inputs["input_ids"].shape[1] - N_IMAGE
    _, unpruned = counted_flops(lambda: model(**inputs))
    with prunekit.attach(model, "resprune", budget=budget) as handle:
        _, pruned = counted_flops(lambda: model(**inputs))
    kept = prunekit.num_kept(N_IMAGE, budget)
    s = handle.savings(text_tokens=n_text, logits="all")  # a plain forward: every position
    assert (s.visual_tokens, s.kept_visual_tokens, s.text_tokens) == (N_IMAGE, kept, n_text)
    assert s.flops_before == language_model_flops(unpruned)
    assert s.flops_after == language_model_flops(pruned)
    assert s == accounting.savings(
        model.config, N_IMAGE, kept, n_text, logits="all", dtype=torch.float32
    )
    assert s.theoretical_speedup == pytest.approx((N_IMAGE + n_text) / (kept + n_text))


def test_handle_savings_sum_over_prompts_and_match_the_kv_cache():
    model = tiny_llava()
    inputs = llava_inputs([7, 8, 9, 10])
    n_text = inputs["input_ids"].shape[1] - N_IMAGE
    with prunekit.attach(model, "resprune", budget=6) as handle, torch.no_grad():
        out = model(**inputs, use_cache=True)
        model(**llava_inputs([7], seed=1))
    first = accounting.savings(model.config, N_IMAGE, 6, n_text, dtype=torch.float32)
    second = accounting.savings(model.config, N_IMAGE, 6, 3, dtype=torch.float32)
    assert handle.savings(text_tokens=[n_text, 3]) == first + second
    cached = sum(layer.keys.nbytes + layer.values.nbytes for layer in out.cache.layers)
    assert cached == first.kv_cache_bytes_after
    with pytest.raises(ValueError, match="text_tokens"):
        handle.savings(text_tokens=[1, 2, 3])


def test_handle_savings_inside_the_llm():
    model = tiny_llava()
    inputs = llava_inputs([7, 8, 9])
    n_text = inputs["input_ids"].shape[1] - N_IMAGE
    pruner = prunekit.create_pruner("composed", relevance="none", selection="topk")
    with prunekit.attach(model, pruner, budget=4, llm_layer=1) as handle, torch.no_grad():
        out = model(**inputs, use_cache=True)
    s = handle.savings(text_tokens=n_text)
    assert s.pruned_after_layer == 1
    assert s == accounting.savings(
        model.config, N_IMAGE, 4, n_text, pruned_after_layer=1, dtype=torch.float32
    )
    cached = sum(layer.keys.nbytes + layer.values.nbytes for layer in out.cache.layers)
    assert cached == s.kv_cache_bytes_after


def test_handle_savings_need_a_result_and_a_language_model():
    model = tiny_llava()
    with prunekit.attach(model, "resprune", budget=4) as handle:
        with pytest.raises(ValueError, match="pruning call"):
            handle.savings()
    encoder = transformers.CLIPVisionModel(tiny_clip_vision_config()).eval()
    with prunekit.attach(encoder, "resprune", budget=4, layer=1) as handle, torch.no_grad():
        encoder(pixel_values=torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="in_encoder"):
        handle.savings()
