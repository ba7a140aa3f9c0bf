"""The ``llm_attention`` relevance and its ``text_attention`` signal (pruning inside the LLM).

The signal is checked against the model's own eager attention weights
(``output_attentions`` on an eager twin of the unpruned tiny LLaVA), the weights against
hand-worked values and a float64 brute force, and pruning through ``generate`` against
ComposedPruner run standalone on the unpruned model's hidden states.
"""

from __future__ import annotations

import pytest
import torch
import transformers
from tiny_models import (
    IMAGE_TOKEN_ID,
    left_pad,
    prompt_ids,
    tiny_clip_vision_config,
    tiny_llama_config,
)

import prunekit
from prunekit import Picks, TokenPruner
from prunekit.adapters.llm_layers import LAYER_INPUT_SIGNALS, LLM_SIGNALS
from prunekit.core.signals import SIGNALS
from prunekit.strategies.relevance import LLMAttentionRelevance
from prunekit.testing import PrunerContractTests

LLM_ATTENTION = {"name": "llm_attention", "alpha": 1.0}
#: two left-padded prompts of different lengths (23 and 19 tokens), 16 image tokens each
ROWS = [prompt_ids([7, 8, 9, 10, 11], 16), prompt_ids([12, 13], 16, prefix=[1])]


def tiny_llava_3(attn: str = "sdpa") -> transformers.LlavaForConditionalGeneration:
    """tiny_models.tiny_llava with 3 decoder layers (GQA: 4 heads, 2 kv), peaked attention."""
    torch.manual_seed(0)
    config = transformers.LlavaConfig(
        vision_config=tiny_clip_vision_config(),
        text_config=tiny_llama_config(num_hidden_layers=3, initializer_range=0.2),
        image_token_id=IMAGE_TOKEN_ID,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    config._attn_implementation = attn
    return transformers.LlavaForConditionalGeneration(config).eval()


@pytest.fixture(scope="module", params=["sdpa", "eager"])
def model(request):
    return tiny_llava_3(request.param)


def batch(rows, seed=0):
    ids, mask = left_pad(rows)
    n_images = sum(r.count(IMAGE_TOKEN_ID) for r in rows) // 16
    pixels = torch.randn(n_images, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    return {"input_ids": ids, "attention_mask": mask, "pixel_values": pixels}


def positions_of(inputs):
    """generate()'s position ids for a left-padded batch (a plain forward counts the pads)."""
    return (inputs["attention_mask"].cumsum(dim=1) - 1).clamp_min(0)


def image_and_text(ids: torch.Tensor, mask: torch.Tensor):
    """Image positions and text positions (real, after the first image token, not image) of one row."""
    is_image = ids == IMAGE_TOKEN_ID
    image = is_image.nonzero()[:, 0]
    after = torch.arange(len(ids)) > image[0]
    text = (after & ~is_image & mask.bool()).nonzero()[:, 0]
    return image, text


@torch.no_grad()
def reference(model, inputs, layer):
    """Per sample: the (H, N) float64 text attention read from an eager twin's own
    ``output_attentions`` at layer ``layer - 1``, and the (N, D) hidden states entering
    layer ``layer`` of the unpruned model."""
    eager = tiny_llava_3("eager")
    eager.load_state_dict(model.state_dict())
    positions = positions_of(inputs)
    attentions = eager(**inputs, position_ids=positions, output_attentions=True).attentions
    hidden = model(**inputs, position_ids=positions, output_hidden_states=True).hidden_states
    signal, entering = [], []
    for b in range(inputs["input_ids"].shape[0]):
        image, text = image_and_text(inputs["input_ids"][b], inputs["attention_mask"][b])
        rows = attentions[layer - 1][b].double()[:, text][:, :, image]  # (H, T, N)
        signal.append(rows.sum(dim=1) / max(len(text), 1))  # zeros without text
        entering.append(hidden[layer][b, image])
    return torch.stack(signal), torch.stack(entering)


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


# -- the signal --------------------------------------------------------------------------
def test_text_attention_is_a_layer_input_signal_with_an_example():
    assert "text_attention" in LAYER_INPUT_SIGNALS  # the layer K-1 input gets recorded
    assert LAYER_INPUT_SIGNALS <= LLM_SIGNALS
    spec = SIGNALS["text_attention"]
    assert (spec.shape, spec.token_axis, spec.kind) == ("(B, H, N)", -1, "float")
    value = spec.example(64, 7, 5, torch.Generator().manual_seed(0))
    assert value.shape == (64, 4, 7) and (value >= 0).all()
    zero = (value == 0).all(dim=(1, 2))
    assert zero.any() and not zero.all()  # some samples without text, most with
    assert (value[~zero] > 0).all() and (value.sum(dim=-1) < 1).all()


@pytest.mark.parametrize("layer", [1, 2])
@pytest.mark.parametrize("rows", [ROWS, ROWS[:1]], ids=["left-padded", "single"])
def test_signal_is_the_models_own_eager_attention(model, layer, rows):
    """A left-padded batch (the layer gets a 4-D mask) and one unpadded prompt (under
    SDPA the layer gets no mask: causal-over-real is rebuilt)."""
    inputs = batch(rows, seed=3)
    recorder = Recorder({"text_attention", "last_query_attention"})
    with prunekit.attach(model, recorder, budget=5, llm_layer=layer):
        model(**inputs, position_ids=positions_of(inputs))
    (seen,) = recorder.seen
    expected, _ = reference(model, inputs, layer)
    assert seen["text_attention"].shape == expected.shape == (len(rows), 4, 16)
    assert seen["text_attention"].dtype == torch.float32
    torch.testing.assert_close(seen["text_attention"].double(), expected, rtol=1e-5, atol=1e-7)
    # not a uniform or last-query row: the text rows average to something else
    assert not torch.allclose(seen["text_attention"], seen["last_query_attention"], atol=1e-3)
    spread = expected.mean(dim=1).amax(dim=1) - expected.mean(dim=1).amin(dim=1)
    assert (spread > 1e-2).all()


def test_samples_without_text_get_zeros(model):
    rows = [[1, 5] + [IMAGE_TOKEN_ID] * 16, prompt_ids([7, 8], 16)]  # the first ends with its image
    inputs = batch(rows)
    recorder = Recorder({"text_attention"})
    with prunekit.attach(model, recorder, budget=5, llm_layer=2):
        model(**inputs)
    attention = recorder.seen[0]["text_attention"]
    assert not attention[0].any()
    expected, _ = reference(model, inputs, 2)
    torch.testing.assert_close(attention[1].double(), expected[1], rtol=1e-5, atol=1e-7)
    # a batch with no text at all
    recorder = Recorder({"text_attention"})
    with prunekit.attach(model, recorder, budget=5, llm_layer=2):
        model(**batch(rows[:1]))
    assert recorder.seen[0]["text_attention"].shape == (1, 4, 16)
    assert not recorder.seen[0]["text_attention"].any()


# -- the weights -------------------------------------------------------------------------
def test_weights_by_hand():
    # heads (0.1, 0.1), (0.2, 0.4), (0.4, 0.4) -> r = 0.1, 0.3, 0.4 -> minmax 0, 2/3, 1
    attention = torch.tensor([[[0.1, 0.2, 0.4, 7.0], [0.1, 0.4, 0.4, 9.0]]])
    token_mask = torch.tensor([[True, True, True, False]])  # the last slot is padding
    tokens = torch.randn(1, 4, 8)
    for alpha, expected in ((1.0, [0.0, 2 / 3, 1.0, 0.0]), (2.0, [0.0, 4 / 9, 1.0, 0.0])):
        pruner = prunekit.create_pruner(
            "composed", relevance={"name": "llm_attention", "alpha": alpha}, selection="topk"
        )
        result = pruner.prune(
            tokens, budget=2, token_mask=token_mask, signals={"text_attention": attention}
        )
        torch.testing.assert_close(result.scores, torch.tensor([expected]), rtol=1e-6, atol=1e-6)
        assert result.indices.tolist() == [[1, 2]]


def test_weights_match_a_float64_brute_force():
    gen = torch.Generator().manual_seed(5)
    attention = torch.softmax(torch.randn(3, 8, 40, generator=gen) * 3, dim=-1)
    token_mask = torch.ones(3, 40, dtype=torch.bool)
    token_mask[1, 30:] = False
    tokens = torch.randn(3, 40, 6, generator=gen)
    pruner = prunekit.create_pruner(
        "composed", relevance={"name": "llm_attention", "alpha": 0.5}, selection="topk"
    )
    result = pruner.prune(
        tokens, budget=10, token_mask=token_mask, signals={"text_attention": attention}
    )
    for b in range(3):
        n = int(token_mask[b].sum())
        r = attention[b, :, :n].double().mean(dim=0)
        w = ((r - r.min()) / (r.max() - r.min())) ** 0.5
        torch.testing.assert_close(result.scores[b, :n].double(), w, rtol=1e-5, atol=1e-6)
        assert (result.scores[b, n:] == 0).all()
        assert result.indices[b].tolist() == sorted(torch.argsort(w, descending=True)[:10].tolist())


def test_samples_without_text_get_weight_one():
    gen = torch.Generator().manual_seed(0)
    attention = torch.softmax(torch.randn(2, 4, 12, generator=gen), dim=-1)
    attention[1] = 0.0  # no text rows in sample 1
    token_mask = torch.ones(2, 12, dtype=torch.bool)
    token_mask[1, 10:] = False
    relevance = LLMAttentionRelevance(alpha=2.0)
    pruner = prunekit.ComposedPruner(relevance=relevance, selection="topk")
    result = pruner.prune(
        torch.randn(2, 12, 4, generator=gen),
        budget=3,
        token_mask=token_mask,
        signals={"text_attention": attention},
    )
    assert result.scores[1].tolist() == [1.0] * 10 + [0.0] * 2
    assert result.scores[0].min() == 0 and result.scores[0].max() == 1
    assert result.indices[1].tolist() == [0, 1, 2]  # uniform weights: topk keeps the first


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [({"alpha": -1.0}, "alpha"), ({"eps": 0.0}, "eps"), ({"alpha": "2"}, "alpha")],
)
def test_bad_parameters(kwargs, error):
    with pytest.raises((TypeError, ValueError), match=error):
        LLMAttentionRelevance(**kwargs)


# -- through the model -------------------------------------------------------------------
@pytest.mark.parametrize("selection", ["greedy_residual", "topk"])
def test_generate_keeps_what_the_pruner_picks_standalone(model, selection):
    inputs = batch(ROWS, seed=1)
    pruner = prunekit.create_pruner("composed", relevance=LLM_ATTENTION, selection=selection)
    with prunekit.attach(model, pruner, budget=5, llm_layer=2) as handle:
        model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert len(handle.results) == 1  # the prompt's selection, kept by the decode steps
    got = handle.results[0]
    signal, entering = reference(model, inputs, 2)
    standalone = pruner.prune(
        entering.float(), budget=5, signals={"text_attention": signal.float()}
    )
    assert got.counts.tolist() == [5, 5]
    assert torch.equal(got.indices, standalone.indices)
    torch.testing.assert_close(got.scores, standalone.scores, rtol=1e-4, atol=1e-5)
    if selection == "topk":  # the 5 image tokens the text attends to most (head mean)
        top = torch.argsort(signal.mean(dim=1), dim=1, descending=True)[:, :5]
        assert got.indices.tolist() == torch.sort(top, dim=1).values.tolist()
    # and the relevance decided something: without it greedy_residual keeps other tokens
    plain = prunekit.create_pruner("composed", relevance="none", selection=selection)
    assert not torch.equal(plain.prune(entering.float(), budget=5).indices, got.indices)


def test_refused_where_the_signal_does_not_exist():
    model = tiny_llava_3()
    pruner = prunekit.create_pruner("composed", relevance=LLM_ATTENTION)
    for options, point in (({}, "pre_llm"), ({"before_projector": True}, "pre_projector")):
        with pytest.raises(ValueError, match=rf"needs \['text_attention'\].*'{point}'"):
            with prunekit.attach(model, pruner, budget=4, **options):
                pass
    layers = model.model.language_model.layers
    with prunekit.attach(model, pruner, budget=4, llm_layer=2):
        assert len(layers[1]._forward_pre_hooks) == 1  # layer K-1's input is recorded
    assert all(not layer._forward_pre_hooks for layer in layers)


def test_config_path():
    from prunekit.experiments import attach_options, build_pruner, compose
    from prunekit.experiments.bench import prompt_text
    from prunekit.experiments.config import build_model

    overrides = [
        "pruner=composed",
        "relevance=llm_attention",
        "relevance.alpha=2",
        "selection=greedy_residual",
        "adapter.llm_layer=1",
        "budget=16",
    ]
    cfg = compose(overrides)
    pruner = build_pruner(cfg)
    api = prunekit.create_pruner(
        "composed", relevance={"name": "llm_attention", "alpha": 2.0}, selection="greedy_residual"
    )
    assert repr(pruner) == repr(api)
    assert compose(["relevance=llm_attention"]).relevance.eps == LLMAttentionRelevance().eps
    model, processor = build_model(cfg)
    options = attach_options(cfg, processor)
    assert options["llm_layer"] == 1
    picture = prunekit.data.images.load_image("astronaut")
    inputs = processor(
        images=[picture],
        text=[prompt_text(cfg.model.prompt, "what color is the circle?", processor)],
        return_tensors="pt",
        padding=True,
    )
    with prunekit.attach(model, pruner, budget=cfg.budget, **options) as handle:
        model.generate(**inputs, max_new_tokens=2, do_sample=False)
    result = handle.results[0]
    assert result.counts.tolist() == [16]
    # the text guided the pick: min-max weights, not the uniform ones of a prompt without text
    assert result.scores.min() == 0 and result.scores.max() == pytest.approx(1.0, abs=1e-5)


# -- the contract suite, through the registry ---------------------------------------------
class TestLLMAttentionContract(PrunerContractTests):
    cases = [
        ("composed", {"relevance": LLM_ATTENTION, "selection": selection})
        for selection in ("greedy_residual", "topk", {"name": "random", "seed": 3})
    ]
