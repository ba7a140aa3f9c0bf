"""Adapter for ``transformers.InternVLForConditionalGeneration`` (InternVL 2.5 / 3, tiles and pixel shuffle)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch

from prunekit.adapters.llava import pooled_features
from prunekit.adapters.vlm import ImageFeatures, PreLLMAdapter
from prunekit.core.errors import check_choice

#: what an InternVL budget counts: a whole image (all its tiles) or each tile
BudgetScope = Literal["image", "tile"]


def placeholder_runs(input_ids: torch.Tensor, token_id: int) -> list[int]:
    """Lengths of the maximal runs of ``token_id`` in ``input_ids``, row by row, left to right
    (the order in which the model scatters features into the placeholders)."""
    is_token = (input_ids == token_id).to(torch.int8)
    edges = torch.nn.functional.pad(is_token, (1, 1)).diff(dim=1)
    starts = (edges == 1).nonzero()[:, 1]  # row-major, like the ends
    ends = (edges == -1).nonzero()[:, 1]
    return (ends - starts).tolist()


class InternVLAdapter(PreLLMAdapter):
    """InternVL (``InternVLForConditionalGeneration``): dynamic tiles, pixel shuffle, MLP projector.

    The processor cuts an image into tiles (plus a thumbnail tile when there
    are several), ``k`` tiles in all; the vision tower encodes every tile, pixel shuffle folds each
    2x2 patch neighbourhood into one token and the projector maps it to the
    LLM: ``T`` tokens per tile (``image_seq_length``, 256 for InternVL3 at
    448 px). The prompt holds each image as one contiguous run of ``k * T``
    placeholders (between ``<img>`` and ``</img>``); ``pixel_values`` is
    ``(total_tiles, 3, H, W)`` without per-image grouping, so the adapter reads
    the tiles of each image off the placeholder runs: ``run length / T``.
    The pruning point is after the projector.

    Counting convention (``budget_scope``):

    * ``"image"`` (default): one pruning sample per image, made of all its
      tiles' tokens (thumbnail included) in tile order; the budget applies to
      the image as a whole, so an image of ``k`` tiles keeps
      ``num_kept(k * T, budget)`` tokens in total, spread over its tiles as the
      pruner chooses. ``handle.results`` has one row per image.
    * ``"tile"``: every tile is its own sample with the budget applied per tile,
      so each tile keeps ``num_kept(T, budget)`` tokens and an image of ``k``
      tiles ``k * num_kept(T, budget)``. ``handle.results`` has one row per tile.

    Rows of ``handle.results`` follow placeholder order (prompt by prompt, left
    to right); kept indices index the tokens of the row's image (tile-major:
    token ``j`` of tile ``t`` is index ``t * T + j``) or of its tile.

    A video frame is its own ``<img>...</img>`` run of one tile, hence its own
    image. Images whose placeholder runs touch (no token in between, which the
    processor never produces) are indistinguishable and count as one image.

    Options: ``budget_scope`` (``"image"`` or ``"tile"``), plus those of
    :class:`PreLLMAdapter` (``tokenizer``, ``positions``, ...).
    """

    model_class = "InternVLForConditionalGeneration"
    family = "internvl"
    vision_kwargs: ClassVar[tuple[str, ...]] = (
        "pixel_values",
        "vision_feature_layer",
        "vision_feature_select_strategy",
        "image_sizes",  # in forward's signature; the vision side never uses it
    )

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        budget_scope: BudgetScope = "image",
        **options: Any,
    ) -> None:
        super().__init__(model, **options)
        self.budget_scope = check_choice("budget_scope", budget_scope, ("image", "tile"))
        if self.llm_pruning is not None and self.budget_scope != "image":
            raise ValueError(
                "budget_scope='tile' applies to pre-LLM pruning; with llm_layer the budget "
                "counts all image tokens of a prompt"
            )

    def image_features(
        self, vision_inputs: dict[str, Any], call_kwargs: dict[str, Any]
    ) -> ImageFeatures:
        # exactly the model's own call (forward passes only these three to the vision side)
        output = self.model.get_image_features(
            pixel_values=vision_inputs["pixel_values"],
            vision_feature_layer=vision_inputs.get("vision_feature_layer"),
            vision_feature_select_strategy=vision_inputs.get("vision_feature_select_strategy"),
            return_dict=True,
        )
        tiles = pooled_features(output)  # one (T, d) per tile, in placeholder order
        if self.budget_scope == "tile":
            return ImageFeatures(features=tiles)
        per_tile = tiles[0].shape[0]
        runs = placeholder_runs(call_kwargs["input_ids"], self.image_token_id)
        if sum(runs) != per_tile * len(tiles):
            return ImageFeatures(features=tiles)  # the caller reports the mismatch
        images, start = [], 0
        for run in runs:
            if run % per_tile:
                raise ValueError(
                    f"a run of {run} image tokens is not a whole number of tiles of "
                    f"{per_tile} tokens; the processor and the model disagree"
                )
            images.append(torch.cat(tiles[start : start + run // per_tile]))
            start += run // per_tile
        return ImageFeatures(features=images)
