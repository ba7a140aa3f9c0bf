"""Adapter for ``transformers.LlavaOnevisionForConditionalGeneration`` (LLaVA-OneVision:
SigLIP tower, any-resolution crops with ``anyres_max`` pooling, Qwen2 LLM)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from prunekit.adapters.llava_next import LlavaNextAdapter, onevision_token_layouts
from prunekit.adapters.vlm import ImageFeatures

if TYPE_CHECKING:
    from prunekit.adapters.attach import AttachHandle
    from prunekit.adapters.layout import TokenLayout

#: keyword arguments of a video input, which this adapter does not prune
VIDEO_KWARGS = ("pixel_values_videos", "image_sizes_videos")


class LlavaOnevisionAdapter(LlavaNextAdapter):
    """LLaVA-OneVision: LLaVA-NeXT's layout (base view, crop grid, row newlines), pooled.

    The model turns every image into one sequence of projected tokens: the base
    view's tokens, then the crops' tokens stitched into one grid and unpadded
    to the image's aspect ratio, bilinearly downscaled when that grid has more
    than about ``1.1**2 * N * side**2`` tokens (``vision_aspect_ratio =
    "anyres_max_N"``, N = 9 for the released checkpoints), with the learned
    ``image_newline`` token after each row of the (pooled) grid. In a prompt of
    several images (``batch_num_images`` > 1) each image is its base view only,
    followed by one newline token. The pruning point is after the projector, on
    exactly the sequence the model feeds the LLM (pooling and unpadding done).

    Counting convention (as for LLaVA-NeXT): a visual token is one token of the
    base view or of the pooled crop grid; the budget counts an image's visual
    tokens in total (one pruning decision over base and crops; a float is a
    fraction of that total). The newline tokens are not visual tokens: always
    kept, in place, never counted. With ``llm_layer=K`` (in-LLM pruning, the
    base class's, kept tokens at their original positions) the candidates are
    all image placeholders of a prompt together, newline tokens included, as
    for every family at that point: in transformers 5 ``generate`` encodes the
    images before the first forward and drops ``image_sizes``, so the layout is
    not known there.

    ``vision_aspect_ratio`` must be the model config's: in transformers 5.24
    ``forward`` ignores a per-call value while ``generate`` honours it, so a
    call that gives a different one is refused rather than pruned on a layout
    one of them does not use. Video inputs (``pixel_values_videos``) are
    refused at both points.
    """

    model_class = "LlavaOnevisionForConditionalGeneration"
    family = "llava_onevision"
    vision_kwargs: ClassVar[tuple[str, ...]] = (
        "pixel_values",
        "image_sizes",
        "vision_feature_layer",
        "vision_feature_select_strategy",
        "vision_aspect_ratio",
        "batch_num_images",
    )

    def rewrite(
        self, handle: AttachHandle, kwargs: dict[str, Any], *, generating: bool
    ) -> dict[str, Any]:
        self._check_call(kwargs)
        return super().rewrite(handle, kwargs, generating=generating)

    def image_features(
        self, vision_inputs: dict[str, Any], call_kwargs: dict[str, Any]
    ) -> ImageFeatures:
        # the model's forward computes the features without the call's vision_aspect_ratio
        vision_inputs = {k: v for k, v in vision_inputs.items() if k != "vision_aspect_ratio"}
        return super().image_features(vision_inputs, call_kwargs)

    def token_layouts(self, inputs: Mapping[str, Any], **options: Any) -> list[TokenLayout]:
        """Per image: the base view, then the (pooled) crop grid; base view only in a
        prompt of several images."""
        return onevision_token_layouts(self.model.config, inputs)

    def _check_call(self, kwargs: dict[str, Any]) -> None:
        """Refuse what the pre-LLM point cannot prune faithfully (videos, a per-call aspect ratio)."""
        refuse_video(kwargs)
        ratio = kwargs.get("vision_aspect_ratio")
        if ratio is not None and ratio != self.model.config.vision_aspect_ratio:
            raise ValueError(
                f"vision_aspect_ratio={ratio!r} differs from the model config's "
                f"{self.model.config.vision_aspect_ratio!r}, which the model's forward uses "
                "instead; set model.config.vision_aspect_ratio"
            )
        if kwargs.get("pixel_values") is not None and kwargs.get("image_sizes") is None:
            raise ValueError("LLaVA-OneVision needs image_sizes (as the processor returns them)")

    def _visual_token_flags(self, vision_inputs: dict[str, Any]) -> list[torch.Tensor]:
        """Per image, ``True`` for visual tokens and ``False`` for newline tokens.

        Runs the model's own ``pack_image_features`` (unpadding, ``anyres_max``
        pooling, newline placement) on a 1-channel dummy, 0 for visual tokens and
        1 for the newline; bilinear pooling keeps the zeros zero.
        """
        from transformers.models.llava_onevision.modeling_llava_onevision import (
            image_size_to_num_patches,
        )

        config = self.model.config
        vision = config.vision_config
        side = vision.image_size // vision.patch_size
        image_sizes = vision_inputs["image_sizes"]
        if isinstance(image_sizes, torch.Tensor):
            image_sizes = image_sizes.cpu()
        per_sample = vision_inputs.get("batch_num_images")
        if per_sample is None:  # the model's rule: every image is cropped
            cropped = [True] * len(image_sizes)
        else:  # only a sample's single image is cropped
            cropped = [int(n) == 1 for n in per_sample for _ in range(int(n))]
        dummy = [
            torch.zeros(
                image_size_to_num_patches(
                    image_size=size,
                    grid_pinpoints=config.image_grid_pinpoints,
                    patch_size=vision.image_size,
                )
                if crop
                else 1,
                side * side,
                1,
            )
            for size, crop in zip(image_sizes, cropped)
        ]
        packed, _ = self.model.model.pack_image_features(
            dummy,
            image_sizes,
            image_newline=torch.ones(1),
            vision_aspect_ratio=config.vision_aspect_ratio,
        )
        return [p[:, 0] == 0 for p in packed]

    def _mark_images_for_llm(self, kwargs: dict[str, Any]) -> None:
        refuse_video(kwargs)
        super()._mark_images_for_llm(kwargs)


def refuse_video(kwargs: dict[str, Any]) -> None:
    """Raise if the call carries a video (raw, or encoded by ``generate`` before the forward)."""
    video = [name for name in VIDEO_KWARGS if kwargs.get(name) is not None]
    if (kwargs.get("mm_encoder_outputs") or {}).get("video") is not None:
        video.append("pixel_values_videos")
    if video:
        raise ValueError(
            f"the llava_onevision adapter prunes images only; this call has {video} "
            "(video inputs are not supported)"
        )
