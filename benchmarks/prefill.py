"""Prefill speed-up from pruning visual tokens, end to end, against the theoretical line.

One prefill is one forward pass of the language model over the prompt's input
embeddings (``use_cache=True``, logits of the last position only, as ``generate``
does). Measured for the full prompt (``N`` visual + ``T`` other tokens) and for the
prompt pruned to ``K`` visual tokens; the pruned time is charged with the whole
selection: ``pruner.prune(...)`` on the ``N`` visual tokens plus the gather of the
kept ones. The theoretical speed-up is ``(N + T) / (K + T)``, the one a prefill
whose time is proportional to its tokens reaches
(:attr:`prunekit.accounting.Savings.theoretical_speedup`); the target is a measured
speed-up of at least 0.9 of it.

Models (``--model``):

* ``llava-7b``: a decoder shaped like LLaVA-1.5-7B's language model (Llama, hidden
  4096, 32 heads, MLP 11008, SDPA) with random weights and ``--layers`` layers (2):
  only the time per layer matters. The 32-layer prefill is estimated as 32 x the
  measured time per layer (the forward's time / its layers, so the fixed costs of
  the forward such as the rotary tables and the final norm are charged per layer,
  against both runs alike). The embedding lookup and the last-token LM head are
  left out of the estimate: the head is ~0.003 % of the prefill's FLOPs (the
  report gives the exact share). Visual tokens (``N = 576``, the projector output
  of a 336 px image), the ``T`` text tokens and the pruner's text embeddings (the
  ``T`` text tokens themselves, an upper bound on a prompt's nouns) are random.
* ``minillava``: MiniLLaVA (:mod:`prunekit.models.minillava`: DINOv2-S, LLaVA's
  projector, SmolLM2-135M, 30 layers, all measured): the real projected features
  of a real photo (256 visual tokens at 224 px), the real chat prompt around them,
  pruned to 57 tokens (the same 22 % as 128 of 576) and others. Its selection time
  also includes what ``prunekit.attach`` does per prompt for text relevance:
  extracting the prompt's nouns and embedding them. Uses the trained projector
  when ``prunekit/models/assets/minillava_projector.safetensors`` exists, else a
  random one (the timing does not depend on it).

Outputs (``--out DIR``): ``prefill_<device>.json`` (every number),
``prefill_<device>.md`` (tables naming the machine) and ``prefill_<device>.png``
(speed-up against K, measured points and the theoretical line). Timing uses
``torch.utils.benchmark.Timer.blocked_autorange`` (median of the blocks).

Usage::

    python benchmarks/prefill.py --out benchmarks/results        # full run, CPU
    python benchmarks/prefill.py --device cuda --out benchmarks/results
    python benchmarks/prefill.py --quick --out /tmp/prefill       # tiny sizes, seconds

The full CPU run takes about 5 minutes on an idle 2-core CPU (under 10): about 40 s
to build the models, then about 65 timed measurements of at least ``--min-run-time``
(3 s) each (a warm-up and at least one more forward where a forward is longer).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.utils import benchmark

import prunekit
from prunekit import accounting
from prunekit.experiments.records import machine_record, reproduce_command

MODELS = ("llava-7b", "minillava")
OPTIONAL_PRUNERS = ("divprune", "cdpruner", "random")  # from prunekit-baselines, when installed
TEXTS_7B = (32, 64)
BUDGETS_7B = (64, 128, 192)
VISUAL_7B = 576
BUDGETS_MINILLAVA = (28, 57, 85)  # 11 %, 22 %, 33 % of 256, as 64, 128, 192 of 576
QUESTIONS = (
    "What color is the star?",
    "Describe the person in this photo, what they are wearing and holding, and "
    "everything that can be seen in the background behind them.",
)


@dataclass
class Setup:
    """One prompt to prefill: the model, the embeddings around the image, and the pruner's text."""

    model: str
    decoder: torch.nn.Module  # called with inputs_embeds=, use_cache=True, logits_to_keep=1
    shape: accounting.DecoderShape  # the full-depth decoder, for the accounting and the estimate
    layers_measured: int
    prefix: torch.Tensor  # (1, T1, d) embeddings before the image
    visual: torch.Tensor  # (1, N, d) visual tokens
    suffix: torch.Tensor  # (1, T2, d) embeddings after the image
    relevance_text: Callable[[], torch.Tensor | None]  # the pruner's text_embeds, computed per call

    @property
    def text_tokens(self) -> int:
        return self.prefix.shape[1] + self.suffix.shape[1]

    @property
    def visual_tokens(self) -> int:
        return self.visual.shape[1]


@dataclass
class Row:
    """One model / text length / budget / pruner."""

    model: str
    pruner: str
    visual_tokens: int
    text_tokens: int
    kept_tokens: int
    layers_measured: int
    layers_total: int
    full_ms_per_layer: float
    pruned_ms_per_layer: float
    selection_ms: float
    full_prefill_ms: float  # layers_total x full_ms_per_layer
    pruned_prefill_ms: float  # layers_total x pruned_ms_per_layer + selection_ms
    measured_speedup: float
    theoretical_speedup: float
    ratio: float  # measured / theoretical
    flops_speedup: float  # analytic, full-depth decoder
    kv_cache_mib_full: float
    kv_cache_mib_pruned: float


# --------------------------------------------------------------------------- models


def llava_7b_shape(layers: int, vocab_size: int = 32000) -> accounting.DecoderShape:
    return accounting.DecoderShape(
        hidden_size=4096,
        num_layers=layers,
        num_heads=32,
        intermediate_size=11008,
        vocab_size=vocab_size,
    )


def tiny_shape(layers: int) -> accounting.DecoderShape:
    """``--quick``: a toy decoder, for a smoke test of the script."""
    return accounting.DecoderShape(
        hidden_size=64, num_layers=layers, num_heads=4, intermediate_size=128, vocab_size=128
    )


def random_decoder(
    shape: accounting.DecoderShape, layers: int, device: str, dtype: torch.dtype
) -> torch.nn.Module:
    """A random-weight ``LlamaForCausalLM`` of ``shape`` with ``layers`` layers and a small
    vocabulary (the embedding table is never used, the head runs on one position)."""
    import transformers

    config = transformers.LlamaConfig(
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_kv_heads,
        num_hidden_layers=layers,
        vocab_size=256,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
    )
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(device):
        model = transformers.LlamaForCausalLM(config)
    return model.to(dtype).eval().requires_grad_(False)


def synthetic_setups(
    shape: accounting.DecoderShape,
    layers: int,
    visual: int,
    texts: list[int],
    device: str,
    dtype: torch.dtype,
    name: str,
) -> list[Setup]:
    decoder = random_decoder(shape, layers, device, dtype)
    gen = torch.Generator().manual_seed(0)

    def randn(*size: int) -> torch.Tensor:
        return torch.randn(*size, generator=gen).to(device=device, dtype=dtype)

    setups = []
    image = randn(1, visual, shape.hidden_size)
    for t in texts:
        text = randn(1, t, shape.hidden_size) * 0.02  # the scale of the random embedding table
        setups.append(
            Setup(
                model=name,
                decoder=decoder,
                shape=shape,
                layers_measured=layers,
                prefix=text[:, :0],
                visual=image,
                suffix=text,
                relevance_text=lambda text=text: text,
            )
        )
    return setups


def minillava_setups(questions: list[str], device: str, dtype: torch.dtype) -> list[Setup]:
    from prunekit.demo import sample_image
    from prunekit.models import minillava
    from prunekit.text.embed import embed_prompt_nouns

    if minillava.PROJECTOR_PATH.is_file():
        model, processor = minillava.load()
    else:
        print("MiniLLaVA: no trained projector yet, timing with a random one", file=sys.stderr)
        model, processor = minillava.build()
    model = model.to(device=device, dtype=dtype)
    shape = accounting.decoder_shape(model.config)
    embedding = model.get_input_embeddings()
    image = sample_image("astronaut")
    setups = []
    for question in questions:
        inputs = processor(images=[image], text=[minillava.chat_prompt(question)])
        ids = inputs["input_ids"][0].to(device)
        is_image = ids == minillava.IMAGE_TOKEN_ID
        first, n = int(is_image.nonzero()[0]), int(is_image.sum())
        with torch.no_grad():
            features = model.get_image_features(
                pixel_values=inputs["pixel_values"].to(device=device, dtype=dtype)
            ).pooler_output[0]  # one image: (n, d) (a list of images or a batch tensor)
            prefix = embedding(ids[None, :first])
            suffix = embedding(ids[None, first + n :])
        # what the VLM adapter gives the noun extractor: the prompt without its image tokens
        prompt = processor.tokenizer.decode(ids[~is_image].tolist(), skip_special_tokens=False)

        def nouns(prompt: str = prompt) -> torch.Tensor:
            embeds, _ = embed_prompt_nouns([prompt], processor.tokenizer, embedding)
            return embeds

        setups.append(
            Setup(
                model="MiniLLaVA",
                decoder=model,
                shape=shape,
                layers_measured=shape.num_layers,
                prefix=prefix,
                visual=features.reshape(1, n, -1),
                suffix=suffix,
                relevance_text=nouns,
            )
        )
    return setups


# --------------------------------------------------------------------------- timing


def median_seconds(fn: Callable[[], object], threads: int, min_run_time: float) -> float:
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads)
    return timer.blocked_autorange(min_run_time=min_run_time).median


def prefill_fn(decoder: torch.nn.Module, embeds: torch.Tensor) -> Callable[[], object]:
    def run() -> object:
        with torch.no_grad():
            return decoder(inputs_embeds=embeds, use_cache=True, logits_to_keep=1)

    return run


def selection_fn(setup: Setup, pruner: prunekit.TokenPruner, kept: int) -> Callable[[], object]:
    def run() -> torch.Tensor:
        with torch.no_grad():
            result = pruner.prune(setup.visual, budget=kept, text_embeds=setup.relevance_text())
            return result.gather(setup.visual)

    return run


def measure_setup(
    setup: Setup,
    budgets: list[int],
    pruners: list[str],
    threads: int,
    min_run_time: float,
    dtype: torch.dtype,
) -> list[Row]:
    full = torch.cat([setup.prefix, setup.visual, setup.suffix], dim=1)
    full_layer = median_seconds(prefill_fn(setup.decoder, full), threads, min_run_time)
    full_layer /= setup.layers_measured
    n_total = setup.shape.num_layers
    rows = []
    for kept in budgets:
        if not 1 <= kept <= setup.visual_tokens:
            raise ValueError(f"budget {kept} is outside [1, {setup.visual_tokens}]")
        # which K tokens are kept does not change the time: take evenly spaced ones
        index = torch.linspace(0, setup.visual_tokens - 1, kept).round().long()
        pruned = torch.cat([setup.prefix, setup.visual[:, index], setup.suffix], dim=1)
        pruned_layer = median_seconds(prefill_fn(setup.decoder, pruned), threads, min_run_time)
        pruned_layer /= setup.layers_measured
        cost = accounting.savings(
            setup.shape, setup.visual_tokens, kept, setup.text_tokens, dtype=dtype
        )
        for name in pruners:
            pruner = prunekit.create_pruner(name)
            selection = median_seconds(selection_fn(setup, pruner, kept), threads, min_run_time)
            full_ms = 1000 * n_total * full_layer
            pruned_ms = 1000 * (n_total * pruned_layer + selection)
            rows.append(
                Row(
                    model=setup.model,
                    pruner=name,
                    visual_tokens=setup.visual_tokens,
                    text_tokens=setup.text_tokens,
                    kept_tokens=kept,
                    layers_measured=setup.layers_measured,
                    layers_total=n_total,
                    full_ms_per_layer=1000 * full_layer,
                    pruned_ms_per_layer=1000 * pruned_layer,
                    selection_ms=1000 * selection,
                    full_prefill_ms=full_ms,
                    pruned_prefill_ms=pruned_ms,
                    measured_speedup=full_ms / pruned_ms,
                    theoretical_speedup=cost.theoretical_speedup,
                    ratio=full_ms / pruned_ms / cost.theoretical_speedup,
                    flops_speedup=cost.flops_speedup,
                    kv_cache_mib_full=cost.kv_cache_bytes_before / 2**20,
                    kv_cache_mib_pruned=cost.kv_cache_bytes_after / 2**20,
                )
            )
            print(
                f"{setup.model} T={setup.text_tokens} K={kept} {name}: "
                f"{rows[-1].measured_speedup:.2f}x measured, "
                f"{cost.theoretical_speedup:.2f}x theoretical",
                file=sys.stderr,
            )
    return rows


# --------------------------------------------------------------------------- report


def head_share(shape: accounting.DecoderShape, tokens: int) -> float:
    """The last-token LM head's share of the prefill FLOPs (left out of the estimate)."""
    return accounting.head_flops(shape, tokens) / accounting.prefill_cost(shape, tokens).flops


def markdown(rows: list[Row], info: dict[str, object], settings: dict[str, object]) -> str:
    where = f"{info['cpu_cores']}-core CPU ({info['cpu']})"
    if "gpu" in info:
        where = f"{info['gpu']} ({where} host)"
    lines = [
        "# Prefill speed-up from visual-token pruning",
        "",
        f"Machine: {where}, torch {info['torch']}, {settings['dtype']}, "
        f"{settings['threads']} thread(s).",
        f"Produced by `{settings['command']}`.",
        "",
        "`full` / `pruned`: measured time of one decoder layer in a prefill of the whole prompt "
        "/ of the prompt with K visual tokens kept (forward time / layers measured). "
        "`selection`: the pruner's `prune(...)` on the N visual tokens plus the gather. "
        "`prefill`: the whole decoder (layers x time per layer), the pruned one with the "
        "selection added. `measured` = full prefill / (pruned prefill + selection); "
        "`theoretical` = (N + T) / (K + T); `ratio` = measured / theoretical (target >= 0.9). "
        "`FLOPs` = the analytic FLOP ratio (`prunekit.accounting`), whose attention term "
        "grows with the square of the prompt.",
    ]
    for model in dict.fromkeys(r.model for r in rows):
        part = [r for r in rows if r.model == model]
        first = part[0]
        lines += ["", f"## {model}", ""]
        if first.layers_measured != first.layers_total:
            lines.append(
                f"{first.layers_measured} layers measured, {first.layers_total}-layer prefill "
                "estimated from them; the embedding lookup and the LM head are left out."
            )
            if model in settings["head_share"]:
                lines[-1] += (
                    " The last-token LM head (vocabulary 32000) is "
                    f"{100 * settings['head_share'][model]:.4f} % of the prefill FLOPs."
                )
        else:
            lines.append(f"All {first.layers_total} layers measured, LM head on the last token.")
        lines += [
            "",
            "| N | T | K | pruner | full ms/layer | pruned ms/layer | selection ms | "
            "full prefill ms | pruned prefill + selection ms | measured | theoretical | ratio "
            "| FLOPs | KV cache MiB |",
            "|" + "---|" * 14,
        ]
        for r in part:
            lines.append(
                f"| {r.visual_tokens} | {r.text_tokens} | {r.kept_tokens} | {r.pruner} | "
                f"{r.full_ms_per_layer:.2f} | {r.pruned_ms_per_layer:.2f} | {r.selection_ms:.2f} | "
                f"{r.full_prefill_ms:.1f} | {r.pruned_prefill_ms:.1f} | "
                f"{r.measured_speedup:.2f}x | {r.theoretical_speedup:.2f}x | {r.ratio:.2f} | "
                f"{r.flops_speedup:.2f}x | {r.kv_cache_mib_full:.1f} -> "
                f"{r.kv_cache_mib_pruned:.1f} |"
            )
    return "\n".join(lines) + "\n"


def plot(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r.model for r in rows))
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4), squeeze=False)
    markers = "osD^vP*X"
    for ax, model in zip(axes[0], models):
        part = [r for r in rows if r.model == model]
        pruners = list(dict.fromkeys(r.pruner for r in part))
        for color, t in enumerate(dict.fromkeys(r.text_tokens for r in part)):
            sub = [r for r in part if r.text_tokens == t]
            n = sub[0].visual_tokens
            ks = torch.linspace(min(r.kept_tokens for r in sub), n, 100)
            ax.plot(ks, (n + t) / (ks + t), color=f"C{color}", label=f"theoretical, T={t}")
            for marker, name in zip(markers, pruners):
                pts = [r for r in sub if r.pruner == name]
                ax.plot(
                    [r.kept_tokens for r in pts],
                    [r.measured_speedup for r in pts],
                    marker,
                    color=f"C{color}",
                    label=f"measured {name}, T={t}",
                )
        ax.set_title(f"{model}: N={part[0].visual_tokens} visual tokens")
        ax.set_xlabel("K (visual tokens kept)")
        ax.set_ylabel("prefill speed-up (selection included)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------- main


def available_pruners(requested: list[str] | None) -> list[str]:
    registered = set(prunekit.list_pruners())
    if requested is not None:
        unknown = [name for name in requested if name not in registered]
        if unknown:
            raise SystemExit(f"--pruners: not registered: {unknown} (see `prunekit list`)")
        return requested
    return ["resprune"] + [name for name in OPTIONAL_PRUNERS if name in registered]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Full run (CPU, about 5 minutes on 2 cores): "
        "python benchmarks/prefill.py --out benchmarks/results",
    )
    parser.add_argument(
        "--model",
        nargs="+",
        choices=MODELS,
        default=None,
        help="models to measure (default: both; --quick: llava-7b)",
    )
    parser.add_argument(
        "--texts", nargs="+", type=int, default=list(TEXTS_7B), help="llava-7b: text tokens T"
    )
    parser.add_argument(
        "--budgets",
        nargs="+",
        type=int,
        default=list(BUDGETS_7B),
        help="llava-7b: visual tokens kept K",
    )
    parser.add_argument("--layers", type=int, default=2, help="llava-7b: layers measured")
    parser.add_argument("--minillava-budgets", nargs="+", type=int, default=list(BUDGETS_MINILLAVA))
    parser.add_argument(
        "--pruners",
        nargs="+",
        default=None,
        help="registered pruners (default: resprune, and divprune, cdpruner, "
        "random when prunekit-baselines is installed)",
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    parser.add_argument(
        "--dtype",
        choices=("float32", "bfloat16", "float16"),
        default=None,
        help="default: float32 on CPU, bfloat16 on CUDA",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=torch.get_num_threads(),
        help="torch intra-op threads (default: torch's)",
    )
    parser.add_argument(
        "--min-run-time",
        type=float,
        default=3.0,
        help="seconds per timed measurement (blocked_autorange)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="toy sizes and short timings: a smoke test, not a measurement",
    )
    parser.add_argument(
        "--out",
        default="benchmarks/results",
        help="folder for prefill_<device>.json / .md / .png ('-': print only)",
    )
    args = parser.parse_args(argv)
    if args.model is None:
        args.model = ["llava-7b"] if args.quick else list(MODELS)
    if args.dtype is None:
        args.dtype = "float32" if args.device == "cpu" else "bfloat16"
    return args


def run(args: argparse.Namespace, command: str) -> tuple[list[Row], dict[str, object]]:
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    pruners = available_pruners(args.pruners)
    rows: list[Row] = []
    head = {}
    for model in args.model:
        if model == "llava-7b" and args.quick:
            shape, visual, texts, budgets = tiny_shape(4), 36, [4], [8, 16]
            setups = synthetic_setups(shape, 2, visual, texts, args.device, dtype, "toy decoder")
        elif model == "llava-7b":
            shape = llava_7b_shape(32)
            head["LLaVA-1.5-7B shape"] = head_share(shape, VISUAL_7B + min(args.texts))
            setups = synthetic_setups(
                shape,
                args.layers,
                VISUAL_7B,
                args.texts,
                args.device,
                dtype,
                "LLaVA-1.5-7B shape",
            )
            budgets = args.budgets
        else:
            setups = minillava_setups(list(QUESTIONS), args.device, dtype)
            budgets = args.minillava_budgets
        min_run_time = 0.05 if args.quick else args.min_run_time
        for setup in setups:
            rows += measure_setup(setup, budgets, pruners, args.threads, min_run_time, dtype)
    settings = {
        "command": command,
        "dtype": args.dtype,
        "threads": args.threads,
        "min_run_time_s": args.min_run_time,
        "quick": args.quick,
        "pruners": pruners,
        "head_share": head,
    }
    return rows, settings


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    command = reproduce_command("benchmarks/prefill.py", sys.argv[1:] if argv is None else argv)
    rows, settings = run(args, command)
    info = machine_record(args.device)
    text = markdown(rows, info, settings)
    print(text)
    if args.out == "-":
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"prefill_{args.device.split(':')[0]}"
    payload = {"machine": info, "settings": settings, "rows": [asdict(r) for r in rows]}
    stem.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
    stem.with_suffix(".md").write_text(text)
    plot(rows, stem.with_suffix(".png"))
    print(f"wrote {stem}.json, .md, .png", file=sys.stderr)


if __name__ == "__main__":
    main()
