"""The ``clip_text`` relevance: text relevance in a CLIP / SigLIP / open_clip joint space,
selection on the raw patch tokens (CDPruner's split; issue 19, item 3c).

Tiny random models from tests/test_encoder_adapters.py. References are independent of the
adapter: the unpruned model's own hidden states (``output_hidden_states``), its own head
(``post_layernorm`` / ``visual_projection``, open_clip's ``ln_post`` / ``proj``) and its
own text tower, cosines in float64.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_encoder_adapters import (
    TEXTS,
    FakeTokenizer,
    clip_model,
    clip_vision,
    clip_vision_proj,
    dinov2,
    open_clip_model,
    pixels,
    siglip_model,
    siglip_vision,
    timm_vit,
)
from tiny_models import tiny_llava
from torch.testing import assert_close

import prunekit
from prunekit.adapters.hf_encoders import HFClipAdapter, HFSiglipAdapter
from prunekit.core.inputs import validate_inputs
from prunekit.core.signals import SIGNALS
from prunekit.strategies.relevance.clip_text import ClipTextRelevance
from prunekit.testing import PrunerContractTests

SIGNAL = "joint_text_cosine"
LAYER, BUDGET = 2, 5


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def clip_text_pruner(selection: str = "greedy_residual", **relevance) -> prunekit.ComposedPruner:
    return prunekit.create_pruner(
        "composed", relevance={"name": "clip_text", **relevance}, selection=selection
    )


def recording(pruner):
    """Record the arguments of every ``pruner.prune`` call (an instance-level wrapper)."""
    calls = []
    original = pruner.prune

    def prune(tokens, **kwargs):
        calls.append({"tokens": tokens, **kwargs})
        return original(tokens, **kwargs)

    pruner.prune = prune
    return calls


# -- independent references ----------------------------------------------------------------------
def raw_and_joint(kind: str, model, px, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Patch hidden states entering block ``layer`` of the unpruned model, and the same
    mapped into the joint space by the model's own head."""
    with torch.no_grad():
        if kind == "clip":
            out = model.vision_model(pixel_values=px, output_hidden_states=True)
            raw = out.hidden_states[layer][:, 1:]
            return raw, model.visual_projection(model.vision_model.post_layernorm(raw))
        if kind == "siglip":
            out = model.vision_model(pixel_values=px, output_hidden_states=True)
            raw = out.hidden_states[layer]
            return raw, model.vision_model.post_layernorm(raw)
        visual = model.visual  # open_clip records no hidden states: its blocks by hand
        h = visual._embeds(px)
        for block in visual.transformer.resblocks[:layer]:
            h = block(h)
        raw = h[:, 1:]
        return raw, visual.ln_post(raw) @ visual.proj


def text_features(kind: str, model, texts: list[str]) -> torch.Tensor:
    """``(M, D_joint)`` embeddings from the model's own text tower."""
    with torch.no_grad():
        if kind == "open_clip":
            return model.encode_text(FakeTokenizer(tensor=True)(texts))
        padding = "max_length" if kind == "siglip" else True
        encoded = FakeTokenizer()(texts, return_tensors="pt", padding=padding)
        return model.get_text_features(**encoded).pooler_output


def cosines(joint: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """``(B, N, M)`` float64 cosines; ``text`` is ``(M, D)`` (shared) or ``(B, M, D)``."""
    text = text.double()
    if text.dim() == 2:
        text = text.expand(joint.shape[0], -1, -1)
    return F.cosine_similarity(joint.double().unsqueeze(2), text.unsqueeze(1), dim=-1)


def encode(kind: str, model, px) -> None:
    with torch.no_grad():
        if kind == "open_clip":
            model.encode_image(px)
        else:
            model.get_image_features(pixel_values=px)


MODELS = {"clip": clip_model, "siglip": siglip_model, "open_clip": open_clip_model}


# -- the adapter gives raw tokens and the joint-space cosines ------------------------------------
@pytest.mark.parametrize("kind", list(MODELS))
def test_raw_tokens_and_joint_cosines_through_attach(kind):
    model = MODELS[kind]()
    px = pixels(batch=3)
    pruner = clip_text_pruner(alpha=2.0)
    calls = recording(pruner)
    tokenizer = FakeTokenizer(tensor=kind == "open_clip")
    with prunekit.attach(
        model, pruner, budget=BUDGET, layer=LAYER, texts=TEXTS, tokenizer=tokenizer
    ) as handle:
        encode(kind, model, px)

    raw, joint = raw_and_joint(kind, model, px, LAYER)
    expected_cos = cosines(joint, text_features(kind, model, TEXTS))
    (call,) = calls
    # the pruner saw the raw hidden states, no joint-space text, and the cosine signal
    assert call["tokens"].shape == raw.shape
    assert_close(call["tokens"], raw, rtol=1e-5, atol=1e-5)
    assert call["text_embeds"] is None
    assert set(call["signals"]) == {SIGNAL}
    signal = call["signals"][SIGNAL]
    assert signal.shape == (3, raw.shape[1], len(TEXTS)) and signal.dtype == torch.float32
    assert_close(signal.double(), expected_cos, rtol=0, atol=1e-5)

    # the kept tokens: the same pruner run standalone on the recorded tokens and signal ...
    again = clip_text_pruner(alpha=2.0).prune(
        call["tokens"], budget=BUDGET, signals=call["signals"]
    )
    assert torch.equal(handle.results[0].indices, again.indices)
    # ... and on the reference tokens and cosines
    standalone = clip_text_pruner(alpha=2.0).prune(
        raw, budget=BUDGET, signals={SIGNAL: expected_cos.float()}
    )
    assert torch.equal(handle.results[0].indices, standalone.indices)
    assert_close(handle.results[0].scores, standalone.scores, rtol=1e-4, atol=1e-5)


def test_precomputed_text_embeds_shared_or_per_image():
    model = clip_model()
    px = pixels(batch=3, seed=1)
    per_image = torch.randn(3, 4, 16, generator=torch.Generator().manual_seed(5))
    raw, joint = raw_and_joint("clip", model, px, LAYER)
    for given in (per_image[0], per_image):
        pruner = clip_text_pruner(aggregation="mean")
        calls = recording(pruner)
        with prunekit.attach(model, pruner, budget=BUDGET, layer=LAYER, text_embeds=given) as h:
            encode("clip", model, px)
        expected = cosines(joint, given)
        assert_close(calls[0]["signals"][SIGNAL].double(), expected, rtol=0, atol=1e-5)
        standalone = clip_text_pruner(aggregation="mean").prune(
            raw, budget=BUDGET, signals={SIGNAL: expected.float()}
        )
        assert torch.equal(h.results[0].indices, standalone.indices)


def test_topk_keeps_the_highest_joint_cosines_by_hand():
    """With top-k selection the kept tokens are the K largest max-cosines, computed by hand."""
    model = siglip_model()
    px = pixels(batch=4, seed=2)
    texts = ["a small grey cat", "the dog"]
    with prunekit.attach(
        model,
        clip_text_pruner("topk"),
        budget=BUDGET,
        layer=1,
        texts=texts,
        tokenizer=FakeTokenizer(),
    ) as handle:
        encode("siglip", model, px)
    _, joint = raw_and_joint("siglip", model, px, 1)
    relevance = cosines(joint, text_features("siglip", model, texts)).amax(dim=-1)
    expected = relevance.topk(BUDGET, dim=1).indices.sort(dim=1).values
    assert torch.equal(handle.results[0].indices, expected)


def test_signal_in_float32_for_a_bfloat16_model():
    model = clip_model().to(torch.bfloat16)
    px = pixels(batch=2).to(torch.bfloat16)
    pruner = clip_text_pruner()
    calls = recording(pruner)
    with prunekit.attach(
        model, pruner, budget=BUDGET, layer=LAYER, texts=TEXTS, tokenizer=FakeTokenizer()
    ):
        encode("clip", model, px)
    signal = calls[0]["signals"][SIGNAL]
    assert signal.dtype == torch.float32
    _, joint = raw_and_joint("clip", model, px, LAYER)
    expected = cosines(joint.float(), text_features("clip", model, TEXTS).float())
    assert_close(signal.double(), expected, rtol=0, atol=2e-2)
    # the tokens are the raw hidden states, in the model's dtype
    assert calls[0]["tokens"].dtype == torch.bfloat16


def test_text_relevance_pruners_still_get_joint_space_tokens():
    """ResPrune (TextRelevance) keeps today's split: joint-space tokens and text, no signal."""
    model = clip_model()
    px = pixels(batch=2)
    resprune = prunekit.create_pruner("resprune")
    calls = recording(resprune)
    with prunekit.attach(
        model, resprune, budget=BUDGET, layer=LAYER, texts=TEXTS, tokenizer=FakeTokenizer()
    ):
        encode("clip", model, px)
    _, joint = raw_and_joint("clip", model, px, LAYER)
    (call,) = calls
    assert_close(call["tokens"], joint, rtol=1e-5, atol=1e-5)
    assert_close(call["text_embeds"], text_features("clip", model, TEXTS).expand(2, -1, -1))
    assert call["signals"] is None


def test_available_signals_follow_the_text_options():
    model = clip_model()
    with_text = HFClipAdapter(model, layer=1, texts=TEXTS, tokenizer=FakeTokenizer())
    assert with_text.available_signals() == {SIGNAL}
    assert HFClipAdapter(model, layer=1).available_signals() == frozenset()
    embeds = HFSiglipAdapter(siglip_vision(), layer=1, text_embeds=torch.randn(2, 32))
    assert embeds.available_signals() == {SIGNAL}
    assert HFClipAdapter(
        clip_vision_proj(), layer=1, text_embeds=torch.randn(2, 16)
    ).available_signals() == {SIGNAL}


# -- refusals ----------------------------------------------------------------------------------------
NO_JOINT_SPACE = "joint_text_cosine compares .* joint image-text space, which .* does not have"
NO_TEXT = "joint_text_cosine needs text: pass texts="


@pytest.mark.parametrize(
    "build, note",
    [
        (dinov2, NO_JOINT_SPACE),
        (clip_vision, NO_JOINT_SPACE),
        (timm_vit, NO_JOINT_SPACE),
        (clip_model, NO_TEXT),
        (siglip_model, NO_TEXT),
        (open_clip_model, NO_TEXT),
    ],
    ids=[
        "dinov2",
        "clip-vision-no-projection",
        "timm",
        "clip-no-text",
        "siglip-no-text",
        "open-clip-no-text",
    ],
)
def test_attach_refuses_without_joint_space_or_text(build, note):
    with (
        pytest.raises(
            ValueError,
            match=rf"ComposedPruner needs \['joint_text_cosine'\], which the .* adapter cannot "
            rf"provide at its pruning point 'in_encoder' \(it provides \[\]\): {note}",
        ),
        prunekit.attach(build(), clip_text_pruner(), budget=4, layer=1),
    ):
        pass


def test_attach_refuses_in_a_vlm():
    """LLaVA checkpoints carry no CLIP text tower: no joint-space cosines there."""
    with (
        pytest.raises(ValueError, match=r"needs \['joint_text_cosine'\], which the 'llava"),
        prunekit.attach(tiny_llava(), clip_text_pruner(), budget=4),
    ):
        pass


def test_prune_refuses_without_the_signal():
    with pytest.raises(ValueError, match="joint_text_cosine"):
        clip_text_pruner().prune(torch.randn(2, 10, 8), budget=3)


# -- the weights, by hand ----------------------------------------------------------------------------
def _weights(
    cos: torch.Tensor, token_mask: torch.Tensor | None = None, **relevance
) -> torch.Tensor:
    tokens = torch.randn(cos.shape[0], cos.shape[1], 4, generator=torch.Generator().manual_seed(0))
    inputs = validate_inputs(tokens, token_mask=token_mask, signals={SIGNAL: cos})
    return ClipTextRelevance(**relevance).weights(inputs)


COS = torch.tensor([[[0.1, 0.5], [0.3, -0.2], [0.9, 0.0]]])  # (1, 3 tokens, 2 texts)


def test_weights_by_hand_max_and_mean():
    # (eps = 1e-6 in the denominator moves the values by < 1e-5)
    # max: r = [0.5, 0.3, 0.9] -> minmax [1/3, 0, 1] -> ** 2
    assert_close(_weights(COS, alpha=2.0), torch.tensor([[1 / 9, 0.0, 1.0]]), atol=1e-5, rtol=0)
    # mean: r = [0.3, 0.05, 0.45] -> minmax [0.625, 0, 1]
    assert_close(
        _weights(COS, aggregation="mean"), torch.tensor([[0.625, 0.0, 1.0]]), atol=1e-5, rtol=0
    )
    assert torch.equal(_weights(COS, alpha=0.0), torch.ones(1, 3))


def test_weights_by_hand_padding_flat_and_no_text():
    cos = torch.cat([COS, torch.full((1, 3, 2), 0.4)])  # sample 1 is flat
    mask = torch.tensor([[True, True, False], [True, True, True]])
    # sample 0 without its third token: r = [0.5, 0.3] -> [1, 0]; padding gets 0
    assert_close(
        _weights(cos, mask), torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]]), atol=1e-5, rtol=0
    )
    assert torch.equal(_weights(torch.zeros(2, 3, 0)), torch.ones(2, 3))  # no text rows: w = 1


def test_weights_match_float64_reference_on_random_cosines():
    gen = torch.Generator().manual_seed(3)
    cos = torch.rand(4, 50, 3, generator=gen) * 2 - 1
    for aggregation, alpha in (("max", 1.0), ("mean", 3.0)):
        r = cos.double().amax(-1) if aggregation == "max" else cos.double().mean(-1)
        lo, hi = r.amin(1, keepdim=True), r.amax(1, keepdim=True)
        expected = ((r - lo) / (hi - lo + 1e-6)) ** alpha
        got = _weights(cos, aggregation=aggregation, alpha=alpha)
        assert_close(got.double(), expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"aggregation": "pooled"}, ValueError, "aggregation must be one of"),
        ({"alpha": -1.0}, ValueError, "alpha must be finite and >= 0"),
        ({"alpha": "2"}, TypeError, "alpha must be a float"),
        ({"eps": 0.0}, ValueError, "eps must be > 0"),
    ],
)
def test_bad_hyperparameters(kwargs, error, match):
    with pytest.raises(error, match=match):
        ClipTextRelevance(**kwargs)


def test_registered_with_its_signal():
    assert "clip_text" in prunekit.list_relevances()
    assert isinstance(prunekit.create_relevance("clip_text"), ClipTextRelevance)
    spec = SIGNALS[SIGNAL]
    assert spec.shape == "(B, N, M)" and spec.token_axis == 1 and spec.kind == "float"
    example = spec.example(2, 7, 5, torch.Generator().manual_seed(0))
    assert example.shape[:2] == (2, 7) and bool((example.abs() <= 1 + 1e-6).all())


# -- the pruner contract, with synthesized cosines -----------------------------------------------------
class TestClipTextComposed(PrunerContractTests):
    cases = [
        ("composed", {"relevance": {"name": "clip_text", "alpha": 2.0}, "selection": s})
        for s in ("greedy_residual", "topk")
    ]
