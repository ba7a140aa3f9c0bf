"""Hand-built references for pruning inside the LLM (FastV, DART) on tiny LLaVA models.

Nothing here uses prunekit: the signals come from the model's own eager attention
weights (``output_attentions``), its KV cache (post-RoPE keys) and its hidden states,
and the pruned forward runs the decoder layers by hand, as
``tests/test_llm_layer_pruning.py`` does.
"""

from __future__ import annotations

import os
import sys

import torch
import transformers

from prunekit import Picks, TokenPruner

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "..", "tests"))

from tiny_models import (  # noqa: E402
    IMAGE_TOKEN_ID,
    left_pad,
    prompt_ids,
    tiny_clip_vision_config,
    tiny_llama_config,
)

__all__ = [
    "IMAGE_TOKEN_ID",
    "batch",
    "FirstSelection",
    "eager_copy",
    "left_pad",
    "prompt_ids",
    "reference_logits",
    "reference_signals",
    "tiny_llava_layers",
]


def tiny_llava_layers(
    num_layers: int = 3, attn_implementation: str = "sdpa", seed: int = 0
) -> transformers.LlavaForConditionalGeneration:
    """``tests/tiny_models.tiny_llava`` with ``num_layers`` decoder layers (GQA: 4 heads, 2 kv)."""
    torch.manual_seed(seed)
    config = transformers.LlavaConfig(
        vision_config=tiny_clip_vision_config(),
        text_config=tiny_llama_config(num_hidden_layers=num_layers),
        image_token_id=IMAGE_TOKEN_ID,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    config._attn_implementation = attn_implementation
    return transformers.LlavaForConditionalGeneration(config).eval()


def eager_copy(model: transformers.LlavaForConditionalGeneration):
    """The same weights with eager attention everywhere (for ``output_attentions``)."""
    config = model.config
    eager = tiny_llava_layers(config.text_config.num_hidden_layers, "eager")
    eager.load_state_dict(model.state_dict())
    return eager


def batch(rows: list[list[int]], seed: int = 0) -> dict[str, torch.Tensor]:
    ids, mask = left_pad(rows)
    n_images = sum(r.count(IMAGE_TOKEN_ID) for r in rows) // 16
    pixels = torch.randn(n_images, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    return {"input_ids": ids, "attention_mask": mask, "pixel_values": pixels}


@torch.no_grad()
def reference_signals(model, ids: torch.Tensor, pixels: torch.Tensor, layer: int) -> dict:
    """Signals of one unpadded prompt ``ids`` (1, L) at decoder layer ``layer - 1``.

    Returns ``attention`` (H, L, L) eager attention probabilities, ``keys`` (L, H, d)
    post-RoPE keys read from the KV cache (kv heads repeated), ``hidden`` (L, D) the
    output of layer ``layer - 1`` through the final norm, ``image`` (n,) and ``text``
    (T,) the positions of the image tokens and of the tokens after the image.
    """
    eager = eager_copy(model)
    out = eager(
        input_ids=ids,
        pixel_values=pixels,
        output_attentions=True,
        output_hidden_states=True,
        use_cache=True,
    )
    lm = eager.model.language_model
    cache_layer = out.cache.layers[layer - 1]
    keys = cache_layer.keys[0]  # (H_kv, L, d), post-RoPE
    heads = lm.config.num_attention_heads
    keys = keys.repeat_interleave(heads // keys.shape[0], dim=0).transpose(0, 1)
    image = (ids[0] == IMAGE_TOKEN_ID).nonzero()[:, 0]
    text = torch.arange(int(image[-1]) + 1, ids.shape[1])
    return {
        "attention": out.attentions[layer - 1][0],
        "keys": keys,
        "hidden": lm.norm(out.hidden_states[layer])[0],
        "image": image,
        "text": text,
    }


@torch.no_grad()
def reference_logits(
    model, ids: torch.Tensor, pixels: torch.Tensor, layer: int, dropped: set[int]
) -> torch.Tensor:
    """Logits of one unpadded prompt with the positions ``dropped`` removed after ``layer``
    decoder layers: layers before run on everything, later ones on the kept tokens with
    their original positions and a causal mask."""
    feats = model.get_image_features(pixel_values=pixels).pooler_output
    feats = torch.cat(list(feats)) if isinstance(feats, (list, tuple)) else feats
    embeds = model.get_input_embeddings()(ids).masked_scatter(
        (ids == IMAGE_TOKEN_ID).unsqueeze(-1), feats.reshape(-1, feats.shape[-1])
    )
    lm = model.model.language_model

    def causal(n: int) -> torch.Tensor:
        allowed = torch.ones(n, n, dtype=torch.bool).tril()[None, None]
        if lm.config._attn_implementation == "sdpa":
            return allowed
        return torch.zeros(1, 1, n, n).masked_fill(~allowed, torch.finfo(torch.float32).min)

    positions = torch.arange(ids.shape[1]).unsqueeze(0)
    cos, sin = lm.rotary_emb(embeds, position_ids=positions)
    hidden = embeds
    for decoder_layer in lm.layers[:layer]:
        hidden = decoder_layer(
            hidden,
            attention_mask=causal(ids.shape[1]),
            position_embeddings=(cos, sin),
            position_ids=positions,
        )
    keep = torch.tensor([p for p in range(ids.shape[1]) if p not in dropped])
    hidden = hidden[:, keep]
    for decoder_layer in lm.layers[layer:]:
        hidden = decoder_layer(
            hidden,
            attention_mask=causal(len(keep)),
            position_embeddings=(cos[:, keep], sin[:, keep]),
            position_ids=positions[:, keep],
        )
    return model.lm_head(lm.norm(hidden))


class FirstSelection(TokenPruner):
    """Wraps a pruner so that every call repeats the selection of its first call.

    Without a KV cache, ``generate`` re-runs (and re-prunes) the whole prompt at each
    step; replaying the prompt's selection makes that comparable with cached decoding.
    """

    pruning_points = frozenset({"in_llm"})

    def __init__(self, inner: TokenPruner) -> None:
        self.inner = inner
        self.required_signals = inner.required_signals
        self.order: torch.Tensor | None = None

    def select(self, inputs, num_keep: int) -> Picks:
        if self.order is None:
            self.order = self.inner.select(inputs, num_keep).order
        return Picks(order=self.order)
