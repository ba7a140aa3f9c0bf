"""The shapes VQA generator (and the easy-VQA loader): deterministic, correct by construction."""

from __future__ import annotations

import hashlib
import re
from collections import Counter

import numpy as np
import pytest

from prunekit.data import easyvqa, shapes
from prunekit.data.shapes import (
    ANSWERS,
    COLORS,
    KIND_ANSWERS,
    KINDS,
    MAX_OBJECTS,
    MAX_PER_SHAPE,
    MIN_OBJECTS,
    SEED_RANGES,
    SHAPES,
    SIZES,
    Scene,
    caption,
    dataset,
    generate,
    object_patches,
    questions,
    scene_seeds,
)

SEEDS = [*range(60), *range(1_000_000, 1_000_060)]


def image_hash(scene: Scene) -> str:
    return hashlib.sha256(np.asarray(scene.render()).tobytes()).hexdigest()


# --------------------------------------------------------------------------- determinism


def test_generate_is_deterministic():
    for seed in (0, 7, 1_000_123):
        a, b = generate(seed), generate(seed)
        assert a == b
        assert image_hash(a) == image_hash(b)
        assert questions(a) == questions(b)
        assert caption(a) == caption(b)


def test_seeds_give_different_scenes():
    scenes = [generate(s) for s in range(50)]
    assert len({s.objects for s in scenes}) == 50
    assert len({image_hash(s) for s in scenes[:20]}) == 20


def test_dataset_is_deterministic_and_prefix_stable():
    a = dataset("test", 40)
    assert a == dataset("test", 40)
    assert a[:25] == dataset("test", 25)
    assert dataset("test", 40, seed=1) != a  # the tie-breaking stream differs


def test_bad_seed_and_split():
    with pytest.raises(ValueError):
        generate(-1)
    with pytest.raises(ValueError):
        scene_seeds("val", 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        scene_seeds("train", SEED_RANGES["train"][1] + 1)


# --------------------------------------------------------------------------- scenes


@pytest.mark.parametrize("seed", SEEDS[::3])
def test_scene_constraints(seed):
    scene = generate(seed)
    objs = scene.objects
    assert MIN_OBJECTS <= len(objs) <= MAX_OBJECTS
    assert max(Counter(o.shape for o in objs).values()) <= MAX_PER_SHAPE
    for i, o in enumerate(objs):
        assert o.shape in SHAPES and o.color in COLORS and o.size in SIZES
        x0, y0, x1, y1 = o.box
        assert 0 <= x0 < x1 <= scene.size and 0 <= y0 < y1 <= scene.size
        lo, hi = SIZES[o.size]
        assert lo <= x1 - x0 <= hi and x1 - x0 == y1 - y0
        for p in objs[i + 1 :]:  # boxes never overlap
            assert x1 <= p.box[0] or p.box[2] <= x0 or y1 <= p.box[1] or p.box[3] <= y0


@pytest.mark.parametrize("seed", SEEDS[::6])
def test_render_matches_description(seed):
    """Object colours appear only inside boxes of objects of that colour, and fill them."""
    scene = generate(seed)
    pixels = np.asarray(scene.render())
    assert pixels.shape == (scene.size, scene.size, 3)
    for color, rgb in COLORS.items():
        painted = (pixels == np.asarray(rgb, dtype=np.uint8)).all(-1)
        allowed = np.zeros_like(painted)
        for o in scene.objects:
            if o.color == color:
                x0, y0, x1, y1 = o.box
                allowed[y0:y1, x0:x1] = True
                area = painted[y0:y1, x0:x1].mean()
                assert area > 0.25, (o, area)  # stars fill the least of their box
                cx, cy = o.center
                assert tuple(pixels[cy, cx]) == rgb
        assert not (painted & ~allowed).any(), color


def test_object_patches():
    scene = generate(3)
    for o in scene.objects:
        mask = object_patches(o, 16).reshape(16, 16)
        cx, cy = o.center
        assert mask[cy * 16 // scene.size, cx * 16 // scene.size]
        side = o.box[2] - o.box[0]
        assert mask.sum() <= (side // 14 + 2) ** 2


# --------------------------------------------------------------------------- questions


def _independent_answer(scene: Scene, q: shapes.Question) -> tuple[str, tuple[int, ...]]:
    """Re-derive a question's answer and target from its text and the scene description."""
    objs = scene.objects

    def matching(**attrs: str) -> tuple[int, ...]:
        return tuple(
            i for i, o in enumerate(objs) if all(getattr(o, k) == v for k, v in attrs.items())
        )

    words = "|".join
    if m := re.fullmatch(
        rf"What color is the (?:({words(SIZES)}) )?({words(SHAPES)})\?", q.question
    ):
        size, shape = m.groups()
        found = matching(shape=shape, **({"size": size} if size else {}))
        assert len(found) == 1, "a color question names exactly one object"
        if size:  # the size is only named when the shape alone is ambiguous
            assert len(matching(shape=shape)) > 1
        return objs[found[0]].color, found
    if m := re.fullmatch(
        rf"What shape is the (?:({words(SIZES)}) )?({words(COLORS)}) object\?", q.question
    ):
        size, color = m.groups()
        found = matching(color=color, **({"size": size} if size else {}))
        assert len(found) == 1, "a shape question names exactly one object"
        if size:
            assert len(matching(color=color)) > 1
        return objs[found[0]].shape, found
    if m := re.fullmatch(rf"Is there an? ({words(COLORS)}) ({words(SHAPES)})\?", q.question):
        color, shape = m.groups()
        found = matching(color=color, shape=shape)
        return ("yes" if found else "no"), found
    if m := re.fullmatch(r"How many (\w+) are there\?", q.question):
        shape = {s + "s": s for s in SHAPES} | {"crosses": "cross"}
        found = matching(shape=shape[m.group(1)])
        return str(len(found)), found
    raise AssertionError(f"unexpected question {q.question!r}")


@pytest.mark.parametrize("seed", SEEDS)
def test_answers_correct_by_construction(seed):
    scene = generate(seed)
    qs = questions(scene)
    assert len(set(qs)) == len(qs)
    kinds = Counter(q.kind for q in qs)
    assert kinds["exists"] == len(COLORS) * len(SHAPES)
    assert kinds["count"] == len(SHAPES)
    for q in qs:
        assert q.kind in KINDS and q.answer in KIND_ANSWERS[q.kind]
        assert q.answer in ANSWERS and " " not in q.answer
        answer, target = _independent_answer(scene, q)
        assert q.answer == answer, q
        assert q.target == target, q


def test_every_question_kind_and_answer_occurs():
    items = dataset("train", 200)
    seen = {k: {q.answer for it in items for q in it.questions if q.kind == k} for k in KINDS}
    assert seen == {k: set(v) for k, v in KIND_ANSWERS.items()}
    # questions that need the size to single out an object occur too
    texts = [q.question for it in items for q in it.questions]
    assert any(re.match(r"What color is the (small|large) ", t) for t in texts)
    assert any(re.match(r"What shape is the (small|large) ", t) for t in texts)


def test_test_split_size_and_balance():
    items = dataset("test", 600)
    qs = [q for it in items for q in it.questions]
    assert len(qs) >= 2000
    for kind in KINDS:
        counts = Counter(q.answer for q in qs if q.kind == kind)
        assert set(counts) == set(KIND_ANSWERS[kind])
        assert max(counts.values()) <= 1.15 * min(counts.values()), (kind, counts)
    for it in items:  # one question per kind, never twice the same
        assert len(set(it.questions)) == len(it.questions) <= len(KINDS)


def test_train_and_test_are_disjoint():
    train, test = SEED_RANGES["train"], SEED_RANGES["test"]
    assert train[1] <= test[0] or test[1] <= train[0]
    a = {it.scene.seed for it in dataset("train", 300)}
    b = {it.scene.seed for it in dataset("test", 300)}
    assert not a & b
    assert all(train[0] <= s < train[1] for s in a) and all(test[0] <= s < test[1] for s in b)
    hashes_a = {image_hash(generate(s)) for s in scene_seeds("train", 30)}
    hashes_b = {image_hash(generate(s)) for s in scene_seeds("test", 30)}
    assert not hashes_a & hashes_b


# --------------------------------------------------------------------------- captions

_NUMBERS = ("three", "four", "five", "six", "seven", "eight")


@pytest.mark.parametrize("seed", SEEDS[::4])
def test_caption_mentions_every_object(seed):
    scene = generate(seed)
    text = caption(scene)
    head, _, listed = text.partition(": ")
    assert head.split()[0].lower() == _NUMBERS[len(scene.objects) - 3]
    parts = re.split(r", | and ", listed.rstrip("."))
    assert len(parts) == len(scene.objects)
    mentioned = Counter(re.match(r"an? (\w+ \w+ \w+)", p).group(1) for p in parts)
    assert mentioned == Counter(o.phrase for o in scene.objects)
    for o in scene.objects:
        cx, cy = o.center
        row = ("top", "middle", "bottom")[min(3 * cy // scene.size, 2)]
        col = ("left", "center", "right")[min(3 * cx // scene.size, 2)]
        where = [p for p in parts if o.phrase in p]
        if row == "middle" and col == "center":
            assert any(p.endswith("in the center") for p in where)
        elif row == "middle":
            assert any(p.endswith(f"on the {col}") for p in where)
        elif col == "center":
            assert any(p.endswith(f"at the {row}") for p in where)
        else:
            assert any(p.endswith(f"at the {row} {col}") for p in where)


# --------------------------------------------------------------------------- easy-VQA

needs_easyvqa = pytest.mark.skipif(not easyvqa.available(), reason="easy-vqa not installed")


@needs_easyvqa
def test_easyvqa_answers_and_sizes():
    assert easyvqa.answers() == easyvqa.ANSWERS
    test = easyvqa.load("test")
    assert len(test) == 1000
    assert sum(len(it.questions) for it in test) == 9673
    for it in test[:50]:
        for q in it.questions:
            assert q.answer in easyvqa.ANSWERS
            if q.answer in ("yes", "no"):
                assert q.kind == "yes_no"
            else:
                assert q.kind == ("shape" if q.answer in easyvqa.SHAPES else "color")
                assert q.answer in (easyvqa.SHAPES if q.kind == "shape" else easyvqa.COLORS)


@needs_easyvqa
def test_easyvqa_subsets_are_deterministic_and_nested():
    a = easyvqa.load("test", n_images=50, seed=3)
    assert a == easyvqa.load("test", n_images=50, seed=3)
    assert [it.image_id for it in a] == sorted(it.image_id for it in a)
    big = {it.image_id for it in easyvqa.load("test", n_images=200, seed=3)}
    assert {it.image_id for it in a} <= big
    assert a != easyvqa.load("test", n_images=50, seed=4)
    capped = easyvqa.load("test", n_images=5, seed=3, max_questions_per_image=2)
    assert all(len(it.questions) <= 2 for it in capped)
    image = a[0].image()
    assert image.mode == "RGB" and image.size == (64, 64)
