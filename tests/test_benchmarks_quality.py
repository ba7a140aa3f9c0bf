"""Smoke test of benchmarks/quality.py: the whole command end to end on the tiny random
model (a few pruners, two budgets), and its report's arithmetic."""

from __future__ import annotations

import csv

import pytest
from repo_scripts import load_script


@pytest.fixture(scope="module")
def quality():
    return load_script("benchmarks/quality.py", "quality_benchmark")


def test_auc_is_the_mann_whitney_statistic(quality):
    # pairs (3>1, 3>2, 2>1, 2=2): (1 + 1 + 1 + 0.5) / 4
    assert quality.auc([3.0, 2.0], [1.0, 2.0]) == pytest.approx(0.875)
    assert quality.auc([1.0], [2.0]) == 0.0
    assert quality.auc([], [1.0]) != quality.auc([], [1.0])  # NaN without positives


def test_plan_covers_every_pruner_at_its_pruning_point(quality):
    args = quality.main.__globals__["argparse"].Namespace(
        budgets=[0.1, 0.2], alphas=[0.0, 1.0, 2.0], alpha_budget=0.2, llm_layer=2
    )
    sweeps = quality.plan(args, ["resprune", "random", "fastv", "visionzip", "composed"])
    text = [" ".join(s.overrides) for s in sweeps]
    assert "pruner=resprune,random budget=0.1,0.2" in text
    assert "pruner=fastv adapter.llm_layer=2 budget=0.1,0.2" in text
    assert "pruner=visionzip adapter.before_projector=true budget=0.1,0.2" in text
    assert "pruner=resprune pruner.alpha=0.0,2.0 budget=0.2" in text  # alpha=1 is resprune itself
    assert "pruner=random budget=1.0" in text  # all tokens


def test_quick_benchmark_end_to_end(quality, tmp_path):
    out, runs = tmp_path / "out", tmp_path / "runs"
    argv = ["--quick", "--pruners", "resprune", "random", "fastv", "--budgets", "0.25"]
    argv += ["--alphas", "0", "1", "--out", str(out), "--runs-dir", str(runs)]
    assert quality.main(argv) == 0
    rows = list(csv.DictReader((out / "quality.csv").open()))
    configs = {(r["group"], r["configuration"], float(r["budget"])) for r in rows}
    assert ("full", "random", 1.0) in configs
    for name in ("resprune", "random", "fastv (after LLM layer 1)"):
        assert ("pruners", name, 0.25) in configs
    assert ("alpha", "resprune (alpha=0)", 0.222) in configs  # the alpha sweep's budget
    assert ("ablation", "none x greedy_residual", 0.25) in configs
    for row in rows:
        assert int(row["n"]) == 8
        low, acc, high = (
            float(row[k]) for k in ("accuracy_ci_low", "accuracy", "accuracy_ci_high")
        )
        assert low <= acc <= high
    full = next(r for r in rows if r["group"] == "full")
    assert float(full["loyalty"]) == 1.0  # the unpruned model agrees with itself
    assert float(full["tokens_kept"]) == float(full["tokens_in"]) == 64
    text = (out / "quality.md").read_text()
    resprune = next(r for r in rows if r["configuration"] == "resprune")
    assert (
        f"| resprune | {float(resprune['accuracy']):.3f} / {float(resprune['loyalty']):.2f} |"
        in text
    )
    assert (out / "quality.png").stat().st_size > 0
    # a rerun finds every run finished and rewrites the same table
    assert quality.main(argv) == 0
    assert list(csv.DictReader((out / "quality.csv").open())) == rows
