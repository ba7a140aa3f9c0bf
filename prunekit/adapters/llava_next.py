"""Adapter for ``transformers.LlavaNextForConditionalGeneration`` (LLaVA-NeXT / LLaVA-1.6, any resolution)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from prunekit.adapters.llava import pooled_features
from prunekit.adapters.vlm import ImageFeatures, PreLLMAdapter


class LlavaNextAdapter(PreLLMAdapter):
    """LLaVA-NeXT: a base view plus an unpadded grid of crops, with a newline token per grid row.

    The model turns every image into one sequence of projected tokens: the base
    (downscaled) view's tokens, then the crops' tokens stitched into one grid,
    unpadded to the image's aspect ratio, with the learned ``image_newline``
    token after each row of that grid. The pruning point is after the projector,
    on exactly that sequence.

    Counting convention: the budget counts an image's visual tokens in total,
    base view and all crops together (one pruning decision over the whole
    sequence, so the pruner chooses how to spread the budget over base and crop
    tokens); a float budget is a fraction of that total. The row-newline tokens
    are not visual tokens: they are always kept, in place, and do not count
    towards the budget (also when every token of their row is dropped; they
    cost one token per grid row, e.g. 48 for a 672x672 LLaVA-1.6 image).

    The vision feature layer and selection strategy are the model's (or the
    call's) own; ``image_sizes`` must be passed as the processor returns it.
    """

    model_class = "LlavaNextForConditionalGeneration"
    family = "llava_next"
    vision_kwargs: ClassVar[tuple[str, ...]] = (
        "pixel_values",
        "image_sizes",
        "vision_feature_layer",
        "vision_feature_select_strategy",
    )

    def image_features(
        self, vision_inputs: dict[str, Any], call_kwargs: dict[str, Any]
    ) -> ImageFeatures:
        if vision_inputs.get("image_sizes") is None:
            raise ValueError("LLaVA-NeXT needs image_sizes (as the processor returns them)")
        output = self.model.get_image_features(**vision_inputs)
        features = pooled_features(output)
        prunable = self._visual_token_flags(vision_inputs)
        for i, (f, p) in enumerate(zip(features, prunable)):
            if f.shape[0] != p.shape[0]:
                raise ValueError(
                    f"image {i}: the model gives {f.shape[0]} features but its layout has "
                    f"{p.shape[0]} tokens; unsupported vision tower / strategy combination"
                )
        return ImageFeatures(features=features, prunable=prunable)

    def _visual_token_flags(self, vision_inputs: dict[str, Any]) -> list[torch.Tensor]:
        """Per image, ``True`` for visual tokens and ``False`` for row-newline tokens.

        Runs the model's own ``pack_image_features`` on a 1-channel dummy (0 for
        visual tokens, 1 for the newline), so the layout (grid shape, unpadding,
        newline placement) is the model's, not a re-implementation.
        """
        from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

        config = self.model.config
        vision = config.vision_config
        side = vision.image_size // vision.patch_size
        image_sizes = vision_inputs["image_sizes"]
        if isinstance(image_sizes, torch.Tensor):
            image_sizes = image_sizes.cpu()
        dummy = [
            torch.zeros(
                image_size_to_num_patches(
                    image_size=size,
                    grid_pinpoints=config.image_grid_pinpoints,
                    patch_size=vision.image_size,
                ),
                side * side,
                1,
            )
            for size in image_sizes
        ]
        strategy = vision_inputs.get("vision_feature_select_strategy")
        packed, _ = self.model.pack_image_features(
            dummy,
            image_sizes,
            vision_feature_select_strategy=strategy or config.vision_feature_select_strategy,
            image_newline=torch.ones(1),
        )
        return [p[:, 0] == 0 for p in packed]
