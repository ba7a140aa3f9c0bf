"""Noun extraction from prompts, for ResPrune's text relevance.

ResPrune embeds the *nouns* of a prompt (one vector per noun) and scores the
visual tokens against them. If a prompt has no noun, its content words are used
instead. This module provides that step behind one interface:

* :class:`NounExtractor` -- the abstract interface. ``extractor(prompt)`` returns
  the nouns, or the content words when there are none, or ``[]``.
* :class:`HeuristicNounExtractor` (``"heuristic"``) -- pure Python, no model, no
  download, deterministic; tuned for VQA / instruction prompts.
* :class:`SpacyNounExtractor` (``"spacy"``) -- spaCy's English pipeline, when it
  is installed. It never downloads anything.
* :func:`default_noun_extractor` -- the spaCy one when it can be built, else the
  heuristic one (cached).

All extractors first strip chat-template noise (``<image>``, ``USER:``,
``<|im_start|>user``, ``[INST]``, system prompts, evaluation boilerplate such as
"Answer the question using a single word or phrase.") and keep only the user
turns when role markers are present.

Example::

    >>> HeuristicNounExtractor()("What color is the triangle?")
    ['color', 'triangle']
    >>> HeuristicNounExtractor()("Is it sunny?")      # no noun: content words
    ['sunny']
"""

from __future__ import annotations

import abc
import functools
import logging
import re
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

__all__ = [
    "HeuristicNounExtractor",
    "NounExtractor",
    "SpacyNounExtractor",
    "clean_prompt",
    "default_noun_extractor",
]

logger = logging.getLogger(__name__)


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# --------------------------------------------------------------------------------------
# Lexicons (lower-case). Closed classes first, then open-class hints.
# --------------------------------------------------------------------------------------

_DETERMINERS = _words(
    "a an the this that these those each every some any no another such all both either "
    "neither my your his her its our their thy whatever whichever"
)
_DEMONSTRATIVES = _words("this that these those")
_WH_DETERMINERS = _words("what which whose")
_WH_WORDS = _words("who whom where when why how whence wherever whenever however")
_PRONOUNS = _words(
    "i me myself mine you yourself yourselves yours he him himself she herself hers it itself "
    "we us ourselves ours they them themselves theirs one's someone somebody something "
    "anyone anybody anything everyone everybody everything nobody nothing none noone "
    "ones others oneself thee thou ye whoever whomever"
)
_PREPOSITIONS = _words(
    "about above across after against along alongside amid amidst among amongst around as at "
    "atop before behind below beneath beside besides between beyond by despite down during "
    "except for from in inside into like near nearer nearest of off on onto opposite out "
    "outside over past per since than through throughout till toward towards under underneath "
    "unlike until up upon via with within without versus vs underneath aboard via"
)
_TO = "to"
_CONJUNCTIONS = _words(
    "and or but nor so yet if because while although though whether unless whereas then "
    "also plus either neither both"
)
_COPULAS = _words("is are was were am be isn't aren't wasn't weren't 's 're 'm ain't")
_DO_MODALS = _words(
    "do does did can could will would shall should may might must don't doesn't didn't "
    "can't cannot couldn't won't wouldn't shan't shouldn't mayn't mightn't mustn't "
    "'ll 'd ought"
)
_OTHER_AUX = _words(
    "been being have has had having haven't hasn't hadn't 've doing done let let's gonna "
    "wanna got gotten"
)
_NEGATIONS = _words("not n't never")
_EXISTENTIAL = _words("there here there's here's")
_NUMBER_WORDS = _words(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen twenty thirty forty fifty sixty seventy "
    "eighty ninety hundred hundreds thousand thousands million millions billion dozen dozens "
    "first second third fourth fifth sixth seventh eighth ninth tenth once twice thrice half "
    "many much more most few fewer fewest less least several multiple numerous enough "
    "single double triple"
)
# General adverbs / discourse words never used as nouns or content words.
_ADVERBS = _words(
    "very too also just only still even really here there now then always never often "
    "sometimes again almost quite rather so well away together else ever yet already maybe "
    "perhaps probably likely unlikely actually currently mostly exactly approximately roughly "
    "instead otherwise however therefore thus hence please kindly yes no not ok okay nope yeah "
    "yep sure thanks thank hello hi hey indoors outdoors inside outside upstairs downstairs "
    "somewhere anywhere everywhere nowhere elsewhere apart aside ahead back forward forwards "
    "backward backwards overall generally usually typically especially particularly "
    "specifically briefly shortly clearly simply etc ie eg i.e e.g best better worst worse "
    "abroad alone ago anyway anyhow somehow much lot least last next"
)
# Positional words: in VQA prompts they name a location, not an object.
_POSITIONS = _words(
    "left right top bottom front middle center centre side sides upper lower leftmost "
    "rightmost topmost uppermost bottommost lowermost inner outer rear central far near "
    "nearby closer farther further furthest farthest distant upside downside up down "
    "foremost hindmost backside underside midst"
)
# Instruction / perception verbs typical of VQA prompts. ``_INSTR_PURE`` are never
# nouns; ``_INSTR_AMBIG`` are nouns in a noun slot ("the name of the street").
_INSTR_PURE = _words(
    "describe describes described describing explain explains explained explaining identify "
    "identifies identified identifying determine determines determined summarize summarise "
    "summarizes summarises summarized specify specifies specified mention mentions mentioned "
    "provide provides provided providing tell tells telling told see sees seeing saw seen "
    "depict depicts depicted depicting shown showing pictured portrayed portray portrays "
    "think thinks thought know knows knew known imagine suppose infer consider notice "
    "noticed observe observed analyze analyse analyzes analyses elaborate discuss explain "
    "respond replying reply replies write writes writing written wrote give gives giving "
    "given gave locate locates located find finds found visible appear appears appeared "
    "seem seems seemed please using"
)
_INSTR_AMBIG = _words(
    "show shows look looks name names list lists count counts answer guess choose select pick"
)
# Generic "meta" nouns of instructions; never returned as nouns or content words.
_META_NOUNS = _words(
    "question questions answer answers option options choice choices hint hints context "
    "word words phrase phrases sentence sentences detail details description descriptions "
    "response responses explanation explanations kind kinds type types sort sorts lot lots "
    "bit thing things way ways following instruction instructions prompt task request "
    "format example examples stuff information info"
)
# Quantity nouns that are not the object when followed by "of" ("a bunch of bananas").
_QUANTITY_NOUNS = _words(
    "couple pair bunch group lot lots variety number amount plenty majority piece pieces set total"
)

_COLORS = _words(
    "red blue green yellow purple pink brown black white gray grey beige tan teal maroon "
    "magenta cyan blonde blond brunette auburn golden colorful colourful multicolor "
    "multicolour reddish bluish blueish greenish yellowish brownish pinkish purplish "
    "orangish orangey whitish blackish grayish greyish dark pale bright neon pastel "
    "transparent translucent opaque metallic matte monochrome sepia colored coloured"
)
_ADJECTIVES = _COLORS | _words(
    # size / shape
    "big small large little tiny huge giant enormous massive tall short long wide narrow "
    "thick thin fat skinny slim high low deep shallow heavy mini petite full empty round "
    "circular rectangular triangular flat curved straight pointy pointed spherical "
    "cylindrical cubic oblong hexagonal square-shaped steep tight loose "
    # qualities / states
    "good bad great nice fine beautiful pretty ugly cute lovely happy sad angry scared afraid "
    "calm quiet loud noisy busy crowded old new young modern ancient antique vintage fresh "
    "rotten ripe unripe raw cooked hot cold warm cool wet dry clean dirty messy tidy neat soft "
    "hard smooth rough sharp dull sweet sour bitter salty spicy tasty delicious healthy "
    "unhealthy safe unsafe real fake natural artificial wild domestic tame elderly open "
    "closed broken wooden woolen woollen golden electric electronic digital analog analogue "
    "manual automatic professional amateur formal casual simple complex plain fancy rich "
    "poor famous popular common rare unusual strange weird odd funny serious sunny cloudy "
    "rainy snowy windy foggy stormy overcast hazy misty dim visible invisible possible "
    "impossible available same different similar main whole entire various certain true "
    "false correct wrong able unable alive dead asleep awake ready free hungry thirsty "
    "tired sick ill pregnant bald naked barefoot shirtless curly wavy furry fluffy hairy "
    "fuzzy leafy grassy sandy rocky muddy dusty icy frozen shiny glossy sunlit interesting "
    "important potential appropriate suitable relevant specific particular general visual "
    "notable noticeable prominent distinctive unique special typical usual normal regular "
    "organic vegetarian vegan indoor outdoor urban rural public private commercial "
    "residential industrial historic historical traditional cultural political social "
    "strong weak fast slow quick early late recent current previous final daily weekly "
    "wireless cordless upright sideways diagonal vertical horizontal parallel "
    "crooked abandoned asleep awake ajar lit unlit alert sleepy dangerous curious "
    "nervous anxious excited bored lonely friendly busy lazy tiny total extra "
    "other own such proper present absent blurry blurred sharp crisp dense sparse "
    "solid hollow striped spotted checkered patterned floral plaid polka "
    "black-and-white dotted shallow fluffy furry soggy crispy crunchy juicy greasy "
    "creamy cheesy chocolaty frosted iced sliced chopped grilled fried baked roasted "
    "steamed boiled toasted stuffed unknown known handmade homemade close"
)
# Words that are adjectives before a noun or in a predicate, but nouns at the head of a
# noun phrase: "the orange" / "an orange shirt" / "the car is orange".
_AMBIG_ADJ = _words(
    "orange gold silver bronze copper cream ivory lime navy olive peach plum rose salmon "
    "coral turquoise lavender violet mint khaki square oval adult male female senior "
    "junior medium"
)
# Noun-primary words that also modify nouns: "the key" / "a key chain", "the light" /
# "light blue".
_AMBIG_NOUN = _words("light key remote")
# Nouns that make a compound with an ambiguous head ("traffic light red" -> light).
_AMBIG_NOUN_COMPOUNDS = {
    "light": _words(
        "traffic street tail head brake ceiling stop flash sun day moon candle lamp desk "
        "night porch spot flood signal fairy christmas string led neon"
    ),
    "key": _words("car house door computer piano keyboard"),
    "remote": _words("tv television game wii"),
}
# Adjectives that form a fixed compound noun with the next word.
_FIXED_COMPOUNDS = {
    "hot": _words("dog dogs tub tubs sauce"),
    "high": _words("chair chairs heels"),
    "white": _words("board boards"),
    "black": _words("board boards"),
}
_CAN_NOUN_MODIFIERS = _words(
    "trash garbage soda beer paint tin watering oil spray soup coke pop aluminum aluminium "
    "metal food drink milk water gas"
)

# Open-class verbs frequent in VQA prompts (base forms; inflections are derived).
_VERBS = _words(
    "accept add allow appear arrive ask attach attack bake bark bathe bend bite blow boil "
    "bounce break breathe bring brush build burn buy call carry catch cause celebrate change "
    "charge chase check chew climb collect come compete connect contain cook cover crawl "
    "cross cry cut dance decide decorate deliver die dig dive divide drag draw dress drink "
    "drive drop eat enjoy enter escape exist face fall feed feel fetch fight fill finish fit "
    "fix float fly fold follow get go grab graze greet grill grow guard happen hate hear "
    "help hide hit hold hop hug hunt hurt include indicate intend jump keep kick kill kiss "
    "kneel knit land laugh lay lead lean learn leave let lick lie lift listen live load lock "
    "lose love make mean measure meet melt mix move need offer own pack paint pass pay "
    "perform play point pose pour practice prepare press prevent protect pull push put "
    "race rain reach read relax remain remove repair represent rest return ride rise roll "
    "run rush sail say score scratch sell send serve set sew shake share shine shoot shop "
    "sing sit skate ski sleep slice slide smell smile smoke sniff snow speak spend spin "
    "splash spray stand stare start stay steal step stir stop stretch suggest support surf "
    "surround swim swing take talk taste teach tend throw tie touch travel try turn "
    "understand use visit wait wake walk want wash watch wave wear win work worry wrap "
    "yell zoom belong cost weigh hang stick sunbathe perch"
)
_IRREGULAR_PAST = _words(
    "made held worn wore sat stood ate eaten drank drunk rode ridden flew flown hung laid "
    "lain cut put hit set shut built bought brought caught taught found paid said sold "
    "kept slept swept felt meant sent spent lent bent lost shot fought got gotten went gone "
    "came done did ran began begun sang sung swam swum drew drawn grew grown threw thrown "
    "blew blown broke broken chose chosen drove driven froze frozen hid hidden spoke spoken "
    "stole stolen woke woken wrote written bitten fell fallen forgot forgotten shook shaken "
    "took taken stuck struck dug won spun swung lit heard met fled led fed understood "
    "spread sewn shown taken begun become became"
)
# -ing words that are nouns (never verb forms in VQA prompts).
_ING_NOUNS = _words(
    "building buildings ceiling clothing painting drawing thing king ring wing string spring "
    "morning evening wedding pudding sibling dumpling railing awning frosting icing topping "
    "stuffing bedding siding ceiling sapling duckling seedling gosling earring lightning "
    "housing pudding ping ding swing sling bling viking darling offspring icing dressing "
    "stocking stockings shilling herring fencing netting plumbing flooring shelving "
    "roofing paneling tubing piping"
)
# -ing words that commonly head a compound noun ("dining table", "parking meter").
_ING_COMPOUND = _words(
    "dining parking living swimming cutting washing sewing baking shopping surfing skiing "
    "skating fishing frying boxing bowling camping cooking hiking climbing racing wrapping "
    "ironing mixing rolling changing waiting dressing packing shipping riding reading "
    "writing sailing diving dancing training "
    "hearing filling landing"
)
_LY_NOUNS = _words(
    "family belly jelly bully lily rally tally gully folly butterfly dragonfly firefly "
    "housefly horsefly assembly anomaly monopoly italy july supply reply trolly dolly holly "
    "filly polly sally molly ally fly grizzly mayfly gadfly emily kelly billy"
)
_ED_NOUNS = _words(
    "hundred sled shed bed seed weed reed steed breed tweed speed feed seabed flowerbed "
    "riverbed hotbed sickbed waterbed sunbed bobsled woodshed toolshed watershed cowshed"
)
_EST_NOUNS = _words(
    "forest harvest interest contest request protest chest guest nest vest west test crest "
    "pest quest priest everest conquest inquest breast southwest northwest midwest"
)
_FUL_NOUNS = _words("handful spoonful mouthful cupful armful bucketful")
_ABLE_NOUNS = _words("vegetable vegetables timetable turntable worktable constable syllable")
# Verbs that take a predicate adjective ("does the cat look comfortable").
_LINKING_VERBS = _words(
    "look looks seem seems appear appears feel feels taste tastes smell smells sound sounds "
    "become becomes"
)
# Comparative-looking nouns ("hair dryer").
_NOUN_OVERRIDES = _words("dryer drier dryers driers cooler coolers cleaner cleaners warmer warmers")

# Words never returned by content_words (function words and instruction noise).
_STOPWORDS = (
    _DETERMINERS
    | _WH_DETERMINERS
    | _WH_WORDS
    | _PRONOUNS
    | _PREPOSITIONS
    | {_TO}
    | _CONJUNCTIONS
    | _COPULAS
    | _DO_MODALS
    | _OTHER_AUX
    | _NEGATIONS
    | _EXISTENTIAL
    | _NUMBER_WORDS
    | _ADVERBS
    | _INSTR_PURE
    | _INSTR_AMBIG
    | _META_NOUNS
)

# --------------------------------------------------------------------------------------
# Prompt cleaning
# --------------------------------------------------------------------------------------

_ROLE_ALIASES = {
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "bot": "assistant",
    "model": "assistant",
    "system": "system",
}
_ROLE_PATTERNS: tuple[tuple[re.Pattern[str], str | None], ...] = (
    (re.compile(r"<\|im_start\|>\s*(system|user|assistant)\b", re.I), None),
    (
        re.compile(r"<\|start_header_id\|>\s*(system|user|assistant)\s*<\|end_header_id\|>", re.I),
        None,
    ),
    (re.compile(r"<start_of_turn>\s*(user|model)\b", re.I), None),
    (re.compile(r"<\|(system|user|assistant)\|>", re.I), None),
    (re.compile(r"\[INST\]"), "user"),
    (re.compile(r"\[/INST\]"), "assistant"),
    (re.compile(r"<<SYS>>"), "system"),
    (re.compile(r"<</SYS>>"), "user"),
    # "USER:", "### Human:", "Assistant:" after a boundary (start, whitespace, a tag).
    (
        re.compile(
            r"(?<![^\s>\]|])(?:###\s*)?(USER|User|HUMAN|Human|ASSISTANT|Assistant|GPT|"
            r"SYSTEM|System|BOT|Bot|MODEL|Model)\s*:"
        ),
        None,
    ),
    # lower-case role labels only at the start of a line
    (re.compile(r"(?m)^[ \t]*(?:###\s*)?(user|human|assistant|gpt|system)\s*:"), None),
)
_SPECIAL_TOKENS = re.compile(
    r"<\|[^<>|]{0,64}\|>"  # <|im_end|>, <|image_pad|>, <|eot_id|>
    r"|</?[A-Za-z_][\w\-.:]{0,40}(?:\s+\d{1,3})?\s*/?>"  # <image>, </s>, <image 1>, <Img>
    r"|\[/?(?:INST|IMG[A-Z_]*|SYS)\]|<</?SYS>>"  # [INST], [IMG_BREAK], <<SYS>>
)
_BOILERPLATE = re.compile(
    "|".join(
        [
            r"answer the question using a single word or (?:a )?phrase\.?",
            r"answer with the option['’]?s letter from the given choices directly\.?",
            r"(?:please )?answer (?:the question )?(?:with )?(?:yes or no|a single word)\.?",
            r"(?:please )?(?:answer|respond) (?:in|with) (?:a |one )?(?:single |short )?"
            r"(?:word|phrase|sentence|number)s?(?: or (?:a )?(?:short )?phrase)?\.?",
            r"reference ocr tokens?:[^\n]*",
            r"(?:please )?answer the question and provide the correct option letter[^\n]*",
            r"you are a helpful (?:language and vision )?assistant[^.\n]*\.?",
        ]
    ),
    re.I,
)
_WHITESPACE = re.compile(r"[ \t\r\f\v]+")


def _role_markers(text: str) -> list[tuple[int, int, str]]:
    found: list[tuple[int, int, str]] = []
    for pattern, fixed in _ROLE_PATTERNS:
        for m in pattern.finditer(text):
            role = fixed if fixed is not None else _ROLE_ALIASES[m.group(1).lower()]
            found.append((m.start(), m.end(), role))
    found.sort(key=lambda x: (x[0], -x[1]))
    kept: list[tuple[int, int, str]] = []
    end = -1
    for start, stop, role in found:
        if start >= end:
            kept.append((start, stop, role))
            end = stop
    return kept


def clean_prompt(prompt: str) -> str:
    """Strip chat-template noise from ``prompt`` and keep the user's words.

    When role markers are present (``USER:``/``ASSISTANT:``, ``### Human:``,
    ``<|im_start|>user``, ``[INST] ... [/INST]``, ``<start_of_turn>user``,
    ``<|user|>``, Llama-3 headers, ``<<SYS>>``), only the user turns are kept, so a
    system prompt ("A chat between a curious human and ...") or an assistant
    answer contributes nothing. Special tokens (``<image>``, ``<|image_pad|>``,
    ``</s>``, ``[IMG]``) and common evaluation boilerplate ("Answer the question
    using a single word or phrase.", "Reference OCR token: ...") are removed.
    """
    _require_str(prompt)
    text = prompt.replace("\u2019", "'").replace("\u2018", "'")
    markers = _role_markers(text)
    if markers:
        segments: list[tuple[str | None, str]] = [(None, text[: markers[0][0]])]
        for k, (_, stop, role) in enumerate(markers):
            nxt = markers[k + 1][0] if k + 1 < len(markers) else len(text)
            segments.append((role, text[stop:nxt]))
        if any(role == "user" for role, _ in segments):
            parts = [seg for role, seg in segments if role == "user"]
        else:
            parts = [seg for role, seg in segments if role is None]
        text = "\n".join(parts)
    text = _SPECIAL_TOKENS.sub(" ", text)
    text = _BOILERPLATE.sub(" ", text)
    lines = (_WHITESPACE.sub(" ", line).strip() for line in text.splitlines())
    return "\n".join(line for line in lines if line)


# --------------------------------------------------------------------------------------
# Tokenising and lexical classes
# --------------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"[^\W\d_]+(?:['\-][^\W\d_]+)*'?"  # words with inner apostrophes / hyphens
    r"|\d+(?:[.,:]\d+)*"  # numbers
    r"|[.?!;:,()\[\]{}\"“”\n]"  # boundaries
)
_SENTENCE_END = frozenset(".?!;:\n")

# Lexical classes.
PUNCT, BOUND, NUM, DET, WHDET, WH, PRON, PREP, TO, CONJ = (
    "PUNCT", "BOUND", "NUM", "DET", "WHDET", "WH", "PRON", "PREP", "TO", "CONJ"
)  # fmt: skip
COP, DOAUX, AUX, NEG, EXIST, ADV, POS, META, IVERB = (
    "COP", "DOAUX", "AUX", "NEG", "EXIST", "ADV", "POS", "META", "IVERB"
)  # fmt: skip
VERB, VERB_S, VING, VED, ADJ, AMBIG_A, AMBIG_N, NOUN, OPEN, CAN = (
    "VERB", "VERB_S", "VING", "VED", "ADJ", "AMBIG_A", "AMBIG_N", "NOUN", "OPEN", "CAN"
)  # fmt: skip

_CLOSED = frozenset({DET, WHDET, WH, PRON, PREP, TO, CONJ, COP, DOAUX, AUX, NEG, EXIST, NUM})
_NOUN_SLOT = frozenset({DET, WHDET, NUM, ADJ, "POSS", PREP, EXIST})


class _Tok:
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
    if w in _VERBS:
        return VERB
    if w in _IRREGULAR_PAST:
        return VED
    if w.endswith("ies") and w[:-3] + "y" in _VERBS:
        return VERB_S
    if w.endswith("es") and w[:-2] in _VERBS:
        return VERB_S
    if w.endswith("s") and w[:-1] in _VERBS:
        return VERB_S
    for suffix, cls in (("ing", VING), ("ed", VED)):
        if w.endswith(suffix) and len(w) > len(suffix) + 1:
            stem = w[: -len(suffix)]
            if (
                stem in _VERBS
                or stem + "e" in _VERBS
                or (len(stem) > 2 and stem[-1] == stem[-2] and stem[:-1] in _VERBS)
                or (suffix == "ed" and stem.endswith("i") and stem[:-1] + "y" in _VERBS)
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
        if candidates & (_ADJECTIVES | _AMBIG_ADJ):
            return True
    return False


@functools.lru_cache(maxsize=8192)
def _lexical_class(w: str) -> str:
    """Context-free class of the lower-cased, apostrophe-normalised word ``w``."""
    if w in _COPULAS:
        return COP
    if w in _DO_MODALS:
        return CAN if w == "can" else DOAUX
    if w in _OTHER_AUX:
        return AUX
    if w in _NEGATIONS or w.endswith("n't"):
        return NEG
    if w in _EXISTENTIAL:
        return EXIST
    if w in _WH_DETERMINERS:
        return WHDET
    if w in _WH_WORDS or (w.startswith(("what'", "who'", "where'", "how'", "when'", "why'"))):
        return WH
    if w in _DETERMINERS:
        return DET
    if w in _PRONOUNS or "'" in w:  # it's, i'm, you're, they've, ...
        return PRON
    if w == _TO:
        return TO
    if w in _PREPOSITIONS:
        return PREP
    if w in _CONJUNCTIONS:
        return CONJ
    if w in _NUMBER_WORDS:
        return NUM
    if w in _POSITIONS:
        return POS
    if w in _META_NOUNS:
        return META
    if w in _INSTR_PURE:
        return IVERB
    if w in _ADVERBS:
        return ADV
    if (
        w in _ING_NOUNS
        or w in _LY_NOUNS
        or w in _ED_NOUNS
        or w in _EST_NOUNS
        or w in _FUL_NOUNS
        or w in _NOUN_OVERRIDES
    ):
        return NOUN
    if w in _AMBIG_ADJ:
        return AMBIG_A
    if w in _AMBIG_NOUN:
        return AMBIG_N
    if w in _ADJECTIVES or _comparative_of_adjective(w):
        return ADJ
    if w in _INSTR_AMBIG:
        return VERB_S if w.endswith("s") and w[:-1] in _INSTR_AMBIG else VERB
    if "-" in w:
        head = w.rsplit("-", 1)[1]
        head_cls = _lexical_class(head) if head else OPEN
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
    if len(w) > 6 and w.endswith("able") and w not in _ABLE_NOUNS:
        return ADJ
    return OPEN


def _tokenize(text: str) -> list[_Tok]:
    toks: list[_Tok] = []
    for raw in _TOKEN.findall(text):
        if raw in _SENTENCE_END:
            toks.append(_Tok(raw, BOUND))
            continue
        if not raw[0].isalnum():
            toks.append(_Tok(raw, PUNCT))
            continue
        if raw[0].isdigit():
            toks.append(_Tok(raw, NUM))
            continue
        w = raw.lower()
        possessive = False
        if w.endswith("'s") and len(w) > 2:
            base = w[:-2]
            if base in _PRONOUNS or base in _WH_DETERMINERS or base in _WH_WORDS:
                toks.append(_Tok(w, _lexical_class(w)))
                continue
            if (
                base in _EXISTENTIAL
                or base in _DEMONSTRATIVES
                or base in ("it", "let", "he", "she")
            ):
                toks.append(_Tok(w, PRON))
                continue
            w, possessive = base, True
        elif w.endswith("'"):
            w = w.rstrip("'")
            possessive = w.endswith("s")  # "dogs'" (a closing quote otherwise)
        capital = raw[0].isupper() and not raw.isupper()
        toks.append(_Tok(w, _lexical_class(w), possessive, capital))
    return toks


def _clauses(toks: list[_Tok]) -> list[list[_Tok]]:
    out: list[list[_Tok]] = [[]]
    for t in toks:
        if t.lex == BOUND:
            if out[-1]:
                out.append([])
        else:
            out[-1].append(t)
    return [c for c in out if c]


# --------------------------------------------------------------------------------------
# Extractor interface
# --------------------------------------------------------------------------------------


def _require_str(prompt: Any) -> str:
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
    return prompt


def _dedupe(words: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(words))


def _plural(word: str) -> bool:
    """Looks like a plural noun (ends a compound: "are the elephants adults")."""
    return (
        word.endswith("s")
        and not word.endswith(("ss", "us", "is", "ics"))
        and word not in ("sports", "glasses", "news", "clothes", "arts")
    )


def _usable(word: str) -> bool:
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
        _require_str(prompt)
        words = []
        for tok in _tokenize(clean_prompt(prompt)):
            if tok.lex in (BOUND, PUNCT, NUM, ADV, META, IVERB):
                continue
            w = tok.text
            if w in _STOPWORDS or w in self.extra_stopwords or not _usable(w):
                continue
            words.append(w)
        return _dedupe(words)

    def __call__(self, prompt: str) -> list[str]:
        """:meth:`nouns`, or :meth:`content_words` when there is no noun (maybe ``[]``)."""
        _require_str(prompt)
        return self.nouns(prompt) or self.content_words(prompt)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class HeuristicNounExtractor(NounExtractor):
    """Rule-based English noun extractor: pure Python, no model, deterministic.

    It works on the cleaned prompt (see :func:`clean_prompt`) in three steps:

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

    # -- tagging -------------------------------------------------------------------

    def tag(self, prompt: str) -> list[tuple[str, str]]:
        """``(word, class)`` pairs after the context rules (debugging aid).

        A class of ``"NOUN"`` marks a noun; others include ``"ADJ"``, ``"VERB"``,
        ``"VING"`` (-ing verb), ``"VED"`` (participle), ``"DET"``, ``"PREP"``, ``"POS"``.
        """
        _require_str(prompt)
        out: list[tuple[str, str]] = []
        for clause in _clauses(_tokenize(clean_prompt(prompt))):
            self._resolve(clause)
            out.extend((t.text, t.tag) for t in clause)
        return out

    @staticmethod
    def _prev_slot(prev: _Tok | None) -> str:
        if prev is None:
            return "BOS"
        if prev.possessive and prev.tag == NOUN:
            return "POSS"
        return prev.tag

    @staticmethod
    def _noun_follows(clause: Sequence[_Tok], i: int) -> bool:
        """Whether a noun head follows position ``i`` inside its noun phrase."""
        for t in clause[i + 1 :]:
            if t.lex in (NOUN, OPEN):
                return True
            if t.lex in (ADJ, AMBIG_A, AMBIG_N, VING, VED) and not t.possessive:
                continue
            return False
        return False

    def _resolve(self, clause: list[_Tok]) -> None:
        has_do = False
        has_aux = False
        starts_with_cop = bool(clause) and clause[0].lex == COP
        existential = False
        prev: _Tok | None = None
        for i, t in enumerate(clause):
            slot = self._prev_slot(prev)
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
                    and prev.text in _LINKING_VERBS
                    and prev.tag in (VERB, VERB_S, IVERB)
                    and (nxt is None or nxt.lex in (CONJ, PUNCT))
                ):
                    tag = ADJ  # "does the cat look comfortable"
                if (
                    lex == OPEN
                    and t.text in _QUANTITY_NOUNS
                    and nxt is not None
                    and nxt.text == "of"
                ):
                    tag = META
            elif lex == CAN:
                tag = DOAUX
                if slot in (DET, ADJ, NUM, "POSS") or (
                    prev is not None and prev.tag == NOUN and prev.text in _CAN_NOUN_MODIFIERS
                ):
                    tag = NOUN
            elif lex == ADJ:
                fixed = _FIXED_COMPOUNDS.get(t.text)
                tag = NOUN if fixed and nxt is not None and nxt.text in fixed else ADJ
            elif lex in (AMBIG_A, AMBIG_N):
                if (
                    lex == AMBIG_N
                    and slot == NOUN
                    and prev is not None
                    and prev.text in _AMBIG_NOUN_COMPOUNDS.get(t.text, ())
                ):
                    tag = NOUN  # "is the traffic light red"
                elif nxt is not None and nxt.text in _COLORS:
                    tag = ADJ  # "light blue", "orange red"
                elif self._noun_follows(clause, i):
                    tag = ADJ
                elif noun_slot or slot in ("BOS", PUNCT):
                    tag = NOUN
                elif lex == AMBIG_N and slot == NOUN:
                    tag = NOUN  # "traffic light", "car key"
                else:
                    tag = ADJ
            elif lex in (VERB, VERB_S):
                tag = self._resolve_verb(lex, slot, prev, has_do, has_aux)
            elif lex == VING:
                tag = VING
                if t.text in _ING_COMPOUND and noun_slot:
                    tag = NOUN
                elif slot in (DET, ADJ, NUM, "POSS", WHDET) and not (
                    prev is not None and prev.text in _DEMONSTRATIVES
                ):
                    tag = ADJ if self._noun_follows(clause, i) else NOUN
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
                and not _plural(last.text)
            ):
                last.tag = ADJ

    @staticmethod
    def _resolve_verb(lex: str, slot: str, prev: _Tok | None, has_do: bool, has_aux: bool) -> str:
        """A lexicon verb (base or -s form) is a noun in a noun slot, else a verb."""
        if (
            lex == VERB
            and has_do
            and slot == DET
            and prev is not None
            and prev.text in _DEMONSTRATIVES
        ):
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

    # -- public ----------------------------------------------------------------------

    def nouns(self, prompt: str) -> list[str]:
        _require_str(prompt)
        words: list[str] = []
        for clause in _clauses(_tokenize(clean_prompt(prompt))):
            self._resolve(clause)
            run: list[str] = []
            for t in clause:
                ok = (
                    t.tag == NOUN
                    and t.text not in _META_NOUNS
                    and t.text not in self.extra_stopwords
                    and _usable(t.text)
                )
                if ok:
                    run.append(t.text)
                if not self.compounds:
                    words.extend(run)
                    run = []
                elif not ok or t.possessive or _plural(t.text):
                    if run:
                        words.append(" ".join(run))
                    run = []
            if run:
                words.append(" ".join(run))
        return _dedupe(words)


class SpacyNounExtractor(NounExtractor):
    """Nouns from spaCy's English pipeline (tokens tagged ``NOUN`` or ``PROPN``).

    The prompt is cleaned with :func:`clean_prompt` first. Instruction nouns
    (question, detail, kind, ...) are dropped, as with the heuristic extractor.

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
        _require_str(prompt)
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
            if w in _META_NOUNS or w in self.extra_stopwords or not _usable(w):
                continue
            words.append(w)
        return _dedupe(words)


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
