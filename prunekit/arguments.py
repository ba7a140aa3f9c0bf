"""Argument parsers and checks shared by prunekit's commands (``prunekit`` and ``prunekit viz``).

Each check raises ``ValueError`` (or ``argparse.ArgumentTypeError``) naming the option,
cheaply, so that a command refuses bad input before it loads any model.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from prunekit.core.budget import check_budget
from prunekit.data.images import sample_image


def budget_argument(text: str) -> int | float:
    """Parse a budget: an int (tokens kept) or a float in (0, 1] (fraction kept)."""
    try:
        value: int | float = int(text)
    except ValueError:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"budget must be a number, got {text!r}") from None
    try:
        return check_budget(value)
    except (TypeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def check_image(spec: str, option: str = "--image") -> None:
    """Raise ``ValueError`` naming ``option`` unless ``spec`` is an image file PIL reads or a
    scikit-image sample name; cheap, so commands call it before loading any model."""
    path = Path(spec)
    if path.is_dir():
        raise ValueError(f"{option} {spec!r} is a folder, not an image file")
    if path.is_file():
        from PIL import Image

        try:
            with Image.open(path) as picture:
                picture.verify()
        except Exception as exc:  # PIL raises several types for unreadable files
            raise ValueError(
                f"{option} {spec!r} is not an image file PIL can read ({exc})"
            ) from None
        return
    if path.suffix or "/" in spec or os.sep in spec:
        raise ValueError(f"{option} {spec!r}: no such image file")
    try:
        sample_image(spec)
    except ValueError as exc:
        raise ValueError(f"{option}: {exc}; or give an image file") from None


def _writable_folder(folder: Path, option: str, spec: str) -> None:
    """Raise ``ValueError`` unless ``folder`` (or its first existing parent) is a writable folder."""
    existing = folder.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{option} {spec!r}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{option} {spec!r}: cannot write in the folder {existing}")


def check_output_file(spec: str, option: str = "--out") -> None:
    """Raise ``ValueError`` naming ``option`` unless a picture can be written to ``spec``
    (a path with an image suffix, not a folder, in a folder that is or can be created)."""
    from PIL import Image

    path = Path(spec)
    if path.is_dir():
        raise ValueError(
            f"{option} {spec!r} is a folder; give a picture path such as {str(path / 'kept.png')!r}"
        )
    if path.suffix.lower() not in Image.registered_extensions():
        raise ValueError(f"{option} {spec!r} needs an image suffix such as .png or .jpg")
    if path.exists() and not os.access(path, os.W_OK):
        raise ValueError(f"{option} {spec!r} exists and is not writable")
    _writable_folder(path.parent, option, spec)


def check_output_folder(spec: str, option: str = "--out") -> None:
    """Raise ``ValueError`` naming ``option`` unless ``spec`` is a folder that is or can be created."""
    path = Path(spec)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{option} {spec!r} is a file; this command writes a folder there")
    _writable_folder(path, option, spec)
