"""Adapter for ``transformers.Qwen2_5_VLForConditionalGeneration`` (Qwen2.5-VL: dynamic
resolution, patch merger, 3-D multimodal RoPE)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch

from prunekit.adapters.attention import ATTENTION_SIGNALS
from prunekit.adapters.layout import TokenLayout, mrope_token_layouts
from prunekit.adapters.llava import pooled_features
from prunekit.adapters.vlm import ImageFeatures, Positions, PreLLMAdapter
from prunekit.core.errors import check_choice
from prunekit.core.points import IN_LLM, PRE_LLM

#: keyword arguments of a video input
VIDEO_KWARGS = ("pixel_values_videos", "video_grid_thw", "second_per_grid_ts")

#: what a video's budget counts: each temporal slice of merged tokens, or the whole video
BudgetScope = Literal["frame", "clip"]


@dataclass
class MRopeImageFeatures(ImageFeatures):
    """:class:`ImageFeatures` plus the ``(3, B, L)`` M-RoPE position ids (t, h, w) the
    model gives the unpruned prompt, computed before its image placeholders are removed."""

    positions: torch.Tensor | None = None


class Qwen2_5_VLAdapter(PreLLMAdapter):
    """Qwen2.5-VL: a variable grid of merged patches per image or video, 3-D M-RoPE positions.

    The vision tower encodes each image at its own resolution (``image_grid_thw``
    gives its ``(t, h, w)`` patch grid) and the patch merger folds every
    ``2 x 2`` patch neighbourhood into one token: an image of grid ``(1, h, w)``
    is ``h * w / 4`` visual tokens, in row-major order over the merged grid,
    one ``<|image_pad|>`` placeholder each. A video (``pixel_values_videos``,
    ``video_grid_thw``) of grid ``(t, h, w)`` is ``t`` temporal slices
    ("frames"; each covers ``temporal_patch_size`` input frames) of ``h * w / 4``
    tokens, frame after frame, in one run of ``<|video_pad|>`` placeholders.

    Pruning point and budget (default: after the merger, the model's
    ``get_image_features`` / ``get_video_features``). A float budget is a
    fraction of a row's tokens, an int a count per row, where a row is:

    * an image: every image on its own, so images of different sizes in one
      batch keep different numbers of tokens;
    * a video frame (``budget_scope="frame"``, the default) or a whole video
      (``budget_scope="clip"``, one budget over all its frames, spread as the
      pruner chooses). ``"frame"`` is the default because an int budget then
      means the same for an image and a frame (tokens per picture) and every
      frame keeps tokens, so no moment of the video is dropped outright.

    ``handle.results`` has one row per image and per frame (or clip), in
    placeholder order (prompt by prompt, left to right; images and videos
    interleaved as in the prompt). Kept indices are row-major positions in the
    row's merged grid: index ``i`` of an image or frame is row ``i // (w / 2)``,
    column ``i % (w / 2)``; in a clip, index ``i`` is frame ``i // (h * w / 4)``,
    then the same within that frame.

    Positions (``positions``, default ``"original"`` for this family):

    * ``"original"``: every kept token keeps the 3-D position (t, h, w) that the
      model's own ``get_rope_index`` gives it on the unpruned prompt (for a
      video, the temporal axis is spaced by ``second_per_grid_ts``), the text
      after an image or video keeps its positions, and decoding continues
      exactly where the unpruned model's would (last prompt position + 1 on
      every axis).
    * ``"contiguous"``: the shortened prompt is numbered like text,
      ``0, 1, 2, ...`` over its real tokens, the same number on all three axes
      (the spatial and temporal layout of the kept tokens is not encoded), and
      decoding continues after the last one.

    ``llm_layer=K`` prunes inside the language model after ``K`` decoder
    layers instead (the FastV / DART point, with their signals
    ``"last_query_attention"``, ``"llm_image_keys"``, ...): the model computes
    the unpruned prompt's 3-D positions itself, layers ``>= K`` see the kept
    tokens with their rotary embeddings gathered, so positions are always
    the original ones; one budget covers all the visual tokens (images and
    videos) of a prompt, ``handle.results`` has one row per prompt. Passing
    ``positions`` or ``budget_scope`` other than the defaults with it is refused.

    Refused with a clear error: a prompt without ``mm_token_type_ids`` (the Qwen
    processor returns it; without it the model itself silently falls back to
    1-D positions) unless ``position_ids`` are given; images without
    ``image_grid_thw``, videos without ``video_grid_thw``; precomputed
    ``mm_encoder_outputs``; pruners that need vision-tower signals
    (``"cls_attention"``, ``"vision_keys"``: VisionZip, VisPruner, FasterVLM):
    the tower has no [CLS] token and the adapter prunes after the merger, not
    before a projector.
    """

    model_class = "Qwen2_5_VLForConditionalGeneration"
    family = "qwen2_5_vl"
    #: the family's name in messages
    display_name: ClassVar[str] = "Qwen2.5-VL"
    points: ClassVar[tuple[str, ...]] = (PRE_LLM, IN_LLM)
    vision_kwargs: ClassVar[tuple[str, ...]] = ("pixel_values", "image_grid_thw", *VIDEO_KWARGS)
    pixel_kwargs: ClassVar[tuple[str, ...]] = ("pixel_values", "pixel_values_videos")

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        positions: Positions = "original",
        budget_scope: BudgetScope = "frame",
        **options: Any,
    ) -> None:
        super().__init__(model, positions=positions, **options)
        self.budget_scope = check_choice("budget_scope", budget_scope, ("frame", "clip"))
        if self.llm_pruning is not None and (positions, budget_scope) != ("original", "frame"):
            raise ValueError(
                "with llm_layer the kept tokens keep their original positions and the budget "
                "counts all visual tokens of a prompt: positions and budget_scope apply to "
                f"pre-LLM pruning only (got positions={positions!r}, "
                f"budget_scope={budget_scope!r})"
            )

    @property
    def video_token_id(self) -> int:
        """The id of the video placeholder token (``<|video_pad|>``) in ``input_ids``."""
        return int(self.model.config.video_token_id)

    def placeholder_mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Image and video placeholders: both are pruned."""
        return (input_ids == self.image_token_id) | (input_ids == self.video_token_id)

    def missing_signals_note(self, missing: frozenset[str]) -> str:
        """Why this family lacks the signals ``missing`` (for attach's refusal message)."""
        from prunekit.adapters.llm_layers import LLM_SIGNALS

        notes = []
        if missing & ATTENTION_SIGNALS:
            notes.append(
                f"{self.display_name}'s vision tower has no [CLS] token and its patches are "
                "merged 2x2 before they become LLM tokens (this adapter prunes after the "
                f"merger), so {sorted(missing & ATTENTION_SIGNALS)} are not provided"
            )
        if missing & LLM_SIGNALS and self.llm_pruning is None:
            notes.append(
                f"{sorted(missing & LLM_SIGNALS)} exist inside the LLM: {self._llm_layer_hint()}"
            )
        return "; ".join(notes)

    def _llm_layer_hint(self) -> str:
        """How to prune inside the LLM, where the in-LLM signals exist."""
        return "pass llm_layer=K"

    def token_layouts(self, inputs: Mapping[str, Any], **options: Any) -> list[TokenLayout]:
        """Per image / video, in placeholder order: its merged grid over the resized picture,
        a video's temporal slices as a strip (one result row each with ``budget_scope="frame"``)."""
        return mrope_token_layouts(
            self.model.config,
            inputs,
            budget_scope=self.budget_scope,
            in_llm=self.llm_pruning is not None,
        )

    # -- the visual features and the positions of the unpruned prompt --------------
    def rewrite(self, handle: Any, kwargs: dict[str, Any], *, generating: bool) -> dict[str, Any]:
        for pixels, grid, kind in (
            ("pixel_values", "image_grid_thw", "images"),
            ("pixel_values_videos", "video_grid_thw", "videos"),
        ):
            if kwargs.get(pixels) is None:
                continue
            if kwargs.get(grid) is None:
                raise ValueError(f"Qwen2.5-VL {kind} need {grid} (the processor returns it)")
            if kwargs.get("mm_token_type_ids") is None and kwargs.get("position_ids") is None:
                raise ValueError(
                    "prunekit.attach needs mm_token_type_ids (the Qwen processor returns it) to "
                    f"compute the {kind}' 3-D positions; without it Qwen2.5-VL silently uses 1-D "
                    "positions"
                )
        return super().rewrite(handle, kwargs, generating=generating)

    def image_features(
        self, vision_inputs: dict[str, Any], call_kwargs: dict[str, Any]
    ) -> MRopeImageFeatures:
        """The merged tokens of every image, and of every frame or clip of every video
        (``budget_scope``), in placeholder order, plus the unpruned prompt's positions."""
        grid = vision_inputs.get("image_grid_thw")
        video_grid = vision_inputs.get("video_grid_thw")
        input_ids = call_kwargs["input_ids"]
        units: list[tuple[int, torch.Tensor]] = []  # (first placeholder, features) per row
        if vision_inputs.get("pixel_values") is not None:
            # exactly the model's own call in Qwen2_5_VLModel.forward: one (n_i, d) per image
            output = self.model.model.get_image_features(
                vision_inputs["pixel_values"], grid, return_dict=True
            )
            images = pooled_features(output)
            starts = self._starts(input_ids, self.image_token_id, images, "image")
            units += zip(starts, images, strict=True)
        if vision_inputs.get("pixel_values_videos") is not None:
            output = self.model.model.get_video_features(
                vision_inputs["pixel_values_videos"], video_grid, return_dict=True
            )
            videos = pooled_features(output)
            starts = self._starts(input_ids, self.video_token_id, videos, "video")
            for start, video, (t, _, _) in zip(starts, videos, video_grid.tolist(), strict=True):
                if self.budget_scope == "clip":
                    units.append((start, video))
                    continue
                size = video.shape[0] // t  # merged tokens of one temporal slice
                units += [(start + i * size, video[i * size : (i + 1) * size]) for i in range(t)]
        units.sort(key=lambda unit: unit[0])  # placeholder order, prompt by prompt
        return MRopeImageFeatures(
            features=[features for _, features in units],
            positions=self._unpruned_positions(
                call_kwargs,
                grid,
                video_grid=video_grid,
                second_per_grid_ts=vision_inputs.get("second_per_grid_ts"),
            ),
        )

    @staticmethod
    def _starts(
        input_ids: torch.Tensor, token_id: int, features: list[torch.Tensor], kind: str
    ) -> list[int]:
        """Flat (row-major) index of the first placeholder of each image or video, in the
        order the model scatters them (an item's placeholders follow one another)."""
        flat = (input_ids.flatten() == token_id).nonzero()[:, 0]
        counts = [f.shape[0] for f in features]
        if flat.numel() != sum(counts):
            raise ValueError(
                f"the prompt has {flat.numel()} {kind} placeholders (token {token_id}) but the "
                f"{kind}s give {sum(counts)} features ({counts} per {kind}); the processor "
                "and the model disagree"
            )
        offsets = [0, *torch.tensor(counts[:-1], dtype=torch.long).cumsum(0).tolist()]
        return [int(flat[o]) for o in offsets]

    def _unpruned_positions(
        self,
        call_kwargs: dict[str, Any],
        grid: torch.Tensor | None,
        *,
        video_grid: torch.Tensor | None = None,
        second_per_grid_ts: torch.Tensor | None = None,
    ) -> torch.Tensor:
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
            video_grid_thw=video_grid,
            second_per_grid_ts=second_per_grid_ts,
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
        new_mask = kwargs["attention_mask"]
        (rows, cols), (new_rows, new_cols) = kept_columns(
            attention_mask, is_image, keep_image_token, new_mask
        )

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


def kept_columns(
    attention_mask: torch.Tensor,
    is_image: torch.Tensor,
    keep_image_token: list[torch.Tensor],
    new_mask: torch.Tensor,
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """``((rows, cols), (new_rows, new_cols))``: the kept columns of the unpruned prompt
    and the real columns of the shortened one, in one-to-one order (the base class keeps
    the prompt's order, so both, row-major, pair up)."""
    keep = attention_mask.bool().clone()
    keep[is_image] = torch.cat(keep_image_token).to(keep.device)
    return keep.nonzero(as_tuple=True), new_mask.bool().nonzero(as_tuple=True)
