"""Relevance strategies: per-token weights ``w_i >= 0`` (1 means neutral)."""

from prunekit.strategies.relevance.base import RelevanceStrategy
from prunekit.strategies.relevance.clip_text import ClipTextRelevance
from prunekit.strategies.relevance.llm_attention import LLMAttentionRelevance
from prunekit.strategies.relevance.logit_lens import LogitLensRelevance
from prunekit.strategies.relevance.none import NoRelevance
from prunekit.strategies.relevance.text import TextRelevance, text_relevance

__all__ = [
    "ClipTextRelevance",
    "LLMAttentionRelevance",
    "LogitLensRelevance",
    "NoRelevance",
    "RelevanceStrategy",
    "TextRelevance",
    "text_relevance",
]
