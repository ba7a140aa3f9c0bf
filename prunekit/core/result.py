"""The result of pruning one batch: which tokens each sample keeps."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prunekit.core.tensor_ops import gather_rows

#: Value of the padding slots of :attr:`PruneResult.indices` for ragged batches.
PAD_INDEX = -1


@dataclass(frozen=True)
class PruneResult:
    """Kept tokens of a batch of ``B`` samples with ``N`` token slots each.

    Attributes:
        indices: ``(B, K)`` int64, the kept token indices of each sample in
            ascending (original) order, ``K = counts.max()``.
        mask: ``(B, N)`` bool, ``True`` where a token is kept.
        counts: ``(B,)`` int64, how many tokens each sample keeps.
        valid_counts: ``(B,)`` int64, how many valid (unpadded) tokens each
            sample had before pruning (``N`` without a ``token_mask``).
        scores: optional ``(B, N)`` float32 per-token scores the pruner used
            (for ResPrune: the relevance weights ``w_i``), for visualisation.
        values: optional ``(B, K, d)`` new values of the kept tokens (aligned
            with ``indices``) for methods that merge dropped tokens into kept
            ones; ``None`` for pure selection. :meth:`kept_tokens` applies them.

    Ragged convention: when samples keep different numbers of tokens (a float
    budget with a ``token_mask``, or samples with fewer valid tokens than an int
    budget), row ``b`` of ``indices`` holds its ``counts[b]`` kept indices first,
    ascending, then :data:`PAD_INDEX` (``-1``) up to ``K``. :attr:`slot_mask`
    marks the real slots, :meth:`gather` fills padding slots with a fill value
    and :meth:`split` returns one index tensor per sample.
    """

    indices: torch.Tensor
    mask: torch.Tensor
    counts: torch.Tensor
    valid_counts: torch.Tensor
    scores: torch.Tensor | None = None
    values: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        """Number of samples ``B``."""
        return self.mask.shape[0]

    @property
    def num_tokens(self) -> int:
        """``N``, the number of token slots per sample before pruning."""
        return self.mask.shape[1]

    @property
    def slot_mask(self) -> torch.Tensor:
        """``(B, K)`` bool: ``True`` for real slots of :attr:`indices`, ``False`` for padding."""
        return self.indices != PAD_INDEX

    @property
    def is_ragged(self) -> bool:
        """Whether some sample keeps fewer than ``K`` tokens."""
        return bool((self.counts != self.indices.shape[1]).any())

    def gather(self, tokens: torch.Tensor, fill_value: float = 0.0) -> torch.Tensor:
        """Select the kept rows of ``tokens`` ``(B, N, ...)``, giving ``(B, K, ...)``.

        Padding slots of ragged results hold ``fill_value``.
        """
        if tokens.shape[:2] != self.mask.shape:
            raise ValueError(
                f"tokens must have shape (B, N, ...) = {tuple(self.mask.shape)} in their first "
                f"two dimensions, got {tuple(tokens.shape)}"
            )
        return gather_rows(tokens, self.indices.to(tokens.device), fill_value)

    def kept_tokens(self, tokens: torch.Tensor, fill_value: float = 0.0) -> torch.Tensor:
        """What the model should receive: :meth:`gather`, or the merged :attr:`values` if any."""
        if self.values is None:
            return self.gather(tokens, fill_value)
        out = self.values.to(device=tokens.device, dtype=tokens.dtype)
        return out.masked_fill(~self.slot_mask.to(tokens.device).unsqueeze(-1), fill_value)

    def split(self) -> list[torch.Tensor]:
        """The kept indices of each sample, without padding."""
        return [row[:count] for row, count in zip(self.indices, self.counts.tolist())]

    @property
    def keep_ratio(self) -> torch.Tensor:
        """``(B,)`` float: kept tokens / valid tokens of each sample."""
        return self.counts.double() / self.valid_counts.double()
