"""The native CPU kernel of the greedy residual selection: the same picks as the PyTorch
loop on degenerate inputs, the rows path's blocks at every size, backend resolution, and
the build (cache, failure) of :mod:`prunekit.kernels.native`."""

from __future__ import annotations

import pytest
import torch

import prunekit.kernels.native as native
from prunekit.kernels.greedy_cpu import greedy_rows_cpu
from prunekit.strategies.selection.greedy_residual import (
    GreedyResidualSelection,
    greedy_residual_order,
    selection_backend,
)

if native.native_library() is None:
    pytest.skip("no C compiler: the native kernel cannot be built here", allow_module_level=True)


def both(tokens, weights, k, valid=None, **kwargs):
    """(reference picks, native Gram-path picks, native rows-path picks)."""
    ref = greedy_residual_order(tokens, weights, k, valid, backend="torch", method="gram", **kwargs)
    gram = greedy_residual_order(
        tokens, weights, k, valid, backend="native", method="gram", **kwargs
    )
    rows = greedy_residual_order(
        tokens, weights, k, valid, backend="native", method="rows", **kwargs
    )
    return ref, gram, rows


def degenerate_cases():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(2, 6, 12, generator=g)
    duplicates = torch.cat([base, base, 2 * base[:, :2]], dim=1)  # exact ties and rescaled copies
    yield "duplicates", duplicates, torch.ones(2, 14), 10, None
    low_rank = torch.randn(3, 30, 4, generator=g) @ torch.randn(3, 4, 16, generator=g)
    yield "beyond_rank", low_rank, torch.rand(3, 30, generator=g).round(decimals=1), 12, None
    weights = torch.rand(2, 40, generator=g)
    weights[:, ::3] = 0.0
    yield "zero_weights", torch.randn(2, 40, 8, generator=g), weights, 30, None
    valid = torch.arange(25).unsqueeze(0) < torch.tensor([[25], [7]])
    yield (
        "padded_fewer_than_k",
        torch.randn(2, 25, 8, generator=g),
        torch.rand(2, 25, generator=g),
        12,
        valid,
    )
    zero = torch.randn(1, 10, 5, generator=g)
    zero[0, [0, 4]] = 0.0
    yield "zero_tokens", zero, torch.ones(1, 10), 10, None
    yield (
        "float64",
        torch.randn(2, 50, 20, generator=g, dtype=torch.float64),
        torch.rand(2, 50, generator=g, dtype=torch.float64),
        30,
        None,
    )


@pytest.mark.parametrize("case", list(degenerate_cases()), ids=lambda c: c[0])
def test_native_paths_pick_what_the_reference_picks(case):
    _, tokens, weights, k, valid = case
    ref, gram, rows = both(tokens, weights, k, valid)
    assert torch.equal(gram, ref)
    assert torch.equal(rows, ref)


@pytest.mark.parametrize("tie_rtol", [0.0, 1e-5, 1e-2])
def test_tie_tolerance_is_applied_identically(tie_rtol):
    g = torch.Generator().manual_seed(3)
    tokens = torch.randn(2, 50, 8, generator=g)
    weights = (torch.rand(2, 50, generator=g) * 4).round() / 4  # many equal weights
    ref, gram, rows = both(tokens, weights, 20, tie_rtol=tie_rtol)
    assert torch.equal(gram, ref) and torch.equal(rows, ref)


@pytest.mark.parametrize("block_rows", [1, 2, 7, 500])
def test_rows_path_is_exact_whatever_the_block(block_rows):
    """Block 1 computes a row at every step (every step misses); 500 > N holds every row."""
    g = torch.Generator().manual_seed(block_rows)
    tokens = torch.randn(2, 120, 24, generator=g) * torch.rand(2, 120, 1, generator=g)
    weights = torch.rand(2, 120, generator=g)
    valid = torch.arange(120).unsqueeze(0) < torch.tensor([[120], [90]])
    ref = greedy_residual_order(tokens, weights, 40, valid, backend="torch", method="gram")
    energy = tokens.square().sum(-1)
    tol = energy * 1e-4
    state = (energy.masked_fill(energy <= tol, 0.0), tol, weights, valid.clone(), 40, 1e-5)
    assert torch.equal(greedy_rows_cpu(tokens, *state, block_rows=block_rows), ref)
    with pytest.raises(ValueError, match="block_rows"):
        greedy_rows_cpu(tokens, *state, block_rows=0)


def test_backend_resolution_and_errors():
    cpu = torch.zeros(1, 3, 2)
    assert selection_backend(cpu) == "native"
    assert selection_backend(cpu.half()) == "torch"  # the kernel takes float32/float64
    assert selection_backend(cpu, "torch") == "torch"
    with pytest.raises(ValueError, match="backend"):
        selection_backend(cpu, "cuda")
    with pytest.raises(ValueError, match="backend='native'"):
        selection_backend(cpu.half(), "native")
    with pytest.raises(ValueError, match="backend='triton'"):
        selection_backend(cpu, "triton", "rows")
    with pytest.raises(ValueError, match="backend"):
        GreedyResidualSelection(backend="fast")


def test_build_is_cached_per_source_and_failure_falls_back(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNEKIT_CACHE_DIR", str(tmp_path))
    native.native_library.cache_clear()
    try:
        library = native.native_library()
        built = list((tmp_path / "kernels").glob("greedy_cpu-*.so"))
        assert library is not None and len(built) == 1
        native.native_library.cache_clear()
        mtime = built[0].stat().st_mtime_ns
        assert native.native_library() is not None  # loaded from the cache, not rebuilt
        assert built[0].stat().st_mtime_ns == mtime

        native.native_library.cache_clear()
        monkeypatch.setenv("PRUNEKIT_CACHE_DIR", str(tmp_path / "other"))
        monkeypatch.setenv("CC", "no-such-compiler-xyz")
        with pytest.warns(RuntimeWarning, match="no-such-compiler-xyz"):
            assert native.native_library() is None
        tokens, weights = torch.randn(1, 20, 4), torch.rand(1, 20)
        assert selection_backend(tokens) == "torch"  # auto falls back to the PyTorch loop
        with pytest.raises(ValueError, match="backend='native'"):
            greedy_residual_order(tokens, weights, 5, backend="native")

        native.native_library.cache_clear()
        monkeypatch.delenv("CC")
        monkeypatch.setenv("PRUNEKIT_NATIVE", "0")
        assert native.native_library() is None  # switched off: no warning, no build
        assert not (tmp_path / "other" / "kernels").exists()
    finally:
        native.native_library.cache_clear()
