"""The rule-based noun extractor: pure Python, no model, no download, deterministic.

:class:`HeuristicNounExtractor` (registered as ``"heuristic"``) runs the rule
tagger of :mod:`prunekit.text.tagger` over the cleaned prompt and returns the
words it tags as nouns, tuned for VQA and instruction prompts.

Example::

    >>> HeuristicNounExtractor()("Is there a dining table in the image?")
    ['dining', 'table', 'image']
    >>> HeuristicNounExtractor(compounds=True).nouns("Is there a dining table in the image?")
    ['dining table', 'image']
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar

from prunekit.text.base import NounExtractor, dedupe, usable_word
from prunekit.text.prompts import clean_prompt, require_str
from prunekit.text.tagger import NOUN, looks_plural, tag_clauses
from prunekit.text.wordlists import META_NOUNS

__all__ = ["HeuristicNounExtractor"]


class HeuristicNounExtractor(NounExtractor):
    """Rule-based English noun extractor: pure Python, no model, deterministic.

    It works on the cleaned prompt (see :func:`~prunekit.text.prompts.clean_prompt`) in
    three steps, those of the rule tagger :mod:`prunekit.text.tagger`:

    1. *Tokenise* into words (letters, inner apostrophes and hyphens), numbers and
       clause boundaries; possessives are reduced ("man's" -> ``man``, a noun).
    2. *Lexical class* of each word from built-in lists -- determiners, pronouns,
       prepositions, conjunctions, auxiliaries/modals, question words, numbers,
       adverbs, position words (left, top, middle, ...), VQA instruction verbs
       (describe, tell, see, ...), instruction nouns (question, detail, kind, ...),
       ~400 adjectives (colours, sizes, shapes, qualities, weather), ~300 verbs with
       their inflections -- and suffix rules for unknown words (-ly adverbs, -ed
       participles, -ing gerunds, -ous/-less/-ful/-able adjectives, comparatives).
       Any other word is a noun candidate.
    3. *Context rules*: a word after a determiner / number / adjective / possessive
       / "what"/"which" / a preposition is a noun even when it can be a verb ("the
       stop sign", "a watch"); a verb after a subject noun is a verb when the clause
       has a do/modal auxiliary ("what does the sign say"); gerunds are verbs unless
       they follow a determiner ("the painting"); an -ing modifier before a noun is
       dropped unless it commonly heads a compound ("dining table"); colour/shape
       words are nouns only at the head of a noun phrase ("the orange" vs "the
       orange car", "the car is orange"); an unknown singular word ending a
       yes/no question right after the subject noun is a predicate adjective ("is
       the sky overcast"); "a bunch of" style quantity nouns are dropped.

    Args:
        compounds: join adjacent nouns into one phrase ("stop sign", "dining
            table") instead of returning each word.
        extra_stopwords: further words never returned.

    Limitations (it is a heuristic, not a parser):

    * Unknown words default to nouns, so rare verbs or adjectives missing from the
      lists come out as nouns ("will the plane *land*" is fine, "does it *glisten*"
      gives ``glisten``); verbs in the lists that head a compound after a
      do-auxiliary are taken as verbs ("does he need a hair *cut*" -> ``hair``).
    * Position words are never nouns ("on *top* of the table" -> ``table``), and
      neither are generic instruction nouns (kind, type, thing, detail, question).
    * English only; no lemmatisation ("dogs" stays ``dogs``); proper names are
      kept as lower-cased nouns; participial adjectives before nouns are dropped
      ("the *sleeping* cat" -> ``cat``) but so are rarer gerund compounds outside
      its list.
    * Predicate adjectives not in the lists are recognised only in "is/are the X
      Y?" questions and after linking verbs ("does it look *comfortable*"); after a
      pronoun ("is it *breezy*") an unknown one is taken as a noun.
    """

    name: ClassVar[str] = "heuristic"

    def __init__(self, *, compounds: bool = False, extra_stopwords: Iterable[str] = ()) -> None:
        if isinstance(extra_stopwords, str):
            raise TypeError("extra_stopwords must be an iterable of words, not a str")
        self.compounds = bool(compounds)
        self.extra_stopwords = frozenset(w.lower() for w in extra_stopwords)

    def __repr__(self) -> str:
        return f"HeuristicNounExtractor(compounds={self.compounds})"

    def tag(self, prompt: str) -> list[tuple[str, str]]:
        """``(word, class)`` pairs after the context rules (debugging aid).

        A class of ``"NOUN"`` marks a noun; others include ``"ADJ"``, ``"VERB"``,
        ``"VING"`` (-ing verb), ``"VED"`` (participle), ``"DET"``, ``"PREP"``, ``"POS"``.
        """
        require_str(prompt)
        out: list[tuple[str, str]] = []
        for clause in tag_clauses(clean_prompt(prompt)):
            out.extend((t.text, t.tag) for t in clause)
        return out

    def nouns(self, prompt: str) -> list[str]:
        require_str(prompt)
        words: list[str] = []
        for clause in tag_clauses(clean_prompt(prompt)):
            run: list[str] = []
            for t in clause:
                ok = (
                    t.tag == NOUN
                    and t.text not in META_NOUNS
                    and t.text not in self.extra_stopwords
                    and usable_word(t.text)
                )
                if ok:
                    run.append(t.text)
                if not self.compounds:
                    words.extend(run)
                    run = []
                elif not ok or t.possessive or looks_plural(t.text):
                    if run:
                        words.append(" ".join(run))
                    run = []
            if run:
                words.append(" ".join(run))
        return dedupe(words)
