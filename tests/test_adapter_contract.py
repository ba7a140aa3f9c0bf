"""The adapter contract (:mod:`prunekit.testing.adapters`) run over every registered family.

Each family's test module declares ``CONTRACT_CASES`` (its tiny model, inputs and hand-built
reference, next to the family's own helpers); qwen2_5_vl's case is built here from the helpers
of tests/test_qwen2_5_vl_adapter.py. A new family adds its test module to ``CASE_MODULES``;
a registered family without a case fails :func:`test_every_registered_family_has_a_case`.
"""

from __future__ import annotations

import importlib
import importlib.util

import pytest
import test_qwen2_5_vl_adapter as qwen
import torch

import prunekit
from prunekit.testing import AdapterCase, AdapterContract, ReferencePrompt, Refusal, kept_indices

#: test modules declaring ``CONTRACT_CASES`` (a module not written yet is skipped here; the
#: coverage test then names its family)
CASE_MODULES = (
    "test_llava_adapter",
    "test_llava_next_adapter",
    "test_internvl_adapter",
    "test_encoder_adapters",
    "test_qwen3_vl_adapter",
    "test_llava_onevision_adapter",
)


# -- qwen2_5_vl: the helpers of its test module ------------------------------------------------
QWEN_PROMPTS = (qwen.RAGGED[0], qwen.TWO_IMAGES[0])  # one image; two images of other grids


def qwen_inputs(model, which):
    """Prompts ``which`` of QWEN_PROMPTS; the pixels of prompt i are seeded by i."""
    inputs = qwen.batch([QWEN_PROMPTS[i] for i in which])
    inputs["pixel_values"] = torch.cat(
        [qwen.batch((QWEN_PROMPTS[i],), seed=i)["pixel_values"] for i in which]
    )
    return inputs


def qwen_reference(model, inputs, results, options):
    """The model's own features and get_rope_index positions, kept rows gathered."""
    positions = options.get("positions", "original")
    embeds, mask, position_ids = qwen.reference_prompt(
        model, inputs, kept_indices(results[0]), positions
    )
    return ReferencePrompt(inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids)


def qwen_decode(model, prompt, generate_kwargs):
    """Greedy decoding without KV cache over explicit 3-D positions (M-RoPE)."""
    return qwen.greedy_without_cache(
        model,
        prompt.inputs_embeds,
        prompt.attention_mask,
        prompt.position_ids,
        steps=generate_kwargs["max_new_tokens"],
    )


def without_mm_token_type_ids(inputs):
    return {k: v for k, v in inputs.items() if k != "mm_token_type_ids"}


QWEN2_5_VL = AdapterCase(
    family="qwen2_5_vl",
    build=qwen.tiny_qwen2_5_vl,
    inputs=qwen_inputs,
    reference=qwen_reference,
    decode=qwen_decode,
    recompute=qwen_decode,  # already a loop without KV cache
    variants=({"positions": "original"}, {"positions": "contiguous"}),
    budgets=(2, 0.5),
    full_budgets=(1.0, 12),
    generate_kwargs=qwen.GEN,
    refusals=(Refusal(inputs=without_mm_token_type_ids, match="mm_token_type_ids"),),
)


def collect_cases() -> list[AdapterCase]:
    """The CONTRACT_CASES of every module of CASE_MODULES that exists, and qwen2_5_vl's."""
    cases = []
    for name in CASE_MODULES:
        if importlib.util.find_spec(name) is not None:
            cases += getattr(importlib.import_module(name), "CONTRACT_CASES", [])
    return cases + [QWEN2_5_VL]


CASES = collect_cases()


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread (intra-op threads only add contention)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class TestEveryAdapter(AdapterContract):
    cases = CASES


def test_every_registered_family_has_a_case():
    covered = {case.family for case in CASES}
    missing = sorted(set(prunekit.list_adapters()) - covered)
    assert not missing, (
        f"registered adapter families without a contract case: {missing}; declare "
        "CONTRACT_CASES in the family's test module and add it to CASE_MODULES"
    )
    labels = [case.label for case in CASES]
    assert len(labels) == len(set(labels)), f"duplicate case labels: {labels}"
