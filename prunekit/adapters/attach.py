"""``prunekit.attach``: prune a model in place for the duration of a ``with`` block."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from prunekit.core.budget import Budget, check_budget
from prunekit.core.pruner import TokenPruner
from prunekit.core.result import PruneResult


@dataclass
class AttachHandle:
    """What ``attach`` yields: the pruner, the budget and every result produced.

    Attributes:
        results: one :class:`PruneResult` per pruning call, in call order (for a
            VLM: one per forward pass that carried images, covering its images).
    """

    model: torch.nn.Module
    pruner: TokenPruner
    budget: Budget
    results: list[PruneResult] = field(default_factory=list)

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
    handle = AttachHandle(model=model, pruner=pruner, budget=budget)
    undos = instance.install(handle)
    try:
        yield handle
    finally:
        for undo in reversed(undos):
            undo()
