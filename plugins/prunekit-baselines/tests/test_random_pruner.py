"""The random baseline: seeded, batch-invariant, uniform."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import prunekit
from prunekit.strategies.selection.random import position_noise
from prunekit.testing import PrunerContract
from prunekit_baselines.random_pruner import RandomPruner


def reference_keep(seed: int, n: int, k: int) -> list[int]:
    """The k positions with the largest (seed, position) draws, ties to the lowest position."""
    u = position_noise(seed, n).numpy()
    order = sorted(range(n), key=lambda i: (-u[i], i))
    return sorted(order[:k])


def test_registered():
    assert isinstance(prunekit.create_pruner("random", seed=1), RandomPruner)


@pytest.mark.parametrize("seed", [0, 1, 12345])
@pytest.mark.parametrize(("n", "k"), [(10, 3), (576, 64), (40, 39)])
def test_matches_reference_and_selection_strategy(seed, n, k):
    tokens = torch.randn(2, n, 4, generator=torch.Generator().manual_seed(seed))
    result = RandomPruner(seed=seed).prune(tokens, budget=k)
    expected = reference_keep(seed, n, k)
    assert result.indices.tolist() == [expected, expected]
    composed = prunekit.create_pruner(
        "composed", relevance="none", selection={"name": "random", "seed": seed}
    )
    assert torch.equal(composed.prune(tokens, budget=k).indices, result.indices)


def test_seed_changes_selection_and_is_reproducible():
    tokens = torch.randn(1, 100, 8)
    a = RandomPruner(seed=0).prune(tokens, budget=10).indices
    b = RandomPruner(seed=1).prune(tokens, budget=10).indices
    assert not torch.equal(a, b)
    assert torch.equal(a, RandomPruner(seed=0).prune(tokens * 3 + 1, budget=10).indices)


def test_roughly_uniform_over_seeds():
    """Every position is kept with frequency ~ k / n over seeds (binomial, 6 sigma)."""
    n, k, seeds = 20, 5, 2000
    counts = np.zeros(n)
    for seed in range(seeds):
        counts[reference_keep(seed, n, k)] += 1
    p = k / n
    sigma = np.sqrt(seeds * p * (1 - p))
    assert np.all(np.abs(counts - seeds * p) < 6 * sigma)
    # and the pruner agrees with the reference on a sample of seeds
    tokens = torch.zeros(1, n, 1)
    for seed in range(0, seeds, 97):
        assert RandomPruner(seed=seed).prune(tokens, budget=k).indices[0].tolist() == (
            reference_keep(seed, n, k)
        )


def test_padding_and_batch_do_not_matter():
    tokens = torch.randn(3, 30, 6)
    mask = torch.arange(30).unsqueeze(0) < torch.tensor([[30], [12], [5]])
    result = RandomPruner(seed=4).prune(tokens, budget=0.5, token_mask=mask)
    for i, n in enumerate([30, 12, 5]):
        alone = RandomPruner(seed=4).prune(tokens[i : i + 1, :n], budget=0.5)
        assert torch.equal(result.split()[i], alone.indices[0])
        assert result.split()[i].tolist() == reference_keep(4, n, round(n * 0.5 + 1e-9))


def test_per_image_differs_between_images_but_not_between_batches():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(4, 50, 8, generator=g)
    pruner = RandomPruner(seed=2, per_image=True)
    result = pruner.prune(tokens, budget=10)
    rows = {tuple(r) for r in result.indices.tolist()}
    assert len(rows) == 4, "different images keep different subsets"
    # the same image keeps the same subset alone, reordered, padded, or in bf16-equal float32
    for i in range(4):
        assert torch.equal(pruner.prune(tokens[i : i + 1], budget=10).indices[0], result.indices[i])
    assert torch.equal(pruner.prune(tokens.flip(0), budget=10).indices, result.indices.flip(0))
    padded = torch.cat([tokens, torch.full((4, 7, 8), 1e3)], dim=1)
    mask = torch.arange(57).unsqueeze(0) < 50
    assert torch.equal(
        pruner.prune(padded, budget=10, token_mask=mask.expand(4, -1)).indices, result.indices
    )
    low = tokens.bfloat16()
    assert torch.equal(
        pruner.prune(low, budget=10).indices, pruner.prune(low.float(), budget=10).indices
    )
    # the seed still matters
    other = RandomPruner(seed=3, per_image=True).prune(tokens, budget=10)
    assert not torch.equal(other.indices, result.indices)


def test_scores_are_the_draws():
    tokens = torch.randn(1, 16, 3)
    result = RandomPruner(seed=9).prune(tokens, budget=4)
    assert torch.allclose(result.scores[0].double(), position_noise(9, 16), atol=1e-7)
    kept = result.scores[0][result.indices[0]]
    dropped = result.scores[0][~result.mask[0]]
    assert kept.min() > dropped.max()


def test_rejects_bad_arguments():
    with pytest.raises(TypeError, match="seed"):
        RandomPruner(seed=1.5)
    with pytest.raises(TypeError, match="seed"):
        RandomPruner(seed=True)
    with pytest.raises(TypeError, match="per_image"):
        RandomPruner(per_image=1)


class TestRandomContract(PrunerContract):
    """The registry-wide contract (defaults run in prunekit's suite), per-image draws here."""

    cases = [("random", {"seed": 7, "per_image": True})]
