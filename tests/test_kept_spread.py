"""The spread of tokens kept: the handle's report, the accounting's summary, the bench metrics
and the summary table, for pruners whose count varies by sample (adaptive budgets)."""

from __future__ import annotations

import csv
import math
import statistics
from dataclasses import dataclass

import pytest
import torch
from tiny_models import left_pad, prompt_ids, tiny_llama_config, tiny_llava

import prunekit
from prunekit import KeptTokens, Picks, PruneInputs, TokenPruner, accounting
from prunekit.experiments.bench import Generation, score, wilson_interval
from prunekit.experiments.datasets import Sample
from prunekit.experiments.summary import kept_cell, table, write_summary


@dataclass
class NormScores(TokenPruner):
    """Scores = token norms to the 8th power (skewed, so the mass needs different counts per
    image), priority order by decreasing norm (a scoring pruner for the tests)."""

    name = "norm_scores"

    def select(self, inputs: PruneInputs, num_keep: int) -> Picks:
        norms = inputs.tokens.norm(dim=-1)
        key = norms.masked_fill(~inputs.token_mask, -math.inf)
        order = torch.sort(key, dim=1, descending=True, stable=True).indices[:, :num_keep]
        return Picks(order=order, scores=norms**8)


# --------------------------------------------------------------------------- KeptTokens


def test_kept_tokens_of_hand_worked_counts():
    kept = KeptTokens.of([3, 5, 8, 8], tokens_in=[16, 16, 16, 12])
    # mean 6; squared deviations 9, 1, 4, 4: population variance 18 / 4
    assert (kept.rows, kept.mean, kept.min, kept.max) == (4, 6.0, 3, 8)
    assert kept.std == pytest.approx(math.sqrt(4.5), rel=1e-12)
    assert kept.tokens_in == 15.0 and kept.ragged
    assert kept.summary() == "kept 6.0 ± 2.1 (3-8) of 15 visual tokens per row over 4 rows"
    same = KeptTokens.of([4, 4])
    assert same.std == 0.0 and not same.ragged
    assert same.summary() == "kept 4 visual tokens per row over 2 rows"
    assert KeptTokens.of([7], [9]).summary() == "kept 7 of 9 visual tokens per row over 1 row"


@pytest.mark.parametrize(
    ("kept", "tokens_in", "match"),
    [([], None, "at least one row"), ([1, 2], [3], "one count per row"), ([-1], None, "kept")],
)
def test_kept_tokens_refuses_bad_counts(kept, tokens_in, match):
    with pytest.raises(ValueError, match=match):
        KeptTokens.of(kept, tokens_in)


# --------------------------------------------------------------------------- the handle


@pytest.fixture(scope="module")
def ragged_run():
    """A tiny LLaVA pruned before the LLM by score_mass over token norms, twice (2 + 1 images)."""
    model = tiny_llava(initializer_range=0.2)
    pruner = prunekit.create_pruner("score_mass", pruner=NormScores(), mass=0.9)
    rows = [prompt_ids([7, 8, 9], 16), prompt_ids([10], 16)]
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with prunekit.attach(model, pruner, budget=1.0) as handle:
        ids, mask = left_pad(rows)
        model(input_ids=ids, attention_mask=mask, pixel_values=pixels[:2])
        ids, mask = left_pad(rows[:1])
        model(input_ids=ids, attention_mask=mask, pixel_values=pixels[2:])
    return model, handle


def test_handle_reports_the_spread_over_its_recorded_rows(ragged_run):
    _, handle = ragged_run
    counts = [int(c) for r in handle.results for c in r.counts]
    assert len(counts) == 3 and len(set(counts)) > 1  # the images kept different counts
    report = handle.kept_tokens()
    assert report.rows == 3 and report.tokens_in == 16.0
    assert report.mean == pytest.approx(statistics.fmean(counts), rel=1e-12)
    assert report.std == pytest.approx(statistics.pstdev(counts), rel=1e-12)
    assert (report.min, report.max) == (min(counts), max(counts))
    assert f"({min(counts)}-{max(counts)}) of 16 visual tokens" in report.summary()


def test_handle_kept_tokens_needs_a_pruning_call():
    handle = prunekit.AttachHandle(model=torch.nn.Linear(1, 1), pruner=NormScores(), budget=4)
    with pytest.raises(ValueError, match="needs a pruning call first"):
        handle.kept_tokens()


def test_savings_mention_the_spread_when_the_prompts_differ(ragged_run):
    model, handle = ragged_run
    counts = [int(c) for r in handle.results for c in r.counts]
    saved = handle.savings(text_tokens=5)
    assert saved.kept_per_sequence == tuple(counts)
    spread = saved.kept_spread
    assert spread.mean == pytest.approx(statistics.fmean(counts), rel=1e-12)
    assert spread.std == pytest.approx(statistics.pstdev(counts), rel=1e-12)
    expected = f"(per prompt {spread.mean:.1f} ± {spread.std:.1f}, {min(counts)}-{max(counts)})"
    assert f"48 -> {sum(counts)} visual tokens {expected} (+ 15 text)" in saved.summary()
    # the totals are those of the rows' savings added up, as before
    rows = [accounting.savings(model.config, 16, k, 5, dtype=torch.float32) for k in counts]
    assert saved == rows[0] + rows[1] + rows[2]


def test_savings_summary_without_spread():
    config = tiny_llama_config()
    same = accounting.savings(config, 16, 4, 5) + accounting.savings(config, 16, 4, 3)
    assert same.kept_spread.std == 0.0 and "per prompt" not in same.summary()
    assert same.summary().startswith("32 -> 8 visual tokens (+ 8 text) over 2 prompt(s)")
    by_hand = accounting.Savings(16, 4, 5, 10, 5, 8, 4, num_layers=2, sequences=2)
    assert by_hand.kept_spread is None and "per prompt" not in by_hand.summary()
    ragged = accounting.savings(config, 16, 4, 5) + accounting.savings(config, 16, 8, 3)
    assert "12 visual tokens (per prompt 6.0 ± 2.0, 4-8) (+ 8 text)" in ragged.summary()


# --------------------------------------------------------------------------- bench metrics


def samples(n: int) -> list[Sample]:
    return [Sample(id=str(i), image=None, question="q", answer="red") for i in range(n)]


def test_bench_metrics_hold_the_spread():
    generation = Generation(answers=["red"] * 4, kept=[3, 5, 8, 8], tokens_in=[16] * 4)
    metrics, rows = score(samples(4), generation)
    assert metrics["tokens_kept"] == 6.0 and metrics["tokens_in"] == 16.0
    assert metrics["tokens_kept_std"] == pytest.approx(math.sqrt(4.5), rel=1e-12)
    assert (metrics["tokens_kept_min"], metrics["tokens_kept_max"]) == (3, 8)
    assert [r["kept"] for r in rows] == [3, 5, 8, 8]
    unpruned, _ = score(samples(2), Generation(answers=["red"] * 2))
    assert "tokens_kept" not in unpruned and "tokens_kept_std" not in unpruned


# --------------------------------------------------------------------------- summary table


def record(name: str, budget, kept: float, **spread) -> dict:
    """A ``result.json`` as the runner writes it (``spread``: the new keys, if any)."""
    metrics = {
        "n": 4,
        "accuracy": 0.5,
        "accuracy_ci95": list(wilson_interval(2, 4)),
        "ms_per_sample": 1.0,
        "tokens_kept": kept,
        "tokens_in": 16.0,
        **spread,
    }
    return {
        "name": name,
        "overrides": [f"pruner={name}", f"budget={budget}"],
        "config": {"budget": budget, "model": {"name": "tiny"}},
        "data": {"name": "tiny", "n_samples": 4},
        "metrics": metrics,
    }


ADAPTIVE = record(
    "score_mass", 1.0, 6.0, tokens_kept_std=math.sqrt(4.5), tokens_kept_min=3, tokens_kept_max=8
)
FIXED = record("resprune", 6, 6.0, tokens_kept_std=0.0, tokens_kept_min=6, tokens_kept_max=6)
OLD = record("composed", 6, 6.0)  # written before the spread was recorded


def test_kept_cell_shows_the_spread_only_when_there_is_one():
    assert kept_cell(ADAPTIVE["metrics"]) == "6.0 ± 2.1 / 16"
    assert kept_cell(FIXED["metrics"]) == "6.0 / 16"
    assert kept_cell(OLD["metrics"]) == "6.0 / 16"
    assert kept_cell({"n": 1}) == ""


def test_summary_table_and_csv_carry_the_spread(tmp_path):
    results = [ADAPTIVE, FIXED, OLD]
    _, rows, _ = table(results)
    assert [r["kept"] for r in rows] == ["6.0 ± 2.1 / 16", "6.0 / 16", "6.0 / 16"]
    summary = write_summary(results, tmp_path, records=[None, None, None])
    assert "| score_mass | 1.0 | 4 | 0.500 | " in summary.markdown
    assert "| 6.0 ± 2.1 / 16 |" in summary.markdown
    with summary.paths["csv"].open() as f:
        written = list(csv.DictReader(f))
    assert float(written[0]["tokens_kept_std"]) == pytest.approx(math.sqrt(4.5))
    assert (written[0]["tokens_kept_min"], written[0]["tokens_kept_max"]) == ("3", "8")
    assert (written[1]["tokens_kept_std"], written[1]["tokens_kept_min"]) == ("0.0", "6")
    assert written[2]["tokens_kept_std"] == written[2]["tokens_kept_max"] == ""
    assert [float(w["tokens_kept"]) for w in written] == [6.0] * 3
