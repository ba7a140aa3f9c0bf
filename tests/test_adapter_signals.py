"""Adapters provide the vision-attention signals attention-based pruners need."""

from __future__ import annotations

import pytest
import torch
from tiny_models import left_pad, prompt_ids, tiny_llava

import prunekit
from prunekit import Picks, TokenPruner


class Recorder(TokenPruner):
    """Keeps the tokens with the largest head-mean signal, and records what it saw."""

    def __init__(self, signal: str) -> None:
        self.required_signals = frozenset({signal})
        self.signal = signal
        self.seen: list[torch.Tensor] = []

    def select(self, inputs, num_keep):
        values = inputs.signals[self.signal]
        self.seen.append(values)
        scores = values.mean(dim=1).masked_fill(~inputs.token_mask, -1.0)
        return Picks(order=scores.argsort(dim=1, descending=True, stable=True)[:, :num_keep])


def inputs_for(model, n_image=16):
    ids, mask = left_pad([prompt_ids([7, 8, 9], n_image), prompt_ids([10], n_image)])
    return {"input_ids": ids, "attention_mask": mask, "pixel_values": torch.randn(2, 3, 32, 32)}


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_llava_attention_signals_match_the_towers_own_attention(attn):
    model = tiny_llava(attn_implementation=attn)
    inputs = inputs_for(model)
    eager_tower = tiny_llava(attn_implementation="eager").model.vision_tower
    eager_tower.load_state_dict(model.model.vision_tower.state_dict())
    with torch.no_grad():
        maps = eager_tower(inputs["pixel_values"], output_attentions=True).attentions[
            -2
        ]  # layer -2
    for signal, expected in [
        ("cls_attention", maps[:, :, 0, 1:]),
        ("received_attention", maps.mean(dim=2)[:, :, 1:]),
    ]:
        pruner = Recorder(signal)
        with prunekit.attach(model, pruner, budget=4) as handle:
            model(**inputs)
        (seen,) = pruner.seen
        assert seen.shape == (2, 4, 16)  # (images, heads, projected tokens)
        torch.testing.assert_close(seen, expected, rtol=1e-5, atol=1e-6)
        top = (
            expected.mean(dim=1)
            .argsort(dim=1, descending=True, stable=True)[:, :4]
            .sort(dim=1)
            .values
        )
        assert torch.equal(handle.results[0].indices, top)


def test_missing_capability_is_named():
    model = tiny_llava()
    with pytest.raises(
        ValueError,
        match=r"needs \['cls_attention'\], which the 'llava' adapter cannot provide at its pruning point 'in_llm'",
    ):
        with prunekit.attach(model, Recorder("cls_attention"), budget=4, llm_layer=1):
            pass
    with pytest.raises(
        ValueError,
        match=r"needs \['key_norms'\], which the 'llava' adapter cannot provide at its pruning point 'pre_llm'",
    ):
        with prunekit.attach(model, Recorder("key_norms"), budget=4):
            pass


def test_signals_are_not_computed_when_not_needed():
    model = tiny_llava()
    hooks_seen = []
    layer = model.model.vision_tower.encoder.layers[0].self_attn
    original = layer.register_forward_pre_hook

    def spy(*args, **kwargs):
        hooks_seen.append(1)
        return original(*args, **kwargs)

    layer.register_forward_pre_hook = spy
    with prunekit.attach(model, "resprune", budget=4):
        model(**inputs_for(model))
    assert hooks_seen == []
    del layer.register_forward_pre_hook


def test_encoder_adapters_refuse_signal_pruners_at_attach():
    transformers = pytest.importorskip("transformers")
    from tiny_models import tiny_clip_vision_config

    encoder = transformers.CLIPVisionModel(tiny_clip_vision_config()).eval()
    with pytest.raises(
        ValueError, match=r"needs \['cls_attention'\], which the .* adapter cannot provide"
    ):
        with prunekit.attach(encoder, Recorder("cls_attention"), budget=4, layer=1):
            pass


def test_siglip_tower_gives_received_attention_not_cls():
    import transformers
    from tiny_models import IMAGE_TOKEN_ID, tiny_llama_config

    torch.manual_seed(0)
    vision = transformers.SiglipVisionConfig(
        hidden_size=24,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
    )
    config = transformers.LlavaConfig(
        vision_config=vision,
        text_config=tiny_llama_config(),
        image_token_id=IMAGE_TOKEN_ID,
        vision_feature_layer=-2,
        vision_feature_select_strategy="full",
    )
    model = transformers.LlavaForConditionalGeneration(config).eval()
    inputs = inputs_for(model, n_image=16)
    pruner = Recorder("received_attention")
    with prunekit.attach(model, pruner, budget=4):
        model(**inputs)
    eager = transformers.LlavaForConditionalGeneration(config).eval()
    eager.load_state_dict(model.state_dict())
    eager.model.vision_tower.config._attn_implementation = "eager"
    with torch.no_grad():
        maps = eager.model.vision_tower(inputs["pixel_values"], output_attentions=True).attentions[
            -2
        ]
    torch.testing.assert_close(pruner.seen[0], maps.mean(dim=2), rtol=1e-5, atol=1e-6)
    with pytest.raises(
        ValueError, match=r"needs \['cls_attention'\], which the 'llava' adapter cannot"
    ):
        with prunekit.attach(model, Recorder("cls_attention"), budget=4):
            pass


def test_pruning_point_declaration_is_enforced():
    class VisionSpaceOnly(Recorder):
        pruning_points = frozenset({"pre_projector"})

    model = tiny_llava()
    with pytest.raises(
        ValueError, match=r"defined for the pruning points \['pre_projector'\].*prunes at 'pre_llm'"
    ):
        with prunekit.attach(model, VisionSpaceOnly("cls_attention"), budget=4):
            pass
    pruner = VisionSpaceOnly("cls_attention")
    with prunekit.attach(model, pruner, budget=4, before_projector=True):
        model(**inputs_for(model))
    assert pruner.seen[0].shape == (2, 4, 16)


def test_signal_examples_have_their_documented_token_axis():
    from prunekit.core.signals import SIGNALS

    for spec in SIGNALS.values():
        example = spec.example(2, 7, 5, torch.Generator().manual_seed(0))
        assert example.shape[0] == 2
        if spec.token_axis is not None:
            assert example.shape[spec.token_axis] == 7


class KeyRecorder(TokenPruner):
    """Keeps the first tokens and records the ``vision_keys`` it saw."""

    required_signals = frozenset({"vision_keys"})

    def __init__(self) -> None:
        self.seen: list[torch.Tensor] = []

    def select(self, inputs, num_keep):
        self.seen.append(inputs.signals["vision_keys"])
        return Picks(order=torch.arange(num_keep).expand(inputs.batch_size, -1).clone())


@pytest.mark.parametrize("before_projector", [False, True])
def test_llava_vision_keys_are_the_feature_layers_k_proj_outputs(before_projector):
    model = tiny_llava()
    inputs = inputs_for(model)
    k_proj = model.model.vision_tower.encoder.layers[-2].self_attn.k_proj  # feature layer -2
    captured = []
    hook = k_proj.register_forward_hook(lambda module, args, output: captured.append(output))
    try:
        with torch.no_grad():
            model.model.vision_tower(inputs["pixel_values"])
    finally:
        hook.remove()
    (keys,) = captured
    expected = keys.view(2, 17, 4, 6)[:, 1:]  # (images, patches without [CLS], heads, d_head)
    pruner = KeyRecorder()
    with prunekit.attach(model, pruner, budget=4, before_projector=before_projector):
        model(**inputs)
    (seen,) = pruner.seen
    assert seen.shape == (2, 16, 4, 6)
    torch.testing.assert_close(seen, expected, rtol=0, atol=0)
