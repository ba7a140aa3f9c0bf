"""The summary of an ablation: a markdown and a CSV table, and a plot of metric against tokens kept.

One table row per configuration (run). The columns are the overridden keys
whose values differ between the runs (the keys fixed for the whole sweep are
listed above the table), then the number of samples, accuracy with its 95 %
Wilson interval, loyalty with its interval (when measured), the visual tokens
kept per image and the time per sample; then, when the runs have them, POPE's F1 and
yes-ratio, the prefill time per sample and the prefill FLOPs speed-up. The plot
(:func:`summary_figure`) has one curve per configuration without its budget, metric
against the visual tokens kept, with the all-tokens value as a reference line and the
model, data and question count in its title.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prunekit.experiments.config import override_key

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


@dataclass
class Summary:
    """What :func:`write_summary` produced."""

    columns: list[str]
    rows: list[dict[str, Any]]
    fixed: dict[str, str]
    markdown: str
    paths: dict[str, Path]


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
                "kept": (
                    f"{m['tokens_kept']:.1f} / {m['tokens_in']:.0f}" if "tokens_kept" in m else ""
                ),
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
    metrics += ["tokens_kept", "tokens_in", "ms_per_sample"]
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
            values += [m.get("tokens_kept"), m.get("tokens_in"), m.get("ms_per_sample")]
            saved = row["_result"].get("efficiency") or {}
            values += [m.get("prefill_ms_per_sample"), m.get("decode_ms_per_sample")]
            values += [saved.get("flops_speedup"), saved.get("kv_cache_ratio")]
            values += [m.get("pope", {}).get("f1"), m.get("pope", {}).get("yes_ratio")]
            values.append(row["_result"]["name"])
            writer.writerow(["" if v is None else v for v in values])


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
) -> Summary:
    """Write ``summary.md``, ``summary.csv`` and ``summary.png`` into ``out_dir``.

    ``failed``: the ``failure.json`` records of the sweep's failed runs, listed under
    the markdown table (they have no row), so that the table never hides them.
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
    paths["markdown"].write_text(text)
    write_csv(columns, rows, paths["csv"])
    plot(results, rows, columns, paths["plot"])
    return Summary(columns=columns, rows=rows, fixed=fixed, markdown=text, paths=paths)
