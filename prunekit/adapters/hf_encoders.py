"""In-encoder pruning for transformers' CLIP, SigLIP and DINOv2 models.

The pruning point is inside the vision tower, after block ``layer`` (see
:mod:`prunekit.adapters.encoder` for the convention, the prefix tokens and the
joint-space choice for text). What each family contributes:

* ``hf_clip``: ``CLIPModel``, ``CLIPVisionModel``, ``CLIPVisionModelWithProjection``.
  Prefix: [CLS]. Joint space: ``post_layernorm`` then ``visual_projection``
  (``CLIPVisionModel`` has no projection, so no text options). ``texts`` are
  embedded with ``CLIPModel.get_text_features``. ``pooler_output`` /
  ``get_image_features`` read the CLS token, unaffected by the token count.
* ``hf_siglip``: ``SiglipModel``, ``SiglipVisionModel``. No prefix token.
  Joint space: ``post_layernorm`` (SigLIP has no projection; the attention
  pooling head, which works on any token count, is not applied per token).
  ``texts`` are embedded with ``SiglipModel.get_text_features``, padded to the
  tokenizer's max length as SigLIP was trained.
* ``hf_dinov2``: ``Dinov2Model``, ``Dinov2WithRegistersModel``. Prefix: [CLS]
  and the register tokens. No joint space, so no text options. An
  ``attention_mask`` passed to the model is subset to the kept tokens.

With ``texts`` or ``text_embeds``, ``hf_clip`` (with a projection) and
``hf_siglip`` also provide the signal ``joint_text_cosine`` (the patch tokens
through the same joint-space map, cosine with each text row) for the relevance
``clip_text``; ``hf_dinov2`` and ``CLIPVisionModel`` cannot.

Models are matched by exact type, so models that merely contain one of these
towers (LLaVA, ...) are left to their own adapters.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch

from prunekit.adapters.encoder import EncoderAdapter, JointProjection


def _pooled(output: Any) -> torch.Tensor:
    """``get_text_features``' embeddings, whatever the transformers version returns."""
    return getattr(output, "pooler_output", output)


class HFEncoderAdapter(EncoderAdapter):
    """Base of transformers vision-tower adapters: the tower is found under ``vision_model``."""

    #: names of the transformers classes handled (matched by exact type)
    model_classes: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def matches(cls, model: object) -> bool:
        import transformers

        for name in cls.model_classes:
            klass = getattr(transformers, name, None)
            if klass is not None and type(model) is klass:
                return True
        return False

    def tower(self) -> torch.nn.Module:
        """The module holding ``embeddings``, ``encoder`` and the final norm."""
        tower = self.model
        while not hasattr(tower, "encoder") and hasattr(tower, "vision_model"):
            tower = tower.vision_model
        return tower

    def patch_size(self) -> tuple[int, int]:
        size = self.tower().config.patch_size
        return tuple(size) if isinstance(size, (list, tuple)) else (size, size)

    def blocks(self) -> Sequence[torch.nn.Module]:
        encoder = self.tower().encoder
        return encoder.layers if hasattr(encoder, "layers") else encoder.layer

    def _text_features(
        self, texts: list[str], tokenizer: Any, **tokenizer_kwargs: Any
    ) -> torch.Tensor:
        encoded = tokenizer(texts, return_tensors="pt", **tokenizer_kwargs)
        device = next(self.model.parameters()).device
        inputs = {
            key: encoded[key].to(device)
            for key in ("input_ids", "attention_mask")
            if key in encoded and encoded[key] is not None
        }
        return _pooled(self.model.get_text_features(**inputs))


class HFClipAdapter(HFEncoderAdapter):
    """CLIP (transformers): prune the patch tokens inside the vision tower after block ``layer``."""

    family = "clip (transformers)"
    model_classes = ("CLIPModel", "CLIPVisionModel", "CLIPVisionModelWithProjection")

    @property
    def num_prefix_tokens(self) -> int:
        return 1

    def joint_projection(self) -> JointProjection | None:
        projection = getattr(self.model, "visual_projection", None)
        if projection is None:
            return None
        norm = self.tower().post_layernorm
        return lambda x: projection(norm(x))

    def joint_dim(self) -> int | None:
        projection = getattr(self.model, "visual_projection", None)
        return None if projection is None else projection.out_features

    def has_text_tower(self) -> bool:
        return hasattr(self.model, "text_model") and hasattr(self.model, "get_text_features")

    def encode_texts(self, texts: list[str], tokenizer: Any) -> torch.Tensor:
        return self._text_features(texts, tokenizer, padding=True, truncation=True)


class HFSiglipAdapter(HFEncoderAdapter):
    """SigLIP (transformers): prune the patch tokens inside the vision tower after block ``layer``."""

    family = "siglip (transformers)"
    model_classes = ("SiglipModel", "SiglipVisionModel")

    @property
    def num_prefix_tokens(self) -> int:
        return 0

    def joint_projection(self) -> JointProjection | None:
        return self.tower().post_layernorm

    def joint_dim(self) -> int | None:
        return self.tower().post_layernorm.normalized_shape[0]

    def has_text_tower(self) -> bool:
        return hasattr(self.model, "text_model") and hasattr(self.model, "get_text_features")

    def encode_texts(self, texts: list[str], tokenizer: Any) -> torch.Tensor:
        return self._text_features(texts, tokenizer, padding="max_length", truncation=True)


class HFDinov2Adapter(HFEncoderAdapter):
    """DINOv2 (transformers): prune the patch tokens after block ``layer``; [CLS] and registers are kept."""

    family = "dinov2 (transformers)"
    model_classes = ("Dinov2Model", "Dinov2WithRegistersModel")

    @property
    def num_prefix_tokens(self) -> int:
        return 1 + int(getattr(self.model.config, "num_register_tokens", 0) or 0)
