"""easy-VQA, read deterministically from the ``easy-vqa`` package (PyPI, offline).

easy-VQA (Victor Zhou) has 64 x 64 images of one shape (circle, rectangle, triangle) in
one of eight colours, 4,000 training images with 38,575 questions and 1,000 test images
with 9,673 questions, and 13 one-word answers (about 74 % of them ``yes`` / ``no``). This
module groups the questions by image and draws deterministic subsets of images.

Example::

    items = load("test", n_images=200)        # 200 test images, all their questions
    items[0].image()                           # PIL RGB 64 x 64
    items[0].questions[0]                      # EasyVQAQuestion("what is the blue shape?", ...)
"""

from __future__ import annotations

import functools
import importlib.util
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from PIL import Image

__all__ = [
    "ANSWERS",
    "COLORS",
    "SHAPES",
    "EasyVQAItem",
    "EasyVQAQuestion",
    "answers",
    "available",
    "load",
]

#: the 13 answers, in the order of the package's ``answers.txt`` (checked by the tests)
ANSWERS: tuple[str, ...] = (
    "circle",
    "green",
    "red",
    "gray",
    "yes",
    "teal",
    "black",
    "rectangle",
    "yellow",
    "triangle",
    "brown",
    "blue",
    "no",
)
#: the shapes of easy-VQA
SHAPES: tuple[str, ...] = ("circle", "rectangle", "triangle")
#: the colours of easy-VQA
COLORS: tuple[str, ...] = ("red", "green", "blue", "black", "gray", "teal", "brown", "yellow")

_INSTALL_HINT = "pip install easy-vqa"

Split = Literal["train", "test"]


@dataclass(frozen=True)
class EasyVQAQuestion:
    """One question with its answer; ``kind`` is ``"shape"``, ``"color"`` or ``"yes_no"``."""

    question: str
    answer: str
    kind: str


@dataclass(frozen=True)
class EasyVQAItem:
    """One image with every question the split asks about it (in the package's order)."""

    image_id: int
    image_path: str
    questions: tuple[EasyVQAQuestion, ...]

    def image(self) -> Image.Image:
        """The image as an RGB PIL image."""
        from PIL import Image

        with Image.open(self.image_path) as im:
            return im.convert("RGB")


def available() -> bool:
    """Whether the ``easy-vqa`` package is installed."""
    return importlib.util.find_spec("easy_vqa") is not None


def _module():
    try:
        import easy_vqa
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            f"easy-VQA data comes from the 'easy-vqa' package: `{_INSTALL_HINT}`.",
            name="easy_vqa",
        ) from exc
    return easy_vqa


def answers() -> tuple[str, ...]:
    """The answers as the installed package lists them."""
    return tuple(_module().get_answers())


def _kind(answer: str) -> str:
    if answer in ("yes", "no"):
        return "yes_no"
    return "shape" if answer in SHAPES else "color"


@functools.lru_cache(maxsize=2)
def _split(split: Split) -> tuple[EasyVQAItem, ...]:
    """Every image of ``split`` with its questions, by ascending image id."""
    m = _module()
    if split == "train":
        texts, answers_, ids = m.get_train_questions()
        paths = m.get_train_image_paths()
    else:
        texts, answers_, ids = m.get_test_questions()
        paths = m.get_test_image_paths()
    grouped: dict[int, list[EasyVQAQuestion]] = {int(i): [] for i in paths}
    for text, answer, image_id in zip(texts, answers_, ids):
        grouped[int(image_id)].append(EasyVQAQuestion(text, answer, _kind(answer)))
    return tuple(
        EasyVQAItem(image_id, str(paths[image_id]), tuple(qs))
        for image_id, qs in sorted(grouped.items())
        if qs
    )


def load(
    split: Split = "train",
    n_images: int | None = None,
    *,
    seed: int = 0,
    max_questions_per_image: int | None = None,
) -> list[EasyVQAItem]:
    """Images of ``split`` with their questions, deterministically.

    Args:
        split: ``"train"`` or ``"test"`` (the package's own split).
        n_images: ``None`` for every image, in ascending id order; else a subset of that
            many images drawn with ``random.Random(seed)``, returned in ascending id order.
            Subsets of one seed are nested: ``n`` images are among the ``m > n`` images.
        seed: the subset's seed.
        max_questions_per_image: keep at most this many questions per image (the first
            ones, in the package's order).
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    items = _split(split)
    if n_images is not None:
        if not 0 <= n_images <= len(items):
            raise ValueError(f"n_images must be in [0, {len(items)}] for {split}, got {n_images}")
        order = list(range(len(items)))
        random.Random(seed).shuffle(order)
        items = tuple(items[i] for i in sorted(order[:n_images]))
    if max_questions_per_image is not None:
        items = tuple(
            EasyVQAItem(it.image_id, it.image_path, it.questions[:max_questions_per_image])
            for it in items
        )
    return list(items)
