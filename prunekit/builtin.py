"""prunekit's own components, registered through the same hook a third-party plugin uses."""

from __future__ import annotations

from prunekit.adapters.hf_encoders import HFClipAdapter, HFDinov2Adapter, HFSiglipAdapter
from prunekit.adapters.internvl import InternVLAdapter
from prunekit.adapters.llava import LlavaAdapter
from prunekit.adapters.llava_next import LlavaNextAdapter
from prunekit.adapters.llava_onevision import LlavaOnevisionAdapter
from prunekit.adapters.open_clip_vit import OpenClipViTAdapter
from prunekit.adapters.qwen2_5_vl import Qwen2_5_VLAdapter
from prunekit.adapters.qwen3_vl import Qwen3VLAdapter
from prunekit.adapters.timm_vit import TimmViTAdapter
from prunekit.pruners import ComposedPruner, ResPrune, ScoreMass
from prunekit.registry import hookimpl
from prunekit.strategies import (
    GreedyResidualSelection,
    NoRelevance,
    RandomSelection,
    TextRelevance,
    TopKSelection,
)
from prunekit.strategies.relevance.clip_text import ClipTextRelevance
from prunekit.strategies.relevance.llm_attention import LLMAttentionRelevance
from prunekit.strategies.relevance.logit_lens import LogitLensRelevance
from prunekit.text.nouns import HeuristicNounExtractor, SpacyNounExtractor


@hookimpl
def prunekit_register(registry) -> None:
    """Register prunekit's pruners, strategies, noun extractors and adapters."""
    # each class carries its registry key (``ResPrune.name == "resprune"``)
    registry.add_pruner(ResPrune)
    registry.add_pruner(ComposedPruner)
    registry.add_pruner(ScoreMass)
    registry.add_relevance(NoRelevance)
    registry.add_relevance(TextRelevance)
    registry.add_relevance(ClipTextRelevance)
    registry.add_relevance(LLMAttentionRelevance)
    registry.add_relevance(LogitLensRelevance)
    registry.add_selection(GreedyResidualSelection)
    registry.add_selection(TopKSelection)
    registry.add_selection(RandomSelection)
    registry.add_noun_extractor(HeuristicNounExtractor)
    registry.add_noun_extractor(SpacyNounExtractor)
    registry.add_adapter("llava", LlavaAdapter)
    registry.add_adapter("llava_next", LlavaNextAdapter)
    registry.add_adapter("llava_onevision", LlavaOnevisionAdapter)
    registry.add_adapter("internvl", InternVLAdapter)
    registry.add_adapter("qwen2_5_vl", Qwen2_5_VLAdapter)
    registry.add_adapter("qwen3_vl", Qwen3VLAdapter)
    registry.add_adapter("hf_clip", HFClipAdapter)
    registry.add_adapter("hf_siglip", HFSiglipAdapter)
    registry.add_adapter("hf_dinov2", HFDinov2Adapter)
    registry.add_adapter("timm_vit", TimmViTAdapter)
    registry.add_adapter("open_clip", OpenClipViTAdapter)
