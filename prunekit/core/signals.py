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

from dataclasses import dataclass


@dataclass(frozen=True)
class SignalSpec:
    """One signal: its name, shape documentation and token axis (``None`` if not per token)."""

    name: str
    shape: str
    token_axis: int | None
    description: str


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
    ),
    SignalSpec(
        "received_attention",
        "(B, H, N)",
        -1,
        "attention each image token receives, averaged over all queries, per head "
        "(for encoders without [CLS], e.g. SigLIP)",
    ),
    SignalSpec(
        "vision_keys",
        "(B, N, H, d_head)",
        1,
        "keys of the image tokens in that same encoder attention layer",
    ),
):
    register_signal(_spec)
