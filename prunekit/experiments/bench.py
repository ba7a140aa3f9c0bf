"""Evaluation of one configuration: answers, accuracy, loyalty, tokens kept, time.

Metrics (all over the same fixed samples):

* **accuracy**: exact match of the normalised generated answer with the gold
  answer (lower case, punctuation removed, whitespace collapsed), with a 95 %
  Wilson score interval;
* **loyalty** (``bench.loyalty=true``): the fraction of samples where the
  pruned model gives the same normalised answer as the unpruned model, with its
  Wilson interval;
* **tokens kept**: visual tokens kept per image (mean, and its standard deviation,
  minimum and maximum over the images: adaptive budgets keep different counts) out of
  the image's tokens;
* **ms/sample**: wall-clock generation time per sample (batched; includes the
  pruning), split into the prefill (up to the first next-token scores, pruning
  included) and the decoding of the other tokens;
* **accounting** (the run record's ``efficiency``): prefill FLOPs and KV-cache bytes
  before and after pruning, from :mod:`prunekit.accounting`.

Benchmarks (``data=vqa``, ``gqa``, ``mc``, ``pope``) are scored by their official
metric (:func:`question_score`): accuracy is then the mean per-question score.

Decoding is greedy. With ``bench.closed_answers=true`` it is restricted to the
data set's answers (each answer's token sequence, as the tokenizer encodes it
alone, then end-of-sequence): closed-vocabulary VQA, as multiple-choice
benchmarks score it.

Where the data set has a closed answer set (``bench.distribution=true``, with
loyalty), every question also gets the model's distribution over those answers
(:func:`answer_logprobs`, teacher-forced), and the records the continuous, paired
metrics against the unpruned model: ``kl`` (KL(unpruned || pruned), nats) and
``logprob_reference`` (the pruned model's log-probability of the unpruned answer).
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


def answer_first_tokens(processor: Any, answers: Sequence[str]) -> list[int]:
    """The first token id of each answer; ``ValueError`` unless they are all distinct (then
    an answer is known from its first token, and greedy decoding restricted to the answers
    picks the answer whose first token scores highest)."""
    tokenizer = getattr(processor, "tokenizer", processor)
    firsts: dict[int, str] = {}
    out = []
    for answer in answers:
        ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ValueError(f"answers: {answer!r} encodes to no tokens")
        if ids[0] in firsts:
            raise ValueError(
                f"answers: {firsts[ids[0]]!r} and {answer!r} start with the same token; "
                "first-token scoring needs answers with distinct first tokens "
                "(use bench.answer_scoring=full)"
            )
        firsts[ids[0]] = answer
        out.append(int(ids[0]))
    return out


def first_token_distribution(
    first_step_logits: torch.Tensor, first_tokens: Sequence[int]
) -> torch.Tensor:
    """Log-probabilities of the answers from the scores of the first generated token:
    the log-softmax over the vocabulary read at each answer's first token, renormalised
    over the answers (float64, on the CPU)."""
    logprobs = torch.log_softmax(first_step_logits.double().cpu(), dim=-1)
    return torch.log_softmax(logprobs[:, list(first_tokens)], dim=-1)


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
    (``template=None``) the processor's own ``chat_prompt(question)``, else its chat
    template (:func:`prunekit.models.hf.chat_prompt`)."""
    if template is None:
        chat = getattr(processor, "chat_prompt", None)
        if chat is not None:
            return chat(question)
        if hasattr(processor, "apply_chat_template"):
            from prunekit.models.hf import chat_prompt

            return chat_prompt(question, processor)
        raise ValueError(
            "model.prompt is null but the processor has no chat_prompt() and no chat "
            "template; set model.prompt"
        )
    return template.replace("{question}", question)


@dataclass
class Generation:
    """Answers of one pass over the samples, with the tokens kept and the time.

    ``seconds`` is the time inside ``generate`` (pruning included), split into
    ``prefill_seconds`` (from the call to the first next-token scores: the vision
    tower, the pruning and the language model's pass over the prompt) and
    ``decode_seconds`` (the remaining tokens). ``text_tokens`` / ``image_tokens``:
    per sample, the prompt's tokens other than the image placeholders, and those
    placeholders.
    """

    answers: list[str]
    kept: list[int] = field(default_factory=list)  # per image, in sample order (pruned runs)
    tokens_in: list[int] = field(default_factory=list)
    seconds: float = 0.0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    text_tokens: list[int] = field(default_factory=list)
    image_tokens: list[int] = field(default_factory=list)
    #: with ``first_token_scores``: ``(samples, answers)`` log-probabilities of the answers
    #: by their first tokens (:func:`first_token_distribution`)
    answer_logprobs: torch.Tensor | None = None


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PrefillClock:
    """A logits processor that notes when the first scores arrive: the end of the prefill."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.at: float | None = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.at is None:
            _synchronize(self.device)
            self.at = time.perf_counter()
        return scores


def image_token_id(model: Any) -> int | None:
    """The id of the image placeholder token in the model's prompts (``None``: unknown)."""
    config = getattr(model, "config", None)
    for name in ("image_token_id", "image_token_index"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    return None


def _to_model(inputs: dict[str, Any], device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """Inputs on the model's device; floating tensors (pixels) in the model's dtype (bf16, ...)."""
    out = {}
    for key, value in inputs.items():
        if isinstance(value, torch.Tensor):
            value = value.to(device, dtype=dtype if value.is_floating_point() else None)
        out[key] = value
    return out


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
    warmup: bool = True,
    first_token_scores: bool = False,
) -> Generation:
    """Greedy answers to ``samples``, ``batch_size`` questions per ``generate`` call.

    The processor pads each batch on the left (images of different sizes may share a
    batch: the processor brings them to the model's input). ``context()`` (e.g.
    ``prunekit.attach``) wraps each batch. With ``answers`` decoding is restricted to
    them (:class:`ClosedAnswers`). Inputs go to the device of the model's first
    parameter, pixels in the model's dtype. ``warmup``: one untimed one-token
    ``generate`` on the first sample first, so that one-off costs (CUDA kernels,
    caches) do not count against the first batch. ``first_token_scores`` (needs
    ``answers`` with distinct first tokens): also the answers' distribution from the same
    pass's first-step scores (:attr:`Generation.answer_logprobs`), so one prefill per
    question gives both the answer and the distribution.
    """
    import contextlib

    from tqdm.auto import tqdm
    from transformers import LogitsProcessorList

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if first_token_scores and not answers:
        raise ValueError("first_token_scores needs the closed answers (answers=...)")
    first_tokens = answer_first_tokens(processor, answers) if first_token_scores else None
    scored: list[torch.Tensor] = []
    parameter = next(model.parameters())
    device, dtype = parameter.device, parameter.dtype
    image_id = image_token_id(model)
    trie = answer_trie(processor, answers, _eos_id(model, processor)) if answers else None
    out = Generation(answers=[])

    def inputs_of(batch: Sequence[Sample]) -> dict[str, Any]:
        inputs = processor(
            images=[s.get_image() for s in batch],
            text=[prompt_text(prompt, s.query, processor) for s in batch],
            return_tensors="pt",
            padding=True,
        )
        return _to_model(dict(inputs), device, dtype)

    def scope() -> Any:
        return context() if context else contextlib.nullcontext()

    if warmup and samples:
        with scope(), torch.no_grad():
            model.generate(**inputs_of(samples[:1]), max_new_tokens=1, do_sample=False)
    bar = tqdm(total=len(samples), desc=desc, disable=not progress, leave=False, unit="sample")
    try:
        for start in range(0, len(samples), batch_size):
            batch = samples[start : start + batch_size]
            inputs = inputs_of(batch)
            clock = PrefillClock(device)
            processors = [ClosedAnswers(trie)] if trie is not None else []
            kwargs: dict[str, Any] = dict(
                max_new_tokens=max_new_tokens,
                do_sample=False,
                return_dict_in_generate=True,
                output_scores=True,
                output_logits=first_tokens is not None,
                logits_processor=LogitsProcessorList([*processors, clock]),
            )
            with scope() as handle, torch.no_grad():
                _synchronize(device)
                tic = time.perf_counter()
                output = model.generate(**inputs, **kwargs)
                _synchronize(device)
                toc = time.perf_counter()
            prefill_end = clock.at if clock.at is not None else toc
            out.seconds += toc - tic
            out.prefill_seconds += prefill_end - tic
            out.decode_seconds += toc - prefill_end
            if first_tokens is not None:
                scored.append(first_token_distribution(output.logits[0], first_tokens))
            new = output.sequences[:, output.sequences.shape[1] - len(output.scores) :]
            out.answers.extend(processor.batch_decode(new, skip_special_tokens=True))
            mask = inputs.get("attention_mask")
            ids = inputs["input_ids"]
            prompt_tokens = (
                mask.sum(1) if mask is not None else torch.full((len(ids),), ids.shape[1])
            )
            placeholders = (
                ((ids == image_id) & (mask.bool() if mask is not None else True)).sum(1)
                if image_id is not None
                else torch.zeros_like(prompt_tokens)
            )
            out.text_tokens.extend((prompt_tokens - placeholders).tolist())
            out.image_tokens.extend(placeholders.tolist())
            kept, tokens_in = _kept_tokens(getattr(handle, "results", []), placeholders)
            out.kept.extend(kept)
            out.tokens_in.extend(tokens_in)
            bar.update(len(batch))
    finally:
        bar.close()
    if first_tokens is not None:
        out.answer_logprobs = (
            torch.cat(scored) if scored else torch.empty(0, len(first_tokens), dtype=torch.float64)
        )
    return out


class ForcedTokens:
    """A logits processor that makes greedy decoding follow one token path per row.

    Row ``r`` emits ``paths[r][s]`` at step ``s`` (then token 0, whose scores are never
    read). The incoming scores are ignored, so no earlier processor can divert a path;
    the model's own scores are read from ``generate``'s raw ``logits``.
    """

    def __init__(self, paths: Sequence[Sequence[int]]) -> None:
        self.paths = [list(p) for p in paths]
        self.start: int | None = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.start is None:  # the first call sees the (pruned) prompt only
            self.start = input_ids.shape[1]
        step = input_ids.shape[1] - self.start
        tokens = [p[step] if step < len(p) else 0 for p in self.paths]
        forced = torch.full_like(scores, -math.inf)
        forced[torch.arange(len(tokens)), torch.tensor(tokens, device=scores.device)] = 0.0
        return forced


def answer_logprobs(
    model: Any,
    processor: Any,
    samples: Sequence[Sample],
    answers: Sequence[str],
    *,
    prompt: str | None,
    batch_size: int = 8,
    context: Callable[[], Any] | None = None,
    progress: bool = False,
    desc: str = "answer distributions",
) -> torch.Tensor:
    """Each sample's log-probabilities of the closed ``answers``, normalised over them.

    An answer's score is teacher-forced: the sum of its tokens' log-probabilities after
    the prompt (the tokens as :func:`answer_trie` encodes it, no end-of-sequence), then
    a log-softmax over the answers. Scores come from ``generate`` under ``context()``
    (e.g. ``prunekit.attach``), so that pruning, positions and the KV cache are those of
    :func:`generate_answers`: one row per sample when every answer is one token (the
    prompt's last scores), else one row per multi-token answer, forced along it by
    :class:`ForcedTokens` (single-token answers and first tokens read the sample's first
    row). Returns a ``(len(samples), len(answers))`` float64 tensor on the CPU.
    """
    import contextlib

    from tqdm.auto import tqdm
    from transformers import LogitsProcessorList

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not answers:
        raise ValueError("answers must name the closed answer set (got none)")
    tokenizer = getattr(processor, "tokenizer", processor)
    tokens = [list(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers]
    empty = [a for a, t in zip(answers, tokens) if not t]
    if empty:
        raise ValueError(f"answers {empty!r} encode to no tokens")
    parameter = next(model.parameters())
    device, dtype = parameter.device, parameter.dtype
    long_answers = [j for j, t in enumerate(tokens) if len(t) > 1]
    paths = [tokens[j] for j in long_answers] or [[]]
    rows = [(i, k) for i in range(len(samples)) for k in range(len(paths))]
    # per row: the raw log-softmax of each step it needs (step 0: the prompt's last scores)
    steps: dict[tuple[int, int], list[torch.Tensor]] = {}

    def scope() -> Any:
        return context() if context else contextlib.nullcontext()

    bar = tqdm(total=len(rows), desc=desc, disable=not progress, leave=False, unit="row")
    try:
        for start in range(0, len(rows), batch_size):
            batch = rows[start : start + batch_size]
            inputs = processor(
                images=[samples[i].get_image() for i, _ in batch],
                text=[prompt_text(prompt, samples[i].query, processor) for i, _ in batch],
                return_tensors="pt",
                padding=True,
            )
            inputs = _to_model(dict(inputs), device, dtype)
            forced = [paths[k] for _, k in batch]
            with scope(), torch.no_grad():
                output = model.generate(
                    **inputs,
                    max_new_tokens=max(1, *(len(p) for p in forced)),
                    do_sample=False,
                    return_dict_in_generate=True,
                    output_logits=True,
                    logits_processor=LogitsProcessorList([ForcedTokens(forced)]),
                )
            logprobs = [torch.log_softmax(x.double().cpu(), dim=-1) for x in output.logits]
            for r, row in enumerate(batch):
                steps[row] = [step[r] for step in logprobs[: max(1, len(paths[row[1]]))]]
            bar.update(len(batch))
    finally:
        bar.close()
    path_of = {j: k for k, j in enumerate(long_answers)}
    out = torch.empty(len(samples), len(answers), dtype=torch.float64)
    for i in range(len(samples)):
        for j, answer_tokens in enumerate(tokens):
            total = steps[i, 0][0][answer_tokens[0]]
            for s in range(1, len(answer_tokens)):
                total = total + steps[i, path_of[j]][s][answer_tokens[s]]
            out[i, j] = total
    return torch.log_softmax(out, dim=-1)


def _kept_tokens(results: Sequence[Any], placeholders: torch.Tensor) -> tuple[list[int], list[int]]:
    """``(kept, tokens in)`` of a batch's pruning results, per result row (image).

    Tokens in are each row's valid tokens (``valid_counts``; a ragged batch of
    dynamic-resolution images pads its rows). When there is one row per prompt and the
    prompt's image placeholders are at least the tokens the pruner saw, the difference is
    tokens the adapter always keeps (LLaVA-NeXT / OneVision row newlines): they count as
    kept and in, so that kept / in is what stays of the prompt's visual tokens.
    """
    if not results:
        return [], []
    counts = torch.cat([r.counts.reshape(-1).cpu() for r in results])
    valid = torch.cat([r.valid_counts.reshape(-1).cpu() for r in results])
    fixed = placeholders.cpu() - valid if len(valid) == len(placeholders) else None
    if fixed is not None and bool((fixed >= 0).all()):
        return (counts + fixed).tolist(), placeholders.tolist()
    return counts.tolist(), valid.tolist()


def efficiency(
    config: Any,
    generation: Generation,
    *,
    pruned_after_layer: int = 0,
    dtype: torch.dtype = torch.float16,
) -> dict[str, Any]:
    """What the run's pruning saved (:func:`prunekit.accounting.savings`), summed over its prompts.

    Each prompt counts its image's visual tokens, the tokens kept and its text tokens;
    ``{"skipped": reason}`` when the run pruned nothing measurable (the unpruned model),
    when one prompt's visual tokens are not one pruned image (the placeholders differ from
    what the pruner saw), or when the decoder is not Llama-style.
    """
    from prunekit import accounting

    n = len(generation.text_tokens)
    if not generation.kept:
        return {"skipped": "no pruning results recorded"}
    if len(generation.kept) != n or generation.tokens_in != generation.image_tokens:
        return {
            "skipped": "the visual tokens the pruner saw differ from the prompts' image "
            "placeholders (several images or tiles per prompt)"
        }
    try:
        shape = accounting.decoder_shape(config)
    except TypeError as exc:
        return {"skipped": str(exc)}
    total = None
    for visual, kept, text in zip(generation.tokens_in, generation.kept, generation.text_tokens):
        one = accounting.savings(
            shape, visual, kept, text, pruned_after_layer=pruned_after_layer, dtype=dtype
        )
        total = one if total is None else total + one
    assert total is not None
    return {
        "prompts": total.sequences,
        "visual_tokens": total.visual_tokens,
        "kept_visual_tokens": total.kept_visual_tokens,
        "text_tokens": total.text_tokens,
        "pruned_after_layer": total.pruned_after_layer,
        "flops_before": total.flops_before,
        "flops_after": total.flops_after,
        "flops_speedup": total.flops_speedup,
        "kv_cache_bytes_before": total.kv_cache_bytes_before,
        "kv_cache_bytes_after": total.kv_cache_bytes_after,
        "kv_cache_ratio": total.kv_cache_ratio,
        "theoretical_speedup": total.theoretical_speedup,
        "kv_cache_dtype": str(dtype).replace("torch.", ""),
    }


def scored_answer(family: str, text: str, sample: Sample) -> str | None:
    """The part of a generated answer that ``family``'s metric reads (loyalty compares it).

    ``exact``: :func:`normalize_answer`; ``vqa``: the official VQA normalisation;
    ``gqa``: stripped, final periods removed, lower case; ``mc``: the option letter
    (``None`` if none is named); ``pope``: ``"yes"``/``"no"`` (``None`` for no text).
    """
    from prunekit import metrics

    if family == "exact":
        return normalize_answer(text)
    if family == "vqa":
        return metrics.normalize_answer(text)
    if family == "gqa":
        return text.strip().rstrip(".").lower()
    if family == "mc":
        return metrics.parse_choice(text, list(sample.options))
    if family == "pope":
        return metrics.parse_yes_no(text)
    raise ValueError(f"family must be one of exact, vqa, gqa, mc, pope, got {family!r}")


def question_score(
    family: str, text: str, sample: Sample, *, normalize_answers: bool = False
) -> float:
    """The score of one generated answer by ``family``'s metric (0 to 1).

    ``exact``: normalised exact match; ``vqa``: :func:`prunekit.metrics.vqa_accuracy`
    against the human answers; ``gqa``: :func:`prunekit.metrics.exact_match`; ``mc``: the
    letter :func:`prunekit.metrics.parse_choice` reads equals the gold letter; ``pope``:
    :func:`prunekit.metrics.parse_yes_no` (no text counts as "yes", as POPE's script and
    :func:`prunekit.metrics.pope_scores` count it) equals the label.
    """
    from prunekit import metrics

    if family == "vqa":
        return metrics.vqa_accuracy(text, list(sample.answers), normalize_answers=normalize_answers)
    if family == "gqa":
        return metrics.exact_match(text, sample.answer)
    if family == "pope":
        return float((metrics.parse_yes_no(text) or "yes") == sample.answer)
    return float(
        scored_answer(family, text, sample)
        == (normalize_answer(sample.answer) if family == "exact" else sample.answer)
    )


def normal_interval(values: Sequence[float], z: float = 1.959963984540054) -> tuple[float, float]:
    """The normal-approximation 95 % interval of the mean of ``values``."""
    n = len(values)
    if n == 0:
        return (math.nan, math.nan)
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    half = z * math.sqrt(var / n)
    return (mean - half, mean + half)


def mean_interval(values: Sequence[float], z: float = 1.959963984540054) -> tuple[float, float]:
    """The normal-approximation 95 % interval of a mean of scores in [0, 1] (clipped to [0, 1])."""
    low, high = normal_interval(values, z)
    if math.isnan(low):
        return (low, high)
    return (max(0.0, low), min(1.0, high))


def distribution_fields(
    distribution: torch.Tensor,
    reference_distribution: torch.Tensor,
    reference: Sequence[str],
    answers: Sequence[str],
) -> list[dict[str, float | None]]:
    """Per question: ``kl``, KL(unpruned || pruned) over the closed answer set (nats), and
    ``logprob_reference``, the pruned model's normalised log-probability of the unpruned
    model's answer (``None`` where that answer is not one of ``answers``: free decoding)."""
    from prunekit.stats import kl_divergence

    if distribution.shape != reference_distribution.shape:
        raise ValueError(
            f"the pruned and unpruned answer distributions differ in shape: "
            f"{tuple(distribution.shape)} vs {tuple(reference_distribution.shape)}"
        )
    if distribution.shape != (len(reference), len(answers)):
        raise ValueError(
            f"the answer distributions must have one row per question and one column per "
            f"answer ({len(reference)} x {len(answers)}), got {tuple(distribution.shape)}"
        )
    kl = kl_divergence(reference_distribution, distribution)
    index = {normalize_answer(a): j for j, a in enumerate(answers)}
    fields = []
    for i, text in enumerate(reference):
        j = index.get(normalize_answer(text))
        logprob = None if j is None else float(distribution[i, j])
        fields.append({"kl": float(kl[i]), "logprob_reference": logprob})
    return fields


def score(
    samples: Sequence[Sample],
    generation: Generation,
    reference: Sequence[str] | None = None,
    *,
    family: str = "exact",
    normalize_answers: bool = False,
    distribution: torch.Tensor | None = None,
    reference_distribution: torch.Tensor | None = None,
    answers: Sequence[str] | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The metrics and the per-sample records of one generation pass.

    ``accuracy`` is the mean of the per-question scores of ``family``'s metric
    (:func:`question_score`): a 95 % Wilson interval where the scores are 0 or 1, a
    normal-approximation one for VQA accuracy's fractional scores. ``pope`` adds
    ``metrics["pope"]`` (:func:`prunekit.metrics.pope_scores`). With ``reference`` (the
    unpruned answers): ``loyalty``, the fraction of questions whose :func:`scored_answer`
    equals the unpruned one, and ``unpruned_accuracy`` (``unpruned_pope``). With the
    pruned and unpruned ``distribution`` over the closed ``answers`` too
    (:func:`answer_logprobs`): per question ``kl`` and ``logprob_reference``
    (:func:`distribution_fields`), and their means with normal-approximation 95 % intervals.
    """
    n = len(samples)
    fields: list[dict[str, float | None]] | None = None
    if distribution is not None or reference_distribution is not None:
        if distribution is None or reference_distribution is None or reference is None:
            raise ValueError(
                "distribution needs reference_distribution and reference (the unpruned answers)"
            )
        if not answers:
            raise ValueError("distribution needs the closed answers its columns score")
        fields = distribution_fields(distribution, reference_distribution, reference, answers)
    rows = []
    scores: list[float] = []
    loyal = 0
    unpruned_scores: list[float] = []
    for i, (sample, raw) in enumerate(zip(samples, generation.answers)):
        value = question_score(family, raw, sample, normalize_answers=normalize_answers)
        row: dict[str, Any] = {
            "id": sample.id,
            "question": sample.question,
            "answer": sample.answer,
        }
        if sample.answers:
            row["answers"] = list(sample.answers)
        if sample.options:
            row["options"] = list(sample.options)
        row["output"] = raw.strip()
        row["prediction"] = scored_answer(family, raw, sample)
        row["score"] = value
        if family != "vqa":
            row["correct"] = value == 1.0
        scores.append(value)
        if reference is not None:
            row["reference"] = scored_answer(family, reference[i], sample)
            row["loyal"] = row["prediction"] == row["reference"]
            loyal += row["loyal"]
            unpruned_scores.append(
                question_score(family, reference[i], sample, normalize_answers=normalize_answers)
            )
        if fields is not None:
            row.update(fields[i])
        if i < len(generation.kept):
            row["kept"] = generation.kept[i]
        rows.append(row)
    binary = all(v in (0.0, 1.0) for v in scores) and family != "vqa"
    metrics: dict[str, Any] = {
        "n": n,
        "metric": family,
        "accuracy": sum(scores) / n if n else math.nan,
        "accuracy_ci95": list(
            wilson_interval(int(sum(scores)), n) if binary else mean_interval(scores)
        ),
    }
    if family == "pope" and n:
        from prunekit.metrics import pope_scores

        labels = [s.answer for s in samples]
        metrics["pope"] = pope_scores(list(generation.answers), labels)
        if reference is not None:
            metrics["unpruned_pope"] = pope_scores(list(reference), labels)
    if reference is not None:
        metrics["loyalty"] = loyal / n if n else math.nan
        metrics["loyalty_ci95"] = list(wilson_interval(loyal, n))
        # the all-tokens reference of the summary plot: the unpruned model's own accuracy
        metrics["unpruned_accuracy"] = sum(unpruned_scores) / n if n else math.nan
    if fields is not None:
        kl = [f["kl"] for f in fields]
        logprobs = [f["logprob_reference"] for f in fields if f["logprob_reference"] is not None]
        metrics["kl"] = sum(kl) / n if n else math.nan
        metrics["kl_ci95"] = list(normal_interval(kl))
        metrics["logprob_reference"] = sum(logprobs) / len(logprobs) if logprobs else math.nan
        metrics["logprob_reference_ci95"] = list(normal_interval(logprobs))
        metrics["logprob_reference_n"] = len(logprobs)
    if generation.kept:
        from prunekit.accounting import KeptTokens

        kept = KeptTokens.of(generation.kept)
        metrics["tokens_kept"] = kept.mean
        # the spread over images: adaptive budgets keep different counts per image
        metrics["tokens_kept_std"] = kept.std
        metrics["tokens_kept_min"] = kept.min
        metrics["tokens_kept_max"] = kept.max
        metrics["tokens_in"] = sum(generation.tokens_in) / len(generation.tokens_in)
    metrics["ms_per_sample"] = 1e3 * generation.seconds / n if n else math.nan
    metrics["prefill_ms_per_sample"] = 1e3 * generation.prefill_seconds / n if n else math.nan
    metrics["decode_ms_per_sample"] = 1e3 * generation.decode_seconds / n if n else math.nan
    return metrics, rows
