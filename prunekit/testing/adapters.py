"""The contract every model-family adapter honours, as reusable tests for plugin authors.

Each family gives one :class:`AdapterCase`: a tiny model, its inputs (a left-padded
ragged batch, and each prompt alone), and a hand-built reference computed from the
kept indices in ``handle.results`` and the model's *own* functions, independent of the
adapter. A plugin reuses the suite with a one-line pytest class::

    from prunekit.testing import AdapterCase, AdapterContract

    class TestMyAdapter(AdapterContract):
        case = AdapterCase(family="my_vlm", build=tiny_model, inputs=inputs, reference=reference)

or, outside pytest, ``prunekit.testing.check_adapter(case)``.

The contract, for every case:

* the registered adapter of ``case.family`` is the one found for the tiny model;
* a budget covering every token (``full_budgets``) gives the unpruned model's output
  exactly, and records that every token was kept;
* the pruned output equals the reference, for every budget and option variant:
  VLMs: ``generate`` returns the caller's ``input_ids`` then exactly the tokens decoded
  from the hand-built pruned prompt (:class:`ReferencePrompt`), with one
  :class:`~prunekit.PruneResult` per call; the pruned ``forward`` logits equal the
  model's logits on that prompt at its real positions. Encoders: the outputs equal
  the reference outputs;
* a ragged batch gives each prompt's output alone;
* the pruner is given the model's own tokens at the pruning point (``case.features``,
  computed without the adapter), and the recorded kept indices are the pruner's own
  selection on them;
* VLMs: with a text-conditioned pruner and ``case.tokenizer``, every image of the batch
  is weighted by its own prompt's nouns: the text and relevance weights it gets in the
  batch equal those it gets with its prompt alone;
* VLMs: decoding with the KV cache equals decoding without it;
* the model is bit-identical after the block, also when the block raises: parameters
  and buffers, instance attributes, hooks, the classes' attributes, the config, and
  its outputs;
* refused options and inputs (the case's refusals, see :class:`Refusal`, plus an
  unknown option) raise the named error with a message matching ``match``, leaving the
  model clean.

Encoders have no ``generate`` and no KV cache: those checks are skipped with a reason.
:func:`hand_built_prompt` builds the reference of LLaVA-style families (the model's
own image features, the kept rows gathered, the dropped placeholders removed).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch

import prunekit
from prunekit.core.budget import Budget
from prunekit.core.pruner import TokenPruner
from prunekit.core.result import PruneResult

try:  # the mixin needs pytest; check_adapter does not
    import pytest
except ImportError:  # pragma: no cover - exercised only without pytest
    pytest = None

__all__ = [
    "CHECKS",
    "GENERATE_KWARGS",
    "UNKNOWN_OPTION",
    "AdapterCase",
    "AdapterContract",
    "ReferencePrompt",
    "Refusal",
    "check_adapter",
    "generate_from",
    "greedy_without_cache",
    "hand_built_prompt",
    "kept_indices",
    "model_state",
    "state_differences",
]

#: ``generate`` keyword arguments of the contract's VLM checks (a case may replace them)
GENERATE_KWARGS: Mapping[str, Any] = {"max_new_tokens": 6, "min_new_tokens": 6, "do_sample": False}
#: an attach option no adapter takes: every adapter must refuse it with ``TypeError``
UNKNOWN_OPTION = "not_an_option_of_any_adapter"


# --------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class ReferencePrompt:
    """The pruned prompt of a VLM, built by hand: what the language model should receive.

    Attributes:
        inputs_embeds: ``(B, L', d)`` embeddings, kept image features at their placeholders.
        attention_mask: ``(B, L')``, 0 on padding.
        position_ids: the positions the model gets (any layout it accepts), or ``None``
            to let the model number the shortened prompt.
        input_ids: ``(B, L')`` shortened ids, handed to ``generate`` with the embeddings
            (optional).
    """

    inputs_embeds: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor | None = None
    input_ids: torch.Tensor | None = None

    def model_kwargs(self, *, generate: bool = False) -> dict[str, torch.Tensor]:
        """Keyword arguments of ``model(...)`` for this prompt, or of ``model.generate(...)``
        (which also takes the ``input_ids``, if given)."""
        kwargs = {"inputs_embeds": self.inputs_embeds, "attention_mask": self.attention_mask}
        if self.position_ids is not None:
            kwargs["position_ids"] = self.position_ids
        if generate and self.input_ids is not None:
            kwargs["input_ids"] = self.input_ids
        return kwargs


@dataclass(frozen=True, kw_only=True)
class Refusal:
    """An option or input the adapter must refuse with a clear error.

    Attributes:
        match: a regular expression the error message must contain (``re.search``),
            e.g. the name of the refused argument.
        options: attach options (over the case's ``options``); refused at attach
            when ``inputs`` is ``None``.
        inputs: edits the case's inputs (a copy); then the call with them is refused
            (VLMs: ``model(**inputs)``; encoders: ``case.run``).
        error: the exception type expected.
        budget: the attach budget (default: the case's first pruning budget).
    """

    match: str
    options: Mapping[str, Any] = field(default_factory=dict)
    inputs: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    # (a factory, not ``= ValueError``: Sphinx would document a class-valued default twice)
    error: type[Exception] = field(default_factory=lambda: ValueError)
    budget: Budget | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.match, str) or not self.match:
            raise ValueError("Refusal.match must be a non-empty regular expression")


def _refusal_label(refusal: Refusal) -> str:
    parts = [f"{k}={v!r}" for k, v in refusal.options.items()]
    if refusal.budget is not None:
        parts.append(f"budget={refusal.budget!r}")
    if refusal.inputs is not None:
        parts.append(f"inputs edited by {getattr(refusal.inputs, '__name__', 'a function')}")
    return ", ".join(parts) or "the case's options"


@dataclass(kw_only=True)
class AdapterCase:
    """One adapter family under test: a tiny model, its inputs and a hand-built reference.

    Attributes:
        family: the registered adapter name (``prunekit.list_adapters()``).
        build: ``() -> model``, a tiny model (built once, on first use, and cached).
        inputs: ``(model, which) -> dict``, the model inputs of the case's prompts
            ``which`` (indices into a fixed list of ``n_prompts``), batched with left
            padding. The same index always gives the same prompt and the same image
            pixels, so ``inputs(model, [1])`` is prompt 1 alone. VLM prompts 0 and 1
            must differ in length. Encoders: ``{"pixel_values": ...}`` of images ``which``.
        reference: ``(model, inputs, results, options) -> expected``, built from the kept
            indices in ``results`` (``handle.results`` of the call) and the model's own
            functions. VLMs: a :class:`ReferencePrompt`; encoders: the outputs ``run``
            should return. ``options`` are the attach options of the check.
        kind: ``"vlm"`` (``generate`` / ``forward``) or ``"encoder"``.
        label: the test id (default: ``family``); give one per case when a family has
            several.
        run: encoders: ``(model, inputs) -> tuple of tensors`` (each with the batch
            first), the public call whose outputs are compared.
        decode: VLMs: ``(model, prompt, generate_kwargs) -> (B, new)`` tokens greedily
            decoded from the reference prompt (default :func:`generate_from`).
        recompute: VLMs: like ``decode`` but without any KV cache, every step a full
            forward over the prompt and the tokens so far (default
            :func:`greedy_without_cache`); the KV-cache check compares the pruned, cached
            ``generate`` with it. Families whose ``decode`` already recomputes (or that need
            extra inputs, e.g. DeepStack) pass it here too.
        pruner: a registered pruner name, a :class:`~prunekit.TokenPruner`, or a
            factory of one.
        options: attach options of every check (e.g. ``{"layer": 1}`` for encoders).
        variants: option sets the reference check runs over (each over ``options``).
        budgets: budgets that prune.
        full_budgets: budgets covering every token (must give the unpruned model).
        refusals: family-specific refusals (an unknown option is always checked).
        n_prompts: how many prompts ``inputs`` knows (the batch is all of them).
        generate_kwargs: ``generate`` keyword arguments; ``max_new_tokens`` is required.
        tolerance: ``torch.testing.assert_close`` keyword arguments for comparisons of
            floating outputs with the reference and across batch layouts; ``None``
            compares exactly. Full-budget and restored outputs are always compared exactly.
        features: ``(model, inputs, options) -> per pruned row`` (an image, a tile, a
            frame, in placeholder order; encoders: an image) the ``(n_i, d)`` tokens the
            pruner must be given, computed from the model's own functions without the
            adapter: VLMs, the model's own image features at the pruning point; encoders,
            the patch tokens entering block ``options["layer"]``. The pruner-input check
            compares what the pruner got with them and the kept indices with the pruner's
            own selection on them (skipped when ``None``).
        always_kept: ``(model, features_i) -> rows`` of a pruned row that the adapter
            keeps without offering them to the pruner (e.g. LLaVA-NeXT's row newlines);
            ``None``: every row is a candidate.
        tokenizer: VLMs: a tokenizer (``decode`` and ``__call__``, see
            :func:`prunekit.text.embed.embed_prompt_nouns`) that reads the case's
            prompts as words with different nouns. The text check then prunes with a
            text-conditioned pruner and compares each prompt's text and relevance
            weights in the batch with those of the prompt alone (skipped when ``None``).
    """

    family: str
    build: Callable[[], torch.nn.Module]
    inputs: Callable[[torch.nn.Module, Sequence[int]], dict[str, Any]]
    reference: Callable[..., Any]
    kind: Literal["vlm", "encoder"] = "vlm"
    label: str = ""
    run: Callable[[torch.nn.Module, dict[str, Any]], Sequence[torch.Tensor]] | None = None
    decode: Callable[..., torch.Tensor] | None = None
    recompute: Callable[..., torch.Tensor] | None = None
    pruner: Any = "resprune"
    options: Mapping[str, Any] = field(default_factory=dict)
    variants: Sequence[Mapping[str, Any]] = ({},)
    budgets: Sequence[Budget] = (2, 0.5)
    full_budgets: Sequence[Budget] = (1.0, 10_000)
    refusals: Sequence[Refusal] = ()
    n_prompts: int = 2
    generate_kwargs: Mapping[str, Any] = field(default_factory=lambda: dict(GENERATE_KWARGS))
    tolerance: Mapping[str, Any] | None = None
    features: Callable[..., Sequence[torch.Tensor]] | None = None
    always_kept: Callable[[torch.nn.Module, torch.Tensor], Sequence[int]] | None = None
    tokenizer: Any = None
    _model: torch.nn.Module | None = field(default=None, init=False, repr=False, compare=False)
    _pristine: dict[str, Any] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.family, str) or not self.family:
            raise ValueError("AdapterCase.family must be a registered adapter name")
        if self.kind not in ("vlm", "encoder"):
            raise ValueError(f"AdapterCase.kind must be 'vlm' or 'encoder', got {self.kind!r}")
        if self.kind == "encoder" and self.run is None:
            raise ValueError(f"encoder case {self.family!r} needs run=(model, inputs) -> outputs")
        if self.kind == "vlm" and "max_new_tokens" not in self.generate_kwargs:
            raise ValueError("AdapterCase.generate_kwargs must give max_new_tokens")
        if self.n_prompts < 2:
            raise ValueError("AdapterCase.n_prompts must be at least 2 (a ragged batch)")
        if not self.budgets or not self.full_budgets or not self.variants:
            raise ValueError("AdapterCase budgets, full_budgets and variants must not be empty")
        self.label = self.label or self.family

    def model(self) -> torch.nn.Module:
        """The tiny model (built on first use)."""
        if self._model is None:
            self._model = self.build()
            # one unpruned call first: transformers installs some hooks on the first call
            _run_all(self, _all_prompts(self))
            self._pristine = model_state(self._model)
        return self._model

    def pristine_state(self) -> dict[str, Any]:
        """The :func:`model_state` of the model as built (after one unpruned call), before
        any check attached to it."""
        self.model()
        return self._pristine

    def make_pruner(self) -> TokenPruner | str:
        """What ``attach`` gets as the pruner."""
        if isinstance(self.pruner, (str, TokenPruner)):
            return self.pruner
        return self.pruner()

    def attach(self, budget: Budget, **options: Any) -> Any:
        """``prunekit.attach`` on the case's model with its pruner, ``options`` over the case's."""
        return prunekit.attach(
            self.model(), self.make_pruner(), budget=budget, **{**self.options, **options}
        )

    def __repr__(self) -> str:
        return self.label


# --------------------------------------------------------------------------- helpers


def kept_indices(result: PruneResult) -> list[list[int]]:
    """Per pruned sample (image), the kept indices, ascending."""
    return [row.tolist() for row in result.split()]


def _config_id(model: torch.nn.Module, names: Sequence[str]) -> int | None:
    config = model.config
    for holder in (config, getattr(config, "text_config", None)):
        for name in names:
            value = getattr(holder, name, None)
            if value is not None:
                return int(value)
    return None


@torch.no_grad()
def hand_built_prompt(
    model: torch.nn.Module,
    inputs: Mapping[str, torch.Tensor],
    features: Sequence[torch.Tensor],
    kept: Sequence[Sequence[int]],
    *,
    positions: str = "contiguous",
    image_token_id: int | None = None,
) -> ReferencePrompt:
    """The pruned prompt of a LLaVA-style model, built without the adapter.

    Every prompt's real tokens (``attention_mask``) are walked in order: an image
    placeholder whose feature row is not in ``kept`` is dropped; the kept rows of
    ``features`` fill the remaining placeholders; the prompts are left-padded again
    and embedded with the model's input embeddings.

    Args:
        model: the VLM (its ``get_input_embeddings`` and config are used).
        inputs: the unpruned call's ``input_ids`` and ``attention_mask``.
        features: per image, in placeholder order, the model's own projected features
            ``(n_i, d)`` (what the model scatters into the placeholders).
        kept: per image, the kept rows (including rows the adapter always keeps).
        positions: ``"contiguous"`` (position ids left to the model) or ``"original"``
            (each kept token's index among its prompt's real tokens).
        image_token_id: the placeholder id (default: the config's ``image_token_id`` /
            ``image_token_index``).
    """
    if image_token_id is None:
        image_token_id = _config_id(model, ("image_token_id", "image_token_index"))
    if image_token_id is None:
        raise ValueError("hand_built_prompt needs image_token_id (the config names none)")
    pad_id = _config_id(model, ("pad_token_id",)) or 0
    if len(features) != len(kept):
        raise ValueError(f"{len(features)} images of features but kept rows for {len(kept)}")
    ids = inputs["input_ids"]
    mask = inputs.get("attention_mask")
    mask = torch.ones_like(ids) if mask is None else mask
    flags = [set(k) for k in kept]
    rows, original, image, row_in_image = [], [], 0, 0
    for b in range(ids.shape[0]):
        tokens, where = [], []
        for position, token in enumerate(ids[b][mask[b].bool()].tolist()):
            if token == image_token_id:
                if image >= len(features):
                    raise ValueError("the prompt has more placeholders than the features' rows")
                keep = row_in_image in flags[image]
                row_in_image += 1
                if row_in_image == features[image].shape[0]:
                    image, row_in_image = image + 1, 0
                if not keep:
                    continue
            tokens.append(token)
            where.append(position)
        rows.append(tokens)
        original.append(where)
    if image != len(features) or row_in_image:
        raise ValueError("the prompt's placeholders and the features' rows differ in number")
    width = max(len(r) for r in rows)
    new_ids = torch.full((len(rows), width), pad_id, dtype=ids.dtype)
    new_mask = torch.zeros(len(rows), width, dtype=mask.dtype)
    position_ids = torch.zeros(len(rows), width, dtype=torch.long)
    for b, (tokens, where) in enumerate(zip(rows, original)):
        new_ids[b, width - len(tokens) :] = torch.tensor(tokens, dtype=ids.dtype)
        new_mask[b, width - len(tokens) :] = 1
        position_ids[b, width - len(tokens) :] = torch.tensor(where)
    new_ids, new_mask = new_ids.to(ids.device), new_mask.to(ids.device)
    embeds = model.get_input_embeddings()(new_ids)
    kept_rows = [f[sorted(k)] for f, k in zip(features, kept)]
    kept_features = torch.cat(kept_rows).to(embeds.device, embeds.dtype)
    embeds = embeds.masked_scatter((new_ids == image_token_id).unsqueeze(-1), kept_features)
    return ReferencePrompt(
        inputs_embeds=embeds,
        attention_mask=new_mask,
        position_ids=position_ids.to(ids.device) if positions == "original" else None,
        input_ids=new_ids,
    )


@torch.no_grad()
def generate_from(
    model: torch.nn.Module, prompt: ReferencePrompt, generate_kwargs: Mapping[str, Any]
) -> torch.Tensor:
    """The new tokens ``(B, max_new_tokens)`` the model's own ``generate`` decodes from ``prompt``."""
    out = model.generate(**prompt.model_kwargs(generate=True), **generate_kwargs)
    return out[:, -int(generate_kwargs["max_new_tokens"]) :]


@torch.no_grad()
def greedy_without_cache(
    model: torch.nn.Module, prompt: ReferencePrompt, generate_kwargs: Mapping[str, Any]
) -> torch.Tensor:
    """The new tokens ``(B, max_new_tokens)`` of a greedy loop without KV cache: each step
    calls the model on the whole prompt plus the tokens so far (``inputs_embeds``), with
    the prompt's positions (or ``cumsum(mask) - 1``, as ``generate`` numbers a prompt)
    continued at the last column + 1 on every axis, as ``generate`` continues them;
    ``min_new_tokens`` suppresses the EOS ids as ``generate`` does (other logits
    processors are not imitated: keep the case's ``generate_kwargs`` greedy and plain).

    ``generate`` on ``inputs_embeds`` always decodes with a cache (transformers turns
    ``use_cache`` back on), so this loop is the independent recomputation."""
    embed = model.get_input_embeddings()
    embeds = prompt.inputs_embeds
    mask = prompt.attention_mask
    positions = prompt.position_ids
    if positions is None:
        positions = (mask.long().cumsum(dim=-1) - 1).clamp_min(0)
    eos = generate_kwargs.get("eos_token_id", model.generation_config.eos_token_id)
    eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    new_tokens = []
    for step in range(int(generate_kwargs["max_new_tokens"])):
        logits = model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).logits
        logits = logits[:, -1]
        _expect(not bool(logits.isnan().any()), "NaN logits in the recomputation")
        if step < int(generate_kwargs.get("min_new_tokens") or 0):  # as generate suppresses EOS
            logits[:, eos] = -torch.inf
        token = logits.argmax(dim=-1)
        new_tokens.append(token)
        embeds = torch.cat([embeds, embed(token)[:, None].to(embeds.dtype)], dim=1)
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        positions = torch.cat([positions, positions[..., -1:] + 1], dim=-1)
    return torch.stack(new_tokens, dim=1)


def _class_attributes(cls: type) -> dict[str, int]:
    """The identity of a class's functions and descriptors (a class-level patch replaces or
    adds one); data values are left out, since transformers caches some on the class
    (e.g. ``_can_set_attn_implementation_cached_value``)."""
    return {k: id(v) for k, v in vars(cls).items() if callable(v) or hasattr(v, "__get__")}


def model_state(model: torch.nn.Module) -> dict[str, Any]:
    """What "bit-identical" compares: every parameter and buffer (values, dtype, the
    tensor object, ``requires_grad``), every module's instance attributes (tensors that
    are neither parameters nor buffers, and ``None``, are runtime state the model itself
    updates, e.g. Qwen's ``rope_deltas``: only their presence counts), its hooks, the
    methods and attribute names of every module class (no class-level patch), and the config."""
    tensors = {
        name: (value, value.detach().clone(), value.dtype, value.requires_grad)
        for name, value in model.state_dict(keep_vars=True).items()
    }
    modules = {}
    classes: dict[type, dict[str, int]] = {}
    for name, module in model.named_modules():
        attributes = {}
        for key, value in vars(module).items():
            if isinstance(value, torch.Tensor) or value is None:
                attributes[key] = "runtime tensor or None"
            elif isinstance(value, dict):
                attributes[key] = ("dict", tuple(value), tuple(map(id, value.values())))
            elif isinstance(value, (bool, int, float, str, type(None))):
                attributes[key] = value
            else:
                attributes[key] = ("object", id(value))
        modules[name] = attributes
        for cls in type(module).__mro__:
            if cls is not object and cls not in classes:
                classes[cls] = _class_attributes(cls)
    config = getattr(model, "config", None)
    return {
        "tensors": tensors,
        "modules": modules,
        "classes": classes,
        "config": config.to_dict() if hasattr(config, "to_dict") else None,
    }


def state_differences(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    """What changed between two :func:`model_state` snapshots, in words (empty: bit-identical)."""
    problems = []
    if before["tensors"].keys() != after["tensors"].keys():
        problems.append(
            f"state_dict keys changed: {set(before['tensors']) ^ set(after['tensors'])}"
        )
    for name, (obj, value, dtype, grad) in before["tensors"].items():
        if name not in after["tensors"]:
            continue
        obj2, value2, dtype2, grad2 = after["tensors"][name]
        if obj2 is not obj:
            problems.append(f"{name}: replaced by another tensor")
        elif dtype2 != dtype or grad2 != grad or not torch.equal(value2, value):
            problems.append(f"{name}: value, dtype or requires_grad changed")
    for name, attributes in before["modules"].items():
        other = after["modules"].get(name)
        if other is None:
            problems.append(f"module {name or '<model>'} removed")
        elif other != attributes:
            keys = sorted(
                k for k in set(attributes) | set(other) if attributes.get(k) != other.get(k)
            )
            problems.append(f"module {name or '<model>'}: instance attributes {keys} changed")
    for name in after["modules"].keys() - before["modules"].keys():
        problems.append(f"module {name} added")
    for cls, attributes in before["classes"].items():
        now = _class_attributes(cls)
        if now != attributes:
            keys = sorted(k for k in set(now) | set(attributes) if now.get(k) != attributes.get(k))
            problems.append(f"class {cls.__qualname__} was patched: {keys}")
    if before["config"] != after["config"]:
        problems.append("the config changed")
    return problems


# --------------------------------------------------------------------------- checks


class _Boom(Exception):
    """Raised inside an attach block to check the restore-on-error path."""


def _expect(condition: Any, message: str) -> None:
    """``assert`` that survives ``python -O`` and needs no pytest assertion rewriting."""
    if not bool(condition):
        raise AssertionError(message)


def _clone(inputs: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}


#: tolerance of the decoded steps' logits against the reference when the case sets none
#: (the same float32 model on the same prompt; only the order of sums may differ)
LOGITS_TOLERANCE = {"rtol": 1e-4, "atol": 1e-4}


def _all_prompts(case: AdapterCase) -> dict[str, Any]:
    return case.inputs(case.model(), list(range(case.n_prompts)))


def _generate(case: AdapterCase, inputs: Mapping[str, Any], **extra: Any) -> torch.Tensor:
    with torch.no_grad():
        return case.model().generate(**_clone(inputs), **case.generate_kwargs, **extra)


def _forward_logits(case: AdapterCase, inputs: Mapping[str, Any]) -> torch.Tensor:
    with torch.no_grad():
        return case.model()(**_clone(inputs)).logits


def _output(case: AdapterCase, inputs: Mapping[str, Any]) -> Any:
    """The compared output: VLMs' ``generate`` tokens, encoders' ``run`` tensors."""
    if case.kind == "vlm":
        return _generate(case, inputs)
    with torch.no_grad():
        return tuple(case.run(case.model(), _clone(inputs)))


def _compare(got: Any, expected: Any, what: str, tolerance: Mapping[str, Any] | None) -> None:
    """Tensors (or tuples of them) equal, exactly or within ``tolerance``."""
    if isinstance(got, torch.Tensor):
        got, expected = (got,), (expected,)
    _expect(len(got) == len(expected), f"{what}: {len(got)} outputs, expected {len(expected)}")
    for i, (a, b) in enumerate(zip(got, expected)):
        _expect(
            a.shape == b.shape,
            f"{what}: output {i} has shape {tuple(a.shape)}, expected {tuple(b.shape)}",
        )
        if a.is_floating_point():
            _expect(not a.isnan().any(), f"{what}: output {i} has NaN")
        if tolerance is None or not a.is_floating_point():
            _expect(
                torch.equal(a, b),
                f"{what}: output {i} differs"
                + (
                    f" (max abs diff {(a - b).abs().max().item():.3g})"
                    if a.is_floating_point()
                    else f":\n{a.tolist()}\nvs expected\n{b.tolist()}"
                ),
            )
        else:
            try:
                torch.testing.assert_close(a, b, **tolerance)
            except AssertionError as exc:
                raise AssertionError(f"{what}: output {i} differs: {exc}") from None


def _check_found(case: AdapterCase) -> None:
    from prunekit.adapters.attach import find_adapter
    from prunekit.registry import get_registry

    _expect(
        case.family in prunekit.list_adapters(),
        f"{case.family!r} is not a registered adapter ({prunekit.list_adapters()})",
    )
    registered = get_registry().spec("adapter", case.family).factory
    found = find_adapter(case.model())
    _expect(
        found is registered,
        f"find_adapter({type(case.model()).__name__}) gives {found.__name__}, "
        f"not the {case.family!r} adapter {registered.__name__}",
    )


def _check_inputs(case: AdapterCase, inputs: Mapping[str, Any]) -> None:
    """The case's batch is what the contract needs: VLM prompts of different lengths, left padded."""
    if case.kind != "vlm":
        return
    mask = inputs.get("attention_mask")
    _expect(mask is not None, f"{case.label}: inputs must give an attention_mask")
    _expect(
        mask.sum(dim=1).unique().numel() > 1 and bool((mask[:, 0] == 0).any()),
        f"{case.label}: the batch of all prompts must be ragged and left padded "
        f"(real lengths {mask.sum(dim=1).tolist()})",
    )


def _expect_pristine(case: AdapterCase, when: str) -> None:
    """The model's state is the one it was built with (:func:`model_state`)."""
    problems = state_differences(case.pristine_state(), model_state(case.model()))
    _expect(not problems, f"{when}: " + "; ".join(problems))


def _check_full_budget(case: AdapterCase, budget: Budget) -> None:
    inputs = _all_prompts(case)
    _check_inputs(case, inputs)
    expected = _output(case, inputs)
    with case.attach(budget) as handle:
        got = _output(case, inputs)
    _compare(got, expected, f"budget {budget!r} (covers every token) vs the unpruned model", None)
    _expect(handle.results, f"budget {budget!r}: the call recorded no PruneResult")
    _expect(
        case.kind != "vlm" or len(handle.results) == 1,
        f"budget {budget!r}: {len(handle.results)} PruneResults for one generate call, not 1",
    )
    for result in handle.results:
        _expect(
            result.counts.tolist() == result.valid_counts.tolist(),
            f"budget {budget!r}: kept {result.counts.tolist()} of {result.valid_counts.tolist()}",
        )


def _one_result(case: AdapterCase, handle: Any, what: str) -> list[PruneResult]:
    results = list(handle.results)
    if case.kind == "vlm":
        _expect(len(results) == 1, f"{what}: {len(results)} PruneResults for one call, not 1")
        _expect(
            int(results[0].counts.sum()) < int(results[0].valid_counts.sum()),
            f"{what}: nothing was pruned (counts {results[0].counts.tolist()})",
        )
    else:
        _expect(results, f"{what}: the call recorded no PruneResult")
    return results


def _check_reference(case: AdapterCase, budget: Budget, variant: Mapping[str, Any]) -> None:
    model = case.model()
    inputs = _all_prompts(case)
    options = {**case.options, **variant}
    what = f"budget {budget!r}, options {options}"
    step_logits = None
    with case.attach(budget, **variant) as handle:
        if case.kind == "vlm" and case.decode is None:
            with torch.no_grad():  # the tokens and the logits of every decoded step
                out = model.generate(
                    **_clone(inputs), **case.generate_kwargs,
                    output_logits=True, return_dict_in_generate=True,
                )  # fmt: skip
            got, step_logits = out.sequences, out.logits
        else:
            got = _output(case, inputs)
    results = _one_result(case, handle, what)
    if case.kind == "encoder":
        with torch.no_grad():
            expected = tuple(case.reference(model, _clone(inputs), results, options))
        _compare(got, expected, f"{what}: pruned outputs vs the reference", case.tolerance)
        return
    prompt = case.reference(model, _clone(inputs), results, options)
    _expect(isinstance(prompt, ReferencePrompt), "a VLM case's reference returns a ReferencePrompt")
    _expect(
        int(prompt.attention_mask.sum()) < int(inputs["attention_mask"].sum()),
        f"{what}: the reference prompt is not shorter than the unpruned one",
    )
    reference_logits = None
    if step_logits is None:
        decode = case.decode or generate_from
        expected = decode(model, prompt, dict(case.generate_kwargs))
    else:  # generate_from's decoding, with the logits of every step kept
        with torch.no_grad():
            reference = model.generate(
                **prompt.model_kwargs(generate=True), **case.generate_kwargs,
                output_logits=True, return_dict_in_generate=True,
            )  # fmt: skip
        new_tokens = int(case.generate_kwargs["max_new_tokens"])
        expected, reference_logits = reference.sequences[:, -new_tokens:], reference.logits
    width = inputs["input_ids"].shape[1]
    _compare(got[:, :width], inputs["input_ids"], f"{what}: generate's prompt part", None)
    _compare(got[:, width:], expected, f"{what}: generated tokens vs the reference", None)
    if reference_logits is not None:
        # equal tokens can hide wrong positions (a tiny model's argmax rarely flips): the
        # logits of every decoded step must match the reference's too
        _compare(
            tuple(step_logits), tuple(reference_logits),
            f"{what}: the logits of each decoded step vs the reference",
            case.tolerance or LOGITS_TOLERANCE,
        )  # fmt: skip


def _check_forward(case: AdapterCase) -> None:
    model = case.model()
    inputs = _all_prompts(case)
    budget = case.budgets[0]
    with case.attach(budget) as handle:
        logits = _forward_logits(case, inputs)
    results = _one_result(case, handle, f"forward, budget {budget!r}")
    prompt = case.reference(model, _clone(inputs), results, dict(case.options))
    with torch.no_grad():
        expected = model(**prompt.model_kwargs()).logits
    real = prompt.attention_mask.bool()
    _expect(
        logits.shape[:2] == real.shape,
        f"forward: pruned logits {tuple(logits.shape)} vs reference prompt {tuple(real.shape)}",
    )
    _compare(logits[real], expected[real], "forward logits vs the reference", case.tolerance)
    unpruned = _forward_logits(case, inputs)
    _expect(
        not torch.allclose(logits[:, -1], unpruned[:, -1]),
        "forward: pruning does not change the last logits (the tiny model ignores its images?)",
    )


def _check_batch(case: AdapterCase, budget: Budget, variant: Mapping[str, Any]) -> None:
    model = case.model()
    inputs = _all_prompts(case)
    _check_inputs(case, inputs)
    with case.attach(budget, **variant):
        together = _output(case, inputs)
    for b in range(case.n_prompts):
        with case.attach(budget, **variant):
            alone = _output(case, case.inputs(model, [b]))
        what = f"budget {budget!r}, {dict(variant)}: prompt {b} in the batch vs alone"
        if case.kind == "vlm":
            width = alone.shape[1]
            _compare(together[b, -width:], alone[0], what, None)
        else:
            _compare(tuple(t[b : b + 1] for t in together), tuple(alone), what, case.tolerance)


def _check_kv_cache(case: AdapterCase, budget: Budget, variant: Mapping[str, Any]) -> None:
    """The pruned, cached ``generate`` equals a loop that recomputes the whole reference
    prompt at every step (no cache at all)."""
    model = case.model()
    inputs = _all_prompts(case)
    with case.attach(budget, **variant) as handle:
        cached = _generate(case, inputs, use_cache=True)
    what = f"budget {budget!r}, {dict(variant)}: KV cache vs recomputation"
    results = _one_result(case, handle, what)
    prompt = case.reference(model, _clone(inputs), results, {**case.options, **variant})
    recompute = case.recompute or greedy_without_cache
    expected = recompute(model, prompt, dict(case.generate_kwargs))
    _compare(cached[:, inputs["input_ids"].shape[1] :], expected, what, None)


def _record_pruner_calls(handle: Any) -> list[dict[str, Any]]:
    """Record every call the adapter makes to ``handle.prune`` (the inputs the pruner is
    given, and its result), for the rest of the attach block."""
    calls: list[dict[str, Any]] = []
    prune = handle.prune

    def record(tokens: torch.Tensor, **kwargs: Any) -> PruneResult:
        result = prune(tokens, **kwargs)
        calls.append({**kwargs, "tokens": tokens.detach(), "result": result})
        return result

    handle.prune = record  # an instance attribute: the handle is dropped after the block
    return calls


def _own_batch(
    case: AdapterCase, features: Sequence[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``features`` zero-padded into ``(B, n_max, d)`` and the mask of the pruner's candidates
    (real rows that ``case.always_kept`` does not name)."""
    n_max = max(f.shape[0] for f in features)
    tokens = features[0].new_zeros(len(features), n_max, features[0].shape[-1])
    mask = torch.zeros(len(features), n_max, dtype=torch.bool, device=tokens.device)
    for i, f in enumerate(features):
        tokens[i, : f.shape[0]] = f
        mask[i, : f.shape[0]] = True
        if case.always_kept is not None:
            fixed = [int(j) for j in case.always_kept(case.model(), f)]
            mask[i, fixed] = False
    return tokens, mask


def _check_pruner_input(case: AdapterCase, budget: Budget, variant: Mapping[str, Any]) -> None:
    """The pruner gets the model's own tokens at the pruning point (``case.features``), and
    the kept indices are its own selection on them."""
    model = case.model()
    inputs = _all_prompts(case)
    options = {**case.options, **variant}
    what = f"budget {budget!r}, options {options}"
    with case.attach(budget, **variant) as handle:
        calls = _record_pruner_calls(handle)
        _run_all(case, inputs)
    _expect(calls, f"{what}: the pruner was never called")
    with torch.no_grad():
        features = [f.detach() for f in case.features(model, _clone(inputs), options)]
    tokens, candidates = _own_batch(case, features)
    for k, call in enumerate(calls):
        got, result = call["tokens"], call["result"]
        where = f"{what}, pruner call {k}"
        _expect(
            got.shape[0] == len(features) and got.shape[1] >= tokens.shape[1],
            f"{where}: the pruner got tokens {tuple(got.shape)} for {len(features)} rows of "
            f"{[f.shape[0] for f in features]} tokens",
        )
        for i, f in enumerate(features):
            _compare(
                got[i, : f.shape[0]],
                f.to(got.device, got.dtype),
                f"{where}: row {i}, the tokens the pruner got vs the model's own",
                case.tolerance,
            )
        given_mask = call.get("token_mask")
        if given_mask is None:
            given_mask = torch.ones(got.shape[:2], dtype=torch.bool, device=got.device)
        _compare(
            given_mask[:, : tokens.shape[1]].cpu(),
            candidates.cpu(),
            f"{where}: the pruner's token_mask vs the candidates",
            None,
        )
        _expect(
            not bool(given_mask[:, tokens.shape[1] :].any()),
            f"{where}: the token_mask offers padding past every row's last token",
        )
        own = handle.pruner.prune(
            tokens,
            budget=call.get("budget") or budget,
            text_embeds=call.get("text_embeds"),
            text_mask=call.get("text_mask"),
            token_mask=candidates,
            signals=call.get("signals"),
        )
        _compare(
            result.indices.cpu(),
            own.indices.cpu(),
            f"{where}: the kept indices vs the pruner's own selection on the model's tokens",
            None,
        )


def _check_text(case: AdapterCase) -> None:
    """Every image of the batch is weighted by its own prompt's nouns, as with its prompt alone."""
    model = case.model()
    # text-conditioned and deterministic; the mean over the nouns lets every noun count
    pruner = prunekit.create_pruner("resprune", alpha=4.0, aggregation="mean")
    budget = case.budgets[0]

    def text_call(which: Sequence[int]) -> dict[str, Any]:
        inputs = case.inputs(model, list(which))
        with prunekit.attach(
            model, pruner, budget=budget, tokenizer=case.tokenizer, **case.options
        ) as handle:
            calls = _record_pruner_calls(handle)
            _forward_logits(case, inputs)
        _expect(len(calls) == 1, f"prompts {list(which)}: {len(calls)} pruner calls, not 1")
        _expect(
            calls[0].get("text_embeds") is not None and calls[0].get("text_mask") is not None,
            f"prompts {list(which)}: the pruner got no text although attach got a tokenizer",
        )
        return calls[0]

    def text(call: dict[str, Any], row: int) -> torch.Tensor:
        return call["text_embeds"][row][call["text_mask"][row]]

    together = text_call(range(case.n_prompts))
    alone = [text_call([b]) for b in range(case.n_prompts)]
    row = 0
    for b, single in enumerate(alone):
        for j in range(single["tokens"].shape[0]):
            where = f"prompt {b}, its row {j} (row {row + j} of the batch)"
            _compare(
                text(together, row + j),
                text(single, j),
                f"{where}: the text the pruner got in the batch vs with the prompt alone",
                None,
            )
            n = int(single["result"].valid_counts[j])
            _compare(  # assert_close's defaults: the vision tower ran on another batch
                together["result"].scores[row + j, :n],
                single["result"].scores[j, :n],
                f"{where}: relevance weights in the batch vs with the prompt alone",
                {},
            )
        row += single["tokens"].shape[0]
    _expect(
        row == together["tokens"].shape[0],
        f"the batch has {together['tokens'].shape[0]} pruned rows, its prompts alone {row}",
    )
    # the check can fail: the prompts' nouns differ and change the weights
    first, second = alone[0], alone[1]
    _expect(
        text(first, 0).shape != text(second, 0).shape
        or not torch.equal(text(first, 0), text(second, 0)),
        "prompts 0 and 1 give the same text: the tokenizer must read different nouns",
    )
    swapped = pruner.prune(
        second["tokens"][:1],
        budget=budget,
        text_embeds=first["text_embeds"][:1],
        text_mask=first["text_mask"][:1],
        token_mask=None if second.get("token_mask") is None else second["token_mask"][:1],
    )
    _expect(
        not torch.allclose(swapped.scores, second["result"].scores[:1]),
        "prompt 1's image gets the same weights from prompt 0's text as from its own",
    )


def _run_all(case: AdapterCase, inputs: Mapping[str, Any]) -> tuple:
    """Every output the restore check compares (VLMs: generate tokens and forward logits)."""
    if case.kind == "vlm":
        return (_generate(case, inputs), _forward_logits(case, inputs))
    return _output(case, inputs)


def _check_restored(case: AdapterCase) -> None:
    inputs = _all_prompts(case)
    _expect_pristine(case, "before the check, an earlier attach block left the model changed")
    outputs = _run_all(case, inputs)
    budget = case.budgets[0]
    with case.attach(budget):
        pruned = _run_all(case, inputs)
    _expect_pristine(case, "after the block")
    _compare(_run_all(case, inputs), outputs, "outputs after the block", None)
    _expect(
        any(p.shape != o.shape or not torch.equal(p, o) for p, o in zip(pruned, outputs)),
        "inside the block the outputs were the unpruned ones",
    )
    try:
        with case.attach(budget):
            _run_all(case, inputs)
            raise _Boom
    except _Boom:
        pass
    _expect_pristine(case, "after an exception in the block")
    _compare(_run_all(case, inputs), outputs, "outputs after an exception in the block", None)


def _refusals(case: AdapterCase) -> list[Refusal]:
    generic = Refusal(options={UNKNOWN_OPTION: 1}, error=TypeError, match=UNKNOWN_OPTION)
    return [generic, *case.refusals]


def _check_refusal(case: AdapterCase, refusal: Refusal) -> None:
    _expect_pristine(case, "before the check, an earlier attach block left the model changed")
    budget = case.budgets[0] if refusal.budget is None else refusal.budget
    what = f"refusal ({_refusal_label(refusal)})"
    try:
        if refusal.inputs is None:
            with case.attach(budget, **refusal.options):
                pass
        else:
            inputs = refusal.inputs(_clone(_all_prompts(case)))
            with case.attach(budget, **refusal.options):
                if case.kind == "vlm":
                    _forward_logits(case, inputs)
                else:
                    _output(case, inputs)
    except Exception as exc:
        _expect(
            isinstance(exc, refusal.error),
            f"{what}: raised {type(exc).__name__}: {exc}, expected {refusal.error.__name__}",
        )
        _expect(
            re.search(refusal.match, str(exc)),
            f"{what}: the message {str(exc)!r} does not match {refusal.match!r}",
        )
    else:
        raise AssertionError(f"{what}: nothing was refused (expected {refusal.error.__name__})")
    _expect_pristine(case, f"{what}: the model was left changed")


def _skip_reason(case: AdapterCase, check: str) -> str | None:
    if case.kind == "encoder" and check == "kv_cache":
        return "encoders have no generate, so no KV cache"
    if case.kind == "encoder" and check == "forward":
        return "encoders: the reference check already compares the forward outputs"
    if check == "pruner_input" and case.features is None:
        return "the case gives no features (AdapterCase.features)"
    if case.kind == "encoder" and check == "text":
        return "encoders take text as attach options (text_embeds=, texts=), not from a prompt"
    if check == "text" and case.tokenizer is None:
        return "the case gives no tokenizer (AdapterCase.tokenizer)"
    return None


def _checks(case: AdapterCase) -> list[tuple[str, str, Callable[[], None]]]:
    """``(check name, description, thunk)`` for every contract check of ``case``."""
    checks: list[tuple[str, str, Callable[[], None]]] = [
        ("found", "the family's adapter is found", lambda: _check_found(case))
    ]
    checks += [
        ("full_budget", f"full budget {b!r}", lambda b=b: _check_full_budget(case, b))
        for b in case.full_budgets
    ]

    def per_budget_and_variant(name: str, label: str, check: Callable[..., None]) -> list:
        return [
            (name, f"{label}, budget {b!r}, {dict(v)}", lambda b=b, v=v: check(case, b, v))
            for b in case.budgets
            for v in case.variants
        ]

    checks += per_budget_and_variant("reference", "reference", _check_reference)
    checks += [("forward", "forward logits vs the reference", lambda: _check_forward(case))]
    checks += per_budget_and_variant("batch", "batch vs alone", _check_batch)
    checks += per_budget_and_variant("kv_cache", "KV cache", _check_kv_cache)
    checks += per_budget_and_variant("pruner_input", "pruner input", _check_pruner_input)
    checks += [("text", "each prompt's own text", lambda: _check_text(case))]
    checks += [("restored", "model restored", lambda: _check_restored(case))]
    checks += [
        ("refusal", f"refusal ({_refusal_label(r)})", lambda r=r: _check_refusal(case, r))
        for r in _refusals(case)
    ]
    return checks


#: the names of the contract's checks, in the order they run (``check_adapter(checks=...)``)
CHECKS: tuple[str, ...] = (
    "found",
    "full_budget",
    "reference",
    "forward",
    "batch",
    "kv_cache",
    "pruner_input",
    "text",
    "restored",
    "refusal",
)


def check_adapter(case: AdapterCase, *, checks: Sequence[str] | None = None) -> dict[str, str]:
    """Run the contract checks on ``case`` without pytest.

    Args:
        case: the adapter family under test.
        checks: names from :data:`CHECKS` to run (default: all), e.g. ``("refusal",)``.

    Returns:
        per check (its description), ``"passed"`` or ``"skipped: <reason>"``.

    Raises:
        ValueError: an unknown name in ``checks``.
        AssertionError: naming the case and the failed check (any error a check raises
            is reported this way, chained as the cause).
    """
    unknown = sorted(set(checks or ()) - set(CHECKS))
    if unknown:
        raise ValueError(f"checks: unknown names {unknown}; known: {list(CHECKS)}")
    report = {}
    for name, what, check in _checks(case):
        if checks is not None and name not in checks:
            continue
        reason = _skip_reason(case, name)
        if reason is not None:
            report[what] = f"skipped: {reason}"
            continue
        try:
            check()
        except Exception as exc:  # an unexpected error fails the contract just as well
            detail = str(exc) if isinstance(exc, AssertionError) else f"{type(exc).__name__}: {exc}"
            raise AssertionError(
                f"{case.label}: adapter contract check {what!r} failed: {detail}"
            ) from exc
        report[what] = "passed"
    return report


# --------------------------------------------------------------------------- pytest mixin


def _budget_id(budget: Budget) -> str:
    return repr(budget)


def _variant_id(variant: Mapping[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in variant.items()) or "default"


class AdapterContract:
    """Every contract check of a prunekit adapter, as a pytest mixin.

    For example::

        class TestMyAdapter(AdapterContract):
            case = AdapterCase(family="my_vlm", build=..., inputs=..., reference=...)

    Set ``cases = [...]`` instead to run the suite over several cases. Each test runs once
    per case (and per budget, variant or refusal where it says so); checks that do not
    apply to a case's kind are skipped with the reason.
    """

    #: the case under test
    case: ClassVar[AdapterCase | None] = None
    #: several cases at once; overrides ``case``
    cases: ClassVar[Sequence[AdapterCase] | None] = None

    def contract_cases(self) -> list[AdapterCase]:
        """The cases every test is parametrized over."""
        cases = self.cases if self.cases is not None else [self.case]
        if not cases or any(not isinstance(c, AdapterCase) for c in cases):
            raise TypeError(
                f"{type(self).__name__} must set `case = AdapterCase(...)` or `cases = [...]`"
            )
        return list(cases)

    def pytest_generate_tests(self, metafunc: Any) -> None:
        """Parametrize each test over the cases, and over each case's budgets, variants or
        refusals where the test takes them (ids like ``llava-4-positions=original``)."""
        if "adapter_case" not in metafunc.fixturenames:
            return
        cases = self.contract_cases()
        extra = [
            n for n in ("full_budget", "budget", "variant", "refusal") if n in metafunc.fixturenames
        ]
        rows, ids = [], []
        for case in cases:
            axes = {
                "full_budget": [(_budget_id(b), b) for b in case.full_budgets],
                "budget": [(_budget_id(b), b) for b in case.budgets],
                "variant": [(_variant_id(v), v) for v in case.variants],
                "refusal": [(_refusal_label(r), r) for r in _refusals(case)],
            }
            combos: list[tuple[list[str], list[Any]]] = [([case.label], [case])]
            for name in extra:
                combos = [(i + [j], v + [w]) for i, v in combos for j, w in axes[name]]
            for labels, values in combos:
                ids.append("-".join(labels))
                rows.append(tuple(values) if extra else values[0])
        names = ["adapter_case", *extra]
        metafunc.parametrize(names if extra else "adapter_case", rows, ids=ids)

    @staticmethod
    def _skip(case: AdapterCase, check: str) -> None:
        reason = _skip_reason(case, check)
        if reason is not None:
            pytest.skip(reason)

    def test_adapter_is_found(self, adapter_case: AdapterCase) -> None:
        """``find_adapter`` gives the registered adapter of ``case.family`` for the tiny model."""
        _check_found(adapter_case)

    def test_full_budget_is_the_unpruned_model(
        self, adapter_case: AdapterCase, full_budget: Budget
    ) -> None:
        """A budget covering every token gives the unpruned model's output exactly."""
        _check_full_budget(adapter_case, full_budget)

    def test_pruned_output_equals_reference(
        self, adapter_case: AdapterCase, budget: Budget, variant: Mapping[str, Any]
    ) -> None:
        """The pruned output equals the hand-built reference (VLMs: ``generate``, token for token)."""
        _check_reference(adapter_case, budget, variant)

    def test_pruned_forward_equals_reference(self, adapter_case: AdapterCase) -> None:
        """VLMs: the pruned ``forward`` logits equal the model's logits on the reference prompt."""
        self._skip(adapter_case, "forward")
        _check_forward(adapter_case)

    def test_batch_equals_each_prompt_alone(
        self, adapter_case: AdapterCase, budget: Budget, variant: Mapping[str, Any]
    ) -> None:
        """A prompt's output in the ragged batch equals its output alone."""
        _check_batch(adapter_case, budget, variant)

    def test_kv_cache_equals_recomputation(
        self, adapter_case: AdapterCase, budget: Budget, variant: Mapping[str, Any]
    ) -> None:
        """VLMs: pruned ``generate`` with the KV cache equals it without."""
        self._skip(adapter_case, "kv_cache")
        _check_kv_cache(adapter_case, budget, variant)

    def test_pruner_gets_the_models_own_tokens(
        self, adapter_case: AdapterCase, budget: Budget, variant: Mapping[str, Any]
    ) -> None:
        """The pruner is given the model's own tokens at the pruning point, and the kept
        indices are its own selection on them."""
        self._skip(adapter_case, "pruner_input")
        _check_pruner_input(adapter_case, budget, variant)

    def test_each_prompt_gets_its_own_text(self, adapter_case: AdapterCase) -> None:
        """VLMs: each image of a batch is weighted by its own prompt's nouns, as alone."""
        self._skip(adapter_case, "text")
        _check_text(adapter_case)

    def test_model_is_restored_after_the_block_and_on_error(
        self, adapter_case: AdapterCase
    ) -> None:
        """The model is bit-identical after the block, also when the block raises."""
        _check_restored(adapter_case)

    def test_refusals(self, adapter_case: AdapterCase, refusal: Refusal) -> None:
        """Refused options and inputs raise the named error with a clear message."""
        _check_refusal(adapter_case, refusal)
