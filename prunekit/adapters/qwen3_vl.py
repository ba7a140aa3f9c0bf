"""Adapter for ``transformers.Qwen3VLForConditionalGeneration`` (Qwen3-VL: the dynamic
resolution and 3-D M-RoPE of Qwen2.5-VL, plus DeepStack visual features added to the
hidden states of early decoder layers)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from prunekit.adapters.llava import pooled_features
from prunekit.adapters.qwen2_5_vl import MRopeImageFeatures, Qwen2_5_VLAdapter, kept_columns
from prunekit.adapters.vlm import ImageFeatures, Positions

#: keyword arguments of a video input (pruned at the pre-LLM point only)
VIDEO_KWARGS = ("pixel_values_videos", "video_grid_thw")


@dataclass
class DeepStackImageFeatures(MRopeImageFeatures):
    """:class:`MRopeImageFeatures` plus the DeepStack features: per DeepStack layer, one
    ``(n_i, d)`` tensor per row of ``features``, row ``j`` belonging to its token ``j``."""

    deepstack: list[list[torch.Tensor]] = field(default_factory=list)
    #: per row of ``features``: ``"image"`` or ``"video"`` (a frame, or a whole clip)
    kinds: list[str] = field(default_factory=list)


class Qwen3VLAdapter(Qwen2_5_VLAdapter):
    """Qwen3-VL: Qwen2.5-VL's variable grids of merged patches and 3-D M-RoPE, plus DeepStack.

    Images and videos are pruned as by
    :class:`~prunekit.adapters.qwen2_5_vl.Qwen2_5_VLAdapter`: the pruning point is after
    the patch merger (the model's ``get_image_features`` / ``get_video_features``); an
    image of patch grid ``(1, h, w)`` is ``h * w / 4`` visual tokens, row-major over its
    merged grid, a video of grid ``(t, h, w)`` is ``t`` frames of ``h * w / 4`` tokens
    (Qwen3-VL's processor puts each frame after its timestamp text, between its own
    vision start / end tokens). The budget counts the tokens of each image, and of each
    frame (``budget_scope="frame"``, the default) or each whole video
    (``budget_scope="clip"``), on its own: a float is a fraction of them, an int a count.
    ``handle.results`` has one row per image and per frame (or video), in placeholder
    order; kept index ``i`` is the row-major position in the merged grid (of the frame,
    or of the whole video for ``"clip"``).

    Positions (``positions``, default ``"original"``): ``"original"`` keeps for every kept
    token the 3-D position (t, h, w) of the model's own ``get_rope_index`` on the
    unpruned prompt, the text keeps its positions and decoding continues where the
    unpruned model's would; ``"contiguous"`` numbers the shortened prompt like text
    (``0, 1, 2, ...`` on all three axes).

    DeepStack: the vision tower also returns, for a few of its layers, features of
    every merged token that the language model adds to the hidden states of its first
    decoder layers at the visual positions. A pruned image (frame, video) keeps the
    DeepStack rows of its kept tokens, in the same order, and the visual positions are
    those of the shortened prompt. The shortened call hands both to the model through
    its own pre-encoded-inputs argument ``mm_encoder_outputs`` (which ``generate``
    passes to the prefill only, as for unpruned images), so the model itself scatters
    the kept features and adds their DeepStack rows. A pruner that merges tokens
    changes the kept tokens' features; their DeepStack rows stay the kept tokens' own.

    Inside the LLM (``llm_layer=K``, the FastV / DART point), as for Qwen2.5-VL: the
    model runs its own prompt (features, DeepStack, 3-D positions); after ``K`` decoder
    layers the pruner keeps tokens of each prompt's visual tokens (one budget per
    prompt, ``handle.results`` one row per prompt), which go on with their original
    positions. ``K`` must be at least the number of DeepStack layers
    (``len(vision_config.deepstack_visual_indexes)``, 3 for the released models), so
    that every DeepStack row is added before the pruning; a smaller ``K`` is refused.

    Refused with a ``ValueError``: images without ``mm_token_type_ids`` (unless
    ``position_ids`` are given; the model itself needs them for its positions) or
    without ``image_grid_thw`` (videos without ``video_grid_thw``); user-supplied
    ``mm_encoder_outputs``; ``llm_layer`` below the DeepStack layers, and videos with
    ``llm_layer`` (untested); pruners needing vision-tower signals (no [CLS] token;
    tokens merged 2x2).
    """

    model_class = "Qwen3VLForConditionalGeneration"
    family = "qwen3_vl"
    display_name = "Qwen3-VL"

    def __init__(
        self, model: torch.nn.Module, *, positions: Positions = "original", **options: Any
    ) -> None:
        layer = options.get("llm_layer")
        deepstack_layers = self.deepstack_layers(model)
        if isinstance(layer, int) and not isinstance(layer, bool) and layer < deepstack_layers:
            raise ValueError(
                f"the qwen3_vl adapter prunes inside the LLM only after its DeepStack layers: "
                f"llm_layer must be >= {deepstack_layers} for this model (the first "
                f"{deepstack_layers} decoder layers add DeepStack features at every visual "
                f"position), got {layer}"
            )
        super().__init__(model, positions=positions, **options)

    @staticmethod
    def deepstack_layers(model: torch.nn.Module) -> int:
        """How many of the first decoder layers add DeepStack features."""
        return len(model.config.vision_config.deepstack_visual_indexes)

    def _llm_layer_hint(self) -> str:
        return (
            f"pass llm_layer=K, K >= {self.deepstack_layers(self.model)} "
            "(after the DeepStack layers)"
        )

    def _mark_images_for_llm(self, kwargs: dict[str, Any]) -> None:
        # llm_layer: the calls reach the model without rewrite
        video = [name for name in VIDEO_KWARGS if kwargs.get(name) is not None]
        if video:
            raise ValueError(
                f"the qwen3_vl adapter prunes videos at the pre-LLM point only; this call has "
                f"{video} (llm_layer with videos is not supported for Qwen3-VL)"
            )
        super()._mark_images_for_llm(kwargs)

    def rewrite(self, handle: Any, kwargs: dict[str, Any], *, generating: bool) -> dict[str, Any]:
        if any(kwargs.get(name) is not None for name in self.pixel_kwargs):
            if kwargs.get("mm_encoder_outputs"):
                raise ValueError(
                    "prunekit.attach computes the image and video features itself; pass "
                    "pixel values or mm_encoder_outputs, not both"
                )
            if kwargs.get("mm_token_type_ids") is None and kwargs.get("position_ids") is None:
                raise ValueError(
                    "Qwen3-VL images and videos need mm_token_type_ids (the Qwen processor "
                    "returns it) to compute their 3-D positions"
                )
        for pixels, grid, kind in (
            ("pixel_values", "image_grid_thw", "images"),
            ("pixel_values_videos", "video_grid_thw", "videos"),
        ):
            if kwargs.get(pixels) is not None and kwargs.get(grid) is None:
                raise ValueError(f"Qwen3-VL {kind} need {grid} (the processor returns it)")
        return super().rewrite(handle, kwargs, generating=generating)

    def image_features(
        self, vision_inputs: dict[str, Any], call_kwargs: dict[str, Any]
    ) -> DeepStackImageFeatures:
        """The merged tokens of every image, and of every frame or clip of every video
        (``budget_scope``), in placeholder order, with their DeepStack rows, plus the
        unpruned prompt's positions."""
        grid = vision_inputs.get("image_grid_thw")
        video_grid = vision_inputs.get("video_grid_thw")
        input_ids = call_kwargs["input_ids"]
        # (first placeholder, kind, features, per DeepStack layer its rows) per row
        units: list[tuple[int, str, torch.Tensor, list[torch.Tensor]]] = []
        for pixels, token_id, kind, grids in (
            ("pixel_values", self.image_token_id, "image", grid),
            ("pixel_values_videos", self.video_token_id, "video", video_grid),
        ):
            if vision_inputs.get(pixels) is None:
                continue
            # exactly the model's own call in Qwen3VLModel.forward: per image (video) one
            # (n_i, d) pooled tensor, and per DeepStack layer one (n_i, d) tensor
            encode = getattr(self.model.model, f"get_{kind}_features")
            output = encode(vision_inputs[pixels], grids, return_dict=True)
            pooled = pooled_features(output)
            starts = self._starts(input_ids, token_id, pooled, kind)
            for i, (start, features, (t, _, _)) in enumerate(zip(starts, pooled, grids.tolist())):
                rows = [layer[i] for layer in output.deepstack_features]
                if kind == "image" or self.budget_scope == "clip":
                    units.append((start, kind, features, rows))
                    continue
                size = features.shape[0] // t  # merged tokens of one frame
                for f in range(t):  # frame f: its own run of placeholders, later in the prompt
                    part = slice(f * size, (f + 1) * size)
                    units.append((start + f * size, kind, features[part], [r[part] for r in rows]))
        units.sort(key=lambda unit: unit[0])  # placeholder order, prompt by prompt
        return DeepStackImageFeatures(
            features=[features for _, _, features, _ in units],
            positions=self._unpruned_positions(call_kwargs, grid, video_grid=video_grid),
            deepstack=[list(layer) for layer in zip(*(rows for _, _, _, rows in units))],
            kinds=[kind for _, kind, _, _ in units],
        )

    def _rebuild(
        self,
        kwargs: dict[str, Any],
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        is_image: torch.Tensor,
        images: ImageFeatures,
        keep_image_token: list[torch.Tensor],
        *,
        generating: bool,
    ) -> dict[str, Any]:
        from transformers.models.qwen3_vl.modeling_qwen3_vl import (
            BaseModelOutputWithDeepstackFeatures,
        )

        # shortened mask, mm_token_type_ids, 3-D positions and rope_deltas, as for Qwen2.5-VL
        kwargs = super()._rebuild(
            kwargs,
            input_ids,
            attention_mask,
            is_image,
            images,
            keep_image_token,
            generating=generating,
        )
        # the shortened ids (the model scatters the kept features at their placeholders)
        (rows, cols), (new_rows, new_cols) = kept_columns(
            attention_mask, is_image, keep_image_token, kwargs["attention_mask"]
        )
        new_ids = torch.full_like(
            kwargs["attention_mask"], self.pad_token_id(), dtype=input_ids.dtype
        )
        new_ids[new_rows, new_cols] = input_ids[rows, cols]

        # The model's own path then scatters the kept features at the image (video) tokens
        # and adds the kept DeepStack rows there (visual_pos_masks = the shortened visual
        # tokens, images and videos together, as the model orders them).
        keeps = [k.to(f.device) for f, k in zip(images.features, keep_image_token)]
        encoded = {}
        for kind in ("image", "video"):
            rows = [i for i, row_kind in enumerate(images.kinds) if row_kind == kind]
            if rows:
                encoded[kind] = BaseModelOutputWithDeepstackFeatures(
                    pooler_output=tuple(images.features[i][keeps[i]] for i in rows),
                    deepstack_features=[
                        [layer[i][keeps[i].to(layer[i].device)] for i in rows]
                        for layer in images.deepstack
                    ],
                )
        kwargs.pop("inputs_embeds", None)
        kwargs["input_ids"] = new_ids
        kwargs["mm_encoder_outputs"] = encoded
        return kwargs
