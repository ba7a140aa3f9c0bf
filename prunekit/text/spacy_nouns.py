"""Nouns from spaCy's English part-of-speech tagger, when spaCy is installed.

:class:`SpacyNounExtractor` (registered as ``"spacy"``) tags the cleaned prompt
with an installed spaCy pipeline. spaCy is optional and imported only when the
extractor is built; prunekit never downloads a pipeline.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

from prunekit.text.base import NounExtractor, dedupe, usable_word
from prunekit.text.prompts import clean_prompt, require_str
from prunekit.text.wordlists import META_NOUNS

__all__ = ["SpacyNounExtractor"]


class SpacyNounExtractor(NounExtractor):
    """Nouns from spaCy's English pipeline (tokens tagged ``NOUN`` or ``PROPN``).

    The prompt is cleaned with :func:`~prunekit.text.prompts.clean_prompt` first.
    Instruction nouns (question, detail, kind, ...) are dropped, as with the
    heuristic extractor.

    Args:
        model: the installed pipeline to load (``spacy.load(model)``); it is never
            downloaded. Install e.g. with ``pip install spacy`` and
            ``python -m spacy download en_core_web_sm`` beforehand.
        lemma: return lemmas ("dogs" -> ``dog``) instead of the words.
        nlp: an already loaded pipeline (any callable returning tokens with
            ``text``, ``pos_`` and ``lemma_``); skips importing spaCy.
        extra_stopwords: further words never returned.

    Raises:
        ImportError: spaCy is not installed.
        OSError: the pipeline ``model`` is not installed.
    """

    name: ClassVar[str] = "spacy"
    POS_TAGS: ClassVar[frozenset[str]] = frozenset({"NOUN", "PROPN"})

    def __init__(
        self,
        model: str = "en_core_web_sm",
        *,
        lemma: bool = False,
        nlp: Any = None,
        extra_stopwords: Iterable[str] = (),
    ) -> None:
        if isinstance(extra_stopwords, str):
            raise TypeError("extra_stopwords must be an iterable of words, not a str")
        self.model = model
        self.lemma = bool(lemma)
        self.extra_stopwords = frozenset(w.lower() for w in extra_stopwords)
        if nlp is None:
            try:
                import spacy
            except ImportError as exc:
                raise ImportError(
                    "SpacyNounExtractor needs spaCy and an English pipeline: "
                    f"`pip install spacy` then `python -m spacy download {model}` "
                    "(or use HeuristicNounExtractor, which needs nothing)"
                ) from exc
            try:
                nlp = spacy.load(model, exclude=["ner", "parser", "textcat"])
            except OSError as exc:
                raise OSError(
                    f"spaCy pipeline {model!r} is not installed; install it with "
                    f"`python -m spacy download {model}` (prunekit never downloads it), "
                    "or use HeuristicNounExtractor"
                ) from exc
        self._nlp = nlp

    def __repr__(self) -> str:
        return f"SpacyNounExtractor(model={self.model!r}, lemma={self.lemma})"

    def nouns(self, prompt: str) -> list[str]:
        require_str(prompt)
        text = clean_prompt(prompt)
        if not text:
            return []
        words = []
        for tok in self._nlp(text):
            if tok.pos_ not in self.POS_TAGS:
                continue
            w = (tok.lemma_ if self.lemma else tok.text).lower().replace("\u2019", "'")
            if w.endswith("'s"):
                w = w[:-2]
            w = w.strip("'-")
            if w in META_NOUNS or w in self.extra_stopwords or not usable_word(w):
                continue
            words.append(w)
        return dedupe(words)
