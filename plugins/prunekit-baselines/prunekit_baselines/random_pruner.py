"""The random baseline: keep a seeded, uniformly random subset of the tokens."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prunekit.core.inputs import PruneInputs
from prunekit.core.pruner import Picks, TokenPruner
from prunekit.strategies.selection.base import rank_descending
from prunekit.strategies.selection.random import RandomSelection, position_noise

_MASK32 = 0xFFFFFFFF


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer finaliser on int64 tensors holding uint32 values (murmur3's fmix32)."""
    x = x ^ (x >> 16)
    x = (x * 0x85EBCA6B) & _MASK32
    x = x ^ (x >> 13)
    x = (x * 0xC2B2AE35) & _MASK32
    return x ^ (x >> 16)


def content_seeds(inputs: PruneInputs, seed: int) -> torch.Tensor:
    """``(B,)`` int64: one 32-bit seed per sample, a hash of ``seed`` and the bits of its valid tokens.

    The hash is a sum over the valid entries of a mix of (value bits, position,
    feature), so it ignores padded rows and the batch, and is the same on every
    device. Values are hashed as float32, so a bf16 / fp16 input hashes like its
    float32 upcast. Computed on the tokens' device, batched.
    """
    tokens = inputs.tokens.float().contiguous()
    _, n, d = tokens.shape
    bits = tokens.view(torch.int32).to(torch.int64) & _MASK32
    where = torch.arange(n * d, device=tokens.device, dtype=torch.int64).view(1, n, d)
    mixed = _mix32(bits ^ _mix32((where * 0x9E3779B1 + 0x7F4A7C15) & _MASK32))
    mixed = mixed.masked_fill(~inputs.token_mask.unsqueeze(-1), 0)
    sums = (mixed.sum(dim=(1, 2)) & _MASK32) ^ (int(seed) & _MASK32)
    return _mix32(sums)


@dataclass
class RandomPruner(TokenPruner):
    """Random pruning: keep a seeded, uniformly random subset of each image's tokens.

    The baseline every token-pruning paper reports (e.g. the "random" rows of
    FasterVLM, VisionZip and DivPrune). There is no official repository; the
    published baselines draw ``torch.randperm`` per image from a global RNG, so
    their picks depend on the batch and on everything drawn before. prunekit's
    draw is instead a pure function of ``(seed, token position)``
    (:func:`prunekit.strategies.selection.position_noise`, the same hash as
    the ``"random"`` selection strategy): an image keeps the same tokens whatever
    batch, padding or device it comes in, and reruns are reproducible.

    Consequence of that determinism (documented, not hidden): with
    ``per_image=False`` (default) every image with the same valid positions keeps
    the *same positions*, i.e. one fixed random mask per ``seed``, as the
    ``"random"`` selection strategy does. ``per_image=True`` mixes a hash of
    the image's own token values into the seed (:func:`content_seeds`), so
    different images keep different random subsets, still independent of the
    batch; this is the closer match to the papers' per-image ``randperm``.

    The result's ``scores`` are the uniform draws (the kept tokens are the
    ``num_keep`` largest).

    Args:
        seed: integer seed.
        per_image: draw a different subset per image (hash of its tokens) instead
            of one subset per position pattern.
    """

    name = "random"

    seed: int = 0
    per_image: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        self._selection = RandomSelection(seed=self.seed)

    def select(self, inputs: PruneInputs, num_keep: int) -> Picks:
        n, device = inputs.num_tokens, inputs.tokens.device
        if self.per_image:
            noise = position_noise(content_seeds(inputs, self.seed), n)  # (B, N), one row per image
            order = rank_descending(noise, inputs.token_mask, num_keep)
        else:
            noise = position_noise(self.seed, n, device).expand(inputs.batch_size, -1)
            order = self._selection.select(inputs, torch.ones_like(noise), num_keep)
        return Picks(order=order, scores=noise.masked_fill(~inputs.token_mask, 0.0))


def register(registry) -> None:
    registry.add_pruner(RandomPruner)
