"""Smoke test of benchmarks/prefill.py in its --quick mode: files written, theory right (no timing)."""

from __future__ import annotations

import json

import pytest
from repo_scripts import load_script


@pytest.fixture(scope="module")
def prefill():
    return load_script("benchmarks/prefill.py", "prefill_benchmark")


def test_quick_run_writes_the_report(prefill, tmp_path):
    prefill.main(
        ["--quick", "--threads", "1", "--pruners", "resprune", "random", "--out", str(tmp_path)]
    )
    data = json.loads((tmp_path / "prefill_cpu.json").read_text())
    assert (tmp_path / "prefill_cpu.png").stat().st_size > 0
    table = (tmp_path / "prefill_cpu.md").read_text()
    assert "Machine: " in table and "torch " in table

    rows = data["rows"]
    assert {(r["kept_tokens"], r["pruner"]) for r in rows} == {
        (k, p) for k in (8, 16) for p in ("resprune", "random")
    }
    for r in rows:
        n, t, k = r["visual_tokens"], r["text_tokens"], r["kept_tokens"]
        assert (n, t) == (36, 4)
        assert r["theoretical_speedup"] == pytest.approx((n + t) / (k + t))
        assert r["layers_total"] == 2 * r["layers_measured"]
        assert r["full_prefill_ms"] == pytest.approx(r["layers_total"] * r["full_ms_per_layer"])
        pruned = r["layers_total"] * r["pruned_ms_per_layer"] + r["selection_ms"]
        assert r["pruned_prefill_ms"] == pytest.approx(pruned)
        assert r["measured_speedup"] == pytest.approx(r["full_prefill_ms"] / pruned)
        assert r["ratio"] == pytest.approx(r["measured_speedup"] / r["theoretical_speedup"])
        assert f"| {n} | {t} | {k} | {r['pruner']} |" in table
    assert data["machine"]["cpu_cores"] >= 1


def test_llava_7b_shape_and_theory(prefill):
    shape = prefill.llava_7b_shape(32)
    assert (shape.hidden_size, shape.num_heads, shape.num_kv_heads, shape.intermediate_size) == (
        4096,
        32,
        32,
        11008,
    )
    from prunekit import accounting

    s = accounting.savings(shape, 576, 128, 32)
    assert s.theoretical_speedup == pytest.approx(608 / 160)
    assert prefill.head_share(shape, 608) < 1e-4  # why the estimate may leave the head out


def test_unknown_pruner_is_refused(prefill):
    with pytest.raises(SystemExit, match="not_a_pruner"):
        prefill.available_pruners(["resprune", "not_a_pruner"])
