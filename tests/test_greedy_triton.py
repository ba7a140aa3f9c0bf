"""The Triton kernel of the greedy residual steps against the PyTorch reference loop.

The kernel runs in Triton's CPU interpreter. Triton fixes interpreter mode when
``triton.language`` is imported (its helpers such as ``tl.max`` are jitted then), so the
kernel runs in one child process started with ``TRITON_INTERPRET=1``: this process and
every other test keep Triton's normal mode whatever was imported before. The cases are
built here, run there in one go, and checked here against ``greedy_residual_order``'s
PyTorch loop. Shapes are small: the interpreter runs every block op in NumPy.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from reference import projected_residuals, resprune_reference

from prunekit.kernels.greedy_triton import greedy_steps_triton, triton_available
from prunekit.strategies.selection.greedy_residual import (
    DEFAULT_RANK_TOL,
    greedy_residual_order,
)

# find_spec, not importorskip: importing Triton here would fix its mode for this process
if importlib.util.find_spec("triton") is None:
    pytest.skip("Triton is not installed", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[1]

# Runs the jobs saved in argv[1] under the interpreter; saves picks (or the error) to argv[2].
CHILD = """
import sys, torch
from prunekit.kernels.greedy_triton import greedy_steps_triton
from prunekit.strategies.selection.greedy_residual import greedy_residual_order

results = {}
for name, (kind, args, kwargs) in torch.load(sys.argv[1]).items():
    copies = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
    fn = greedy_steps_triton if kind == "steps" else greedy_residual_order
    try:
        picks = fn(*args, **kwargs)
    except Exception as error:
        picks = f"{type(error).__name__}: {error}"
    unchanged = all(
        torch.equal(a, c) if isinstance(a, torch.Tensor) else a == c for a, c in zip(args, copies)
    )
    results[name] = (picks, unchanged)
torch.save(results, sys.argv[2])
"""


def prepared(tokens, weights, valid=None, rank_tol=None):
    """The inputs greedy_residual_order's Gram path hands to its steps (less K and tie_rtol)."""
    rank_tol = DEFAULT_RANK_TOL[tokens.dtype] if rank_tol is None else rank_tol
    if valid is None:
        valid = torch.ones(tokens.shape[:2], dtype=torch.bool)
    gram = torch.bmm(tokens, tokens.transpose(1, 2))
    energy = gram.diagonal(dim1=1, dim2=2).clone()
    tol = energy * rank_tol
    energy = energy.masked_fill(energy <= tol, 0.0)
    return gram, energy, tol, weights.to(tokens.dtype), valid.clone()


@dataclass
class Case:
    """Tokens, weights, K, an optional padding mask and tie_rtol."""

    tokens: torch.Tensor
    weights: torch.Tensor
    k: int
    valid: torch.Tensor | None = None
    tie_rtol: float = 1e-5

    def job(self):
        state = prepared(self.tokens, self.weights, self.valid)
        return "steps", (*state, self.k, self.tie_rtol), {}

    def expected(self) -> torch.Tensor:
        return greedy_residual_order(
            self.tokens,
            self.weights,
            self.k,
            self.valid,
            method="gram",
            backend="torch",
            tie_rtol=self.tie_rtol,
        )


def random_case(seed, batch, n, d, k, dtype=torch.float32) -> Case:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(batch, n, d, generator=g, dtype=dtype)
    return Case(tokens, torch.rand(batch, n, generator=g, dtype=dtype), k)


def duplicates_case() -> Case:
    base = torch.randn(2, 6, 16, generator=torch.Generator().manual_seed(5))
    tokens = base[:, torch.tensor([3, 0, 3, 1, 0, 5, 2, 4, 1, 5, 2, 4])]  # each row twice
    return Case(tokens, torch.ones(2, 12), 10)


def near_duplicates_case() -> Case:
    """Each row, then a copy 2e-6 larger: a tie within tie_rtol, won by the first (smaller)."""
    base = torch.randn(2, 6, 16, generator=torch.Generator().manual_seed(11))
    tokens = torch.stack([base, base * (1 + 2e-6)], dim=2).reshape(2, 12, 16)
    return Case(tokens, torch.ones(2, 12), 8)


def zero_weights_case() -> Case:
    case = random_case(7, 3, 24, 16, 15)
    case.weights[0, ::2] = 0.0
    case.weights[1] = 0.0  # all zero: fill by weight, ties to the lowest index
    return case


def padding_case() -> Case:
    case = random_case(8, 3, 16, 8, 10)
    case.valid = torch.ones(3, 16, dtype=torch.bool)
    case.valid[0, 5:] = False  # 5 valid tokens, K = 10
    case.valid[1, ::3] = False
    case.valid[2] = False  # nothing valid at all: the loop picks index 0
    return case


def zero_token_case(tie_rtol) -> Case:
    case = random_case(9, 2, 12, 6, 12)
    case.tokens[0, 4] = 0.0
    case.tokens[1, 0] = 0.0
    case.valid = torch.ones(2, 12, dtype=torch.bool)
    case.valid[1, 9:] = False
    case.tie_rtol = tie_rtol
    return case


def projection_case() -> Case:
    rng = np.random.default_rng(4)
    tokens = torch.tensor(rng.normal(size=(1, 30, 12)))
    return Case(tokens, torch.tensor(rng.uniform(0.2, 1.0, size=(1, 30))), 10)


CASES = {
    **{f"random_f32_seed{s}": random_case(s, 3, 48, 24, 16) for s in range(3)},
    # N not a multiple of 16, K past one block of factor rows (BLOCK_K = 16)
    "random_f64_blocks": random_case(3, 2, 37, 30, 20, torch.float64),
    "duplicates": duplicates_case(),
    "near_duplicates": near_duplicates_case(),
    "beyond_rank": random_case(6, 2, 20, 3, 12),  # rank 3
    "zero_weights": zero_weights_case(),
    "padding": padding_case(),
    "zero_token": zero_token_case(1e-5),
    "zero_token_rtol0": zero_token_case(0.0),
    "projection": projection_case(),
}
ORDER_CASE = random_case(10, 2, 32, 12, 14)
#: cases whose residual sums (return_residuals=True) are checked against float64 projections
RESIDUAL_CASES = ("random_f32_seed0", "random_f64_blocks", "duplicates", "beyond_rank", "padding")


def residual_job(case: Case):
    """greedy_residual_order on the Triton backend, with the residual sums."""
    kwargs = {"method": "gram", "backend": "triton", "tie_rtol": case.tie_rtol}
    kwargs["return_residuals"] = True
    return "order", (case.tokens, case.weights, case.k, case.valid), kwargs


def all_jobs():
    jobs = {name: case.job() for name, case in CASES.items()}
    jobs.update({f"residuals_{name}": residual_job(CASES[name]) for name in RESIDUAL_CASES})
    order_args = (ORDER_CASE.tokens, ORDER_CASE.weights, ORDER_CASE.k)
    jobs["order_triton"] = ("order", order_args, {"method": "gram", "backend": "triton"})
    state = prepared(torch.randn(2, 5, 3), torch.ones(2, 5))
    jobs["zero_steps"] = ("steps", (*state, 0, 1e-5), {})
    empty = prepared(torch.randn(0, 5, 3), torch.ones(0, 5))
    jobs["empty_batch"] = ("steps", (*empty, 3, 1e-5), {})
    jobs["zero_steps_residuals"] = ("steps", (*state, 0, 1e-5), {"return_residuals": True})
    jobs["empty_batch_residuals"] = ("steps", (*empty, 3, 1e-5), {"return_residuals": True})
    return jobs


@pytest.fixture(scope="module")
def interpreted(tmp_path_factory):
    """name -> (picks or error text, inputs unchanged) of every job, run by the interpreter."""
    folder = tmp_path_factory.mktemp("triton")
    torch.save(all_jobs(), folder / "jobs.pt")
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(folder / "jobs.pt"), str(folder / "results.pt")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return torch.load(folder / "results.pt")


# Compiles the kernel for an H100-class GPU (sm_90) without one; prints what the PTX holds.
COMPILE = """
import json, triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from prunekit.kernels.greedy_triton import BLOCK_K, _jitted

counts = {}
for ty, residuals in (("fp32", False), ("fp64", False), ("fp32", True), ("fp64", True)):
    signature = {name: f"*{ty}" for name in ("gram_ptr", "energy_ptr", "tol_ptr", "weight_ptr")}
    signature.update(avail_ptr="*i8", factor_ptr=f"*{ty}", pick_ptr="*i64", resid_ptr=f"*{ty}")
    signature.update(rtol_ptr=f"*{ty}", n="i32", num_keep="i32", BLOCK_N="constexpr")
    signature.update(BLOCK_K="constexpr", IS_FP64="constexpr", HAS_RESIDUALS="constexpr")
    constants = {"BLOCK_N": 256, "BLOCK_K": BLOCK_K, "IS_FP64": ty == "fp64"}
    constants["HAS_RESIDUALS"] = residuals
    compiled = triton.compile(
        ASTSource(_jitted(False), signature, constexprs=constants),
        target=GPUTarget("cuda", 90, 32),
    )
    ptx = compiled.asm["ptx"]
    counts[f"{ty}{'_residuals' if residuals else ''}"] = {
        "cubin": len(compiled.asm["cubin"]),
        **{op: ptx.count(op) for op in ("bar.sync", f"sqrt.rn.f{ty[2:]}", f"div.rn.f{ty[2:]}")},
    }
print(json.dumps(counts))
"""


def test_compiles_for_a_gpu(tmp_path):
    """The compiled path (not only the interpreter) builds: sm_90 code, IEEE 1 / sqrt."""
    env = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_CACHE_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", COMPILE], cwd=ROOT, env=env, capture_output=True, text=True
    )
    if done.returncode != 0 and "ptxas" in done.stderr:
        pytest.skip("Triton's ptxas cannot run here")
    assert done.returncode == 0, done.stderr[-4000:]
    compiled = json.loads(done.stdout.splitlines()[-1])
    assert len(compiled) == 4, compiled  # float32 and float64, with and without residuals
    for ty, counts in compiled.items():
        bits = "f" + ty[2:4]
        assert counts["cubin"] > 0, ty
        assert counts[f"sqrt.rn.{bits}"] == 1 and counts[f"div.rn.{bits}"] == 1, counts
        assert counts["bar.sync"] >= 2, counts  # the kernel's own barriers at least


def picks_of(interpreted, name) -> torch.Tensor:
    picks, unchanged = interpreted[name]
    assert isinstance(picks, torch.Tensor), picks  # else the child's error
    assert unchanged, f"{name}: the kernel modified its inputs"
    return picks


@pytest.mark.parametrize("name", list(CASES))
def test_same_picks_as_the_torch_loop(interpreted, name):
    picks, expected = picks_of(interpreted, name), CASES[name].expected()
    assert picks.dtype == torch.int64 and picks.shape == expected.shape
    assert torch.equal(picks, expected), f"triton {picks.tolist()} != torch {expected.tolist()}"


def test_matches_the_projection_reference(interpreted):
    """Picks equal a naive least-squares projection reference (tests/reference.py)."""
    case = CASES["projection"]
    expected, _ = resprune_reference(
        case.tokens[0].numpy(), case.k, case.weights[0].numpy(), rank_tol=1e-10
    )
    assert picks_of(interpreted, "projection")[0].tolist() == expected


def test_duplicates_tie_to_the_lowest_index(interpreted):
    picks = picks_of(interpreted, "duplicates")
    # the first copy of each of the six rows wins; a second copy adds nothing
    assert picks[:, :6].sort(dim=1).values.tolist() == [[0, 1, 3, 5, 6, 7]] * 2


def test_near_ties_go_to_the_lowest_index(interpreted):
    picks = picks_of(interpreted, "near_duplicates")
    assert picks[:, :6].sort(dim=1).values.tolist() == [[0, 2, 4, 6, 8, 10]] * 2


def test_beyond_the_rank_fills_by_weight(interpreted):
    rest = picks_of(interpreted, "beyond_rank")[:, 3:]
    assert torch.all(CASES["beyond_rank"].weights.gather(1, rest).diff(dim=1) <= 0)


def test_all_zero_weights_fill_in_index_order(interpreted):
    assert picks_of(interpreted, "zero_weights")[1].tolist() == list(range(15))


def test_padding_is_never_picked_while_valid_tokens_remain(interpreted):
    picks = picks_of(interpreted, "padding")
    assert sorted(picks[0, :5].tolist()) == [0, 1, 2, 3, 4]
    assert not CASES["padding"].valid[1].gather(0, picks[1, :10]).logical_not().any()
    assert picks[2].tolist() == [0] * 10


def test_greedy_residual_order_backend_triton(interpreted):
    expected = greedy_residual_order(
        ORDER_CASE.tokens, ORDER_CASE.weights, ORDER_CASE.k, method="gram", backend="torch"
    )
    assert torch.equal(picks_of(interpreted, "order_triton"), expected)


def test_zero_steps_and_empty_batch(interpreted):
    assert picks_of(interpreted, "zero_steps").shape == (2, 0)
    assert picks_of(interpreted, "empty_batch").shape == (0, 3)
    for name, shape in (("zero_steps_residuals", (2, 0)), ("empty_batch_residuals", (0, 3))):
        (picks, residuals), unchanged = interpreted[name]
        assert unchanged and picks.shape == shape and residuals.shape == shape


@pytest.mark.parametrize("name", RESIDUAL_CASES)
def test_residual_sums_match_the_projection_reference(interpreted, name):
    """The kernel's residual sums equal float64 projections onto each prefix of its picks,
    to the clamping (a residual at most rank_tol of a token's energy counts as 0)."""
    case = CASES[name]
    (picks, residuals), unchanged = interpreted[f"residuals_{name}"]
    assert unchanged and residuals.dtype == case.tokens.dtype
    assert torch.equal(picks, case.expected())
    reference = projected_residuals(case.tokens, case.valid, picks, case.weights)
    energy = case.tokens.double().square().sum(-1)
    if case.valid is not None:
        energy = energy.masked_fill(~case.valid, 0.0)
    slack = 2 * DEFAULT_RANK_TOL[case.tokens.dtype] * energy.sum(1, keepdim=True) + 1e-12
    assert torch.all((residuals.double() - reference).abs() <= slack), (residuals, reference)


def test_triton_available_follows_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert triton_available()
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert triton_available() == torch.cuda.is_available()


def good_args():
    return (*prepared(torch.randn(2, 5, 3), torch.ones(2, 5)), 3, 1e-5)


@pytest.mark.parametrize(
    ("index", "value", "error", "match"),
    [
        (0, torch.zeros(2, 5, 4), ValueError, r"gram must be a \(B, N, N\)"),
        (0, torch.zeros(2, 5, 5, dtype=torch.float16), TypeError, "gram must be float32"),
        (1, torch.zeros(2, 4), ValueError, "energy must have shape"),
        (2, torch.zeros(2, 5, dtype=torch.float64), TypeError, "tol must be torch.float32"),
        (3, torch.zeros(5), ValueError, "weights must have shape"),
        (4, torch.ones(2, 5), TypeError, "available must be torch.bool"),
        (5, -1, ValueError, "num_keep must be an int >= 0"),
        (5, 2.0, ValueError, "num_keep must be an int >= 0"),
        (6, 1.5, ValueError, r"tie_rtol must be in \[0, 1\)"),
        (6, "1e-5", TypeError, "tie_rtol must be a float"),
    ],
)
def test_bad_arguments_are_named(index, value, error, match):
    args = list(good_args())
    args[index] = value
    with pytest.raises(error, match=match):
        greedy_steps_triton(*args)


def test_cpu_tensors_need_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="gram must be on a CUDA device"):
        greedy_steps_triton(*good_args())
