"""Helpers of the lmms-eval plugin tests (no lmms-eval import here): the tiny checkpoint,
a local task in lmms-eval's format, and prunekit's own evaluation of its questions."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

#: the local task's name (a unique prefix: a built-in task of the same name would win)
TASK = "prunekit_test_tinyvqa"
#: the questions of the local task (the tiny checkpoint's vocabulary)
QUESTIONS = [
    "what color is the shape?",
    "what shape is in the image?",
    "is there a red circle?",
    "how many objects are there?",
    "what is the colour of the object?",
    "does the image contain a triangle?",
]
#: decoding of the local task
MAX_NEW_TOKENS = 3

_UTILS = """
from PIL import Image


def doc_to_visual(doc):
    return [Image.open(doc["image"]).convert("RGB")]


def doc_to_text(doc):
    return doc["question"]
"""


@dataclass
class LocalTask:
    """Where the local task lives and what it holds."""

    folder: Path  # the --include_path
    data: Path  # the JSON lines file
    docs: list[dict]


def save_checkpoint(directory: Path, family: str = "llava", **options) -> Path:
    """A tiny checkpoint of ``prunekit.models.tiny`` (LLaVA unless ``family`` says otherwise)."""
    from prunekit.models.tiny import save_tiny_checkpoint

    return save_tiny_checkpoint(family, directory, **options)


def _image(i: int, size: int = 40) -> Image.Image:
    """Distinct images (seeded noise and a coloured square) so that answers depend on them."""
    rng = np.random.default_rng(i)
    array = rng.integers(0, 256, size=(size, size + 8 * i, 3), dtype=np.uint8)
    array[5:25, 5:25] = (rng.integers(0, 256, size=3)).astype(np.uint8)
    return Image.fromarray(array)


def write_task(folder: Path, answers: list[str] | None = None) -> LocalTask:
    """Write the task's images, data file, ``utils.py`` and YAML into ``folder``.

    ``answers`` (one per question) are the targets; by default every other one is "yes".
    """
    folder.mkdir(parents=True, exist_ok=True)
    docs = []
    for i, question in enumerate(QUESTIONS):
        path = folder / f"image_{i}.png"
        _image(i).save(path)
        answer = answers[i] if answers is not None else ("yes" if i % 2 else "red")
        docs.append({"id": i, "image": str(path), "question": question, "answer": answer})
    data = folder / "data.jsonl"
    data.write_text("".join(json.dumps(doc) + "\n" for doc in docs))
    (folder / "utils.py").write_text(_UTILS)
    (folder / f"{TASK}.yaml").write_text(
        f"""task: {TASK}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_target: answer
generation_kwargs:
  max_new_tokens: {MAX_NEW_TOKENS}
  temperature: 0
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""
    )
    return LocalTask(folder, data, docs)


def direct_answers(model, processor, docs: list[dict], pruner, budget, **options) -> list[str]:
    """prunekit's own evaluation: each question in the checkpoint's chat template
    (``prunekit.models.chat_prompt``),
    greedy generation under ``prunekit.attach`` (``pruner=None``: unpruned), one at a time."""
    import torch

    import prunekit
    from prunekit.models import chat_prompt

    answers = []
    for doc in docs:
        prompt = chat_prompt(doc["question"], processor)
        image = Image.open(doc["image"]).convert("RGB")
        inputs = processor(images=[image], text=[prompt], return_tensors="pt")
        kwargs = dict(max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
        with torch.no_grad():
            if pruner is None:
                out = model.generate(**inputs, **kwargs)
            else:
                with prunekit.attach(
                    model, pruner, budget=budget, tokenizer=processor.tokenizer, **options
                ):
                    out = model.generate(**inputs, **kwargs)
        new = out[:, inputs["input_ids"].shape[1] :]
        answers.append(processor.batch_decode(new, skip_special_tokens=True)[0].strip())
    return answers


def exact_match_score(answers: list[str], docs: list[dict]) -> float:
    """The share of answers equal to the target (lmms-eval's ``exact_match``, no options)."""
    return sum(a == d["answer"] for a, d in zip(answers, docs)) / len(docs)
