"""Evaluation of one configuration: answers, accuracy, loyalty, tokens kept, time.

Metrics (all over the same fixed samples):

* **accuracy**: exact match of the normalised generated answer with the gold
  answer (lower case, punctuation removed, whitespace collapsed), with a 95 %
  Wilson score interval;
* **loyalty** (``bench.loyalty=true``): the fraction of samples where the
  pruned model gives the same normalised answer as the unpruned model, with its
  Wilson interval;
* **tokens kept**: visual tokens kept per image (mean) out of the image's tokens;
* **ms/sample**: wall-clock generation time per sample (batched; includes the
  pruning).

Decoding is greedy. With ``bench.closed_answers=true`` it is restricted to the
data set's answers (each answer's token sequence, as the tokenizer encodes it
alone, then end-of-sequence): closed-vocabulary VQA, as multiple-choice
benchmarks score it.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from prunekit.experiments.datasets import Sample


def normalize_answer(text: str) -> str:
    """Lower case, punctuation removed, whitespace collapsed."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def wilson_interval(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (95 % by default)."""
    if n <= 0:
        return (math.nan, math.nan)
    p = successes / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    low = 0.0 if successes == 0 else max(0.0, center - half)
    high = 1.0 if successes == n else min(1.0, center + half)
    return (min(low, p), max(high, p))


class AnswerTrie:
    """Allowed next tokens given the tokens generated so far: one of the answers, then EOS."""

    def __init__(self, sequences: Sequence[Sequence[int]], eos_token_id: int) -> None:
        self.root: dict = {}
        self.eos = eos_token_id
        for seq in sequences:
            node = self.root
            for token in seq:
                node = node.setdefault(int(token), {})
            node[None] = {}  # end of an answer

    def allowed(self, prefix: Sequence[int]) -> list[int]:
        """Tokens that may follow ``prefix``: the next token of an answer it starts, or EOS."""
        node = self.root
        for token in prefix:
            if token not in node:
                return [self.eos]
            node = node[token]
        return [t if t is not None else self.eos for t in node] or [self.eos]


class ClosedAnswers:
    """A ``transformers`` logits processor restricting greedy decoding to an :class:`AnswerTrie`."""

    def __init__(self, trie: AnswerTrie) -> None:
        self.trie = trie
        self.start: int | None = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.start is None:  # the first call sees the (pruned) prompt only
            self.start = input_ids.shape[1]
        mask = torch.full_like(scores, -math.inf)
        for row, ids in enumerate(input_ids[:, self.start :].tolist()):
            mask[row, self.trie.allowed(ids)] = 0
        return scores + mask


def answer_trie(processor: Any, answers: Sequence[str], eos_token_id: int) -> AnswerTrie:
    """The :class:`AnswerTrie` of ``answers`` tokenized by the processor's tokenizer."""
    tokenizer = getattr(processor, "tokenizer", processor)
    sequences = [tokenizer(a, add_special_tokens=False)["input_ids"] for a in answers]
    return AnswerTrie(sequences, eos_token_id)


def _eos_id(model: Any, processor: Any) -> int:
    eos = getattr(model.generation_config, "eos_token_id", None)
    if eos is None:
        eos = getattr(getattr(processor, "tokenizer", None), "eos_token_id", None)
    if isinstance(eos, (list, tuple)):
        eos = eos[0]
    if eos is None:
        raise ValueError("closed_answers needs an end-of-sequence token id (generation_config)")
    return int(eos)


def prompt_text(template: str | None, question: str, processor: Any = None) -> str:
    """The model's prompt for ``question``: ``template`` with ``{question}`` replaced, or
    (``template=None``) the processor's own ``chat_prompt(question)``."""
    if template is None:
        chat = getattr(processor, "chat_prompt", None)
        if chat is None:
            raise ValueError(
                "model.prompt is null but the processor has no chat_prompt(); set model.prompt"
            )
        return chat(question)
    return template.replace("{question}", question)


@dataclass
class Generation:
    """Answers of one pass over the samples, with the tokens kept and the time."""

    answers: list[str]
    kept: list[int] = field(default_factory=list)  # per image, in sample order (pruned runs)
    tokens_in: list[int] = field(default_factory=list)
    seconds: float = 0.0


def generate_answers(
    model: Any,
    processor: Any,
    samples: Sequence[Sample],
    *,
    prompt: str | None,
    max_new_tokens: int,
    batch_size: int = 8,
    answers: Sequence[str] | None = None,
    context: Callable[[], Any] | None = None,
    progress: bool = False,
    desc: str = "samples",
) -> Generation:
    """Greedy answers to ``samples``; ``context()`` (e.g. ``prunekit.attach``) wraps each batch.

    With ``answers`` decoding is restricted to them (:class:`ClosedAnswers`).
    """
    import contextlib

    from tqdm.auto import tqdm
    from transformers import LogitsProcessorList

    device = next(model.parameters()).device
    trie = answer_trie(processor, answers, _eos_id(model, processor)) if answers else None
    out = Generation(answers=[])
    bar = tqdm(total=len(samples), desc=desc, disable=not progress, leave=False, unit="sample")
    try:
        for start in range(0, len(samples), batch_size):
            batch = samples[start : start + batch_size]
            inputs = processor(
                images=[s.image for s in batch],
                text=[prompt_text(prompt, s.question, processor) for s in batch],
                return_tensors="pt",
                padding=True,
            )
            inputs = {k: v.to(device) if hasattr(v, "to") else v for k, v in dict(inputs).items()}
            kwargs: dict[str, Any] = dict(
                max_new_tokens=max_new_tokens,
                do_sample=False,
                return_dict_in_generate=True,
                output_scores=True,
            )
            if trie is not None:
                kwargs["logits_processor"] = LogitsProcessorList([ClosedAnswers(trie)])
            with context() if context else contextlib.nullcontext() as handle, torch.no_grad():
                tic = time.perf_counter()
                output = model.generate(**inputs, **kwargs)
                out.seconds += time.perf_counter() - tic
            new = output.sequences[:, output.sequences.shape[1] - len(output.scores) :]
            out.answers.extend(processor.batch_decode(new, skip_special_tokens=True))
            for result in getattr(handle, "results", []):
                out.kept.extend(int(c) for c in result.counts)
                out.tokens_in.extend([int(result.mask.shape[1])] * len(result.counts))
            bar.update(len(batch))
    finally:
        bar.close()
    return out


def score(
    samples: Sequence[Sample], generation: Generation, reference: Sequence[str] | None = None
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The metrics and the per-sample records of one generation pass."""
    n = len(samples)
    rows = []
    correct = loyal = unpruned_correct = 0
    for i, (sample, raw) in enumerate(zip(samples, generation.answers)):
        prediction = normalize_answer(raw)
        row = {
            "id": sample.id,
            "question": sample.question,
            "answer": sample.answer,
            "prediction": prediction,
            "correct": prediction == normalize_answer(sample.answer),
        }
        correct += row["correct"]
        if reference is not None:
            row["reference"] = normalize_answer(reference[i])
            row["loyal"] = prediction == row["reference"]
            loyal += row["loyal"]
            unpruned_correct += row["reference"] == normalize_answer(sample.answer)
        if i < len(generation.kept):
            row["kept"] = generation.kept[i]
        rows.append(row)
    metrics: dict[str, Any] = {
        "n": n,
        "accuracy": correct / n if n else math.nan,
        "accuracy_ci95": list(wilson_interval(correct, n)),
    }
    if reference is not None:
        metrics["loyalty"] = loyal / n if n else math.nan
        metrics["loyalty_ci95"] = list(wilson_interval(loyal, n))
        # the all-tokens reference of the summary plot: the unpruned model's own accuracy
        metrics["unpruned_accuracy"] = unpruned_correct / n if n else math.nan
    if generation.kept:
        metrics["tokens_kept"] = sum(generation.kept) / len(generation.kept)
        metrics["tokens_in"] = sum(generation.tokens_in) / len(generation.tokens_in)
    metrics["ms_per_sample"] = 1e3 * generation.seconds / n if n else math.nan
    return metrics, rows
