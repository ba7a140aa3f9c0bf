"""Text embeddings of a prompt's nouns in a language model's input-embedding space.

ResPrune compares visual tokens after the projector with the *input
embeddings* of the prompt's nouns. Each noun becomes one vector: the mean of
the embedding rows of its sub-word tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

#: a noun extractor: a prompt in, its nouns (or content words) out
Extractor = Callable[[str], list[str]]


def _embedding_table(embedding: torch.nn.Module | torch.Tensor) -> torch.Tensor:
    if isinstance(embedding, torch.Tensor):
        table = embedding
    elif isinstance(embedding, torch.nn.Embedding):
        table = embedding.weight
    else:
        raise TypeError(
            f"embedding must be a torch.nn.Embedding or a (vocab, d) tensor, got {type(embedding).__name__}"
        )
    if table.dim() != 2:
        raise ValueError(f"embedding table must be 2-D (vocab, d), got shape {tuple(table.shape)}")
    return table


def _token_ids(tokenizer: Any, phrase: str, leading_space: bool) -> list[int]:
    text = f" {phrase}" if leading_space else phrase
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return [int(i) for i in ids]


@torch.no_grad()
def embed_phrases(
    phrases: Sequence[Sequence[str]],
    tokenizer: Any,
    embedding: torch.nn.Module | torch.Tensor,
    *,
    leading_space: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Embed each sample's phrases as the mean of their sub-word embedding rows.

    Args:
        phrases: one list of phrases per sample (may be empty).
        tokenizer: a Hugging Face tokenizer (called as ``tokenizer(text, add_special_tokens=False)``).
        embedding: the language model's input embedding (module or ``(vocab, d)`` table).
        leading_space: tokenise ``" word"`` rather than ``"word"``, which is how a
            word inside a sentence is tokenised by BPE tokenizers.

    Returns:
        ``text_embeds`` ``(B, M, d)`` (float32, zeros at padding) and ``text_mask``
        ``(B, M)`` bool, ``M = max(1, most phrases in a sample)``.
    """
    table = _embedding_table(embedding)
    width = max([1, *(len(p) for p in phrases)])
    out = torch.zeros(len(phrases), width, table.shape[1], dtype=torch.float32, device=table.device)
    mask = torch.zeros(len(phrases), width, dtype=torch.bool, device=table.device)
    for b, sample in enumerate(phrases):
        for m, phrase in enumerate(sample):
            ids = _token_ids(tokenizer, phrase, leading_space)
            if not ids:
                continue
            rows = table[torch.tensor(ids, device=table.device)]
            out[b, m] = rows.float().mean(dim=0)
            mask[b, m] = True
    return out, mask


def embed_prompt_nouns(
    prompts: Sequence[str],
    tokenizer: Any,
    embedding: torch.nn.Module | torch.Tensor,
    *,
    extractor: Extractor | str | None = None,
    leading_space: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nouns of each prompt (content words if none) embedded by :func:`embed_phrases`.

    ``extractor`` is a callable, the registered name of a noun extractor
    (``"heuristic"``, ``"spacy"``, or a plugin's), or ``None`` for
    :func:`prunekit.text.default_noun_extractor`. A
    prompt without usable words gets an all-``False`` mask row, which text
    relevance treats as "no guidance" (``w = 1``).
    """
    if isinstance(prompts, str):
        raise TypeError("prompts must be a sequence of strings, not a single str")
    if extractor is None:
        from prunekit.text.nouns import default_noun_extractor

        extractor = default_noun_extractor()
    elif isinstance(extractor, str):
        from prunekit.registry import get_registry

        extractor = get_registry().create("noun_extractor", extractor)
    if not callable(extractor):
        raise TypeError(
            f"extractor must be callable or a registered name, got {type(extractor).__name__}"
        )
    return embed_phrases(
        [extractor(p) for p in prompts], tokenizer, embedding, leading_space=leading_space
    )
