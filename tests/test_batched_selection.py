"""Every pruner and selection strategy selects batched exactly as it does one sample at a time,
on CPU and (when there is one) on CUDA, where the selection loop never synchronises.

The registry-wide contract (``tests/test_pruner_contract.py``) already checks a batch of
4 against each sample alone and prefix padding masks on 30-40 tokens. This adds samples
whose padding is scattered among their tokens, per-sample counts that differ (one sample
keeping all its tokens while the others prune), every registered selection strategy
composed with a text relevance, and the device checks.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping

import pytest
import torch
from conftest import pruner_cases

import prunekit
from prunekit.core.inputs import validate_inputs
from prunekit.core.pruner import kept_counts
from prunekit.core.signals import SIGNALS
from prunekit.testing import as_case, case_id, synthesize_signals

#: every registered pruner, the strategy compositions, and every registered selection
#: strategy weighted by a text relevance
CASES = pruner_cases() + [
    ("composed", {"relevance": {"name": "text", "alpha": 2.0}, "selection": name})
    for name in prunekit.list_selections()
]
IDS = [case_id(case) for case in CASES]
LENGTHS = (48, 29, 6)  # valid tokens per sample; with budget 7 the last one keeps all its 6
BUDGETS = (7, 0.3)
DIM = 24
HAS_CUDA = torch.cuda.is_available()


def token_axis(name: str, value: torch.Tensor) -> int | None:
    spec = SIGNALS.get(name)
    return None if spec is None or spec.token_axis is None else spec.token_axis % value.dim()


def masks(kind: str, n: int) -> torch.Tensor:
    """``(3, n)`` valid tokens, :data:`LENGTHS` per sample: a prefix, or scattered among padding."""
    if kind == "prefix":
        return torch.arange(n).unsqueeze(0) < torch.tensor(LENGTHS).unsqueeze(1)
    g = torch.Generator().manual_seed(5)
    keys = torch.rand(len(LENGTHS), n, generator=g)
    rank = keys.argsort(dim=1).argsort(dim=1)
    return rank < torch.tensor(LENGTHS).unsqueeze(1)


def problem(pruner, kind: str, seed: int = 0) -> dict:
    """Well-separated random inputs (no float ties) with padding of huge garbage values."""
    n = max(LENGTHS)
    g = torch.Generator().manual_seed(seed)
    mask = masks(kind, n)
    tokens = torch.randn(len(LENGTHS), n, DIM, generator=g)
    tokens = tokens.masked_fill(~mask.unsqueeze(-1), 1e3)
    text = torch.randn(len(LENGTHS), 4, DIM, generator=g)
    text_mask = torch.arange(4).unsqueeze(0) < torch.tensor([[4], [2], [1]])
    signals = synthesize_signals(pruner.required_signals, len(LENGTHS), n, DIM, g)
    return {
        "tokens": tokens,
        "token_mask": mask,
        "text_embeds": text,
        "text_mask": text_mask,
        "signals": signals,
    }


def sample(inputs: dict, b: int, compact: bool) -> tuple[dict, torch.Tensor]:
    """Sample ``b`` alone and the positions its indices refer to: only its valid tokens,
    in order (``compact``), or its padded row with its mask."""
    positions = inputs["token_mask"][b].nonzero()[:, 0]
    if not compact:
        positions = torch.arange(inputs["tokens"].shape[1])
    signals = {}
    for name, value in inputs["signals"].items():
        row = value[b : b + 1]
        axis = token_axis(name, value)
        signals[name] = row if axis is None else row.index_select(axis, positions)
    alone = {
        "tokens": inputs["tokens"][b : b + 1, positions],
        "text_embeds": inputs["text_embeds"][b : b + 1],
        "text_mask": inputs["text_mask"][b : b + 1],
        "signals": signals,
    }
    if not compact:
        alone["token_mask"] = inputs["token_mask"][b : b + 1]
    return alone, positions


def to(inputs: Mapping, device: str) -> dict:
    out = {}
    for key, value in inputs.items():
        if isinstance(value, Mapping):
            out[key] = {k: v.to(device) for k, v in value.items()}
        else:
            out[key] = value.to(device)
    return out


@pytest.mark.parametrize("kind", ["prefix", "scattered"])
@pytest.mark.parametrize("budget", BUDGETS)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_batched_equals_one_sample_at_a_time(case, budget, kind):
    """Prefix padding: a sample in the batch keeps what its unpadded self keeps. Scattered
    padding: what it keeps alone with the same padding (seeded random draws are keyed by
    token position, so only a prefix mask leaves positions unchanged)."""
    pruner = as_case(case)()
    inputs = problem(pruner, kind)
    batched = pruner.prune(budget=budget, **inputs)
    ceilings = [prunekit.num_kept(n, budget) for n in LENGTHS]
    counts = batched.counts.tolist()
    if pruner.adaptive:  # the budget is a ceiling; each count is checked against alone below
        assert all(1 <= c <= k for c, k in zip(counts, ceilings))
    else:
        assert counts == ceilings
    assert not (batched.mask & ~inputs["token_mask"]).any()
    kept = batched.kept_tokens(inputs["tokens"])
    for b in range(len(LENGTHS)):
        alone_inputs, positions = sample(inputs, b, compact=kind == "prefix")
        alone = pruner.prune(budget=budget, **alone_inputs)
        expected = positions[alone.indices[0]]
        assert batched.split()[b].tolist() == expected.tolist(), f"sample {b}"
        torch.testing.assert_close(
            kept[b, : counts[b]],
            alone.kept_tokens(alone_inputs["tokens"])[0],
            rtol=1e-4,
            atol=1e-5,
        )


# --------------------------------------------------------------------------- CUDA


def prepared(pruner, inputs: dict, budget) -> tuple:
    """What ``prune`` hands to ``select``: validated inputs with their keep counts."""
    checked = validate_inputs(**inputs)
    counts = kept_counts(checked.valid_counts, budget)
    return dataclasses.replace(checked, keep_counts=counts), int(counts.max())


def synchronisations(pruner, inputs: dict, budget) -> int:
    """Host-device synchronisations in one ``select`` call (CUDA sync debug mode, warn)."""
    checked, num_keep = prepared(pruner, inputs, budget)
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            pruner.select(checked, num_keep)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


#: pruners whose selection reads something on the host once per call, before any loop: the
#: pooling layout and VisPruner's rounds follow from the counts, DART's default pivot
#: order is CPython's set order of the pivots' positions
HOST_READS = {"pooling", "vispruner", "dart"}


@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_cuda_selects_as_cpu(case):
    pruner = as_case(case)()
    inputs = problem(pruner, "scattered", seed=1)
    for budget in BUDGETS:
        cpu = pruner.prune(budget=budget, **inputs)
        cuda = pruner.prune(budget=budget, **to(inputs, "cuda"))
        assert cuda.indices.device.type == "cuda"
        assert torch.equal(cuda.indices.cpu(), cpu.indices)
        if cpu.values is not None:
            torch.testing.assert_close(cuda.values.cpu(), cpu.values, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_cuda_selection_loop_never_synchronises(case):
    """Sync-free selections run under ``set_sync_debug_mode("error")``; the few with a
    documented host read per call read the same number of times whatever the budget,
    so none happens per step."""
    pruner = as_case(case)()
    inputs = to(problem(pruner, "prefix", seed=2), "cuda")
    if case[0] in HOST_READS:
        few, many = (synchronisations(pruner, inputs, budget) for budget in (3, 0.6))
        assert few == many <= 8
        return
    for budget in (3, 0.6):
        checked, num_keep = prepared(pruner, inputs, budget)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            picks = pruner.select(checked, num_keep)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert picks.order.shape == (len(LENGTHS), num_keep)


@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
@pytest.mark.parametrize("method", ["gram", "rows"])
def test_cuda_greedy_residual_paths_never_synchronise(method):
    from prunekit.strategies.selection.greedy_residual import greedy_residual_order

    g = torch.Generator().manual_seed(3)
    tokens = torch.randn(2, 300, 64, generator=g)
    weights = torch.rand(2, 300, generator=g)
    valid = torch.arange(300).unsqueeze(0) < torch.tensor([[300], [211]])
    expected = greedy_residual_order(tokens, weights, 80, valid, method=method)
    args = (tokens.cuda(), weights.cuda(), 80, valid.cuda())
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        order = greedy_residual_order(*args, method=method)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.equal(order[0].cpu(), expected[0])
    assert torch.equal(order[1, :211].cpu(), expected[1, :211])
