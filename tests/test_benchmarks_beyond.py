"""benchmarks/beyond.py: who is paired with whom, and the whole study end to end on the tiny
random model (two budgets, two energies, one mass)."""

from __future__ import annotations

import csv

import pytest
from repo_scripts import load_script


@pytest.fixture(scope="module")
def beyond():
    return load_script("benchmarks/beyond.py", "beyond_benchmark")


def _row(group, label, budget, tokens, dataset="d"):
    return {
        "dataset": dataset,
        "group": group,
        "label": label,
        "budget": budget,
        "metrics": {"tokens_kept": tokens},
    }


def test_pairings(beyond):
    fixed = [_row("fixed", "resprune", b, t) for b, t in ((0.0625, 16), (0.111, 28), (0.222, 57))]
    base = [_row("fixed", "fastervlm", b, t) for b, t in ((0.0625, 16), (0.111, 28))]
    adaptive = [
        _row("adaptive", "resprune (energy 0.999)", 1.0, 24.0),  # nearest fixed: 28
        _row("adaptive", "fastervlm (score mass 0.5)", 1.0, 17.0),  # nearest fastervlm: 16
    ]
    merge = [_row("merge", "resprune (merge=lstsq)", 0.111, 28)]
    attention = "llm_attention x greedy_residual (after LLM layer 2)"
    relevance = [
        _row("relevance", attention, 0.0625, 16),
        _row("relevance", "none x greedy_residual (after LLM layer 2)", 0.0625, 16),
    ]
    other_data = [_row("fixed", "resprune", 0.111, 28, dataset="e")]
    rows = fixed + base + adaptive + merge + relevance + other_data
    pairs = {(a["label"], b["label"], b["budget"]) for a, b in beyond.pairings(rows)}
    assert pairs == {
        ("resprune (energy 0.999)", "resprune", 0.111),
        ("fastervlm (score mass 0.5)", "fastervlm", 0.0625),
        ("resprune (merge=lstsq)", "resprune", 0.111),
        (attention, "none x greedy_residual (after LLM layer 2)", 0.0625),
        (attention, "resprune", 0.0625),
        ("none x greedy_residual (after LLM layer 2)", "resprune", 0.0625),
    }
    # llm_attention is compared first with no relevance at its own pruning point
    first = next(b for a, b in beyond.pairings(rows) if a["label"] == attention)
    assert first["label"].startswith("none")


def test_quick_study_end_to_end(beyond, tmp_path):
    out, runs = tmp_path / "out", tmp_path / "runs"
    argv = ["--quick", "--budgets", "0.111", "0.222", "--low-budgets", "0.111"]
    argv += ["--energies", "0.999", "0.99999", "--masses", "0.5"]
    argv += ["--out", str(out), "--runs-dir", str(runs)]
    assert beyond.main(argv) == 0
    rows = list(csv.DictReader((out / "beyond.csv").open()))
    configs = {(r["group"], r["configuration"], float(r["budget"])) for r in rows}
    assert ("adaptive", "resprune (energy 0.999)", 1.0) in configs
    assert ("adaptive", "fastervlm (score mass 0.5)", 1.0) in configs
    assert ("merge", "resprune (merge=lstsq, norm)", 0.111) in configs
    assert ("relevance", "logit_lens x greedy_residual", 0.111) in configs
    assert ("relevance", "llm_attention x greedy_residual (after LLM layer 1)", 0.111) in configs
    adaptive = {r["configuration"]: r for r in rows if r["group"] == "adaptive"}
    # a larger energy share keeps at least as many tokens
    assert float(adaptive["resprune (energy 0.99999)"]["tokens_kept"]) >= float(
        adaptive["resprune (energy 0.999)"]["tokens_kept"]
    )
    paired = list(csv.DictReader((out / "beyond_paired.csv").open()))
    pairs = {(p["A"], p["B"]) for p in paired if p["metric"] == "accuracy"}
    assert ("resprune (merge=nearest)", "resprune") in pairs
    for p in paired:
        assert float(p["low"]) <= float(p["A - B"]) <= float(p["high"])
    text = (out / "beyond.md").read_text()
    for heading in ("Fixed vs adaptive budgets", "Drop vs merge", "Text relevance x greedy"):
        assert heading in text
    assert (out / "beyond.png").stat().st_size > 0
