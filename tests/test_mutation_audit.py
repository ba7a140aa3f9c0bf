"""The mutation audit (scripts/mutation_audit.py) stays runnable: every mutant's snippet is
in the current source exactly once and its tests exist, and one mutant run end to end is
killed while the unmutated copy passes."""

from __future__ import annotations

import pytest
from repo_scripts import REPO, load_script

audit = load_script("scripts/mutation_audit.py", "mutation_audit")


@pytest.mark.parametrize("mutant", audit.MUTANTS, ids=lambda m: m.name)
def test_every_mutant_applies_to_the_current_source(mutant):
    source = (REPO / mutant.path).read_text()
    assert source.count(mutant.old) == 1, (
        f"{mutant.name}: snippet not exactly once in {mutant.path}"
    )
    assert mutant.old != mutant.new
    assert all((REPO / test).is_file() for test in mutant.tests)


def test_names_are_unique_and_explanations_name_mutants():
    names = [m.name for m in audit.MUTANTS]
    assert len(names) == len(set(names))
    assert set(audit.EXPLAINED) <= set(names)


@pytest.mark.slow
def test_a_planted_bug_is_killed_end_to_end(monkeypatch):
    """The audit on one fast mutant: the baseline passes in the copy, the mutant fails."""
    mutant = audit.Mutant(
        "budget_rounds_down_fast", "prunekit/core/budget.py",
        "kept = math.floor(budget * n_tokens + 0.5 + 1e-9)", "kept = math.floor(budget * n_tokens + 1e-9)",
        ("tests/test_budget.py",), "fractional budgets round down",
    )  # fmt: skip
    rows = audit.audit([mutant], timeout=300)
    assert [r["outcome"] for r in rows] == ["killed (failed)"]
    assert "1 of 1 mutants killed" in audit.markdown(rows)
