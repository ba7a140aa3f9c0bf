"""VQA data sets for ablations: the ``data`` config group's loaders.

Each loader returns a :class:`VQADataset`, a fixed list of samples (image,
question, gold answer) and the closed set of answers; :func:`benchmark` reads a local
copy of a standard benchmark (VQAv2, TextVQA, GQA, ScienceQA-IMG, MMBench, POPE). Loaders are deterministic:
the same config gives the same samples, in the same order, on every machine.
A new data set is a function returning a :class:`VQADataset` and a YAML file in
a ``data`` config folder naming it as ``_target_``.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from PIL import Image, ImageDraw

#: easy-VQA's shapes and colours (RGB), also used by the generated tiny set
SHAPES = ("circle", "rectangle", "triangle")
#: colour names to RGB values
COLORS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 70, 220),
    "yellow": (235, 210, 40),
    "teal": (40, 160, 160),
    "brown": (130, 80, 30),
    "gray": (128, 128, 128),
    "black": (10, 10, 10),
}


@dataclass(frozen=True)
class Sample:
    """One question about one image.

    ``image`` is a PIL image, or a function returning one (benchmarks read their
    images when asked: :meth:`get_image`). ``prompt`` is the text the model is asked
    (``None``: the question); benchmark samples carry the human ``answers`` (VQA) or
    the ``options`` (multiple choice) their metric needs.
    """

    id: str
    image: Any = field(repr=False)
    question: str
    answer: str
    answers: tuple[str, ...] = ()
    options: tuple[str, ...] = ()
    prompt: str | None = None

    @property
    def query(self) -> str:
        """What the model is asked: :attr:`prompt`, else :attr:`question`."""
        return self.question if self.prompt is None else self.prompt

    def get_image(self) -> Image.Image:
        """The image (read now when :attr:`image` is a function)."""
        return self.image() if callable(self.image) else self.image


#: how each data set family scores an answer (:func:`prunekit.experiments.bench.score`)
METRICS = {
    "exact": "exact match after lower-casing and removing punctuation",
    "vqa": "VQA accuracy (prunekit.metrics.vqa_accuracy)",
    "gqa": "exact match (prunekit.metrics.exact_match)",
    "mc": "option letter (prunekit.metrics.parse_choice) equals the answer",
    "pope": "yes/no (prunekit.metrics.parse_yes_no) equals the label; pope_scores",
}


@dataclass
class VQADataset:
    """Samples and the closed answer set (what ``bench.closed_answers`` decodes).

    ``family`` says how answers are scored (:data:`METRICS`). Benchmarks (``vqa``,
    ``gqa``, ``mc``, ``pope``) are open-ended: their ``answers`` is empty, so they are
    always decoded freely and scored by their official metric.
    """

    name: str
    samples: list[Sample]
    answers: list[str]
    family: str = "exact"
    #: ``vqa``: normalise the human answers too (TextVQA, VizWiz; see ``vqa_accuracy``)
    normalize_answers: bool = False

    def __len__(self) -> int:
        return len(self.samples)


def draw_shape(shape: str, color: str, image_size: int, rng: random.Random) -> Image.Image:
    """One ``shape`` in ``color`` at a random place and size on a white square."""
    image = Image.new("RGB", (image_size, image_size), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    side = rng.randint(image_size // 3, image_size * 2 // 3)
    x0 = rng.randint(0, image_size - side)
    y0 = rng.randint(0, image_size - side)
    box = (x0, y0, x0 + side - 1, y0 + side - 1)
    fill = COLORS[color]
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "rectangle":
        draw.rectangle((x0, y0 + side // 4, x0 + side - 1, y0 + 3 * side // 4), fill=fill)
    else:
        draw.polygon(
            [(x0 + side // 2, y0), (x0, y0 + side - 1), (x0 + side - 1, y0 + side - 1)], fill=fill
        )
    return image


def tiny(n_samples: int = 8, image_size: int = 64, seed: int = 0) -> VQADataset:
    """``n_samples`` generated pictures, each with a shape, a colour or a yes/no question."""
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    rng = random.Random(seed)
    samples = []
    for i in range(n_samples):
        shape, color = rng.choice(SHAPES), rng.choice(sorted(COLORS))
        image = draw_shape(shape, color, image_size, rng)
        kind = i % 3
        if kind == 0:
            question, answer = "what shape is in the image?", shape
        elif kind == 1:
            question, answer = f"what color is the {shape}?", color
        else:
            asked = rng.choice(SHAPES)
            question, answer = (
                f"is there a {asked} in the image?",
                "yes" if asked == shape else "no",
            )
        samples.append(Sample(id=f"tiny-{i}", image=image, question=question, answer=answer))
    answers = sorted({*SHAPES, *COLORS, "yes", "no"})
    return VQADataset(name="tiny", samples=samples, answers=answers)


def easyvqa(split: str = "test", n_samples: int = 200, seed: int = 0) -> VQADataset:
    """A seeded subset of easy-VQA (``pip install easy-vqa``; images ship in the package).

    The subset is ``n_samples`` question indices drawn without replacement with
    ``random.Random(seed)``, in ascending order.
    """
    import easy_vqa

    if split == "test":
        questions, answers, image_ids = easy_vqa.get_test_questions()
        paths = easy_vqa.get_test_image_paths()
    elif split == "train":
        questions, answers, image_ids = easy_vqa.get_train_questions()
        paths = easy_vqa.get_train_image_paths()
    else:
        raise ValueError(f"easy-VQA split must be 'train' or 'test', got {split!r}")
    if not 1 <= n_samples <= len(questions):
        raise ValueError(f"n_samples must be in [1, {len(questions)}] for split {split!r}")
    picked = sorted(random.Random(seed).sample(range(len(questions)), n_samples))
    images: dict[int, Image.Image] = {}
    samples = []
    for i in picked:
        image_id = image_ids[i]
        if image_id not in images:
            with Image.open(paths[image_id]) as file:
                images[image_id] = file.convert("RGB")
        samples.append(
            Sample(
                id=f"easyvqa-{split}-{i}",
                image=images[image_id],
                question=questions[i],
                answer=answers[i],
            )
        )
    return VQADataset(name="easyvqa", samples=samples, answers=list(easy_vqa.get_answers()))


def shapes(
    split: str = "test", n_images: int = 100, per_kind: int = 1, seed: int = 0
) -> VQADataset:
    """The first ``n_images`` scenes of a split of :mod:`prunekit.data.shapes`, every question.

    ``per_kind`` questions of each kind per scene (colour, shape, exists, count; a few
    scenes have no valid colour or shape question), chosen as
    :func:`prunekit.data.shapes.dataset` does: about four questions per image. Prefix-stable:
    a smaller ``n_images`` gives the first samples of a larger one.
    """
    from prunekit.data import shapes as shapes_data

    if n_images < 1:
        raise ValueError(f"n_images must be >= 1, got {n_images}")
    items = shapes_data.dataset(split, n_images, per_kind=per_kind, seed=seed)
    samples = [
        Sample(
            id=f"shapes-{split}-{item.scene.seed}-{j}",
            image=item.scene.image,
            question=q.question,
            answer=q.answer,
        )
        for item in items
        for j, q in enumerate(item.questions)
    ]
    return VQADataset(name="shapes", samples=samples, answers=list(shapes_data.ANSWERS))


def benchmark(
    family: str,
    path: str,
    split: str | None = None,
    image_root: str | None = None,
    image_file: str | None = None,
    n_samples: int | None = None,
    prompt_suffix: str | None = None,
    normalize_answers: bool = False,
    columns: Mapping[str, str | None] | None = None,
    name: str | None = None,
) -> VQADataset:
    """A local copy of a standard benchmark (:func:`prunekit.data.benchmarks.load`), scored
    by its family's metric; ``name`` (default: the family) is what the records call it."""
    from prunekit.data import benchmarks

    questions = benchmarks.load(
        family,
        path,
        split=split,
        image_root=image_root,
        image_file=image_file,
        n_samples=n_samples,
        prompt_suffix=prompt_suffix,
        columns=dict(columns or {}),
    )
    samples = [
        Sample(
            id=q.id,
            image=q.image,
            question=q.question,
            answer=q.answer,
            answers=q.answers,
            options=q.options,
            prompt=q.prompt,
        )
        for q in questions
    ]
    return VQADataset(
        name=name or family,
        samples=samples,
        answers=[],
        family=family,
        normalize_answers=normalize_answers,
    )
