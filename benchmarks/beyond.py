#!/usr/bin/env python
"""Beyond the paper: adaptive budgets, merging instead of dropping, and text relevance, measured.

The yardstick of ``benchmarks/quality.py`` (MiniLLaVA, fixed subsets of easy-VQA and shapes,
closed-answer greedy decoding, answer distributions from the answering pass, paired
per-question statistics) applied to prunekit's additions to ResPrune:

* **adaptive budgets**: ResPrune with ``energy=tau`` (keep tokens until the kept span explains
  ``tau`` of the image's token energy, the budget only a ceiling) for several ``tau``, against
  fixed-count ResPrune; and a scoring baseline (FasterVLM) with the score-mass criterion
  (``score_mass``) against its fixed counts. Each adaptive run is paired with the fixed run of
  its family whose budget is nearest its mean tokens kept (Pareto curves in the plot);
* **drop vs merge** at 6.25 % and 11.1 %: ResPrune dropping (as published), merging by the
  least-squares loadings (``merge=lstsq``) and by nearest cosine (``merge=nearest``), each with
  and without norm preservation, and VisionZip (dominant + contextual tokens, before the
  projector) as the published merging method;
* **text relevance x greedy residual** at 6.25 % and 11.1 %: no relevance, the paper's plain
  cosine (ResPrune), the cosine centred on the LLM's mean embedding row, the logit lens
  (``logit_lens``), all before the LLM; and, inside the LLM after decoder layer 2 (where the
  shallow layers' attention exists at no extra cost), no relevance and the text tokens'
  attention (``llm_attention``), both selecting on the hidden states there;
* the relevance diagnostic: ROC AUC of every relevance (object vs background, named object vs
  the other objects) on shapes scenes, read from the pruner's own weights through
  ``prunekit.attach``.

Every comparison is paired (same questions): the mean per-question difference with its paired
bootstrap 95 % interval and McNemar's exact p (:func:`prunekit.experiments.summary.compare_records`),
ResPrune as published the reference row. "Better" is said only where the interval excludes 0.

Outputs in ``--out``: ``beyond.md``, ``beyond.csv``, ``beyond_paired.csv`` and ``beyond.png``.

Examples::

    python benchmarks/beyond.py --out benchmarks/results         # the committed results
    python benchmarks/beyond.py --quick --out /tmp/beyond        # tiny random model, a smoke run
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quality  # noqa: E402  (the sibling benchmark: data subsets, AUC, report helpers)

BUDGETS = (0.0625, 0.111, 0.222, 0.333)
LOW_BUDGETS = (0.0625, 0.111)
#: energy fractions of the adaptive ResPrune runs (budget 1.0: no ceiling but the image)
ENERGIES = (0.998, 0.999, 0.9995, 0.9998, 0.99995, 0.99999)
#: score-mass fractions of the adaptive FasterVLM runs
MASSES = (0.3, 0.5, 0.6, 0.7)
#: the scoring baseline given a score-mass budget
MASS_BASELINE = "fastervlm"
#: the smallest count an adaptive run keeps
MIN_KEEP = 4
REFERENCE = "resprune"


@dataclass(frozen=True)
class Sweep:
    """One ``prunekit ablate`` command of the study (data-set overrides added per set)."""

    group: str  # "full", "fixed", "adaptive", "merge", "relevance"
    overrides: tuple[str, ...]


def _csv(values: Any) -> str:
    return ",".join(f"{v:g}" for v in values)


def plan(args: argparse.Namespace) -> list[Sweep]:
    """The sweeps of the study."""
    budgets = "budget=" + _csv(args.budgets)
    low = "budget=" + _csv(args.low_budgets)
    in_llm = f"adapter.llm_layer={args.llm_layer}"
    greedy = ("pruner=composed", "selection=greedy_residual")
    return [
        Sweep("full", ("pruner=random", "budget=1.0")),
        Sweep("fixed", (f"pruner={REFERENCE}", budgets)),
        Sweep("fixed", (f"pruner={MASS_BASELINE}", budgets)),
        Sweep(
            "adaptive",
            (
                f"pruner={REFERENCE}",
                "pruner.energy=" + _csv(args.energies),
                f"pruner.min_keep={MIN_KEEP}",
                "budget=1.0",
            ),
        ),
        Sweep(
            "adaptive",
            (
                "pruner=score_mass",
                f"pruner.pruner={MASS_BASELINE}",
                "pruner.mass=" + _csv(args.masses),
                f"pruner.min_keep={MIN_KEEP}",
                "budget=1.0",
            ),
        ),
        Sweep(
            "merge",
            (
                f"pruner={REFERENCE}",
                "pruner.merge=lstsq,nearest",
                "pruner.merge_norm=false,true",
                low,
            ),
        ),
        Sweep("merge", ("pruner=visionzip", "adapter.before_projector=true", low)),
        Sweep("relevance", (*greedy, "relevance=none,logit_lens", low)),
        Sweep("relevance", (f"pruner={REFERENCE}", "pruner.center=embedding_mean", low)),
        Sweep("relevance", (*greedy, "relevance=none,llm_attention", in_llm, low)),
    ]


# --------------------------------------------------------------------------- labels


def label(result: dict[str, Any]) -> str:
    """A readable name of a run's configuration (without its budget and data set)."""
    config = result["config"]
    pruner = dict(config["pruner"])
    name = pruner.pop("name")
    extra = []
    if name == "composed":
        name = f"{config['relevance']['name']} x {config['selection']['name']}"
    elif name == "score_mass":
        inner = pruner.get("pruner")
        inner = inner.get("name") if isinstance(inner, dict) else inner
        name = f"{inner} (score mass {pruner['mass']:g})"
    if pruner.get("energy") is not None:
        extra.append(f"energy {pruner['energy']:g}")
    if pruner.get("center") is not None:
        extra.append(f"center={pruner['center']}")
    if pruner.get("merge", "none") != "none":
        extra.append(f"merge={pruner['merge']}" + (", norm" if pruner.get("merge_norm") else ""))
    adapter = config["adapter"]
    if adapter.get("before_projector"):
        extra.append("before projector")
    if adapter.get("llm_layer") is not None:
        extra.append(f"after LLM layer {adapter['llm_layer']}")
    return name + (f" ({', '.join(extra)})" if extra else "")


def family(row: dict[str, Any]) -> str | None:
    """The fixed-count configuration an adaptive run is compared with."""
    name = row["label"]
    if row["group"] != "adaptive":
        return None
    return REFERENCE if name.startswith(f"{REFERENCE} (energy") else MASS_BASELINE


# --------------------------------------------------------------------------- pairing


def _tokens(row: dict[str, Any]) -> float:
    return float(row["metrics"].get("tokens_kept", math.nan))


def pairings(rows: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(A, B) runs to compare question by question, per data set.

    * a fixed-budget run of the merge / relevance groups against ResPrune at its budget
      (in-LLM llm_attention also against in-LLM no relevance);
    * an adaptive run against the fixed run of its family whose tokens kept are nearest its
      mean tokens kept.
    """
    out = []
    for a in rows:
        if a["group"] in ("full", "fixed"):
            continue
        same = [b for b in rows if b["dataset"] == a["dataset"] and b is not a]
        if a["group"] == "adaptive":
            fixed = [b for b in same if b["group"] == "fixed" and b["label"] == family(a)]
            if fixed:
                out.append((a, min(fixed, key=lambda b: abs(_tokens(b) - _tokens(a)))))
            continue
        at_budget = [b for b in same if b["budget"] == a["budget"]]
        if "llm_attention" in a["label"]:  # first against no relevance at the same point
            none = a["label"].replace("llm_attention", "none")
            out += [(a, b) for b in at_budget if b["label"] == none]
        out += [(a, b) for b in at_budget if b["label"] == REFERENCE and b["group"] == "fixed"]
    return out


def paired_rows(rows: list[dict[str, Any]], seed: int = 0) -> list[dict[str, Any]]:
    """Every pairing's paired differences, one row per metric."""
    from prunekit.experiments.summary import compare_records

    out = []
    for a, b in pairings(rows):
        if a["records"] is None or b["records"] is None:
            continue
        for row in compare_records(
            a["records"], b["records"], names=(a["label"], b["label"]), seed=seed
        ):
            out.append(
                {
                    "data": a["dataset"],
                    "A": a["label"],
                    "B": b["label"],
                    "budget A": a["budget"],
                    "budget B": b["budget"],
                    "tokens A": _tokens(a),
                    "tokens B": _tokens(b),
                    **row,
                }
            )
    return out


# --------------------------------------------------------------------------- relevance AUC


def relevance_auc(n_images: int, llm_layer: int) -> dict[str, dict[str, float]]:
    """ROC AUCs of every relevance on shapes test scenes, from the pruner's own weights.

    Each relevance runs as ``relevance x topk`` through ``prunekit.attach`` on MiniLLaVA (one
    forward per question); the weights the pruner reports (``PruneResult.scores``, a monotone
    map of the raw relevance) are split by which patches an object covers, as in
    :func:`quality.relevance_auc`: object tokens vs background, the asked-about object's tokens vs
    the other objects'.
    """
    import torch

    import prunekit
    from prunekit import ComposedPruner
    from prunekit.data import shapes
    from prunekit.models import minillava

    model, processor = minillava.load()
    grid = 224 // minillava.PATCH_SIZE
    relevances = {
        "plain cosine (ResPrune)": ({"name": "text"}, None),
        "centred cosine": ({"name": "text", "center": "embedding_mean"}, None),
        "logit lens": ({"name": "logit_lens"}, None),
        f"text attention, LLM layer {llm_layer - 1}": ({"name": "llm_attention"}, llm_layer),
    }
    kinds = ("object", "background", "named", "other")
    scores = {name: {k: [] for k in kinds} for name in relevances}
    items = list(shapes.dataset("test", n_images))
    for name, (relevance, layer) in relevances.items():
        pruner = ComposedPruner(relevance=relevance, selection="topk")
        options = {} if layer is None else {"llm_layer": layer}
        with prunekit.attach(
            model, pruner, budget=0.5, tokenizer=processor.tokenizer, **options
        ) as handle:
            for item in items:
                cover = [
                    torch.as_tensor(shapes.object_patches(o, grid)).reshape(-1) > 0.5
                    for o in item.scene.objects
                ]
                any_object = torch.stack(cover).any(dim=0)
                for q in item.questions:
                    if q.kind not in ("color", "shape") or len(q.target) != 1:
                        continue
                    inputs = processor(
                        images=[item.scene.image],
                        text=[processor.chat_prompt(q.question)],
                        return_tensors="pt",
                    )
                    with torch.no_grad():
                        model(**inputs)
                    weight = handle.results[-1].scores[0]
                    named = cover[q.target[0]]
                    s = scores[name]
                    s["object"] += weight[any_object].tolist()
                    s["background"] += weight[~any_object].tolist()
                    s["named"] += weight[named].tolist()
                    s["other"] += weight[any_object & ~named].tolist()
    return {
        name: {
            "object vs background": quality.auc(s["object"], s["background"]),
            "named vs other objects": quality.auc(s["named"], s["other"]),
        }
        for name, s in scores.items()
    }


# --------------------------------------------------------------------------- report


def _kept(m: dict[str, Any]) -> str:
    mean = m.get("tokens_kept", math.nan)
    sd = m.get("tokens_kept_std")
    return f"{mean:.1f}" + (f" ± {sd:.1f}" if sd else "")


def _acc(m: dict[str, Any]) -> str:
    return f"{m['accuracy']:.3f} {quality._ci(m['accuracy_ci95'])}"


def _diff(row: dict[str, Any] | None) -> str:
    if row is None:
        return ""
    cell = f"{row['A - B']:+.3f} [{row['low']:+.3f}, {row['high']:+.3f}]"
    if row.get("McNemar p") is not None:
        cell += f" p={row['McNemar p']:.2g}"
    return f"**{cell}**" if row["verdict"] != "level" else cell


def _find(paired: list[dict[str, Any]], data: str, a: str, budget: float, metric: str) -> Any:
    hits = [
        p
        for p in paired
        if p["data"] == data and p["A"] == a and p["budget A"] == budget and p["metric"] == metric
    ]
    return hits[0] if hits else None


def section(
    rows: list[dict[str, Any]],
    paired: list[dict[str, Any]],
    data: str,
    group: str,
    title: str,
    intro: str,
) -> list[str]:
    """A table of one group's runs on one data set, with each run's paired differences."""
    runs = [r for r in rows if r["dataset"] == data and r["group"] == group]
    if not runs:
        return []
    refs = [
        r
        for r in rows
        if r["dataset"] == data and r["label"] == REFERENCE and r["group"] == "fixed"
    ]
    header = ["configuration", "budget", "tokens kept", "accuracy [95 % CI]", "loyalty",
              "Δ accuracy vs B [95 %]", "Δ KL vs B [95 %]", "B"]  # fmt: skip
    lines = [f"### {data}: {title}", "", intro, "", "| " + " | ".join(header) + " |"]
    lines.append("|" + "---|" * len(header))
    shown = sorted(runs + ([] if group == "adaptive" else [r for r in refs if r["budget"] in {x["budget"] for x in runs}]),
                   key=lambda r: (r["budget"], r["label"] != REFERENCE, r["label"]))  # fmt: skip
    for r in shown:
        m = r["metrics"]
        acc = _find(paired, data, r["label"], r["budget"], "accuracy")
        kl = _find(paired, data, r["label"], r["budget"], "KL")
        other = (
            acc["B"]
            + (f" at {acc['budget B']:g}" if acc and acc["budget B"] != r["budget"] else "")
            if acc
            else ""
        )
        lines.append(
            "| " + " | ".join([
                r["label"], f"{r['budget']:g}", _kept(m), _acc(m),
                f"{m['loyalty']:.2f}" if "loyalty" in m else "", _diff(acc), _diff(kl), other,
            ]) + " |"
        )  # fmt: skip
    lines.append("")
    return lines


def write_report(
    args: argparse.Namespace,
    rows: list[dict[str, Any]],
    datasets: list[str],
    aucs: dict[str, dict[str, float]] | None,
    seconds: float,
) -> list[dict[str, Any]]:
    from prunekit.experiments.records import reproduce_command

    args.out.mkdir(parents=True, exist_ok=True)
    paired = paired_rows(rows)
    sizes = ", ".join(
        f"{d}: {next(r['metrics']['n'] for r in rows if r['dataset'] == d)} questions"
        for d in datasets
    )
    lines = [
        "# Beyond the paper: adaptive budgets, merging, text relevance"
        + (" (quick smoke run: tiny random model, not a result)" if args.quick else ""),
        "",
        f"Produced by `{reproduce_command('benchmarks/beyond.py', sys.argv[1:])}` on "
        f"{quality.machine()}: the runs took {sum(r['seconds'] for r in rows) / 60:.0f} min "
        f"(their own times; a rerun reuses finished runs), this invocation {seconds / 60:.0f} min.",
        "",
        f"Model: {'tiny random LLaVA' if args.quick else 'MiniLLaVA (DINOv2-S + trained projector + SmolLM2-135M-Instruct), 256 visual tokens'}; "
        f"fixed subsets: {sizes}, the same questions in every run. Each Δ is A - B on the same "
        "questions with its paired bootstrap 95 % interval and McNemar's exact p; **bold** where "
        "the interval excludes 0 (the only place a difference is claimed). KL: divergence of the "
        "answer distribution from the unpruned model's, lower is better.",
        "",
    ]
    full = {r["dataset"]: r["metrics"] for r in rows if r["group"] == "full"}
    if full:
        lines += ["All tokens: " + ", ".join(f"{d} {_acc(m)}" for d, m in full.items()), ""]
    intros = {
        "adaptive": (
            "Adaptive budgets (no ceiling but the image, at least "
            f"{MIN_KEEP} tokens); B is the fixed-count run of the same method whose tokens kept "
            "are nearest the adaptive mean (± the spread over images)."
        ),
        "merge": "Drop vs merge; B is ResPrune (dropping) at the same budget.",
        "relevance": (
            "Text relevance x greedy residual; B is ResPrune (plain cosine) at the same budget; "
            "llm_attention inside the LLM is also compared with no relevance at the same point "
            "(the paired file)."
        ),
    }
    titles = {
        "adaptive": "fixed vs adaptive budgets",
        "merge": "drop vs merge",
        "relevance": "text relevance x greedy residual",
    }
    for group in ("adaptive", "merge", "relevance"):
        lines += [f"## {titles[group].capitalize()}", ""]
        for d in datasets:
            lines += section(rows, paired, d, group, titles[group], intros[group])
    if aucs:
        lines += [
            f"## Relevance diagnostic (ROC AUC, {args.auc_images} shapes test scenes)",
            "",
            "0.5 is chance; from the pruner's own weights through `prunekit.attach`.",
            "",
            "| relevance | object vs background | named vs other objects |",
            "|---|---|---|",
        ]
        for name, values in aucs.items():
            lines.append(
                f"| {name} | {values['object vs background']:.3f} | {values['named vs other objects']:.3f} |"
            )
        lines.append("")
    lines += ["## Every run", "", quality.long_table(rows), "", "![beyond](beyond.png)", ""]
    (args.out / "beyond.md").write_text("\n".join(lines))
    write_csv(rows, args.out / "beyond.csv")
    write_paired_csv(paired, args.out / "beyond_paired.csv")
    plot(rows, datasets, args.out / "beyond.png")
    print(f"wrote {args.out / 'beyond.md'}, beyond.csv, beyond_paired.csv, beyond.png")
    return paired


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    fields = ["dataset", "group", "configuration", "budget", "tokens_kept", "tokens_kept_std",
              "n", "accuracy", "accuracy_ci_low", "accuracy_ci_high", "loyalty", "run"]  # fmt: skip
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(fields)
        for r in rows:
            m = r["metrics"]
            writer.writerow(
                [r["dataset"], r["group"], r["label"], r["budget"], m.get("tokens_kept"),
                 m.get("tokens_kept_std"), m["n"], m["accuracy"], *m["accuracy_ci95"],
                 m.get("loyalty"), r["name"]]
            )  # fmt: skip


def write_paired_csv(paired: list[dict[str, Any]], path: Path) -> None:
    fields = ["data", "A", "B", "budget A", "budget B", "tokens A", "tokens B", "metric",
              "A - B", "low", "high", "McNemar p", "verdict"]  # fmt: skip
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(fields)
        for p in paired:
            writer.writerow([p.get(k) for k in fields])


def plot(rows: list[dict[str, Any]], datasets: list[str], path: Path) -> None:
    """Accuracy against mean tokens kept: fixed-count curves and adaptive points (Pareto)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(datasets), figsize=(6.5 * len(datasets), 4.4), squeeze=False)
    styles = {
        ("fixed", REFERENCE): ("C0", "-", "o", "ResPrune, fixed count"),
        ("adaptive", REFERENCE): ("C0", "", "*", "ResPrune, energy budget"),
        ("fixed", MASS_BASELINE): ("C1", "-", "o", f"{MASS_BASELINE}, fixed count"),
        ("adaptive", MASS_BASELINE): ("C1", "", "*", f"{MASS_BASELINE}, score-mass budget"),
    }
    for ax, d in zip(axes[0], datasets):
        for (group, fam), (color, ls, marker, name) in styles.items():
            pts = [
                r
                for r in rows
                if r["dataset"] == d
                and r["group"] == group
                and (r["label"] == fam if group == "fixed" else family(r) == fam)
            ]
            pts.sort(key=_tokens)
            if not pts:
                continue
            xs = [_tokens(p) for p in pts]
            ys = [p["metrics"]["accuracy"] for p in pts]
            yerr = [
                [y - p["metrics"]["accuracy_ci95"][0] for y, p in zip(ys, pts)],
                [p["metrics"]["accuracy_ci95"][1] - y for y, p in zip(ys, pts)],
            ]
            # the range over images (min to max), which a log axis can show; sd is in the table
            xerr = [
                [x - p["metrics"].get("tokens_kept_min", x) for x, p in zip(xs, pts)],
                [p["metrics"].get("tokens_kept_max", x) - x for x, p in zip(xs, pts)],
            ]
            ax.errorbar(xs, ys, xerr=xerr, yerr=yerr, color=color, ls=ls or "none",
                        marker=marker, ms=8 if marker == "*" else 4, capsize=2, lw=1.2, label=name)  # fmt: skip
        full = [r for r in rows if r["dataset"] == d and r["group"] == "full"]
        if full:
            ax.axhline(full[0]["metrics"]["accuracy"], color="k", ls=":", lw=1, label="all tokens")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("visual tokens kept per image (mean; bars: min to max over images)")
        ax.set_ylabel("accuracy (95 % Wilson intervals)")
        ax.set_title(f"{d}: fixed vs adaptive budgets")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize="small", loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument(
        "--runs-dir", type=Path, default=Path.home() / ".cache/prunekit/beyond-runs"
    )
    parser.add_argument("--easyvqa-samples", type=int, default=120, help="easy-VQA test questions")
    parser.add_argument("--shapes-images", type=int, default=30, help="shapes test scenes")
    parser.add_argument("--budgets", type=float, nargs="+", default=list(BUDGETS))
    parser.add_argument("--low-budgets", type=float, nargs="+", default=list(LOW_BUDGETS))
    parser.add_argument("--energies", type=float, nargs="+", default=list(ENERGIES))
    parser.add_argument("--masses", type=float, nargs="+", default=list(MASSES))
    parser.add_argument("--llm-layer", type=int, default=2, help="in-LLM runs: after this layer")
    parser.add_argument(
        "--auc-images", type=int, default=60, help="shapes scenes of the AUC (0: skip)"
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--answer-scoring", choices=["first_token", "full"], default="first_token")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--progress", action="store_true", help="tqdm bars per run")
    parser.add_argument("--quick", action="store_true", help="the tiny random model, a smoke run")
    parser.add_argument("--plan", action="store_true", help="list the sweeps and exit")
    args = parser.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.easyvqa_samples = min(args.easyvqa_samples, 6)
        args.auc_images = 0
        args.llm_layer = 1
    sweeps = plan(args)
    datasets = quality.data_overrides(args)
    if args.plan:
        quality.print_plan(args, sweeps, datasets)
        return 0

    started = time.time()
    rows = quality.run_sweeps(args, sweeps, datasets, label, started)
    if rows is None:
        return 1

    aucs = relevance_auc(args.auc_images, args.llm_layer) if args.auc_images else None
    write_report(args, rows, list(datasets), aucs, time.time() - started)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
