"""score_mass: any scoring pruner keeps, per sample, the shortest prefix of its priority
order that holds a share of the sample's score mass (adaptive budgets for baselines)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import pytest
import torch
from tiny_models import left_pad, prompt_ids, tiny_llava

import prunekit
from prunekit import Picks, PruneInputs, TokenPruner
from prunekit.cli import main
from prunekit.core.points import IN_LLM
from prunekit.experiments import ConfigError, build_pruner, compose
from prunekit.pruners.score_mass import ScoreMass
from prunekit.strategies.relevance.text import TextRelevance
from prunekit.testing import PrunerContract, synthesize_signals


@dataclass
class FirstFeature(TokenPruner):
    """A scoring pruner for the tests: score = the token's first feature; priority order by
    decreasing score, ties to the lower index, padded tokens last."""

    name = "first_feature"

    def select(self, inputs: PruneInputs, num_keep: int) -> Picks:
        scores = inputs.tokens[..., 0]
        key = scores.masked_fill(~inputs.token_mask, -math.inf)
        order = torch.sort(key, dim=1, descending=True, stable=True).indices[:, :num_keep]
        return Picks(order=order, scores=scores)


@dataclass
class NoScores(FirstFeature):
    def select(self, inputs: PruneInputs, num_keep: int) -> Picks:
        return Picks(order=super().select(inputs, num_keep).order)


def tokens_with_scores(rows: list[list[float]], d: int = 3, seed: int = 0) -> torch.Tensor:
    """``(B, N, d)`` tokens whose first feature is the given score, the rest noise."""
    scores = torch.tensor(rows, dtype=torch.float32)
    noise = torch.randn(*scores.shape, d, generator=torch.Generator().manual_seed(seed))
    noise[..., 0] = scores
    return noise


def mass(m: float, **kwargs) -> ScoreMass:
    return ScoreMass(pruner=FirstFeature(), mass=m, **kwargs)


def reference_count(scores: list[float], ceiling: int, m: float, min_keep: int = 1) -> int:
    """Float64 brute force: the smallest k whose k largest clamped scores hold m of the total."""
    clamped = sorted((max(0.0, s) for s in scores), reverse=True)
    total = math.fsum(clamped)
    for k in range(1, len(clamped) + 1):
        if math.fsum(clamped[:k]) >= m * total:
            return min(max(k, min_keep), ceiling)
    return ceiling


# --------------------------------------------------------------------------- hand-worked


@pytest.mark.parametrize(
    ("m", "kept"),
    [
        (0.5, [1]),  # 0.5 >= 0.5
        (0.75, [1, 3]),  # 0.5 + 0.3 = 0.8 >= 0.75
        (0.8, [1, 3]),  # exactly 0.8: float32 scores must not miss it
        (0.85, [0, 1, 3]),  # + 0.1 of token 0 (the lower index of the 0.1 tie)
        (0.95, [0, 1, 2, 3]),
    ],
)
def test_hand_worked_example(m, kept):
    tokens = tokens_with_scores([[0.1, 0.5, 0.1, 0.3]])
    result = mass(m).prune(tokens, budget=1.0)
    assert result.indices.tolist() == [kept]
    assert result.counts.tolist() == [len(kept)]
    assert torch.equal(result.scores, tokens[..., 0])  # the inner pruner's scores, reported


def test_ties_keep_the_inner_order():
    """Equal scores: the count follows from the mass, which tokens from the inner tie rule."""
    result = mass(0.5).prune(tokens_with_scores([[0.25, 0.25, 0.25, 0.25]]), budget=1.0)
    assert result.indices.tolist() == [[0, 1]]
    # a tie at the threshold: 0.4 + 0.2 is exactly 0.6 of 1.0
    result = mass(0.6).prune(tokens_with_scores([[0.2, 0.4, 0.2, 0.2]]), budget=1.0)
    assert result.indices.tolist() == [[0, 1]]


def test_negative_scores_count_as_zero():
    # clamped total 4: 0.9 of it needs 3 + 1; unclamped (total 2) 3 alone would do
    result = mass(0.9).prune(tokens_with_scores([[3.0, 1.0, -2.0]]), budget=1.0)
    assert result.counts.tolist() == [2]


def test_all_zero_scores_keep_the_floor():
    tokens = tokens_with_scores([[0.0] * 6])
    assert mass(0.9).prune(tokens, budget=1.0).counts.tolist() == [1]
    assert mass(0.9, min_keep=3).prune(tokens, budget=1.0).indices.tolist() == [[0, 1, 2]]


def test_floor_and_ceiling():
    tokens = tokens_with_scores([[8.0, 1.0, 1.0, 1.0, 1.0, 1.0]])  # 0.1 needs one token
    assert mass(0.1, min_keep=3).prune(tokens, budget=1.0).counts.tolist() == [3]
    assert mass(0.99).prune(tokens, budget=2).counts.tolist() == [2]  # the budget caps it
    assert mass(0.1, min_keep=5).prune(tokens, budget=2).counts.tolist() == [2]  # budget wins
    assert mass(0.99).prune(tokens, budget=0.5).counts.tolist() == [3]


def test_mass_one_is_the_inner_pruner_at_the_budget():
    tokens = tokens_with_scores([[0.0, 5.0, 0.0, 1.0, 2.0]] * 2)
    wrapped = mass(1.0)
    assert not wrapped.adaptive and mass(0.99).adaptive
    got, expected = wrapped.prune(tokens, budget=4), FirstFeature().prune(tokens, budget=4)
    assert torch.equal(got.indices, expected.indices) and torch.equal(got.scores, expected.scores)
    identity = wrapped.prune(tokens, budget=1.0)  # zero scores are not dropped at mass 1
    assert identity.counts.tolist() == [5, 5] and identity.scores is None


# --------------------------------------------------------------------------- batches


def random_scores(batch: int, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, n, generator=g) ** 3 * 10 - 0.5  # skewed, a few negative


@pytest.mark.parametrize("budget", [1.0, 12, 0.4])
@pytest.mark.parametrize("m", [0.3, 0.7, 0.95])
def test_counts_and_indices_equal_a_float64_brute_force(budget, m):
    scores = random_scores(5, 30, seed=7)
    tokens = tokens_with_scores(scores.tolist())
    result = mass(m, min_keep=2).prune(tokens, budget=budget)
    for b in range(5):
        row = scores[b].tolist()
        ceiling = prunekit.num_kept(30, budget)
        count = reference_count(row, ceiling, m, min_keep=2)
        assert int(result.counts[b]) == count
        top = sorted(range(30), key=lambda i: (-row[i], i))[:count]  # the inner order's prefix
        assert result.split()[b].tolist() == sorted(top)
    assert result.is_ragged  # the samples kept different counts


def test_a_prefix_of_the_inner_pruners_choice_at_the_budget():
    tokens = tokens_with_scores(random_scores(4, 25, seed=3).tolist())
    result = mass(0.6).prune(tokens, budget=10)
    inner = FirstFeature()
    for b in range(4):
        alone = inner.prune(tokens[b : b + 1], budget=int(result.counts[b]))
        assert torch.equal(result.split()[b], alone.indices[0])


def test_padding_is_never_kept_and_does_not_change_a_sample():
    scores = random_scores(3, 20, seed=5)
    lengths = [20, 11, 4]
    mask = torch.arange(20).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)
    tokens = tokens_with_scores(scores.tolist()).masked_fill(~mask.unsqueeze(-1), 1e3)
    result = mass(0.8).prune(tokens, budget=1.0, token_mask=mask)
    assert not (result.mask & ~mask).any()
    for b, n in enumerate(lengths):
        alone = mass(0.8).prune(tokens[b : b + 1, :n], budget=1.0)
        assert torch.equal(result.split()[b], alone.indices[0])
        assert int(result.counts[b]) == reference_count(scores[b, :n].tolist(), n, 0.8)


def test_batch_invariance():
    tokens = tokens_with_scores(random_scores(6, 16, seed=11).tolist())
    pruner = mass(0.7)
    batched = pruner.prune(tokens, budget=12)
    for b in range(6):
        alone = pruner.prune(tokens[b : b + 1], budget=12)
        assert torch.equal(alone.split()[0], batched.split()[b])
    flipped = pruner.prune(tokens.flip(0), budget=12)
    assert flipped.counts.tolist() == batched.counts.flip(0).tolist()


def test_low_precision_tokens_select_as_their_float32_upcast():
    tokens = tokens_with_scores(random_scores(3, 24, seed=2).tolist()).to(torch.bfloat16)
    low = mass(0.7).prune(tokens, budget=1.0)
    high = mass(0.7).prune(tokens.float(), budget=1.0)
    assert torch.equal(low.indices, high.indices) and torch.equal(low.counts, high.counts)


class TestAdaptiveContract(PrunerContract):
    """prunekit's pruner contract (adaptive counts: each in [1, the budget's count])."""

    cases = [
        ("score_mass", {"pruner": "fastervlm", "mass": 0.7}),
        ("score_mass", {"pruner": {"name": "random", "seed": 0}, "mass": 0.5, "min_keep": 3}),
        ("score_mass", {"pruner": "divprune", "mass": 0.9}),
    ]


# --------------------------------------------------------------------------- construction


def test_built_from_names_mappings_and_objects():
    by_name = prunekit.create_pruner("score_mass", pruner="fastv", mass=0.9)
    assert type(by_name.pruner).__name__ == "FastV" and by_name.adaptive
    assert by_name.required_signals == {"last_query_attention"}
    assert by_name.pruning_points == {IN_LLM}
    by_mapping = prunekit.create_pruner(
        "score_mass", pruner={"name": "random", "seed": 3}, mass=0.8, min_keep=4
    )
    assert by_mapping.pruner.seed == 3 and by_mapping.min_keep == 4
    assert ScoreMass(pruner=FirstFeature()).pruning_points is None
    # adapters tell a text-conditioned pruner by its relevance strategy
    assert isinstance(prunekit.create_pruner("score_mass").relevance, TextRelevance)
    assert ScoreMass(pruner=FirstFeature()).relevance is None


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(mass=0.0), ValueError, r"mass must be in \(0, 1\], got 0.0"),
        (dict(mass=1.5), ValueError, "mass must be in"),
        (dict(mass=float("nan")), ValueError, "mass must be in"),
        (dict(min_keep=0), ValueError, "min_keep must be >= 1"),
        (dict(mass="0.9"), TypeError, "mass must be a float"),
        (dict(pruner=3), TypeError, "pruner must be"),
        (dict(pruner={"p": 1.0}), ValueError, "pruner given as a mapping needs a 'name'"),
        (dict(pruner="fastvv"), ValueError, "Did you mean 'fastv'"),
        (dict(pruner=ScoreMass(pruner=FirstFeature(), mass=0.5)), ValueError, "^pruner: Score"),
    ],
)
def test_bad_arguments_are_named(kwargs, error, match):
    with pytest.raises(error, match=match):
        prunekit.create_pruner("score_mass", **{"mass": 0.9, **kwargs})


@pytest.mark.parametrize(
    ("inner", "why"),
    [
        ("visionzip", "VisionZip merges tokens"),  # Picks.values
        ("pooling", "PoolingPruner merges tokens"),
        ("vispruner", "VisPruner reads inputs.keep_counts"),  # important / diverse split
        ("dart", "DART reads inputs.keep_counts"),
        (NoScores(), "NoScores returns no scores"),
    ],
)
def test_pruners_without_a_scored_priority_order_are_refused(inner, why):
    pruner = prunekit.create_pruner("score_mass", pruner=inner, mass=0.5)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(2, 16, 8, generator=g)
    signals = synthesize_signals(pruner.required_signals, 2, 16, 8, g)
    with pytest.raises(ValueError, match=f"^pruner: {why}.*priority order"):
        pruner.prune(tokens, budget=6, signals=signals)


def test_attach_refuses_a_pruning_point_the_inner_pruner_is_not_defined_for():
    model = tiny_llava()
    pruner = prunekit.create_pruner("score_mass", pruner="fastv", mass=0.5)
    with pytest.raises(ValueError, match="last_query_attention.*pruning point 'pre_llm'"):
        prunekit.attach(model, pruner, budget=1.0)


# --------------------------------------------------------------------------- a real baseline


GEN = dict(max_new_tokens=4, min_new_tokens=4, do_sample=False)


def test_fastv_in_the_llm_keeps_ragged_counts_from_its_own_scores():
    """FastV after decoder layer 1 of a tiny LLaVA, batched with left padding: each prompt
    keeps the count its head-mean attention's mass asks for, and answers as plain FastV does
    with that count as its budget, prompt by prompt."""
    model = tiny_llava(initializer_range=0.2)
    rows = [prompt_ids([7, 8, 9], 16), prompt_ids([10], 16), prompt_ids([11, 12], 16)]
    ids, mask = left_pad(rows)
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    inputs = {"input_ids": ids, "attention_mask": mask, "pixel_values": pixels}
    pruner = prunekit.create_pruner("score_mass", pruner="fastv", mass=0.6)
    with prunekit.attach(model, pruner, budget=1.0, llm_layer=1) as handle:
        together = model.generate(**inputs, **GEN)
    (result,) = handle.results
    assert result.is_ragged  # the prompts kept different counts
    for b in range(3):
        scores = result.scores[b].tolist()  # FastV's head-mean last-query attention
        count = reference_count(scores, 16, 0.6)
        assert int(result.counts[b]) == count
        top = sorted(range(16), key=lambda i: (-scores[i], i))[:count]
        assert result.split()[b].tolist() == sorted(top)
        alone_ids, alone_mask = left_pad([rows[b]])
        alone = {
            "input_ids": alone_ids,
            "attention_mask": alone_mask,
            "pixel_values": pixels[b : b + 1],
        }
        with prunekit.attach(model, "fastv", budget=count, llm_layer=1) as fixed:
            single = model.generate(**alone, **GEN)
        assert torch.equal(fixed.results[0].indices[0], result.split()[b])
        assert together[b, -4:].tolist() == single[0, -4:].tolist()


# --------------------------------------------------------------------------- configs


def test_config_builds_the_wrapper_with_a_nested_pruner():
    cfg = compose(
        ["pruner=score_mass", "pruner.pruner=fastv", "pruner.mass=0.9", "adapter.llm_layer=1"]
    )
    built = build_pruner(cfg)
    assert type(built.pruner).__name__ == "FastV" and built.mass == 0.9
    cfg = compose(["pruner=score_mass", "pruner.pruner={name:random,seed:5}", "pruner.min_keep=4"])
    built = build_pruner(cfg)
    assert built.pruner.seed == 5 and built.min_keep == 4 and built.mass == 1.0
    with pytest.raises(ConfigError, match="adapter.llm_layer"):
        compose(["pruner=score_mass", "pruner.pruner=fastv"])
    with pytest.raises(ConfigError, match="pruner=score_mass: mass must be in"):
        compose(["pruner=score_mass", "pruner.mass=2.0"])
    with pytest.raises(ConfigError, match="Did you mean 'fastv'"):
        compose(["pruner=score_mass", "pruner.pruner=fastvv", "adapter.llm_layer=1"])


def test_cli_run_records_the_spread_of_tokens_kept(tmp_path):
    out = tmp_path / "sweep"
    code = main(
        [
            "ablate",
            "pruner=score_mass",
            "pruner.pruner=fastv",
            "pruner.mass=0.5",
            "adapter.llm_layer=1",
            "budget=1.0",
            "data=tiny",
            "data.n_samples=6",
            "bench.loyalty=false",
            "bench.progress=false",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    (result_file,) = out.glob("*/result.json")
    metrics = json.loads(result_file.read_text())["metrics"]
    kept = [json.loads(line)["kept"] for line in (result_file.parent / "predictions.jsonl").open()]
    mean = sum(kept) / len(kept)
    assert metrics["tokens_kept"] == pytest.approx(mean)
    assert metrics["tokens_kept_std"] == pytest.approx(
        math.sqrt(sum((k - mean) ** 2 for k in kept) / len(kept))
    )
    assert (metrics["tokens_kept_min"], metrics["tokens_kept_max"]) == (min(kept), max(kept))
    assert metrics["tokens_kept_max"] < metrics["tokens_in"]  # the mass, not the budget, decided
