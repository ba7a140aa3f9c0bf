"""Named model signals a pruner may need besides the tokens.

Adapters compute the signals a pruner declares in
:attr:`prunekit.TokenPruner.required_signals` and pass them to
:meth:`~prunekit.TokenPruner.prune` as ``signals={name: tensor}``. This table
documents each signal's shape and which axis runs over the ``N`` tokens being
pruned (``None``: not per token), so adapters can pad ragged batches along it
and :func:`prunekit.core.inputs.validate_inputs` can check it. Plugins add
their own with :func:`register_signal`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

#: ``example(batch, n_tokens, dim, generator) -> tensor``: a plausible random signal for tests
ExampleFactory = Callable[[int, int, int, torch.Generator], torch.Tensor]


@dataclass(frozen=True)
class SignalSpec:
    """One signal: its name, shape documentation, token axis (``None`` if not per token),
    and a factory of plausible random examples, used by :mod:`prunekit.testing` to run
    the registry-wide contract tests on pruners that need the signal."""

    name: str
    shape: str
    token_axis: int | None
    description: str
    example: ExampleFactory | None = field(default=None, compare=False)


def _attention_example(batch: int, n: int, dim: int, generator: torch.Generator) -> torch.Tensor:
    """Rows of a softmax over ``n + 1`` keys (the first one standing for [CLS]), 4 heads."""
    logits = torch.randn(batch, 4, n + 1, generator=generator) * 2
    return torch.softmax(logits, dim=-1)[..., 1:]


def _keys_example(batch: int, n: int, dim: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(batch, n, 4, 8, generator=generator)


SIGNALS: dict[str, SignalSpec] = {}


def register_signal(spec: SignalSpec) -> SignalSpec:
    """Add a signal to the table; re-registering the same name with a different spec is an error."""
    known = SIGNALS.get(spec.name)
    if known is not None and known != spec:
        raise ValueError(f"signal {spec.name!r} is already registered as {known}")
    SIGNALS[spec.name] = spec
    return spec


for _spec in (
    SignalSpec(
        "cls_attention",
        "(B, H, N)",
        -1,
        "attention of the vision encoder's [CLS] query to each image token, per head, "
        "at the layer producing the selected features",
        _attention_example,
    ),
    SignalSpec(
        "received_attention",
        "(B, H, N)",
        -1,
        "attention each image token receives, averaged over all queries, per head "
        "(for encoders without [CLS], e.g. SigLIP)",
        _attention_example,
    ),
    SignalSpec(
        "vision_keys",
        "(B, N, H, d_head)",
        1,
        "keys of the image tokens in that same encoder attention layer",
        _keys_example,
    ),
):
    register_signal(_spec)
