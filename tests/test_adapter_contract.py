"""The adapter contract (:mod:`prunekit.testing.adapters`) run over every registered family.

Each family's test module declares ``CONTRACT_CASES`` (its tiny model, inputs and hand-built
reference, next to the family's own helpers); qwen2_5_vl's case is built here from the helpers
of tests/test_qwen2_5_vl_adapter.py. A new family adds its test module to ``CASE_MODULES``;
a registered family without a case fails :func:`test_every_registered_family_has_a_case`.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util

import pytest
import test_qwen2_5_vl_adapter as qwen
import torch
from tiny_models import Words

import prunekit
from prunekit.adapters.attach import AttachHandle
from prunekit.adapters.vlm import PreLLMAdapter
from prunekit.testing import (
    AdapterCase,
    AdapterContract,
    ReferencePrompt,
    Refusal,
    check_adapter,
    kept_indices,
)

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


def qwen_features(model, inputs, options):
    """What the pruner must see: the model's own merged features, per image."""
    output = model.model.get_image_features(
        inputs["pixel_values"], inputs["image_grid_thw"], return_dict=True
    )
    return list(output.pooler_output)


#: prompt 0 reads "what red ball ? and dog", prompt 1 "what red ball ?" (fewer nouns)
QWEN_WORDS = {9: "what", 10: "red", 11: "ball", 12: "?", 13: "and", 14: "dog"}


def without_mm_token_type_ids(inputs):
    return {k: v for k, v in inputs.items() if k != "mm_token_type_ids"}


QWEN2_5_VL = AdapterCase(
    family="qwen2_5_vl",
    build=qwen.tiny_qwen2_5_vl,
    inputs=qwen_inputs,
    reference=qwen_reference,
    decode=qwen_decode,
    recompute=qwen_decode,  # already a loop without KV cache
    features=qwen_features,
    tokenizer=Words(QWEN_WORDS),
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


def test_every_case_says_what_the_pruner_must_see():
    """No case skips the pruner-input check, and no VLM case skips the text check."""
    assert [c.label for c in CASES if c.features is None] == []
    assert [c.label for c in CASES if c.kind == "vlm" and c.tokenizer is None] == []


# -- the new checks fail on planted bugs (the adapters' code is patched for one test) ------------
def one_case(label: str) -> AdapterCase:
    """The case ``label`` cut to one budget and option set."""
    (case,) = [c for c in CASES if c.label == label]
    return dataclasses.replace(case, budgets=case.budgets[:1], variants=case.variants[:1])


def test_pruner_input_check_catches_shifted_features(monkeypatch):
    """A VLM adapter that shows the pruner its features shifted by one row (while splicing
    the right ones) fails the pruner-input check."""
    original = PreLLMAdapter._prune

    def shifted(self, handle, images, *args, **kwargs):
        features = images.features
        images.features = [f.roll(1, dims=0) for f in features]
        try:
            return original(self, handle, images, *args, **kwargs)
        finally:
            images.features = features

    monkeypatch.setattr(PreLLMAdapter, "_prune", shifted)
    with pytest.raises(AssertionError, match="pruner input.*row 0, the tokens the pruner got"):
        check_adapter(one_case("llava"), checks=("pruner_input",))


def test_pruner_input_check_catches_a_selection_on_other_tokens(monkeypatch):
    """An encoder whose pruner selects on [CLS] plus shifted patches (the tokens recorded
    being the right ones) fails: the kept indices are not the selection on the model's tokens."""
    original = AttachHandle.prune

    def on_other_tokens(self, tokens, **kwargs):
        return original(self, tokens.roll(1, dims=1), **kwargs)

    monkeypatch.setattr(AttachHandle, "prune", on_other_tokens)
    with pytest.raises(AssertionError, match="kept indices vs the pruner's own selection"):
        check_adapter(one_case("hf_dinov2"), checks=("pruner_input",))


def test_text_check_catches_the_first_prompts_text_everywhere(monkeypatch):
    """A VLM adapter that weights every image by the first prompt's nouns fails the text check."""
    original = PreLLMAdapter._text

    def first_prompts_text(self, input_ids, attention_mask, is_image, owner):
        return original(self, input_ids, attention_mask, is_image, [owner[0]] * len(owner))

    monkeypatch.setattr(PreLLMAdapter, "_text", first_prompts_text)
    for label in ("llava", "qwen2_5_vl"):
        with pytest.raises(AssertionError, match="text the pruner got in the batch vs"):
            check_adapter(one_case(label), checks=("text",))
