"""In-encoder pruning for open_clip models with a ``VisionTransformer`` visual tower.

Matches ``open_clip.CLIP`` and ``open_clip.CustomTextCLIP`` whose ``visual``
is an open_clip ``VisionTransformer``, and a bare ``VisionTransformer``
(towers from timm, ResNets and CoCa are not matched). The prefix is the
[CLS] token. Pooling (``tok`` or ``avg``) works on the pruned sequence.

Joint space for text: ``ln_post`` then ``proj`` applied to every patch token
(the tower's own head); towers with an attentional pooler have no per-token
head, so they take no text options. ``texts`` are tokenized with the given
``tokenizer`` (e.g. ``open_clip.get_tokenizer(name)``, a callable returning
token ids) and embedded with ``encode_text``. With text options the adapter
also provides the signal ``joint_text_cosine`` (cosines of the patch tokens
through ``ln_post`` / ``proj`` with the text rows) for the relevance
``clip_text``. See :mod:`prunekit.adapters.encoder` for the ``layer`` convention.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from prunekit.adapters.base import Undo
from prunekit.adapters.encoder import EncoderAdapter, JointProjection, guard_intermediates


def _vision_transformer_class() -> type | None:
    try:
        from open_clip.transformer import VisionTransformer
    except ImportError:  # pragma: no cover - open_clip is a dependency
        return None
    return VisionTransformer


class OpenClipViTAdapter(EncoderAdapter):
    """open_clip CLIP with a ViT tower: prune the patch tokens after block ``layer``; [CLS] is kept."""

    family = "clip (open_clip)"
    hidden_kwarg = "q_x"

    @classmethod
    def matches(cls, model: object) -> bool:
        vit = _vision_transformer_class()
        if vit is None:
            return False
        if isinstance(model, vit):
            return True
        from open_clip.model import CLIP, CustomTextCLIP

        return isinstance(model, (CLIP, CustomTextCLIP)) and isinstance(
            getattr(model, "visual", None), vit
        )

    def visual(self) -> torch.nn.Module:
        """The ``VisionTransformer`` tower (the model itself, or ``model.visual``)."""
        vit = _vision_transformer_class()
        return self.model if isinstance(self.model, vit) else self.model.visual

    def blocks(self) -> Sequence[torch.nn.Module]:
        return list(self.visual().transformer.resblocks)

    def patch_size(self) -> tuple[int, int]:
        return tuple(self.visual().conv1.kernel_size)

    @property
    def num_prefix_tokens(self) -> int:
        return 1

    @property
    def batch_first(self) -> bool:
        return bool(getattr(self.visual().transformer, "batch_first", True))

    def joint_projection(self) -> JointProjection | None:
        visual = self.visual()
        if getattr(visual, "attn_pool", None) is not None:
            return None
        norm, proj = visual.ln_post, visual.proj
        if proj is None:
            return norm
        return lambda x: norm(x) @ proj

    def joint_dim(self) -> int | None:
        visual = self.visual()
        if getattr(visual, "attn_pool", None) is not None:
            return None
        return (
            visual.proj.shape[1] if visual.proj is not None else visual.ln_post.normalized_shape[0]
        )

    def has_text_tower(self) -> bool:
        return self.model is not self.visual() and hasattr(self.model, "encode_text")

    def encode_texts(self, texts: list[str], tokenizer: Any) -> torch.Tensor:
        tokens = tokenizer(texts)
        if not isinstance(tokens, torch.Tensor):
            raise TypeError(
                "tokenizer must return a tensor of token ids (open_clip.get_tokenizer's do), "
                f"got {type(tokens).__name__}"
            )
        device = next(self.model.parameters()).device
        return self.model.encode_text(tokens.to(device))

    def install_extras(self) -> list[Undo]:
        visual = self.visual()
        if not hasattr(visual, "forward_intermediates"):
            return []
        return [guard_intermediates(visual, self.layer, len(self.blocks()))]
