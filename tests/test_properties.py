"""Property-based tests of the prune API on random shapes, budgets and masks."""

from __future__ import annotations

import pytest
import torch
from conftest import case_id, pruner_cases
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import prunekit
from prunekit import PAD_INDEX, num_kept

budgets = st.one_of(
    st.integers(min_value=1, max_value=60),
    st.floats(min_value=1e-3, max_value=1.0, allow_nan=False, exclude_min=False),
)


@st.composite
def problems(draw):
    b = draw(st.integers(1, 4))
    n = draw(st.integers(1, 40))
    d = draw(st.integers(1, 12))
    m = draw(st.integers(0, 4))
    seed = draw(st.integers(0, 2**31 - 1))
    lengths = draw(st.lists(st.integers(1, n), min_size=b, max_size=b))
    rank = draw(st.sampled_from(["full", "low", "duplicates"]))
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(b, n, d, generator=g)
    if rank == "low":  # rank 1 or 2: the budget often exceeds the rank
        tokens = torch.randn(b, n, 2, generator=g) @ torch.randn(b, 2, d, generator=g)
    elif rank == "duplicates":
        tokens = tokens[:, torch.randint(0, max(1, n // 3), (n,), generator=g)]
    mask = torch.arange(n).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)
    text = torch.randn(b, m, d, generator=g) if m else None
    return tokens, text, mask, draw(budgets)


@pytest.mark.parametrize("case", pruner_cases(), ids=case_id)
@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problem=problems())
def test_prune_properties(case, problem):
    tokens, text, mask, budget = problem
    name, kwargs = case
    pruner = prunekit.create_pruner(name, **kwargs)
    result = pruner.prune(tokens, budget=budget, text_embeds=text, token_mask=mask)
    lengths = mask.sum(1).tolist()
    expected = [num_kept(n, budget) for n in lengths]
    assert result.counts.tolist() == expected
    assert result.indices.shape[1] == max(expected)
    assert not (result.mask & ~mask).any(), "a padded token was kept"
    assert result.mask.sum(1).tolist() == expected
    for row, count in zip(result.indices, expected):
        assert (row[count:] == PAD_INDEX).all()
        assert (row[:count].diff() > 0).all()
    # each sample alone gives the same selection
    for i, n in enumerate(lengths):
        alone = pruner.prune(
            tokens[i : i + 1, :n],
            budget=budget,
            text_embeds=None if text is None else text[i : i + 1],
        )
        assert torch.equal(alone.indices[0], result.split()[i])
