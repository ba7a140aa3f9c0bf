"""The training data of MiniLLaVA: questions and captions by image, the image order of
each epoch with the object-count curriculum, and the mix of sources in every step."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Sequence
from typing import Any

from prunekit.data import easyvqa, shapes

#: the user text of a caption sample (stage 1, and the captions kept in stage 2's mix)
CAPTION_PROMPT = "Describe the image."


@dataclasses.dataclass(frozen=True)
class QA:
    """One question about an image, its one-word answer and its kind (shapes only)."""

    question: str
    answer: str
    kind: str = ""


@dataclasses.dataclass
class Source:
    """One dataset split: images (loaded lazily), questions per image, answer set."""

    name: str
    images: list[Callable[[], Any]]
    qas: list[list[QA]]
    answers: tuple[str, ...]
    key: str  # cache key of the image list
    n_objects: list[int] | None = None  # objects per image (shapes scenes), for the curriculum

    @property
    def n_questions(self) -> int:
        """Questions over all images."""
        return sum(len(q) for q in self.qas)


def easyvqa_source(split: str, n_images: int, seed: int) -> Source:
    """The first ``n_images`` easy-VQA images of ``split`` (shuffled by ``seed``)."""
    items = easyvqa.load(split, n_images=n_images, seed=seed)
    return Source(
        name=f"easyvqa_{split}",
        images=[it.image for it in items],
        qas=[[QA(q.question, q.answer) for q in it.questions] for it in items],
        answers=easyvqa.ANSWERS,
        key=f"easyvqa-{split}-n{n_images}-s{seed}",
    )


def shapes_source(split: str, n_images: int, per_kind: int, seed: int) -> Source:
    """``n_images`` shapes scenes of ``split`` with ``per_kind`` questions of each kind."""
    items = shapes.dataset(split, n_images, per_kind=per_kind, seed=seed)
    return Source(
        name=f"shapes_{split}",
        images=[lambda s=it.scene: s.render() for it in items],
        qas=[[QA(q.question, q.answer, q.kind) for q in it.questions] for it in items],
        answers=shapes.ANSWERS,
        key=f"shapes-{split}-n{n_images}",
        n_objects=[len(it.scene.objects) for it in items],
    )


def caption_source(src: Source, split: str, n_images: int) -> Source:
    """The scenes of the shapes source ``src``, each with its caption as the one answer."""
    scenes = [shapes.generate(s) for s in shapes.scene_seeds(split, n_images)]
    return Source(
        name=f"captions_{split}",
        images=src.images,
        qas=[[QA(CAPTION_PROMPT, shapes.caption(sc))] for sc in scenes],
        answers=(),
        key=src.key,
        n_objects=src.n_objects,
    )


def objects_allowed(progress: float, curriculum: float) -> int:
    """The most objects a shapes scene may have at ``progress`` of stage 2: grows linearly
    from ``shapes.MIN_OBJECTS`` to ``shapes.MAX_OBJECTS`` over the first ``curriculum``."""
    if curriculum <= 0 or progress >= curriculum:
        return shapes.MAX_OBJECTS
    span = shapes.MAX_OBJECTS - shapes.MIN_OBJECTS
    return shapes.MIN_OBJECTS + int(span * progress / curriculum)


def next_image(
    src: Source, orders: dict[str, list[int]], rng: random.Random, most: int | None
) -> int:
    """The next image of ``src`` in its shuffled epoch order; with ``most``, the next one
    with at most ``most`` objects (the others stay in the order for later)."""
    order = orders.setdefault(src.name, [])
    allowed = (
        (lambda i: True)
        if most is None or src.n_objects is None
        else (lambda i: src.n_objects[i] <= most)
    )
    for attempt in range(2):
        for k in range(len(order) - 1, -1, -1):
            if allowed(order[k]):
                return order.pop(k)
        if attempt == 0:  # epoch exhausted (for this filter): a new shuffled pass
            order[:] = rng.sample(range(len(src.qas)), len(src.qas))
    raise RuntimeError(f"{src.name}: no image with at most {most} objects")


def stage2_mix(
    shapes_train: Source,
    easyvqa_train: Source,
    captions: Source,
    shapes_fraction: float,
    caption_fraction: float,
) -> tuple[list[Source], list[float]]:
    """Stage 2's sources and their shares of the images: shapes questions
    ``shapes_fraction - caption_fraction``, easy-VQA ``1 - shapes_fraction``, shapes
    captions ``caption_fraction`` (left out when 0)."""
    if not 0 <= caption_fraction <= shapes_fraction <= 1:
        raise ValueError(
            f"need 0 <= caption_fraction ({caption_fraction}) <= shapes_fraction "
            f"({shapes_fraction}) <= 1"
        )
    sources = [shapes_train, easyvqa_train]
    weights = [shapes_fraction - caption_fraction, 1 - shapes_fraction]
    if caption_fraction > 0:
        sources.append(captions)
        weights.append(caption_fraction)
    return sources, weights


@dataclasses.dataclass
class Batch:
    """One training step's draw: the resolution, the ``(source, image)`` picks and the
    ``(row in picks, question, answer)`` items."""

    resolution: int
    picks: list[tuple[Source, int]]
    items: list[tuple[int, str, str]]


def draw_batch(
    rng: random.Random,
    sources: Sequence[Source],
    weights: Sequence[float],
    orders: dict[str, list[int]],
    resolutions: Sequence[int],
    n_images: int,
    questions_per_image: int,
    most: int | None = None,
) -> Batch:
    """One step's data: a resolution, ``n_images`` images each from a source drawn by
    ``weights`` (the next of its epoch order, at most ``most`` objects), and up to
    ``questions_per_image`` of each image's questions, all drawn from ``rng``."""
    if n_images < 1 or questions_per_image < 1:
        raise ValueError(
            f"n_images ({n_images}) and questions_per_image ({questions_per_image}) must be >= 1"
        )
    res = rng.choice(resolutions)
    picks = []
    for _ in range(n_images):
        src = rng.choices(sources, weights)[0]
        picks.append((src, next_image(src, orders, rng, most)))
    items = []
    for j, (src, i) in enumerate(picks):
        chosen = rng.sample(src.qas[i], min(questions_per_image, len(src.qas[i])))
        items += [(j, qa.question, qa.answer) for qa in chosen]
    return Batch(res, picks, items)
