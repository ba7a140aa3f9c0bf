"""Adapter for ``transformers.LlavaForConditionalGeneration`` (LLaVA-1.5 and any vision tower it accepts)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from prunekit.adapters.vlm import ImageFeatures, PreLLMAdapter


def image_token_id(config: Any) -> int:
    """The image placeholder id, under its transformers 5 or 4 name."""
    for name in ("image_token_id", "image_token_index"):
        value = getattr(config, name, None)
        if value is not None:
            return int(value)
    raise ValueError(f"{type(config).__name__} names no image token id")


def pooled_features(output: Any) -> list[torch.Tensor]:
    """``get_image_features``'s per-image features, whatever the transformers version returns."""
    features = getattr(output, "pooler_output", output)
    if isinstance(features, torch.Tensor):
        features = list(features) if features.dim() == 3 else [features]
    return list(features)


class LlavaAdapter(PreLLMAdapter):
    """LLaVA-1.5 style: one fixed grid of projected tokens per image (576 for LLaVA-1.5-7B).

    The pruning point is after the multimodal projector; the budget counts the
    image's visual tokens. The vision feature layer and selection strategy are
    the model's (or the call's) own.
    """

    family = "llava"
    vision_kwargs: ClassVar[tuple[str, ...]] = (
        "pixel_values",
        "vision_feature_layer",
        "vision_feature_select_strategy",
        "image_sizes",
    )

    @classmethod
    def matches(cls, model: object) -> bool:
        from transformers import LlavaForConditionalGeneration

        return type(model) is LlavaForConditionalGeneration

    @property
    def image_token_id(self) -> int:
        return image_token_id(self.model.config)

    def image_features(
        self, vision_inputs: dict[str, Any], call_kwargs: dict[str, Any]
    ) -> ImageFeatures:
        output = self.model.get_image_features(**vision_inputs)
        return ImageFeatures(features=pooled_features(output))
