"""The contract every pruner honours, as reusable tests for plugin authors.

prunekit runs these checks over every registered pruner (so an installed plugin's
pruners are covered by prunekit's own test suite); a plugin reuses them in its
own tests with a one-line pytest class::

    from prunekit.testing import PrunerContract

    class TestMyPruner(PrunerContract):
        pruner = "my_pruner"            # a registered name, a TokenPruner subclass or instance
        kwargs = {"alpha": 2.0}         # optional constructor arguments

or, outside pytest, ``prunekit.testing.check_pruner("my_pruner", alpha=2.0)``.

The contract, on random tokens (and text, and every signal in the pruner's
:attr:`~prunekit.TokenPruner.required_signals`, synthesized by
:func:`synthesize_signals`):

* each sample keeps :func:`prunekit.num_kept` tokens; indices are unique, ascending,
  padded with :data:`prunekit.PAD_INDEX`, and agree with ``mask``, ``gather``,
  ``scores`` ``(B, N)`` float32 (never NaN; finite on kept tokens) and merged
  ``values`` ``(B, K, d)`` when given;
* a budget covering every token gives the identity;
* the selection is deterministic and batch-invariant (a sample's selection does
  not depend on the other samples, nor on their order);
* float32, bfloat16, float16 and float64 inputs work, and low-precision inputs
  select as their float32 upcast does;
* padded tokens (ragged ``token_mask``, with garbage in the padding of tokens and
  signals) are never kept and do not change a sample's selection;
* masked-out text rows are ignored; a missing required signal raises ``ValueError``;
* a hypothesis property test over random shapes, budgets, ranks, duplicates and masks.

:class:`PrunerContract` needs pytest (and hypothesis for its property test);
:func:`check_pruner` and :func:`synthesize_signals` need only torch.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

import prunekit
from prunekit.core.budget import Budget, num_kept
from prunekit.core.pruner import TokenPruner
from prunekit.core.result import PAD_INDEX, PruneResult
from prunekit.core.signals import SIGNALS

try:  # the mixins need pytest; check_pruner and synthesize_signals do not
    import pytest

    _parametrize = pytest.mark.parametrize
except ImportError:  # pragma: no cover - exercised only without pytest
    pytest = None

    def _parametrize(*args: Any, **kwargs: Any) -> Callable[[Callable], Callable]:
        return lambda function: function


try:  # the property test needs hypothesis
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover - exercised only without hypothesis
    st = None

__all__ = [
    "DTYPES",
    "FULL_BUDGETS",
    "KEPT_BUDGETS",
    "RAGGED_BUDGETS",
    "PrunerCase",
    "PrunerContract",
    "PrunerContractTests",
    "PrunerPropertyTests",
    "as_case",
    "case_id",
    "check_well_formed",
    "check_pruner",
    "problems",
    "registered_cases",
    "run_properties",
    "synthesize_signals",
]

#: budgets of the kept-count test (on 40 tokens)
KEPT_BUDGETS: tuple[Budget, ...] = (1, 7, 0.25, 0.5)
#: budgets covering all 40 tokens (identity)
FULL_BUDGETS: tuple[Budget, ...] = (40, 1000, 1.0)
#: budgets of the ragged-mask test (samples of 30, 17 and 4 tokens)
RAGGED_BUDGETS: tuple[Budget, ...] = (5, 0.3)
#: input dtypes every pruner accepts
DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
#: value written into padded tokens and padded signal positions: it must not matter
GARBAGE = 1e3
#: seed of the example-based checks
SEED = 1234
#: tolerance on merged values computed in different batch layouts
_TOL = {"rtol": 1e-4, "atol": 1e-5}


# --------------------------------------------------------------------------- signals


def synthesize_signals(
    required: Iterable[str],
    batch: int,
    n_tokens: int,
    dim: int,
    generator: torch.Generator,
) -> dict[str, torch.Tensor]:
    """Plausible random values of the signals named in ``required``, for tests.

    Each comes from the ``example`` factory of its :class:`~prunekit.core.signals.SignalSpec`
    (in sorted name order, so a seeded ``generator`` gives reproducible values), e.g.
    ``cls_attention`` ``(batch, H, n_tokens)`` softmax rows.

    Raises:
        ValueError: a name is not in the signals table, or its spec has no
            ``example`` factory (register one with
            :func:`prunekit.core.signals.register_signal`), or the factory returned
            a tensor whose batch or token axis does not match.
    """
    signals: dict[str, torch.Tensor] = {}
    for name in sorted(required):
        spec = SIGNALS.get(name)
        if spec is None:
            raise ValueError(
                f"signal {name!r} is not registered (known: {sorted(SIGNALS)}); a plugin adds it "
                "with prunekit.core.signals.register_signal(SignalSpec(..., example=factory))"
            )
        if spec.example is None:
            raise ValueError(
                f"signal {name!r} has no example factory, so contract tests cannot synthesize "
                "it; give its SignalSpec an example(batch, n_tokens, dim, generator) factory"
            )
        value = spec.example(batch, n_tokens, dim, generator)
        if not isinstance(value, torch.Tensor) or value.dim() == 0 or value.shape[0] != batch:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(
                f"example factory of signal {name!r} must return a tensor with batch {batch} "
                f"first, got {shape}"
            )
        axis = spec.token_axis
        if axis is not None and value.shape[axis] != n_tokens:
            raise ValueError(
                f"example factory of signal {name!r} must return {n_tokens} tokens on axis "
                f"{axis} (shape {spec.shape}), got {tuple(value.shape)}"
            )
        signals[name] = value
    return signals


def _token_axis(name: str, value: torch.Tensor) -> int | None:
    spec = SIGNALS.get(name)
    if spec is None or spec.token_axis is None:
        return None
    return spec.token_axis % value.dim()


def _rows(signals: Mapping[str, torch.Tensor], rows: slice | torch.Tensor) -> dict:
    """The samples ``rows`` (a slice or index tensor) of every signal."""
    return {k: v[rows] for k, v in signals.items()}


def _first_tokens(signals: Mapping[str, torch.Tensor], n: int) -> dict:
    """Every per-token signal cut to its first ``n`` tokens."""
    out = {}
    for name, value in signals.items():
        axis = _token_axis(name, value)
        out[name] = value if axis is None else value.narrow(axis, 0, n)
    return out


def _fill_padding(
    signals: Mapping[str, torch.Tensor], token_mask: torch.Tensor, fill: float
) -> dict:
    """Write ``fill`` at the padded token positions of every float per-token signal."""
    out = {}
    for name, value in signals.items():
        axis = _token_axis(name, value)
        if axis is None or axis == 0 or not value.is_floating_point():
            out[name] = value
            continue
        shape = [1] * value.dim()
        shape[0], shape[axis] = token_mask.shape
        out[name] = value.masked_fill(~token_mask.reshape(shape), fill)
    return out


def _cast(signals: Mapping[str, torch.Tensor], dtype: torch.dtype) -> dict:
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in signals.items()}


# --------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class PrunerCase:
    """One pruner under test: a label (the pytest id) and a factory of fresh instances."""

    label: str
    factory: Callable[[], TokenPruner] = field(compare=False)

    def __call__(self) -> TokenPruner:
        pruner = self.factory()
        if not isinstance(pruner, TokenPruner):
            raise TypeError(
                f"pruner case {self.label!r} built a {type(pruner).__name__}, not a TokenPruner"
            )
        return pruner

    def __repr__(self) -> str:
        return self.label


def _kwarg_label(key: str, value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("name"), str):
        return value["name"]
    return f"{key}={value!r}"


def case_id(case: Any) -> str:
    """A short test id for a pruner, ``(pruner, kwargs)`` pair or :class:`PrunerCase`,
    e.g. ``"resprune"``, ``"composed[textxtopk]"``, ``"my_pruner[alpha=2.0]"``."""
    if isinstance(case, PrunerCase):
        return case.label
    pruner, kwargs = case if isinstance(case, tuple) else (case, {})
    if isinstance(pruner, str):
        name = pruner
    elif isinstance(pruner, type):
        name = pruner.__name__
    else:
        name = getattr(pruner, "__name__", type(pruner).__name__)
    if not kwargs:
        return name
    return f"{name}[{'x'.join(_kwarg_label(k, v) for k, v in kwargs.items())}]"


def as_case(pruner: Any, kwargs: Mapping[str, Any] | None = None) -> PrunerCase:
    """Turn a registered name, a TokenPruner subclass (or any factory) plus ``kwargs``,
    a TokenPruner instance, a ``(pruner, kwargs)`` pair or a :class:`PrunerCase` into a case."""
    if isinstance(pruner, PrunerCase):
        return pruner
    if isinstance(pruner, tuple):
        pruner, kwargs = pruner
    kwargs = dict(kwargs or {})
    label = case_id((pruner, kwargs))
    if isinstance(pruner, str):
        return PrunerCase(label, lambda: prunekit.create_pruner(pruner, **kwargs))
    if isinstance(pruner, TokenPruner):
        if kwargs:
            raise TypeError("kwargs cannot be given with a pruner instance")
        return PrunerCase(label, lambda: pruner)
    if callable(pruner):
        return PrunerCase(label, lambda: pruner(**kwargs))
    raise TypeError(
        "a pruner under test must be a registered name, a TokenPruner subclass or factory, "
        f"or a TokenPruner instance, got {type(pruner).__name__}"
    )


def registered_cases(pattern: str = "*", *, plugin: str | None = None) -> list[tuple[str, dict]]:
    """``(name, {})`` for every registered pruner matching ``pattern`` (and coming from
    the plugin named ``plugin``, its entry-point name, if given), with default arguments."""
    specs = prunekit.get_registry().specs("pruner", pattern)
    return [(s.name, {}) for s in specs if plugin is None or s.plugin == plugin]


# --------------------------------------------------------------------------- checks


def _expect(condition: Any, message: str) -> None:
    """``assert`` that survives ``python -O`` and needs no pytest assertion rewriting."""
    if not bool(condition):
        raise AssertionError(message)


def _inputs(
    pruner: TokenPruner,
    generator: torch.Generator,
    batch: int = 3,
    n: int = 40,
    d: int = 12,
    m: int = 3,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    tokens = torch.randn(batch, n, d, generator=generator)
    text = torch.randn(batch, m, d, generator=generator)
    signals = synthesize_signals(pruner.required_signals, batch, n, d, generator)
    return tokens, text, signals


def _same_selection(a: PruneResult, b: PruneResult, what: str) -> None:
    _expect(
        torch.equal(a.indices, b.indices),
        f"{what}: kept indices differ:\n{a.indices.tolist()}\nvs\n{b.indices.tolist()}",
    )
    _expect((a.values is None) == (b.values is None), f"{what}: merged values given only once")
    if a.values is not None:
        _expect(
            torch.allclose(a.values, b.values, **_TOL),
            f"{what}: merged values differ (max abs diff {(a.values - b.values).abs().max()})",
        )


def check_well_formed(result: PruneResult, tokens: torch.Tensor, counts: Sequence[int]) -> None:
    """``result`` keeps ``counts[b]`` tokens of sample ``b`` of ``tokens`` ``(B, N, d)``, as
    unique ascending indices padded with PAD_INDEX, agreeing with mask, gather, scores (no
    NaN, finite where kept) and values."""
    b, n, d = tokens.shape
    counts = list(counts)
    k = max(counts)
    _expect(
        result.indices.dtype == torch.int64, f"indices must be int64, got {result.indices.dtype}"
    )
    _expect(
        tuple(result.indices.shape) == (b, k),
        f"indices must have shape {(b, k)}, got {tuple(result.indices.shape)}",
    )
    _expect(
        result.mask.shape == (b, n) and result.mask.dtype == torch.bool,
        f"mask must be ({b}, {n}) bool, got {tuple(result.mask.shape)} {result.mask.dtype}",
    )
    _expect(
        result.counts.tolist() == counts,
        f"counts must be {counts}, got {result.counts.tolist()}",
    )
    for i, (row, count, mask_row) in enumerate(zip(result.indices, counts, result.mask)):
        real = row[:count]
        _expect((row[count:] == PAD_INDEX).all(), f"sample {i}: padding slots must be PAD_INDEX")
        _expect(
            (real[1:] > real[:-1]).all(),
            f"sample {i}: indices must be strictly ascending (so unique), got {real.tolist()}",
        )
        _expect(((real >= 0) & (real < n)).all(), f"sample {i}: index out of range in {real}")
        expected = torch.zeros(n, dtype=torch.bool)
        expected[real] = True
        _expect(torch.equal(mask_row, expected), f"sample {i}: mask disagrees with indices")
    gathered = torch.stack([t[i.clamp_min(0)] for t, i in zip(tokens, result.indices)])
    gathered = gathered.masked_fill(~result.slot_mask.unsqueeze(-1), 0.0)
    _expect(torch.equal(result.gather(tokens), gathered), "gather disagrees with indices")
    if result.scores is not None:
        _expect(
            tuple(result.scores.shape) == (b, n) and result.scores.dtype == torch.float32,
            f"scores must be ({b}, {n}) float32, got {tuple(result.scores.shape)} "
            f"{result.scores.dtype}",
        )
        nan = torch.isnan(result.scores)
        _expect(
            not nan.any(),
            f"scores must not be NaN, got NaN at (sample, token) {nan.nonzero().tolist()[:5]}",
        )
        _expect(
            torch.isfinite(result.scores[result.mask]).all(),
            "scores of kept tokens must be finite",
        )
    if result.values is not None:
        _expect(
            tuple(result.values.shape) == (b, k, d),
            f"values must have shape {(b, k, d)}, got {tuple(result.values.shape)}",
        )
        _expect((result.values[~result.slot_mask] == 0).all(), "values of padding slots must be 0")
        _expect(
            torch.isfinite(result.values[result.slot_mask]).all(), "merged values must be finite"
        )


def _expected_counts(
    pruner: TokenPruner, result: PruneResult, lengths: Sequence[int], budget: Budget
) -> list[int]:
    """The counts ``result`` must have: ``num_kept`` per sample, or, for an adaptive
    pruner (:attr:`~prunekit.TokenPruner.adaptive`), its own, each in ``[1, num_kept]``."""
    ceilings = [num_kept(n, budget) for n in lengths]
    if not pruner.adaptive:
        return ceilings
    counts = result.counts.tolist()
    _expect(
        all(1 <= c <= k for c, k in zip(counts, ceilings)),
        f"an adaptive pruner keeps between 1 and the budget's count {ceilings}, got {counts}",
    )
    return counts


def _check_kept_count(make: Callable[[], TokenPruner], budget: Budget) -> None:
    pruner = make()
    tokens, text, signals = _inputs(pruner, torch.Generator().manual_seed(SEED))
    result = pruner.prune(tokens, budget=budget, text_embeds=text, signals=signals)
    lengths = [tokens.shape[1]] * tokens.shape[0]
    check_well_formed(result, tokens, _expected_counts(pruner, result, lengths, budget))


def _check_identity(make: Callable[[], TokenPruner], budget: Budget) -> None:
    pruner = make()
    tokens, text, signals = _inputs(pruner, torch.Generator().manual_seed(SEED))
    result = pruner.prune(tokens, budget=budget, text_embeds=text, signals=signals)
    if pruner.adaptive:  # the budget is only a ceiling: the selection still runs
        check_well_formed(result, tokens, _expected_counts(pruner, result, [40] * 3, budget))
        return
    _expect(
        torch.equal(result.indices, torch.arange(40).expand(3, -1)),
        f"budget {budget!r} covers all 40 tokens: the result must be the identity",
    )
    _expect(result.mask.all(), "identity: every token must be kept")
    _expect(result.scores is None and result.values is None, "identity: no scores nor values")


def _check_deterministic(make: Callable[[], TokenPruner]) -> None:
    pruner = make()
    tokens, text, signals = _inputs(pruner, torch.Generator().manual_seed(SEED))
    first = pruner.prune(tokens, budget=9, text_embeds=text, signals=signals)
    clones = {k: v.clone() for k, v in signals.items()}
    second = make().prune(tokens.clone(), budget=9, text_embeds=text.clone(), signals=clones)
    _same_selection(first, second, "two fresh pruners on the same inputs")
    again = pruner.prune(tokens, budget=9, text_embeds=text, signals=signals)
    _same_selection(first, again, "the same pruner called twice")


def _check_batch_invariance(make: Callable[[], TokenPruner]) -> None:
    pruner = make()
    tokens, text, signals = _inputs(pruner, torch.Generator().manual_seed(SEED), batch=4)
    batched = pruner.prune(tokens, budget=10, text_embeds=text, signals=signals)
    for i in range(4):
        rows = slice(i, i + 1)
        alone = pruner.prune(
            tokens[rows], budget=10, text_embeds=text[rows], signals=_rows(signals, rows)
        )
        count = int(batched.counts[i])  # an adaptive pruner's counts may differ per sample
        _expect(
            torch.equal(alone.split()[0], batched.split()[i]),
            f"sample {i} alone keeps {alone.split()[0].tolist()}, in a batch of 4 "
            f"{batched.split()[i].tolist()}",
        )
        _expect(
            torch.allclose(
                alone.kept_tokens(tokens[rows])[0, :count],
                batched.kept_tokens(tokens)[i, :count],
                **_TOL,
            ),
            f"sample {i}: the kept (merged) tokens depend on the other samples of the batch",
        )
    flip = torch.arange(3, -1, -1)
    reversed_batch = pruner.prune(
        tokens[flip], budget=10, text_embeds=text[flip], signals=_rows(signals, flip)
    )
    _expect(
        torch.equal(reversed_batch.indices, batched.indices.flip(0)),
        "reversing the batch must reverse the selections",
    )


def _check_dtype(make: Callable[[], TokenPruner], dtype: torch.dtype) -> None:
    pruner = make()
    tokens, text, signals = _inputs(pruner, torch.Generator().manual_seed(SEED))
    low, low_text, low_signals = tokens.to(dtype), text.to(dtype), _cast(signals, dtype)
    result = pruner.prune(low, budget=8, text_embeds=low_text, signals=low_signals)
    check_well_formed(result, low, _expected_counts(pruner, result, [40] * 3, 8))
    reference = make().prune(
        low.float(),
        budget=8,
        text_embeds=low_text.float(),
        signals=_cast(low_signals, torch.float32),
    )
    if dtype != torch.float64:
        _expect(
            torch.equal(result.indices, reference.indices),
            f"{dtype} inputs must select as their float32 upcast does",
        )


def _ragged(n: int, lengths: Sequence[int]) -> torch.Tensor:
    return torch.arange(n).unsqueeze(0) < torch.tensor(list(lengths)).unsqueeze(1)


def _check_ragged(make: Callable[[], TokenPruner], budget: Budget) -> None:
    pruner = make()
    tokens, text, signals = _inputs(pruner, torch.Generator().manual_seed(SEED), n=30)
    lengths = [30, 17, 4]
    mask = _ragged(30, lengths)
    garbage = tokens.masked_fill(~mask.unsqueeze(-1), GARBAGE)
    garbage_signals = _fill_padding(signals, mask, GARBAGE)
    result = pruner.prune(
        garbage, budget=budget, text_embeds=text, token_mask=mask, signals=garbage_signals
    )
    counts = _expected_counts(pruner, result, lengths, budget)
    check_well_formed(result, garbage, counts)
    _expect(not (result.mask & ~mask).any(), "a padded token was kept")
    _expect(result.valid_counts.tolist() == lengths, f"valid_counts must be {lengths}")
    for i, n in enumerate(lengths):
        rows = slice(i, i + 1)
        alone = pruner.prune(
            tokens[rows, :n],
            budget=budget,
            text_embeds=text[rows],
            signals=_first_tokens(_rows(signals, rows), n),
        )
        _expect(
            torch.equal(result.split()[i], alone.indices[0]),
            f"sample {i} ({n} valid tokens of 30) keeps {result.split()[i].tolist()} padded, "
            f"{alone.indices[0].tolist()} unpadded",
        )
        _expect(
            torch.allclose(
                result.kept_tokens(garbage)[i, : counts[i]],
                alone.kept_tokens(tokens[rows, :n])[0],
                **_TOL,
            ),
            f"sample {i}: the kept (merged) tokens depend on the padding",
        )
    _expect(result.is_ragged == (len(set(counts)) > 1), "is_ragged is wrong")
    gathered = result.gather(tokens, fill_value=-7.0)
    _expect((gathered[~result.slot_mask] == -7.0).all(), "gather must fill padding slots")


def _check_text_mask(make: Callable[[], TokenPruner]) -> None:
    pruner = make()
    generator = torch.Generator().manual_seed(SEED)
    tokens, text, signals = _inputs(pruner, generator, m=4)
    text_mask = torch.tensor([[True, True, False, False]] * 3)
    noisy = text.clone()
    noisy[:, 2:] = torch.randn(3, 2, 12, generator=generator) * 50
    a = pruner.prune(tokens, budget=6, text_embeds=noisy, text_mask=text_mask, signals=signals)
    b = pruner.prune(tokens, budget=6, text_embeds=text[:, :2], signals=signals)
    _same_selection(a, b, "masked-out text rows changed the selection")


def _check_missing_signals(make: Callable[[], TokenPruner]) -> None:
    pruner = make()
    if not pruner.required_signals:
        return
    tokens, text, signals = _inputs(pruner, torch.Generator().manual_seed(SEED))
    for name in sorted(pruner.required_signals):
        partial = {k: v for k, v in signals.items() if k != name}
        try:
            pruner.prune(tokens, budget=5, text_embeds=text, signals=partial)
        except ValueError as exc:
            _expect(name in str(exc), f"the error for missing signal {name!r} must name it: {exc}")
        else:
            raise AssertionError(f"prune without the required signal {name!r} must raise")


def _check_problem(make: Callable[[], TokenPruner], problem: dict[str, Any]) -> None:
    """The property test's body: one random problem drawn by :func:`problems`."""
    pruner = make()
    tokens, text, mask, budget = (problem[k] for k in ("tokens", "text", "mask", "budget"))
    b, n, d = tokens.shape
    generator = torch.Generator().manual_seed(problem["seed"] ^ 0x5EED)
    signals = synthesize_signals(pruner.required_signals, b, n, d, generator)
    result = pruner.prune(tokens, budget=budget, text_embeds=text, token_mask=mask, signals=signals)
    lengths = mask.sum(1).tolist()
    expected = _expected_counts(pruner, result, lengths, budget)
    check_well_formed(result, tokens, expected)
    _expect(not (result.mask & ~mask).any(), "a padded token was kept")
    _expect(result.mask.sum(1).tolist() == expected, "mask does not keep the budget")
    for i, length in enumerate(lengths):
        rows = slice(i, i + 1)
        alone = pruner.prune(
            tokens[rows, :length],
            budget=budget,
            text_embeds=None if text is None else text[rows],
            signals=_first_tokens(_rows(signals, rows), length),
        )
        _expect(
            torch.equal(alone.indices[0], result.split()[i]),
            f"sample {i} ({length} valid of {n}) keeps {result.split()[i].tolist()} in the "
            f"batch, {alone.indices[0].tolist()} alone (budget {budget!r})",
        )


# --------------------------------------------------------------------------- properties

if st is not None:
    #: an int budget up to 60 or a fraction in [0.001, 1]
    budgets = st.one_of(
        st.integers(min_value=1, max_value=60),
        st.floats(min_value=1e-3, max_value=1.0, allow_nan=False),
    )

    @st.composite
    def problems(draw: Callable) -> dict[str, Any]:
        """Random prune problems: 1-4 samples of 1-40 tokens (full rank, rank <= 2, or
        duplicated tokens), 0-4 text rows, a prefix ``token_mask`` and a budget; plus the
        seed used, from which the property test synthesizes the pruner's signals."""
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
        text = torch.randn(b, m, d, generator=g) if m else None
        return {
            "tokens": tokens,
            "text": text,
            "mask": _ragged(n, lengths),
            "budget": draw(budgets),
            "seed": seed,
        }

    _HEALTH = [HealthCheck.too_slow]

    def run_properties(make: Callable[[], TokenPruner], config: settings | None = None) -> None:
        """Run the property check of ``make()`` under hypothesis ``config`` (default: the
        active profile's settings), raising hypothesis's falsifying example on a failure."""

        @given(problem=problems())
        def test_prune_properties(problem: dict[str, Any]) -> None:
            _check_problem(make, problem)

        (config or settings())(test_prune_properties)()

else:  # pragma: no cover

    def problems() -> Any:
        raise ImportError("prunekit.testing.problems needs hypothesis")

    def run_properties(make: Callable[[], TokenPruner], config: Any = None) -> None:
        raise ImportError("prunekit.testing.run_properties needs hypothesis")


# --------------------------------------------------------------------------- pytest mixins


class _PrunerUnderTest:
    """What the tests run on: ``pruner`` + ``kwargs``, ``make_pruner()``, or ``cases``."""

    #: a registered name, a TokenPruner subclass (or factory) or a TokenPruner instance
    pruner: ClassVar[Any] = None
    #: keyword arguments for ``pruner``
    kwargs: ClassVar[Mapping[str, Any]] = {}
    #: several pruners at once: names, classes, instances, ``(pruner, kwargs)`` pairs or
    #: :class:`PrunerCase`; every test runs once per case. Overrides ``pruner``.
    cases: ClassVar[Sequence[Any] | None] = None

    def make_pruner(self) -> TokenPruner:
        """A fresh pruner under test; override instead of setting ``pruner`` if you like."""
        pruner = inspect.getattr_static(type(self), "pruner")
        if isinstance(pruner, staticmethod):
            pruner = pruner.__func__
        if pruner is None:
            raise TypeError(
                f"{type(self).__name__} must set `pruner = ...` (a registered name, a "
                "TokenPruner subclass or instance), `cases = [...]`, or override make_pruner()"
            )
        return as_case(pruner, self.kwargs)()

    def contract_cases(self) -> list[PrunerCase]:
        """The cases every test is parametrized over."""
        if self.cases is not None:
            return [as_case(case) for case in self.cases]
        pruner = inspect.getattr_static(type(self), "pruner")
        label = type(self).__name__ if pruner is None else as_case(pruner, self.kwargs).label
        return [PrunerCase(label, self.make_pruner)]

    def pytest_generate_tests(self, metafunc: Any) -> None:
        if "pruner_case" in metafunc.fixturenames:
            cases = self.contract_cases()
            metafunc.parametrize("pruner_case", cases, ids=[c.label for c in cases])


class PrunerContractTests(_PrunerUnderTest):
    """The example-based contract tests (see the module docstring); a pytest mixin."""

    @_parametrize("budget", KEPT_BUDGETS)
    def test_kept_count_and_well_formed(self, pruner_case: PrunerCase, budget: Budget) -> None:
        """Each sample keeps ``num_kept`` tokens; the result is well formed (:func:`check_well_formed`)."""
        _check_kept_count(pruner_case, budget)

    @_parametrize("budget", FULL_BUDGETS)
    def test_identity_when_budget_covers_all(self, pruner_case: PrunerCase, budget: Budget) -> None:
        """A budget covering every token keeps every token."""
        _check_identity(pruner_case, budget)

    def test_deterministic(self, pruner_case: PrunerCase) -> None:
        """The same inputs give the same selection twice."""
        _check_deterministic(pruner_case)

    def test_batch_invariance(self, pruner_case: PrunerCase) -> None:
        """A sample's selection does not depend on the other samples in the batch."""
        _check_batch_invariance(pruner_case)

    @_parametrize("dtype", DTYPES, ids=lambda dtype: str(dtype).removeprefix("torch."))
    def test_dtypes(self, pruner_case: PrunerCase, dtype: torch.dtype) -> None:
        """Any float dtype is accepted; selections run in >= float32, so the bf16/fp16
        result equals the float32 result on the same (rounded) values."""
        _check_dtype(pruner_case, dtype)

    @_parametrize("budget", RAGGED_BUDGETS)
    def test_ragged_masks(self, pruner_case: PrunerCase, budget: Budget) -> None:
        """Padded tokens are never kept and a sample equals its unpadded self."""
        _check_ragged(pruner_case, budget)

    def test_text_mask_rows_are_ignored(self, pruner_case: PrunerCase) -> None:
        """Text rows masked out by ``text_mask`` change nothing, whatever their values."""
        _check_text_mask(pruner_case)

    def test_missing_signal_raises(self, pruner_case: PrunerCase) -> None:
        """Leaving out a signal named in ``required_signals`` raises ``ValueError``."""
        _check_missing_signals(pruner_case)


class PrunerPropertyTests(_PrunerUnderTest):
    """The hypothesis property test (see :func:`problems`); a pytest mixin.

    It runs as many examples as the hypothesis profile active when the test runs
    (``max_examples``) asks, per pruner."""

    def test_prune_properties(self, pruner_case: PrunerCase) -> None:
        """The contract holds on random shapes, budgets, ranks, duplicates and masks."""
        if st is None:  # pragma: no cover
            pytest.skip("the property test needs hypothesis")
        # settings built now, not at import, so that the profile a conftest loads applies
        run_properties(pruner_case, settings(deadline=None, suppress_health_check=_HEALTH))


class PrunerContract(PrunerContractTests, PrunerPropertyTests):
    """Every contract test of a prunekit pruner, as a pytest mixin.

    For example::

        class TestMyPruner(PrunerContract):
            pruner = "my_pruner"          # or MyPruner (a class), or MyPruner(alpha=2.0)
            kwargs = {"alpha": 2.0}       # optional

    Set ``cases = [...]`` instead to run the suite over several pruners, e.g.
    ``cases = registered_cases(plugin="my_plugin")``, or override ``make_pruner()``.
    """


# --------------------------------------------------------------------------- plain function


def check_pruner(pruner: Any, /, *, max_examples: int = 25, **kwargs: Any) -> None:
    """Run every contract check on ``pruner`` without pytest, e.g.
    ``check_pruner("resprune", alpha=2.0)``.

    Args:
        pruner: a registered name, a TokenPruner subclass or factory (built with
            ``kwargs``), or a TokenPruner instance.
        max_examples: random problems of the property check (needs hypothesis;
            0 skips it).
        **kwargs: constructor arguments.

    Raises:
        AssertionError: naming the pruner and the failed check (any error a check
            raises is reported this way, chained as the cause; hypothesis's
            falsifying example included).
    """
    case = as_case(pruner, kwargs)
    checks: list[tuple[str, Callable[[], None]]] = []
    checks += [
        (f"kept count, budget={b!r}", lambda b=b: _check_kept_count(case, b)) for b in KEPT_BUDGETS
    ]
    checks += [
        (f"identity, budget={b!r}", lambda b=b: _check_identity(case, b)) for b in FULL_BUDGETS
    ]
    checks += [("determinism", lambda: _check_deterministic(case))]
    checks += [("batch invariance", lambda: _check_batch_invariance(case))]
    checks += [(f"dtype {t}", lambda t=t: _check_dtype(case, t)) for t in DTYPES]
    checks += [
        (f"ragged masks, budget={b!r}", lambda b=b: _check_ragged(case, b)) for b in RAGGED_BUDGETS
    ]
    checks += [("masked text rows", lambda: _check_text_mask(case))]
    checks += [("missing signals", lambda: _check_missing_signals(case))]
    if max_examples > 0 and st is not None:
        config = settings(
            max_examples=max_examples,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        checks.append(("properties", lambda: run_properties(case, config)))
    for what, check in checks:
        try:
            check()
        except Exception as exc:  # an unexpected error fails the contract just as well
            detail = str(exc) if isinstance(exc, AssertionError) else f"{type(exc).__name__}: {exc}"
            detail = "\n".join([detail, *getattr(exc, "__notes__", [])])
            raise AssertionError(f"{case.label}: contract check {what!r} failed: {detail}") from exc
