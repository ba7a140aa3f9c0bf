"""In-encoder pruning for timm ``VisionTransformer`` models.

Covers ``timm.models.vision_transformer.VisionTransformer`` and its subclasses
(DeiT's distilled ViT, DINOv2-style ViTs such as ``vit_small_patch14_dinov2``
and ``vit_small_patch14_reg4_dinov2`` with register tokens, ...). The prefix
tokens are the model's ``num_prefix_tokens`` ([CLS], registers, distillation
token), always kept. Pooling works on the pruned sequence: ``token`` reads the
[CLS] token, ``avg`` / ``max`` skip ``num_prefix_tokens`` and reduce over the
kept patch tokens, ``map`` attends over them. An ``attn_mask`` passed to the
model is subset to the kept tokens. ``forward_intermediates`` (and
``get_intermediate_layers``) refuse NCHW maps of pruned blocks with a clear
error; ``output_fmt="NLC"`` works.

timm ViTs have no text tower or joint space, so text options raise
``ValueError``. See :mod:`prunekit.adapters.encoder` for the ``layer`` convention.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from prunekit.adapters.base import Undo
from prunekit.adapters.encoder import EncoderAdapter, guard_intermediates


class TimmViTAdapter(EncoderAdapter):
    """timm VisionTransformer: prune the patch tokens after block ``layer``; prefix tokens are kept."""

    family = "vit (timm)"
    hidden_kwarg = "x"

    @classmethod
    def matches(cls, model: object) -> bool:
        try:
            from timm.models.vision_transformer import VisionTransformer
        except ImportError:  # pragma: no cover - timm is a dependency
            return False
        return isinstance(model, VisionTransformer)

    def blocks(self) -> Sequence[torch.nn.Module]:
        return list(self.model.blocks)

    def patch_size(self) -> tuple[int, int]:
        size = self.model.patch_embed.patch_size
        return tuple(size) if isinstance(size, (list, tuple)) else (size, size)

    @property
    def num_prefix_tokens(self) -> int:
        return int(self.model.num_prefix_tokens)

    def install_extras(self) -> list[Undo]:
        if not hasattr(self.model, "forward_intermediates"):
            return []
        return [guard_intermediates(self.model, self.layer, len(self.blocks()))]
