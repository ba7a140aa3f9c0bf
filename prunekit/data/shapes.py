"""shapes: a procedural multi-object VQA set, deterministic from a seed.

Every image is a ``224 x 224`` scene of 3 to 8 non-overlapping objects (five shapes, six
colours, two sizes) on a pale textured background. Questions target one object (or one
kind of object) among several, and every answer is a single word:

===========  ==========================================  =========================
kind         question                                    answers
===========  ==========================================  =========================
``color``    "What color is the triangle?" /             a colour
             "What color is the small triangle?"
``shape``    "What shape is the green object?" /         a shape
             "What shape is the large green object?"
``exists``   "Is there a red circle?"                    ``yes`` / ``no``
``count``    "How many squares are there?"               ``0`` ... ``4``
===========  ==========================================  =========================

Everything is computed from the :class:`Scene` description (the objects' shape, colour,
size and box), never from pixels, so answers are correct by construction; the image is
rendered from the same description (:meth:`Scene.render`). A question's ``target`` names
the objects it is about (indices into ``scene.objects``), e.g. to score how well a
pruner keeps the tokens of the asked-about object.

Determinism and splits: :func:`generate` depends on its seed only (Python's
``random.Random`` and NumPy's PCG64). :func:`dataset` draws scene seeds from disjoint
ranges per split (:data:`SEED_RANGES`), so train and test never share a scene seed, and
its question choice is greedy-balanced per kind (each question picks, among the scene's
candidates of that kind, the answer asked least so far), prefix-stable: the first ``n``
items of a larger dataset are the dataset of ``n`` items.

:func:`caption` writes one caption per scene ("Four objects on a striped background: a
large red circle at the top left, ...") for LLaVA's stage-1 caption alignment.
"""

from __future__ import annotations

import functools
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

__all__ = [
    "ANSWERS",
    "BACKGROUNDS",
    "COLORS",
    "COUNT_ANSWERS",
    "IMAGE_SIZE",
    "KINDS",
    "KIND_ANSWERS",
    "MAX_OBJECTS",
    "MAX_PER_SHAPE",
    "MIN_OBJECTS",
    "SEED_RANGES",
    "SHAPES",
    "SIZES",
    "YES_NO",
    "Item",
    "Obj",
    "Question",
    "Scene",
    "answer_index",
    "caption",
    "dataset",
    "generate",
    "object_patches",
    "questions",
    "scene_seeds",
]

#: side of a scene in pixels
IMAGE_SIZE = 224
#: the fewest and most objects in a scene
MIN_OBJECTS, MAX_OBJECTS = 3, 8
#: no shape appears more than this many times in a scene (count answers are 0..4)
MAX_PER_SHAPE = 4

#: the object shapes
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross")
#: saturated object colours (RGB); backgrounds are pale and unsaturated, so they never clash
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 150, 50),
    "blue": (35, 70, 225),
    "yellow": (235, 195, 0),
    "purple": (135, 45, 185),
    "orange": (245, 125, 10),
}
#: side length range (pixels, inclusive) of each size class; the two never overlap
SIZES: dict[str, tuple[int, int]] = {"small": (24, 32), "large": (46, 58)}
#: background textures, drawn in pale colours
BACKGROUNDS: tuple[str, ...] = ("noise", "stripes", "checker", "dots", "waves")
_BACKGROUND_WORDS = {
    "noise": "mottled",
    "stripes": "striped",
    "checker": "checkered",
    "dots": "dotted",
    "waves": "wavy",
}

#: question kinds
KINDS: tuple[str, ...] = ("color", "shape", "exists", "count")
#: answers of count questions ("0" to ``MAX_PER_SHAPE``)
COUNT_ANSWERS: tuple[str, ...] = tuple(str(i) for i in range(MAX_PER_SHAPE + 1))
#: answers of existence questions
YES_NO: tuple[str, ...] = ("yes", "no")
#: every answer a shapes question can have (one word each)
ANSWERS: tuple[str, ...] = (*COLORS, *SHAPES, *YES_NO, *COUNT_ANSWERS)
#: answers of each question kind
KIND_ANSWERS: dict[str, tuple[str, ...]] = {
    "color": tuple(COLORS),
    "shape": SHAPES,
    "exists": YES_NO,
    "count": COUNT_ANSWERS,
}

#: disjoint scene-seed ranges ``[start, stop)`` of the splits
SEED_RANGES: dict[str, tuple[int, int]] = {
    "train": (0, 1_000_000),
    "test": (1_000_000, 2_000_000),
}

_MARGIN = 4  # pixels between objects, and between an object and the image border
_PLURALS = {"cross": "crosses"}
_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight")

Kind = Literal["color", "shape", "exists", "count"]
Split = Literal["train", "test"]


@dataclass(frozen=True)
class Obj:
    """One object of a scene.

    Attributes:
        shape: one of :data:`SHAPES`.
        color: one of :data:`COLORS`.
        size: ``"small"`` or ``"large"`` (:data:`SIZES`).
        box: ``(x0, y0, x1, y1)`` in pixels, half-open: the object covers columns
            ``x0 .. x1 - 1`` and rows ``y0 .. y1 - 1`` of the image, and its pixel at
            :attr:`center` has exactly its colour.
    """

    shape: str
    color: str
    size: str
    box: tuple[int, int, int, int]

    @property
    def center(self) -> tuple[int, int]:
        """``(x, y)`` of a pixel inside the drawn shape (the box centre)."""
        x0, y0, x1, y1 = self.box
        return (x0 + x1) // 2, (y0 + y1) // 2

    @property
    def phrase(self) -> str:
        """``"small red triangle"``."""
        return f"{self.size} {self.color} {self.shape}"


@dataclass(frozen=True)
class Scene:
    """The full description of one image; :meth:`render` draws it.

    Attributes:
        seed: the seed :func:`generate` built it from.
        objects: the objects, in drawing order (they never overlap).
        background: one of :data:`BACKGROUNDS`.
        background_colors: the two pale RGB colours of the texture.
        size: image side in pixels.
    """

    seed: int
    objects: tuple[Obj, ...]
    background: str
    background_colors: tuple[tuple[int, int, int], tuple[int, int, int]]
    size: int = IMAGE_SIZE

    def render(self) -> Image.Image:
        """The scene as a fresh RGB PIL image."""
        return _render(self)

    @functools.cached_property
    def image(self) -> Image.Image:
        """The rendered image (drawn once per scene object and cached; do not mutate it)."""
        return self.render()

    def count(self, *, shape: str | None = None, color: str | None = None) -> int:
        """How many objects have this shape and/or colour."""
        return len(self.find(shape=shape, color=color))

    def find(
        self, *, shape: str | None = None, color: str | None = None, size: str | None = None
    ) -> tuple[int, ...]:
        """Indices of the objects matching every given attribute."""
        return tuple(
            i
            for i, o in enumerate(self.objects)
            if (shape is None or o.shape == shape)
            and (color is None or o.color == color)
            and (size is None or o.size == size)
        )


@dataclass(frozen=True)
class Question:
    """A question about a scene with its one-word answer.

    Attributes:
        question: the question text, e.g. ``"What color is the triangle?"``.
        answer: one of :data:`ANSWERS`.
        kind: one of :data:`KINDS`.
        target: indices (into ``scene.objects``) of the objects the question is about:
            the one object for ``color`` / ``shape``, the matching objects for
            ``exists`` (empty when the answer is ``no``) and ``count`` (empty for ``0``).
    """

    question: str
    answer: str
    kind: str
    target: tuple[int, ...]


@dataclass(frozen=True)
class Item:
    """One image of a :func:`dataset` with the questions asked about it."""

    scene: Scene
    questions: tuple[Question, ...]


# --------------------------------------------------------------------------- generation


def _place(rng: random.Random, side: int, placed: list[tuple[int, int, int, int]], size: int):
    """A random box of ``side`` pixels not within ``_MARGIN`` of ``placed``, or None."""
    lo, hi = _MARGIN, size - _MARGIN - side
    for _ in range(100):
        x0, y0 = rng.randint(lo, hi), rng.randint(lo, hi)
        box = (x0, y0, x0 + side, y0 + side)
        if all(
            box[0] >= b[2] + _MARGIN
            or b[0] >= box[2] + _MARGIN
            or box[1] >= b[3] + _MARGIN
            or b[1] >= box[3] + _MARGIN
            for b in placed
        ):
            return box
    return None


def _pale_colors(rng: random.Random) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """Two pale, unsaturated colours of one hue (saturation <= 0.2, value >= 0.7)."""
    import colorsys

    hue = rng.random()
    sat = rng.uniform(0.03, 0.2)
    v1 = rng.uniform(0.86, 0.97)
    v2 = v1 - rng.uniform(0.08, 0.16)

    def rgb(s: float, v: float) -> tuple[int, int, int]:
        r, g, b = colorsys.hsv_to_rgb(hue, s, v)
        return round(r * 255), round(g * 255), round(b * 255)

    return rgb(sat, v1), rgb(min(sat * 1.3, 0.2), v2)


def generate(seed: int, *, size: int = IMAGE_SIZE) -> Scene:
    """The scene of ``seed``: 3 to 8 objects on a textured background.

    One shape (the "focus" shape) appears 1 to 4 times (uniformly, capped by the object
    count) so that count questions have balanced answers; the other objects draw their
    shape from the four remaining shapes (at most :data:`MAX_PER_SHAPE` of each).
    Colours and sizes are uniform. Objects never overlap and keep a margin.
    """
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    rng = random.Random(int(seed))
    while True:  # a rejected layout draws a new one from the same stream: still deterministic
        n = rng.randint(MIN_OBJECTS, MAX_OBJECTS)
        focus = rng.choice(SHAPES)
        focus_count = rng.randint(1, min(MAX_PER_SHAPE, n))
        shapes = [focus] * focus_count
        others = [s for s in SHAPES if s != focus]
        counts = Counter(shapes)
        while len(shapes) < n:
            shape = rng.choice(others)
            if counts[shape] < MAX_PER_SHAPE:
                shapes.append(shape)
                counts[shape] += 1
        rng.shuffle(shapes)
        objects: list[Obj] = []
        boxes: list[tuple[int, int, int, int]] = []
        for shape in shapes:
            size_name = rng.choice(tuple(SIZES))
            side = rng.randint(*SIZES[size_name])
            box = _place(rng, side, boxes, size)
            if box is None:
                break
            boxes.append(box)
            objects.append(Obj(shape, rng.choice(tuple(COLORS)), size_name, box))
        if len(objects) == n:
            break
    background = rng.choice(BACKGROUNDS)
    return Scene(
        seed=int(seed),
        objects=tuple(objects),
        background=background,
        background_colors=_pale_colors(rng),
        size=size,
    )


# --------------------------------------------------------------------------- rendering


def _texture(scene: Scene) -> np.ndarray:
    """``(size, size)`` float mix weights in [0, 1] between the two background colours."""
    s = scene.size
    rng = np.random.default_rng(scene.seed)
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    kind = scene.background
    if kind == "noise":
        from PIL import Image

        cells = int(rng.integers(6, 16))
        low = (rng.random((cells, cells)) * 255).astype(np.uint8)
        up = Image.fromarray(low).resize((s, s), Image.Resampling.BICUBIC)
        return np.asarray(up, dtype=np.float32) / 255.0
    if kind == "stripes":
        period = float(rng.integers(10, 24))
        angle = float(rng.uniform(0, np.pi))
        u = xx * np.cos(angle) + yy * np.sin(angle)
        return ((u // (period / 2)) % 2).astype(np.float32)
    if kind == "checker":
        cell = int(rng.integers(8, 28))
        return (((xx // cell) + (yy // cell)) % 2).astype(np.float32)
    if kind == "dots":
        period = int(rng.integers(10, 20))
        radius = period * float(rng.uniform(0.15, 0.3))
        dx = (xx % period) - period / 2
        dy = (yy % period) - period / 2
        return (dx * dx + dy * dy <= radius * radius).astype(np.float32)
    if kind == "waves":
        period = float(rng.uniform(14, 36))
        amp = float(rng.uniform(3, 10))
        return 0.5 + 0.5 * np.sin(2 * np.pi * (yy + amp * np.sin(2 * np.pi * xx / 40)) / period)
    raise ValueError(f"unknown background {kind!r}")


def _polygon(shape: str, box: tuple[int, int, int, int]) -> list[tuple[float, float]] | None:
    x0, y0, x1, y1 = box
    w, h = x1 - 1 - x0, y1 - 1 - y0  # PIL polygons include their last row / column
    cx, cy = x0 + w / 2, y0 + h / 2
    if shape == "triangle":
        return [(x0, y0 + h), (x0 + w, y0 + h), (cx, y0)]
    if shape == "star":
        points = []
        for k in range(10):
            r = (w / 2) if k % 2 == 0 else (w / 2) * 0.45
            a = -np.pi / 2 + k * np.pi / 5
            points.append((cx + r * np.cos(a), cy + 0.06 * h + r * np.sin(a)))
        return points
    if shape == "cross":
        t = w / 6  # arm half-width: arms are a third of the side
        return [
            (cx - t, y0),
            (cx + t, y0),
            (cx + t, cy - t),
            (x0 + w, cy - t),
            (x0 + w, cy + t),
            (cx + t, cy + t),
            (cx + t, y0 + h),
            (cx - t, y0 + h),
            (cx - t, cy + t),
            (x0, cy + t),
            (x0, cy - t),
            (cx - t, cy - t),
        ]
    return None


def _render(scene: Scene) -> Image.Image:
    from PIL import Image, ImageDraw

    mix = _texture(scene)[..., None]
    c1 = np.asarray(scene.background_colors[0], dtype=np.float32)
    c2 = np.asarray(scene.background_colors[1], dtype=np.float32)
    pixels = np.clip(np.rint(c1 * (1 - mix) + c2 * mix), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        fill = COLORS[obj.color]
        x0, y0, x1, y1 = obj.box
        if obj.shape == "circle":
            draw.ellipse((x0, y0, x1 - 1, y1 - 1), fill=fill)
        elif obj.shape == "square":
            draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=fill)
        else:
            draw.polygon(_polygon(obj.shape, obj.box), fill=fill)
    return image


def object_patches(obj: Obj, grid: int, *, size: int = IMAGE_SIZE) -> np.ndarray:
    """``(grid * grid,)`` bool, row-major: the patches of a ``grid x grid`` token grid that
    overlap the object's box (e.g. ``grid=16`` for DINOv2 at 224 px)."""
    cell = size / grid
    x0, y0, x1, y1 = obj.box
    cols = np.arange(grid)
    in_x = (cols * cell < x1) & ((cols + 1) * cell > x0)
    in_y = (cols * cell < y1) & ((cols + 1) * cell > y0)
    return (in_y[:, None] & in_x[None, :]).reshape(-1)


# --------------------------------------------------------------------------- questions


def _plural(shape: str) -> str:
    return _PLURALS.get(shape, shape + "s")


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def questions(scene: Scene) -> list[Question]:
    """Every valid question about ``scene``, in a fixed order (kind by kind).

    * ``color``: about an object named by its shape when the shape is unique in the
      scene, else by size and shape when that pair is unique;
    * ``shape``: about an object named by its colour when unique, else by size and colour;
    * ``exists``: ``yes`` for every colour-shape pair present; ``no`` for every absent
      pair (listed first: pairs whose colour and shape both occur in the scene, on other
      objects -- the hard negatives);
    * ``count``: for every shape, including absent ones (answer ``0``).
    """
    objs = scene.objects
    out: list[Question] = []
    for shape in SHAPES:
        found = scene.find(shape=shape)
        if len(found) == 1:
            out.append(
                Question(f"What color is the {shape}?", objs[found[0]].color, "color", found)
            )
        elif len(found) > 1:
            for size in SIZES:
                one = scene.find(shape=shape, size=size)
                if len(one) == 1:
                    out.append(
                        Question(
                            f"What color is the {size} {shape}?", objs[one[0]].color, "color", one
                        )
                    )
    for color in COLORS:
        found = scene.find(color=color)
        if len(found) == 1:
            out.append(
                Question(f"What shape is the {color} object?", objs[found[0]].shape, "shape", found)
            )
        elif len(found) > 1:
            for size in SIZES:
                one = scene.find(color=color, size=size)
                if len(one) == 1:
                    out.append(
                        Question(
                            f"What shape is the {size} {color} object?",
                            objs[one[0]].shape,
                            "shape",
                            one,
                        )
                    )
    present_colors = {o.color for o in objs}
    present_shapes = {o.shape for o in objs}
    hard_no, easy_no, yes = [], [], []
    for color in COLORS:
        for shape in SHAPES:
            found = scene.find(shape=shape, color=color)
            text = f"Is there {_article(color)} {color} {shape}?"
            if found:
                yes.append(Question(text, "yes", "exists", found))
            elif color in present_colors and shape in present_shapes:
                hard_no.append(Question(text, "no", "exists", ()))
            else:
                easy_no.append(Question(text, "no", "exists", ()))
    out += yes + hard_no + easy_no
    for shape in SHAPES:
        found = scene.find(shape=shape)
        out.append(
            Question(f"How many {_plural(shape)} are there?", str(len(found)), "count", found)
        )
    return out


# --------------------------------------------------------------------------- captions


def _where(obj: Obj, size: int) -> str:
    cx, cy = obj.center
    col = min(int(3 * cx / size), 2)
    row = min(int(3 * cy / size), 2)
    vertical = ("top", "middle", "bottom")[row]
    horizontal = ("left", "center", "right")[col]
    if row == 1 and col == 1:
        return "in the center"
    if row == 1:
        return f"on the {horizontal}"
    if col == 1:
        return f"at the {vertical}"
    return f"at the {vertical} {horizontal}"


def caption(scene: Scene) -> str:
    """A one-sentence description naming every object with its size, colour, shape and
    rough position (3 x 3 grid), in reading order (rows of the grid top to bottom, then
    left to right), e.g. ``"Three objects on a striped background: a large red circle at
    the top left, a small blue star in the center and a small green cross at the bottom
    right."``"""

    def key(obj: Obj) -> tuple[int, int]:
        cx, cy = obj.center
        return min(int(3 * cy / scene.size), 2), cx

    parts = [
        f"{_article(o.size)} {o.phrase} {_where(o, scene.size)}"
        for o in sorted(scene.objects, key=key)
    ]
    listed = ", ".join(parts[:-1]) + " and " + parts[-1]
    n = _NUMBER_WORDS[len(scene.objects)].capitalize()
    return f"{n} objects on a {_BACKGROUND_WORDS[scene.background]} background: {listed}."


# --------------------------------------------------------------------------- datasets


def scene_seeds(split: Split, n_images: int, *, offset: int = 0) -> range:
    """The scene seeds of images ``offset .. offset + n_images - 1`` of ``split``."""
    if split not in SEED_RANGES:
        raise ValueError(f"split must be one of {sorted(SEED_RANGES)}, got {split!r}")
    if n_images < 0 or offset < 0:
        raise ValueError("n_images and offset must be >= 0")
    start, stop = SEED_RANGES[split]
    if start + offset + n_images > stop:
        raise ValueError(f"split {split!r} has {stop - start} scene seeds")
    return range(start + offset, start + offset + n_images)


def dataset(
    split: Split = "train",
    n_images: int = 1000,
    *,
    offset: int = 0,
    per_kind: int = 1,
    kinds: Sequence[str] = KINDS,
    seed: int = 0,
) -> list[Item]:
    """``n_images`` scenes of ``split`` with ``per_kind`` questions of each kind per scene.

    Questions are chosen greedy-balanced: within a kind, each pick takes a candidate whose
    answer was asked least so far in this dataset (ties broken by a ``random.Random(seed)``
    stream), so answers are as uniform as the scenes allow; the same question is never
    asked twice about a scene. Prefix-stable: ``dataset(n=k)`` are the first ``k`` items of
    ``dataset(n=m)`` for ``m >= k`` (same other arguments). With the defaults an image gets
    about 4 questions (a few scenes have no valid ``color`` or ``shape`` question): 600
    test images give about 2,370.
    """
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown question kinds {sorted(unknown)}; choose from {KINDS}")
    if per_kind < 1:
        raise ValueError(f"per_kind must be >= 1, got {per_kind}")
    rng = random.Random(seed)
    asked: dict[str, Counter] = {k: Counter() for k in kinds}
    items = []
    for scene_seed in scene_seeds(split, n_images, offset=offset):
        scene = generate(scene_seed)
        candidates = questions(scene)
        chosen: list[Question] = []
        for kind in kinds:
            pool = [q for q in candidates if q.kind == kind]
            for _ in range(min(per_kind, len(pool))):
                least = min(asked[kind][q.answer] for q in pool)
                best = [q for q in pool if asked[kind][q.answer] == least]
                pick = best[rng.randrange(len(best))]
                pool.remove(pick)
                asked[kind][pick.answer] += 1
                chosen.append(pick)
        items.append(Item(scene, tuple(chosen)))
    return items


@functools.lru_cache(maxsize=1)
def _answer_index() -> dict[str, int]:
    return {a: i for i, a in enumerate(ANSWERS)}


def answer_index(answer: str) -> int:
    """Position of ``answer`` in :data:`ANSWERS`."""
    return _answer_index()[answer]
