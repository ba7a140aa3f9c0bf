"""The ``TokenPruner`` contract.

The base class owns everything that is the same for every method: input
validation, budget resolution, the compute dtype, padding masks, sorting,
the identity short-cut and the result object. A method implements only
:meth:`TokenPruner.select`, which returns its picks in priority order.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch

from prunekit.core.budget import Budget, check_budget
from prunekit.core.errors import check_fields
from prunekit.core.inputs import PruneInputs, validate_inputs
from prunekit.core.result import PAD_INDEX, PruneResult
from prunekit.core.tensor_ops import gather_rows


@dataclass(frozen=True)
class Picks:
    """What :meth:`TokenPruner.select` returns.

    Attributes:
        order: ``(B, num_keep)`` int64 token indices in priority order: when
            sample ``b`` keeps ``c`` tokens, they are ``order[b, :c]``. Those
            ``c`` entries must be distinct valid tokens; entries past a sample's
            count are ignored.
        scores: optional ``(B, N)`` per-token scores to report in the result.
        values: optional ``(B, num_keep, d)`` new values of the picked tokens,
            in pick order, for methods that merge dropped tokens into kept ones
            (e.g. VisionZip's contextual tokens); ``None`` keeps the originals.
        counts: optional ``(B,)`` int64 tokens each sample keeps, for methods that
            decide their own count (adaptive budgets: the budget is then a ceiling).
            Each must be between 1 and the sample's ``inputs.keep_counts``; ``None``
            keeps exactly ``inputs.keep_counts``.
    """

    order: torch.Tensor
    scores: torch.Tensor | None = None
    values: torch.Tensor | None = None
    counts: torch.Tensor | None = None


def kept_counts(valid_counts: torch.Tensor, budget: Budget) -> torch.Tensor:
    """Vectorised :func:`prunekit.num_kept` over a ``(B,)`` tensor of token counts."""
    if isinstance(budget, int):
        return valid_counts.clamp(max=budget)
    kept = torch.floor(valid_counts.double() * budget + 0.5 + 1e-9).long()
    return torch.minimum(kept.clamp_min(1), valid_counts)


def _sorted_indices(
    candidates: torch.Tensor, keep: torch.Tensor, n_tokens: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort ``candidates`` (B, K) ascending, slots where ``keep`` is False moved to the end as PAD.

    Returns the sorted indices and the permutation that sorted them.
    """
    sentinel = torch.full_like(candidates, n_tokens)
    ordered, permutation = torch.sort(torch.where(keep, candidates, sentinel), dim=1)
    return ordered.masked_fill(ordered == n_tokens, PAD_INDEX), permutation


class TokenPruner(abc.ABC):
    """Base class of every pruner: ``prune`` is the public entry point.

    A subclass is a ``@dataclass`` whose fields are its hyperparameters, sets
    :attr:`name` (the registry key: ``registry.add_pruner(MyPruner)``) and
    implements :meth:`select`::

        @dataclass
        class MyPruner(TokenPruner):
            name = "my_pruner"          # no annotation: a class constant, not a field
            alpha: float = 1.0

            def __post_init__(self):
                super().__post_init__()  # checks each field against its annotation
                if self.alpha < 0:
                    raise ValueError(f"alpha must be >= 0, got {self.alpha}")

    The dataclass gives the readable ``repr`` recorded in run records, the
    parameters of the generated config schema, and (through :meth:`__post_init__`)
    a ``TypeError`` naming the field for a value of the wrong type.
    """

    #: the registry key users type (``create_pruner("resprune")``)
    name: ClassVar[str] = ""
    #: names of the model signals :meth:`select` reads from ``inputs.signals``
    #: (e.g. ``"cls_attention"``); adapters provide them, ``prune`` checks them.
    required_signals: ClassVar[frozenset[str]] = frozenset()
    #: pruning points this method is defined for (names from :mod:`prunekit.core.points`:
    #: ``PRE_LLM``, ``PRE_PROJECTOR``, ``IN_LLM``, ``IN_ENCODER``); ``None``: any.
    #: ``attach`` refuses others; the registry refuses names that are not pruning points.
    pruning_points: ClassVar[frozenset[str] | None] = None

    def __post_init__(self) -> None:
        """Check every field against its annotation (see :func:`prunekit.core.errors.check_type`).

        A subclass adding value checks (ranges, shapes) calls ``super().__post_init__()`` first.
        """
        check_fields(self)

    @property
    def adaptive(self) -> bool:
        """Whether :meth:`select` chooses each sample's count (``Picks.counts``), the budget
        being only its ceiling; then a budget covering every token still runs ``select``."""
        return False

    def __repr__(self) -> str:
        # dataclass subclasses get their own; this covers pruners written with a plain __init__
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({params})"

    def prune(
        self,
        tokens: torch.Tensor,
        *,
        budget: Budget,
        text_embeds: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
        token_mask: torch.Tensor | None = None,
        signals: Mapping[str, torch.Tensor] | None = None,
    ) -> PruneResult:
        """Select the tokens each sample keeps.

        Args:
            tokens: ``(B, N, d)`` visual tokens, any float dtype; the selection
                runs in float32 (float64 stays float64).
            budget: tokens kept per sample (int) or fraction kept (float in (0, 1]),
                resolved per sample by :func:`prunekit.num_kept` on its valid tokens.
            text_embeds: ``(B, M, d)`` text embeddings in the tokens' space, for
                text-conditioned pruners; ignored by the others.
            text_mask: ``(B, M)`` bool, ``True`` for real text rows.
            token_mask: ``(B, N)`` bool, ``True`` for real tokens; padded tokens
                are never selected and do not count towards a float budget.
            signals: model signals named in :attr:`required_signals` (e.g.
                ``{"cls_attention": (B, H, N)}``); a missing one raises ``ValueError``.

        Returns:
            A :class:`PruneResult`; kept indices are ascending. When the budget
            covers every valid token the result is the identity and
            :meth:`select` is not called.
        """
        budget = check_budget(budget)
        inputs = validate_inputs(
            tokens,
            text_embeds=text_embeds,
            text_mask=text_mask,
            token_mask=token_mask,
            signals=signals,
        )
        missing = self.required_signals - set(inputs.signals)
        if missing:
            raise ValueError(
                f"{type(self).__name__} needs the signals {sorted(missing)} in signals=...; "
                "prunekit.attach provides them for models whose adapter can"
            )
        valid_counts = inputs.valid_counts
        counts = kept_counts(valid_counts, budget)
        n_tokens = inputs.num_tokens
        if bool((counts == valid_counts).all()) and not self.adaptive:
            return self._identity(inputs, valid_counts)

        num_keep = int(counts.max())
        picks = self.select(dataclasses.replace(inputs, keep_counts=counts), num_keep)
        if not isinstance(picks, Picks) or not isinstance(picks.order, torch.Tensor):
            got = type(picks.order if isinstance(picks, Picks) else picks).__name__
            raise TypeError(
                f"{type(self).__name__}.select must return prunekit.Picks(order=...) with a "
                f"({inputs.batch_size}, {num_keep}) int64 tensor as order, got {got}"
            )
        order = picks.order
        if order.shape != (inputs.batch_size, num_keep) or order.dtype != torch.int64:
            raise RuntimeError(
                f"{type(self).__name__}.select must return int64 order of shape "
                f"{(inputs.batch_size, num_keep)}, got {order.dtype} {tuple(order.shape)}"
            )
        if picks.counts is not None:
            counts = self._adaptive_counts(picks.counts, counts)
        slot = torch.arange(num_keep, device=order.device)
        live = slot.unsqueeze(0) < counts.unsqueeze(1)
        mask = torch.zeros(inputs.batch_size, n_tokens + 1, dtype=torch.bool, device=order.device)
        mask.scatter_(1, torch.where(live, order.clamp(0, n_tokens - 1), n_tokens), True)
        mask = mask[:, :n_tokens]
        in_range = ((order >= 0) & (order < n_tokens)) | ~live
        distinct_valid = (mask.sum(1) == counts) & ~(mask & ~inputs.token_mask).any(1)
        if not bool(in_range.all() & distinct_valid.all()):
            raise RuntimeError(
                f"{type(self).__name__}.select returned repeated, out-of-range or padded "
                "token indices; a pruner must pick distinct valid tokens"
            )
        indices, permutation = _sorted_indices(order, live, n_tokens)
        values = None
        if picks.values is not None:
            expected = (inputs.batch_size, num_keep, inputs.tokens.shape[-1])
            if tuple(picks.values.shape) != expected:
                raise RuntimeError(
                    f"{type(self).__name__}.select returned values of shape "
                    f"{tuple(picks.values.shape)}, expected {expected}"
                )
            values = gather_rows(picks.values, permutation)
            values = values.masked_fill((indices == PAD_INDEX).unsqueeze(-1), 0.0)
        if picks.counts is not None:  # an adaptive count may leave trailing padding columns
            width = int(counts.max())
            indices = indices[:, :width]
            if values is not None:
                values = values[:, :width]
        scores = None if picks.scores is None else picks.scores.float()
        return PruneResult(
            indices=indices,
            mask=mask,
            counts=counts,
            valid_counts=valid_counts,
            scores=scores,
            values=values,
        )

    def _adaptive_counts(self, chosen: object, ceiling: torch.Tensor) -> torch.Tensor:
        """Check the counts a method chose for itself: ``(B,)`` int64 in ``[1, ceiling]``."""
        name = type(self).__name__
        if not isinstance(chosen, torch.Tensor) or chosen.dtype != torch.int64:
            raise TypeError(f"{name}.select must return Picks.counts as an int64 tensor")
        if tuple(chosen.shape) != tuple(ceiling.shape):
            raise RuntimeError(
                f"{name}.select returned counts of shape {tuple(chosen.shape)}, "
                f"expected {tuple(ceiling.shape)}"
            )
        chosen = chosen.to(ceiling.device)
        if bool(((chosen < 1) | (chosen > ceiling)).any()):
            raise RuntimeError(
                f"{name}.select returned counts outside [1, the budget's count] "
                f"({chosen.tolist()} for at most {ceiling.tolist()})"
            )
        return chosen

    @abc.abstractmethod
    def select(self, inputs: PruneInputs, num_keep: int) -> Picks:
        """Pick ``num_keep`` tokens per sample from validated ``inputs``, in priority order.

        Called only when at least one sample must drop tokens, with
        ``1 <= num_keep <= N``. ``inputs.tokens`` is float32 or float64;
        ``inputs.keep_counts`` holds each sample's own count (``num_keep`` is their maximum).
        """

    def _identity(self, inputs: PruneInputs, valid_counts: torch.Tensor) -> PruneResult:
        n_tokens = inputs.num_tokens
        positions = torch.arange(n_tokens, device=inputs.tokens.device).expand(
            inputs.batch_size, -1
        )
        indices, _ = _sorted_indices(positions, inputs.token_mask, n_tokens)
        indices = indices[:, : int(valid_counts.max())]
        return PruneResult(
            indices=indices,
            mask=inputs.token_mask.clone(),
            counts=valid_counts,
            valid_counts=valid_counts,
            scores=None,
        )
