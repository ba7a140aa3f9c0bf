"""Validated, normalised inputs of one ``prune`` call.

:func:`validate_inputs` is the single place where user input is checked: every
error names the offending argument, and nothing downstream has to re-check.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from prunekit.core.signals import SIGNALS, SignalSpec


@dataclass(frozen=True)
class PruneInputs:
    """What strategies see: tensors already checked, in the compute dtype.

    Attributes:
        tokens: ``(B, N, d)`` float32 or float64 tokens.
        token_mask: ``(B, N)`` bool, ``True`` for real tokens (all ``True`` if
            the caller gave no mask). Strategies must never select a ``False`` slot.
        text_embeds: ``(B, M, d)`` text embeddings in the tokens' space, or ``None``.
        text_mask: ``(B, M)`` bool, ``True`` for real text rows, or ``None``
            when there is no text.
        signals: named model signals beyond the tokens (e.g. ``"cls_attention"``
            ``(B, H, N)`` from a vision encoder), each with batch dimension first,
            in the compute dtype. Pruners declare the ones they need in
            :attr:`TokenPruner.required_signals`; adapters provide them.
        keep_counts: ``(B,)`` int64 number of tokens each sample keeps in this
            call, set by :meth:`TokenPruner.prune` before it calls ``select``
            (``None`` elsewhere). Methods whose choice is not a prefix of a
            priority order (e.g. VisionZip's dominant / contextual split, or
            VisPruner's important / diverse split) read their sample's count here.
    """

    tokens: torch.Tensor
    token_mask: torch.Tensor
    text_embeds: torch.Tensor | None = None
    text_mask: torch.Tensor | None = None
    signals: Mapping[str, torch.Tensor] = field(default_factory=dict)
    keep_counts: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        """``B``, the number of samples."""
        return self.tokens.shape[0]

    @property
    def num_tokens(self) -> int:
        """``N``, the number of token slots per sample (padding included)."""
        return self.tokens.shape[1]

    @property
    def valid_counts(self) -> torch.Tensor:
        """``(B,)`` int64 number of valid tokens per sample."""
        return self.token_mask.sum(dim=1)

    @property
    def has_text(self) -> torch.Tensor:
        """``(B,)`` bool: whether each sample has at least one text row."""
        if self.text_mask is None:
            return torch.zeros(self.batch_size, dtype=torch.bool, device=self.tokens.device)
        return self.text_mask.any(dim=1)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype selections run in: float32, or float64 if the input is float64."""
    return torch.promote_types(dtype, torch.float32)


def _check_tensor(name: str, value: object) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def _check_bool_mask(
    name: str, mask: object, shape: tuple[int, ...], device: torch.device
) -> torch.Tensor:
    mask = _check_tensor(name, mask)
    if mask.dtype != torch.bool:
        raise TypeError(f"{name} must be a bool tensor, got dtype {mask.dtype}")
    if tuple(mask.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(mask.shape)}")
    if mask.device != device:
        raise ValueError(f"{name} is on {mask.device} but tokens are on {device}")
    return mask


def _check_finite(name: str, values: torch.Tensor, rows: torch.Tensor) -> None:
    """Raise if any row flagged in ``rows`` (B, N) holds a NaN or Inf.

    A row sum is NaN or infinite whenever the row holds a NaN or an Inf, so the
    cheap row-sum test clears almost every input; only rows it flags (a real NaN /
    Inf, or a finite row whose sum overflows) get the exact element-wise test.
    """
    suspect = ~torch.isfinite(values.sum(dim=-1)) & rows
    if not bool(suspect.any()):
        return
    bad = ~torch.isfinite(values).all(dim=-1) & suspect
    if bool(bad.any()):
        b, i = (int(v) for v in bad.nonzero()[0])
        raise ValueError(f"{name} contains NaN or Inf values (first at sample {b}, row {i})")


def validate_inputs(
    tokens: object,
    *,
    text_embeds: object = None,
    text_mask: object = None,
    token_mask: object = None,
    signals: object = None,
) -> PruneInputs:
    """Check the arguments of :meth:`TokenPruner.prune` and normalise them.

    Tokens, text and float signals are cast to :func:`compute_dtype` (at least
    float32); masks are materialised. Values of padded rows are not checked.
    ``text_embeds`` with zero rows (``M = 0``) means no text, exactly as
    ``text_embeds=None``: text-conditioned pruners fall back to their no-text
    behaviour (uniform text relevance).

    Every signal named in :data:`prunekit.core.signals.SIGNALS` is checked against
    its :class:`~prunekit.core.signals.SignalSpec`: its rank and axis sizes (``B``,
    ``N`` and ``d`` from the tokens, other axis names shared between the signals),
    its dtype kind and, for float signals, finite values at the real tokens.
    Signals not in the table are only checked for their batch axis and device.

    Raises:
        TypeError: a non-tensor, a non-float tensor, a non-bool mask, or a signal
            of the wrong dtype kind (e.g. a float ``llm_text_mask``).
        ValueError: wrong dimensions or shapes (of a signal too), mismatched
            devices, an empty token set (including a sample whose ``token_mask``
            is all ``False``), NaN or Inf values (in tokens, text or a float
            signal), or a ``text_mask`` without ``text_embeds``.
    """
    tokens = _check_tensor("tokens", tokens)
    if tokens.dim() != 3:
        raise ValueError(f"tokens must be 3-D (B, N, d), got shape {tuple(tokens.shape)}")
    if not tokens.is_floating_point():
        raise TypeError(f"tokens must be a floating-point tensor, got dtype {tokens.dtype}")
    batch, n, dim = tokens.shape
    if batch == 0 or n == 0 or dim == 0:
        raise ValueError(f"tokens is empty: shape {tuple(tokens.shape)} (B, N and d must be >= 1)")
    device = tokens.device

    if token_mask is None:
        valid = torch.ones(batch, n, dtype=torch.bool, device=device)
    else:
        valid = _check_bool_mask("token_mask", token_mask, (batch, n), device)
        empty = ~valid.any(dim=1)
        if bool(empty.any()):
            raise ValueError(
                f"token_mask leaves sample {int(empty.nonzero()[0])} with no valid token "
                "(an empty token set cannot be pruned)"
            )
    _check_finite("tokens", tokens, valid)

    dtype = compute_dtype(tokens.dtype)
    text = None
    text_valid = None
    if text_embeds is None:
        if text_mask is not None:
            raise ValueError("text_mask was given without text_embeds")
    else:
        text = _check_tensor("text_embeds", text_embeds)
        if text.dim() != 3:
            raise ValueError(f"text_embeds must be 3-D (B, M, d), got shape {tuple(text.shape)}")
        if not text.is_floating_point():
            raise TypeError(f"text_embeds must be a floating-point tensor, got dtype {text.dtype}")
        if text.shape[0] != batch or text.shape[2] != dim:
            raise ValueError(
                f"text_embeds must have shape (B, M, d) = ({batch}, M, {dim}) to match tokens, "
                f"got {tuple(text.shape)}"
            )
        if text.device != device:
            raise ValueError(f"text_embeds is on {text.device} but tokens are on {device}")
        if text_mask is None:
            text_valid = torch.ones(text.shape[:2], dtype=torch.bool, device=device)
        else:
            text_valid = _check_bool_mask("text_mask", text_mask, tuple(text.shape[:2]), device)
        _check_finite("text_embeds", text, text_valid)
        text = text.to(dtype)
        if text.shape[1] == 0:  # no text row: the same as no text at all
            text = text_valid = None

    checked_signals: dict[str, torch.Tensor] = {}
    if signals is not None:
        if not isinstance(signals, Mapping):
            raise TypeError(
                f"signals must be a mapping of names to tensors, got {type(signals).__name__}"
            )
        sizes = {"B": batch, "N": n, "d": dim}  # axis name -> size, filled as signals come
        seen = {"B": "tokens", "N": "tokens", "d": "tokens"}
        for name, value in signals.items():
            label = f"signals[{name!r}]"
            value = _check_tensor(label, value)
            if value.dim() == 0 or value.shape[0] != batch:
                raise ValueError(
                    f"{label} must have the batch size {batch} as first dimension, "
                    f"got shape {tuple(value.shape)}"
                )
            if value.device != device:
                raise ValueError(f"{label} is on {value.device} but tokens are on {device}")
            spec = SIGNALS.get(name)
            if spec is None:  # not in the table: nothing more is known about it
                checked_signals[name] = value.to(dtype) if value.is_floating_point() else value
                continue
            _check_signal_shape(label, spec, value, sizes, seen)
            _check_signal_kind(label, spec, value)
            if spec.kind == "float":
                value = value.to(dtype)
                _check_signal_finite(label, spec, value, valid)
            checked_signals[name] = value

    return PruneInputs(
        tokens=tokens.to(dtype),
        token_mask=valid,
        text_embeds=text,
        text_mask=text_valid,
        signals=checked_signals,
    )


def _check_signal_shape(
    label: str,
    spec: SignalSpec,
    value: torch.Tensor,
    sizes: dict[str, int],
    seen: dict[str, str],
) -> None:
    """Check ``value`` against ``spec.shape``: its rank, then every axis size. Named axes
    are bound on first sight (``B``, ``N``, ``d`` by the tokens), so two signals that
    share an axis name must agree on its size."""
    axes = spec.axes
    got = tuple(value.shape)
    if value.dim() != len(axes):
        raise ValueError(
            f"{label} must have shape {spec.shape}, a {len(axes)}-D tensor, got shape {got}"
        )
    for axis, size in zip(axes, got):
        expected = int(axis) if axis.isdigit() else sizes.get(axis)
        if expected is None:
            sizes[axis], seen[axis] = size, label
        elif size != expected:
            source = "fixed" if axis.isdigit() else f"from {seen[axis]}"
            raise ValueError(
                f"{label} must have shape {spec.shape} with {axis} = {expected} ({source}), "
                f"got shape {got}"
            )


def _check_signal_kind(label: str, spec: SignalSpec, value: torch.Tensor) -> None:
    """Check ``value``'s dtype against ``spec.kind``."""
    if spec.kind == "float":
        ok = value.is_floating_point()
    elif spec.kind == "bool":
        ok = value.dtype == torch.bool
    else:
        ok = not (value.is_floating_point() or value.is_complex() or value.dtype == torch.bool)
    if not ok:
        kinds = {"float": "a floating-point", "bool": "a bool", "integer": "an integer"}
        raise TypeError(f"{label} must be {kinds[spec.kind]} tensor, got dtype {value.dtype}")


def _check_signal_finite(
    label: str, spec: SignalSpec, value: torch.Tensor, valid: torch.Tensor
) -> None:
    """Raise if a float signal holds NaN or Inf, except at padded tokens.

    One ``isfinite().all()`` clears almost every input; only a signal that fails it is
    looked at per token, so values at padded positions (``valid`` False) are ignored
    like padded tokens are (adapters pad with zeros, but callers may leave anything).
    """
    finite = torch.isfinite(value)
    if bool(finite.all()):
        return
    where = "at index"
    if spec.token_axis is None:
        bad = ~finite
    else:
        moved = finite.movedim(spec.token_axis, 1)
        per_token = moved.reshape(*valid.shape, -1).all(dim=2)  # (B, N)
        bad = ~per_token & valid
        if not bool(bad.any()):
            return
        where = "at (sample, token)"
    first = tuple(int(i) for i in bad.nonzero()[0])
    raise ValueError(f"{label} contains NaN or Inf values (first {where} {first})")
