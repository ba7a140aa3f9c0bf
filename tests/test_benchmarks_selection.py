"""Smoke test of benchmarks/selection.py on its quick grid: every method runs, files written
(no timing assertions)."""

from __future__ import annotations

import json

import pytest
import torch
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


def test_gpu_grid_cells(selection):
    cells = dict(selection.grid_cells("gpu"))
    assert set(cells) == {
        (b, n, 3584 if n == 10000 else 4096, k)
        for b in (1, 8, 32)
        for n, k in ((576, 128), (2880, 640), (10000, 2222))
    }
    assert all(
        methods == ["resprune", "cdpruner", "cdpruner[official]", "divprune"]
        for methods in cells.values()
    )
    known = {m.label for m in selection.all_methods()}
    assert set(selection.GPU_METHODS) <= known


def test_gpu_quick_grid_times_the_prefill_share(selection, tmp_path):
    """The GPU grid's code path at toy sizes on the CPU: bfloat16 tokens, a toy decoder layer."""
    argv = ["--grid", "gpu-quick", "--threads", "1", "--dtype", "bfloat16", "--prefill-share"]
    selection.main(argv + ["--out", str(tmp_path)])
    data = json.loads((tmp_path / "selection_cpu_bfloat16.json").read_text())
    table = (tmp_path / "selection_cpu_bfloat16.md").read_text()
    assert (tmp_path / "selection_cpu_bfloat16.png").stat().st_size > 0
    settings = data["settings"]
    assert settings["dtype"] == "bfloat16" and settings["prefill_share"] is True
    assert settings["prefill_layer"] == {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_heads": 4,
    }
    assert "tokens and text in bfloat16" in table and "| prefill ms | % prefill |" in table

    rows = data["rows"]
    cells = {(r["batch"], r["tokens"], r["dim"], r["kept"]) for r in rows}
    assert cells == set(selection.GPU_QUICK_CELLS)
    for cell in cells:
        part = {
            r["method"]: r for r in rows if (r["batch"], r["tokens"], r["dim"], r["kept"]) == cell
        }
        assert set(part) == set(selection.GPU_METHODS) | {"gemm"}
        prefill = {r["prefill_s"] for r in part.values()}
        assert len(prefill) == 1 and prefill.pop() > 0  # one prefill per cell
        for r in part.values():
            assert r["skipped"] is None and r["median_s"] > 0
            assert r["prefill_share"] == pytest.approx(r["median_s"] / r["prefill_s"])
        assert part["divprune"]["path"] == "matrix"
        official = part["cdpruner[official]"]
        share = f"{100 * official['prefill_share']:.2f}"
        assert f"| cdpruner[official] |  | {1000 * official['median_s']:.2f} |" in table
        assert f"| {share} |  |" in table


def test_prefill_share_is_off_on_cpu_by_default(selection, tmp_path):
    selection.main(
        ["--grid", "gpu-quick", "--threads", "1", "--no-memory", "--methods", "divprune"]
        + ["--out", str(tmp_path)]
    )
    data = json.loads((tmp_path / "selection_cpu_float32.json").read_text())
    assert data["settings"]["dtype"] == "float32" and data["settings"]["prefill_share"] is False
    assert {r["method"] for r in data["rows"]} == {"gemm", "divprune"}
    assert all(r["prefill_s"] is None and r["prefill_share"] is None for r in data["rows"])
    # on cuda the default is on (no GPU needed to parse: the memory limit is given)
    args = selection.parse_args(["--grid", "gpu", "--device", "cuda", "--memory-limit", "1"])
    assert args.prefill_share is True and args.min_run_time == 1.0


def test_output_names_keep_dtypes_and_grids_apart(selection, tmp_path):
    def name(device, grid, dtype):
        return selection.output_stem(tmp_path, device, grid, dtype).name

    assert name("cpu", "issue", "float32") == "selection_cpu"  # unchanged for the CPU grids
    assert name("cuda:0", "gpu", "bfloat16") == "selection_cuda_bfloat16"
    assert name("cuda", "gpu", "float32") == "selection_cuda_float32"
    assert name("cuda", "issue", "float32") == "selection_cuda"


def test_divprune_path_follows_its_memory_bound(selection):
    divprune = selection.Method("divprune", "divprune")
    big = torch.empty(32, 10000, 3584, dtype=torch.bfloat16, device="meta")
    assert selection.path_of(divprune, big) == "rows"
    assert selection.path_of(divprune, torch.empty(1, 576, 8)) == "matrix"
    # the pruners select in float32: a bfloat16 batch is sized as float32
    edge = torch.empty(1, 8192, 4, dtype=torch.bfloat16, device="meta")  # 256 MiB in float32
    assert selection.path_of(divprune, edge) == "matrix"
    edge = torch.empty(1, 8193, 4, dtype=torch.bfloat16, device="meta")
    assert selection.path_of(divprune, edge) == "rows"


@pytest.mark.parametrize("seed", range(5))
def test_official_cdpruner_selects_what_prunekit_selects(selection, seed):
    g = torch.Generator().manual_seed(seed)
    n = int(torch.randint(20, 70, (1,), generator=g))
    k = int(torch.randint(1, n - 1, (1,), generator=g))
    tokens = torch.randn(1, n, 96, generator=g)  # rank n > k
    text = torch.randn(1, 5, 96, generator=g)
    official = selection.official_cdpruner_select(tokens, text, k)
    assert official.shape == (1, k) and official.dtype == torch.int64
    expected = prunekit.create_pruner("cdpruner").prune(tokens, budget=k, text_embeds=text)
    assert official.tolist() == expected.indices.tolist()


def test_official_cdpruner_batches_with_one_min_max(selection):
    """Batched, the official relevance is min-max normalised over the whole batch; the
    greedy MAP then runs per sample (prunekit's DPP on that quality as the reference)."""
    from prunekit_baselines.cdpruner import dpp_greedy_order

    g = torch.Generator().manual_seed(7)
    tokens = torch.randn(3, 40, 64, generator=g, dtype=torch.float64)
    text = torch.randn(3, 4, 64, generator=g, dtype=torch.float64)
    k = 15
    unit = torch.nn.functional.normalize
    rel = -torch.einsum("bnd,bmd->bnm", unit(tokens, dim=-1), unit(text, dim=-1)).mean(-1)
    quality = (rel - rel.min() + 1e-6) / (rel.max() - rel.min())  # one min and max for all
    expected = dpp_greedy_order(tokens, quality, k).sort(dim=1).values
    official = selection.official_cdpruner_select(tokens, text, k)
    assert torch.equal(official, expected)
    # which differs from per-sample normalisation for at least one sample here
    alone = torch.cat(
        [
            selection.official_cdpruner_select(tokens[b : b + 1], text[b : b + 1], k)
            for b in range(3)
        ]
    )
    assert not torch.equal(alone, official)
