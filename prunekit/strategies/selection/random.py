"""Seeded random selection, weighted by relevance (Gumbel top-k)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prunekit.core.inputs import PruneInputs
from prunekit.strategies.selection.base import SelectionStrategy, rank_descending

_MASK32 = 0xFFFFFFFF


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer finaliser (xor-shift-multiply) on int64 tensors holding uint32 values."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x5BD1E995) & _MASK32
    return x ^ (x >> 16)


def position_noise(
    seed: int | torch.Tensor, n_tokens: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """``(n_tokens,)`` float64 uniforms in (0, 1), a pure function of ``(seed, position)``.

    A counter-based hash rather than a stateful generator, so a token's draw
    does not depend on the batch it is in, on padding, or on the device. With a
    ``(B,)`` integer tensor of seeds, ``(B, n_tokens)``: row ``b`` equals
    ``position_noise(int(seed[b]), n_tokens)``, computed on the seeds' device.
    """
    if isinstance(seed, torch.Tensor):
        device = seed.device if device is None else device
        key = _mix32((seed.to(device=device, dtype=torch.int64) & _MASK32) ^ 0x9E3779B9)
        key = key.unsqueeze(-1)
    else:
        key = _mix32((int(seed) & _MASK32) ^ 0x9E3779B9)
    position = torch.arange(n_tokens, device=device or "cpu", dtype=torch.int64)
    x = _mix32((position * 0x2545F491 + key) & _MASK32)
    x = _mix32(x ^ key)
    return (x.double() + 0.5) / 2.0**32


@dataclass
class RandomSelection(SelectionStrategy):
    """Keep a seeded random subset; with relevance weights, sample without
    replacement proportionally to them (Gumbel top-k).

    Determinism: the random draw is a hash of ``(seed, token position)``, so
    the selection of an image never depends on its batch; two images with the
    same valid positions and weights keep the same tokens. Tokens with weight 0
    come after all others, in random order.
    """

    seed: int = 0
    name = "random"

    def select(self, inputs: PruneInputs, weights: torch.Tensor, num_keep: int) -> torch.Tensor:
        uniform = position_noise(self.seed, inputs.num_tokens, inputs.tokens.device)
        gumbel = -torch.log(-torch.log(uniform)).expand_as(weights)
        w = weights.double()
        keys = torch.where(w > 0, torch.log(w.clamp_min(1e-300)) + gumbel, gumbel - 1e6)
        return rank_descending(keys, inputs.token_mask, num_keep)
