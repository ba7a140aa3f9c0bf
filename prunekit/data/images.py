"""Pictures by name or path: scikit-image's sample photos and image files, for the demos,
the commands and ``prunekit run``."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image


def sample_image(name: str) -> np.ndarray:
    """An RGB sample photo from ``skimage.data`` by name (e.g. ``"astronaut"``, ``"chelsea"``)."""
    from skimage import data  # scikit-image is imported only when a sample is asked for

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


def load_image(spec: str) -> Image.Image:
    """An RGB picture from an image file (any format PIL reads) or a scikit-image sample name.

    A ``spec`` with a suffix or a folder separator is a file name: ``FileNotFoundError``
    if there is no such file (never mistaken for a sample name).
    """
    path = Path(spec)
    if path.is_file():
        with Image.open(path) as file:
            return file.convert("RGB")
    if path.suffix or "/" in spec or os.sep in spec:
        raise FileNotFoundError(f"image file {spec!r} not found")
    return Image.fromarray(sample_image(spec))
