"""The rule tagger of :class:`~prunekit.text.heuristic.HeuristicNounExtractor`.

Pure Python, no model, deterministic. A cleaned prompt goes through three steps:

1. :func:`tokenize` splits it into words, numbers, punctuation and clause
   boundaries; possessives are reduced ("man's" -> ``man``).
2. :func:`lexical_class` gives each word a context-free class from the lists of
   :mod:`prunekit.text.wordlists` and suffix rules for unknown words (``OPEN``:
   any other word, a noun candidate).
3. :func:`resolve_clause` applies the context rules inside one clause
   (:func:`split_clauses`) and sets each token's final ``tag``.

:func:`tag_clauses` runs all three.

Example::

    >>> [(t.text, t.tag) for t in tag_clauses("Is the orange cat on the orange?")[0]]
    [('is', 'COP'), ('the', 'DET'), ('orange', 'ADJ'), ('cat', 'NOUN'), ('on', 'PREP'), ('the', 'DET'), ('orange', 'NOUN')]
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence

from prunekit.text.wordlists import (
    ABLE_NOUNS,
    ADJECTIVES,
    ADVERBS,
    AMBIG_ADJ,
    AMBIG_NOUN,
    AMBIG_NOUN_COMPOUNDS,
    CAN_NOUN_MODIFIERS,
    COLORS,
    CONJUNCTIONS,
    COPULAS,
    DEMONSTRATIVES,
    DETERMINERS,
    DO_MODALS,
    ED_NOUNS,
    EST_NOUNS,
    EXISTENTIAL,
    FIXED_COMPOUNDS,
    FUL_NOUNS,
    INFINITIVE_TO,
    ING_COMPOUND,
    ING_NOUNS,
    INSTR_AMBIG,
    INSTR_PURE,
    IRREGULAR_PAST,
    LINKING_VERBS,
    LY_NOUNS,
    META_NOUNS,
    NEGATIONS,
    NOUN_OVERRIDES,
    NUMBER_WORDS,
    OTHER_AUX,
    POSITIONS,
    PREPOSITIONS,
    PRONOUNS,
    QUANTITY_NOUNS,
    VERBS,
    WH_DETERMINERS,
    WH_WORDS,
)

__all__ = [
    "Token",
    "lexical_class",
    "looks_plural",
    "resolve_clause",
    "split_clauses",
    "tag_clauses",
    "tokenize",
]

_TOKEN = re.compile(
    r"[^\W\d_]+(?:['\-][^\W\d_]+)*'?"  # words with inner apostrophes / hyphens
    r"|\d+(?:[.,:]\d+)*"  # numbers
    r"|[.?!;:,()\[\]{}\"“”\n]"  # boundaries
)
_SENTENCE_END = frozenset(".?!;:\n")

#: Classes of closed-class words, numbers, punctuation and clause boundaries.
PUNCT, BOUND, NUM, DET, WHDET, WH, PRON, PREP, TO, CONJ = (
    "PUNCT", "BOUND", "NUM", "DET", "WHDET", "WH", "PRON", "PREP", "TO", "CONJ"
)  # fmt: skip
#: Classes of auxiliaries, negations, "there", adverbs, position words, instruction
#: nouns (``META``) and instruction verbs (``IVERB``).
COP, DOAUX, AUX, NEG, EXIST, ADV, POS, META, IVERB = (
    "COP", "DOAUX", "AUX", "NEG", "EXIST", "ADV", "POS", "META", "IVERB"
)  # fmt: skip
#: Open classes: verb forms (base, -s, -ing, -ed), adjectives, ambiguous adjectives and
#: nouns, nouns, unknown words (``OPEN``, noun candidates) and "can" (verb or noun).
VERB, VERB_S, VING, VED, ADJ, AMBIG_A, AMBIG_N, NOUN, OPEN, CAN = (
    "VERB", "VERB_S", "VING", "VED", "ADJ", "AMBIG_A", "AMBIG_N", "NOUN", "OPEN", "CAN"
)  # fmt: skip

_CLOSED = frozenset({DET, WHDET, WH, PRON, PREP, TO, CONJ, COP, DOAUX, AUX, NEG, EXIST, NUM})
_NOUN_SLOT = frozenset({DET, WHDET, NUM, ADJ, "POSS", PREP, EXIST})


class Token:
    """One word, number or boundary of a prompt, with its classes.

    Attributes:
        text: the normalised word (lower-case, possessive ``'s`` removed).
        lex: its context-free class (:func:`lexical_class`).
        tag: its class after the context rules (:func:`resolve_clause`);
            ``lex`` until then.
        possessive: the word had a possessive ending ("dog's", "dogs'").
        capital: Title-case in the prompt (not ALL CAPS): a name inside a sentence.
    """

    __slots__ = ("text", "lex", "tag", "possessive", "capital")

    def __init__(
        self, text: str, lex: str, possessive: bool = False, capital: bool = False
    ) -> None:
        self.text = text  # normalised output form
        self.lex = lex  # lexical class
        self.tag = lex  # resolved class
        self.possessive = possessive
        self.capital = capital  # Title-case in the prompt (not ALL CAPS)

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"{self.text}/{self.tag}"


def _verb_form(w: str) -> str | None:
    """VERB / VERB_S / VING / VED if ``w`` is a form of a lexicon verb."""
    if w in VERBS:
        return VERB
    if w in IRREGULAR_PAST:
        return VED
    if w.endswith("ies") and w[:-3] + "y" in VERBS:
        return VERB_S
    if w.endswith("es") and w[:-2] in VERBS:
        return VERB_S
    if w.endswith("s") and w[:-1] in VERBS:
        return VERB_S
    for suffix, cls in (("ing", VING), ("ed", VED)):
        if w.endswith(suffix) and len(w) > len(suffix) + 1:
            stem = w[: -len(suffix)]
            if (
                stem in VERBS
                or stem + "e" in VERBS
                or (len(stem) > 2 and stem[-1] == stem[-2] and stem[:-1] in VERBS)
                or (suffix == "ed" and stem.endswith("i") and stem[:-1] + "y" in VERBS)
            ):
                return cls
    if w in ("lying", "dying", "tying"):
        return VING
    return None


def _comparative_of_adjective(w: str) -> bool:
    for suffix in ("er", "est"):
        if not w.endswith(suffix) or len(w) <= len(suffix) + 2:
            continue
        stem = w[: -len(suffix)]
        candidates = {stem, stem + "e"}
        if len(stem) > 2 and stem[-1] == stem[-2]:
            candidates.add(stem[:-1])
        if stem.endswith("i"):
            candidates.add(stem[:-1] + "y")
        if candidates & (ADJECTIVES | AMBIG_ADJ):
            return True
    return False


@functools.lru_cache(maxsize=8192)
def lexical_class(w: str) -> str:
    """Context-free class of the lower-cased, apostrophe-normalised word ``w``."""
    if w in COPULAS:
        return COP
    if w in DO_MODALS:
        return CAN if w == "can" else DOAUX
    if w in OTHER_AUX:
        return AUX
    if w in NEGATIONS or w.endswith("n't"):
        return NEG
    if w in EXISTENTIAL:
        return EXIST
    if w in WH_DETERMINERS:
        return WHDET
    if w in WH_WORDS or (w.startswith(("what'", "who'", "where'", "how'", "when'", "why'"))):
        return WH
    if w in DETERMINERS:
        return DET
    if w in PRONOUNS or "'" in w:  # it's, i'm, you're, they've, ...
        return PRON
    if w == INFINITIVE_TO:
        return TO
    if w in PREPOSITIONS:
        return PREP
    if w in CONJUNCTIONS:
        return CONJ
    if w in NUMBER_WORDS:
        return NUM
    if w in POSITIONS:
        return POS
    if w in META_NOUNS:
        return META
    if w in INSTR_PURE:
        return IVERB
    if w in ADVERBS:
        return ADV
    if (
        w in ING_NOUNS
        or w in LY_NOUNS
        or w in ED_NOUNS
        or w in EST_NOUNS
        or w in FUL_NOUNS
        or w in NOUN_OVERRIDES
    ):
        return NOUN
    if w in AMBIG_ADJ:
        return AMBIG_A
    if w in AMBIG_NOUN:
        return AMBIG_N
    if w in ADJECTIVES or _comparative_of_adjective(w):
        return ADJ
    if w in INSTR_AMBIG:
        return VERB_S if w.endswith("s") and w[:-1] in INSTR_AMBIG else VERB
    if "-" in w:
        head = w.rsplit("-", 1)[1]
        head_cls = lexical_class(head) if head else OPEN
        if head_cls in (ADJ, VED, VING, ADV, META, POS, AMBIG_A):
            return ADJ if head_cls in (VED, VING, POS, AMBIG_A) else head_cls
        if head_cls in _CLOSED or head_cls in (IVERB,):
            return ADJ
        return OPEN  # "t-shirt", "x-ray"
    verb = _verb_form(w)
    if verb is not None:
        return verb
    # Suffix rules for unknown words.
    if len(w) > 4 and w.endswith("ings"):
        return NOUN
    if len(w) > 4 and w.endswith("ing"):
        return VING
    if len(w) > 4 and w.endswith("ed") and not w.endswith("eed"):
        return VED
    if len(w) > 4 and w.endswith("ly"):
        return ADV
    if len(w) > 5 and w.endswith(("ous", "less", "ful", "ible", "ical")):
        return ADJ
    if len(w) > 5 and w.endswith("est"):
        return ADJ
    if len(w) > 6 and w.endswith("able") and w not in ABLE_NOUNS:
        return ADJ
    return OPEN


def tokenize(text: str) -> list[Token]:
    """The tokens of ``text`` in order, each with its lexical class.

    Words keep inner apostrophes and hyphens; ``.?!;:`` and new lines become
    ``BOUND`` tokens, other punctuation ``PUNCT``. A possessive "'s" of a noun is
    dropped and marks the token ``possessive``; "it's", "what's" are pronouns
    and question words.
    """
    toks: list[Token] = []
    for raw in _TOKEN.findall(text):
        if raw in _SENTENCE_END:
            toks.append(Token(raw, BOUND))
            continue
        if not raw[0].isalnum():
            toks.append(Token(raw, PUNCT))
            continue
        if raw[0].isdigit():
            toks.append(Token(raw, NUM))
            continue
        w = raw.lower()
        possessive = False
        if w.endswith("'s") and len(w) > 2:
            base = w[:-2]
            if base in PRONOUNS or base in WH_DETERMINERS or base in WH_WORDS:
                toks.append(Token(w, lexical_class(w)))
                continue
            if base in EXISTENTIAL or base in DEMONSTRATIVES or base in ("it", "let", "he", "she"):
                toks.append(Token(w, PRON))
                continue
            w, possessive = base, True
        elif w.endswith("'"):
            w = w.rstrip("'")
            possessive = w.endswith("s")  # "dogs'" (a closing quote otherwise)
        capital = raw[0].isupper() and not raw.isupper()
        toks.append(Token(w, lexical_class(w), possessive, capital))
    return toks


def split_clauses(toks: list[Token]) -> list[list[Token]]:
    """``toks`` split at ``BOUND`` tokens (dropped), without empty clauses."""
    out: list[list[Token]] = [[]]
    for t in toks:
        if t.lex == BOUND:
            if out[-1]:
                out.append([])
        else:
            out[-1].append(t)
    return [c for c in out if c]


def looks_plural(word: str) -> bool:
    """Looks like a plural noun (ends a compound: "are the elephants adults")."""
    return (
        word.endswith("s")
        and not word.endswith(("ss", "us", "is", "ics"))
        and word not in ("sports", "glasses", "news", "clothes", "arts")
    )


def _prev_slot(prev: Token | None) -> str:
    if prev is None:
        return "BOS"
    if prev.possessive and prev.tag == NOUN:
        return "POSS"
    return prev.tag


def _noun_follows(clause: Sequence[Token], i: int) -> bool:
    """Whether a noun head follows position ``i`` inside its noun phrase."""
    for t in clause[i + 1 :]:
        if t.lex in (NOUN, OPEN):
            return True
        if t.lex in (ADJ, AMBIG_A, AMBIG_N, VING, VED) and not t.possessive:
            continue
        return False
    return False


def resolve_clause(clause: list[Token]) -> None:
    """Set the ``tag`` of every token of one clause by the context rules (in place).

    A word after a determiner, number, adjective, possessive, "what"/"which" or a
    preposition is a noun even when it can be a verb ("the stop sign"); a lexicon
    verb after a subject noun is a verb when the clause has a do/modal auxiliary
    ("what does the sign say"); gerunds are verbs unless a determiner precedes
    them ("the painting"); ambiguous colour/shape words are nouns only at the head
    of a noun phrase ("the orange" vs "the orange car"); an unknown singular word
    ending a yes/no question right after its subject noun is a predicate
    adjective ("is the sky overcast").
    """
    has_do = False
    has_aux = False
    starts_with_cop = bool(clause) and clause[0].lex == COP
    existential = False
    prev: Token | None = None
    for i, t in enumerate(clause):
        slot = _prev_slot(prev)
        nxt = clause[i + 1] if i + 1 < len(clause) else None
        lex = t.lex
        tag = lex
        noun_slot = slot in _NOUN_SLOT
        if lex == PUNCT:
            tag = PUNCT
        elif lex in (OPEN, NOUN):
            tag = NOUN
            if (
                lex == OPEN
                and prev is not None
                and prev.text in LINKING_VERBS
                and prev.tag in (VERB, VERB_S, IVERB)
                and (nxt is None or nxt.lex in (CONJ, PUNCT))
            ):
                tag = ADJ  # "does the cat look comfortable"
            if lex == OPEN and t.text in QUANTITY_NOUNS and nxt is not None and nxt.text == "of":
                tag = META
        elif lex == CAN:
            tag = DOAUX
            if slot in (DET, ADJ, NUM, "POSS") or (
                prev is not None and prev.tag == NOUN and prev.text in CAN_NOUN_MODIFIERS
            ):
                tag = NOUN
        elif lex == ADJ:
            fixed = FIXED_COMPOUNDS.get(t.text)
            tag = NOUN if fixed and nxt is not None and nxt.text in fixed else ADJ
        elif lex in (AMBIG_A, AMBIG_N):
            if (
                lex == AMBIG_N
                and slot == NOUN
                and prev is not None
                and prev.text in AMBIG_NOUN_COMPOUNDS.get(t.text, ())
            ):
                tag = NOUN  # "is the traffic light red"
            elif nxt is not None and nxt.text in COLORS:
                tag = ADJ  # "light blue", "orange red"
            elif _noun_follows(clause, i):
                tag = ADJ
            elif noun_slot or slot in ("BOS", PUNCT):
                tag = NOUN
            elif lex == AMBIG_N and slot == NOUN:
                tag = NOUN  # "traffic light", "car key"
            else:
                tag = ADJ
        elif lex in (VERB, VERB_S):
            tag = _resolve_verb(lex, slot, prev, has_do, has_aux)
        elif lex == VING:
            tag = VING
            if t.text in ING_COMPOUND and noun_slot:
                tag = NOUN
            elif slot in (DET, ADJ, NUM, "POSS", WHDET) and not (
                prev is not None and prev.text in DEMONSTRATIVES
            ):
                tag = ADJ if _noun_follows(clause, i) else NOUN
        if lex in (DOAUX,) or (lex == CAN and tag == DOAUX):
            has_do = True
        if lex in (COP, DOAUX, AUX, CAN):
            has_aux = True
        if lex == EXIST:
            existential = True
        if t.possessive and tag not in _CLOSED:
            tag = NOUN  # "the dog's tail" -> dog
        elif (
            t.capital
            and i > 0
            and lex not in _CLOSED
            and lex not in (CAN, ADV, META, IVERB)
            and (
                (prev is not None and prev.capital)
                or (nxt is not None and nxt.capital and nxt.lex not in _CLOSED)
            )
        ):
            tag = NOUN  # a name inside a sentence: "the United States", "New York"
        t.tag = tag
        prev = t
    # predicate adjective: "is the sky overcast?" (unknown word, not a noun)
    if starts_with_cop and not existential and len(clause) >= 3:
        last = clause[-1]
        before = clause[-2]
        dets = sum(1 for t in clause[1:-1] if t.lex == DET or t.possessive)
        if (
            last.lex == OPEN
            and last.tag == NOUN
            and not last.possessive
            and not last.capital
            and before.tag == NOUN
            and dets <= 1
            and not looks_plural(last.text)
        ):
            last.tag = ADJ


def _resolve_verb(lex: str, slot: str, prev: Token | None, has_do: bool, has_aux: bool) -> str:
    """A lexicon verb (base or -s form) is a noun in a noun slot, else a verb."""
    if lex == VERB and has_do and slot == DET and prev is not None and prev.text in DEMONSTRATIVES:
        return VERB  # "does this look like ..."
    if slot in _NOUN_SLOT:
        return NOUN
    if lex == VERB:
        if slot in (IVERB, VING, VED):  # "do you see snow", "wearing tie"
            return NOUN
        if slot == NOUN:  # "what does the man hold" vs "the bus stop"
            return VERB if has_do else NOUN
        return VERB
    # -s form: "it says" / "the sign says" vs "are there drinks", "the bus stops"
    if slot in (PRON,):
        return VERB
    if slot == NOUN:
        return NOUN if has_aux else VERB
    if slot in ("BOS", PUNCT, COP, AUX, DOAUX, VERB, VING, VED, EXIST, CONJ, NEG, IVERB):
        return NOUN
    return VERB


def tag_clauses(text: str) -> list[list[Token]]:
    """The clauses of ``text`` (a cleaned prompt), every token tagged by the context rules."""
    clauses = split_clauses(tokenize(text))
    for clause in clauses:
        resolve_clause(clause)
    return clauses
