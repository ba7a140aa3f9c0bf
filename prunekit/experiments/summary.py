"""The summary of an ablation: a markdown and a CSV table, and a plot of metric against budget.

One table row per configuration (run). The columns are the overridden keys
whose values differ between the runs (the keys fixed for the whole sweep are
listed above the table), then the number of samples, accuracy with its 95 %
Wilson interval, loyalty with its interval (when measured), the visual tokens
kept per image and the time per sample. The plot has one line per
configuration without its budget, metric against budget.
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
            }
        )
        row["_result"] = result
        rows.append(row)
    has_loyalty = any(r["loyalty"] is not None for r in rows)
    columns = [k for k in varying if k != "budget"] + ["budget"]
    columns += [c for c in METRIC_COLUMNS if has_loyalty or not c.startswith("loyalty")]
    return columns, rows, fixed


def markdown_table(columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> str:
    """A markdown table of ``rows`` (dicts) with ``columns`` in this order."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        cells = [
            _fmt(row.get(c), 1 if c == "ms/sample" else 3) if c != "budget" else str(row.get(c))
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
    metrics += ["tokens_kept", "tokens_in", "ms_per_sample", "run"]
    with Path(path).open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(keys + metrics)
        for row in rows:
            m = row["_result"]["metrics"]
            values = [row[k] for k in keys] + [m["n"], m["accuracy"], *m["accuracy_ci95"]]
            if has_loyalty:
                values += [m.get("loyalty"), *m.get("loyalty_ci95", [None, None])]
            values += [m.get("tokens_kept"), m.get("tokens_in"), m.get("ms_per_sample")]
            values.append(row["_result"]["name"])
            writer.writerow(["" if v is None else v for v in values])


def plot(
    results: Sequence[dict[str, Any]],
    rows: Sequence[dict[str, Any]],
    columns: Sequence[str],
    path: Path,
) -> None:
    """Accuracy (and loyalty) against budget, one line per configuration, 95 % intervals as bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    config_keys = [c for c in columns[: columns.index("budget")]]
    metrics = ["accuracy"] + (["loyalty"] if any(r["loyalty"] is not None for r in rows) else [])
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 4), squeeze=False)
    lines: dict[str, list[tuple[float, dict[str, Any]]]] = {}
    for result, row in zip(results, rows):
        label = ", ".join(f"{k}={row[k]}" for k in config_keys) or "all runs"
        lines.setdefault(label, []).append((float(result["config"]["budget"]), result["metrics"]))
    for ax, metric in zip(axes[0], metrics):
        for label, points in lines.items():
            points.sort(key=lambda p: p[0])
            xs = [p[0] for p in points]
            ys = [p[1][metric] for p in points]
            lo = [max(0.0, y - p[1][f"{metric}_ci95"][0]) for y, p in zip(ys, points)]
            hi = [max(0.0, p[1][f"{metric}_ci95"][1] - y) for y, p in zip(ys, points)]
            ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label=label)
        ax.set_xlabel("budget")
        ax.set_ylabel(metric)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.set_title(f"{metric} vs budget (95 % Wilson intervals)")
    axes[0][-1].legend(fontsize="small", loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_summary(results: Sequence[dict[str, Any]], out_dir: Path) -> Summary:
    """Write ``summary.md``, ``summary.csv`` and ``summary.png`` into ``out_dir``."""
    out_dir = Path(out_dir)
    columns, rows, fixed = table(results)
    body = markdown_table(columns, rows)
    header = ", ".join(f"{k}={v}" for k, v in fixed.items())
    text = (f"Fixed: {header}\n\n" if header else "") + body + "\n"
    paths = {
        "markdown": out_dir / "summary.md",
        "csv": out_dir / "summary.csv",
        "plot": out_dir / "summary.png",
    }
    paths["markdown"].write_text(text)
    write_csv(columns, rows, paths["csv"])
    plot(results, rows, columns, paths["plot"])
    return Summary(columns=columns, rows=rows, fixed=fixed, markdown=text, paths=paths)
