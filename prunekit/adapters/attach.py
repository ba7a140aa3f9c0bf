"""``prunekit.attach``: prune a model in place for the duration of a ``with`` block."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from prunekit import accounting
from prunekit.adapters.base import IN_LLM, PRE_LLM, PRE_PROJECTOR
from prunekit.core.budget import Budget, check_budget
from prunekit.core.pruner import TokenPruner
from prunekit.core.result import PruneResult


@dataclass
class AttachHandle:
    """What ``attach`` yields: the pruner, the budget and every result produced.

    Attributes:
        results: one :class:`PruneResult` per pruning call, in call order (for a
            VLM: one per forward pass that carried images, covering its images).
        pruning_point: where the adapter prunes (``"pre_llm"``, ``"in_llm"``, ...).
        llm_layer: for ``"in_llm"``: the decoder layer ``K`` pruned after.
    """

    model: torch.nn.Module
    pruner: TokenPruner
    budget: Budget
    results: list[PruneResult] = field(default_factory=list)
    pruning_point: str | None = None
    llm_layer: int | None = None

    @property
    def required_signals(self) -> frozenset[str]:
        """The model signals the pruner needs; adapters compute only these."""
        return self.pruner.required_signals

    def prune(
        self,
        tokens: torch.Tensor,
        *,
        text_embeds: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
        token_mask: torch.Tensor | None = None,
        budget: Budget | None = None,
        signals: dict[str, torch.Tensor] | None = None,
    ) -> PruneResult:
        """Run the pruner (on detached tokens) and record the result."""
        result = self.pruner.prune(
            tokens.detach(),
            budget=self.budget if budget is None else budget,
            text_embeds=None if text_embeds is None else text_embeds.detach(),
            text_mask=text_mask,
            token_mask=token_mask,
            signals=None if signals is None else {k: v.detach() for k, v in signals.items()},
        )
        self.results.append(result)
        return result

    def savings(
        self,
        text_tokens: int | Sequence[int] = 0,
        *,
        logits: accounting.Logits = "last",
        dtype: torch.dtype | None = None,
    ) -> accounting.Savings:
        """What the recorded pruning saved on the language model's prefill.

        Each row of each recorded result (an image; with ``llm_layer``, a prompt
        and all its images) counts as one prompt of its ``valid_counts`` visual
        tokens pruned to ``counts``, plus ``text_tokens`` other tokens; the costs
        are computed by :func:`prunekit.accounting.savings` from the model's text
        config and summed. The handle does not see the prompts, so their other
        tokens (text, special tokens, tokens the pruner never sees such as
        LLaVA-NeXT's row-newline tokens) are passed here: one count for every row,
        or one per row in the order recorded. ``dtype`` is the KV cache's, by
        default the model's parameter dtype. Only VLM pruning points (before or
        inside the language model) have a language-model prefill to account for::

            with prunekit.attach(model, "resprune", budget=128) as handle:
                model.generate(**inputs, max_new_tokens=32)
            n_text = int(inputs["attention_mask"].sum()) - 576
            print(handle.savings(text_tokens=n_text).summary())
        """
        if self.pruning_point not in (PRE_LLM, PRE_PROJECTOR, IN_LLM):
            raise ValueError(
                f"savings() accounts a VLM's language-model prefill; this handle prunes at "
                f"{self.pruning_point!r}"
            )
        rows = [
            (int(valid), int(kept))
            for result in self.results
            for valid, kept in zip(result.valid_counts.tolist(), result.counts.tolist())
        ]
        if not rows:
            raise ValueError("savings() needs a pruning call first (no result recorded yet)")
        if isinstance(text_tokens, int):
            texts = [text_tokens] * len(rows)
        else:
            texts = list(text_tokens)
            if len(texts) != len(rows):
                raise ValueError(
                    f"text_tokens must be one int or one per recorded row ({len(rows)}), "
                    f"got {len(texts)} values"
                )
        if dtype is None:
            dtype = next(self.model.parameters()).dtype
        config = self.model.config
        total = None
        for (valid, kept), text in zip(rows, texts):
            row = accounting.savings(
                config,
                valid,
                kept,
                text,
                pruned_after_layer=self.llm_layer or 0,
                logits=logits,
                dtype=dtype,
            )
            total = row if total is None else total + row
        return total


def _resolve_pruner(pruner: TokenPruner | str) -> TokenPruner:
    if isinstance(pruner, TokenPruner):
        return pruner
    if isinstance(pruner, str):
        from prunekit.registry import get_registry

        return get_registry().create("pruner", pruner)
    raise TypeError(
        f"pruner must be a TokenPruner or a registered name, got {type(pruner).__name__}"
    )


def find_adapter(model: object) -> type:
    """The registered adapter class that handles ``model``; a clear error listing the families otherwise."""
    from prunekit.registry import get_registry

    registry = get_registry()
    specs = registry.specs("adapter")
    for spec in specs:
        if spec.factory.matches(model):
            return spec.factory
    families = sorted({spec.factory.family for spec in specs})
    raise TypeError(
        f"prunekit has no adapter for {type(model).__name__}; supported families: {families}. "
        "A plugin can add one by registering an 'adapter'."
    )


@contextlib.contextmanager
def attach(
    model: torch.nn.Module,
    pruner: TokenPruner | str,
    *,
    budget: Budget,
    adapter: str | None = None,
    **options: Any,
) -> Iterator[AttachHandle]:
    """Prune ``model`` with ``pruner`` inside the ``with`` block.

    ``model.generate(...)`` and ``model(...)`` run pruned inside the block; the
    handle's :attr:`~AttachHandle.results` collect the kept indices. Only the
    model instance is touched, and it is restored on exit, also when the body
    raises.

    Args:
        model: a supported model (see :func:`list_adapters`).
        pruner: a :class:`TokenPruner` or a registered pruner name.
        budget: tokens kept per image (int) or fraction kept (float in (0, 1]).
        adapter: a registered adapter name to force; by default the first adapter
            whose ``matches(model)`` is true.
        options: adapter options (e.g. ``tokenizer=``, ``positions="original"``
            for VLMs, ``layer=6`` for encoders); unknown options raise ``TypeError``.
    """
    from prunekit.registry import get_registry

    check_budget(budget)
    pruner = _resolve_pruner(pruner)
    adapter_cls = (
        get_registry().spec("adapter", adapter).factory if adapter else find_adapter(model)
    )
    instance = adapter_cls(model, **options)
    missing = pruner.required_signals - instance.available_signals()
    if missing:
        raise ValueError(
            f"{type(pruner).__name__} needs {sorted(missing)}, which the {instance.family!r} adapter "
            f"cannot provide at its pruning point {instance.pruning_point()!r} "
            f"(it provides {sorted(instance.available_signals())})"
        )
    point = instance.pruning_point()
    if pruner.pruning_points is not None and point not in pruner.pruning_points:
        raise ValueError(
            f"{type(pruner).__name__} is defined for the pruning points {sorted(pruner.pruning_points)}, "
            f"but the {instance.family!r} adapter prunes at {point!r} with these options "
            "(see the adapter's options: before_projector=True, llm_layer=K, layer=L)"
        )
    llm_pruning = getattr(instance, "llm_pruning", None)
    handle = AttachHandle(
        model=model,
        pruner=pruner,
        budget=budget,
        pruning_point=point,
        llm_layer=None if llm_pruning is None else llm_pruning.layer,
    )
    undos = instance.install(handle)
    try:
        yield handle
    finally:
        for undo in reversed(undos):
            undo()
