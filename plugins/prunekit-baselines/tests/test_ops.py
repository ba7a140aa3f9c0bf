"""The baselines' shared helpers: unit rows with each method's epsilon, cosines, head mean."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from prunekit_baselines._ops import (
    COSINE_SIMILARITY_EPS,
    ZERO_NORM_EPS,
    cosine,
    cosine_tie_atol,
    head_mean,
    unit_rows,
)


def test_unit_rows_by_hand():
    x = torch.tensor([[3.0, 4.0], [0.0, -2.0], [0.0, 0.0]], dtype=torch.float64)
    expected = torch.tensor([[0.6, 0.8], [0.0, -1.0], [0.0, 0.0]], dtype=torch.float64)
    for eps in (ZERO_NORM_EPS, COSINE_SIMILARITY_EPS):
        assert torch.allclose(unit_rows(x, eps=eps), expected, rtol=0, atol=1e-15)


def test_unit_rows_keep_the_dtype():
    x = torch.tensor([[3.0, 4.0]], dtype=torch.float32)
    assert unit_rows(x, eps=ZERO_NORM_EPS).dtype == torch.float32


def test_the_two_epsilons_differ_only_below_them():
    # norm 5e-10: between the two guards. VisionZip / VisPruner still make it a unit row;
    # DART, like F.cosine_similarity, divides by 1e-8 instead (norm 0.05)
    tiny = torch.tensor([[3e-10, 4e-10]], dtype=torch.float64)
    assert torch.allclose(unit_rows(tiny, eps=ZERO_NORM_EPS), torch.tensor([[0.6, 0.8]]).double())
    assert torch.allclose(
        unit_rows(tiny, eps=COSINE_SIMILARITY_EPS), torch.tensor([[0.03, 0.04]]).double()
    )


def test_zero_norm_eps_is_f_normalize_bit_for_bit():
    gen = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.float64):
        x = torch.randn(3, 17, 33, generator=gen).to(dtype) * 5
        x[0, 0] = 0.0
        assert torch.equal(unit_rows(x, eps=ZERO_NORM_EPS), F.normalize(x, dim=-1))


def test_cosine_similarity_eps_gives_f_cosine_similarity():
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(1, 8, dtype=torch.float64, generator=gen)
    b = torch.randn(6, 8, dtype=torch.float64, generator=gen)
    b[1] *= 1e-11  # below the 1e-8 guard: F.cosine_similarity shrinks this cosine
    b[2] = 0.0
    unit_a, unit_b = (
        unit_rows(a, eps=COSINE_SIMILARITY_EPS),
        unit_rows(b, eps=COSINE_SIMILARITY_EPS),
    )
    ours = (unit_a * unit_b).sum(dim=-1)
    assert torch.allclose(ours, F.cosine_similarity(a, b, dim=-1), rtol=1e-12, atol=1e-15)
    assert abs(float(ours[1])) < 1e-2  # shrunk, not a full cosine


def test_unit_rows_rejects_a_bad_eps():
    with pytest.raises(ValueError, match="eps"):
        unit_rows(torch.ones(1, 2), eps=0.0)


def test_cosine_and_tie_tolerance_by_hand():
    a = torch.tensor([[[1.0, 0.0], [0.6, 0.8]]], dtype=torch.float64)
    b = torch.tensor([[[0.0, 1.0]]], dtype=torch.float64)
    out = cosine(a, b)
    assert out.dtype == torch.float32 and out.shape == (1, 2, 1)
    assert torch.allclose(out, torch.tensor([[[0.0], [0.8]]]))
    assert cosine(a, b, torch.float64).dtype == torch.float64
    assert cosine_tie_atol(torch.float32, 1024) == 0.0
    assert cosine_tie_atol(torch.float64, 1024) == 1024 * 2.0**-52


def test_head_mean_by_hand():
    attention = torch.tensor([[[0.2, 0.4], [0.6, 0.0]]])  # (B=1, H=2, N=2)
    assert torch.allclose(head_mean(attention), torch.tensor([[0.4, 0.2]]))
