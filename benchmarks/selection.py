"""Selection time and peak memory of every selection strategy, against the Gram GEMM floor.

For each cell ``(B, N, d, K)`` of a grid, random tokens ``(B, N, d)`` and 8 text rows
(both in ``--dtype``: float32 or bfloat16), and the model signals a pruner needs
(synthesized as in the contract tests), are pruned to ``K`` tokens per sample by each
method; the time is that of the whole ``pruner.prune(...)`` call (validation,
relevance, selection, result; the pruners select in float32). The floor is one Gram
GEMM ``torch.bmm(X, X^T)`` of the same tokens, timed in the same process; the
``x GEMM`` column is time / GEMM. Methods:

* ``resprune``: the whole ResPrune call (text relevance + greedy residual selection,
  ``method="auto"``: the Gram path, or the rows path without the ``N x N`` matrix when
  the Gram matrices would exceed ``max_gram_bytes`` = 256 MiB); ``resprune[gram]`` and
  ``resprune[rows]`` force a path (the ``path`` column says which one ran, and in
  brackets the backend of its greedy steps: ``native``, ``triton`` or ``torch``);
* ``composed[none x greedy_residual]``, ``composed[text x topk]``,
  ``composed[none x random]``: strategy compositions;
* every other registered pruner with its defaults (``divprune``: the ``N x N``
  distances, or past 256 MiB of them one distance row per step, the ``path`` column
  ``matrix`` / ``rows``; ``cdpruner``, ``random``, ``pooling``, ``norm_topk``, and,
  with synthesized attention / key / hidden-state signals of the contract tests'
  shapes (4 heads of 8), ``fastervlm``, ``fastv``, ``vispruner``, ``visionzip``,
  ``dart``);
* ``cdpruner[official]``: the official CDPruner code's selection (``encode_images``
  in Theia-4869/CDPruner's ``llava/model/llava_arch.py``) transcribed to torch, on the
  same tokens and text: ``N x N`` similarity and kernel, relevance min-max normalised
  over the whole batch, the fast greedy MAP loop over a ``(K, B, N)`` buffer (see
  :func:`official_cdpruner_select`); on one sample it keeps what ``cdpruner`` keeps.

Nothing is excluded; cells whose estimated time exceeds ``--cell-budget`` (or whose
estimated peak exceeds ``--memory-limit``) are recorded as skipped, with the estimate,
and a call that runs out of GPU memory is recorded as skipped too.

Prefill share (``--prefill-share``, the default on cuda; ``--no-prefill-share``, the
default on cpu): per cell, the time of a LLaVA-1.5-7B-shaped full-depth prefill of
the same batch, 32 x the timed forward of one random-weight Llama decoder layer
(``benchmarks/prefill.py``'s decoder with one layer: hidden 4096, MLP 11008, 32
heads, SDPA; a toy layer on the quick grids) on ``(B, N + 64, 4096)`` in
``--dtype``; columns ``prefill ms`` (``prefill_s`` in the json) and ``% prefill``
(each time / that prefill).

Peak memory: the largest amount of memory allocated by torch during one call beyond
what existed before it (its inputs). CPU: from the allocation events of
``torch.profiler`` (``profile_memory=True``; allocations made outside torch's
allocator, e.g. inside BLAS, are not seen); CUDA: ``torch.cuda.max_memory_allocated``.

Grids (``--grid``): ``issue`` (the configurations of issue 7: (B, N, d, K) = (1, 576,
4096, 128), (8, 576, 4096, 128), (1, 2880, 4096, 640) for the GEMM, ``resprune`` and
``cdpruner``, and (1, 10000, 3584, 1111) for those plus ``resprune[gram]``, whose
selection is compared with the rows path's); ``full`` (N in {576, 2880, 10000}, d in
{1024, 3584, 4096}, K/N in {1/9, 2/9, 1/3} i.e. 11.1 / 22.2 / 33.3 %, B in {1, 8},
every method); ``quick`` (toy sizes, every method: a smoke test, not a measurement);
``gpu`` (B in {1, 8, 32} x N in {576, 2880, 10000}, d = 4096 (3584 at N = 10000),
K = 2/9 of N (128 of 576, 640, 2222) for ``resprune``, ``cdpruner``,
``cdpruner[official]``, ``divprune``); ``gpu-quick`` (the ``gpu`` grid's methods
and prefill at toy sizes: its smoke test, runs on a CPU).

Timing: ``torch.utils.benchmark.Timer.blocked_autorange(min_run_time=...)``, the
median over its blocks (a call estimated to take over 5 x ``min_run_time`` is timed
once, ``Timer.timeit(1)``), all of torch's threads (``--threads``), under
``torch.no_grad()``. Outputs (``--out DIR``): ``<stem>.json`` (every number, the
machine, the settings, the dtype), ``<stem>.md`` (the table, naming the machine and
the dtype) and ``<stem>.png`` (time against N per method, log-log, the GEMM as the
floor); ``<stem>`` is ``selection_<device>``, with ``_<dtype>`` appended on the
``gpu`` grids and for bfloat16 (``selection_cuda_bfloat16``,
``selection_cuda_float32``). Usage::

    python benchmarks/selection.py --grid issue --out benchmarks/results   # ~5 min, 2 cores
    python benchmarks/selection.py --grid full --out benchmarks/results    # hours on 2 cores
    python benchmarks/selection.py --grid issue --device cuda --out benchmarks/results
    python benchmarks/selection.py --grid gpu --device cuda --dtype bfloat16 --out benchmarks/results
    python benchmarks/selection.py --grid gpu --device cuda --dtype float32 --out benchmarks/results
    python benchmarks/selection.py --grid quick --out /tmp/selection       # seconds
    python benchmarks/selection.py --grid gpu-quick --prefill-share --out /tmp/selection
"""

from __future__ import annotations

import argparse
import importlib.util
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
from prunekit.experiments.records import machine_record, reproduce_command
from prunekit.strategies.selection.greedy_residual import (
    DEFAULT_MAX_GRAM_BYTES,
    gram_method,
    selection_backend,
)
from prunekit.testing import synthesize_signals
from prunekit_baselines.divprune import DEFAULT_MAX_MATRIX_BYTES, maxmin_method

TEXT_ROWS = 8
RATIOS = (1 / 9, 2 / 9, 1 / 3)
FULL_N = (576, 2880, 10000)
FULL_D = (1024, 3584, 4096)
FULL_B = (1, 8)
ISSUE_CELLS = ((1, 576, 4096, 128), (8, 576, 4096, 128), (1, 2880, 4096, 640))
ISSUE_LARGE = (1, 10000, 3584, 1111)
QUICK_CELLS = ((1, 48, 16, 11), (2, 96, 32, 21))
GPU_B = (1, 8, 32)
GPU_N = (576, 2880, 10000)
GPU_RATIO = 2 / 9  # K = 128 of 576
GPU_METHODS = ["resprune", "cdpruner", "cdpruner[official]", "divprune"]
GPU_QUICK_CELLS = ((1, 48, 16, 11), (3, 96, 32, 21))
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
#: prompt tokens besides the visual ones in the prefill whose share a selection takes
PREFILL_TEXT = 64
#: decoder layers of LLaVA-1.5-7B's language model (the prefill is that many x one layer)
PREFILL_LAYERS = 32
#: the ResPrune variants and compositions measured besides every registered pruner
VARIANTS = {
    "resprune[gram]": ("resprune", {"method": "gram"}),
    "resprune[rows]": ("resprune", {"method": "rows"}),
    "composed[none x greedy_residual]": ("composed", {"selection": "greedy_residual"}),
    "composed[text x topk]": ("composed", {"relevance": "text", "selection": "topk"}),
    "composed[none x random]": ("composed", {"selection": "random"}),
}
GREEDY = ("resprune", "cdpruner", "composed")  # pruners running greedy_residual_order
OFFICIAL_CDPRUNER = "cdpruner[official]"


# --------------------------------------------------------------------------- methods


@dataclass(frozen=True)
class Method:
    """One thing to time: a label, the registered pruner and its arguments."""

    label: str
    name: str
    kwargs: dict = field(default_factory=dict)

    def build(self) -> prunekit.TokenPruner | OfficialCDPruner:
        if self.name == OFFICIAL_CDPRUNER:
            return OfficialCDPruner()
        return prunekit.create_pruner(self.name, **self.kwargs)


def official_cdpruner_select(
    tokens: torch.Tensor, text: torch.Tensor, num_keep: int
) -> torch.Tensor:
    """CDPruner's selection as its official code runs it, in torch, batched as it is batched.

    A transcription of ``LlavaMetaForCausalLM.encode_images`` in the official
    repository (Theia-4869/CDPruner, ``llava/model/llava_arch.py``), given the
    tokens ``(B, N, d)`` in place of both the projected features and the CLIP patch
    embeddings, and ``text`` ``(B, M, d)`` in place of the CLIP text embeddings
    (one set per sample here, one for the batch there): unit tokens in float32, the
    ``(B, N, N)`` similarity; relevance the mean negated cosine to the text rows,
    min-max normalised over the *whole batch* with ``+1e-6``; kernel
    ``r_i S_ij r_j``; then the fast greedy MAP loop over a ``(K, B, N)`` float32
    Cholesky buffer, ``argmax`` of the Schur complements, picked ones set to
    ``-inf``. No validation, no fix for a rank-deficient kernel. The one liberty:
    the batch index lives on the tokens' device (the official code builds a CPU
    ``torch.arange(B)`` at each use). Returns the ``(B, K)`` picks, sorted.
    """
    batch, n, _ = tokens.shape
    device = tokens.device
    index = torch.arange(batch, device=device)
    unit = (tokens / tokens.norm(dim=-1, keepdim=True)).float()
    similarity = torch.matmul(unit, unit.transpose(1, 2))  # (B, N, N)
    image_embeds = tokens / tokens.norm(dim=-1, keepdim=True)  # in the tokens' dtype
    text_embeds = text / text.norm(dim=-1, keepdim=True)
    relevance = (-torch.matmul(image_embeds, text_embeds.transpose(1, 2))).mean(dim=-1)  # (B, N)
    relevance = (relevance - relevance.min() + 1e-6) / (relevance.max() - relevance.min())
    kernel = relevance.unsqueeze(2) * similarity * relevance.unsqueeze(1)  # (B, N, N)
    cis = torch.zeros((num_keep, batch, n), device=device)  # (K, B, N), float32
    di2s = torch.diagonal(kernel, dim1=1, dim2=2).clone()  # (B, N)
    picks = torch.empty((num_keep, batch), dtype=torch.long, device=device)
    for i in range(num_keep):
        j = torch.argmax(di2s, dim=-1)
        picks[i] = j
        done = torch.einsum("tb,tbn->bn", cis[:i, index, j], cis[:i])
        eis = (kernel[index, j] - done) / torch.sqrt(di2s[index, j]).unsqueeze(-1)
        cis[i, :, :] = eis
        di2s -= torch.square(eis)
        di2s[index, j] = -float("inf")
    return torch.sort(picks.t()).values


class OfficialCDPruner:
    """:func:`official_cdpruner_select` behind the ``prune`` call the benchmark times."""

    required_signals: frozenset[str] = frozenset()

    def prune(self, tokens, budget, text_embeds=None, signals=None) -> torch.Tensor:
        return official_cdpruner_select(tokens, text_embeds, budget)


def all_methods() -> list[Method]:
    methods = [Method(name, name) for name in prunekit.list_pruners() if name != "composed"]
    methods += [Method(label, name, kwargs) for label, (name, kwargs) in VARIANTS.items()]
    methods.append(Method(OFFICIAL_CDPRUNER, OFFICIAL_CDPRUNER))
    return methods


def backend_of(method: Method, tokens: torch.Tensor, path: str) -> str:
    """The backend of the greedy steps (``selection_backend``) for greedy methods, else ``""``."""
    if path not in ("gram", "rows") or method.name == "divprune":
        return ""
    compute = torch.promote_types(tokens.dtype, torch.float32)
    probe = torch.empty(1, 1, 1, dtype=compute, device=tokens.device)
    return selection_backend(probe, method.kwargs.get("backend", "auto"), path)


def path_of(method: Method, tokens: torch.Tensor) -> str:
    """``"gram"`` / ``"rows"`` for the methods built on greedy_residual_order, ``"matrix"``
    / ``"rows"`` for DivPrune, else ``""``."""
    # the pruners select in float32 (float64 stays float64): decide on that size
    compute = torch.promote_types(tokens.dtype, torch.float32)
    tokens = torch.empty(tokens.shape, dtype=compute, device="meta")
    if method.name == "divprune":
        return maxmin_method(
            tokens,
            method.kwargs.get("method", "auto"),
            method.kwargs.get("max_matrix_bytes", DEFAULT_MAX_MATRIX_BYTES),
        )
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
    if label == "divprune" and path == "rows":  # slabs of the matrix, then a GEMV per step
        return gemm + 4 * b * n * n * 4 / speed.bandwidth + k * (token_pass + 20 * speed.op)
    if label == "divprune":
        return gemm + 8 * b * n * n * 4 / speed.bandwidth + k * (20 * speed.op)
    if label == OFFICIAL_CDPRUNER:  # kernel passes, then a (step, B, N) contraction per step
        loop = b * n * k * k * 4 / speed.bandwidth + k * (15 * speed.op)
        return gemm + 8 * b * n * n * 4 / speed.bandwidth + loop
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
    if label == "divprune" and path == "rows":
        return 4 * tokens + 2 * DEFAULT_MAX_MATRIX_BYTES
    if label in ("divprune", "vispruner"):
        return 2 * tokens + 3 * square
    if label == OFFICIAL_CDPRUNER:  # similarity, kernel and a temporary; the Cholesky buffer
        return 2 * tokens + 3 * square + b * k * n * 4
    return 4 * tokens + b * k * n * 4


def prefill_estimate(b: int, n: int, hidden: int, intermediate: int, speed: Speed) -> float:
    """Rough seconds of one decoder layer's forward on ``(b, n, hidden)`` (projections and MLP,
    and the causal attention's two products)."""
    flops = 2 * b * n * (4 * hidden * hidden + 3 * hidden * intermediate) + 2 * b * n * n * hidden
    return flops / speed.flops


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


def prefill_script():
    """``benchmarks/prefill.py`` as a module: its random-weight Llama decoder builders."""
    name = "prefill_benchmark"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("prefill.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up
        spec.loader.exec_module(module)
    return sys.modules[name]


def prefill_layer(grid: str, device: str, dtype: torch.dtype) -> tuple[torch.nn.Module, object]:
    """A one-layer LLaVA-1.5-7B-shaped decoder (``prefill.py``'s: transformers'
    ``LlamaForCausalLM`` from a config, random weights, one ``LlamaDecoderLayer``; a
    toy-sized one for the quick grids) in ``dtype`` on ``device``, and its shape."""
    prefill = prefill_script()
    shape = prefill.tiny_shape(1) if grid in ("quick", "gpu-quick") else prefill.llava_7b_shape(1)
    return prefill.random_decoder(shape, 1, device, dtype), shape


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
    backend: str = ""  # what ran the greedy steps (native, triton, torch) for greedy methods
    median_s: float | None = None
    iqr_s: float | None = None
    runs: int = 0
    x_gemm: float | None = None
    peak_bytes: int | None = None
    estimate_s: float | None = None
    skipped: str | None = None
    same_as_gram: bool | None = None
    prefill_s: float | None = None  # the cell's 7B-shaped prefill (32 x one layer), same batch
    prefill_share: float | None = None  # median_s / prefill_s
    prefill_note: str | None = None  # why the cell has no prefill time


def measure_prefill(
    b: int, n: int, layer: tuple, args: argparse.Namespace, speed: Speed
) -> tuple[float | None, str | None]:
    """Seconds of a full-depth prefill of ``b`` prompts of ``n`` visual + 64 text tokens:
    :data:`PREFILL_LAYERS` x one decoder layer's forward, timed; or ``None`` and why not."""
    decoder, shape = layer
    length = n + PREFILL_TEXT
    estimate_s = prefill_estimate(b, length, shape.hidden_size, shape.intermediate_size, speed)
    long_call = estimate_s > 5 * args.min_run_time
    if (2 * estimate_s if long_call else args.min_run_time + 2 * estimate_s) > args.cell_budget:
        return None, f"prefill estimated {estimate_s:.3g} s per layer, over --cell-budget"
    generator = torch.Generator().manual_seed(length + b)
    embeds = torch.randn(b, length, shape.hidden_size, generator=generator)
    embeds = embeds.to(device=args.device, dtype=DTYPES[args.dtype])
    run_layer = prefill_script().prefill_fn(decoder, embeds)
    try:
        layer_s = median_and_iqr(run_layer, args.threads, args.min_run_time, estimate_s)[0]
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        return None, "prefill layer out of memory"
    return PREFILL_LAYERS * layer_s, None


def measure_cell(
    cell: tuple,
    methods: list[Method],
    args: argparse.Namespace,
    speed: Speed,
    memory_limit: float,
    layer: tuple | None = None,
) -> list[Row]:
    b, n, d, k = cell
    device = args.device
    dtype = DTYPES[args.dtype]
    generator = torch.Generator().manual_seed(n * 7 + d + b)
    tokens = torch.randn(b, n, d, generator=generator).to(device=device, dtype=dtype)
    text = torch.randn(b, TEXT_ROWS, d, generator=generator).to(device=device, dtype=dtype)
    prefill_s, prefill_note = measure_prefill(b, n, layer, args, speed) if layer else (None, None)
    if prefill_note:
        print(f"{cell} prefill: skipped ({prefill_note})", file=sys.stderr)
    elif prefill_s:
        print(
            f"{cell} prefill ({PREFILL_LAYERS} layers): {1000 * prefill_s:.1f} ms", file=sys.stderr
        )
    rows = []
    gemm_s = None
    selections: dict[str, torch.Tensor] = {}
    for method in [Method("gemm", "")] + methods:
        path = "" if method.label == "gemm" else path_of(method, tokens)
        row = Row(b, n, d, k, method.label, path, prefill_s=prefill_s, prefill_note=prefill_note)
        row.backend = "" if method.label == "gemm" else backend_of(method, tokens, path)
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

        try:
            row.median_s, row.iqr_s, row.runs = median_and_iqr(
                fn, args.threads, args.min_run_time, row.estimate_s
            )
            out = None
            if args.memory:
                row.peak_bytes, out = peak_bytes(fn, device)
            elif method.label.startswith("resprune"):
                out = fn()
        except torch.OutOfMemoryError:  # recorded, so one cell cannot end a GPU run
            torch.cuda.empty_cache()
            row.median_s = row.iqr_s = row.peak_bytes = None
            row.skipped = "out of memory"
            print(f"{cell} {method.label}: out of memory", file=sys.stderr)
            rows.append(row)
            continue
        if method.label.startswith("resprune"):
            selections[method.label] = out.indices.cpu()
        if method.label == "gemm":
            gemm_s = row.median_s
        elif gemm_s:
            row.x_gemm = row.median_s / gemm_s
        if prefill_s:
            row.prefill_share = row.median_s / prefill_s
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
    if grid == "gpu-quick":
        return [(cell, GPU_METHODS) for cell in GPU_QUICK_CELLS]
    if grid == "gpu":
        return [
            ((b, n, 3584 if n == 10000 else 4096, prunekit.num_kept(n, GPU_RATIO)), GPU_METHODS)
            for b in GPU_B
            for n in GPU_N
        ]
    if grid == "issue":
        methods = ["resprune", "cdpruner", "cdpruner[official]", "divprune"]
        cells = [(cell, methods) for cell in ISSUE_CELLS]
        return cells + [(ISSUE_LARGE, ["resprune", "resprune[gram]", "cdpruner", "divprune"])]
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
    layer = None
    if args.prefill_share:
        layer = prefill_layer(args.grid, args.device, DTYPES[args.dtype])
        shape = layer[1]
        args.prefill_layer = {
            "hidden_size": shape.hidden_size,
            "intermediate_size": shape.intermediate_size,
            "num_heads": shape.num_heads,
        }
    rows: list[Row] = []
    for cell, labels in grid_cells(args.grid):
        chosen = labels if labels is not None else list(available)
        if args.methods:
            chosen = [label for label in chosen if label in args.methods]
        methods = [available[x] for x in chosen]
        rows += measure_cell(cell, methods, args, speed, memory_limit, layer)
    return rows


def output_stem(out: Path, device: str, grid: str, dtype: str) -> Path:
    """``selection_<device>`` (float32, the CPU grids), ``selection_<device>_<dtype>`` for
    the GPU grids and any other dtype, so float32 and bfloat16 runs do not overwrite each other."""
    stem = f"selection_{device.split(':')[0]}"
    if grid.startswith("gpu") or dtype != "float32":
        stem += f"_{dtype}"
    return out / stem


# --------------------------------------------------------------------------- report


def markdown(rows: list[Row], info: dict[str, object], settings: dict[str, object]) -> str:
    where = f"{info['cpu_cores']}-core CPU ({info['cpu']})"
    if "gpu" in info:
        where = f"{info['gpu']} ({where} host)"
    lines = [
        "# Selection time against the Gram GEMM floor",
        "",
        f"Machine: {where}, torch {info['torch']}, tokens and text in {settings['dtype']}, "
        f"{settings['threads']} thread(s). "
        f"Grid `{settings['grid']}`, `min_run_time` {settings['min_run_time_s']} s.",
        f"Produced by `{settings['command']}`.",
        "",
        "Time: median of `torch.utils.benchmark` blocks of the whole `pruner.prune(...)` "
        "call (validation, relevance, selection, result) on random tokens (B, N, d), "
        f"{TEXT_ROWS} text rows, synthesized signals. `x GEMM`: time / one "
        "`torch.bmm(X, X^T)` of the same tokens, timed in the same process. `path`: the "
        "greedy residual path (`gram`: one N x N GEMM; `rows`: no N x N matrix, Gram rows "
        "computed as needed) with, in brackets, the backend that ran its steps (`native`: "
        "the compiled CPU kernel; `triton`: one kernel launch on CUDA; `torch`: the PyTorch "
        "loop), or DivPrune's (`matrix`: the N x N distances; `rows`: one distance "
        "row per step). `cdpruner[official]`: the official CDPruner code's selection "
        "transcribed to torch (N x N kernel, batch-wide min-max). Peak: the most memory "
        "torch allocated during one call beyond its inputs (CPU: torch.profiler allocation "
        "events; CUDA: max_memory_allocated).",
        "",
        "| B | N | d | K | method | path | median ms | IQR ms | x GEMM | peak MiB "
        "| prefill ms | % prefill | note |",
        "|" + "---|" * 13,
    ]
    layer = settings.get("prefill_layer")
    if layer:
        lines[-3:-3] = [
            "",
            f"`prefill ms`: a LLaVA-1.5-7B-shaped prefill of the same batch (B prompts of "
            f"N + {PREFILL_TEXT} tokens), {PREFILL_LAYERS} x the timed forward of one "
            f"random-weight Llama decoder layer (hidden {layer['hidden_size']}, MLP "
            f"{layer['intermediate_size']}, {layer['num_heads']} heads, SDPA) in "
            f"{settings['dtype']}; `% prefill`: time / that prefill.",
        ]
    for r in rows:

        def ms(value: float | None) -> str:
            return "" if value is None else f"{1000 * value:.2f}"

        note = r.skipped or ""
        if r.same_as_gram is not None:
            note = "same tokens as the gram path" if r.same_as_gram else "DIFFERS from gram path"
        if r.method == "gemm" and r.prefill_note:
            note = "; ".join(filter(None, [note, r.prefill_note]))
        lines.append(
            f"| {r.batch} | {r.tokens} | {r.dim} | {r.kept} | "
            f"{'gemm (floor)' if r.method == 'gemm' else r.method} | "
            f"{r.path}{f' ({r.backend})' if r.backend else ''} | "
            f"{ms(r.median_s)} | {ms(r.iqr_s)} | "
            f"{'' if r.x_gemm is None else f'{r.x_gemm:.2f}'} | "
            f"{'' if r.peak_bytes is None else f'{r.peak_bytes / 2**20:.1f}'} | "
            f"{ms(r.prefill_s)} | "
            f"{'' if r.prefill_share is None else f'{100 * r.prefill_share:.2f}'} | {note} |"
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
    parser.add_argument(
        "--grid", choices=("issue", "full", "quick", "gpu", "gpu-quick"), default="issue"
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    parser.add_argument(
        "--dtype",
        choices=tuple(DTYPES),
        default="float32",
        help="dtype of the tokens and text (the pruners select in float32 or wider)",
    )
    parser.add_argument(
        "--prefill-share",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=f"time a 7B-shaped prefill per cell ({PREFILL_LAYERS} x one decoder layer) "
        "and give each time's share of it (default: on for cuda, off for cpu)",
    )
    parser.add_argument("--methods", nargs="+", default=None, help="only these method labels")
    parser.add_argument(
        "--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads"
    )
    parser.add_argument(
        "--min-run-time",
        type=float,
        default=None,
        help="seconds per timed measurement (default: 1, --grid quick / gpu-quick: 0.01)",
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
        args.min_run_time = 0.01 if args.grid in ("quick", "gpu-quick") else 1.0
    if args.prefill_share is None:
        args.prefill_share = args.device.startswith("cuda")
    if args.memory_limit is None:
        if args.device.startswith("cuda"):
            total = torch.cuda.get_device_properties(torch.device(args.device)).total_memory
        else:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        args.memory_limit = total / 2 / 2**30
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    command = reproduce_command("benchmarks/selection.py", sys.argv[1:] if argv is None else argv)
    start = time.perf_counter()
    rows = run(args)
    settings = {
        "command": command,
        "grid": args.grid,
        "dtype": args.dtype,
        "prefill_share": args.prefill_share,
        "prefill_layer": getattr(args, "prefill_layer", None),
        "prefill_layers": PREFILL_LAYERS,
        "prefill_text_tokens": PREFILL_TEXT,
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
    stem = output_stem(out, args.device, args.grid, args.dtype)
    payload = {"machine": info, "settings": settings, "rows": [asdict(r) for r in rows]}
    stem.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
    stem.with_suffix(".md").write_text(text)
    plot(rows, stem.with_suffix(".png"))
    print(f"wrote {stem}.json, .md, .png", file=sys.stderr)


if __name__ == "__main__":
    main()
