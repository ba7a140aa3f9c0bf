"""Adapter for ``transformers.Qwen2_5_VLForConditionalGeneration`` (Qwen2.5-VL: dynamic
resolution, patch merger, 3-D multimodal RoPE)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from prunekit.adapters.base import PRE_LLM
from prunekit.adapters.llava import pooled_features
from prunekit.adapters.vlm import ImageFeatures, Positions, PreLLMAdapter

#: keyword arguments of a video input, which this adapter does not prune yet
VIDEO_KWARGS = ("pixel_values_videos", "video_grid_thw", "second_per_grid_ts")


@dataclass
class MRopeImageFeatures(ImageFeatures):
    """:class:`ImageFeatures` plus the ``(3, B, L)`` M-RoPE position ids (t, h, w) the
    model gives the unpruned prompt, computed before its image placeholders are removed."""

    positions: torch.Tensor | None = None


class Qwen2_5_VLAdapter(PreLLMAdapter):
    """Qwen2.5-VL: one variable grid of merged patches per image, 3-D M-RoPE positions.

    The vision tower encodes each image at its own resolution (``image_grid_thw``
    gives its ``(t, h, w)`` patch grid) and the patch merger folds every
    ``2 x 2`` patch neighbourhood into one token: an image of grid ``(1, h, w)``
    is ``h * w / 4`` visual tokens, in row-major order over the merged grid,
    one ``<|image_pad|>`` placeholder each. The pruning point is after the
    merger (the model's ``get_image_features``); the budget counts the visual
    tokens of each image on its own (a float is a fraction of that image's
    tokens, an int a count per image), so images of different sizes in one
    batch keep different numbers of tokens. ``handle.results`` has one row per
    image in placeholder order; kept indices are row-major positions in the
    image's merged grid (index ``i`` is row ``i // (w / 2)``, column
    ``i % (w / 2)``).

    Positions (``positions``, default ``"original"`` for this family):

    * ``"original"``: every kept token keeps the 3-D position (t, h, w) that the
      model's own ``get_rope_index`` gives it on the unpruned prompt, the text
      after an image keeps its positions, and decoding continues exactly where
      the unpruned model's would (last prompt position + 1 on every axis).
    * ``"contiguous"``: the shortened prompt is numbered like text,
      ``0, 1, 2, ...`` over its real tokens, the same number on all three axes
      (the spatial layout of the kept tokens is not encoded), and decoding
      continues after the last one.

    The prompt must carry ``mm_token_type_ids`` (the Qwen processor returns it):
    without it the model itself silently falls back to 1-D positions. Video
    inputs (``pixel_values_videos``) and ``llm_layer`` are not supported yet and
    are refused.
    """

    model_class = "Qwen2_5_VLForConditionalGeneration"
    family = "qwen2_5_vl"
    points: ClassVar[tuple[str, ...]] = (PRE_LLM,)
    vision_kwargs: ClassVar[tuple[str, ...]] = ("pixel_values", "image_grid_thw")

    def __init__(
        self, model: torch.nn.Module, *, positions: Positions = "original", **options: Any
    ) -> None:
        if options.get("llm_layer") is not None:
            raise ValueError(
                "the qwen2_5_vl adapter prunes at the pre-LLM point only for now; "
                "llm_layer (M-RoPE inside the decoder) is not supported yet"
            )
        super().__init__(model, positions=positions, **options)

    # -- the image features and the positions of the unpruned prompt ---------------
    def rewrite(self, handle: Any, kwargs: dict[str, Any], *, generating: bool) -> dict[str, Any]:
        video = [name for name in VIDEO_KWARGS if kwargs.get(name) is not None]
        if video:
            raise ValueError(
                f"the qwen2_5_vl adapter prunes images only; this call has {video} "
                "(video pruning is not supported yet)"
            )
        if kwargs.get("pixel_values") is not None:
            if kwargs.get("image_grid_thw") is None:
                raise ValueError("Qwen2.5-VL images need image_grid_thw (the processor returns it)")
            if kwargs.get("mm_token_type_ids") is None and kwargs.get("position_ids") is None:
                raise ValueError(
                    "prunekit.attach needs mm_token_type_ids (the Qwen processor returns it) to "
                    "compute the images' 3-D positions; without it Qwen2.5-VL silently uses 1-D "
                    "positions"
                )
        return super().rewrite(handle, kwargs, generating=generating)

    def image_features(
        self, vision_inputs: dict[str, Any], call_kwargs: dict[str, Any]
    ) -> MRopeImageFeatures:
        grid = vision_inputs["image_grid_thw"]
        # exactly the model's own call in Qwen2_5_VLModel.forward: one (n_i, d) per image
        output = self.model.model.get_image_features(
            vision_inputs["pixel_values"], grid, return_dict=True
        )
        return MRopeImageFeatures(
            features=pooled_features(output),
            positions=self._unpruned_positions(call_kwargs, grid),
        )

    def _unpruned_positions(self, call_kwargs: dict[str, Any], grid: torch.Tensor) -> torch.Tensor:
        """``(3, B, L)`` positions of the unpruned prompt: the caller's, else the model's own."""
        position_ids = call_kwargs.get("position_ids")
        input_ids = call_kwargs["input_ids"]
        if position_ids is not None:
            if position_ids.dim() == 2:  # what the text model does with 2-D positions
                return position_ids.unsqueeze(0).expand(3, -1, -1)
            if position_ids.dim() == 3 and position_ids.shape[0] in (3, 4):
                return position_ids[-3:]  # 4 rows: a text row first, then t, h, w
            raise ValueError(
                f"position_ids must be (B, L), (3, B, L) or (4, B, L), got {tuple(position_ids.shape)}"
            )
        positions, _ = self.model.model.get_rope_index(
            input_ids,
            mm_token_type_ids=call_kwargs["mm_token_type_ids"],
            image_grid_thw=grid,
            attention_mask=call_kwargs.get("attention_mask"),
        )
        return positions

    # -- the shortened call ----------------------------------------------------------
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
        kwargs.pop("position_ids", None)  # replaced below by the 3-D positions
        kwargs = super()._rebuild(
            kwargs,
            input_ids,
            attention_mask,
            is_image,
            images,
            keep_image_token,
            generating=generating,
        )
        # the base class keeps the prompt's order, so the kept columns, row-major, map
        # one to one onto the real columns of the shortened prompt, row-major
        keep = attention_mask.bool().clone()
        keep[is_image] = torch.cat(keep_image_token).to(keep.device)
        rows, cols = keep.nonzero(as_tuple=True)
        new_mask = kwargs["attention_mask"]
        new_rows, new_cols = new_mask.bool().nonzero(as_tuple=True)

        if kwargs.get("mm_token_type_ids") is not None:
            types = kwargs["mm_token_type_ids"]
            new_types = types.new_zeros(new_mask.shape)
            new_types[new_rows, new_cols] = types[rows, cols]
            kwargs["mm_token_type_ids"] = new_types

        # text numbering of the shortened prompt, as generate() numbers a prompt
        text = (new_mask.long().cumsum(dim=1) - 1).masked_fill(new_mask == 0, 0)
        if self.positions == "contiguous":
            spatial = text.unsqueeze(0).expand(3, -1, -1).clone()
        else:
            original = images.positions.to(new_mask.device)
            spatial = original.new_zeros((3, *new_mask.shape))
            spatial[:, new_rows, new_cols] = original[:, rows, cols]
        spatial = spatial.to(torch.long)
        # what decoding with a cache adds to the text numbering (Qwen2_5_VLModel.rope_deltas)
        next_position = spatial.amax(dim=(0, 2)) + 1
        self.model.model.rope_deltas = (next_position - new_mask.sum(dim=1)).unsqueeze(1)
        # generate() takes a text row first (for its masks) and continues every row at
        # the last column + 1; forward() takes the three M-RoPE rows
        kwargs["position_ids"] = torch.cat([text.unsqueeze(0), spatial]) if generating else spatial
        return kwargs
