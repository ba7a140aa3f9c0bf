"""``prunekit.attach``: prune a model in place for the duration of a ``with`` block."""

from __future__ import annotations

import copy
import sys
import warnings
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.hooks import RemovableHandle

from prunekit import accounting
from prunekit.adapters.base import (
    Adapter,
    AttributeOverride,
    Undo,
    caller_stacklevel,
    override_attribute,
    undo_on_error,
)
from prunekit.core.budget import Budget, check_budget
from prunekit.core.points import IN_LLM, PRE_LLM, PRE_PROJECTOR
from prunekit.core.pruner import TokenPruner
from prunekit.core.result import PruneResult


@dataclass
class AttachHandle:
    """What ``with prunekit.attach(...) as handle:`` gives: the pruner, the budget and
    every result produced.

    The handle records while its block is active (one block per model at a time,
    see :func:`attach`); it stays readable after the block exits. Calls on a deep
    copy of the model taken inside the block record nothing (the copy is unpruned).

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

    def kept_tokens(self) -> accounting.KeptTokens:
        """Mean and spread of the tokens kept per recorded row (an image; with
        ``llm_layer``, a prompt and all its images), over every result recorded so far.

        With a fixed budget every row keeps the same count (the spread is 0, unless rows
        have fewer tokens than the budget); adaptive budgets (``Picks.counts``, e.g.
        ``score_mass`` or an energy budget) keep different counts::

            pruner = prunekit.create_pruner("score_mass", pruner="fastervlm", mass=0.9)
            with prunekit.attach(model, pruner, budget=1.0) as handle:
                model.generate(**inputs, max_new_tokens=32)
            print(handle.kept_tokens().summary())  # kept MEAN ± SD (MIN-MAX) of N visual ...
        """
        kept = [int(c) for result in self.results for c in result.counts.tolist()]
        if not kept:
            raise ValueError("kept_tokens() needs a pruning call first (no result recorded yet)")
        tokens_in = [int(v) for result in self.results for v in result.valid_counts.tolist()]
        return accounting.KeptTokens.of(kept, tokens_in)


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
    matching = [spec for spec in specs if spec.factory.matches(model)]
    if len(matching) == 1:
        return matching[0].factory
    if matching:  # never pick one silently: the families disagree about this model
        names = ", ".join(f"{spec.name!r} (plugin {spec.plugin!r})" for spec in matching)
        raise TypeError(
            f"{len(matching)} adapters match {type(model).__name__}: {names}; "
            "choose one with attach(..., adapter=NAME)"
        )
    families = sorted({spec.factory.family for spec in specs})
    raise TypeError(
        f"prunekit has no adapter for {type(model).__name__}; supported families: {families}. "
        "A plugin can add one by registering an 'adapter'."
    )


class AttachNotEnteredWarning(UserWarning):
    """An ``attach(...)`` object was garbage-collected without being entered: nothing was pruned."""


#: models attached right now (entered, not yet exited) -> their handle
_ATTACHED: weakref.WeakKeyDictionary[torch.nn.Module, AttachHandle] = weakref.WeakKeyDictionary()


def attach(
    model: torch.nn.Module,
    pruner: TokenPruner | str,
    *,
    budget: Budget,
    adapter: str | None = None,
    **options: Any,
) -> Attachment:
    """Prune ``model`` with ``pruner`` inside the ``with`` block.

    ``model.generate(...)`` and ``model(...)`` run pruned inside the block; the
    handle's :attr:`~AttachHandle.results` collect the kept indices. Only the
    model instance is touched, and it is restored on exit, also when the body
    raises. ``generate`` returns the caller's layout, as Hugging Face's does: the
    ``input_ids`` as given (padding included) then the new tokens, so the answer
    is ``out[:, inputs["input_ids"].shape[1]:]`` with or without pruning.

    Every argument is checked here, before anything is installed; the returned
    object is a single-use context manager whose ``__enter__`` installs the
    pruning and returns the :class:`AttachHandle`::

        with prunekit.attach(model, "resprune", budget=128) as handle:
            out = model.generate(**inputs, max_new_tokens=32)

    Rules:

    * one attach per model at a time: entering a second one on a model that is
      attached (or on a module inside it, or a model containing it) raises
      ``RuntimeError``; exit the first block (detach) first. Several *different*
      models may be attached at once and exited in any order;
    * the object is entered once; entering it again raises ``RuntimeError``;
      one never entered warns (:class:`AttachNotEnteredWarning`) when collected;
    * ``copy.deepcopy(model)`` inside the block gives a plain, unpruned copy
      (no prunekit attribute or hook); pickling the model inside the block
      raises ``TypeError`` (pickle it outside the block).

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
            + (f": {note}" if (note := instance.missing_signals_note(missing)) else "")
        )
    point = instance.pruning_point()
    if pruner.pruning_points is not None and point not in pruner.pruning_points:
        raise ValueError(
            f"{type(pruner).__name__} is defined for the pruning points {sorted(pruner.pruning_points)}, "
            f"but the {instance.family!r} adapter prunes at {point!r} with these options "
            "(see the adapter's options: before_projector=True, llm_layer=K, layer=L)"
        )
    handle = AttachHandle(
        model=model,
        pruner=pruner,
        budget=budget,
        pruning_point=point,
        llm_layer=instance.llm_layer(),
    )
    return Attachment(instance, handle)


class Attachment:
    """What :func:`attach` returns: a single-use context manager that installs the
    adapter on ``__enter__`` (returning the :class:`AttachHandle`) and undoes every
    change on ``__exit__``."""

    def __init__(self, adapter: Adapter, handle: AttachHandle) -> None:
        self.adapter = adapter
        self.handle = handle
        self._undos: list[Undo] = []
        frame = sys._getframe(caller_stacklevel() - 1)  # the user's attach(...) line, for warnings
        self._site = (frame.f_code.co_filename, frame.f_lineno, frame.f_globals.get("__name__"))
        self._state = "new"  # -> "entered" -> "exited", or "failed"

    def __enter__(self) -> AttachHandle:
        model = self.handle.model
        if self._state != "new":
            raise RuntimeError(
                f"this prunekit.attach(...) on {type(model).__name__} was already entered; "
                "an attach object is used once: call prunekit.attach(...) again for a new block"
            )
        self._state = "failed"  # until installed: a failed enter leaves nothing to exit
        _refuse_nesting(model)
        undos: list[Undo] = []
        with undo_on_error(undos):
            undos.extend(self.adapter.install(self.handle))
            undos.extend(_guard_copies(model, undos))
        self._undos = undos
        _ATTACHED[model] = self.handle
        self._state = "entered"
        return self.handle

    def __exit__(self, *exc_info: object) -> None:
        if self._state != "entered":
            return
        self._state = "exited"
        _ATTACHED.pop(self.handle.model, None)
        errors = []
        for undo in reversed(self._undos):  # every undo runs, even if one fails
            try:
                undo()
            except Exception as error:  # noqa: BLE001 - re-raised below
                errors.append(error)
        self._undos = []
        if errors:
            raise errors[0]

    def __del__(self) -> None:
        if getattr(self, "_state", None) != "new":
            return
        filename, lineno, module = self._site
        warnings.warn_explicit(
            f"prunekit.attach(...) on {type(self.handle.model).__name__} was never entered, "
            "so nothing was pruned; use `with prunekit.attach(...) as handle:`",
            AttachNotEnteredWarning,
            filename,
            lineno,
            module=module,
        )


def _refuse_nesting(model: torch.nn.Module) -> None:
    """Raise if ``model``, a module inside it or a model containing it is attached now."""
    for other, handle in list(_ATTACHED.items()):
        if other is model:
            relation = "is already attached"
        elif any(module is model for module in other.modules()):
            relation = f"is inside a {type(other).__name__} that is attached"
        elif any(module is other for module in model.modules()):
            relation = f"contains a {type(other).__name__} that is attached"
        else:
            continue
        raise RuntimeError(
            f"{type(model).__name__} {relation} (prunekit.attach with "
            f"{type(handle.pruner).__name__}, budget={handle.budget!r}); prunekit does not stack "
            "attach blocks on one model: exit (detach) the first block first"
        )


#: the instance attributes that guard an attached model against copies
GUARDS = ("__deepcopy__", "__reduce_ex__")


def _guard_copies(model: torch.nn.Module, undos: list[Undo]) -> list[Undo]:
    """Make the changes in ``undos`` impossible to carry into a copy.

    The model and every module that got a prunekit hook get an instance
    ``__deepcopy__`` that copies them as usual, then removes from the copy every
    hook and instance attribute prunekit installed; pickling the model (and
    ``copy.copy``) raises a clear ``TypeError``. Returns the undos of the guards.
    """
    hooks = [
        undo.__self__
        for undo in undos
        if isinstance(getattr(undo, "__self__", None), RemovableHandle)
    ]
    overrides = [undo for undo in undos if isinstance(undo, AttributeOverride)]

    def hook_dicts(hook: RemovableHandle) -> list[dict]:
        refs = (hook.hooks_dict_ref, *hook.extra_dict_ref)
        return [d for d in (ref() for ref in refs) if d is not None]

    hooked = {id(d) for hook in hooks for d in hook_dicts(hook)}
    modules = [
        module
        for module in model.modules()
        if module is model or any(id(value) in hooked for value in vars(module).values())
    ]

    def clean(memo: dict[int, Any]) -> None:
        for hook in hooks:
            for original in hook_dicts(hook):
                copied = memo.get(id(original))
                if copied is not None and copied is not original:
                    copied.pop(hook.id, None)
        for override in overrides:
            override.revert_in(memo)

    def make_deepcopy(module: torch.nn.Module) -> Callable[[dict[int, Any]], torch.nn.Module]:
        def __deepcopy__(memo: dict[int, Any]) -> torch.nn.Module:
            for hook in hooks:  # share prunekit's hook callables instead of copying their state
                for original in hook_dicts(hook):
                    value = original.get(hook.id)
                    memo.setdefault(id(value), value)
            # copy without the guards themselves (deepcopy would call them again)
            own = {name: module.__dict__.pop(name) for name in GUARDS if name in module.__dict__}
            try:
                copied = copy.deepcopy(module, memo)
            finally:
                module.__dict__.update(own)
            clean(memo)
            return copied

        return __deepcopy__

    def __reduce_ex__(protocol: int) -> Any:
        raise TypeError(
            f"cannot pickle or copy.copy a {type(model).__name__} while prunekit.attach is active "
            "(its pruning patches are not picklable); do it outside the `with` block, or use "
            "copy.deepcopy, which gives an unpruned copy"
        )

    guards = [
        override_attribute(module, "__deepcopy__", make_deepcopy(module)) for module in modules
    ]
    guards.append(override_attribute(model, "__reduce_ex__", __reduce_ex__))
    overrides.extend(guards)  # a copy taken inside the block drops the guards too
    return guards
