"""The official metrics of the standard VLM benchmarks, to score a model's free-form answers.

Each function reproduces the rule of the evaluation code that published numbers come
from, so that a pruned model's score can be compared with a paper's table:

* :func:`vqa_accuracy` and :func:`normalize_answer`: VQAv2 (and TextVQA, VizWiz), the
  official ``vqaEval.py`` of the VQA challenge (GT-Vision-Lab/VQA,
  ``PythonEvaluationTools/vqaEvaluation``): the answer normalisation, and
  ``min(1, matches / 3)`` averaged over the leave-one-out subsets of the human answers.
* :func:`exact_match`: GQA, whose official ``eval.py`` compares strings as they are,
  after the light clean-up LLaVA-1.5's GQA pipeline applies to the model's answer.
* :func:`parse_choice`: multiple choice (ScienceQA-IMG, MMBench): the option letter
  read from a free-form answer, by the rules of LLaVA's and VLMEvalKit's parsers.
* :func:`parse_yes_no` and :func:`pope_scores`: POPE's ``evaluate.py`` (yes/no read from
  the first sentence; accuracy, precision, recall, F1 and yes-ratio, "yes" positive).

Everything is plain Python on strings: a benchmark has thousands of questions and
ten short answers each, so there is nothing to vectorise.

Example::

    from prunekit import metrics
    metrics.vqa_accuracy("Two", ["2"] * 3 + ["3"] * 7)   # 0.9
    metrics.parse_choice("The answer is B.", ["cat", "dog"])   # "B"
    metrics.pope_scores(["Yes, there is.", "No."], ["yes", "yes"])["recall"]   # 0.5
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence

__all__ = [
    "CONTRACTIONS",
    "exact_match",
    "normalize_answer",
    "parse_choice",
    "parse_yes_no",
    "pope_scores",
    "vqa_accuracy",
]

# fmt: off
#: the contractions table of the official VQA evaluation: a word written without its
#: apostrophe -> the word with it. The keys with capitals ("Im", "Ive", "Id've", ...) are
#: kept as the official table has them; they never match, because the text is
#: lower-cased before the table is looked up (so "im" stays "im", as officially).
CONTRACTIONS: dict[str, str] = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've",
    "couldnt": "couldn't", "couldn'tve": "couldn't've", "couldnt've": "couldn't've",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't",
    "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
    "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've",
    "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've",
    "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've",
    "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're",
    "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've",
    "whyll": "why'll", "whyre": "why're", "whys": "why's", "wont": "won't",
    "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll",
    "youre": "you're", "youve": "you've",
}

# number words the official evaluation turns into digits ("none" counts as zero)
_NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
_ARTICLES = frozenset({"a", "an", "the"})
# the punctuation the official evaluation removes; the period, the apostrophe and the
# colon are not in it (the period has its own rule; "don't" keeps its apostrophe)
_PUNCTUATION = (
    ";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-",
    ">", "<", "@", "`", ",", "?", "!",
)
# fmt: on
# a comma between two digits ("2,000"): its presence anywhere makes every mark vanish
_DIGIT_COMMA = re.compile(r"\d,\d")
# a period not followed by a digit. The official pattern starts with "(?!<=\d)", a
# look-ahead for the text "<=" + digit (never there before a period), not the look-behind
# it looks like: so "1.5" keeps its period, "5." and "end." lose theirs. (The official
# call also passes re.UNICODE as the replacement count, removing at most 32 periods; an
# answer with more periods than that is not worth reproducing.)
_PERIOD = re.compile(r"\.(?!\d)")


def _check_text(value: object, name: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, got {type(value).__name__}")
    return value


def _punctuation(text: str) -> str:
    """The official ``processPunctuation``: remove marks, or turn them into spaces.

    A mark is deleted when it touches a space somewhere in ``text`` (``"red, blue"``)
    or when ``text`` has a comma between digits (``"2,000"``); otherwise it becomes a
    space (``"red,blue"`` -> ``"red blue"``). The tests are on the original text, mark by
    mark. Then periods not followed by a digit go.
    """
    digit_comma = _DIGIT_COMMA.search(text) is not None
    out = text
    for mark in _PUNCTUATION:
        touches_space = mark + " " in text or " " + mark in text
        out = out.replace(mark, "" if touches_space or digit_comma else " ")
    return _PERIOD.sub("", out)


def _digits_articles(text: str) -> str:
    """The official ``processDigitArticle``: lower-case; number words to digits, articles
    dropped, contractions given their apostrophe, word by word; single spaces."""
    words = [_NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES)


def normalize_answer(text: str) -> str:
    """The official VQA normalisation of a model's answer (``vqaEval.py``).

    Newlines and tabs become spaces and the ends are stripped; then the punctuation
    rule (marks that touch a space, or any mark when the text has a comma between
    digits, are deleted, other marks become spaces; a period goes unless a digit
    follows it); then, word by word: lower case, ``none``/``zero``..``ten`` to digits,
    ``a``/``an``/``the`` dropped, contractions written without their apostrophe get it
    back (:data:`CONTRACTIONS`).

    >>> normalize_answer("Two dogs.")
    '2 dogs'
    >>> normalize_answer("2,000"), normalize_answer("1.5"), normalize_answer("red,blue")
    ('2000', '1.5', 'red blue')
    >>> normalize_answer("The man DONT know")
    "man don't know"
    """
    text = _check_text(text, "text").replace("\n", " ").replace("\t", " ").strip()
    return _digits_articles(_punctuation(text))


def vqa_accuracy(
    prediction: str, answers: Sequence[str], *, normalize_answers: bool = False
) -> float:
    """VQA accuracy of one answer: ``min(1, matches / 3)`` over leave-one-out subsets.

    Each human answer is left out in turn; the prediction scores ``min(1, m / 3)``
    where ``m`` counts the *other* human answers equal to it, and the scores are
    averaged. Repeated human answers are distinct entries (leaving one "yes" out
    leaves the other "yes"). With ten answers the possible scores are 0, 0.3, 0.6,
    0.9 and 1 (0 to 3 or more matches). Fewer answers work the same way, over as many
    subsets as there are answers: then a single answer always scores 0 (nothing is
    left to match), so use :func:`exact_match` for one-answer data.

    Normalisation, as the official ``vqaEval.py`` does it: the prediction always goes
    through :func:`normalize_answer`; the human answers are compared as given, except
    that when they are not all identical they go through the punctuation rule alone
    (no lower-casing, numbers or articles). This is right for VQAv2, whose annotation
    files hold answers already normalised. For data whose human answers are raw text
    (TextVQA, VizWiz), pass ``normalize_answers=True``: every human answer then goes
    through :func:`normalize_answer` like the prediction, as TextVQA's evaluation does.

    Raises ``ValueError`` when ``answers`` is empty, ``TypeError`` when it is a string.

    >>> vqa_accuracy("Yes", ["yes"] * 10)
    1.0
    >>> vqa_accuracy("two", ["2", "2", "3", "3", "3", "3", "3", "3", "3", "3"])
    0.6
    >>> vqa_accuracy("Two", ["Two"] * 2 + ["three"] * 8, normalize_answers=True)
    0.6
    """
    prediction = normalize_answer(_check_text(prediction, "prediction"))
    if isinstance(answers, str):
        raise TypeError("answers must be a sequence of strings (the human answers), not a str")
    answers = [_check_text(a, f"answers[{i}]") for i, a in enumerate(answers)]
    if not answers:
        raise ValueError("answers is empty: the question needs at least one human answer")
    if normalize_answers:
        answers = [normalize_answer(a) for a in answers]
    elif len(set(answers)) > 1:
        answers = [_punctuation(a) for a in answers]
    matches = sum(a == prediction for a in answers)
    # leaving out a matching answer leaves matches - 1 others to match, any other leaves
    # matches; min(1, m / 3) summed in thirds, so that 0.3 / 0.6 / 0.9 come out exact
    thirds = sum(min(3, matches - (a == prediction)) for a in answers)
    return thirds / (3 * len(answers))


def _gqa_clean(text: str) -> str:
    return text.strip().rstrip(".").lower()


def exact_match(prediction: str, answer: str) -> float:
    """1.0 when the answer equals the reference after GQA's clean-up, else 0.0.

    GQA's official ``eval.py`` compares the predicted string with the reference as they
    are (``predicted == gold``); LLaVA-1.5's GQA pipeline, which the token-pruning
    papers use, first strips the model's answer, removes its trailing periods and
    lower-cases it. Both sides get that here (GQA's references are lower-case words
    without a final period, so this changes nothing on them). lmms-eval's ``gqa`` task
    instead removes all punctuation, which differs only on answers such as
    ``"t-shirt"``.

    >>> exact_match("Yes.", "yes"), exact_match(" Left ", "left"), exact_match("a dog", "dog")
    (1.0, 1.0, 0.0)
    """
    prediction = _check_text(prediction, "prediction")
    answer = _check_text(answer, "answer")
    return float(_gqa_clean(prediction) == _gqa_clean(answer))


def _option_letters(options: Sequence[str] | str) -> tuple[list[str], list[str] | None]:
    """The valid letters and, when known, the option texts (lower-case, cleaned)."""
    if isinstance(options, str):
        letters = list(options.strip().upper())
        valid = len(letters) == len(set(letters)) and all(
            c in string.ascii_uppercase for c in letters
        )
        if not letters or not valid:
            raise ValueError(
                f"options as a string must be distinct option letters such as 'ABCD', "
                f"got {options!r}"
            )
        return letters, None
    texts = [_check_text(t, f"options[{i}]") for i, t in enumerate(options)]
    if not texts or len(texts) > 26:
        raise ValueError(f"options must hold 1 to 26 option texts, got {len(texts)}")
    return list(string.ascii_uppercase[: len(texts)]), [_words(t) for t in texts]


def _words(text: str) -> str:
    """Lower-case, punctuation to spaces, single spaces: for matching option texts."""
    table = str.maketrans(string.punctuation, " " * len(string.punctuation))
    return " ".join(text.lower().translate(table).split())


# "B", "(B)", "b.", "[C]:" -- the whole answer is one letter
_BARE_LETTER = re.compile(r"^[(\[]?([A-Za-z])[)\]]?[.:]?$")
# "B. cat", "(B) cat", "B) cat", "B: cat", "B, because" -- an upper-case letter opens it
_LEADING_LETTER = re.compile(r"^[(\[]?([A-Z])(?:[)\]][.:,]?|[.:,])(?:\s|$)")
# "The answer is B", "Answer: (C)", "the correct option is D"
_ANSWER_PHRASE = re.compile(
    r"\b(?:answer|option|choice)\s*(?:is\s*|:\s*)?[(\[]?([A-Z])\b", re.IGNORECASE
)


def _answer_phrase_letter(text: str) -> str | None:
    found = {m.group(1) for m in _ANSWER_PHRASE.finditer(text) if m.group(1).isupper()}
    return found.pop() if len(found) == 1 else None


def _text_match(text: str, texts: list[str]) -> int | None:
    """The index of the one option whose text the answer is, or contains as whole words."""
    answer = _words(text)
    equal = [i for i, t in enumerate(texts) if t and t == answer]
    if len(equal) == 1:
        return equal[0]
    padded = f" {answer} "
    inside = [i for i, t in enumerate(texts) if t and f" {t} " in padded]
    # "dark red" names "red" too: keep only options not part of another one found
    inside = [
        i for i in inside if not any(i != j and f" {texts[i]} " in f" {texts[j]} " for j in inside)
    ]
    return inside[0] if len(inside) == 1 else None


def parse_choice(text: str, options: Sequence[str] | str) -> str | None:
    """The option letter a free-form multiple-choice answer names, or ``None``.

    ``options`` is either the option texts in order (letters ``A``, ``B``, ... are
    assigned to them: ``["cat", "dog"]`` means ``A. cat``, ``B. dog``) or a string of the
    valid letters (``"ABCD"``) when the texts are not at hand. Rules, first that
    answers wins, as LLaVA's ScienceQA and VLMEvalKit's MMBench parsers do:

    1. the whole answer is a letter: ``"B"``, ``"(B)"``, ``"b."``;
    2. it opens with a capital letter and a delimiter: ``"B. cat"``, ``"(B) cat"``, ``"B: ..."``;
    3. a phrase names one letter: ``"The answer is B"``, ``"Answer: (C)"``, ``"option D"``;
    4. it is, or contains as whole words, the text of exactly one option (case and
       punctuation ignored; ``"dark red"`` picks "dark red" over "red");
    5. exactly one distinct valid capital letter stands alone in it (``"I think C"``).

    A letter outside the options does not count (the next rule is tried). ``None`` when no rule identifies one
    option (``""``, ``"cat or dog"``, ``"A and B"``).

    >>> parse_choice("(B)", "ABCD"), parse_choice("The answer is C.", "ABCD")
    ('B', 'C')
    >>> parse_choice("B. dog", ["cat", "dog"]), parse_choice("It is a dog.", ["cat", "dog"])
    ('B', 'B')
    >>> parse_choice("E", "ABCD") is None
    True
    """
    text = _check_text(text, "text").strip()
    letters, texts = _option_letters(options)
    if not text:
        return None
    for pattern in (_BARE_LETTER, _LEADING_LETTER):
        match = pattern.match(text)
        if match and match.group(1).upper() in letters:
            return match.group(1).upper()
    letter = _answer_phrase_letter(text)
    if letter in letters:
        return letter
    if texts is not None:
        index = _text_match(text, texts)
        if index is not None:
            return letters[index]
    table = str.maketrans(string.punctuation, " " * len(string.punctuation))
    alone = {w for w in text.translate(table).split() if w in letters}
    return alone.pop() if len(alone) == 1 else None


def parse_yes_no(text: str) -> str | None:
    """``"yes"`` or ``"no"`` from a free-form answer, by POPE's rule; ``None`` for no text.

    POPE's ``evaluate.py`` keeps the text before the first period, removes commas,
    splits it into words and answers "no" when one of them is exactly ``no``, ``No``
    or ``not``, "yes" otherwise. Kept as it is, so scores equal the published ones:
    ``"NO"``, ``"Not"`` or ``"No!"`` count as "yes" there and here. The one change:
    words are split on any whitespace (the script splits on spaces, so ``"No\\n"`` would
    be "yes" there). An empty answer gives ``None`` (the script counts it as "yes";
    :func:`pope_scores` does too).

    >>> parse_yes_no("Yes, there is a dog."), parse_yes_no("No, there is not."), parse_yes_no("")
    ('yes', 'no', None)
    >>> parse_yes_no("There is a cat. No dog.")
    'yes'
    """
    text = _check_text(text, "text")
    if not text.strip():
        return None
    words = text.split(".")[0].replace(",", "").split()
    return "no" if {"no", "No", "not"} & set(words) else "yes"


def pope_scores(predictions: Sequence[str], labels: Sequence[str]) -> dict[str, float]:
    """POPE's scores of free-form answers: accuracy, precision, recall, f1, yes_ratio.

    Each prediction is read by :func:`parse_yes_no` (an empty one counts as "yes", as
    in POPE's script); ``labels`` are ``"yes"``/``"no"`` (any case). "yes" is the positive
    class: ``precision = TP / (TP + FP)``, ``recall = TP / (TP + FN)``, ``f1`` their
    harmonic mean, ``yes_ratio`` the fraction of predictions read as "yes". A ratio whose
    denominator is 0 (no "yes" predicted, no "yes" label) is 0.0 where the script
    would divide by zero.

    >>> s = pope_scores(["Yes", "No.", "yes", "There is no cat"], ["yes", "yes", "no", "no"])
    >>> s["accuracy"], s["precision"], s["recall"], s["f1"], s["yes_ratio"]
    (0.5, 0.5, 0.5, 0.5, 0.5)
    """
    if isinstance(predictions, str) or isinstance(labels, str):
        raise TypeError("predictions and labels must be sequences of strings, not a str")
    predictions = [_check_text(p, f"predictions[{i}]") for i, p in enumerate(predictions)]
    labels = [_check_text(label, f"labels[{i}]") for i, label in enumerate(labels)]
    if not predictions:
        raise ValueError("predictions is empty")
    if len(predictions) != len(labels):
        raise ValueError(
            f"predictions and labels differ in length: {len(predictions)} vs {len(labels)}"
        )
    gold = [label.strip().lower() for label in labels]
    bad = sorted({label for label in gold if label not in ("yes", "no")})
    if bad:
        raise ValueError(f"labels must be 'yes' or 'no', got {bad[:5]}")
    said_yes = [parse_yes_no(p) != "no" for p in predictions]
    is_yes = [g == "yes" for g in gold]
    tp = sum(p and g for p, g in zip(said_yes, is_yes))
    fp = sum(p and not g for p, g in zip(said_yes, is_yes))
    fn = sum(not p and g for p, g in zip(said_yes, is_yes))
    tn = len(gold) - tp - fp - fn
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": (tp + tn) / len(gold),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "yes_ratio": sum(said_yes) / len(said_yes),
    }
