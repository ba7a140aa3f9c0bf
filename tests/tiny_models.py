"""Tiny random models built from configs (no hub), shared by the adapter tests."""

from __future__ import annotations

import torch
import transformers

IMAGE_TOKEN_ID = 3
VOCAB = 64


def tiny_llama_config(**overrides) -> transformers.LlamaConfig:
    config = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    config.update(overrides)
    return transformers.LlamaConfig(**config)


def tiny_clip_vision_config(
    image_size: int = 32, patch_size: int = 8
) -> transformers.CLIPVisionConfig:
    return transformers.CLIPVisionConfig(
        hidden_size=24,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=16,
    )


def tiny_llava(
    seed: int = 0, attn_implementation: str = "sdpa", initializer_range: float = 0.02
) -> transformers.LlavaForConditionalGeneration:
    """LLaVA-1.5 shaped: CLIP tower (16 patches + CLS, 'default' strategy drops CLS), 2-layer Llama.

    A larger ``initializer_range`` (e.g. 0.2) makes every position and image token change
    the greedy tokens, not only the logits."""
    torch.manual_seed(seed)
    config = transformers.LlavaConfig(
        vision_config=tiny_clip_vision_config(),
        text_config=tiny_llama_config(initializer_range=initializer_range),
        image_token_id=IMAGE_TOKEN_ID,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    config._attn_implementation = attn_implementation
    model = transformers.LlavaForConditionalGeneration(config).eval()
    return model


def prompt_ids(text_ids: list[int], n_image_tokens: int, prefix: list[int] = (1, 5)) -> list[int]:
    """[BOS, x] + image placeholders + text ids."""
    return list(prefix) + [IMAGE_TOKEN_ID] * n_image_tokens + list(text_ids)


def left_pad(rows: list[list[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r)
        mask[i, width - len(r) :] = 1
    return ids, mask


class Words:
    """A tiny word-level tokenizer over the tiny vocabulary (``words``: id -> word; other ids
    decode to nothing)."""

    words = {7: "red", 8: "triangle", 9: "?", 10: "blue", 11: "circle", 12: "square", 13: "big"}

    def __init__(self, words=None):
        if words is not None:
            self.words = dict(words)

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(self.words.get(i, "") for i in ids).strip()

    def __call__(self, text, add_special_tokens=False):
        inverse = {v: k for k, v in self.words.items()}
        return {"input_ids": [inverse[w] for w in text.split() if w in inverse]}
