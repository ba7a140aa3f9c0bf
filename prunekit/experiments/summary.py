"""The summary of an ablation: a markdown and a CSV table, and a plot of metric against tokens kept.

One table row per configuration (run). The columns are the overridden keys
whose values differ between the runs (the keys fixed for the whole sweep are
listed above the table), then the number of samples, accuracy with its 95 %
Wilson interval, loyalty with its interval (when measured), the visual tokens
kept per image (mean, ``± sd`` when the images kept different counts) and the time per
sample; then, when the runs have them, POPE's F1 and
yes-ratio, the prefill time per sample and the prefill FLOPs speed-up. The plot
(:func:`summary_figure`) has one curve per configuration without its budget, metric
against the visual tokens kept, with the all-tokens value as a reference line and the
model, data and question count in its title.

The paired comparison (:func:`paired_table`, written by :func:`write_summary` as
``paired.md`` / ``paired.csv``) sets each run against a baseline run at the same budget on
the same data, question by question (matched by id in the runs' ``predictions.jsonl``):
the mean per-question difference of accuracy, loyalty, KL divergence from the unpruned
answer distribution and log-probability of the unpruned answer, with a paired bootstrap
95 % interval, McNemar's exact p where the scores are right/wrong, and a verdict that says
"A > B" only where the interval excludes zero (:mod:`prunekit.stats`).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prunekit.experiments.config import override_key
from prunekit.stats import mcnemar, paired_bootstrap, significant

#: the metric columns of a summary table, after the swept keys
METRIC_COLUMNS = (
    "n",
    "accuracy",
    "accuracy 95% CI",
    "loyalty",
    "loyalty 95% CI",
    "kept",
    "ms/sample",
)
#: columns shown when some run has them: POPE's F1 and yes-ratio, the prefill time, the
#: prefill FLOPs speed-up of :mod:`prunekit.accounting`
OPTIONAL_COLUMNS = ("F1", "yes ratio", "prefill ms/sample", "FLOPs speedup")
#: a run folder's per-question records (written by :func:`prunekit.experiments.runner.run_dataset`)
RECORDS_FILE = "predictions.jsonl"
#: the per-question fields compared in pairs, as (name in the tables, field of the records);
#: a metric is compared where both runs record it for every question
PAIRED_METRICS = (
    ("accuracy", "score"),
    ("loyalty", "loyal"),
    ("KL", "kl"),
    ("logprob_reference", "logprob_reference"),
)
#: the columns of the paired table (markdown)
PAIRED_COLUMNS = (
    "data",
    "budget",
    "A",
    "B",
    "metric",
    "n",
    "mean A",
    "mean B",
    "A - B",
    "95% CI",
    "McNemar p",
    "verdict",
)


@dataclass
class Summary:
    """What :func:`write_summary` produced."""

    columns: list[str]
    rows: list[dict[str, Any]]
    fixed: dict[str, str]
    markdown: str
    paths: dict[str, Path]
    paired: PairedTable | None = None


@dataclass
class PairedTable:
    """What :func:`paired_table` produced: one row per run, baseline and metric, and the
    runs it could not compare, each with the reason."""

    rows: list[dict[str, Any]]
    refused: list[str]


def read_results(run_dirs: Sequence[Path]) -> list[dict[str, Any]]:
    """The ``result.json`` of each finished run, in the given order (unfinished runs left out)."""
    out = []
    for run_dir in run_dirs:
        path = Path(run_dir) / "result.json"
        if path.is_file():
            out.append(json.loads(path.read_text()))
    return out


def _overrides(result: dict[str, Any]) -> dict[str, str]:
    pairs = {}
    for o in result.get("overrides", []):
        key = override_key(o)
        if key.startswith("hydra") or key == "bench.progress":
            continue
        pairs[key] = o.split("=", 1)[1] if "=" in o else ""
    return pairs


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _ci(pair: Any) -> str:
    return f"[{pair[0]:.3f}, {pair[1]:.3f}]" if pair else ""


def kept_cell(metrics: dict[str, Any]) -> str:
    """The "kept" cell: ``"mean / in"``, or ``"mean ± sd / in"`` when the images kept
    different numbers of tokens (adaptive budgets; records without ``tokens_kept_std``,
    written before it existed, show the mean alone)."""
    if "tokens_kept" not in metrics:
        return ""
    std = metrics.get("tokens_kept_std") or 0.0
    spread = f" ± {std:.1f}" if std > 0 else ""
    return f"{metrics['tokens_kept']:.1f}{spread} / {metrics['tokens_in']:.0f}"


def table(
    results: Sequence[dict[str, Any]],
) -> tuple[list[str], list[dict[str, Any]], dict[str, str]]:
    """Columns, one row per run, and the overrides common to all runs."""
    per_run = [_overrides(r) for r in results]
    keys: list[str] = []
    for pairs in per_run:
        keys.extend(k for k in pairs if k not in keys)
    varying = [k for k in keys if len({p.get(k) for p in per_run}) > 1]
    fixed = {k: per_run[0][k] for k in keys if k not in varying and k in per_run[0]}
    # budget last among the keys, so that rows read "configuration, budget"
    varying.sort(key=lambda k: (k == "budget", keys.index(k)))
    rows = []
    for result, pairs in zip(results, per_run):
        m = result["metrics"]
        row: dict[str, Any] = {k: pairs.get(k, "") for k in varying}
        row["budget"] = result["config"]["budget"]
        row.update(
            {
                "n": m["n"],
                "accuracy": m["accuracy"],
                "accuracy 95% CI": _ci(m.get("accuracy_ci95")),
                "loyalty": m.get("loyalty"),
                "loyalty 95% CI": _ci(m.get("loyalty_ci95")),
                "kept": kept_cell(m),
                "ms/sample": m.get("ms_per_sample"),
                "F1": m.get("pope", {}).get("f1"),
                "yes ratio": m.get("pope", {}).get("yes_ratio"),
                "prefill ms/sample": m.get("prefill_ms_per_sample"),
                "FLOPs speedup": (result.get("efficiency") or {}).get("flops_speedup"),
            }
        )
        row["_result"] = result
        rows.append(row)
    has_loyalty = any(r["loyalty"] is not None for r in rows)
    columns = [k for k in varying if k != "budget"] + ["budget"]
    columns += [c for c in METRIC_COLUMNS if has_loyalty or not c.startswith("loyalty")]
    columns += [c for c in OPTIONAL_COLUMNS if any(r[c] is not None for r in rows)]
    return columns, rows, fixed


def markdown_table(columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> str:
    """A markdown table of ``rows`` (dicts) with ``columns`` in this order."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        cells = [
            _fmt(row.get(c), 1 if "ms/" in c else 2 if c == "FLOPs speedup" else 3)
            if c != "budget"
            else str(row.get(c))
            for c in columns
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_csv(columns: Sequence[str], rows: Sequence[dict[str, Any]], path: Path) -> None:
    """The table with numbers only: interval bounds in columns of their own, the run folder last."""
    keys = list(columns[: columns.index("budget") + 1])
    has_loyalty = "loyalty" in columns
    metrics = ["n", "accuracy", "accuracy_ci_low", "accuracy_ci_high"]
    if has_loyalty:
        metrics += ["loyalty", "loyalty_ci_low", "loyalty_ci_high"]
    metrics += ["tokens_kept", "tokens_kept_std", "tokens_kept_min", "tokens_kept_max"]
    metrics += ["tokens_in", "ms_per_sample"]
    metrics += ["prefill_ms_per_sample", "decode_ms_per_sample", "flops_speedup", "kv_cache_ratio"]
    metrics += ["pope_f1", "pope_yes_ratio", "run"]
    with Path(path).open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(keys + metrics)
        for row in rows:
            m = row["_result"]["metrics"]
            values = [row[k] for k in keys] + [m["n"], m["accuracy"], *m["accuracy_ci95"]]
            if has_loyalty:
                values += [m.get("loyalty"), *m.get("loyalty_ci95", [None, None])]
            values += [m.get("tokens_kept"), m.get("tokens_kept_std")]
            values += [m.get("tokens_kept_min"), m.get("tokens_kept_max")]
            values += [m.get("tokens_in"), m.get("ms_per_sample")]
            saved = row["_result"].get("efficiency") or {}
            values += [m.get("prefill_ms_per_sample"), m.get("decode_ms_per_sample")]
            values += [saved.get("flops_speedup"), saved.get("kv_cache_ratio")]
            values += [m.get("pope", {}).get("f1"), m.get("pope", {}).get("yes_ratio")]
            values.append(row["_result"]["name"])
            writer.writerow(["" if v is None else v for v in values])


# --------------------------------------------------------------------------- paired comparisons


def read_records(run_dir: Path) -> list[dict[str, Any]] | None:
    """The per-question records of a run folder (``predictions.jsonl``), ``None`` without them."""
    path = Path(run_dir) / RECORDS_FILE
    if not path.is_file():
        return None
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _by_id(records: Sequence[dict[str, Any]], name: str) -> dict[Any, dict[str, Any]]:
    out: dict[Any, dict[str, Any]] = {}
    for record in records:
        if "id" not in record:
            raise ValueError(f"{name}: a per-question record has no 'id'; pairing matches by id")
        if record["id"] in out:
            raise ValueError(f"{name}: question id {record['id']!r} recorded twice")
        out[record["id"]] = record
    return out


def compare_records(
    records_a: Sequence[dict[str, Any]],
    records_b: Sequence[dict[str, Any]],
    *,
    names: tuple[str, str] = ("A", "B"),
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Run A against run B, question by question: one dict per metric of :data:`PAIRED_METRICS`
    that both record for every question.

    The questions are matched by id; runs whose ids differ are refused (``ValueError``):
    a paired difference needs the same questions. Each dict has the means of A and B, the
    mean difference ``A - B`` with its paired bootstrap 95 % interval
    (:func:`prunekit.stats.paired_bootstrap`, ``seed``), McNemar's exact test where both
    runs score 0 / 1 (:func:`prunekit.stats.mcnemar`; else ``None``) and the verdict of
    :func:`prunekit.stats.significant` ("A > B", "A < B" or "level").
    """
    a, b = _by_id(records_a, names[0]), _by_id(records_b, names[1])
    if a.keys() != b.keys():
        only_a = [i for i in a if i not in b]
        only_b = [i for i in b if i not in a]
        raise ValueError(
            f"{names[0]} and {names[1]} answered different questions ({len(only_a)} ids only in "
            f"{names[0]}, e.g. {only_a[:3]}; {len(only_b)} only in {names[1]}, e.g. {only_b[:3]}): "
            "a paired comparison needs the same questions, matched by id"
        )
    if not a:
        raise ValueError(f"{names[0]} and {names[1]} have no per-question records")
    ids = list(a)
    out = []
    for metric, field in PAIRED_METRICS:
        if not all(a[i].get(field) is not None and b[i].get(field) is not None for i in ids):
            continue
        values_a = [float(a[i][field]) for i in ids]
        values_b = [float(b[i][field]) for i in ids]
        diff = paired_bootstrap(values_a, values_b, seed=seed)
        binary = all(v in (0.0, 1.0) for v in values_a + values_b)
        test = mcnemar(values_a, values_b) if binary else None
        out.append(
            {
                "metric": metric,
                "n": diff.n,
                "mean A": diff.mean_a,
                "mean B": diff.mean_b,
                "A - B": diff.difference,
                "low": diff.low,
                "high": diff.high,
                "a_only": test.a_only if test else None,
                "b_only": test.b_only if test else None,
                "McNemar p": test.p_value if test else None,
                "verdict": significant(diff),
            }
        )
    return out


def config_labels(results: Sequence[dict[str, Any]]) -> list[str]:
    """Each run's configuration: the swept keys other than the budget and the data set's
    (``"relevance=text, selection=topk"``; ``"all runs"`` when nothing else varies)."""
    per_run = [_overrides(r) for r in results]
    keys: list[str] = []
    for pairs in per_run:
        keys.extend(k for k in pairs if k not in keys)
    varying = [
        k
        for k in keys
        if k != "budget"
        and not (k == "data" or k.startswith("data."))
        and len({p.get(k) for p in per_run}) > 1
    ]
    return [", ".join(f"{k}={p.get(k, '')}" for k in varying) or "all runs" for p in per_run]


def _data_label(result: dict[str, Any]) -> str:
    """The data set of a run: its name and its ``data.*`` overrides (the questions asked)."""
    pairs = _overrides(result)
    extra = [f"{k}={v}" for k, v in pairs.items() if k.startswith("data.")]
    name = result.get("data", {}).get("name") or pairs.get("data", "?")
    return name + (f" ({', '.join(extra)})" if extra else "")


def _is_baseline(baseline: str, label: str, result: dict[str, Any]) -> bool:
    """``baseline`` names a run by its configuration label or by ``key=value`` pairs
    (comma-separated) that all hold for its overrides."""
    if baseline == label:
        return True
    pairs = _overrides(result)
    wanted = [p.strip() for p in baseline.split(",") if p.strip()]
    return bool(wanted) and all(
        "=" in p and pairs.get(override_key(p)) == p.split("=", 1)[1] for p in wanted
    )


def paired_table(
    results: Sequence[dict[str, Any]],
    records: Sequence[Sequence[dict[str, Any]] | None],
    *,
    labels: Sequence[str] | None = None,
    baseline: str | None = None,
    seed: int = 0,
) -> PairedTable:
    """Every run against the baseline run at its budget on its data set, question by question.

    ``records``: each run's per-question records (:func:`read_records`; ``None`` where it has
    none). ``labels``: each run's configuration (default :func:`config_labels`).
    ``baseline``: a label, or ``key=value`` pairs (``"pruner=resprune"``) that the baseline
    run's overrides hold; default: the first run of each budget and data set, in the
    order of ``results``. One row per run and metric (:func:`compare_records`); runs that
    cannot be compared (no records, no baseline at their budget, other questions) are
    listed in ``refused`` with the reason.
    """
    if len(records) != len(results):
        raise ValueError(f"records must hold one entry per run: {len(records)} for {len(results)}")
    labels = list(labels) if labels is not None else config_labels(results)
    if len(labels) != len(results):
        raise ValueError(f"labels must hold one entry per run: {len(labels)} for {len(results)}")
    if baseline is not None and not any(
        _is_baseline(baseline, lab, r) for lab, r in zip(labels, results)
    ):
        raise ValueError(
            f"baseline {baseline!r} matches no run; the configurations are {sorted(set(labels))}"
        )
    groups: dict[tuple[str, str], list[int]] = {}
    for i, result in enumerate(results):
        groups.setdefault((_data_label(result), str(result["config"]["budget"])), []).append(i)
    rows: list[dict[str, Any]] = []
    refused: list[str] = []
    for (data, budget), members in groups.items():
        if baseline is None:
            base = members[0]
        else:
            hits = [i for i in members if _is_baseline(baseline, labels[i], results[i])]
            if not hits:
                refused += [
                    f"{labels[i]} (budget {budget}, {data}): no baseline run {baseline!r} there"
                    for i in members
                ]
                continue
            base = hits[0]
        for i in members:
            if i == base:
                continue
            where = f"{labels[i]} vs {labels[base]} (budget {budget}, {data})"
            if records[i] is None or records[base] is None:
                refused.append(f"{where}: no per-question records ({RECORDS_FILE})")
                continue
            try:
                compared = compare_records(
                    records[i], records[base], names=(labels[i], labels[base]), seed=seed
                )
            except ValueError as error:
                refused.append(f"{where}: {error}")
                continue
            for row in compared:
                row.update(
                    data=data,
                    budget=results[i]["config"]["budget"],
                    A=labels[i],
                    B=labels[base],
                    run_a=results[i].get("name", ""),
                    run_b=results[base].get("name", ""),
                )
                rows.append(row)
    return PairedTable(rows=rows, refused=refused)


def _p(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.3g}" if value >= 1e-3 else f"{value:.1e}"


def paired_markdown(paired: PairedTable) -> str:
    """The paired table in markdown, with how to read it and the refused runs under it."""
    lines = [
        "Paired per question (the same questions, matched by id): A - B is the mean "
        "per-question difference with its paired bootstrap 95 % interval; McNemar p is the "
        "exact test of the discordant right/wrong pairs (A only / B only); the verdict says "
        '"A > B" or "A < B" only where the interval excludes zero. Higher is better except '
        "for KL (the divergence from the unpruned answer distribution).",
        "",
        "| " + " | ".join(PAIRED_COLUMNS) + " |",
        "|" + "|".join("---" for _ in PAIRED_COLUMNS) + "|",
    ]
    for r in paired.rows:
        test = (
            f"{_p(r['McNemar p'])} ({r['a_only']} / {r['b_only']})"
            if r["a_only"] is not None
            else ""
        )
        cells = [
            r["data"],
            str(r["budget"]),
            r["A"],
            r["B"],
            r["metric"],
            str(r["n"]),
            f"{r['mean A']:.4f}",
            f"{r['mean B']:.4f}",
            f"{r['A - B']:+.4f}",
            f"[{r['low']:+.4f}, {r['high']:+.4f}]",
            test,
            r["verdict"],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if paired.refused:
        lines += ["", "Not compared:"] + [f"- {reason}" for reason in paired.refused]
    return "\n".join(lines) + "\n"


def write_paired_csv(paired: PairedTable, path: Path) -> None:
    """The paired table with numbers only: interval bounds and discordant counts in columns."""
    fields = ["data", "budget", "a", "b", "metric", "n", "mean_a", "mean_b", "difference",
              "ci_low", "ci_high", "a_only", "b_only", "mcnemar_p", "verdict", "run_a", "run_b"]  # fmt: skip
    keys = ["data", "budget", "A", "B", "metric", "n", "mean A", "mean B", "A - B",
            "low", "high", "a_only", "b_only", "McNemar p", "verdict", "run_a", "run_b"]  # fmt: skip
    with Path(path).open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(fields)
        for row in paired.rows:
            writer.writerow(["" if row.get(k) is None else row[k] for k in keys])


def paired_findings(paired: PairedTable) -> list[str]:
    """The differences whose interval excludes zero, one line each (for the summary)."""
    out = []
    for r in paired.rows:
        if r["verdict"] == "level":
            continue
        sign = ">" if r["verdict"] == "A > B" else "<"
        test = f", McNemar p={_p(r['McNemar p'])}" if r["McNemar p"] is not None else ""
        out.append(
            f"{r['metric']}: {r['A']} {sign} {r['B']} at budget {r['budget']} on {r['data']} "
            f"({r['A - B']:+.4f} [{r['low']:+.4f}, {r['high']:+.4f}]{test})"
        )
    return out


#: marker shapes of the plot's curves, drawn hollow so that coinciding points stay visible
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
#: line styles of the plot's curves (a dashed line over a solid one shows both)
LINESTYLES = ("-", "--", ":", "-.")


def tokens_kept(result: dict[str, Any]) -> float | None:
    """Visual tokens kept per image by one run: the measured mean, else resolved from its budget.

    An int budget is a token count, a float budget a fraction of the input tokens
    (:func:`~prunekit.core.budget.num_kept`); a fraction needs the record's input token
    count. ``None`` when the record has neither (the run cannot be placed on the axis).
    """
    from prunekit.core.budget import num_kept

    m = result.get("metrics", {})
    if m.get("tokens_kept") is not None:
        return float(m["tokens_kept"])
    budget = result["config"]["budget"]
    tokens_in = m.get("tokens_in")
    if tokens_in is not None:
        return float(num_kept(max(1, round(tokens_in)), budget))
    return float(budget) if isinstance(budget, int) else None


def caption(results: Sequence[dict[str, Any]]) -> str:
    """``"model tiny, data tiny, 6 questions per run"``: what every point of the plot measured."""

    def values(get: Any) -> str:
        seen: list[str] = []
        for r in results:
            value = str(get(r))
            if value not in seen:
                seen.append(value)
        return ", ".join(seen)

    model = values(lambda r: r.get("config", {}).get("model", {}).get("name", "?"))
    data = values(lambda r: r.get("data", {}).get("name", "?"))
    counts = sorted({int(r["metrics"]["n"]) for r in results})
    n = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    return f"model {model}, data {data}, {n} question{'s' * (n != '1')} per run"


def _unpruned(results: Sequence[dict[str, Any]], metric: str) -> float | None:
    """The all-tokens value of ``metric`` when the records have it (one model and data set)."""
    if metric == "loyalty":  # agreement of the unpruned model with itself
        return 1.0
    values = {r["metrics"].get(f"unpruned_{metric}") for r in results}
    return values.pop() if len(values) == 1 and None not in values else None


def summary_figure(
    results: Sequence[dict[str, Any]],
    rows: Sequence[dict[str, Any]] | None = None,
    columns: Sequence[str] | None = None,
) -> Any:
    """The summary plot as a matplotlib ``Figure`` (no pyplot, no global backend change).

    One panel per metric (accuracy, and loyalty when measured) against the visual tokens
    kept per image (:func:`tokens_kept`; the budget alone would put ``budget=0.5`` left of
    ``budget=4``), one curve per configuration of the other swept keys, with the 95 %
    Wilson intervals as error bars. Curves get distinct hollow markers and line styles,
    and curves with the same points say so in the legend (``= <other curve>``). A dotted
    horizontal line marks the all-tokens (unpruned) value when the records have it. The
    title is the :func:`caption`. ``rows`` / ``columns`` default to :func:`table`'s.
    """
    from matplotlib.figure import Figure

    if not results:
        raise ValueError("results must hold at least one run record")
    if rows is None or columns is None:
        columns, rows, _ = table(results)
    config_keys = list(columns[: columns.index("budget")])
    metrics = ["accuracy"] + (["loyalty"] if any(r["loyalty"] is not None for r in rows) else [])
    curves: dict[str, list[tuple[float, dict[str, Any]]]] = {}
    left_out = []
    for result, row in zip(results, rows):
        label = ", ".join(f"{k}={row[k]}" for k in config_keys) or "all runs"
        x = tokens_kept(result)
        if x is None:
            left_out.append(f"budget={result['config']['budget']}")
            continue
        curves.setdefault(label, []).append((x, result["metrics"]))
    for points in curves.values():
        points.sort(key=lambda p: p[0])
    tokens_in = sorted(
        {round(r["metrics"]["tokens_in"]) for r in results if "tokens_in" in r["metrics"]}
    )
    right = max([*tokens_in, *(p[0] for points in curves.values() for p in points), 1])

    fig = Figure(figsize=(5.5 * len(metrics), 4.4), layout="constrained")
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    for ax, metric in zip(axes, metrics):
        drawn: list[tuple[str, list[float], list[float]]] = []
        for i, (label, points) in enumerate(curves.items()):
            xs = [p[0] for p in points]
            ys = [p[1][metric] for p in points]
            same = [other for other, oxs, oys in drawn if oxs == xs and oys == ys]
            drawn.append((label, xs, ys))
            lo = [max(0.0, y - p[1][f"{metric}_ci95"][0]) for y, p in zip(ys, points)]
            hi = [max(0.0, p[1][f"{metric}_ci95"][1] - y) for y, p in zip(ys, points)]
            (line,) = ax.plot(
                xs,
                ys,
                marker=MARKERS[i % len(MARKERS)],
                markerfacecolor="none",
                markersize=7,
                linestyle=LINESTYLES[i % len(LINESTYLES)],
                label=label + (f"  (= {same[0]})" if same else ""),
            )
            ax.errorbar(xs, ys, yerr=[lo, hi], fmt="none", ecolor=line.get_color(), capsize=3)
        reference = _unpruned(results, metric)
        if reference is not None:
            what = "1 by definition" if metric == "loyalty" else f"{reference:.3f}"
            ax.axhline(
                reference,
                color="black",
                linestyle=":",
                linewidth=1.2,
                label=f"all tokens (unpruned): {what}",
            )
        of = f" (of {tokens_in[0]})" if len(tokens_in) == 1 else ""
        ax.set_xlabel(f"visual tokens kept per image{of}")
        ax.set_ylabel(metric)
        ax.set_xlim(0, 1.03 * right)  # from no token to all tokens: how much was pruned
        ax.set_ylim(-0.02, 1.05)
        ax.grid(alpha=0.3)
        ax.set_title(f"{metric} (95 % Wilson intervals)", fontsize="medium")
        ax.legend(fontsize="small", loc="best")
    title = caption(results)
    if left_out:
        title += f"\nnot plotted (fraction budget, no token count recorded): {', '.join(left_out)}"
    fig.suptitle(title)
    return fig


def plot(
    results: Sequence[dict[str, Any]],
    rows: Sequence[dict[str, Any]],
    columns: Sequence[str],
    path: Path,
) -> None:
    """Write :func:`summary_figure` to ``path`` (PNG)."""
    summary_figure(results, rows, columns).savefig(path, dpi=120)


def write_summary(
    results: Sequence[dict[str, Any]],
    out_dir: Path,
    failed: Sequence[dict[str, Any]] = (),
    *,
    records: Sequence[Sequence[dict[str, Any]] | None] | None = None,
    baseline: str | None = None,
) -> Summary:
    """Write ``summary.md``, ``summary.csv`` and ``summary.png`` into ``out_dir``, and
    ``paired.md`` / ``paired.csv`` (:func:`paired_table`) where runs can be paired.

    ``failed``: the ``failure.json`` records of the sweep's failed runs, listed under
    the markdown table (they have no row), so that the table never hides them.
    ``records``: each run's per-question records; default: read from the run folder
    ``out_dir / result["name"]``. ``baseline``: see :func:`paired_table`. ``summary.md``
    ends with the paired differences whose interval excludes zero.
    """
    out_dir = Path(out_dir)
    columns, rows, fixed = table(results)
    body = markdown_table(columns, rows)
    header = ", ".join(f"{k}={v}" for k, v in fixed.items())
    text = (f"Fixed: {header}\n\n" if header else "") + body + "\n"
    if failed:
        text += "\nFailed (not in the table):\n" + "".join(
            f"- {' '.join(f['overrides']) or 'default'}: {f['error']}\n" for f in failed
        )
    paths = {
        "markdown": out_dir / "summary.md",
        "csv": out_dir / "summary.csv",
        "plot": out_dir / "summary.png",
    }
    if records is None:
        records = [read_records(out_dir / str(r.get("name", ""))) for r in results]
    # runs without any per-question records (older runs, hand-made records): no pairing
    if any(r is not None for r in records):
        paired = paired_table(results, records, baseline=baseline)
    else:
        paired = PairedTable(rows=[], refused=[])
    if paired.rows or paired.refused:
        paths["paired"] = out_dir / "paired.md"
        paths["paired csv"] = out_dir / "paired.csv"
        paths["paired"].write_text(paired_markdown(paired))
        write_paired_csv(paired, paths["paired csv"])
        against = baseline or "the first configuration at each budget"
        findings = paired_findings(paired)
        text += f"\nPaired per question against {against} ({paths['paired'].name}): " + (
            f"{len(findings)} of {len(paired.rows)} differences exclude zero:\n"
            + "".join(f"- {line}\n" for line in findings)
            if findings
            else f"none of the {len(paired.rows)} differences excludes zero.\n"
        )
        if paired.refused:
            text += f"Not compared: {len(paired.refused)} (reasons in {paths['paired'].name}).\n"
    paths["markdown"].write_text(text)
    write_csv(columns, rows, paths["csv"])
    plot(results, rows, columns, paths["plot"])
    return Summary(
        columns=columns, rows=rows, fixed=fixed, markdown=text, paths=paths, paired=paired
    )
