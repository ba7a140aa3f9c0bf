"""What pruning saves: analytic prefill FLOPs and KV-cache bytes of a decoder-only LLM.

The model is a Llama-style decoder (Llama, Mistral, Qwen2, the language model of
LLaVA-1.5): per layer the ``q / k / v / o`` projections (grouped-query attention
with ``num_key_value_heads``), scaled dot-product attention and a gated MLP
(``gate``, ``up``, ``down``), then the LM head. The sizes come from a
``transformers`` config (a ``LlamaConfig``, or a ``LlavaConfig`` whose
``text_config`` is one) or from plain numbers in a :class:`DecoderShape`.

Conventions, chosen to equal ``torch.utils.flop_counter.FlopCounterMode``
(``tests/test_accounting.py`` checks it on tiny models):

* Only matrix products count, ``2 * m * n * k`` each. Norms, rotary embeddings,
  activations, softmax, residual adds and biases are left out (they are memory
  bound and a small fraction of the time).
* Attention counts the full ``tokens x tokens`` square for the scores and for the
  weighted sum, as the counter's formula for ``scaled_dot_product_attention``
  does (it ignores ``is_causal``) and as eager attention's ``matmul`` calls do.
  A causal kernel that skips the masked half does about half of that work; the
  attention term is small next to the projections and MLP for prompts much
  shorter than the hidden size, so the convention barely moves the totals.
* The LM head runs on the last token only by default (``logits="last"``), as
  ``generate`` does for the prefill (``logits_to_keep=1``); ``"all"`` counts every
  position (a plain forward), ``"none"`` none.
* A prefill starts from an empty cache: ``tokens`` queries attend over ``tokens`` keys.

KV-cache bytes are ``2 (keys and values) x layers x kv_heads x head_dim x tokens x
bytes per element``.

Example::

    from prunekit import accounting
    s = accounting.savings(llava_config, visual_tokens=576, kept_tokens=128, text_tokens=64)
    s.flops_before, s.flops_after, s.theoretical_speedup   # (576 + 64) / (128 + 64)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal

import torch

__all__ = [
    "DecoderShape",
    "KeptTokens",
    "Logits",
    "PrefillCost",
    "Savings",
    "decoder_shape",
    "head_flops",
    "kv_cache_bytes",
    "layer_flops",
    "prefill_cost",
    "savings",
]

#: which positions the LM head runs on during the prefill
Logits = Literal["last", "all", "none"]
_LOGITS = ("last", "all", "none")


def _check_count(name: str, value: object, *, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


@dataclass(frozen=True)
class DecoderShape:
    """The sizes of a Llama-style decoder that its prefill cost depends on.

    ``num_kv_heads`` defaults to ``num_heads`` (no grouped-query attention) and
    ``head_dim`` to ``hidden_size // num_heads``.
    """

    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    vocab_size: int
    num_kv_heads: int | None = None
    head_dim: int | None = None

    def __post_init__(self) -> None:
        for name in ("hidden_size", "num_layers", "num_heads", "intermediate_size", "vocab_size"):
            _check_count(name, getattr(self, name), minimum=1)
        if self.num_kv_heads is None:
            object.__setattr__(self, "num_kv_heads", self.num_heads)
        if self.head_dim is None:
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)
        _check_count("num_kv_heads", self.num_kv_heads, minimum=1)
        _check_count("head_dim", self.head_dim, minimum=1)
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads "
                f"({self.num_kv_heads})"
            )


def decoder_shape(config: Any) -> DecoderShape:
    """The :class:`DecoderShape` of ``config``: a ``DecoderShape`` (returned as is), or a
    ``transformers`` config of a Llama-style decoder or of a VLM with a ``text_config``."""
    if isinstance(config, DecoderShape):
        return config
    text = getattr(config, "text_config", None)
    if text is not None:
        config = text
    names = {
        "hidden_size": "hidden_size",
        "num_layers": "num_hidden_layers",
        "num_heads": "num_attention_heads",
        "intermediate_size": "intermediate_size",
        "vocab_size": "vocab_size",
    }
    missing = [attr for attr in names.values() if getattr(config, attr, None) is None]
    if missing:
        raise TypeError(
            f"config must be a DecoderShape or a Llama-style transformers config; "
            f"{type(config).__name__} has no {missing}"
        )
    values = {field: getattr(config, attr) for field, attr in names.items()}
    return DecoderShape(
        **values,
        num_kv_heads=getattr(config, "num_key_value_heads", None),
        head_dim=getattr(config, "head_dim", None),
    )


def layer_flops(config: Any, tokens: int) -> int:
    """Matmul FLOPs of one decoder layer over a prompt of ``tokens`` tokens."""
    shape = decoder_shape(config)
    t = _check_count("tokens", tokens)
    q_width = shape.num_heads * shape.head_dim
    kv_width = shape.num_kv_heads * shape.head_dim
    projections = 2 * t * shape.hidden_size * (2 * q_width + 2 * kv_width)  # q, o; k, v
    attention = 2 * 2 * shape.num_heads * t * t * shape.head_dim  # scores, weighted sum
    mlp = 3 * 2 * t * shape.hidden_size * shape.intermediate_size  # gate, up, down
    return projections + attention + mlp


def head_flops(config: Any, tokens: int, logits: Logits = "last") -> int:
    """Matmul FLOPs of the LM head after a prefill of ``tokens`` tokens (see :data:`Logits`)."""
    shape = decoder_shape(config)
    t = _check_count("tokens", tokens)
    if logits not in _LOGITS:
        raise ValueError(f"logits must be one of {_LOGITS}, got {logits!r}")
    positions = {"last": min(t, 1), "all": t, "none": 0}[logits]
    return 2 * positions * shape.hidden_size * shape.vocab_size


def _element_bytes(dtype: torch.dtype | int) -> int:
    if isinstance(dtype, torch.dtype):
        return dtype.itemsize
    return _check_count("dtype", dtype, minimum=1)


def kv_cache_bytes(
    config: Any, tokens: int, *, dtype: torch.dtype | int = torch.float16, layers: int | None = None
) -> int:
    """Bytes of the keys and values cached for ``tokens`` tokens in ``layers`` layers
    (default: all of them), in ``dtype`` (a torch dtype or bytes per element)."""
    shape = decoder_shape(config)
    t = _check_count("tokens", tokens)
    n = shape.num_layers if layers is None else _check_count("layers", layers)
    return 2 * n * shape.num_kv_heads * shape.head_dim * t * _element_bytes(dtype)


@dataclass(frozen=True)
class PrefillCost:
    """The cost of one unpruned prefill of ``tokens`` tokens."""

    tokens: int
    flops: int
    kv_cache_bytes: int


def prefill_cost(
    config: Any, tokens: int, *, logits: Logits = "last", dtype: torch.dtype | int = torch.float16
) -> PrefillCost:
    """FLOPs (every layer, plus the LM head) and KV-cache bytes of a prefill of ``tokens`` tokens."""
    shape = decoder_shape(config)
    flops = shape.num_layers * layer_flops(shape, tokens) + head_flops(shape, tokens, logits)
    return PrefillCost(tokens, flops, kv_cache_bytes(shape, tokens, dtype=dtype))


@dataclass(frozen=True)
class KeptTokens:
    """How many visual tokens the rows kept (a row: an image, or a prompt with its images):
    mean and spread, for pruners whose count varies by sample (adaptive budgets).

    Attributes:
        rows: how many rows the numbers cover.
        mean: tokens kept per row, on average.
        std: their standard deviation over these rows (population: 0 when every row
            keeps the same count).
        min, max: the fewest and the most tokens a row kept.
        tokens_in: tokens the pruner saw per row, on average (``None``: not known).
    """

    rows: int
    mean: float
    std: float
    min: int
    max: int
    tokens_in: float | None = None

    @classmethod
    def of(cls, kept: Sequence[int], tokens_in: Sequence[int] | None = None) -> KeptTokens:
        """The spread of ``kept`` (one count per row) and the mean of ``tokens_in``."""
        kept = [_check_count("kept", int(k)) for k in kept]
        if not kept:
            raise ValueError("kept must hold at least one row's count")
        n = len(kept)
        mean = math.fsum(kept) / n
        std = math.sqrt(math.fsum((k - mean) ** 2 for k in kept) / n)
        if tokens_in is not None:
            tokens_in = [int(t) for t in tokens_in]
            if len(tokens_in) != n:
                raise ValueError(
                    f"tokens_in must hold one count per row ({n}), got {len(tokens_in)}"
                )
        mean_in = None if tokens_in is None else math.fsum(tokens_in) / n
        return cls(rows=n, mean=mean, std=std, min=min(kept), max=max(kept), tokens_in=mean_in)

    @property
    def ragged(self) -> bool:
        """Whether the rows kept different numbers of tokens."""
        return self.min != self.max

    def summary(self) -> str:
        """One line for people, e.g. ``"kept 12.5 ± 3.5 (9-16) of 16 visual tokens per
        row over 2 rows"``; the spread is left out when every row kept the same count."""
        if self.ragged:
            kept = f"{self.mean:.1f} ± {self.std:.1f} ({self.min}-{self.max})"
        else:
            kept = str(self.min)
        of = "" if self.tokens_in is None else f" of {self.tokens_in:.4g}"
        rows = f"{self.rows} row{'s' * (self.rows != 1)}"
        return f"kept {kept}{of} visual tokens per row over {rows}"


@dataclass(frozen=True)
class Savings:
    """The prefill of prompts before and after their visual tokens were pruned.

    Counts are totals over :attr:`sequences` prompts (``+`` adds two ``Savings`` of
    the same decoder and pruning layer). Layers ``0 .. pruned_after_layer - 1`` run
    on the whole prompt, the others on the pruned one (``pruned_after_layer=0``:
    pruning before the language model).

    Attributes:
        visual_tokens: visual tokens the pruner saw.
        kept_visual_tokens: visual tokens it kept.
        text_tokens: every other token of the prompts (never pruned).
        flops_before, flops_after: prefill matmul FLOPs unpruned / pruned.
        kv_cache_bytes_before, kv_cache_bytes_after: KV cache after the prefill.
        num_layers: decoder layers.
        pruned_after_layer: the first layer that runs on the pruned prompt.
        sequences: how many prompts the totals cover.
        kept_per_sequence: the visual tokens each prompt kept, in order (``()`` where
            unknown), for the spread of :attr:`kept_spread`.
    """

    visual_tokens: int
    kept_visual_tokens: int
    text_tokens: int
    flops_before: int
    flops_after: int
    kv_cache_bytes_before: int
    kv_cache_bytes_after: int
    num_layers: int
    pruned_after_layer: int = 0
    sequences: int = 1
    kept_per_sequence: tuple[int, ...] = ()

    @property
    def tokens_before(self) -> int:
        """Prompt tokens the language model gets without pruning (visual + text)."""
        return self.visual_tokens + self.text_tokens

    @property
    def tokens_after(self) -> int:
        """Prompt tokens the language model gets pruned (kept visual + text)."""
        return self.kept_visual_tokens + self.text_tokens

    @property
    def flops_speedup(self) -> float:
        """``flops_before / flops_after``."""
        return self.flops_before / self.flops_after

    @property
    def kv_cache_ratio(self) -> float:
        """``kv_cache_bytes_after / kv_cache_bytes_before``."""
        return self.kv_cache_bytes_after / self.kv_cache_bytes_before

    @property
    def theoretical_speedup(self) -> float:
        """Prefill speed-up if time were proportional to tokens x layers processed.

        ``(visual + text) / (kept + text)`` when pruning before the language model:
        the speed-up a prefill dominated by its per-token matmuls can reach.
        """
        full, pruned, k = self.tokens_before, self.tokens_after, self.pruned_after_layer
        return self.num_layers * full / (k * full + (self.num_layers - k) * pruned)

    @property
    def kept_spread(self) -> KeptTokens | None:
        """Mean and spread of the visual tokens kept per prompt (``None`` when the
        per-prompt counts are not known, e.g. a ``Savings`` built by hand)."""
        if not self.kept_per_sequence or len(self.kept_per_sequence) != self.sequences:
            return None
        return KeptTokens.of(self.kept_per_sequence)

    def __add__(self, other: Savings) -> Savings:
        if not isinstance(other, Savings):
            return NotImplemented
        if (other.num_layers, other.pruned_after_layer) != (
            self.num_layers,
            self.pruned_after_layer,
        ):
            raise ValueError(
                "can only add Savings of the same decoder depth and pruning layer, got "
                f"{(self.num_layers, self.pruned_after_layer)} and "
                f"{(other.num_layers, other.pruned_after_layer)}"
            )
        summed = {
            f.name: getattr(self, f.name) + getattr(other, f.name)
            for f in fields(self)
            if f.name not in ("num_layers", "pruned_after_layer")
        }
        return Savings(
            **summed, num_layers=self.num_layers, pruned_after_layer=self.pruned_after_layer
        )

    def summary(self) -> str:
        """One line for people: tokens, FLOPs and KV cache before -> after; when the
        prompts kept different numbers of visual tokens, their mean, spread and range."""
        spread = self.kept_spread
        ragged = (
            f" (per prompt {spread.mean:.1f} ± {spread.std:.1f}, {spread.min}-{spread.max})"
            if spread is not None and spread.ragged
            else ""
        )
        return (
            f"{self.visual_tokens} -> {self.kept_visual_tokens} visual tokens{ragged} "
            f"(+ {self.text_tokens} text) over {self.sequences} prompt(s): prefill "
            f"{self.flops_before / 1e12:.3g} -> {self.flops_after / 1e12:.3g} TFLOPs "
            f"({self.flops_speedup:.2f}x), KV cache {self.kv_cache_bytes_before / 2**20:.3g} -> "
            f"{self.kv_cache_bytes_after / 2**20:.3g} MiB"
        )


def savings(
    config: Any,
    visual_tokens: int,
    kept_tokens: int,
    text_tokens: int = 0,
    *,
    pruned_after_layer: int = 0,
    logits: Logits = "last",
    dtype: torch.dtype | int = torch.float16,
) -> Savings:
    """What pruning ``visual_tokens`` to ``kept_tokens`` saves on one prompt's prefill.

    Args:
        config: a :class:`DecoderShape` or a ``transformers`` config (see :func:`decoder_shape`).
        visual_tokens: visual tokens in the prompt before pruning.
        kept_tokens: visual tokens kept.
        text_tokens: the prompt's other tokens.
        pruned_after_layer: ``K`` when pruning inside the language model after
            decoder layer ``K`` (layers before it see every token); 0 for pruning
            before it.
        logits: LM-head positions (see :data:`Logits`).
        dtype: the KV cache's dtype, or bytes per element.
    """
    shape = decoder_shape(config)
    _check_count("visual_tokens", visual_tokens)
    _check_count("kept_tokens", kept_tokens)
    _check_count("text_tokens", text_tokens)
    if kept_tokens > visual_tokens:
        raise ValueError(
            f"kept_tokens ({kept_tokens}) must not exceed visual_tokens ({visual_tokens})"
        )
    if kept_tokens + text_tokens == 0:
        raise ValueError("kept_tokens + text_tokens must be >= 1 (an empty prompt has no prefill)")
    k = _check_count("pruned_after_layer", pruned_after_layer)
    if k >= shape.num_layers:
        raise ValueError(f"pruned_after_layer must be < num_layers ({shape.num_layers}), got {k}")
    full = visual_tokens + text_tokens
    pruned = kept_tokens + text_tokens
    flops_before = shape.num_layers * layer_flops(shape, full) + head_flops(shape, full, logits)
    flops_after = (
        k * layer_flops(shape, full)
        + (shape.num_layers - k) * layer_flops(shape, pruned)
        + head_flops(shape, pruned, logits)
    )
    kv_before = kv_cache_bytes(shape, full, dtype=dtype)
    kv_after = kv_cache_bytes(shape, full, dtype=dtype, layers=k) + kv_cache_bytes(
        shape, pruned, dtype=dtype, layers=shape.num_layers - k
    )
    return Savings(
        visual_tokens=visual_tokens,
        kept_visual_tokens=kept_tokens,
        text_tokens=text_tokens,
        flops_before=flops_before,
        flops_after=flops_after,
        kv_cache_bytes_before=kv_before,
        kv_cache_bytes_after=kv_after,
        num_layers=shape.num_layers,
        pruned_after_layer=k,
        kept_per_sequence=(kept_tokens,),
    )
