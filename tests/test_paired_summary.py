"""The paired comparison of an ablation summary (``paired.md`` / ``paired.csv``): run folders
built by hand with known per-question records, the table's numbers checked against
:mod:`prunekit.stats` called directly on the id-aligned scores and against McNemar worked by
hand; runs whose questions differ are refused."""

from __future__ import annotations

import csv
import json
import math

import pytest
from repo_scripts import load_script

from prunekit.experiments.summary import compare_records, paired_table, write_summary
from prunekit.stats import paired_bootstrap, significant

IDS = [f"q{i}" for i in range(8)]
#: A right on 6, B right on 2; discordant pairs: A only on q1-q5 (5), B only on q6 (1)
A_RIGHT = [1, 1, 1, 1, 1, 1, 0, 0]
B_RIGHT = [1, 0, 0, 0, 0, 0, 1, 0]
#: McNemar by hand: 6 discordant pairs, min(5, 1) = 1 -> p = 2 * (C(6,0) + C(6,1)) / 2**6
MCNEMAR_P = 2 * (1 + 6) / 64
A_KL = [0.30, 0.25, 0.40, 0.35, 0.20, 0.45, 0.50, 0.30]
B_KL = [0.01, 0.02, 0.00, 0.03, 0.01, 0.02, 0.05, 0.01]
A_LOGPROB = [-0.5, -0.2, -0.9, -0.1, -0.3, -0.7, -1.2, -0.4]
B_LOGPROB = [-0.1, -0.3, -0.2, -0.1, -0.4, -0.2, -0.3, -0.6]


def records(right, kl=None, logprob=None, ids=IDS, order=None):
    """Per-question records as ``run_dataset`` writes them (``predictions.jsonl`` rows)."""
    rows = []
    for i, qid in enumerate(ids):
        row = {"id": qid, "score": float(right[i]), "correct": bool(right[i])}
        if kl is not None:
            row["kl"] = kl[i]
            row["logprob_reference"] = logprob[i]
            row["loyal"] = bool(right[i])
        rows.append(row)
    return [rows[i] for i in order] if order is not None else rows


def result(pruner, budget, n=8, data="tiny"):
    """A ``result.json`` record of one run of a ``pruner=... budget=...`` sweep."""
    name = f"budget={budget},pruner={pruner}"
    return {
        "name": name,
        "overrides": [f"pruner={pruner}", f"budget={budget}"],
        "config": {"budget": budget, "model": {"name": "tiny"}},
        "data": {"name": data, "n_samples": n},
        "metrics": {"n": n, "accuracy": 0.5, "accuracy_ci95": [0.2, 0.8], "ms_per_sample": 1.0},
    }


def write_run(out, res, rows):
    run = out / res["name"]
    run.mkdir(parents=True)
    (run / "result.json").write_text(json.dumps(res))
    (run / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def read_csv(path):
    with path.open() as f:
        return list(csv.DictReader(f))


# B's file lists the questions in another order: pairing must go by id, not by position
SHUFFLED = [3, 7, 0, 5, 1, 6, 2, 4]


@pytest.fixture
def sweep(tmp_path):
    """Two pruners at one budget, with accuracy, loyalty, KL and log-prob records."""
    a, b = result("alpha", 8), result("beta", 8)
    write_run(tmp_path, a, records(A_RIGHT, A_KL, A_LOGPROB))
    write_run(tmp_path, b, records(B_RIGHT, B_KL, B_LOGPROB, order=SHUFFLED))
    return tmp_path, [b, a]  # beta first: the baseline (B) by default


def test_paired_numbers_match_the_stats_functions_and_hand_worked_mcnemar(sweep):
    out, results = sweep
    summary = write_summary(results, out)
    assert summary.paths["paired"].name == "paired.md"
    rows = {r["metric"]: r for r in read_csv(summary.paths["paired csv"])}
    assert set(rows) == {"accuracy", "loyalty", "KL", "logprob_reference"}
    expected = {
        "accuracy": (A_RIGHT, B_RIGHT),
        "loyalty": (A_RIGHT, B_RIGHT),
        "KL": (A_KL, B_KL),
        "logprob_reference": (A_LOGPROB, B_LOGPROB),
    }
    for metric, (a, b) in expected.items():
        row = rows[metric]
        direct = paired_bootstrap(a, b, seed=0)
        assert (row["a"], row["b"], row["n"]) == ("pruner=alpha", "pruner=beta", "8")
        assert float(row["mean_a"]) == pytest.approx(sum(a) / 8, abs=1e-12)
        assert float(row["mean_b"]) == pytest.approx(sum(b) / 8, abs=1e-12)
        assert float(row["difference"]) == pytest.approx((sum(a) - sum(b)) / 8, abs=1e-12)
        assert float(row["ci_low"]) == pytest.approx(direct.low, abs=1e-12)
        assert float(row["ci_high"]) == pytest.approx(direct.high, abs=1e-12)
        assert row["verdict"] == significant(direct)
    for metric in ("accuracy", "loyalty"):
        assert (rows[metric]["a_only"], rows[metric]["b_only"]) == ("5", "1")
        assert float(rows[metric]["mcnemar_p"]) == pytest.approx(MCNEMAR_P, abs=1e-12)
    for metric in ("KL", "logprob_reference"):  # continuous scores: no McNemar
        assert rows[metric]["mcnemar_p"] == rows[metric]["a_only"] == ""
    # every KL of A exceeds every KL of B: the interval excludes zero whatever the resamples
    assert rows["KL"]["verdict"] == "A > B" and float(rows["KL"]["ci_low"]) > 0
    markdown = summary.paths["paired"].read_text()
    assert (
        "| tiny | 8 | pruner=alpha | pruner=beta | accuracy | 8 | 0.7500 | 0.2500 | +0.5000 |"
        in (markdown)
    )
    assert f"{MCNEMAR_P:.3g} (5 / 1)" in markdown
    # the summary says which differences exclude zero, and where the table is
    text = summary.paths["markdown"].read_text()
    assert "Paired per question against the first configuration at each budget (paired.md)" in text
    assert "- KL: pruner=alpha > pruner=beta at budget 8 on tiny (+" in text
    assert text == summary.markdown


def test_records_are_matched_by_id(sweep):
    """Reading B's shuffled file by position would pair other questions: other numbers."""
    a = records(A_RIGHT, A_KL, A_LOGPROB)
    b = records(B_RIGHT, B_KL, B_LOGPROB, order=SHUFFLED)
    by_id = {r["metric"]: r for r in compare_records(a, b)}
    by_position = paired_bootstrap(A_KL, [r["kl"] for r in b], seed=0)
    assert by_id["KL"]["A - B"] == pytest.approx(by_position.difference)  # the mean is the same
    assert by_id["KL"]["low"] != pytest.approx(by_position.low)  # the pairing is not
    assert by_id["KL"]["low"] == pytest.approx(paired_bootstrap(A_KL, B_KL, seed=0).low)


def test_baseline_option_and_budgets(tmp_path):
    """Runs are compared at their own budget; ``baseline`` picks the reference by overrides."""
    results = []
    for budget in (8, 16):
        for pruner, right in (("alpha", A_RIGHT), ("beta", B_RIGHT), ("gamma", [1] * 8)):
            res = result(pruner, budget)
            write_run(tmp_path, res, records(right))
            results.append(res)
    default = write_summary(results, tmp_path).paired
    assert [(r["budget"], r["A"], r["B"]) for r in default.rows] == [
        (8, "pruner=beta", "pruner=alpha"),
        (8, "pruner=gamma", "pruner=alpha"),
        (16, "pruner=beta", "pruner=alpha"),
        (16, "pruner=gamma", "pruner=alpha"),
    ]
    assert default.refused == []
    chosen = write_summary(results, tmp_path, baseline="pruner=beta").paired
    pairs = [(r["budget"], r["A"], r["B"]) for r in chosen.rows]
    assert pairs == [
        (b, p, "pruner=beta") for b in (8, 16) for p in ("pruner=alpha", "pruner=gamma")
    ]
    alpha = chosen.rows[0]
    assert alpha["A - B"] == pytest.approx(0.5) and (alpha["a_only"], alpha["b_only"]) == (5, 1)
    # the label works as well as the overrides
    assert paired_table(results, [None] * 6, baseline="pruner=gamma").rows == []
    with pytest.raises(ValueError, match="baseline 'pruner=delta' matches no run"):
        write_summary(results, tmp_path, baseline="pruner=delta")


def test_runs_with_other_question_ids_are_refused(tmp_path):
    a, b, c = result("alpha", 8), result("beta", 8), result("gamma", 8)
    write_run(tmp_path, a, records(A_RIGHT))
    write_run(tmp_path, b, records(B_RIGHT, ids=[f"q{i}" for i in range(1, 9)]))
    write_run(tmp_path, c, records(B_RIGHT))
    with pytest.raises(ValueError, match="answered different questions .*matched by id"):
        compare_records(records(A_RIGHT), records(B_RIGHT, ids=[f"q{i}" for i in range(1, 9)]))
    summary = write_summary([a, b, c], tmp_path)
    assert {r["A"] for r in summary.paired.rows} == {"pruner=gamma"}
    assert len(summary.paired.refused) == 1
    reason = summary.paired.refused[0]
    assert reason.startswith("pruner=beta vs pruner=alpha (budget 8, tiny): ")
    assert "1 ids only in pruner=beta, e.g. ['q8']; 1 only in pruner=alpha, e.g. ['q0']" in reason
    assert "Not compared:\n- pruner=beta vs pruner=alpha" in summary.paths["paired"].read_text()
    assert "Not compared: 1" in summary.markdown
    duplicated = records(A_RIGHT)
    duplicated[1]["id"] = "q0"
    with pytest.raises(ValueError, match="question id 'q0' recorded twice"):
        compare_records(duplicated, records(A_RIGHT))


def test_runs_without_records_get_no_paired_files(tmp_path):
    results = [result("alpha", 8), result("beta", 8)]  # no run folders
    summary = write_summary(results, tmp_path)
    assert set(summary.paths) == {"markdown", "csv", "plot"}
    assert not (tmp_path / "paired.md").exists()
    assert summary.paired.rows == [] and summary.paired.refused == []
    # one run with records, its baseline without: said so, not guessed
    write_run(tmp_path, results[1], records(B_RIGHT))
    paired = write_summary(results, tmp_path).paired
    assert paired.rows == [] and "no per-question records (predictions.jsonl)" in paired.refused[0]


def test_vqa_scores_get_an_interval_but_no_mcnemar():
    a = records([1.0, 0.3, 0.6, 1.0, 0.0, 0.6, 1.0, 0.3])
    b = records(B_RIGHT)
    (row,) = [r for r in compare_records(a, b) if r["metric"] == "accuracy"]
    assert row["McNemar p"] is None and row["a_only"] is None
    assert row["A - B"] == pytest.approx((4.8 - 2) / 8)
    assert not math.isnan(row["low"])


# --------------------------------------------------------------------------- quality benchmark


@pytest.fixture(scope="module")
def quality():
    return load_script("benchmarks/quality.py", "quality_benchmark")


def test_quality_report_pairs_every_pruner_with_the_reference(quality):
    """The benchmark's paired tables: every other configuration minus ResPrune at its budget
    on each data set, the numbers of :func:`paired_bootstrap` / McNemar on the same questions."""

    def row(dataset, name, budget, group, right, kl):
        res = result(name, budget, data=dataset)
        return {
            "dataset": dataset,
            "group": group,
            "label": name,
            "budget": float(budget),
            "result": res,
            "records": records(right, kl, kl),
        }

    rows = [
        row("easyvqa", "random", 1.0, "full", [1] * 8, [0.0] * 8),  # all tokens: not compared
        row("easyvqa", "resprune", 0.25, "pruners", B_RIGHT, B_KL),
        row("easyvqa", "random", 0.25, "pruners", A_RIGHT, A_KL),
        row("easyvqa", "resprune", 0.5, "pruners", A_RIGHT, A_KL),
        row("easyvqa", "random", 0.5, "pruners", A_RIGHT, A_KL),
        row("shapes", "random", 0.25, "pruners", A_RIGHT, A_KL),  # no reference on shapes
    ]
    paired = quality.paired_comparisons(rows, ["easyvqa", "shapes"], "resprune")
    assert {(r["A"], r["B"], r["budget"]) for r in paired.rows} == {
        ("random", "resprune", 0.25),
        ("random", "resprune", 0.5),
    }
    lines = quality.paired_section(
        paired, "easyvqa", "resprune", ["resprune", "random"], [0.25, 0.5]
    )
    text = "\n".join(lines)
    assert "## easyvqa: paired differences against resprune" in text
    acc = paired_bootstrap(A_RIGHT, B_RIGHT, seed=0)
    kl = paired_bootstrap(A_KL, B_KL, seed=0)
    acc_cell = f"+0.500 [{acc.low:+.3f}, {acc.high:+.3f}] p={MCNEMAR_P:.2g}"
    if significant(acc) != "level":
        acc_cell = f"**{acc_cell}**"
    # at 0.5 both ran the same answers: a zero difference, level, McNemar p = 1
    assert f"| random | {acc_cell} | +0.000 [+0.000, +0.000] p=1 |" in lines
    kl_cell = f"**{kl.difference:+.3f} [{kl.low:+.3f}, {kl.high:+.3f}]**"
    assert f"| random | {kl_cell} | +0.000 [+0.000, +0.000] |" in lines
    assert quality.paired_section(paired, "shapes", "resprune", ["random"], [0.25]) == []
    assert quality.paired_comparisons(rows[-1:], ["shapes"], "resprune") is None
