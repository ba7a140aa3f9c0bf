"""The prompt's nouns in a language model's own spaces.

ResPrune compares visual tokens after the projector with the *input
embeddings* of the prompt's nouns: each noun becomes one vector, the mean of
the embedding rows of its sub-word tokens (:func:`embed_prompt_nouns`). The
logit lens reads the visual tokens through the model's *output* head instead:
each token's log-probability of each noun, the mean over the noun's sub-word
ids of ``log_softmax(head(norm(x)))`` (:func:`phrase_logprobs`). Both start
from the same noun -> token-id lists (:func:`prompt_noun_ids`), computed once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

#: a noun extractor: a prompt in, its nouns (or content words) out
Extractor = Callable[[str], list[str]]
#: token ids per sample, per phrase: ``ids[b][m]`` are the sub-word ids of phrase ``m`` of sample ``b``
PhraseIds = list[list[list[int]]]
#: bytes of one chunk of ``(tokens x vocab)`` float32 logits in :func:`phrase_logprobs`
LOGITS_CHUNK_BYTES = 64 * 2**20


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


def phrase_token_ids(
    phrases: Sequence[Sequence[str]], tokenizer: Any, *, leading_space: bool = True
) -> PhraseIds:
    """The sub-word ids of each sample's phrases (an empty list for a phrase without any).

    ``leading_space``: tokenise ``" word"`` rather than ``"word"``, which is how a
    word inside a sentence is tokenised by BPE tokenizers.
    """
    return [
        [_token_ids(tokenizer, phrase, leading_space) for phrase in sample] for sample in phrases
    ]


def _width(token_ids: PhraseIds) -> int:
    """``M``: the most phrases of a sample, at least 1."""
    return max([1, *(len(sample) for sample in token_ids)])


@torch.no_grad()
def embed_token_ids(
    token_ids: PhraseIds, embedding: torch.nn.Module | torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each phrase as the mean of the embedding rows of its ids.

    Returns:
        ``text_embeds`` ``(B, M, d)`` (float32, zeros at padding and at phrases
        without ids) and ``text_mask`` ``(B, M)`` bool, ``M = max(1, most phrases
        in a sample)``.
    """
    table = _embedding_table(embedding)
    width = _width(token_ids)
    out = torch.zeros(
        len(token_ids), width, table.shape[1], dtype=torch.float32, device=table.device
    )
    mask = torch.zeros(len(token_ids), width, dtype=torch.bool, device=table.device)
    for b, sample in enumerate(token_ids):
        for m, ids in enumerate(sample):
            if not ids:
                continue
            rows = table[torch.tensor(ids, device=table.device)]
            out[b, m] = rows.float().mean(dim=0)
            mask[b, m] = True
    return out, mask


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
    _embedding_table(embedding)  # a bad table is refused before the tokenizer runs
    ids = phrase_token_ids(phrases, tokenizer, leading_space=leading_space)
    return embed_token_ids(ids, embedding)


def prompt_noun_ids(
    prompts: Sequence[str],
    tokenizer: Any,
    *,
    extractor: Extractor | str | None = None,
    leading_space: bool = True,
) -> PhraseIds:
    """The sub-word ids of each prompt's nouns (content words if none).

    ``extractor`` is a callable, the registered name of a noun extractor
    (``"heuristic"``, ``"spacy"``, or a plugin's), or ``None`` for
    :func:`prunekit.text.default_noun_extractor`.
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
    return phrase_token_ids([extractor(p) for p in prompts], tokenizer, leading_space=leading_space)


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
    ids = prompt_noun_ids(prompts, tokenizer, extractor=extractor, leading_space=leading_space)
    return embed_token_ids(ids, embedding)


def _device_of(module: torch.nn.Module, default: torch.device) -> torch.device:
    parameter = next(module.parameters(), None)
    return default if parameter is None else parameter.device


def _vocab_size(head: torch.nn.Module) -> int:
    weight = getattr(head, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.dim() == 2:
        return int(weight.shape[0])
    size = getattr(head, "out_features", None)
    if size is None:
        raise TypeError(
            f"head must be a linear output head with a (vocab, d) weight, got {type(head).__name__}"
        )
    return int(size)


@torch.no_grad()
def phrase_logprobs(
    hidden: torch.Tensor,
    token_ids: PhraseIds,
    head: torch.nn.Module,
    *,
    norm: torch.nn.Module | None = None,
    token_mask: torch.Tensor | None = None,
    chunk_bytes: int = LOGITS_CHUNK_BYTES,
) -> torch.Tensor:
    """The logit lens: each token's log-probability of each phrase.

    ``out[b, i, m]`` is the mean over the ids of phrase ``m`` of sample ``b`` of
    ``log_softmax(head(norm(hidden[b, i])))[id]``, the log-softmax over the whole
    vocabulary in float32 (so a direction every word shares cancels). The tokens
    run through ``norm`` and ``head`` in chunks whose float32 logits stay within
    ``chunk_bytes``; only the columns of the phrases' ids are kept.

    Args:
        hidden: ``(B, N, d)`` hidden states (e.g. projected visual tokens), in the
            dtype ``norm`` / ``head`` take.
        token_ids: ``B`` lists of phrases' ids (:func:`prompt_noun_ids`).
        head: the language model's output head (``(vocab, d)`` weight).
        norm: the decoder's final norm, applied before ``head`` (``None``: none).
        token_mask: ``(B, N)`` bool, the tokens to compute; others are 0.

    Returns:
        ``(B, N, M)`` float32 on ``hidden``'s device, ``M = max(1, most phrases in a
        sample)`` as :func:`embed_token_ids`; zeros at phrases without ids, at
        padding phrases and at tokens outside ``token_mask``.
    """
    if hidden.dim() != 3:
        raise ValueError(f"hidden must be 3-D (B, N, d), got shape {tuple(hidden.shape)}")
    if len(token_ids) != hidden.shape[0]:
        raise ValueError(f"token_ids has {len(token_ids)} samples but hidden has {hidden.shape[0]}")
    if not (isinstance(chunk_bytes, int) and chunk_bytes > 0):
        raise ValueError(f"chunk_bytes must be a positive int, got {chunk_bytes!r}")
    batch, n, _ = hidden.shape
    device = hidden.device
    width = _width(token_ids)
    out = torch.zeros(batch, n, width, dtype=torch.float32, device=device)
    vocab_ids = sorted({i for sample in token_ids for ids in sample for i in ids})
    if not vocab_ids:
        return out
    vocab = _vocab_size(head)
    if vocab_ids[0] < 0 or vocab_ids[-1] >= vocab:
        raise ValueError(
            f"token_ids must be ids in [0, {vocab}), got {vocab_ids[0]}..{vocab_ids[-1]}"
        )
    column = {token: k for k, token in enumerate(vocab_ids)}
    # mean over a phrase's ids as a (B, K, M) matrix: lp (B, N, K) @ average -> (B, N, M)
    average = torch.zeros(batch, len(vocab_ids), width, dtype=torch.float32)
    for b, sample in enumerate(token_ids):
        for m, ids in enumerate(sample):
            for token in ids:
                average[b, column[token], m] += 1.0 / len(ids)
    if token_mask is None:
        token_mask = torch.ones(batch, n, dtype=torch.bool, device=device)
    rows = hidden[token_mask]  # (R, d) the tokens to read
    head_device = _device_of(head, device)
    norm_device = device if norm is None else _device_of(norm, device)
    columns = torch.tensor(vocab_ids, device=head_device)
    chunk = max(1, chunk_bytes // (4 * vocab))
    picked = []
    for start in range(0, rows.shape[0], chunk):
        states = rows[start : start + chunk]
        if norm is not None:
            states = norm(states.to(norm_device))
        logits = head(states.to(head_device)).float()
        picked.append(torch.log_softmax(logits, dim=-1)[:, columns].to(device))
    lp = torch.zeros(batch, n, len(vocab_ids), dtype=torch.float32, device=device)
    if picked:
        lp[token_mask] = torch.cat(picked)
    return torch.bmm(lp, average.to(device))
