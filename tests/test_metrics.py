"""The benchmark metrics of ``prunekit.metrics`` on hand-worked examples.

Expected values are worked out by hand from the rules of the official evaluation code
(VQA's ``vqaEval.py``, GQA's ``eval.py`` with LLaVA-1.5's clean-up, POPE's
``evaluate.py``, LLaVA's / VLMEvalKit's multiple-choice parsers), including their quirks.
"""

from __future__ import annotations

import pytest

from prunekit.metrics import (
    exact_match,
    normalize_answer,
    parse_choice,
    parse_yes_no,
    pope_scores,
    vqa_accuracy,
)

# --------------------------------------------------------------------------- normalisation


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # number words, "none" included; beyond ten they stay words
        ("Two", "2"),
        ("none", "0"),
        ("ten eleven", "10 eleven"),
        # articles go as whole words only
        ("The red car", "red car"),
        ("an apple", "apple"),
        ("banana", "banana"),
        # contractions get their apostrophe back; the capitalised keys of the official table
        # ("Im") never match, because the text is lower-cased first
        ("dont", "don't"),
        ("ISNT", "isn't"),
        ("Im", "im"),
        ("Don't", "don't"),
        # a mark touching a space is deleted, one between letters becomes a space
        ("red, blue", "red blue"),
        ("red,blue", "red blue"),
        ("t-shirt", "t shirt"),
        ("x-ray, y", "x ray y"),
        ("yes!", "yes"),
        ('"hello"', "hello"),
        # a comma between digits anywhere makes every mark vanish, not just that comma
        ("2,000", "2000"),
        ("2000", "2000"),
        ("2,000 cats-dogs", "2000 catsdogs"),
        # a period goes unless a digit follows it
        ("1.5", "1.5"),
        ("5.", "5"),
        ("end.", "end"),
        ("3.14.", "3.14"),
        ("Two dogs.", "2 dogs"),
        # the colon and the apostrophe are not in the official list
        ("well: yes", "well: yes"),
        ("man's hat", "man's hat"),
        # whitespace: tabs and newlines, ends, runs of spaces
        ("  The\tcat \n", "cat"),
        ("big   dog", "big dog"),
        ("", ""),
    ],
)
def test_normalize_answer_follows_the_official_rules(text, expected):
    assert normalize_answer(text) == expected


def test_normalize_answer_rejects_a_non_string():
    with pytest.raises(TypeError, match="text"):
        normalize_answer(3)


# --------------------------------------------------------------------------- VQA accuracy


@pytest.mark.parametrize(
    ("matches", "expected"),
    # ten answers, `matches` of them equal to the prediction, by hand:
    # k matching answers each leave k - 1 others, the 10 - k others leave k
    [
        (0, 0.0),
        (1, (1 * 0 + 9 * 1 / 3) / 10),  # 0.3
        (2, (2 * 1 / 3 + 8 * 2 / 3) / 10),  # 0.6
        (3, (3 * 2 / 3 + 7 * 1) / 10),  # 0.9
        (4, 1.0),
        (10, 1.0),
    ],
)
def test_vqa_accuracy_leave_one_out_over_ten_answers(matches, expected):
    answers = ["yes"] * matches + ["no"] * (10 - matches)
    assert vqa_accuracy("yes", answers) == pytest.approx(expected)
    assert vqa_accuracy("yes", answers) == pytest.approx([0.0, 0.3, 0.6, 0.9, 1.0][min(matches, 4)])


def test_duplicated_answers_are_distinct_entries():
    # leaving one "yes" out leaves the other "yes": 2 x 1/3 + 8 x 2/3 = 6/10. Removing every
    # "yes" equal to the one left out would give (2 x 0 + 8 x 2/3) / 10 = 0.533...
    answers = ["yes", "no", "no", "yes", "no", "no", "no", "no", "no", "no"]
    assert vqa_accuracy("yes", answers) == pytest.approx(0.6)


def test_vqa_accuracy_normalises_the_prediction():
    answers = ["2"] * 3 + ["3"] * 7
    assert vqa_accuracy("Two.", answers) == pytest.approx(0.9)
    assert vqa_accuracy("  two\n", answers) == pytest.approx(0.9)
    assert vqa_accuracy("The dog", ["dog"] * 10) == 1.0


def test_human_answers_get_the_punctuation_rule_only_when_they_differ():
    # they differ: "2,000" -> "2000" on the human side too, 3 matches
    assert vqa_accuracy("2000", ["2,000"] * 3 + ["3000"] * 7) == pytest.approx(0.9)
    # all identical: the official code leaves them as they are; the prediction becomes
    # "2000", which matches none of the ten "2,000"
    assert vqa_accuracy("2,000", ["2,000"] * 10) == 0.0
    # never lower case / number words / articles on the human side
    assert vqa_accuracy("two", ["two"] * 3 + ["three"] * 7) == 0.0
    assert vqa_accuracy("Yes", ["Yes"] * 5 + ["no"] * 5) == 0.0


def test_normalize_answers_treats_raw_human_answers_like_the_prediction():
    assert vqa_accuracy("2,000", ["2,000"] * 10, normalize_answers=True) == 1.0
    answers = ["Two"] * 3 + ["three"] * 7
    assert vqa_accuracy("2", answers, normalize_answers=True) == pytest.approx(0.9)
    assert vqa_accuracy("Yes", ["Yes"] * 5 + ["no"] * 5, normalize_answers=True) == 1.0


def test_vqa_accuracy_with_fewer_than_ten_answers():
    # three answers, two match: leaving a "cat" out leaves 1 (1/3, twice), leaving "dog" out 2
    assert vqa_accuracy("cat", ["cat", "cat", "dog"]) == pytest.approx((1 / 3 + 1 / 3 + 2 / 3) / 3)
    # five answers, four match: 3 others each time for the matches (1), 4 for the other (1)
    assert vqa_accuracy("cat", ["cat"] * 4 + ["dog"]) == 1.0
    # one answer: nothing is left when it is left out
    assert vqa_accuracy("cat", ["cat"]) == 0.0


def test_vqa_accuracy_checks_its_arguments():
    with pytest.raises(ValueError, match="answers"):
        vqa_accuracy("yes", [])
    with pytest.raises(TypeError, match="answers"):
        vqa_accuracy("yes", "yes")
    with pytest.raises(TypeError, match=r"answers\[1\]"):
        vqa_accuracy("yes", ["yes", None])
    with pytest.raises(TypeError, match="prediction"):
        vqa_accuracy(None, ["yes"])


# --------------------------------------------------------------------------- exact match (GQA)


@pytest.mark.parametrize(
    ("prediction", "answer", "expected"),
    [
        ("left", "left", 1.0),
        ("Left", "left", 1.0),
        ("Yes.", "yes", 1.0),
        ("  no..\n", "no", 1.0),
        ("a dog", "dog", 0.0),  # no article removal in GQA
        ("t-shirt", "t shirt", 0.0),  # no punctuation removal inside the answer
        ("2", "two", 0.0),  # no number words
        ("left side", "left", 0.0),
    ],
)
def test_exact_match_gqa_style(prediction, answer, expected):
    assert exact_match(prediction, answer) == expected


def test_exact_match_checks_its_arguments():
    with pytest.raises(TypeError, match="answer"):
        exact_match("yes", ["yes"])


# --------------------------------------------------------------------------- multiple choice


TEXTS = ["cat", "dog", "red", "dark red"]


@pytest.mark.parametrize(
    ("text", "options", "expected"),
    [
        # the whole answer is a letter
        ("B", "ABCD", "B"),
        ("(B)", "ABCD", "B"),
        ("b.", "ABCD", "B"),
        ("[C]", "ABCD", "C"),
        (" D \n", "ABCD", "D"),
        # a capital letter and a delimiter open it
        ("B. dog", TEXTS, "B"),
        ("(B) dog", TEXTS, "B"),
        ("C) red", TEXTS, "C"),
        ("A: the cat", TEXTS, "A"),
        # a phrase names the letter
        ("The answer is B.", "ABCD", "B"),
        ("Answer: (C)", "ABCD", "C"),
        ("I would pick option D here", "ABCD", "D"),
        ("The correct choice is (A)", "ABCD", "A"),
        # the option's text, whole or inside; the longer option wins over a part of it
        ("cat", TEXTS, "A"),
        ("Dog.", TEXTS, "B"),
        ("It is a dog.", TEXTS, "B"),
        ("the answer is a cat", TEXTS, "A"),  # lower-case "a" is an article, not a letter
        ("dark red", TEXTS, "D"),
        ("It looks dark red to me", TEXTS, "D"),
        ("red", TEXTS, "C"),
        # one lone capital letter
        ("I think C is right", "ABCD", "C"),
        # nothing identifies a single option
        ("", "ABCD", None),
        ("E", "ABCD", None),
        ("The answer is E", "ABCD", None),
        ("A and B", "ABCD", None),
        ("cat or dog", TEXTS, None),
        ("a bird", TEXTS, None),
        ("category", TEXTS, None),  # "cat" only as a whole word
    ],
)
def test_parse_choice(text, options, expected):
    assert parse_choice(text, options) == expected


def test_parse_choice_letters_follow_the_number_of_options():
    assert parse_choice("C", ["cat", "dog"]) is None
    assert parse_choice("C", ["cat", "dog", "cow"]) == "C"
    assert parse_choice("c", "abc") == "C"  # letters given in lower case


@pytest.mark.parametrize("options", ["", "AAB", "A1", [], ["x"] * 27])
def test_parse_choice_rejects_bad_options(options):
    with pytest.raises(ValueError, match="options"):
        parse_choice("A", options)


def test_parse_choice_rejects_a_non_string_answer():
    with pytest.raises(TypeError, match="text"):
        parse_choice(None, "AB")


# --------------------------------------------------------------------------- POPE


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Yes", "yes"),
        ("yes, there is a dog in the image.", "yes"),
        ("No", "no"),
        ("No.", "no"),
        ("No, there is none.", "no"),
        ("There is not a dog in the image.", "no"),
        ("no", "no"),
        # only the first sentence counts
        ("Yes. There is no cat.", "yes"),
        ("There is a dog. It is not a cat.", "yes"),
        # words compared as they are, as in POPE's script
        ("NO", "yes"),
        ("No!", "yes"),
        ("Nope", "yes"),
        ("I don't think so", "yes"),
        # split on any whitespace (the script splits on spaces only)
        ("No\nthere is none", "no"),
        ("", None),
        ("   ", None),
    ],
)
def test_parse_yes_no_pope_rule(text, expected):
    assert parse_yes_no(text) == expected


def test_pope_scores_on_a_hand_counted_confusion_matrix():
    predictions = [
        "Yes, there is.",  # label yes: TP
        "yes",  # yes: TP
        "Yes.",  # yes: TP
        "No, there is not.",  # yes: FN
        "There is no dog.",  # yes: FN
        "",  # no: FP (an empty answer counts as "yes", as in POPE's script)
        "No",  # no: TN
        "not that I can see",  # no: TN
    ]
    labels = ["yes", "Yes", "yes", "yes", "yes", "no", "No ", "no"]
    scores = pope_scores(predictions, labels)
    # TP = 3, FN = 2, FP = 1, TN = 2
    assert scores == pytest.approx(
        {
            "accuracy": 5 / 8,
            "precision": 3 / 4,
            "recall": 3 / 5,
            "f1": 2 * (3 / 4) * (3 / 5) / (3 / 4 + 3 / 5),  # 2/3
            "yes_ratio": 4 / 8,
        }
    )


def test_pope_scores_without_a_positive_prediction_are_zero_not_an_error():
    scores = pope_scores(["No", "no"], ["yes", "no"])
    assert scores == {"accuracy": 0.5, "precision": 0.0, "recall": 0.0, "f1": 0.0, "yes_ratio": 0.0}


def test_pope_scores_check_their_arguments():
    with pytest.raises(ValueError, match="predictions"):
        pope_scores([], [])
    with pytest.raises(ValueError, match="length"):
        pope_scores(["yes"], ["yes", "no"])
    with pytest.raises(ValueError, match="labels"):
        pope_scores(["yes"], ["maybe"])
    with pytest.raises(TypeError, match="predictions"):
        pope_scores("yes", ["yes"])
