"""The frozen encoder's features for training: computed once per dataset and resolution
and cached on disk, standardised per channel while the projector trains, and the
standardisation folded into (or taken out of) a plain projector."""

from __future__ import annotations

import hashlib
import pathlib
import time
from collections.abc import Callable
from typing import Any

import torch

from prunekit.models import minillava
from prunekit.models.dinov2 import preprocess
from prunekit.training.data import Source


def vision_fingerprint(vision: torch.nn.Module) -> str:
    """12 hex digits identifying the encoder's weights (part of the cache file names)."""
    h = hashlib.sha256()
    for name, t in sorted(vision.state_dict().items()):
        h.update(name.encode())
        h.update(f"{float(t.double().sum()):.6e}".encode())
    return h.hexdigest()[:12]


@torch.no_grad()
def cached_features(
    model: Any,
    src: Source,
    res: int,
    cache_dir: pathlib.Path,
    fingerprint: str,
    log: Callable[[str], None],
) -> torch.Tensor:
    """``(n_images, (res/14)**2, 384)`` float16 raw features, computed once and cached."""
    path = cache_dir / "features" / f"{src.key}-r{res}-{fingerprint}.pt"
    if path.is_file():
        return torch.load(path)
    vision = model.model.vision_tower
    layer = model.config.vision_feature_layer
    n = len(src.images)
    out = torch.empty(
        n, minillava.num_image_tokens(res), vision.config.hidden_size, dtype=torch.float16
    )
    t0 = time.time()
    for start in range(0, n, 32):
        stop = min(start + 32, n)
        pixels = torch.cat([preprocess(src.images[i](), res) for i in range(start, stop)])
        hidden = vision(pixels, output_hidden_states=True).hidden_states[layer][:, 1:]
        out[start:stop] = hidden.to(torch.float16)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(out, path.with_suffix(".tmp"))
    path.with_suffix(".tmp").replace(path)
    log(f"features {src.key} @{res}px: {n} images in {time.time() - t0:.0f} s")
    return out


def channel_statistics(
    features: list[torch.Tensor], rows: int = 512
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-channel mean and standard deviation (floored at 1e-3) of the tokens of the first
    ``rows`` images of each ``(images, tokens, d)`` tensor; also the tokens, float32."""
    sample = torch.cat([f[:rows] for f in features]).float()
    sample = sample.reshape(-1, sample.shape[-1])
    return sample.mean(0), sample.std(0).clamp_min(1e-3), sample


class Standardized(torch.nn.Module):
    """The projector on per-channel standardised features; :meth:`fold_into` writes the
    equivalent plain projector on raw features."""

    def __init__(self, projector: torch.nn.Module, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.projector = projector
        self.register_buffer("mean", mean.float())
        self.register_buffer("std", std.float())

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        """The projector applied to ``(raw - mean) / std``."""
        return self.projector((raw.float() - self.mean) / self.std)

    @torch.no_grad()
    def fold_into(self, target: torch.nn.Module) -> None:
        """Set ``target`` (a ``LlavaMultiModalProjector``) to this map on raw features."""
        w1 = self.projector.linear_1.weight / self.std[None, :]
        b1 = self.projector.linear_1.bias - w1 @ self.mean
        target.linear_1.weight.copy_(w1)
        target.linear_1.bias.copy_(b1)
        target.linear_2.weight.copy_(self.projector.linear_2.weight)
        target.linear_2.bias.copy_(self.projector.linear_2.bias)


def unfold_(projector: torch.nn.Module, mean: torch.Tensor, std: torch.Tensor) -> None:
    """In place: a projector on raw features -> the same map on standardised features
    (the inverse of :meth:`Standardized.fold_into`)."""
    with torch.no_grad():
        w = projector.linear_1.weight.clone()
        projector.linear_1.bias.add_(w @ mean)
        projector.linear_1.weight.mul_(std[None, :])
