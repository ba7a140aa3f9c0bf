"""The in-LLM signals (``llm_layer=K``) against the model's own eager attention, KV cache
and hidden states, on tiny LLaVA models with GQA (4 query heads, 2 key/value heads)."""

from __future__ import annotations

import pytest
import torch
from in_llm_reference import (
    batch,
    prompt_ids,
    reference_signals,
    tiny_llava_layers,
)

import prunekit
from prunekit import Picks, TokenPruner
from prunekit.adapters.attach import find_adapter
from prunekit.adapters.llm_layers import LLM_SIGNALS
from prunekit.core.signals import SIGNALS


class Recorder(TokenPruner):
    """Keeps the first tokens; records the signals it was given."""

    pruning_points = frozenset({"in_llm"})

    def __init__(self, signals) -> None:
        self.required_signals = frozenset(signals)
        self.seen: list[dict[str, torch.Tensor]] = []

    def select(self, inputs, num_keep):
        self.seen.append(dict(inputs.signals))
        order = torch.arange(num_keep).expand(inputs.batch_size, -1)
        return Picks(order=order.contiguous())


ROWS = [prompt_ids([7, 8, 9, 10, 11], 16), prompt_ids([12, 13], 16, prefix=[1, 5, 6, 4])]


def test_every_llm_signal_is_registered_with_an_example():
    for name in LLM_SIGNALS:
        spec = SIGNALS[name]
        assert spec.example is not None
        value = spec.example(2, 7, 5, torch.Generator().manual_seed(0))
        assert value.shape[0] == 2
        if spec.token_axis is not None:
            assert value.shape[spec.token_axis] == 7


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("layer", [1, 2])
def test_signals_match_the_models_own_computation(attn, layer):
    model = tiny_llava_layers(3, attn)
    inputs = batch(ROWS, seed=3)
    mask = inputs["attention_mask"]
    # generate()'s position ids for a left-padded batch (a plain forward would count the pads)
    positions = (mask.cumsum(dim=1) - 1).clamp_min(0)
    recorder = Recorder(LLM_SIGNALS)
    with prunekit.attach(model, recorder, budget=5, llm_layer=layer):
        model(**inputs, position_ids=positions)
    (seen,) = recorder.seen
    assert seen["last_query_attention"].shape == (2, 4, 16)
    assert seen["llm_image_keys"].shape == (2, 16, 4, 8)
    assert seen["llm_image_hidden"].shape == (2, 16, 32)
    assert seen["llm_text_keys"].shape == (2, 5, 4, 8)
    assert seen["llm_text_mask"].tolist() == [[True] * 5, [True, True, False, False, False]]

    tolerance = dict(rtol=1e-5, atol=1e-6)
    for b, row in enumerate(ROWS):
        ids = torch.tensor([row])
        ref = reference_signals(model, ids, inputs["pixel_values"][b : b + 1], layer)
        image, text = ref["image"], ref["text"]
        t = len(text)
        torch.testing.assert_close(
            seen["last_query_attention"][b], ref["attention"][:, -1, image], **tolerance
        )
        torch.testing.assert_close(seen["llm_image_keys"][b], ref["keys"][image], **tolerance)
        torch.testing.assert_close(seen["llm_image_hidden"][b], ref["hidden"][image], **tolerance)
        torch.testing.assert_close(seen["llm_text_keys"][b, :t], ref["keys"][text], **tolerance)
        torch.testing.assert_close(seen["llm_text_hidden"][b, :t], ref["hidden"][text], **tolerance)
        assert seen["llm_image_positions"][b].tolist() == image.tolist()
        assert seen["llm_text_positions"][b, :t].tolist() == text.tolist()
        # padded text rows are zero
        assert not seen["llm_text_keys"][b, t:].any()
        assert not seen["llm_text_hidden"][b, t:].any()


def test_attention_row_is_a_distribution_over_the_real_prompt():
    model = tiny_llava_layers(3)
    inputs = batch(ROWS, seed=1)
    recorder = Recorder({"last_query_attention"})
    with prunekit.attach(model, recorder, budget=5, llm_layer=2):
        model(**inputs)
    attention = recorder.seen[0]["last_query_attention"]
    assert (attention > 0).all()
    assert (attention.sum(dim=-1) < 1).all()  # the text and system tokens take the rest


def test_layer_input_is_recorded_only_when_needed():
    model = tiny_llava_layers(3)
    layers = model.model.language_model.layers
    inputs = batch(ROWS[:1])
    with prunekit.attach(model, "resprune", budget=5, llm_layer=2):
        assert not layers[1]._forward_pre_hooks  # no signal: layer K-1 untouched
        model(**inputs)
    for signals in ({"llm_image_hidden", "llm_text_mask"}, {"llm_image_positions"}):
        with prunekit.attach(model, Recorder(signals), budget=5, llm_layer=2):
            assert not layers[1]._forward_pre_hooks  # computed without layer K-1's input
            model(**inputs)
    with prunekit.attach(model, Recorder({"last_query_attention"}), budget=5, llm_layer=2):
        assert len(layers[1]._forward_pre_hooks) == 1
    assert all(not layer._forward_pre_hooks for layer in layers)


def test_only_the_requested_signals_are_passed():
    model = tiny_llava_layers(3)
    recorder = Recorder({"llm_image_keys"})
    with prunekit.attach(model, recorder, budget=5, llm_layer=1):
        model(**batch(ROWS[:1]))
    assert set(recorder.seen[0]) == {"llm_image_keys"}


def test_adapter_lists_the_in_llm_signals():
    model = tiny_llava_layers(3)
    adapter = find_adapter(model)
    assert adapter(model, llm_layer=2).available_signals() == LLM_SIGNALS
    assert "last_query_attention" not in adapter(model).available_signals()
    with pytest.raises(ValueError, match=r"needs \['last_query_attention'\].*'pre_llm'"):
        with prunekit.attach(model, "fastv", budget=4):
            pass


def test_decode_steps_keep_the_prompts_selection():
    """With a KV cache the signals are computed once, on the prompt."""
    model = tiny_llava_layers(3)
    recorder = Recorder({"last_query_attention"})
    with prunekit.attach(model, recorder, budget=5, llm_layer=2) as handle:
        model.generate(**batch(ROWS), max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert len(recorder.seen) == len(handle.results) == 1


def test_prompt_ending_with_the_image_has_no_text():
    model = tiny_llava_layers(3)
    rows = [[1, 5] + [3] * 16, prompt_ids([7, 8], 16)]  # the first prompt ends with its image
    recorder = Recorder(LLM_SIGNALS)
    with prunekit.attach(model, recorder, budget=5, llm_layer=2):
        model(**batch(rows))
    seen = recorder.seen[0]
    assert seen["llm_text_mask"].tolist() == [[False, False], [True, True]]
    assert seen["llm_text_keys"].shape == (2, 2, 4, 8)
    with prunekit.attach(model, "dart", budget=5, llm_layer=2) as handle:
        model(**batch(rows[:1]))
    assert handle.results[0].counts.tolist() == [5]
