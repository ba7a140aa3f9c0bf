"""Noun extraction for ResPrune's text relevance (prunekit.text.nouns)."""

from __future__ import annotations

import importlib.util
import sys
import types

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prunekit.text import (
    HeuristicNounExtractor,
    NounExtractor,
    SpacyNounExtractor,
    clean_prompt,
    default_noun_extractor,
)

# (prompt, expected nouns), hand-checked. Grouped by the benchmark they imitate.
NOUN_CASES = [
    # method page examples
    ("What color is the triangle?", ["color", "triangle"]),
    ("Is there a red circle left of the large blue square?", ["circle", "square"]),
    ("How many dogs are sitting on the sofa in this picture?", ["dogs", "sofa", "picture"]),
    # easy-VQA
    ("What shape is in the image?", ["shape", "image"]),
    ("What color is the shape?", ["color", "shape"]),
    ("Is there a blue shape in the image?", ["shape", "image"]),
    ("Does the image contain a circle?", ["image", "circle"]),
    ("Is there not a red shape?", ["shape"]),
    ("Is a triangle present?", ["triangle"]),
    ("Is no triangle present?", ["triangle"]),
    ("What is the blue shape?", ["shape"]),
    ("What shape does the image contain?", ["shape", "image"]),
    ("What is the color of the shape?", ["color", "shape"]),
    # POPE
    ("Is there a dining table in the image?", ["dining", "table", "image"]),
    ("Is there a traffic light in the image?", ["traffic", "light", "image"]),
    ("Is there a stop sign in the image?", ["stop", "sign", "image"]),
    ("Is there a hot dog in the image?", ["hot", "dog", "image"]),
    ("Is there a tv in the image?", ["tv", "image"]),
    ("Is there an orange in the image?", ["orange", "image"]),
    ("Is there a remote in the image?", ["remote", "image"]),
    ("Is there a tie in the image?", ["tie", "image"]),
    ("Is there a potted plant in the image?", ["plant", "image"]),
    ("Are there any skis in the image?", ["skis", "image"]),
    ("Is there a dog in this image? Please answer yes or no.", ["dog", "image"]),
    # VQAv2
    ("What is the man doing?", ["man"]),
    ("What sport is being played?", ["sport"]),
    ("Is the dog wearing a collar?", ["dog", "collar"]),
    ("What is the table made of?", ["table"]),
    ("Why is the man smiling?", ["man"]),
    ("Is this a professional game?", ["game"]),
    ("What time of day is it?", ["time", "day"]),
    ("What is the woman holding in her hand?", ["woman", "hand"]),
    ("Is this photo taken indoors?", ["photo"]),
    ("Is the bus at the bus stop?", ["bus", "stop"]),
    ("Is there snow on the ground?", ["snow", "ground"]),
    ("Is there a soda can on the table?", ["soda", "can", "table"]),
    ("Can you see a can?", ["can"]),
    ("Is the orange on the table?", ["orange", "table"]),
    ("Is the car orange?", ["car"]),
    ("Is the traffic light red?", ["traffic", "light"]),
    ("Is the shirt light blue?", ["shirt"]),
    ("Is the sky overcast?", ["sky"]),
    ("Is the sleeping cat on the bed?", ["cat", "bed"]),
    ("Is there a bunch of bananas?", ["bananas"]),
    ("Is there a watch on the man's wrist?", ["watch", "man", "wrist"]),
    ("Is the man\u2019s tie blue?", ["man", "tie"]),
    ("Does this look like a nice place to live?", ["place"]),
    ("Is this in the United States?", ["united", "states"]),
    ("What does the man hold in his hands?", ["man", "hands"]),
    # GQA
    ("Is the person to the left or right of the car?", ["person", "car"]),
    ("What is the man to the left of the chair wearing?", ["man", "chair"]),
    ("Which side of the photo is the fence on?", ["photo", "fence"]),
    ("Are there both cars and trucks in this picture?", ["cars", "trucks", "picture"]),
    ("What kind of vehicle is to the right of the man?", ["vehicle", "man"]),
    ("Do you see any bottles or glasses?", ["bottles", "glasses"]),
    ("Is the bag both small and black?", ["bag"]),
    ("What animal is lying on the grass?", ["animal", "grass"]),
    ("What is the color of the car that is parked on the street?", ["color", "car", "street"]),
    ("Which kind of furniture is made of wood?", ["furniture", "wood"]),
    # TextVQA
    ("What does the sign say?", ["sign"]),
    ("What time does the clock show?", ["time", "clock"]),
    ("What number is on the player's jersey?", ["number", "player", "jersey"]),
    ("What is written on the sign?", ["sign"]),
    ("What brand of beer is this?", ["brand", "beer"]),
    ("What is the name of the restaurant?", ["name", "restaurant"]),
    (
        "What is the brand of this camera?\nReference OCR token: Canon, EOS, 5D\n"
        "Answer the question using a single word or phrase.",
        ["brand", "camera"],
    ),
    # LLaVA-Bench / instructions
    ("Describe this image in detail.", ["image"]),
    ("What is unusual about this image?", ["image"]),
    ("Can you explain this meme?", ["meme"]),
    ("Write a poem about this painting.", ["poem", "painting"]),
    ("Name the animal in the picture.", ["animal", "picture"]),
    ("What are the possible reasons for the man's behavior?", ["reasons", "man", "behavior"]),
    ("Which of the following captions best describes the image?", ["captions", "image"]),
]

# Chat templates around one question: only the user's words count.
TEMPLATE_CASES = [
    (
        "A chat between a curious human and an artificial intelligence assistant. The "
        "assistant gives helpful, detailed, and polite answers to the human's questions. "
        "USER: <image>\nWhat is the color of the bus? ASSISTANT:",
        ["color", "bus"],
    ),
    (
        "USER: <image>\nWhat is shown in this image? Answer the question using a single word "
        "or phrase. ASSISTANT:",
        ["image"],
    ),
    (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|><|image_pad|><|vision_end|>How many zebras are near the water?"
        "<|im_end|>\n<|im_start|>assistant\n",
        ["zebras", "water"],
    ),
    ("[INST] <image>\nIs the cat on the laptop? [/INST]", ["cat", "laptop"]),
    (
        "<start_of_turn>user\n<image>What is the boy riding?<end_of_turn>\n<start_of_turn>model\n",
        ["boy"],
    ),
    (
        "<|start_header_id|>user<|end_header_id|>\n\n<image>\nWhere is the umbrella?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
        ["umbrella"],
    ),
    (
        "<|user|>\n<|image_1|>\nWhat fruit is in the bowl?<|end|>\n<|assistant|>\n",
        ["fruit", "bowl"],
    ),
    ("### Human: <image>\nWhat is the giraffe eating? ### Assistant:", ["giraffe"]),
    (
        "USER: <image>\nWhat is in the photo? ASSISTANT: A dog on a couch.</s>"
        "USER: What color is it? ASSISTANT:",
        ["photo", "color"],
    ),
    ("User:<image>Is the kite flying?<end_of_utterance>\nAssistant:", ["kite"]),
]

# Prompts without a noun: the extractor falls back to content words.
FALLBACK_CASES = [
    ("Is it sunny?", ["sunny"]),
    ("What is happening?", ["happening"]),
    ("What are they eating?", ["eating"]),
    ("Is it raining?", ["raining"]),
    ("Describe it in detail.", []),
    ("What do you see?", []),
    ("What is this?", []),
    ("", []),
    ("USER: <image>\n ASSISTANT:", []),
]

COMPOUND_CASES = [
    ("Is there a dining table in the image?", ["dining table", "image"]),
    ("What does the stop sign say?", ["stop sign"]),
    ("Is there a hot dog in the image?", ["hot dog", "image"]),
    ("Is the tennis player wearing a hat?", ["tennis player", "hat"]),
    ("Are the elephants adults?", ["elephants", "adults"]),
    ("Is the dog's tongue out?", ["dog", "tongue"]),
    ("Is this New York City?", ["new york city"]),
]


@pytest.fixture(scope="module")
def heuristic() -> HeuristicNounExtractor:
    return HeuristicNounExtractor()


# ----------------------------------------------------------------------------- heuristic


@pytest.mark.parametrize(("prompt", "expected"), NOUN_CASES + TEMPLATE_CASES)
def test_heuristic_nouns(heuristic, prompt, expected):
    assert heuristic.nouns(prompt) == expected
    assert heuristic(prompt) == expected  # nouns found: no fallback


@pytest.mark.parametrize(("prompt", "expected"), FALLBACK_CASES)
def test_content_word_fallback(heuristic, prompt, expected):
    assert heuristic.nouns(prompt) == []
    assert heuristic(prompt) == expected
    assert heuristic.content_words(prompt) == expected


def test_content_words_keep_adjectives_verbs_and_nouns(heuristic):
    words = heuristic.content_words("Is the big red dog running to the left of the car?")
    assert words == ["big", "red", "dog", "running", "left", "car"]


def test_content_words_drop_instruction_noise(heuristic):
    prompt = "Please describe the question in detail and answer with a single word."
    assert heuristic.content_words(prompt) == []


@pytest.mark.parametrize(("prompt", "expected"), COMPOUND_CASES)
def test_compounds(prompt, expected):
    assert HeuristicNounExtractor(compounds=True).nouns(prompt) == expected


def test_extra_stopwords(heuristic):
    prompt = "How many dogs are sitting on the sofa in this picture?"
    custom = HeuristicNounExtractor(extra_stopwords=["Picture", "image"])
    assert custom.nouns(prompt) == ["dogs", "sofa"]
    assert custom("Is the picture sunny?") == ["sunny"]
    with pytest.raises(TypeError, match="extra_stopwords"):
        HeuristicNounExtractor(extra_stopwords="image")


def test_normalisation_and_order(heuristic):
    prompt = "The DOG and the Cat: is the dog's bowl next to the cats' bed? DOG!"
    assert heuristic.nouns(prompt) == ["dog", "cat", "bowl", "cats", "bed"]


def test_deterministic_across_calls_and_instances(heuristic):
    prompts = [p for p, _ in NOUN_CASES + TEMPLATE_CASES + FALLBACK_CASES]
    first = [heuristic(p) for p in prompts]
    assert [heuristic(p) for p in prompts] == first
    assert [HeuristicNounExtractor()(p) for p in prompts] == first


def test_tag_marks_nouns(heuristic):
    tags = dict(heuristic.tag("Is the orange cat on the orange?"))
    assert tags["cat"] == "NOUN"
    assert [t for w, t in heuristic.tag("Is the orange cat on the orange?") if w == "orange"] == [
        "ADJ",
        "NOUN",
    ]


# ------------------------------------------------------------------------------ cleaning


def test_clean_prompt_keeps_only_user_turns():
    prompt = (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "<image>\nWhat is on the plate?<|im_end|>\n<|im_start|>assistant\nA cake.<|im_end|>"
    )
    assert clean_prompt(prompt) == "What is on the plate?"
    assert clean_prompt("[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nWhere is the cat? [/INST]") == (
        "Where is the cat?"
    )
    assert clean_prompt("Plain question about a user: interface?") == (
        "Plain question about a user: interface?"
    )


def test_clean_prompt_strips_special_tokens_and_boilerplate():
    prompt = "<image>\n<Img><ImageHere></Img> What is this? [IMG_BREAK] Answer yes or no."
    assert clean_prompt(prompt) == "What is this?"


# --------------------------------------------------------------------------- properties


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=200))
def test_any_text_gives_lowercase_unique_words_from_the_prompt(prompt):
    extractor = HeuristicNounExtractor()
    source = prompt.lower().replace("\u2019", "'")
    for words in (extractor.nouns(prompt), extractor.content_words(prompt), extractor(prompt)):
        assert isinstance(words, list)
        assert len(words) == len(set(words))
        for w in words:
            assert isinstance(w, str) and w == w.lower() and len(w) >= 2
            assert w in source


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.sampled_from([p for p, _ in NOUN_CASES] + ["USER:", "<image>", "\n", "ASSISTANT:"]),
        max_size=4,
    )
)
def test_concatenated_prompts_do_not_crash(parts):
    words = HeuristicNounExtractor()(" ".join(parts))
    assert all(isinstance(w, str) for w in words)


# ---------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("bad", [None, b"What color is it?", 3, ["What color?"]])
def test_non_str_prompt_raises_type_error(heuristic, bad):
    with pytest.raises(TypeError, match="prompt"):
        heuristic(bad)
    with pytest.raises(TypeError, match="prompt"):
        heuristic.nouns(bad)
    with pytest.raises(TypeError, match="prompt"):
        heuristic.content_words(bad)
    with pytest.raises(TypeError, match="prompt"):
        clean_prompt(bad)


def test_interface_is_abstract():
    with pytest.raises(TypeError):
        NounExtractor()  # type: ignore[abstract]

    class Fixed(NounExtractor):
        name = "fixed"

        def nouns(self, prompt: str) -> list[str]:
            return []

    assert Fixed()("Is it sunny?") == ["sunny"]  # fallback comes from the base class
    assert HeuristicNounExtractor.name == "heuristic"
    assert SpacyNounExtractor.name == "spacy"


# -------------------------------------------------------------------------------- spaCy


class _FakeToken:
    def __init__(self, text: str, pos: str, lemma: str | None = None) -> None:
        self.text, self.pos_, self.lemma_ = text, pos, lemma or text.lower()


class _FakeNlp:
    """Stands in for a spaCy pipeline: a fixed tagging of the words it is given."""

    POS = {
        "dogs": ("NOUN", "dog"),
        "sofa": ("NOUN", "sofa"),
        "picture": ("NOUN", "picture"),
        "detail": ("NOUN", "detail"),
        "Paris": ("PROPN", "Paris"),
        "man's": ("NOUN", "man"),
    }

    def __init__(self) -> None:
        self.seen: list[str] = []

    def __call__(self, text: str) -> list[_FakeToken]:
        self.seen.append(text)
        toks = []
        for word in text.replace("?", " ").replace(".", " ").split():
            pos, lemma = self.POS.get(word, ("VERB", None))
            toks.append(_FakeToken(word, pos, lemma))
        return toks


def test_spacy_extractor_with_injected_pipeline():
    nlp = _FakeNlp()
    extractor = SpacyNounExtractor(nlp=nlp)
    prompt = "USER: <image>\nHow many dogs are sitting on the sofa in this picture? ASSISTANT:"
    assert extractor(prompt) == ["dogs", "sofa", "picture"]
    assert nlp.seen[-1] == "How many dogs are sitting on the sofa in this picture?"
    assert SpacyNounExtractor(nlp=nlp, lemma=True).nouns(prompt) == ["dog", "sofa", "picture"]
    # instruction nouns are dropped; no noun -> content words
    assert extractor("Describe it in detail.") == []
    assert extractor("Is it sunny?") == ["sunny"]
    assert extractor("Is the man's hat from Paris?") == ["man", "paris"]
    assert extractor("") == []
    with pytest.raises(TypeError, match="prompt"):
        extractor(None)


def _spacy_model_installed() -> bool:
    if importlib.util.find_spec("spacy") is None:
        return False
    return importlib.util.find_spec("en_core_web_sm") is not None


@pytest.mark.skipif(not _spacy_model_installed(), reason="spaCy + en_core_web_sm not installed")
def test_spacy_extractor_real_pipeline():
    extractor = SpacyNounExtractor()
    nouns = extractor("How many dogs are sitting on the sofa in this picture?")
    assert {"dogs", "sofa", "picture"} <= set(nouns)
    assert extractor.nouns("What color is the triangle?")[-1] == "triangle"


@pytest.mark.skipif(importlib.util.find_spec("spacy") is not None, reason="spaCy is installed here")
def test_spacy_missing_raises_import_error():
    with pytest.raises(ImportError, match="pip install spacy"):
        SpacyNounExtractor()


def test_missing_spacy_pipeline_raises_os_error_without_download(monkeypatch):
    calls: list[str] = []

    def load(name, **kwargs):
        calls.append(name)
        raise OSError(f"[E050] Can't find model '{name}'")

    def download(*args, **kwargs):  # pragma: no cover - must never run
        raise AssertionError("SpacyNounExtractor tried to download a model")

    fake = types.ModuleType("spacy")
    fake.load = load
    fake.cli = types.SimpleNamespace(download=download)
    monkeypatch.setitem(sys.modules, "spacy", fake)
    with pytest.raises(OSError, match="spacy download en_core_web_md"):
        SpacyNounExtractor("en_core_web_md")
    assert calls == ["en_core_web_md"]


def test_default_extractor_falls_back_and_is_cached(monkeypatch):
    def load(name, **kwargs):
        raise OSError("not installed")

    fake = types.ModuleType("spacy")
    fake.load = load
    monkeypatch.setitem(sys.modules, "spacy", fake)
    default_noun_extractor.cache_clear()
    try:
        extractor = default_noun_extractor()
        assert isinstance(extractor, HeuristicNounExtractor)
        assert default_noun_extractor() is extractor
        assert extractor("What color is the triangle?") == ["color", "triangle"]
    finally:
        default_noun_extractor.cache_clear()


def test_default_extractor_prefers_spacy_when_available(monkeypatch):
    fake = types.ModuleType("spacy")
    fake.load = lambda name, **kwargs: _FakeNlp()
    monkeypatch.setitem(sys.modules, "spacy", fake)
    default_noun_extractor.cache_clear()
    try:
        extractor = default_noun_extractor()
        assert isinstance(extractor, SpacyNounExtractor)
        assert extractor("Where are the dogs?") == ["dogs"]
    finally:
        default_noun_extractor.cache_clear()
