#!/usr/bin/env python
"""The quality benchmark: accuracy and loyalty against budget for every registered pruner.

Model: MiniLLaVA (:mod:`prunekit.models.minillava`: DINOv2-S + a trained projector +
SmolLM2-135M-Instruct, 256 visual tokens at 224 px), closed-answer greedy decoding.
Data: fixed subsets of the easy-VQA test split and of the shapes test split.
Budgets: 6.25 / 11.1 / 22.2 / 33.3 % of the 256 tokens (16 / 28 / 57 / 85 tokens).

Every run goes through ``prunekit ablate`` (:func:`prunekit.experiments.sweep.ablate`):
the sweeps below are ordinary config overrides, each run writes its folder under
``--runs-dir`` (outside the repository by default), and a rerun of this command skips
the finished runs (an interrupted benchmark resumes). The report combines them:

* every registered pruner at every budget on both sets (pruners defined for one
  pruning point only run there: VisionZip and VisPruner before the projector, FastV
  and DART inside the LLM after layer 2, their papers' settings);
* the ResPrune ablation grid of the method page (text x greedy residual = ResPrune,
  none x greedy residual, text x top-k), ResPrune with the embedding-mean centre, and
  a sweep of ``alpha`` at 22.2 %;
* "all tokens": the unpruned model (budget 1.0: the pruner keeps everything);
* a relevance diagnostic on shapes scenes: ROC AUC of the text relevance of the
  projected tokens, plain cosine and centred on the LLM's mean embedding row, for
  object tokens vs background and for the asked-about object vs the other objects.

Every configuration is also compared with a reference configuration (``--reference``,
default ResPrune) at the same budget on the same questions, question by question
(:func:`prunekit.experiments.summary.paired_table`, the comparison of ``prunekit
ablate``'s summary): the mean per-question difference of accuracy, loyalty, KL divergence
from the unpruned answer distribution and log-probability of the unpruned answer, with a
paired bootstrap 95 % interval and McNemar's test for accuracy.

Cost: the answer distributions are read from the answering pass itself
(``--answer-scoring first_token``, :func:`prunekit.experiments.bench.first_token_distribution`:
one prefill per question and run; both data sets' answers have distinct first tokens
with SmolLM2's tokenizer), and the vision tower + projector run once per distinct image
for the whole benchmark (``bench.share_image_features``, not for the runs that need the
tower's attention or prune before the projector), so the ms/sample column of those runs
leaves the encoder out (``benchmarks/prefill.py`` measures speed).

Outputs in ``--out``: ``quality.md`` (tables, sample counts, 95 % Wilson intervals, the
paired differences against the reference), ``quality.csv`` (one row per run),
``quality_paired.md`` / ``quality_paired.csv`` (every paired difference) and
``quality.png`` (accuracy and loyalty against tokens kept).

Examples::

    python benchmarks/quality.py --out benchmarks/results           # the committed results
    python benchmarks/quality.py --quick --out /tmp/quality         # tiny model, seconds
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BUDGETS = (0.0625, 0.111, 0.222, 0.333)
ALPHAS = (0.0, 0.5, 1.0, 2.0, 4.0)
ALPHA_BUDGET = 0.222
#: pruners defined for one pruning point only, and the adapter option that selects it
POINT_OPTIONS = {
    "visionzip": ["adapter.before_projector=true"],
    "vispruner": ["adapter.before_projector=true"],
    "fastv": ["adapter.llm_layer={llm_layer}"],
    "dart": ["adapter.llm_layer={llm_layer}"],
}


#: registered pruners that wrap or compose other ones: no method of their own to rank
WRAPPERS = ("composed", "score_mass")


@dataclass(frozen=True)
class Sweep:
    """One ``prunekit ablate`` command of the benchmark (``data`` overrides added per set)."""

    group: str  # "pruners", "ablation", "alpha", "full"
    overrides: tuple[str, ...]


def plan(args: argparse.Namespace, pruners: list[str]) -> list[Sweep]:
    """The sweeps of the benchmark."""
    budgets = "budget=" + ",".join(str(b) for b in args.budgets)
    sweeps = [Sweep("full", ("pruner=random", "budget=1.0"))]
    plain = [p for p in pruners if p not in POINT_OPTIONS and p not in WRAPPERS]
    sweeps.append(Sweep("pruners", ("pruner=" + ",".join(plain), budgets)))
    for name in pruners:
        if name in POINT_OPTIONS:
            options = [o.format(llm_layer=args.llm_layer) for o in POINT_OPTIONS[name]]
            sweeps.append(Sweep("pruners", (f"pruner={name}", *options, budgets)))
    if "resprune" in pruners:
        sweeps += [
            Sweep(
                "ablation",
                ("pruner=composed", "relevance=none", "selection=greedy_residual", budgets),
            ),
            Sweep("ablation", ("pruner=composed", "relevance=text", "selection=topk", budgets)),
            Sweep("ablation", ("pruner=resprune", "pruner.center=embedding_mean", budgets)),
            Sweep(
                "alpha",
                (
                    "pruner=resprune",
                    "pruner.alpha=" + ",".join(str(a) for a in args.alphas if a != 1.0),
                    f"budget={args.alpha_budget}",
                ),
            ),
        ]
    return sweeps


def data_overrides(args: argparse.Namespace) -> dict[str, list[str]]:
    """Per data set, the overrides selecting its fixed subset."""
    if args.quick:
        return {"tiny": ["data=tiny", f"data.n_samples={args.easyvqa_samples}"]}
    return {
        "easyvqa": ["data=easyvqa", f"data.n_samples={args.easyvqa_samples}"],
        "shapes": ["data=shapes", f"data.n_images={args.shapes_images}"],
    }


def common_overrides(args: argparse.Namespace) -> list[str]:
    model = "model=tiny" if args.quick else "model=minillava"
    return [
        model,
        f"bench.batch_size={args.batch_size}",
        f"bench.progress={str(args.progress).lower()}",
        # one vision-encoder pass per image for the whole sweep: the ms/sample of runs
        # that use it leave the encoder out (benchmarks/prefill.py measures speed)
        "bench.share_image_features=true",
        f"bench.answer_scoring={args.answer_scoring}",
    ]


# --------------------------------------------------------------------------- labels


def label(result: dict[str, Any]) -> str:
    """A readable name of a run's configuration (without its budget and data set)."""
    config = result["config"]
    pruner = dict(config["pruner"])
    name = pruner.pop("name")
    if name == "composed":
        return f"{config['relevance']['name']} x {config['selection']['name']}"
    extra = []
    if name == "resprune":
        if pruner.get("alpha", 1.0) != 1.0:
            extra.append(f"alpha={pruner['alpha']:g}")
        if pruner.get("center") is not None:
            extra.append(f"center={pruner['center']}")
    adapter = config["adapter"]
    if adapter.get("before_projector"):
        extra.append("before projector")
    if adapter.get("llm_layer") is not None:
        extra.append(f"after LLM layer {adapter['llm_layer']}")
    return name + (f" ({', '.join(extra)})" if extra else "")


# --------------------------------------------------------------------------- report


def _ci(pair: list[float]) -> str:
    return f"[{pair[0]:.2f}, {pair[1]:.2f}]"


def _cell(m: dict[str, Any]) -> str:
    loyalty = f" / {m['loyalty']:.2f}" if "loyalty" in m else ""
    return f"{m['accuracy']:.3f}{loyalty}"


def pivot(rows: list[dict[str, Any]], dataset: str, labels: list[str], budgets: list[float]) -> str:
    """Accuracy / loyalty, one row per configuration, one column per budget."""
    full = [r for r in rows if r["dataset"] == dataset and r["group"] == "full"]
    kept = {}
    for r in rows:
        if r["dataset"] == dataset and r["budget"] in budgets and "tokens_kept" in r["metrics"]:
            kept.setdefault(r["budget"], r["metrics"]["tokens_kept"])
    header = ["configuration"] + [
        f"{100 * b:.2f} % ({kept.get(b, math.nan):.0f} tok.)" for b in budgets
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    if full:
        m = full[0]["metrics"]
        lines.append(
            f"| all tokens ({m['tokens_in']:.0f}) | "
            + " | ".join([f"{m['accuracy']:.3f}"] * len(budgets))
            + " |"
        )
    for name in labels:
        cells = []
        for b in budgets:
            hit = [
                r
                for r in rows
                if r["dataset"] == dataset and r["label"] == name and r["budget"] == b
            ]
            cells.append(_cell(hit[0]["metrics"]) if hit else "")
        if any(cells):
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def long_table(rows: list[dict[str, Any]]) -> str:
    """Every run: n, accuracy and loyalty with their 95 % Wilson intervals, tokens, time."""
    header = [
        "data",
        "configuration",
        "budget",
        "kept",
        "n",
        "accuracy",
        "95 % CI",
        "loyalty",
        "95 % CI",
        "ms/sample",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        m = r["metrics"]
        lines.append(
            "| "
            + " | ".join(
                [
                    r["dataset"],
                    r["label"],
                    f"{r['budget']:g}",
                    f"{m.get('tokens_kept', math.nan):.1f}",
                    str(m["n"]),
                    f"{m['accuracy']:.3f}",
                    _ci(m["accuracy_ci95"]),
                    f"{m['loyalty']:.3f}" if "loyalty" in m else "",
                    _ci(m["loyalty_ci95"]) if "loyalty" in m else "",
                    f"{m['ms_per_sample']:.0f}",
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    fields = [
        "dataset", "group", "configuration", "budget", "tokens_kept", "tokens_in", "n",
        "accuracy", "accuracy_ci_low", "accuracy_ci_high", "loyalty", "loyalty_ci_low",
        "loyalty_ci_high", "ms_per_sample", "run",
    ]  # fmt: skip
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(fields)
        for r in rows:
            m = r["metrics"]
            loyalty = [m.get("loyalty"), *m.get("loyalty_ci95", [None, None])]
            writer.writerow(
                [r["dataset"], r["group"], r["label"], r["budget"], m.get("tokens_kept"),
                 m.get("tokens_in"), m["n"], m["accuracy"], *m["accuracy_ci95"], *loyalty,
                 m["ms_per_sample"], r["name"]]
            )  # fmt: skip


def plot(rows: list[dict[str, Any]], datasets: list[str], labels: list[str], path: Path) -> None:
    """Accuracy and loyalty against tokens kept, one panel per data set, 95 % intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = ["accuracy", "loyalty"]
    fig, axes = plt.subplots(
        len(metrics),
        len(datasets),
        figsize=(6.5 * len(datasets), 4.2 * len(metrics)),
        squeeze=False,
    )
    cmap = plt.get_cmap("tab20")
    for col, dataset in enumerate(datasets):
        full = [r for r in rows if r["dataset"] == dataset and r["group"] == "full"]
        for row, metric in enumerate(metrics):
            ax = axes[row][col]
            for i, name in enumerate(labels):
                pts = sorted(
                    (
                        r
                        for r in rows
                        if r["dataset"] == dataset and r["label"] == name and r["group"] != "full"
                    ),
                    key=lambda r: r["metrics"].get("tokens_kept", 0.0),
                )
                pts = [p for p in pts if metric in p["metrics"]]
                if len(pts) < 2:
                    continue
                xs = [p["metrics"]["tokens_kept"] for p in pts]
                ys = [p["metrics"][metric] for p in pts]
                lo = [y - p["metrics"][f"{metric}_ci95"][0] for y, p in zip(ys, pts)]
                hi = [p["metrics"][f"{metric}_ci95"][1] - y for y, p in zip(ys, pts)]
                style = "-" if name == "resprune" else "--" if " x " in name or "(" in name else "-"
                ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", ms=3.5, capsize=2, lw=2.2 if name == "resprune" else 1.1,
                            ls=style, color=cmap(i % 20), label=name)  # fmt: skip
            if full and metric == "accuracy":
                ax.axhline(
                    full[0]["metrics"]["accuracy"], color="k", ls=":", lw=1, label="all tokens"
                )
            ax.set_xscale("log", base=2)
            ax.set_xlabel("visual tokens kept (of 256)")
            ax.set_ylabel(metric)
            ax.set_title(f"{dataset}: {metric} (95 % Wilson intervals)")
            ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize="x-small", loc="lower right", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- paired differences


def paired_comparisons(rows: list[dict[str, Any]], datasets: list[str], reference: str) -> Any:
    """Every pruned run against ``reference`` at its budget, per data set, question by question
    (:func:`prunekit.experiments.summary.paired_table`); ``None`` without a ``reference`` run."""
    from prunekit.experiments.summary import PairedTable, paired_table

    pruned = [r for r in rows if r["group"] != "full"]
    if not any(r["label"] == reference for r in pruned):
        print(f"no {reference!r} run: no paired differences", file=sys.stderr)
        return None
    out = PairedTable(rows=[], refused=[])
    for d in datasets:
        runs = [r for r in pruned if r["dataset"] == d]
        if not any(r["label"] == reference for r in runs):
            continue
        table = paired_table(
            [r["result"] for r in runs],
            [r["records"] for r in runs],
            labels=[r["label"] for r in runs],
            baseline=reference,
        )
        for row in table.rows:
            row["data"] = d
        out.rows += table.rows
        out.refused += [f"{d}: {reason}" for reason in table.refused]
    return out


def _difference(row: dict[str, Any]) -> str:
    cell = f"{row['A - B']:+.3f} [{row['low']:+.3f}, {row['high']:+.3f}]"
    if row["McNemar p"] is not None:
        cell += f" p={row['McNemar p']:.2g}"
    return f"**{cell}**" if row["verdict"] != "level" else cell


def paired_section(
    paired: Any, dataset: str, reference: str, labels: list[str], budgets: list[float]
) -> list[str]:
    """Per metric, a table of configuration x budget: the paired difference to ``reference``."""
    rows = [r for r in paired.rows if r["data"] == dataset]
    if not rows:
        return []
    budgets = sorted({b for b in budgets if any(float(r["budget"]) == b for r in rows)})
    lines = [
        f"## {dataset}: paired differences against {reference}",
        "",
        f"Each cell: the configuration minus {reference} at the same budget, the mean per-question "
        "difference on the same questions with its paired bootstrap 95 % interval (and McNemar's "
        'exact p for right / wrong scores); **bold** where the interval excludes zero, the only place where "A '
        f'beats B" is claimed. Lower KL is better, higher is better for the others. Every '
        "difference, with the discordant counts, is in `quality_paired.md` / `quality_paired.csv`.",
        "",
    ]
    for metric in ("accuracy", "KL", "logprob_reference", "loyalty"):
        of_metric = [r for r in rows if r["metric"] == metric]
        if not of_metric:
            continue
        header = [f"{metric}: configuration"] + [f"{100 * b:.2f} %" for b in budgets]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for name in labels:
            cells = []
            for b in budgets:
                hit = [r for r in of_metric if r["A"] == name and float(r["budget"]) == b]
                cells.append(_difference(hit[0]) if hit else "")
            if any(cells):
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    refused = [r for r in paired.refused if r.startswith(f"{dataset}: ")]
    if refused:
        lines += ["Not compared:", *(f"- {r}" for r in refused), ""]
    return lines


# --------------------------------------------------------------------------- relevance AUC


def auc(positive: list[float], negative: list[float]) -> float:
    """ROC AUC as the Mann-Whitney statistic (ties count one half)."""
    import torch

    if not positive or not negative:
        return math.nan
    pos = torch.tensor(positive, dtype=torch.float64)
    neg = torch.tensor(negative, dtype=torch.float64)
    greater = (pos[:, None] > neg[None, :]).double().mean()
    ties = (pos[:, None] == neg[None, :]).double().mean()
    return float(greater + 0.5 * ties)


def relevance_auc(n_images: int) -> dict[str, dict[str, float]]:
    """Text relevance of MiniLLaVA's projected tokens on shapes test scenes, as ROC AUCs.

    For every colour / shape question about one object: tokens whose patch is mostly
    covered by an object vs background tokens ("object vs background"), and tokens of
    the asked-about object vs tokens of the other objects ("named vs other objects").
    Relevance = max cosine to the prompt's noun embeddings (the adapter's text), plain
    or centred on the mean row of the LLM's input-embedding table.
    """
    import torch

    from prunekit.data import shapes
    from prunekit.models import minillava
    from prunekit.strategies.relevance.text import text_relevance
    from prunekit.text.embed import embed_prompt_nouns

    model, processor = minillava.load()
    embeddings = model.get_input_embeddings()
    center = embeddings.weight.mean(dim=0)
    grid = 224 // minillava.PATCH_SIZE
    scores: dict[str, dict[str, list[float]]] = {
        kind: {"object": [], "background": [], "named": [], "other": []}
        for kind in ("plain", "centred")
    }
    for item in shapes.dataset("test", n_images):
        pixels = processor(
            images=[item.scene.image], text=[processor.chat_prompt("x")], return_tensors="pt"
        )
        with torch.no_grad():
            feats = model.get_image_features(pixel_values=pixels["pixel_values"])
        feats = getattr(feats, "pooler_output", feats)
        tokens = (
            (feats[0] if isinstance(feats, (list, tuple)) else feats)
            .reshape(1, -1, center.shape[0])
            .float()
        )
        cover = [
            torch.as_tensor(shapes.object_patches(o, grid)).reshape(-1) > 0.5
            for o in item.scene.objects
        ]
        any_object = torch.stack(cover).any(dim=0)
        for q in item.questions:
            if q.kind not in ("color", "shape") or len(q.target) != 1:
                continue
            text, mask = embed_prompt_nouns(
                [processor.chat_prompt(q.question)], processor.tokenizer, embeddings
            )
            if not mask.any():
                continue
            named = cover[q.target[0]]
            others = any_object & ~named
            for kind, c in (("plain", None), ("centred", center)):
                rel = text_relevance(tokens, text.float(), mask, center=c)[0]
                s = scores[kind]
                s["object"] += rel[any_object].tolist()
                s["background"] += rel[~any_object].tolist()
                s["named"] += rel[named].tolist()
                s["other"] += rel[others].tolist()
    return {
        kind: {
            "object vs background": auc(s["object"], s["background"]),
            "named vs other objects": auc(s["named"], s["other"]),
        }
        for kind, s in scores.items()
    }


# --------------------------------------------------------------------------- main


def machine() -> str:
    """The machine, as the report names it."""
    import os

    import torch

    from prunekit.experiments.records import cpu_name

    return f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"


def print_plan(args: argparse.Namespace, sweeps: list[Any], datasets: dict[str, list[str]]) -> None:
    """Print the ``prunekit ablate`` command of every sweep on every data set (``--plan``)."""
    for data in datasets.values():
        for sweep in sweeps:
            print("prunekit ablate " + " ".join([*common_overrides(args), *data, *sweep.overrides]))


def run_sweeps(
    args: argparse.Namespace,
    sweeps: list[Any],
    datasets: dict[str, list[str]],
    name_of: Any,
    started: float,
) -> list[dict[str, Any]] | None:
    """Run every sweep (``prunekit ablate``, finished runs skipped) on every data set; one
    row per run, its configuration named by ``name_of(result)``; ``None`` if a run did not
    finish. Shared by this benchmark and ``benchmarks/beyond.py``."""
    from prunekit.experiments.summary import read_records
    from prunekit.experiments.sweep import ablate

    rows: list[dict[str, Any]] = []
    for dataset, data in datasets.items():
        for sweep in sweeps:
            overrides = [*common_overrides(args), *data, *sweep.overrides]
            ablation = ablate(overrides, out=str(args.runs_dir), echo=lambda *a: None)
            if ablation.missing:
                print(f"unfinished runs: {[p.name for p in ablation.missing]}", file=sys.stderr)
                return None
            for result in ablation.results:
                rows.append(
                    {
                        "dataset": dataset,
                        "group": sweep.group,
                        "label": name_of(result),
                        "budget": float(result["config"]["budget"]),
                        "metrics": result["metrics"],
                        "name": result["name"],
                        "seconds": result.get("seconds", 0.0),
                        "result": result,
                        "records": read_records(ablation.sweep_dir / result["name"]),
                    }
                )
            print(
                f"[{time.time() - started:7.0f} s] {dataset}: {' '.join(sweep.overrides)}",
                flush=True,
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument(
        "--runs-dir", type=Path, default=Path.home() / ".cache/prunekit/quality-runs"
    )
    parser.add_argument("--easyvqa-samples", type=int, default=120, help="easy-VQA test questions")
    parser.add_argument(
        "--shapes-images", type=int, default=30, help="shapes test scenes (~4 questions each)"
    )
    parser.add_argument("--budgets", type=float, nargs="+", default=list(BUDGETS))
    parser.add_argument("--alphas", type=float, nargs="+", default=list(ALPHAS))
    parser.add_argument("--alpha-budget", type=float, default=ALPHA_BUDGET)
    parser.add_argument(
        "--pruners", nargs="+", default=None, help="default: every registered pruner"
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--auc-images", type=int, default=60, help="shapes scenes of the AUC diagnostic (0: skip)"
    )
    parser.add_argument(
        "--llm-layer", type=int, default=2, help="FastV / DART: prune after this LLM layer"
    )
    parser.add_argument(
        "--reference",
        default="resprune",
        help="configuration every other one is compared with, per question, at each budget",
    )
    parser.add_argument(
        "--answer-scoring",
        choices=["first_token", "full"],
        default="first_token",
        help="how the KL / log-probability metrics score the closed answers (bench.answer_scoring): "
        "first_token reads them from the answering pass (one prefill per question)",
    )
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--progress", action="store_true", help="tqdm bars per run")
    parser.add_argument(
        "--quick", action="store_true", help="the tiny random model on a few samples (a smoke test)"
    )
    parser.add_argument("--plan", action="store_true", help="list the sweeps and exit")
    args = parser.parse_args(argv)

    import torch

    import prunekit

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.easyvqa_samples = min(args.easyvqa_samples, 8)
        args.auc_images = 0
        args.llm_layer = 1
    pruners = args.pruners or [p for p in prunekit.list_pruners()]
    unknown = sorted(set(pruners) - set(prunekit.list_pruners()))
    if unknown:
        parser.error(f"unknown pruners {unknown}; registered: {prunekit.list_pruners()}")
    sweeps = plan(args, pruners)
    datasets = data_overrides(args)
    if args.plan:
        print_plan(args, sweeps, datasets)
        return 0

    started = time.time()
    rows = run_sweeps(args, sweeps, datasets, label, started)
    if rows is None:
        return 1

    aucs = relevance_auc(args.auc_images) if args.auc_images else None
    write_report(args, rows, list(datasets), aucs, time.time() - started)
    return 0


def write_report(
    args: argparse.Namespace,
    rows: list[dict[str, Any]],
    datasets: list[str],
    aucs: dict[str, dict[str, float]] | None,
    seconds: float,
) -> None:
    from prunekit.experiments.records import reproduce_command
    from prunekit.experiments.summary import paired_markdown, write_paired_csv

    args.out.mkdir(parents=True, exist_ok=True)
    budgets = sorted(args.budgets)
    main_labels = sorted(
        {r["label"] for r in rows if r["group"] == "pruners"}, key=lambda s: (s != "resprune", s)
    )
    ablation_labels = ["resprune"] + sorted({r["label"] for r in rows if r["group"] == "ablation"})
    sizes = ", ".join(
        f"{d}: {next(r['metrics']['n'] for r in rows if r['dataset'] == d)} questions"
        for d in datasets
    )
    lines = [
        "# Quality benchmark"
        + (" (quick smoke run: tiny random model, not a result)" if args.quick else ""),
        "",
        f"Produced by `{reproduce_command('benchmarks/quality.py', sys.argv[1:])}` "
        f"in {seconds / 60:.0f} min on {machine()}.",
        "",
        f"Model: {'tiny random LLaVA' if args.quick else 'MiniLLaVA (DINOv2-S + trained projector + SmolLM2-135M-Instruct), 256 visual tokens'}; "
        "greedy decoding restricted to each data set's answers. "
        f"Fixed subsets: {sizes} (the same questions for every run). Cells: accuracy / loyalty "
        "(agreement with the unpruned model's answer); every run's 95 % Wilson intervals are in the "
        "full table below and in `quality.csv`.",
        "",
    ]
    for d in datasets:
        lines += [f"## {d}: every pruner", "", pivot(rows, d, main_labels, budgets), ""]
    for d in datasets:
        lines += [
            f"## {d}: ResPrune ablation grid",
            "",
            pivot(rows, d, ablation_labels, budgets),
            "",
        ]
    alpha_rows = [
        r
        for r in rows
        if r["label"].startswith("resprune")
        and "center" not in r["label"]
        and r["budget"] == args.alpha_budget
    ]
    if alpha_rows:
        lines += [f"## ResPrune: alpha sweep at {100 * args.alpha_budget:.1f} %", "",
                  "| alpha | " + " | ".join(datasets) + " |", "|---|" + "---|" * len(datasets)]  # fmt: skip
        for alpha in sorted(set(args.alphas)):
            name = "resprune" if alpha == 1.0 else f"resprune (alpha={alpha:g})"
            cells = []
            for d in datasets:
                hit = [r for r in alpha_rows if r["dataset"] == d and r["label"] == name]
                cells.append(
                    f"{hit[0]['metrics']['accuracy']:.3f} {_ci(hit[0]['metrics']['accuracy_ci95'])}"
                    if hit
                    else ""
                )
            lines.append(f"| {alpha:g} | " + " | ".join(cells) + " |")
        lines.append("")
    if aucs:
        lines += [
            f"## Text relevance diagnostic (ROC AUC, {args.auc_images} shapes test scenes)",
            "",
            "| relevance | object vs background | named vs other objects |",
            "|---|---|---|",
        ]
        for kind, values in aucs.items():
            lines.append(
                f"| {kind} cosine | {values['object vs background']:.3f} | {values['named vs other objects']:.3f} |"
            )
        lines.append("")
    paired = paired_comparisons(rows, datasets, args.reference)
    if paired is not None:
        labels = main_labels + [x for x in ablation_labels if x not in main_labels]
        labels += sorted({r["label"] for r in rows if r["label"] not in labels})
        for d in datasets:
            lines += paired_section(
                paired, d, args.reference, labels, budgets + [args.alpha_budget]
            )
        write_paired_csv(paired, args.out / "quality_paired.csv")
        (args.out / "quality_paired.md").write_text(paired_markdown(paired))
    lines += ["## Every run", "", long_table(rows), "", "![quality](quality.png)", ""]
    (args.out / "quality.md").write_text("\n".join(lines))
    write_csv(rows, args.out / "quality.csv")
    plot(
        rows,
        datasets,
        main_labels + [x for x in ablation_labels if x not in main_labels],
        args.out / "quality.png",
    )
    print(f"wrote {args.out / 'quality.md'}, quality.csv, quality.png")


if __name__ == "__main__":
    raise SystemExit(main())
