"""Contract tests run over every registered pruner (and every strategy composition).

A new pruner registered through a plugin is tested here for free.
"""

from __future__ import annotations

import pytest
import torch
from conftest import case_id, pruner_cases

import prunekit
from prunekit import PAD_INDEX, num_kept

CASES = pruner_cases()


def make(case):
    name, kwargs = case
    return prunekit.create_pruner(name, **kwargs)


def inputs(generator, batch=3, n=40, d=12, m=3):
    tokens = torch.randn(batch, n, d, generator=generator)
    text = torch.randn(batch, m, d, generator=generator)
    return tokens, text


def check_well_formed(result, tokens, counts):
    b, n, _ = tokens.shape
    assert result.indices.dtype == torch.int64
    assert result.mask.shape == (b, n) and result.mask.dtype == torch.bool
    assert result.counts.tolist() == list(counts)
    for row, count, mask_row in zip(result.indices, counts, result.mask):
        real = row[:count]
        assert (row[count:] == PAD_INDEX).all()
        assert (real[1:] > real[:-1]).all(), "indices strictly ascending (so unique)"
        assert ((real >= 0) & (real < n)).all()
        expected = torch.zeros(n, dtype=torch.bool)
        expected[real] = True
        assert torch.equal(mask_row, expected)


@pytest.mark.parametrize("case", CASES, ids=case_id)
@pytest.mark.parametrize("budget", [1, 7, 0.25, 0.5])
def test_kept_count_and_well_formed(case, budget, generator):
    tokens, text = inputs(generator)
    result = make(case).prune(tokens, budget=budget, text_embeds=text)
    k = num_kept(tokens.shape[1], budget)
    check_well_formed(result, tokens, [k] * tokens.shape[0])
    assert result.indices.shape == (tokens.shape[0], k)
    assert torch.equal(
        result.gather(tokens), torch.stack([t[i] for t, i in zip(tokens, result.indices)])
    )


@pytest.mark.parametrize("case", CASES, ids=case_id)
@pytest.mark.parametrize("budget", [40, 1000, 1.0])
def test_identity_when_budget_covers_all(case, budget, generator):
    tokens, text = inputs(generator)
    result = make(case).prune(tokens, budget=budget, text_embeds=text)
    assert torch.equal(result.indices, torch.arange(40).expand(3, -1))
    assert result.mask.all()
    assert result.scores is None


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_deterministic(case, generator):
    tokens, text = inputs(generator)
    first = make(case).prune(tokens, budget=9, text_embeds=text)
    second = make(case).prune(tokens.clone(), budget=9, text_embeds=text.clone())
    assert torch.equal(first.indices, second.indices)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_batch_invariance(case, generator):
    """Image i's selection does not depend on the other images in the batch."""
    tokens, text = inputs(generator, batch=4)
    pruner = make(case)
    batched = pruner.prune(tokens, budget=10, text_embeds=text)
    for i in range(4):
        alone = pruner.prune(tokens[i : i + 1], budget=10, text_embeds=text[i : i + 1])
        assert torch.equal(alone.indices[0], batched.indices[i])
    reversed_batch = pruner.prune(tokens.flip(0), budget=10, text_embeds=text.flip(0))
    assert torch.equal(reversed_batch.indices, batched.indices.flip(0))


@pytest.mark.parametrize("case", CASES, ids=case_id)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_dtypes(case, dtype, generator):
    """Any float dtype is accepted; selections run in >= float32, so the bf16/fp16
    result equals the float32 result on the same (rounded) values."""
    tokens, text = inputs(generator)
    low = tokens.to(dtype)
    result = make(case).prune(low, budget=8, text_embeds=text.to(dtype))
    check_well_formed(result, tokens, [8] * 3)
    reference = make(case).prune(low.float(), budget=8, text_embeds=text.to(dtype).float())
    if dtype != torch.float64:
        assert torch.equal(result.indices, reference.indices)
    if result.scores is not None:
        assert result.scores.dtype == torch.float32


@pytest.mark.parametrize("case", CASES, ids=case_id)
@pytest.mark.parametrize("budget", [5, 0.3])
def test_ragged_masks(case, budget, generator):
    """Padded tokens are never kept and a sample equals its unpadded self."""
    tokens, text = inputs(generator, batch=3, n=30)
    lengths = [30, 17, 4]
    mask = torch.arange(30).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)
    garbage = tokens.masked_fill(~mask.unsqueeze(-1), 1e3)  # padding content must not matter
    pruner = make(case)
    result = pruner.prune(garbage, budget=budget, text_embeds=text, token_mask=mask)
    counts = [num_kept(n, budget) for n in lengths]
    check_well_formed(result, tokens, counts)
    assert not (result.mask & ~mask).any()
    assert result.valid_counts.tolist() == lengths
    for i, n in enumerate(lengths):
        alone = pruner.prune(tokens[i : i + 1, :n], budget=budget, text_embeds=text[i : i + 1])
        assert torch.equal(result.split()[i], alone.indices[0])
    assert result.is_ragged == (len(set(counts)) > 1)
    gathered = result.gather(tokens, fill_value=-7.0)
    assert (gathered[~result.slot_mask] == -7.0).all()


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_text_mask_rows_are_ignored(case, generator):
    """Masked-out text rows do not influence the selection."""
    tokens, text = inputs(generator, m=4)
    text_mask = torch.tensor([[True, True, False, False]] * 3)
    noisy = text.clone()
    noisy[:, 2:] = torch.randn(3, 2, 12, generator=generator) * 50
    pruner = make(case)
    a = pruner.prune(tokens, budget=6, text_embeds=noisy, text_mask=text_mask)
    b = pruner.prune(tokens, budget=6, text_embeds=text[:, :2])
    assert torch.equal(a.indices, b.indices)


def test_every_registered_pruner_is_covered():
    assert {name for name, _ in CASES} >= set(prunekit.list_pruners())
    assert "resprune" in prunekit.list_pruners()
