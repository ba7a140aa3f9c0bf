"""Selection time and peak memory of every selection strategy, against the Gram GEMM floor.

For each cell ``(B, N, d, K)`` of a grid, random float32 tokens ``(B, N, d)`` (and 8
text rows, and the model signals a pruner needs, synthesized as in the contract tests)
are pruned to ``K`` tokens per sample by each method; the time is that of the whole
``pruner.prune(...)`` call (validation, relevance, selection, result). The floor is one
Gram GEMM ``torch.bmm(X, X^T)`` of the same tokens, timed in the same process; the
``x GEMM`` column is time / GEMM. Methods:

* ``resprune``: the whole ResPrune call (text relevance + greedy residual selection,
  ``method="auto"``: the Gram path, or the rows path without the ``N x N`` matrix when
  the Gram matrices would exceed ``max_gram_bytes`` = 256 MiB); ``resprune[gram]`` and
  ``resprune[rows]`` force a path (the ``path`` column says which one ran);
* ``composed[none x greedy_residual]``, ``composed[text x topk]``,
  ``composed[none x random]``: strategy compositions;
* every other registered pruner with its defaults (``divprune``, ``cdpruner``,
  ``random``, ``pooling``, ``norm_topk``, and, with synthesized attention / key /
  hidden-state signals of the contract tests' shapes (4 heads of 8), ``fastervlm``,
  ``fastv``, ``vispruner``, ``visionzip``, ``dart``). Nothing is excluded; cells whose
  estimated time exceeds ``--cell-budget`` are recorded as skipped, with the estimate.

Peak memory: the largest amount of memory allocated by torch during one call beyond
what existed before it (its inputs). CPU: from the allocation events of
``torch.profiler`` (``profile_memory=True``; allocations made outside torch's
allocator, e.g. inside BLAS, are not seen); CUDA: ``torch.cuda.max_memory_allocated``.

Grids (``--grid``): ``issue`` (the configurations of issue 7: (B, N, d, K) = (1, 576,
4096, 128), (8, 576, 4096, 128), (1, 2880, 4096, 640) for the GEMM, ``resprune`` and
``cdpruner``, and (1, 10000, 3584, 1111) for those plus ``resprune[gram]``, whose
selection is compared with the rows path's); ``full`` (N in {576, 2880, 10000}, d in
{1024, 3584, 4096}, K/N in {1/9, 2/9, 1/3} i.e. 11.1 / 22.2 / 33.3 %, B in {1, 8},
every method); ``quick`` (toy sizes, every method: a smoke test, not a measurement).

Timing: ``torch.utils.benchmark.Timer.blocked_autorange(min_run_time=...)``, the
median over its blocks (a call estimated to take over 5 x ``min_run_time`` is timed
once, ``Timer.timeit(1)``), all of torch's threads (``--threads``), under
``torch.no_grad()``. Outputs (``--out DIR``): ``selection_<device>.json`` (every
number, the machine, the settings), ``selection_<device>.md`` (the table, naming the
machine) and ``selection_<device>.png`` (time against N per method, log-log, the GEMM
as the floor). Usage::

    python benchmarks/selection.py --grid issue --out benchmarks/results   # ~5 min, 2 cores
    python benchmarks/selection.py --grid full --out benchmarks/results    # hours on 2 cores
    python benchmarks/selection.py --grid issue --device cuda --out benchmarks/results
    python benchmarks/selection.py --grid quick --out /tmp/selection       # seconds
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch.utils import benchmark

import prunekit
from prunekit.experiments.records import machine_record
from prunekit.strategies.selection.greedy_residual import DEFAULT_MAX_GRAM_BYTES, gram_method
from prunekit.testing import synthesize_signals

TEXT_ROWS = 8
RATIOS = (1 / 9, 2 / 9, 1 / 3)
FULL_N = (576, 2880, 10000)
FULL_D = (1024, 3584, 4096)
FULL_B = (1, 8)
ISSUE_CELLS = ((1, 576, 4096, 128), (8, 576, 4096, 128), (1, 2880, 4096, 640))
ISSUE_LARGE = (1, 10000, 3584, 1111)
QUICK_CELLS = ((1, 48, 16, 11), (2, 96, 32, 21))
#: the ResPrune variants and compositions measured besides every registered pruner
VARIANTS = {
    "resprune[gram]": ("resprune", {"method": "gram"}),
    "resprune[rows]": ("resprune", {"method": "rows"}),
    "composed[none x greedy_residual]": ("composed", {"selection": "greedy_residual"}),
    "composed[text x topk]": ("composed", {"relevance": "text", "selection": "topk"}),
    "composed[none x random]": ("composed", {"selection": "random"}),
}
GREEDY = ("resprune", "cdpruner", "composed")  # pruners running greedy_residual_order


# --------------------------------------------------------------------------- methods


@dataclass(frozen=True)
class Method:
    """One thing to time: a label, the registered pruner and its arguments."""

    label: str
    name: str
    kwargs: dict = field(default_factory=dict)

    def build(self) -> prunekit.TokenPruner:
        return prunekit.create_pruner(self.name, **self.kwargs)


def all_methods() -> list[Method]:
    methods = [Method(name, name) for name in prunekit.list_pruners() if name != "composed"]
    methods += [Method(label, name, kwargs) for label, (name, kwargs) in VARIANTS.items()]
    return methods


def path_of(method: Method, tokens: torch.Tensor) -> str:
    """``"gram"`` / ``"rows"`` for the methods built on greedy_residual_order, else ``""``."""
    if method.name not in GREEDY:
        return ""
    if method.name == "composed" and method.kwargs.get("selection") != "greedy_residual":
        return ""
    return gram_method(
        tokens,
        method.kwargs.get("method", "auto"),
        method.kwargs.get("max_gram_bytes", DEFAULT_MAX_GRAM_BYTES),
    )


# --------------------------------------------------------------------------- estimates


@dataclass(frozen=True)
class Speed:
    """Calibrated speeds of this machine, for the time estimates that decide skips."""

    flops: float  # float32 GEMM FLOP/s
    bandwidth: float  # bytes/s of a large copy
    op: float  # seconds per small op (launch / dispatch overhead)


def calibrate(device: str) -> Speed:
    def best(fn: Callable[[], object], repeat: int = 3) -> float:
        fn()
        times = []
        for _ in range(repeat):
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            times.append(time.perf_counter() - start)
        return min(times)

    n = 2048 if device.startswith("cuda") else 768
    a = torch.randn(1, n, n, device=device)
    flops = 2 * n**3 / best(lambda: torch.bmm(a, a))
    big = torch.empty(2**24, device=device)  # 64 MiB
    bandwidth = 2 * big.numel() * 4 / best(big.clone)
    small = torch.randn(8, 576, device=device)
    op = best(lambda: [small.amax(dim=1) for _ in range(200)]) / 200
    return Speed(flops=flops, bandwidth=bandwidth, op=op)


def estimate(label: str, b: int, n: int, d: int, k: int, path: str, speed: Speed) -> float:
    """Rough seconds of one call (within a factor of a few), to skip cells that would not fit."""
    gemm = 2 * b * n * n * d / speed.flops
    token_pass = b * n * d * 4 / speed.bandwidth
    steps = k * 30 * speed.op + 2 * b * n * k * k / speed.bandwidth  # greedy loop + projections
    if label == "gemm":
        return gemm
    if path == "gram":
        return gemm + 3 * token_pass + steps
    if path == "rows":
        return 3 * token_pass + steps + k * token_pass
    if label == "divprune":
        return gemm + 8 * b * n * n * 4 / speed.bandwidth + k * (20 * speed.op)
    if label == "vispruner":  # float64 cosines of the halves of the residual, in rounds of 8
        rounds = max(1, (n - k // 2) // 8)
        return rounds * (2 * b * (n / 2) ** 2 * d * 4 / speed.flops + 25 * speed.op)
    if label == "visionzip":
        return 4 * token_pass + 2 * b * n * (k * 10 / 64 + 1) * d / speed.flops
    if label == "dart":
        return 8 * (3 * token_pass + 20 * speed.op) + 4 * token_pass
    return 4 * token_pass + 100 * speed.op  # top-k, random, pooling, FastV, ...


def memory_estimate(label: str, b: int, n: int, d: int, k: int, path: str) -> float:
    """Rough peak bytes, to skip cells that cannot fit in memory."""
    tokens = b * n * d * 4
    square = b * n * n * 4
    if label == "gemm" or path == "gram":
        return 2 * tokens + square + b * k * n * 4
    if label in ("divprune", "vispruner"):
        return 2 * tokens + 3 * square
    return 4 * tokens + b * k * n * 4


# --------------------------------------------------------------------------- measuring


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def peak_bytes(fn: Callable[[], object], device: str) -> tuple[int | None, object]:
    """Peak memory allocated by torch during ``fn()`` beyond what existed before, and its result."""
    if device.startswith("cuda"):
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        out = fn()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before, out
    try:
        from torch._C._profiler import _EventType
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            out = fn()

        def walk(events):
            for event in events:
                yield event
                yield from walk(event.children)

        tree = prof.profiler.kineto_results.experimental_event_tree()
        allocations = [e.extra_fields for e in walk(tree) if e.tag == _EventType.Allocation]
    except Exception as exc:  # a private profiler API: report n/a rather than fail the run
        print(f"peak memory unavailable ({type(exc).__name__}: {exc})", file=sys.stderr)
        return None, fn()
    if not allocations:
        return 0, out
    # each event carries the total allocated after it: before the call is the lowest
    # total-before-an-event, the peak the highest total-after
    baseline = min(a.total_allocated - a.alloc_size for a in allocations)
    return max(a.total_allocated for a in allocations) - baseline, out


def median_and_iqr(
    fn: Callable[[], object], threads: int, min_run_time: float, estimate_s: float
) -> tuple:
    """Median and IQR of ``blocked_autorange`` blocks, and their number; a call estimated
    to take more than 5 x ``min_run_time`` is timed once, without a warm-up call."""
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads)
    if estimate_s > 5 * min_run_time:
        m = timer.timeit(number=1)
    else:
        m = timer.blocked_autorange(min_run_time=min_run_time)
    return m.median, m.iqr, len(m.times)


@dataclass
class Row:
    """One method on one cell."""

    batch: int
    tokens: int
    dim: int
    kept: int
    method: str
    path: str = ""
    median_s: float | None = None
    iqr_s: float | None = None
    runs: int = 0
    x_gemm: float | None = None
    peak_bytes: int | None = None
    estimate_s: float | None = None
    skipped: str | None = None
    same_as_gram: bool | None = None


def measure_cell(
    cell: tuple,
    methods: list[Method],
    args: argparse.Namespace,
    speed: Speed,
    memory_limit: float,
) -> list[Row]:
    b, n, d, k = cell
    device = args.device
    generator = torch.Generator().manual_seed(n * 7 + d + b)
    tokens = torch.randn(b, n, d, generator=generator).to(device)
    text = torch.randn(b, TEXT_ROWS, d, generator=generator).to(device)
    rows = []
    gemm_s = None
    selections: dict[str, torch.Tensor] = {}
    for method in [Method("gemm", "")] + methods:
        path = "" if method.label == "gemm" else path_of(method, tokens)
        row = Row(b, n, d, k, method.label, path)
        row.estimate_s = estimate(method.label, b, n, d, k, path, speed)
        need = memory_estimate(method.label, b, n, d, k, path)
        # the timed calls (a long call: once; else blocks after a warm-up) and the memory call
        long_call = row.estimate_s > 5 * args.min_run_time
        measuring = 2 * row.estimate_s if long_call else args.min_run_time + 2 * row.estimate_s
        if measuring > args.cell_budget:
            row.skipped = f"estimated {row.estimate_s:.3g} s per call, over --cell-budget"
        elif need > memory_limit:
            row.skipped = f"estimated {need / 2**30:.3g} GiB > memory limit"
        if row.skipped:
            print(f"{cell} {method.label}: skipped ({row.skipped})", file=sys.stderr)
            rows.append(row)
            continue
        if method.label == "gemm":

            def fn(tokens=tokens):
                return torch.bmm(tokens, tokens.transpose(1, 2))

        else:
            pruner = method.build()
            signals = synthesize_signals(pruner.required_signals, b, n, d, generator)
            signals = {name: value.to(device) for name, value in signals.items()}

            def fn(pruner=pruner, signals=signals):
                with torch.no_grad():
                    return pruner.prune(tokens, budget=k, text_embeds=text, signals=signals)

        row.median_s, row.iqr_s, row.runs = median_and_iqr(
            fn, args.threads, args.min_run_time, row.estimate_s
        )
        out = None
        if args.memory:
            row.peak_bytes, out = peak_bytes(fn, device)
        elif method.label.startswith("resprune"):
            out = fn()
        if method.label.startswith("resprune"):
            selections[method.label] = out.indices.cpu()
        if method.label == "gemm":
            gemm_s = row.median_s
        elif gemm_s:
            row.x_gemm = row.median_s / gemm_s
        print(
            f"{cell} {method.label}{f' ({path})' if path else ''}: "
            f"{1000 * row.median_s:.2f} ms" + (f", {row.x_gemm:.2f}x GEMM" if row.x_gemm else ""),
            file=sys.stderr,
        )
        rows.append(row)
    # the rows path (no N x N matrix) must select what the Gram path selects
    gram = [r.method for r in rows if r.method in selections and r.path == "gram"]
    for row in rows:
        if gram and row.method in selections and row.path == "rows":
            row.same_as_gram = torch.equal(selections[row.method], selections[gram[0]])
    return rows


# --------------------------------------------------------------------------- grids


def grid_cells(grid: str) -> list[tuple[tuple, list[str] | None]]:
    """``(cell, method labels or None for every method)`` of a grid."""
    if grid == "quick":
        return [(cell, None) for cell in QUICK_CELLS]
    if grid == "issue":
        cells = [(cell, ["resprune", "cdpruner"]) for cell in ISSUE_CELLS]
        return cells + [(ISSUE_LARGE, ["resprune", "resprune[gram]", "cdpruner"])]
    return [
        ((b, n, d, prunekit.num_kept(n, ratio)), None)
        for b in FULL_B
        for n in FULL_N
        for d in FULL_D
        for ratio in RATIOS
    ]


def run(args: argparse.Namespace) -> list[Row]:
    torch.set_num_threads(args.threads)
    speed = calibrate(args.device)
    print(
        f"calibration: {speed.flops / 1e9:.0f} GFLOP/s, {speed.bandwidth / 1e9:.1f} GB/s, "
        f"{1e6 * speed.op:.1f} us/op",
        file=sys.stderr,
    )
    memory_limit = args.memory_limit * 2**30
    available = {m.label: m for m in all_methods()}
    if args.methods:
        unknown = sorted(set(args.methods) - set(available))
        if unknown:
            raise SystemExit(f"--methods: unknown {unknown}; known: {sorted(available)}")
    rows: list[Row] = []
    for cell, labels in grid_cells(args.grid):
        chosen = labels if labels is not None else list(available)
        if args.methods:
            chosen = [label for label in chosen if label in args.methods]
        rows += measure_cell(cell, [available[x] for x in chosen], args, speed, memory_limit)
    return rows


# --------------------------------------------------------------------------- report


def markdown(rows: list[Row], info: dict[str, object], settings: dict[str, object]) -> str:
    where = f"{info['cpu_cores']}-core CPU ({info['cpu']})"
    if "gpu" in info:
        where = f"{info['gpu']} ({where} host)"
    lines = [
        "# Selection time against the Gram GEMM floor",
        "",
        f"Machine: {where}, torch {info['torch']}, float32, {settings['threads']} thread(s). "
        f"Grid `{settings['grid']}`, `min_run_time` {settings['min_run_time_s']} s.",
        f"Produced by `{settings['command']}`.",
        "",
        "Time: median of `torch.utils.benchmark` blocks of the whole `pruner.prune(...)` "
        "call (validation, relevance, selection, result) on random tokens (B, N, d), "
        f"{TEXT_ROWS} text rows, synthesized signals. `x GEMM`: time / one "
        "`torch.bmm(X, X^T)` of the same tokens, timed in the same process. `path`: the "
        "greedy residual path (`gram`: one N x N GEMM; `rows`: one Gram row per step, no "
        "N x N matrix). Peak: the most memory torch allocated during one call beyond its "
        "inputs (CPU: torch.profiler allocation events; CUDA: max_memory_allocated).",
        "",
        "| B | N | d | K | method | path | median ms | IQR ms | x GEMM | peak MiB | note |",
        "|" + "---|" * 11,
    ]
    for r in rows:

        def ms(value: float | None) -> str:
            return "" if value is None else f"{1000 * value:.2f}"

        note = r.skipped or ""
        if r.same_as_gram is not None:
            note = "same tokens as the gram path" if r.same_as_gram else "DIFFERS from gram path"
        lines.append(
            f"| {r.batch} | {r.tokens} | {r.dim} | {r.kept} | "
            f"{'gemm (floor)' if r.method == 'gemm' else r.method} | {r.path} | "
            f"{ms(r.median_s)} | {ms(r.iqr_s)} | "
            f"{'' if r.x_gemm is None else f'{r.x_gemm:.2f}'} | "
            f"{'' if r.peak_bytes is None else f'{r.peak_bytes / 2**20:.1f}'} | {note} |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [r for r in rows if r.median_s is not None]
    panels = list(dict.fromkeys((r.batch, r.dim, round(r.kept / r.tokens, 2)) for r in measured))
    cols = min(3, max(1, len(panels)))
    nrows = max(1, -(-len(panels) // cols))
    fig, axes = plt.subplots(nrows, cols, figsize=(5 * cols, 4 * nrows), squeeze=False)
    colors = plt.get_cmap("tab20")
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    for ax, (b, d, ratio) in zip(axes.flat, panels):
        part = [
            r for r in measured if (r.batch, r.dim, round(r.kept / r.tokens, 2)) == (b, d, ratio)
        ]
        for i, label in enumerate(dict.fromkeys(r.method for r in part)):
            pts = sorted((r.tokens, r.median_s) for r in part if r.method == label)
            style = {"color": colors(i % 20), "marker": "osD^vP*Xh<>"[i % 11]}
            if label == "gemm":
                style = {"color": "black", "linestyle": "--", "linewidth": 2, "marker": "s"}
            ax.plot(
                [p[0] for p in pts],
                [1000 * p[1] for p in pts],
                label="Gram GEMM (floor)" if label == "gemm" else label,
                **style,
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"B={b}, d={d}, K/N={ratio:.3f}")
        ax.set_xlabel("N (tokens)")
        ax.set_ylabel("time per call (ms)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Issue grid (CPU, about 5 minutes on 2 idle cores): "
        "python benchmarks/selection.py --grid issue --out benchmarks/results",
    )
    parser.add_argument("--grid", choices=("issue", "full", "quick"), default="issue")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    parser.add_argument("--methods", nargs="+", default=None, help="only these method labels")
    parser.add_argument(
        "--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads"
    )
    parser.add_argument(
        "--min-run-time",
        type=float,
        default=None,
        help="seconds per timed measurement (default: 1, --grid quick: 0.01)",
    )
    parser.add_argument(
        "--cell-budget",
        type=float,
        default=None,
        help="skip a method on a cell when its estimated measuring time exceeds this many "
        "seconds (default: 120; --grid issue: 900, i.e. measure every configuration)",
    )
    parser.add_argument(
        "--memory-limit",
        type=float,
        default=None,
        help="skip a method whose estimated peak exceeds this many GiB "
        "(default: half the machine's RAM, or of the GPU's)",
    )
    parser.add_argument(
        "--no-memory", dest="memory", action="store_false", help="skip the peak-memory call"
    )
    parser.add_argument(
        "--out", default="benchmarks/results", help="folder for selection_<device>.* ('-': print)"
    )
    args = parser.parse_args(argv)
    if args.cell_budget is None:
        args.cell_budget = 900.0 if args.grid == "issue" else 120.0
    if args.min_run_time is None:
        args.min_run_time = 0.01 if args.grid == "quick" else 1.0
    if args.memory_limit is None:
        if args.device.startswith("cuda"):
            total = torch.cuda.get_device_properties(torch.device(args.device)).total_memory
        else:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        args.memory_limit = total / 2 / 2**30
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    command = " ".join(
        ["python benchmarks/selection.py", *(sys.argv[1:] if argv is None else argv)]
    )
    start = time.perf_counter()
    rows = run(args)
    settings = {
        "command": command,
        "grid": args.grid,
        "threads": args.threads,
        "min_run_time_s": args.min_run_time,
        "cell_budget_s": args.cell_budget,
        "memory_limit_gib": args.memory_limit,
        "wall_s": time.perf_counter() - start,
    }
    info = machine_record(args.device)
    text = markdown(rows, info, settings)
    print(text)
    if args.out == "-":
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"selection_{args.device.split(':')[0]}"
    payload = {"machine": info, "settings": settings, "rows": [asdict(r) for r in rows]}
    stem.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
    stem.with_suffix(".md").write_text(text)
    plot(rows, stem.with_suffix(".png"))
    print(f"wrote {stem}.json, .md, .png", file=sys.stderr)


if __name__ == "__main__":
    main()
