"""Attention scores of a vision encoder layer, recomputed from its own projections.

Attention-based pruners (FasterVLM, VisionZip, VisPruner, ...) need the
attention probabilities of one encoder layer. Rather than switching the whole
model to eager attention and asking for every layer's ``N x N`` maps, prunekit
captures the input of that one attention module with a temporary forward
pre-hook and recomputes the softmax from its query / key projections. The
model keeps running with SDPA or FlashAttention.

Signals (``H`` heads, ``P`` image tokens the pruner sees):

* ``"cls_attention"`` ``(B, H, P)``: attention from the [CLS] query to each token;
  only one query row is computed.
* ``"received_attention"`` ``(B, H, P)``: the attention each token receives,
  averaged over all queries (for encoders without [CLS], e.g. SigLIP).
* ``"vision_keys"`` ``(B, P, H, d_head)``: the layer's keys, ``k_proj`` of its
  input (bias included, before any scaling), split into heads (VisionZip
  merges by the cosine of head-averaged keys).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

#: the signals :func:`attention_signals` computes from a vision attention layer
ATTENTION_SIGNALS = frozenset({"cls_attention", "received_attention", "vision_keys"})


def _heads(module: torch.nn.Module) -> int:
    for name in ("num_heads", "num_attention_heads"):
        value = getattr(module, name, None)
        if value is not None:
            return int(value)
    raise TypeError(
        f"{type(module).__name__} names no head count (num_heads / num_attention_heads)"
    )


def attention_probs(
    module: torch.nn.Module, hidden: torch.Tensor, queries: slice | None = None
) -> torch.Tensor:
    """Softmax attention ``(B, H, Q, N)`` of a Hugging Face attention module on its input ``hidden``.

    Works for modules with ``q_proj`` / ``k_proj`` (CLIP, SigLIP, DINOv2 in
    transformers 5). ``queries`` restricts the query rows (e.g. ``slice(0, 1)``
    for the [CLS] row only). Computed in float32 or wider.
    """
    if not (hasattr(module, "q_proj") and hasattr(module, "k_proj")):
        raise TypeError(
            f"cannot recompute attention of {type(module).__name__}: no q_proj / k_proj"
        )
    heads = _heads(module)
    batch, n, _ = hidden.shape
    query_input = hidden if queries is None else hidden[:, queries]
    q = module.q_proj(query_input)
    k = module.k_proj(hidden)
    head_dim = q.shape[-1] // heads
    dtype = torch.promote_types(q.dtype, torch.float32)
    q = q.view(batch, -1, heads, head_dim).transpose(1, 2).to(dtype)
    k = k.view(batch, n, heads, head_dim).transpose(1, 2).to(dtype)
    scale = getattr(module, "scale", getattr(module, "scaling", head_dim**-0.5))
    return torch.softmax(q @ k.transpose(-1, -2) * scale, dim=-1)


def attention_keys(module: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """Keys ``(B, N, H, d_head)`` of an attention module with ``k_proj`` on its input ``hidden``,
    in the module's dtype (the projection's output, bias included, unscaled)."""
    if not hasattr(module, "k_proj"):
        raise TypeError(f"cannot compute the keys of {type(module).__name__}: no k_proj")
    keys = module.k_proj(hidden)
    return keys.view(*keys.shape[:2], _heads(module), -1)


@contextlib.contextmanager
def capture_input(module: torch.nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """Record the ``hidden_states`` input of ``module`` while the block runs (hook removed on exit)."""
    captured: dict[str, torch.Tensor] = {}

    def hook(_module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        captured["hidden"] = args[0] if args else kwargs["hidden_states"]

    handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield captured
    finally:
        handle.remove()


def attention_signals(
    module: torch.nn.Module, hidden: torch.Tensor, names: frozenset[str], columns: slice
) -> dict[str, torch.Tensor]:
    """The requested attention signals, restricted to the key ``columns`` the pruner sees."""
    unknown = set(names) - ATTENTION_SIGNALS
    if unknown:
        raise ValueError(
            f"unknown attention signals {sorted(unknown)}; known: {sorted(ATTENTION_SIGNALS)}"
        )
    signals = {}
    with torch.no_grad():
        if "cls_attention" in names:
            signals["cls_attention"] = attention_probs(module, hidden, slice(0, 1))[
                :, :, 0, columns
            ]
        if "received_attention" in names:
            signals["received_attention"] = attention_probs(module, hidden).mean(dim=2)[
                ..., columns
            ]
        if "vision_keys" in names:
            signals["vision_keys"] = attention_keys(module, hidden)[:, columns]
    return signals
