"""Noun extraction from prompts, for ResPrune's text relevance.

ResPrune embeds the *nouns* of a prompt (one vector per noun) and scores the
visual tokens against them. If a prompt has no noun, its content words are used
instead. This module is the entry point of that step, behind one interface:

* :class:`~prunekit.text.base.NounExtractor` -- the abstract interface.
  ``extractor(prompt)`` returns the nouns, or the content words when there are
  none, or ``[]``.
* :class:`~prunekit.text.heuristic.HeuristicNounExtractor` (``"heuristic"``) --
  pure Python, no model, no download, deterministic; tuned for VQA / instruction
  prompts.
* :class:`~prunekit.text.spacy_nouns.SpacyNounExtractor` (``"spacy"``) -- spaCy's
  English pipeline, when it is installed. It never downloads anything.
* :func:`default_noun_extractor` -- the spaCy one when it can be built, else the
  heuristic one (cached).

All extractors first strip chat-template noise (``<image>``, ``USER:``,
``<|im_start|>user``, ``[INST]``, system prompts, evaluation boilerplate such as
"Answer the question using a single word or phrase.") and keep only the user
turns when role markers are present (:func:`~prunekit.text.prompts.clean_prompt`).

The parts live one concept per module: :mod:`prunekit.text.wordlists` (the word
lists, data), :mod:`prunekit.text.prompts` (prompt cleaning),
:mod:`prunekit.text.tagger` (the rule tagger), :mod:`prunekit.text.base`,
:mod:`prunekit.text.heuristic` and :mod:`prunekit.text.spacy_nouns` (the
extractors); every public name is importable from here.

Example::

    >>> HeuristicNounExtractor()("What color is the triangle?")
    ['color', 'triangle']
    >>> HeuristicNounExtractor()("Is it sunny?")      # no noun: content words
    ['sunny']
"""

from __future__ import annotations

import functools
import logging

from prunekit.text.base import NounExtractor
from prunekit.text.heuristic import HeuristicNounExtractor
from prunekit.text.prompts import clean_prompt
from prunekit.text.spacy_nouns import SpacyNounExtractor

__all__ = [
    "HeuristicNounExtractor",
    "NounExtractor",
    "SpacyNounExtractor",
    "clean_prompt",
    "default_noun_extractor",
]

logger = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1)
def default_noun_extractor() -> NounExtractor:
    """The spaCy extractor when spaCy and ``en_core_web_sm`` are installed, else the heuristic one.

    The result is cached; nothing is ever downloaded.
    """
    try:
        return SpacyNounExtractor()
    except Exception as exc:  # ImportError, OSError, or a broken spaCy install
        logger.debug("spaCy noun extractor unavailable (%s); using the heuristic one", exc)
        return HeuristicNounExtractor()
