"""The interface every noun extractor implements, and its content-word fallback.

ResPrune embeds the *nouns* of a prompt, one vector per noun, and falls back to
the prompt's content words when it has no noun. :class:`NounExtractor` holds
that contract: a subclass finds the nouns (:meth:`NounExtractor.nouns`); the base
class supplies the fallback (:meth:`NounExtractor.content_words`, from the
rule tagger's word classes) and the call that chooses between them.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable
from typing import ClassVar

from prunekit.text.prompts import clean_prompt, require_str
from prunekit.text.tagger import ADV, BOUND, IVERB, META, NUM, PUNCT, tokenize
from prunekit.text.wordlists import STOPWORDS

__all__ = ["NounExtractor"]


def dedupe(words: Iterable[str]) -> list[str]:
    """``words`` without repeats, in order of first appearance."""
    return list(dict.fromkeys(words))


def usable_word(word: str) -> bool:
    """Whether ``word`` can be returned: two characters or more, one a letter."""
    return len(word) >= 2 and any(ch.isalpha() for ch in word)


class NounExtractor(abc.ABC):
    """Maps a prompt to the words ResPrune embeds, one vector per word.

    Subclasses implement :meth:`nouns`. Calling the extractor returns the nouns,
    or, when the prompt has none, its content words (the method's fallback), or
    ``[]``. Words are lower-cased, de-duplicated and in order of first appearance.
    """

    name: ClassVar[str]
    #: extra words never returned (by :meth:`nouns` or :meth:`content_words`)
    extra_stopwords: frozenset[str] = frozenset()

    @abc.abstractmethod
    def nouns(self, prompt: str) -> list[str]:
        """The nouns of ``prompt`` in order of first appearance, lower-cased, de-duplicated."""

    def content_words(self, prompt: str) -> list[str]:
        """Non-stopword words of ``prompt`` (same normalisation as :meth:`nouns`).

        Function words, question words, auxiliaries, numbers, generic adverbs,
        instruction verbs ("describe", "tell", "see") and instruction nouns
        ("detail", "question", "answer") are dropped; nouns, adjectives, other
        verbs and position words are kept.
        """
        require_str(prompt)
        words = []
        for tok in tokenize(clean_prompt(prompt)):
            if tok.lex in (BOUND, PUNCT, NUM, ADV, META, IVERB):
                continue
            w = tok.text
            if w in STOPWORDS or w in self.extra_stopwords or not usable_word(w):
                continue
            words.append(w)
        return dedupe(words)

    def __call__(self, prompt: str) -> list[str]:
        """:meth:`nouns`, or :meth:`content_words` when there is no noun (maybe ``[]``)."""
        require_str(prompt)
        return self.nouns(prompt) or self.content_words(prompt)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
