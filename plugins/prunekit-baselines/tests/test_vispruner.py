"""VisPruner: important tokens by [CLS] attention, diverse tokens by iterative duplicate removal."""

from __future__ import annotations

import math
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "..", "tests"))

from tiny_models import IMAGE_TOKEN_ID, prompt_ids, tiny_llava  # noqa: E402

import prunekit  # noqa: E402
from prunekit.testing import PrunerContract  # noqa: E402
from prunekit_baselines.vispruner import VisPruner, vispruner_indices  # noqa: E402


def official_vispruner(features, attention, num_keep, ratio=0.5, per_round=8, fixed=False):
    """The official ``encode_images`` selection, transcribed; ``attention`` is (B, H, N).

    With ``fixed=False`` it keeps the official indexing, which fails when the
    residual has an odd number of tokens or when a round must drop more even
    tokens than there are; ``fixed=True`` keeps whatever the even half has left
    (what prunekit does).
    """
    batch = features.shape[0]
    n_important = int(num_keep * ratio)
    n_diverse = num_keep - n_important
    ranking = attention.mean(dim=1).argsort(dim=-1, descending=True)
    important, residual = ranking[:, :n_important], ranking[:, n_important:]
    normed = features / features.norm(dim=-1, keepdim=True)
    while True:
        size = residual.shape[1]
        drop = min(per_round, size - n_diverse)
        if drop <= 0:
            break
        tokens = normed[torch.arange(batch).unsqueeze(-1).expand(-1, size), residual]
        even, odd = tokens[..., ::2, :], tokens[..., 1::2, :]
        scores = (even @ odd.transpose(-1, -2)).max(dim=-1).values
        distinct = scores.argsort(dim=-1, descending=True)[:, drop:]
        kept = distinct.shape[1] if fixed else size // 2 - drop
        residual = torch.cat(
            [
                residual[..., ::2][torch.arange(batch).unsqueeze(-1).expand(-1, kept), distinct],
                residual[..., 1::2],
            ],
            dim=-1,
        )
    selected = torch.cat([important, residual], dim=-1)
    mask = torch.zeros(features.shape[:2], dtype=torch.bool).scatter_(1, selected, True)
    return torch.stack([row.nonzero()[:, 0] for row in mask])


def problem(seed, batch=2, n=40, dim=16, heads=4):
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(batch, n, dim, generator=g)
    attention = torch.softmax(torch.randn(batch, heads, n + 1, generator=g) * 2, -1)[..., 1:]
    return features, attention


def on_circle(degrees):
    radians = torch.tensor(degrees, dtype=torch.float64) * math.pi / 180
    return torch.stack([radians.cos(), radians.sin()], dim=-1).float()


def test_rounds_by_hand_including_odd_residuals():
    """K = 3, r = 1/3, one drop per round, unit features at these angles:

    token:   0    1    2    3    4    5    6
    angle:   -    0   10   90  105  180  200     attention descending by index

    important: [0]; residual [1..6], 2 diverse tokens to reach.
    round 1 (R=6): evens 1, 3, 5 best-match 0.985 (2), 0.966 (4), 0.940 (6): drop 1;
                   residual [3, 5, 2, 4, 6]
    round 2 (R=5, odd): evens 3, 2, 6 score 0.966, -0.087, 0.940:
                   drop 3; residual [6, 2, 5, 4]
    round 3 (R=4): evens 6, 5 score -0.087, 0.259: drop 5; residual [6, 2, 4]
    round 4 (R=3): evens 6, 4 against odd 2 score -0.985, -0.087: drop 4; residual [6, 2]
    """
    features = torch.cat([torch.tensor([[0.0, -1.0]]), on_circle([0, 10, 90, 105, 180, 200])])[None]
    attention = torch.linspace(0.7, 0.1, 7).view(1, 1, 7)
    order = vispruner_indices(features, attention[:, 0], 3, 1 / 3, drop_per_round=1)
    assert order.tolist() == [[0, 6, 2]]
    pruner = VisPruner(important_ratio=1 / 3, drop_per_round=1)
    result = pruner.prune(features, budget=3, signals={"cls_attention": attention})
    assert result.indices.tolist() == [[0, 2, 6]]
    torch.testing.assert_close(result.scores, attention[:, 0])
    # the official indexing happens to broadcast in rounds 2 and 4 here; in round 4 it
    # loses the kept even token, so it returns 2 tokens instead of 3
    assert official_vispruner(features, attention, 3, 1 / 3, per_round=1).tolist() == [[0, 2]]
    fixed = official_vispruner(features, attention, 3, 1 / 3, per_round=1, fixed=True)
    assert fixed.tolist() == [[0, 2, 6]]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(("budget", "ratio"), [(16, 0.5), (20, 0.5), (24, 0.25), (30, 0.6)])
def test_matches_the_official_code_where_it_runs(seed, budget, ratio):
    features, attention = problem(seed)
    # where the official code runs: an even residual and at least 8 diverse tokens
    assert (40 - int(budget * ratio)) % 2 == 0 and budget - int(budget * ratio) >= 8
    result = VisPruner(important_ratio=ratio).prune(
        features, budget=budget, signals={"cls_attention": attention}
    )
    assert torch.equal(result.indices, official_vispruner(features, attention, budget, ratio))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("budget", [1, 2, 8, 10])
def test_few_diverse_tokens_follow_the_generalised_official_code(seed, budget):
    """With fewer than 8 diverse tokens a round may have to drop more even tokens than the
    residual has: the official code then fails; prunekit drops all of them and goes on."""
    features, attention = problem(seed, n=40)
    result = VisPruner().prune(features, budget=budget, signals={"cls_attention": attention})
    expected = official_vispruner(features, attention, budget, fixed=True)
    assert torch.equal(result.indices, expected)
    with pytest.raises((RuntimeError, IndexError)):
        official_vispruner(features, attention, budget)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("budget", [16, 17, 20, 25])
def test_odd_residuals_follow_the_generalised_official_code(seed, budget):
    features, attention = problem(seed, n=41)
    assert (41 - budget // 2) % 2 == 1
    result = VisPruner().prune(features, budget=budget, signals={"cls_attention": attention})
    expected = official_vispruner(features, attention, budget, fixed=True)
    assert torch.equal(result.indices, expected)
    with pytest.raises((RuntimeError, IndexError)):  # the official code's index error
        official_vispruner(features, attention, budget)


def test_all_important_and_all_diverse_extremes():
    features, attention = problem(0, n=12)
    signals = {"cls_attention": attention}
    top = attention.mean(dim=1).topk(5, dim=1).indices.sort(dim=1).values
    assert torch.equal(
        VisPruner(important_ratio=1.0).prune(features, budget=5, signals=signals).indices, top
    )
    diverse = VisPruner(important_ratio=0.0).prune(features, budget=5, signals=signals)
    expected = official_vispruner(features, attention, 5, ratio=0.0, fixed=True)
    assert torch.equal(diverse.indices, expected)


def test_half_precision_selects_as_float32_and_zero_features_are_safe():
    features, attention = problem(1)
    half = features.half()
    signals = {"cls_attention": attention}
    low = VisPruner().prune(half, budget=10, signals=signals)
    high = VisPruner().prune(half.float(), budget=10, signals=signals)
    assert torch.equal(low.indices, high.indices)
    features[:, :6] = 0.0  # norm 0: the official code divides by it (NaN)
    result = VisPruner().prune(features, budget=10, signals=signals)
    assert result.counts.tolist() == [10, 10]


def test_ragged_samples_use_their_own_counts():
    features, attention = problem(2, batch=2, n=40)
    mask = torch.ones(2, 40, dtype=torch.bool)
    mask[1, 26:] = False
    result = VisPruner().prune(
        features, budget=0.25, token_mask=mask, signals={"cls_attention": attention}
    )
    assert result.counts.tolist() == [10, 7]  # 7 = round(0.25 * 26): 3 important + 4 diverse
    alone = official_vispruner(features[1:, :26], attention[1:, :, :26], 7, fixed=True)
    assert result.split()[1].tolist() == alone[0].tolist()


def test_arguments_and_declarations():
    assert VisPruner.required_signals == {"cls_attention"}
    assert VisPruner.pruning_points == {"pre_projector"}
    assert prunekit.create_pruner("vispruner") == VisPruner(important_ratio=0.5, drop_per_round=8)
    with pytest.raises(ValueError, match="important_ratio"):
        VisPruner(important_ratio=1.5)
    with pytest.raises(ValueError, match="drop_per_round"):
        VisPruner(drop_per_round=0)
    with pytest.raises(TypeError, match="drop_per_round"):
        VisPruner(drop_per_round=2.0)


def near_duplicates(seed, batch=2, n=64, dim=32, groups=6, noise=1e-4):
    """float64 tokens in a few tight clusters: many similarities within 1e-7 of each other
    (ties once rounded to float32), all distinct in float64."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(batch, groups, dim, generator=g, dtype=torch.float64)
    members = torch.randint(0, groups, (batch, n), generator=g)
    features = centers.gather(1, members.unsqueeze(-1).expand(-1, -1, dim))
    features = features + noise * torch.randn(batch, n, dim, generator=g, dtype=torch.float64)
    logits = torch.randn(batch, 4, n + 1, generator=g, dtype=torch.float64) * 2
    return features, torch.softmax(logits, -1)[..., 1:]


@pytest.mark.parametrize("noise", [1e-3, 1e-4])
@pytest.mark.parametrize("seed", range(6))
def test_float64_near_duplicates_match_the_official_code_in_float64(seed, noise):
    """float64 features keep float64 similarities: rounding them to float32 (as before)
    tied most of these and broke the ties by position, unlike the official code."""
    features, attention = near_duplicates(seed, noise=noise)
    result = VisPruner().prune(features, budget=16, signals={"cls_attention": attention})
    assert torch.equal(result.indices, official_vispruner(features, attention, 16))


def test_near_ties_chain_at_the_tolerance():
    """Scores within ``tie_atol`` of their neighbour in descending order are one tie,
    ranked by index; a larger gap separates them."""
    from prunekit_baselines.vispruner import _rank_descending

    scores = torch.tensor(
        [[0.5, 0.5 + 1e-14, 0.9, 0.5 - 1e-14, 0.9 + 3e-14, -torch.inf]], dtype=torch.float64
    )
    assert _rank_descending(scores).tolist() == [[4, 2, 1, 0, 3, 5]]
    assert _rank_descending(scores, 2e-14).tolist() == [[4, 2, 0, 1, 3, 5]]
    assert _rank_descending(scores, 4e-14).tolist() == [[2, 4, 0, 1, 3, 5]]


def test_float64_duplicates_select_alike_in_any_batch_layout():
    """Exact duplicate tokens: their float64 similarities may differ in the last bits
    between batch layouts, but within the tolerance they tie and rank by position."""
    g = torch.Generator().manual_seed(5)
    base = torch.randn(4, 30, 256, generator=g, dtype=torch.float64)
    features = base[:, torch.randint(0, 30, (60,), generator=g)]  # every token ~twice
    attention = torch.rand(4, 2, 60, generator=g, dtype=torch.float64)
    mask = torch.arange(60) < torch.tensor([[60], [51], [44], [37]])
    pruner = VisPruner(important_ratio=0.25)
    batched = pruner.prune(
        features, budget=12, token_mask=mask, signals={"cls_attention": attention}
    )
    for i, length in enumerate([60, 51, 44, 37]):
        alone = pruner.prune(
            features[i : i + 1, :length],
            budget=12,
            signals={"cls_attention": attention[i : i + 1, :, :length]},
        )
        assert torch.equal(alone.indices[0], batched.split()[i])


class TestVisPrunerContract(PrunerContract):
    cases = [
        ("vispruner", {"important_ratio": 0.25, "drop_per_round": 1}),
        ("vispruner", {"important_ratio": 0.0}),
    ]


# --------------------------------------------------------------------------- end to end


def test_end_to_end_on_tiny_llava_before_the_projector():
    model = tiny_llava(attn_implementation="eager")
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    texts = [[7, 8, 9], [10, 11, 12]]
    ids = torch.tensor([prompt_ids(t, 16) for t in texts])
    budget = 6  # 3 important + 3 diverse from an odd residual of 13: both fixes at work
    with prunekit.attach(model, "vispruner", budget=budget, before_projector=True) as handle:
        with torch.no_grad():
            logits = model(
                input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pixels
            ).logits
    with torch.no_grad():
        out = model.model.vision_tower(pixels, output_hidden_states=True, output_attentions=True)
        features = out.hidden_states[-2][:, 1:]  # layer -2 patch features
        attention = out.attentions[-2][:, :, 0, 1:]
        keep = official_vispruner(features, attention, budget, fixed=True)
        assert torch.equal(handle.results[0].indices, keep)
        kept = torch.stack([f[k] for f, k in zip(features, keep)])
        projected = model.model.multi_modal_projector(kept).reshape(-1, 32)
        new_ids = torch.tensor([prompt_ids(t, budget) for t in texts])
        embeds = model.get_input_embeddings()(new_ids).masked_scatter(
            (new_ids == IMAGE_TOKEN_ID).unsqueeze(-1), projected
        )
        expected = model(inputs_embeds=embeds, attention_mask=torch.ones_like(new_ids)).logits
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)


def test_attach_refuses_the_post_projector_point():
    with pytest.raises(ValueError, match=r"defined for the pruning points \['pre_projector'\]"):
        with prunekit.attach(tiny_llava(), "vispruner", budget=4):
            pass
