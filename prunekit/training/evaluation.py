"""Accuracy of MiniLLaVA during and after training, with all visual tokens or pruned.

Two metrics: ``first_token``, the answer whose first token has the highest logit among
the dataset's answers (:func:`first_token_picks`; the answers' first tokens are
distinct, :func:`prunekit.experiments.bench.answer_first_tokens`), and ``exact``, greedy
decoding (up to 4 tokens) equals the answer."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import torch

from prunekit.core.pruner import TokenPruner
from prunekit.experiments.bench import answer_first_tokens
from prunekit.registry import get_registry
from prunekit.strategies.relevance.text import TextRelevance
from prunekit.training.data import Source
from prunekit.training.runner import Runner

#: how the training record describes the two accuracies
ACCURACY_METRIC = (
    "first_token: argmax of the first answer token among the dataset's answers; "
    "exact: greedy decoding (<= 4 tokens) equals the answer"
)


def first_token_picks(logits: torch.Tensor, first_tokens: Sequence[int]) -> list[int]:
    """For each row of ``logits`` ``(Q, vocab)`` (the first answer token's), the index into
    ``first_tokens`` (one per answer) of the highest-scoring answer."""
    if logits.ndim != 2:
        raise ValueError(f"logits must be (questions, vocab), got shape {tuple(logits.shape)}")
    return logits[:, torch.as_tensor(list(first_tokens))].argmax(-1).tolist()


def parse_pruner(spec: str) -> tuple[str, dict[str, Any]]:
    """``"NAME:key=value,..."`` -> ``(NAME, {key: value})``; values are JSON when they
    parse (``true``/``false`` in any case), strings otherwise."""
    name, _, rest = spec.partition(":")
    if not name:
        raise ValueError(f"pruner spec {spec!r}: no pruner name before ':'")
    kwargs: dict[str, Any] = {}
    for part in filter(None, rest.split(",")):
        key, _, value = part.partition("=")
        try:
            kwargs[key] = json.loads(value.lower() if value.lower() in ("true", "false") else value)
        except json.JSONDecodeError:
            kwargs[key] = value
    return name, kwargs


def image_only_pruner(spec: str) -> TokenPruner:
    """The registered pruner of ``spec`` (:func:`parse_pruner`); ``ValueError`` when it
    needs the prompt or model signals, which the training evaluation does not give."""
    name, kwargs = parse_pruner(spec)
    pruner = get_registry().create("pruner", name, **kwargs)
    if pruner.required_signals or isinstance(getattr(pruner, "relevance", None), TextRelevance):
        raise ValueError(
            f"{spec}: the training script evaluates pruners that need neither text "
            "nor model signals; use the quality benchmark for the others"
        )
    return pruner


@torch.no_grad()
def evaluate(
    runner: Runner,
    project: torch.nn.Module,
    feats: torch.Tensor,
    src: Source,
    n_images: int | None,
    q_per_image: int | None,
    batch_images: int,
    pruner: TokenPruner | None = None,
    budget: int | None = None,
) -> dict[str, Any]:
    """Accuracy on the first ``n_images`` images of ``src`` (all when ``None``), first
    ``q_per_image`` questions each; ``feats`` are their raw features, ``project`` maps
    them to visual tokens and ``pruner`` keeps ``budget`` of those.

    Returns ``first_token`` and ``exact`` accuracies, the numbers of ``questions`` and
    ``images``, and ``first_token_by_kind`` for questions that have a kind.
    """
    if batch_images < 1:
        raise ValueError(f"batch_images must be >= 1, got {batch_images}")
    n = len(src.qas) if n_images is None else min(n_images, len(src.qas))
    first_tokens = answer_first_tokens(runner.tok, src.answers)
    hits_first = hits_exact = total = 0
    kinds: dict[str, list[int]] = {}
    for start in range(0, n, batch_images):
        idx = list(range(start, min(start + batch_images, n)))
        tokens = project(feats[idx].float())
        if pruner is not None:
            tokens = pruner.prune(tokens, budget=budget).kept_tokens(tokens)
        items, gold, kind = [], [], []
        for j, i in enumerate(idx):
            for qa in src.qas[i][:q_per_image]:
                items.append((j, qa.question))
                gold.append(qa.answer)
                kind.append(qa.kind)
        logits, texts = runner.answer(tokens, items)
        picks = first_token_picks(logits, first_tokens)
        hits = [src.answers[p] == g for p, g in zip(picks, gold)]
        hits_first += sum(hits)
        for k, hit in zip(kind, hits):
            if k:
                kinds.setdefault(k, []).append(int(hit))
        hits_exact += sum(t == g for t, g in zip(texts, gold))
        total += len(gold)
    return {
        "first_token": hits_first / max(total, 1),
        "exact": hits_exact / max(total, 1),
        "questions": total,
        "images": n,
        "first_token_by_kind": {k: sum(v) / len(v) for k, v in sorted(kinds.items())},
    }
