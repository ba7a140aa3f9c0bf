"""Named model signals a pruner may need besides the tokens.

Adapters compute the signals a pruner declares in
:attr:`prunekit.TokenPruner.required_signals` and pass them to
:meth:`~prunekit.TokenPruner.prune` as ``signals={name: tensor}``. This table
declares, once, each signal's shape (named axes), its dtype kind and which axis
runs over the ``N`` tokens being pruned (``None``: not per token), so adapters
can pad ragged batches along it and :func:`prunekit.core.inputs.validate_inputs`
checks every signal against it (rank, sizes, dtype, finite values) before any
pruner reads it. Plugins add their own with :func:`register_signal`.

Axis names in a shape: ``B`` is the batch, ``N`` the tokens being pruned, ``d``
the tokens' feature size; any other name (``H``, ``d_head``, ``T``, ``D``) stands
for one size shared by every signal of a ``prune`` call that uses the name (e.g.
``llm_text_keys`` and ``llm_text_mask`` agree on ``T``); an integer is a fixed size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

#: ``example(batch, n_tokens, dim, generator) -> tensor``: a plausible random signal for tests
ExampleFactory = Callable[[int, int, int, torch.Generator], torch.Tensor]


#: dtype kinds a signal may declare
SIGNAL_KINDS = ("float", "bool", "integer")


@dataclass(frozen=True)
class SignalSpec:
    """One signal: its name, shape, token axis (``None`` if not per token), description,
    a factory of plausible random examples (used by :mod:`prunekit.testing` to run the
    registry-wide contract tests on pruners that need the signal) and its dtype kind.

    ``shape`` is the declaration the inputs are checked against: ``"(B, H, N)"``, a
    parenthesised list of axis names (identifiers) or fixed sizes, ``B`` first; the
    token axis, if any, must be named ``N``. ``kind`` is ``"float"`` (any floating
    dtype, cast to the compute dtype and required finite), ``"bool"`` or ``"integer"``.
    """

    name: str
    shape: str
    token_axis: int | None
    description: str
    example: ExampleFactory | None = field(default=None, compare=False)
    kind: str = "float"

    def __post_init__(self) -> None:
        axes = self.axes
        if not axes or axes[0] != "B":
            raise ValueError(
                f"signal {self.name!r}: shape {self.shape!r} must list the batch axis B first"
            )
        if self.token_axis is not None and (
            not -len(axes) <= self.token_axis < len(axes) or axes[self.token_axis] != "N"
        ):
            raise ValueError(
                f"signal {self.name!r}: token_axis {self.token_axis} must point at the axis N "
                f"of its shape {self.shape}"
            )
        if self.kind not in SIGNAL_KINDS:
            raise ValueError(
                f"signal {self.name!r}: kind must be one of {SIGNAL_KINDS}, got {self.kind!r}"
            )

    @property
    def axes(self) -> tuple[str, ...]:
        """The axis names of :attr:`shape`: ``"(B, H, N)"`` gives ``("B", "H", "N")``."""
        text = self.shape.strip()
        if not (text.startswith("(") and text.endswith(")")):
            raise ValueError(
                f"signal {self.name!r}: shape must be like '(B, H, N)', got {self.shape!r}"
            )
        axes = tuple(axis.strip() for axis in text[1:-1].split(","))
        for axis in axes:
            if not (axis.isidentifier() or axis.isdigit()):
                raise ValueError(
                    f"signal {self.name!r}: shape {self.shape!r} has the axis {axis!r}, "
                    "which is neither a name nor a size"
                )
        return axes


def _attention_example(batch: int, n: int, dim: int, generator: torch.Generator) -> torch.Tensor:
    """Rows of a softmax over ``n + 1`` keys (the first one standing for [CLS]), 4 heads."""
    logits = torch.randn(batch, 4, n + 1, generator=generator) * 2
    return torch.softmax(logits, dim=-1)[..., 1:]


def _keys_example(batch: int, n: int, dim: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(batch, n, 4, 8, generator=generator)


#: rows of text in the examples of the ``llm_text_*`` signals (all four agree on it)
_EXAMPLE_TEXT_ROWS = 6


def _llm_attention_example(
    batch: int, n: int, dim: int, generator: torch.Generator
) -> torch.Tensor:
    """Rows of a causal softmax over ``n`` image keys plus 8 text / system keys, 4 heads."""
    logits = torch.randn(batch, 4, n + 8, generator=generator) * 2
    return torch.softmax(logits, dim=-1)[..., 4 : n + 4]


def _text_attention_example(
    batch: int, n: int, dim: int, generator: torch.Generator
) -> torch.Tensor:
    """Mean of 3 text queries' causal softmax rows over ``n`` image keys plus 8 other keys,
    4 heads; about one sample in four has no text (all zeros)."""
    logits = torch.randn(batch, 4, 3, n + 8, generator=generator) * 2
    rows = torch.softmax(logits, dim=-1)[..., 4 : n + 4].mean(dim=2)
    no_text = torch.rand(batch, 1, 1, generator=generator) < 0.25
    return rows.masked_fill(no_text, 0.0)


def _embedding_mean_example(
    batch: int, n: int, dim: int, generator: torch.Generator
) -> torch.Tensor:
    """A shared offset, the same for every sample (as the model's embedding table is)."""
    return (0.5 * torch.randn(1, dim, generator=generator)).expand(batch, dim).clone()


def _llm_hidden_example(batch: int, n: int, dim: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(batch, n, dim, generator=generator)


def _llm_image_positions_example(
    batch: int, n: int, dim: int, generator: torch.Generator
) -> torch.Tensor:
    """Image tokens at consecutive prompt positions after a random-length prefix."""
    start = torch.randint(0, 64, (batch, 1), generator=generator)
    return start + torch.arange(n)


def _llm_text_keys_example(
    batch: int, n: int, dim: int, generator: torch.Generator
) -> torch.Tensor:
    return torch.randn(batch, _EXAMPLE_TEXT_ROWS, 4, 8, generator=generator)


def _llm_text_hidden_example(
    batch: int, n: int, dim: int, generator: torch.Generator
) -> torch.Tensor:
    return torch.randn(batch, _EXAMPLE_TEXT_ROWS, dim, generator=generator)


def _llm_text_mask_example(
    batch: int, n: int, dim: int, generator: torch.Generator
) -> torch.Tensor:
    """Between 0 and all text rows real, packed to the left."""
    rows = torch.randint(0, _EXAMPLE_TEXT_ROWS + 1, (batch, 1), generator=generator)
    return torch.arange(_EXAMPLE_TEXT_ROWS) < rows


def _llm_text_positions_example(
    batch: int, n: int, dim: int, generator: torch.Generator
) -> torch.Tensor:
    """Text after any image of :func:`_llm_image_positions_example`."""
    return (n + 64 + torch.arange(_EXAMPLE_TEXT_ROWS)).expand(batch, -1).clone()


#: every known signal by name (fill it with :func:`register_signal`)
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

# Signals of the in-LLM pruning point (``llm_layer=K``): computed at decoder layer K-1 on
# the full prompt, before layer K drops tokens. "Text" there means the real (non-padding)
# tokens after the sample's first image token that are not image tokens, in prompt order.
for _spec in (
    SignalSpec(
        "last_query_attention",
        "(B, H, N)",
        -1,
        "attention probabilities at decoder layer K-1 from the last prompt token's query to "
        "each image token, per head (softmax over the whole causal, unpadded prompt)",
        _llm_attention_example,
    ),
    SignalSpec(
        "text_attention",
        "(B, H, N)",
        -1,
        "attention probabilities at decoder layer K-1 from the prompt's text queries to each "
        "image token, per head, averaged over the sample's text queries (softmax over the "
        "whole causal, unpadded prompt); all zeros for a sample without text",
        _text_attention_example,
    ),
    SignalSpec(
        "llm_image_keys",
        "(B, N, H, d_head)",
        1,
        "post-RoPE keys of the image tokens at decoder layer K-1, key/value heads repeated "
        "to the H query heads",
        _keys_example,
    ),
    SignalSpec(
        "llm_image_hidden",
        "(B, N, D)",
        1,
        "hidden states of the image tokens leaving decoder layer K-1, passed through the "
        "decoder's final norm",
        _llm_hidden_example,
    ),
    SignalSpec(
        "llm_image_positions",
        "(B, N)",
        1,
        "int64 position of each image token among the prompt's real tokens (0 = first)",
        _llm_image_positions_example,
        kind="integer",
    ),
    SignalSpec(
        "llm_text_keys",
        "(B, T, H, d_head)",
        None,
        "post-RoPE keys of the text tokens at decoder layer K-1 (heads as llm_image_keys), "
        "packed to the left, zero rows where llm_text_mask is False",
        _llm_text_keys_example,
    ),
    SignalSpec(
        "llm_text_hidden",
        "(B, T, D)",
        None,
        "hidden states of the text tokens leaving decoder layer K-1, after the final norm",
        _llm_text_hidden_example,
    ),
    SignalSpec(
        "llm_text_mask",
        "(B, T)",
        None,
        "bool, True for the real rows of the llm_text_* signals",
        _llm_text_mask_example,
        kind="bool",
    ),
    SignalSpec(
        "embedding_mean",
        "(B, d)",
        None,
        "mean row of the language model's input-embedding table, in the space of the "
        "projected visual tokens (a centre for text relevance: TextRelevance(center=...))",
        _embedding_mean_example,
    ),
    SignalSpec(
        "llm_text_positions",
        "(B, T)",
        None,
        "int64 position of each text token among the prompt's real tokens",
        _llm_text_positions_example,
        kind="integer",
    ),
):
    register_signal(_spec)


def _joint_text_cosine_example(
    batch: int, n: int, dim: int, generator: torch.Generator
) -> torch.Tensor:
    """Cosines of ``n`` random unit patch embeddings with 3 random unit text rows, in 16-D."""
    patches = torch.nn.functional.normalize(torch.randn(batch, n, 16, generator=generator), dim=-1)
    text = torch.nn.functional.normalize(torch.randn(batch, 3, 16, generator=generator), dim=-1)
    return patches @ text.transpose(1, 2)


# Signal of the in-encoder pruning point with text (CLIP / SigLIP / open_clip towers).
register_signal(
    SignalSpec(
        "joint_text_cosine",
        "(B, N, M)",
        1,
        "cosine between each patch token, mapped into the joint image-text space by the "
        "encoder's own head (adapter.joint_projection), and each of the M text embeddings",
        _joint_text_cosine_example,
    )
)


def _text_logprobs_example(
    batch: int, n: int, dim: int, generator: torch.Generator
) -> torch.Tensor:
    """Log-probabilities (negative) of 3 words of a 32-word vocabulary; each sample has
    between 0 and 3 real nouns, packed to the left (zero columns after them)."""
    logprobs = torch.log_softmax(torch.randn(batch, n, 32, generator=generator) * 2, dim=-1)
    nouns = torch.randint(0, 4, (batch, 1, 1), generator=generator)
    return logprobs[..., :3].masked_fill(torch.arange(3) >= nouns, 0.0)


# Signal of the pre-LLM pruning point of the VLM adapters (the logit lens).
register_signal(
    SignalSpec(
        "text_logprobs",
        "(B, N, M)",
        1,
        "log-probability of each of the prompt's M nouns (the rows of text_embeds, in order) "
        "when the visual token is read through the LLM's final norm and output head: the "
        "mean over the noun's sub-word ids of log_softmax(lm_head(norm(x)))[id] over the "
        "whole vocabulary, float32; zero columns where a prompt has no such noun",
        _text_logprobs_example,
    )
)
