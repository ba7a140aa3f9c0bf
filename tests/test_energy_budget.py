"""Adaptive budgets by residual energy (``energy=``) in the greedy residual selection.

The residual sums every backend records are checked against float64 least-squares
projections (tests/reference.py); the counts against hand-worked examples and against
the criterion evaluated on float64 projections of the sets the fixed-budget pruner keeps.
The Triton kernel's residuals are checked in tests/test_greedy_triton.py (interpreter).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from reference import projected_residuals, residual_energies

import prunekit
import prunekit.testing.pruners as contract
from prunekit.core.budget import num_kept
from prunekit.kernels.native import native_library
from prunekit.pruners.composed import ComposedPruner
from prunekit.pruners.resprune import ResPrune
from prunekit.strategies.selection.greedy_residual import (
    DEFAULT_RANK_TOL,
    GreedyResidualSelection,
    energy_counts,
    greedy_residual_order,
)

PATHS = [("gram", "native"), ("rows", "native"), ("gram", "torch"), ("rows", "torch")]


def needs_backend(backend: str) -> None:
    if backend == "native" and native_library() is None:
        pytest.skip("no C compiler: the native kernel cannot be built here")


def total_energy(tokens, valid=None) -> torch.Tensor:
    energy = tokens.double().square().sum(-1)
    return energy if valid is None else energy.masked_fill(~valid, 0.0)


def residual_inputs(dtype):
    """Full-rank, low-rank (K beyond the rank) and duplicated tokens, ragged, with garbage padding."""
    g = torch.Generator().manual_seed(21)
    n, d = 30, 10
    full = torch.randn(n, d, generator=g, dtype=dtype) * torch.rand(n, 1, generator=g, dtype=dtype)
    low = torch.randn(n, 3, generator=g, dtype=dtype) @ torch.randn(3, d, generator=g, dtype=dtype)
    dup = torch.randn(n // 3, d, generator=g, dtype=dtype).repeat(3, 1)
    tokens = torch.stack([full, low, dup])
    valid = torch.arange(n).unsqueeze(0) < torch.tensor([[n], [22], [25]])
    tokens = tokens.masked_fill(~valid.unsqueeze(-1), 1e3)
    weights = torch.rand(3, n, generator=g, dtype=dtype)
    return tokens, weights, valid


# ------------------------------------------------------------------------- residual sums


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize(("method", "backend"), PATHS, ids=["-".join(p) for p in PATHS])
def test_residuals_equal_the_float64_projection(method, backend, dtype):
    needs_backend(backend)
    tokens, weights, valid = residual_inputs(dtype)
    k = 15  # past the rank (3) of sample 1
    order, residuals = greedy_residual_order(
        tokens, weights, k, valid, method=method, backend=backend, return_residuals=True
    )
    plain = greedy_residual_order(tokens, weights, k, valid, method=method, backend=backend)
    assert torch.equal(order, plain)  # recording residuals changes no pick
    assert residuals.dtype == dtype and residuals.shape == (3, k)
    reference = projected_residuals(tokens, valid, order, weights)
    total = (weights.double() * total_energy(tokens, valid)).sum(1, keepdim=True)
    # clamping zeroes a residual at most rank_tol of its token's energy: at most rank_tol * total
    slack = 2 * DEFAULT_RANK_TOL[dtype] * total
    assert torch.all((residuals.double() - reference).abs() <= slack), (residuals, reference)
    assert torch.all(residuals[1, 3:] == 0)  # rank 3: everything explained after 3 picks
    assert torch.all(residuals.diff(dim=1) <= 0)  # energies only decrease


def test_backends_record_the_same_residuals():
    needs_backend("native")
    tokens, weights, valid = residual_inputs(torch.float32)
    runs = [
        greedy_residual_order(
            tokens, weights, 12, valid, method=m, backend=b, return_residuals=True
        )
        for m, b in PATHS
    ]
    for order, residuals in runs[1:]:
        assert torch.equal(order, runs[0][0])
        torch.testing.assert_close(residuals, runs[0][1], rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------- energy_counts


def test_energy_counts_hand_worked():
    # 3 orthogonal tokens of energies 9, 4, 1 plus copies of the first two: total 27;
    # after 1, 2, 3 picks the residual is 9 (4 + 1 + 4), 1, 0: explained 2/3, 26/27, 1
    residuals = torch.tensor([[9.0, 1.0, 0.0, 0.0, 0.0]])
    total = torch.tensor([27.0])
    counts = {
        e: energy_counts(residuals, total, e, 1, 5).item()
        for e in (0.5, 0.6, 2 / 3, 0.9, 0.96, 0.97, 1.0)
    }
    assert counts == {0.5: 1, 0.6: 1, 2 / 3: 1, 0.9: 2, 0.96: 2, 0.97: 3, 1.0: 3}
    assert energy_counts(residuals, total, 0.6, 2, 5).item() == 2  # the floor
    assert energy_counts(residuals, total, 1.0, 1, 2).item() == 2  # met past the ceiling
    assert energy_counts(residuals, total, 0.6, 4, 3).item() == 3  # the ceiling beats the floor


def test_energy_counts_per_sample():
    residuals = torch.tensor(
        [
            [6.0, 3.0, 2.0, 1.0],  # total 10: 0.7 is met at 2 picks (3 <= 3)
            [9.0, 8.0, 7.0, 7.0],  # total 20: never <= 6, the ceiling
            [0.0, 0.0, 0.0, 0.0],  # all-zero tokens: nothing to explain, keeps the floor
            [8.0, 1.0, 0.0, 0.0],  # ceiling 1 (a short sample of a ragged batch)
        ]
    )
    total = torch.tensor([10.0, 20.0, 0.0, 9.0])
    ceiling = torch.tensor([4, 3, 4, 1])
    assert energy_counts(residuals, total, 0.7, 1, ceiling).tolist() == [2, 3, 1, 1]
    assert energy_counts(residuals, total, 0.7, 3, ceiling).tolist() == [3, 3, 3, 1]
    assert energy_counts(residuals, total, 0.7, 1, ceiling).dtype == torch.int64


@pytest.mark.parametrize(
    ("energy", "min_keep", "match"),
    [(0.0, 1, "energy"), (1.5, 1, "energy"), (-0.2, 1, "energy"), (0.9, 0, "min_keep")],
)
def test_energy_counts_bad_arguments(energy, min_keep, match):
    with pytest.raises(ValueError, match=match):
        energy_counts(torch.zeros(1, 2), torch.ones(1), energy, min_keep, 2)


# ------------------------------------------------------------------------- through prune


def hand_worked_tokens(dtype=torch.float32) -> torch.Tensor:
    """Tokens 2e2 (copy), e3, 3e1, 2e2, 3e1: greedy order 2 (3e1), 0 (2e2), 1 (e3)."""
    e = torch.eye(3, dtype=dtype)
    return torch.stack([2 * e[1], e[2], 3 * e[0], 2 * e[1], 3 * e[0]]).unsqueeze(0)


@pytest.mark.parametrize(("method", "backend"), PATHS, ids=["-".join(p) for p in PATHS])
@pytest.mark.parametrize(
    ("energy", "kept"),
    [(0.6, [2]), (0.9, [0, 2]), (0.96, [0, 2]), (0.97, [0, 1, 2]), (1.0, [0, 1, 2])],
)
def test_hand_worked_example_through_prune(method, backend, energy, kept):
    needs_backend(backend)
    pruner = ComposedPruner(
        relevance="none",
        selection=GreedyResidualSelection(energy=energy, method=method, backend=backend),
    )
    assert pruner.adaptive
    for budget in (5, 1.0, 4):  # every token (still adaptive) or fewer
        result = pruner.prune(hand_worked_tokens(), budget=budget)
        assert result.indices.tolist() == [kept] and result.counts.tolist() == [len(kept)]
        assert result.valid_counts.tolist() == [5]


def test_floor_and_ceiling_through_prune():
    tokens = hand_worked_tokens()
    assert ResPrune(energy=0.6, min_keep=2).prune(tokens, budget=5).indices.tolist() == [[0, 2]]
    assert ResPrune(energy=0.6, min_keep=2).prune(tokens, budget=1).indices.tolist() == [[2]]
    assert ResPrune(energy=1.0).prune(tokens, budget=2).indices.tolist() == [[0, 2]]
    assert ResPrune(energy=1.0, min_keep=4).prune(tokens, budget=0.8).counts.tolist() == [4]


def test_a_full_budget_is_still_adaptive():
    g = torch.Generator().manual_seed(2)
    tokens = torch.randn(2, 40, 6, generator=g)
    adaptive = ResPrune(energy=0.9).prune(tokens, budget=1.0)
    assert (adaptive.counts < 40).all() and adaptive.scores is not None
    fixed = ResPrune().prune(tokens, budget=1.0)  # not adaptive: the identity short-cut
    assert fixed.counts.tolist() == [40, 40] and fixed.scores is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize(("method", "backend"), PATHS, ids=["-".join(p) for p in PATHS])
def test_energy_one_keeps_the_rank(method, backend, dtype):
    needs_backend(backend)
    g = torch.Generator().manual_seed(5)
    ranks = [3, 5, 1]
    tokens = torch.cat(
        [
            torch.randn(1, 48, r, generator=g, dtype=dtype)
            @ torch.randn(1, r, 16, generator=g, dtype=dtype)
            for r in ranks
        ]
    )
    selection = GreedyResidualSelection(energy=1.0, method=method, backend=backend)
    result = ComposedPruner(relevance="none", selection=selection).prune(tokens, budget=1.0)
    assert result.counts.tolist() == ranks


def ragged_problem(seed=3):
    g = torch.Generator().manual_seed(seed)
    lengths = [50, 31, 12, 3]
    n = max(lengths)
    tokens = torch.randn(4, n, 8, generator=g) * torch.rand(4, n, 1, generator=g)
    text = torch.randn(4, 2, 8, generator=g)
    mask = torch.arange(n).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)
    return tokens.masked_fill(~mask.unsqueeze(-1), 1e3), text, mask, lengths


@pytest.mark.parametrize("backend", ["native", "torch"])
def test_ragged_batch_equals_each_sample_alone(backend):
    needs_backend(backend)
    tokens, text, mask, lengths = ragged_problem()
    pruner = ResPrune(energy=0.8, backend=backend)
    result = pruner.prune(tokens, budget=0.5, text_embeds=text, token_mask=mask)
    assert not (result.mask & ~mask).any()
    assert len(set(result.counts.tolist())) > 1  # ragged counts, padded with PAD_INDEX
    for i, n in enumerate(lengths):
        alone = pruner.prune(tokens[i : i + 1, :n], budget=0.5, text_embeds=text[i : i + 1])
        assert torch.equal(result.split()[i], alone.indices[0])
        assert result.counts[i] == alone.counts[0] <= num_kept(n, 0.5)


def test_batch_invariance_and_order():
    g = torch.Generator().manual_seed(9)
    tokens = torch.randn(5, 64, 12, generator=g) * torch.rand(5, 64, 1, generator=g)
    text = torch.randn(5, 3, 12, generator=g)
    pruner = ResPrune(energy=0.8, min_keep=2)
    batched = pruner.prune(tokens, budget=0.5, text_embeds=text)
    assert len(set(batched.counts.tolist())) > 1  # ragged counts
    for i in range(5):
        alone = pruner.prune(tokens[i : i + 1], budget=0.5, text_embeds=text[i : i + 1])
        assert torch.equal(alone.split()[0], batched.split()[i])
    flipped = pruner.prune(tokens.flip(0), budget=0.5, text_embeds=text.flip(0))
    assert torch.equal(flipped.counts, batched.counts.flip(0))


@pytest.mark.parametrize("energy", [0.5, 0.8, 0.95])
def test_adaptive_keeps_the_prefix_that_meets_the_criterion(energy):
    """ResPrune(energy) keeps the first ``count`` greedy picks of the fixed budget's order
    (the set ResPrune keeps at budget ``count``), and ``count`` is the fewest such picks
    whose span explains ``energy`` of the total, by float64 projection."""
    tokens, text, mask, lengths = ragged_problem(seed=4)
    ceiling = 0.6
    result = ResPrune(energy=energy).prune(
        tokens, budget=ceiling, text_embeds=text, token_mask=mask
    )
    for i, n in enumerate(lengths):
        x, t = tokens[i : i + 1, :n], text[i : i + 1]
        count = int(result.counts[i])
        assert 1 <= count <= num_kept(n, ceiling)
        prefix = ResPrune().prune(x, budget=count, text_embeds=t).indices[0]
        assert torch.equal(result.split()[i], prefix)
        x64 = x[0].double().numpy()
        # the energy is weighted like the greedy's objective, by the text weights
        w = result.scores[i, :n].double().numpy()
        total = float((w * (x64**2).sum(-1)).sum())
        threshold = (1 - energy) * total
        slack = 2e-4 * float((x64**2).sum())  # float32 selection, clamped residuals
        if count < num_kept(n, ceiling):  # below the ceiling: the criterion holds
            assert (w * residual_energies(x64, prefix.tolist())).sum() <= threshold + slack
        if count > 1:  # one pick fewer does not meet it
            shorter = ResPrune().prune(x, budget=count - 1, text_embeds=t).indices[0]
            assert (w * residual_energies(x64, shorter.tolist())).sum() > threshold - slack


def test_composed_greedy_residual_with_energy_equals_resprune_without_text():
    g = torch.Generator().manual_seed(11)
    tokens = torch.randn(3, 40, 10, generator=g)
    composed = prunekit.create_pruner(
        "composed", selection={"name": "greedy_residual", "energy": 0.9, "min_keep": 3}
    )
    assert composed.adaptive
    a = composed.prune(tokens, budget=0.75)
    b = prunekit.create_pruner("resprune", energy=0.9, min_keep=3).prune(tokens, budget=0.75)
    assert torch.equal(a.indices, b.indices) and torch.equal(a.counts, b.counts)
    assert not prunekit.create_pruner("resprune").adaptive


@pytest.mark.parametrize("factory", [GreedyResidualSelection, ResPrune])
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"energy": 0.0}, ValueError, "energy"),
        ({"energy": 1.01}, ValueError, "energy"),
        ({"energy": -1}, ValueError, "energy"),
        ({"energy": "0.9"}, TypeError, "energy"),
        ({"energy": 0.9, "min_keep": 0}, ValueError, "min_keep"),
        ({"min_keep": 2.5}, TypeError, "min_keep"),
    ],
)
def test_bad_values_name_the_field(factory, kwargs, error, match):
    with pytest.raises(error, match=match):
        factory(**kwargs)


def test_config_keys(tmp_path, capsys):
    from prunekit.cli import main
    from prunekit.experiments import build_pruner, compose

    pruner = build_pruner(compose(["pruner=resprune", "pruner.energy=0.9", "pruner.min_keep=4"]))
    assert isinstance(pruner, ResPrune) and (pruner.energy, pruner.min_keep) == (0.9, 4)
    assert pruner.adaptive and pruner.selection.energy == 0.9
    assert build_pruner(compose(["pruner=resprune"])).energy is None
    composed = build_pruner(
        compose(["pruner=composed", "selection=greedy_residual", "selection.energy=0.8"])
    )
    assert composed.adaptive and composed.selection.energy == 0.8
    out = tmp_path / "sweep"
    args = ["ablate", "pruner=resprune", "pruner.energy=0.9,0.95", "--out", str(out), "--dry-run"]
    assert main(args) == 0
    with pytest.raises(Exception, match="energy"):
        build_pruner(compose(["pruner=resprune", "pruner.energy=1.5"]))


# ------------------------------------------------------------------------- the contract

ADAPTIVE = contract.as_case("resprune", {"energy": 0.9})


@pytest.mark.parametrize(
    "check",
    [
        contract._check_deterministic,
        contract._check_batch_invariance,
        contract._check_text_mask,
        contract._check_missing_signals,
        *[lambda case, t=t: contract._check_dtype(case, t) for t in contract.DTYPES],
        *[lambda case, b=b: contract._check_ragged(case, b) for b in contract.RAGGED_BUDGETS],
    ],
)
def test_contract_checks_that_hold_for_adaptive_pruners(check):
    """prunekit.testing's checks that do not assume a count of exactly num_kept."""
    check(ADAPTIVE)


def check_adaptive_result(pruner, tokens, budget, **kwargs):
    """Well formed, each count in [1, num_kept], padded tokens never kept, each sample
    (unpadded) alone keeps what it keeps in the batch."""
    mask = kwargs.get("token_mask")
    lengths = [tokens.shape[1]] * tokens.shape[0] if mask is None else mask.sum(1).tolist()
    result = pruner.prune(tokens, budget=budget, **kwargs)
    counts = result.counts.tolist()
    assert all(1 <= c <= num_kept(n, budget) for c, n in zip(counts, lengths)), counts
    contract.check_well_formed(result, tokens, counts)
    if mask is not None:
        assert not (result.mask & ~mask).any()
    text = kwargs.get("text_embeds")
    for i, n in enumerate(lengths):
        t = None if text is None else text[i : i + 1]
        alone = pruner.prune(tokens[i : i + 1, :n], budget=budget, text_embeds=t)
        assert torch.equal(alone.indices[0], result.split()[i])
    return result


@pytest.mark.parametrize("budget", [*contract.KEPT_BUDGETS, *contract.FULL_BUDGETS])
def test_contract_counts_for_an_adaptive_pruner(budget):
    g = torch.Generator().manual_seed(contract.SEED)
    tokens, text = torch.randn(3, 40, 12, generator=g), torch.randn(3, 3, 12, generator=g)
    check_adaptive_result(ADAPTIVE(), tokens, budget, text_embeds=text)


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problem=contract.problems())
def test_contract_properties_for_an_adaptive_pruner(problem):
    mask, text = problem["mask"], problem["text"]
    check_adaptive_result(
        ADAPTIVE(), problem["tokens"], problem["budget"], text_embeds=text, token_mask=mask
    )


def test_in_encoder_adaptive_counts_need_one_image_per_call():
    """The encoder's blocks run on a rectangular batch: a per-image count is refused with a
    clear error for a batch, and works image by image (each equal to the standalone prune)."""
    import transformers

    torch.manual_seed(5)
    config = transformers.Dinov2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, mlp_ratio=2,
        image_size=32, patch_size=8, layerscale_value=0.5,
    )  # fmt: skip
    model = transformers.Dinov2Model(config).eval()
    # image 0 is flat (few directions explain it), image 1 is noise (many do)
    flat = torch.zeros(1, 3, 32, 32)
    noise = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 3
    pixels = torch.cat([flat, noise])
    pruner = prunekit.create_pruner("resprune", energy=0.6)
    with prunekit.attach(model, pruner, budget=1.0, layer=1) as handle:
        with torch.no_grad():
            counts = []
            for image in pixels:
                model(pixel_values=image.unsqueeze(0))
                counts.append(int(handle.results[-1].counts[0]))
        assert counts[0] != counts[1]
        with pytest.raises(ValueError, match="one count for every image"), torch.no_grad():
            model(pixel_values=pixels)
