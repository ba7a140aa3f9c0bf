"""Smoke test of benchmarks/selection.py on its quick grid: every method runs, files written
(no timing assertions)."""

from __future__ import annotations

import json

import pytest
from repo_scripts import load_script

import prunekit


@pytest.fixture(scope="module")
def selection():
    return load_script("benchmarks/selection.py", "selection_benchmark")


def test_quick_grid_writes_every_method(selection, tmp_path):
    selection.main(["--grid", "quick", "--threads", "1", "--out", str(tmp_path)])
    data = json.loads((tmp_path / "selection_cpu.json").read_text())
    table = (tmp_path / "selection_cpu.md").read_text()
    assert (tmp_path / "selection_cpu.png").stat().st_size > 0
    assert "Machine: " in table and "torch " in table
    assert data["settings"]["grid"] == "quick"

    rows = data["rows"]
    methods = {m.label for m in selection.all_methods()}
    assert set(prunekit.list_pruners()) - {"composed"} <= methods
    cells = {(r["batch"], r["tokens"], r["dim"], r["kept"]) for r in rows}
    assert cells == set(selection.QUICK_CELLS)
    for cell in cells:
        part = {
            r["method"]: r for r in rows if (r["batch"], r["tokens"], r["dim"], r["kept"]) == cell
        }
        assert set(part) == methods | {"gemm"}
        for name, r in part.items():
            assert r["skipped"] is None and r["median_s"] > 0 and r["runs"] >= 1
            assert r["peak_bytes"] is None or r["peak_bytes"] >= 0
            assert (r["x_gemm"] is None) == (name == "gemm")
        assert part["resprune[gram]"]["path"] == "gram"
        assert part["resprune[rows]"]["path"] == "rows"
        assert part["resprune[rows]"]["same_as_gram"] is True
        assert f"| {cell[0]} | {cell[1]} | {cell[2]} | {cell[3]} | resprune |" in table


def test_grids_hold_the_issue_configurations(selection):
    issue = dict(selection.grid_cells("issue"))
    assert set(issue) == {(1, 576, 4096, 128), (8, 576, 4096, 128), (1, 2880, 4096, 640)} | {
        (1, 10000, 3584, 1111)
    }
    assert "resprune[gram]" in issue[(1, 10000, 3584, 1111)]
    full = [cell for cell, _ in selection.grid_cells("full")]
    assert len(full) == 3 * 3 * 3 * 2
    assert {(n, k) for _, n, _, k in full} >= {(576, 64), (576, 128), (576, 192), (2880, 640)}
    assert (10000, 1111) in {(n, k) for _, n, _, k in full}


def test_skips_are_recorded_not_dropped(selection, tmp_path):
    selection.main(
        [
            "--grid",
            "quick",
            "--threads",
            "1",
            "--methods",
            "resprune",
            "--cell-budget",
            "0",
            "--no-memory",
            "--out",
            str(tmp_path),
        ]
    )
    rows = json.loads((tmp_path / "selection_cpu.json").read_text())["rows"]
    assert {r["method"] for r in rows} == {"gemm", "resprune"}
    assert all(r["skipped"] and r["median_s"] is None and r["estimate_s"] > 0 for r in rows)
