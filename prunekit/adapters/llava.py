"""Adapter for ``transformers.LlavaForConditionalGeneration`` (LLaVA-1.5 and any vision tower it accepts)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from prunekit.adapters.attention import ATTENTION_SIGNALS, attention_signals, capture_input
from prunekit.adapters.layout import TokenLayout, patch_grid_layout, per_prompt
from prunekit.adapters.vlm import ImageFeatures, PreLLMAdapter
from prunekit.core.points import PRE_PROJECTOR

#: vision towers whose first token is a [CLS] token
CLS_TOWERS = ("clip_vision_model", "dinov2")


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

    Option ``before_projector=True`` moves the pruning point before the
    multimodal projector: the pruner sees the vision tower's selected features
    (what VisionZip and VisPruner work on, and where merged tokens are merged),
    and the projector runs on the kept tokens only.

    Signals: ``"cls_attention"`` (towers with [CLS]: CLIP, DINOv2),
    ``"received_attention"`` and ``"vision_keys"`` (any tower), from the
    attention of the layer that produces the selected features
    (``vision_feature_layer``, -2 for LLaVA-1.5, as VisionZip and FasterVLM
    use), recomputed from that layer's own projections; columns follow the
    projected tokens.
    """

    model_class = "LlavaForConditionalGeneration"
    family = "llava"
    vision_kwargs: ClassVar[tuple[str, ...]] = (
        "pixel_values",
        "vision_feature_layer",
        "vision_feature_select_strategy",
        "image_sizes",
    )

    provided_signals = ATTENTION_SIGNALS

    def available_signals(self) -> frozenset[str]:
        signals = super().available_signals()
        if getattr(self.model.config.vision_config, "model_type", "") not in CLS_TOWERS:
            signals = signals - {"cls_attention"}
        return signals

    def text_in_token_space(self) -> bool:
        return not self.before_projector  # before the projector: vision-encoder space

    def __init__(
        self, model: torch.nn.Module, *, before_projector: bool = False, **options: Any
    ) -> None:
        super().__init__(model, **options)
        if not isinstance(before_projector, bool):
            raise TypeError(
                f"before_projector must be a bool, got {type(before_projector).__name__}"
            )
        if before_projector and self.llm_pruning is not None:
            raise ValueError(
                "before_projector and llm_layer are two different pruning points; choose one"
            )
        self.before_projector = before_projector

    def pruning_point(self) -> str:
        return PRE_PROJECTOR if self.before_projector else super().pruning_point()

    def image_features(
        self, vision_inputs: dict[str, Any], call_kwargs: dict[str, Any]
    ) -> ImageFeatures:
        if self.before_projector:
            return self._vision_features(vision_inputs)
        if not self.required_signals & ATTENTION_SIGNALS:
            return ImageFeatures(
                features=pooled_features(self.model.get_image_features(**vision_inputs))
            )
        module, columns = self._attention_layer(vision_inputs)
        with capture_input(module) as captured:
            features = pooled_features(self.model.get_image_features(**vision_inputs))
        signals = attention_signals(module, captured["hidden"], self.required_signals, columns)
        return ImageFeatures(
            features=features, signals={name: list(value) for name, value in signals.items()}
        )

    def token_layouts(self, inputs: Mapping[str, Any], **options: Any) -> list[TokenLayout]:
        """Per image: one panel, the ``(H / p) x (W / p)`` patch grid of ``pixel_values``
        (``p`` the patch size) over the whole picture as the tower sees it (squashed to
        ``W x H``); with ``vision_feature_select_strategy="full"`` the leading [CLS] token
        is in the sequence but drawn nowhere. With ``llm_layer`` a result row holds all
        image tokens of a prompt: one layout per prompt, its images joined."""
        pixels = inputs.get("pixel_values")
        if pixels is None:
            raise ValueError("the token layout needs the call's pixel_values")
        config = self.model.config
        patch = config.vision_config.patch_size
        patch = patch[0] if isinstance(patch, (list, tuple)) else patch
        height, width = int(pixels.shape[-2]), int(pixels.shape[-1])
        strategy = (
            inputs.get("vision_feature_select_strategy") or config.vision_feature_select_strategy
        )
        prefix = 0 if strategy == "default" else 1
        layout = patch_grid_layout((height // patch, width // patch), prefix=prefix)
        layouts = [layout] * int(pixels.shape[0])
        if self.llm_pruning is None:
            return layouts
        input_ids = inputs.get("input_ids")
        if input_ids is None:
            raise ValueError("with llm_layer the token layouts need the call's input_ids")
        per_row = (torch.as_tensor(input_ids) == self.image_token_id).sum(-1) // layout.length
        return per_prompt(layouts, per_row.tolist())

    def _vision_features(self, vision_inputs: dict[str, Any]) -> ImageFeatures:
        """Vision-tower features before the projector (the projector runs on the kept tokens)."""
        config = self.model.config
        layer = vision_inputs.get("vision_feature_layer")
        layer = config.vision_feature_layer if layer is None else layer
        strategy = vision_inputs.get("vision_feature_select_strategy")
        strategy = config.vision_feature_select_strategy if strategy is None else strategy
        if not isinstance(layer, int) or vision_inputs.get("image_sizes") is not None:
            raise ValueError(
                "before_projector supports one vision_feature_layer and fixed-size images"
            )
        signals: dict[str, torch.Tensor] = {}
        if self.required_signals & ATTENTION_SIGNALS:
            module, columns = self._attention_layer(vision_inputs)
            with capture_input(module) as captured:
                output = self.model.model.vision_tower(
                    vision_inputs["pixel_values"], output_hidden_states=True
                )
            signals = attention_signals(module, captured["hidden"], self.required_signals, columns)
        else:
            output = self.model.model.vision_tower(
                vision_inputs["pixel_values"], output_hidden_states=True
            )
        hidden = output.hidden_states[layer]
        if strategy == "default":
            hidden = hidden[:, 1:]
        return ImageFeatures(
            features=list(hidden),
            signals={name: list(value) for name, value in signals.items()},
            project=self.model.model.multi_modal_projector,
        )

    def _attention_layer(self, vision_inputs: dict[str, Any]) -> tuple[torch.nn.Module, slice]:
        """The attention module producing the selected features, and the columns the tokens keep."""
        config = self.model.config
        tower_type = getattr(config.vision_config, "model_type", "")
        if "cls_attention" in self.required_signals and tower_type not in CLS_TOWERS:
            raise ValueError(
                f"cls_attention needs a vision tower with a [CLS] token, not {tower_type!r}"
            )
        feature_layer = vision_inputs.get("vision_feature_layer")
        feature_layer = config.vision_feature_layer if feature_layer is None else feature_layer
        strategy = vision_inputs.get("vision_feature_select_strategy")
        strategy = config.vision_feature_select_strategy if strategy is None else strategy
        if not isinstance(feature_layer, int):
            raise ValueError("attention signals need a single vision_feature_layer, not a list")
        tower = self.model.model.vision_tower
        encoder = getattr(tower, "vision_model", tower).encoder
        layers = getattr(encoder, "layers", None) or encoder.layer
        index = (
            feature_layer % (len(layers) + 1) - 1
        )  # hidden_states[k] is the output of layer k - 1
        if index < 0:
            raise ValueError("attention signals need a vision_feature_layer after the embeddings")
        block = layers[index]
        module = getattr(block, "self_attn", None) or block.attention
        columns = slice(1, None) if strategy == "default" else slice(0, None)
        return module, columns
