"""Model adapters and ``attach``: prune stock models in place, restored on exit."""

from prunekit.adapters.attach import (
    AttachHandle,
    Attachment,
    AttachNotEnteredWarning,
    attach,
    find_adapter,
)
from prunekit.adapters.base import Adapter
from prunekit.adapters.vlm import ImageFeatures, PreLLMAdapter
from prunekit.core.points import IN_ENCODER, IN_LLM, PRE_LLM

__all__ = [
    "IN_ENCODER",
    "IN_LLM",
    "PRE_LLM",
    "Adapter",
    "AttachHandle",
    "AttachNotEnteredWarning",
    "Attachment",
    "ImageFeatures",
    "PreLLMAdapter",
    "attach",
    "find_adapter",
]
