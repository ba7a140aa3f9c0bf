"""Pooling: LLaVA-style 2D average pooling, any budget, exactly K tokens."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import prunekit
from prunekit.testing import PrunerContract
from prunekit_baselines.pooling import PoolingPruner, band_count, infer_grid, pooling_layout


def reference_pool(x: np.ndarray, h: int, w: int, k: int):
    """Straightforward loops over the documented layout: (center indices, window means).

    r bands (argmin_r |r^2 w - k h|, clamped to [ceil(k / w), min(h, k)]), band i gets
    floor((i+1) k / r) - floor(i k / r) cells, adaptive-pooling windows, center
    floor((i + 1/2) h / r), floor((j + 1/2) w / c).
    """
    r0 = min(range(1, max(h, k) + 1), key=lambda r: (abs(r * r * w - k * h), r))
    r = max(math.ceil(k / w), min(r0, h, k))
    grid = x.reshape(h, w, -1)
    centers, means = [], []
    for i in range(r):
        c = math.floor((i + 1) * k / r) - math.floor(i * k / r)
        y0, y1 = math.floor(i * h / r), math.ceil((i + 1) * h / r)
        for j in range(c):
            x0, x1 = math.floor(j * w / c), math.ceil((j + 1) * w / c)
            centers.append(math.floor((i + 0.5) * h / r) * w + math.floor((j + 0.5) * w / c))
            means.append(grid[y0:y1, x0:x1].reshape(-1, grid.shape[-1]).mean(axis=0))
    return centers, np.stack(means)


def test_registered_with_avg_default():
    pruner = prunekit.create_pruner("pooling")
    assert isinstance(pruner, PoolingPruner) and pruner.mode == "avg"


def test_infer_grid():
    assert infer_grid(576) == (24, 24)
    assert infer_grid(40) == (5, 8)
    assert infer_grid(12) == (3, 4)
    assert infer_grid(7) == (1, 7)
    assert infer_grid(1) == (1, 1)


def test_hand_worked_4x4_to_2x2():
    centers, members = pooling_layout(4, 4, 4)
    # windows of 2x2; the center of window (0, 0) is row 1, column 1 -> index 5
    assert centers == (5, 7, 13, 15)
    assert members[0] == (0, 1, 4, 5) and members[3] == (10, 11, 14, 15)
    tokens = torch.arange(16, dtype=torch.float32).view(1, 16, 1)
    result = PoolingPruner().prune(tokens, budget=4)
    assert result.indices.tolist() == [[5, 7, 13, 15]]
    # means of {0,1,4,5}, {2,3,6,7}, {8,9,12,13}, {10,11,14,15}
    assert result.values[0, :, 0].tolist() == [2.5, 4.5, 10.5, 12.5]
    assert torch.equal(result.kept_tokens(tokens), result.values)


def test_hand_worked_uneven_budget():
    # 3x3 grid, K = 5: r = argmin |r^2 - 5| = 2 bands (rows [0, 2) and [1, 3)), 2 + 3 cells
    assert band_count(3, 3, 5) == 2
    centers, members = pooling_layout(3, 3, 5)
    assert centers == (0, 2, 6, 7, 8)
    assert members[0] == (0, 1, 3, 4)  # rows 0-1, columns 0-1 (ceil(3/2) = 2)
    assert members[2] == (3, 6)  # rows 1-2, column 0


@pytest.mark.parametrize(("k", "kernel"), [(144, 2), (64, 3), (36, 4), (16, 6), (4, 12), (1, 24)])
def test_equals_avg_pool2d_on_llava_grid(k, kernel):
    g = torch.Generator().manual_seed(k)
    tokens = torch.randn(2, 576, 8, generator=g)
    result = PoolingPruner().prune(tokens, budget=k)
    image = tokens.view(2, 24, 24, 8).permute(0, 3, 1, 2)
    pooled = F.avg_pool2d(image, kernel).flatten(2).transpose(1, 2)  # (2, k, 8) row-major
    assert torch.allclose(result.values, pooled, atol=1e-6)
    side = 24 // kernel
    expected = [
        (i * kernel + kernel // 2) * 24 + j * kernel + kernel // 2
        for i in range(side)
        for j in range(side)
    ]
    assert result.indices.tolist() == [expected, expected]


@pytest.mark.parametrize(("h", "w", "oh", "ow"), [(24, 24, 10, 10), (24, 24, 7, 7), (6, 9, 4, 6)])
def test_equals_adaptive_avg_pool2d_for_regular_layouts(h, w, oh, ow):
    tokens = torch.randn(1, h * w, 5, generator=torch.Generator().manual_seed(0))
    result = PoolingPruner(grid=(h, w)).prune(tokens, budget=oh * ow)
    assert band_count(h, w, oh * ow) == oh
    image = tokens.view(1, h, w, 5).permute(0, 3, 1, 2)
    pooled = F.adaptive_avg_pool2d(image, (oh, ow)).flatten(2).transpose(1, 2)
    assert torch.allclose(result.values, pooled, atol=1e-6)


def test_non_grid_budget_128_on_24x24():
    centers, _ = pooling_layout(24, 24, 128)
    assert band_count(24, 24, 128) == 11
    rows = [c // 24 for c in centers]
    per_band = [rows.count(r) for r in sorted(set(rows))]
    assert sum(per_band) == 128 and sorted(set(per_band)) == [11, 12] and per_band.count(12) == 7


@pytest.mark.parametrize(("h", "w"), [(6, 6), (5, 8), (1, 7), (3, 10), (24, 24)])
def test_every_budget_keeps_exactly_k_covering_windows(h, w):
    n = h * w
    x = np.random.default_rng(h * 31 + w).normal(size=(n, 3))
    tokens = torch.tensor(x, dtype=torch.float64).unsqueeze(0)
    for k in range(1, n + 1) if n <= 64 else (1, 2, 50, 128, 192, 300, 575):
        centers, members = pooling_layout(h, w, k)
        assert len(centers) == k and len(set(centers)) == k
        assert set().union(*map(set, members)) == set(range(n)), "windows cover the grid"
        assert all(c in m for c, m in zip(centers, members))
        ref_centers, ref_means = reference_pool(x, h, w, k)
        assert list(centers) == ref_centers
        if k < n:
            result = PoolingPruner(grid=(h, w)).prune(tokens, budget=k)
            order = np.argsort(ref_centers)
            assert result.indices[0].tolist() == sorted(ref_centers)
            np.testing.assert_allclose(result.values[0].numpy(), ref_means[order], atol=1e-12)


def test_stride_mode_selects_the_centers():
    tokens = torch.randn(2, 576, 4)
    avg = PoolingPruner().prune(tokens, budget=144)
    stride = PoolingPruner(mode="stride").prune(tokens, budget=144)
    assert torch.equal(stride.indices, avg.indices)
    assert stride.values is None
    assert torch.equal(stride.kept_tokens(tokens), stride.gather(tokens))
    # every other row and column, offset by one: evenly spaced
    assert stride.indices[0, :3].tolist() == [25, 27, 29]


def test_ragged_samples_pool_their_own_grid():
    tokens = torch.randn(3, 36, 4, generator=torch.Generator().manual_seed(1))
    mask = torch.arange(36).unsqueeze(0) < torch.tensor([[36], [16], [9]])
    result = PoolingPruner().prune(tokens, budget=0.25, token_mask=mask)
    assert result.counts.tolist() == [9, 4, 2]
    for i, n in enumerate([36, 16, 9]):
        alone = PoolingPruner().prune(tokens[i : i + 1, :n], budget=0.25)
        count = int(result.counts[i])
        assert torch.equal(result.indices[i, :count], alone.indices[0])
        assert torch.allclose(result.values[i, :count], alone.values[0])
        assert (result.values[i, count:] == 0).all()
    # sample 1 is a 4x4 grid pooled to 2x2
    grid = tokens[1, :16].view(1, 4, 4, 4).permute(0, 3, 1, 2)
    expected = F.avg_pool2d(grid, 2).flatten(2).transpose(1, 2)[0]
    assert torch.allclose(result.values[1, :4], expected, atol=1e-6)


def test_fixed_grid_option():
    tokens = torch.randn(1, 24, 2)
    # inferred 4x6 vs forced 2x12: different windows
    inferred = PoolingPruner().prune(tokens, budget=6)
    forced = PoolingPruner(grid=(2, 12)).prune(tokens, budget=6)
    assert inferred.indices[0].tolist() == [7, 9, 11, 19, 21, 23]  # 2 bands x 3 cells of 2x2
    assert forced.indices[0].tolist() == [13, 15, 17, 19, 21, 23]  # 1 band x 6 cells of 2x2
    with pytest.raises(ValueError, match="grid"):
        PoolingPruner(grid=(5, 5)).prune(tokens, budget=6)
    with pytest.raises(ValueError, match="grid"):
        PoolingPruner(grid=(0, 4))
    with pytest.raises(ValueError, match="mode"):
        PoolingPruner(mode="max")


def test_low_precision_values_follow_the_input_dtype():
    tokens = torch.randn(1, 64, 8).bfloat16()
    result = PoolingPruner().prune(tokens, budget=16)
    reference = PoolingPruner().prune(tokens.float(), budget=16)
    assert torch.equal(result.indices, reference.indices)
    assert torch.equal(result.values, reference.values)  # computed in float32
    assert result.kept_tokens(tokens).dtype == torch.bfloat16


class TestPoolingContract(PrunerContract):
    cases = [("pooling", {"mode": "stride"})]
