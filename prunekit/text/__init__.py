"""Text side of prunekit: extracting the nouns of a prompt (and embedding them)."""

from prunekit.text.embed import embed_phrases, embed_prompt_nouns
from prunekit.text.nouns import (
    HeuristicNounExtractor,
    NounExtractor,
    SpacyNounExtractor,
    clean_prompt,
    default_noun_extractor,
)

__all__ = [
    "HeuristicNounExtractor",
    "NounExtractor",
    "SpacyNounExtractor",
    "clean_prompt",
    "default_noun_extractor",
    "embed_phrases",
    "embed_prompt_nouns",
]
