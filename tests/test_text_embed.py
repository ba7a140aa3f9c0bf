"""Prompt nouns to text embeddings in an LLM input-embedding space."""

from __future__ import annotations

import pytest
import torch

from prunekit.text import embed_phrases, embed_prompt_nouns

VOCAB = {" red": 0, " tri": 1, "angle": 2, " circle": 3, " color": 4, "circle": 5}


class WordPieceTokenizer:
    """A stand-in for a Hugging Face tokenizer: greedy longest match on a tiny vocabulary."""

    def __call__(self, text, add_special_tokens=True):
        assert add_special_tokens is False
        ids, rest = [], text
        while rest:
            piece = max((p for p in VOCAB if rest.startswith(p)), key=len)
            ids.append(VOCAB[piece])
            rest = rest[len(piece) :]
        return {"input_ids": ids}


TABLE = torch.arange(6 * 3, dtype=torch.float32).reshape(6, 3)


def test_phrase_is_mean_of_its_subwords():
    embeds, mask = embed_phrases([["triangle", "circle"], ["red"]], WordPieceTokenizer(), TABLE)
    assert embeds.shape == (2, 2, 3) and mask.tolist() == [[True, True], [True, False]]
    assert torch.equal(embeds[0, 0], (TABLE[1] + TABLE[2]) / 2)
    assert torch.equal(embeds[0, 1], TABLE[3])
    assert torch.equal(embeds[1, 0], TABLE[0])
    assert torch.equal(embeds[1, 1], torch.zeros(3))


def test_leading_space_option():
    embeds, _ = embed_phrases([["circle"]], WordPieceTokenizer(), TABLE, leading_space=False)
    assert torch.equal(embeds[0, 0], TABLE[5])


def test_prompt_nouns_with_registered_extractor():
    module = torch.nn.Embedding.from_pretrained(TABLE)
    embeds, mask = embed_prompt_nouns(
        ["What color is the triangle?", "Describe it."],
        WordPieceTokenizer(),
        module,
        extractor="heuristic",
    )
    assert mask.tolist() == [[True, True], [False, False]]  # no usable word: no guidance
    assert torch.equal(embeds[0, 0], TABLE[4])
    assert torch.equal(embeds[0, 1], (TABLE[1] + TABLE[2]) / 2)


def test_bad_arguments():
    with pytest.raises(TypeError, match="prompts must be a sequence"):
        embed_prompt_nouns("a prompt", WordPieceTokenizer(), TABLE)
    with pytest.raises(TypeError, match="embedding must be"):
        embed_phrases([["red"]], WordPieceTokenizer(), [[1.0]])
    with pytest.raises(
        ValueError, match="unknown noun_extractor 'heuristik'. Did you mean 'heuristic'"
    ):
        embed_prompt_nouns(["a red circle"], WordPieceTokenizer(), TABLE, extractor="heuristik")
