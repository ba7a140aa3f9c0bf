"""Merging dropped tokens into kept ones (prunekit.strategies.merge, ComposedPruner.merge).

References are independent: float64 ``torch.linalg.lstsq``, a hand-worked 2-D
example, per-token Python loops, and the tiny LLaVA run by hand.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from tiny_models import IMAGE_TOKEN_ID, left_pad, prompt_ids, tiny_llava

import prunekit
from prunekit import ComposedPruner, Picks, ResPrune
from prunekit.strategies.merge import assign_dropped, lstsq_coefficients, merge_dropped
from prunekit.strategies.selection.base import SelectionStrategy
from prunekit.strategies.selection.greedy_residual import GreedyResidualSelection
from prunekit.testing import PrunerContract

# --------------------------------------------------------------------------- references


def reference_merge(tokens, mask, kept_mask, pick_rank, method, preserve_norm=False):
    """Per sample and per dropped token, in float64 with Python loops: the merged value of
    each kept token, in ascending position order (a list per sample)."""
    out = []
    for b in range(tokens.shape[0]):
        x = tokens[b].double()
        kept = [i for i in range(x.shape[0]) if kept_mask[b, i]]
        kept.sort(key=lambda i: pick_rank[b][i])  # pick order: ties go to the earliest pick
        xs = x[kept]
        clusters = {i: [x[i]] for i in kept}
        for j in range(x.shape[0]):
            if not mask[b, j] or kept_mask[b, j]:
                continue
            if method == "lstsq":
                coef = torch.linalg.lstsq(xs.T, x[j].unsqueeze(1), driver="gelsd").solution[:, 0]
                scores = [abs(float(coef[s])) * float(xs[s].norm()) for s in range(len(kept))]
            else:
                scores = [
                    float(torch.dot(xs[s], x[j]) / (xs[s].norm() * x[j].norm()))
                    for s in range(len(kept))
                ]
            best = max(range(len(kept)), key=lambda s: (scores[s], -s))
            clusters[kept[best]].append(x[j])
        values = []
        for i in sorted(kept):
            mean = torch.stack(clusters[i]).mean(dim=0)
            if preserve_norm and len(clusters[i]) > 1:
                mean = mean * x[i].norm() / mean.norm()
            values.append(mean)
        out.append(torch.stack(values))
    return out


def pick_ranks(order, counts):
    """{token: rank in pick order} per sample."""
    return [{int(t): r for r, t in enumerate(row[:c].tolist())} for row, c in zip(order, counts)]


class RecordingSelection(SelectionStrategy):
    """Greedy residual selection that remembers its pick order (the merge's tie order)."""

    name = "recording"

    def __init__(self):
        self.inner = GreedyResidualSelection()
        self.order = None

    def select(self, inputs, weights, num_keep):
        self.order = self.inner.select(inputs, weights, num_keep)
        return self.order


@dataclass
class FirstHalf(SelectionStrategy):
    """An adaptive selection: keeps the first half (rounded up) of each sample's valid
    tokens, in reverse position order, at most the budget (ragged Picks.counts)."""

    name = "first_half"

    @property
    def adaptive(self):
        return True

    def select(self, inputs, weights, num_keep):
        valid = inputs.valid_counts
        counts = torch.minimum((valid + 1) // 2, inputs.keep_counts)
        slot = torch.arange(num_keep)
        order = (counts.unsqueeze(1) - 1 - slot).clamp_min(0)  # tokens c-1, ..., 0, then padding
        order = torch.where(slot < counts.unsqueeze(1), order, slot)
        return Picks(order=order, counts=counts)


@dataclass
class Energetic(SelectionStrategy):
    """An adaptive selection: the tokens of above-average norm, largest first, at most the
    budget (counts differ between samples)."""

    name = "energetic"

    @property
    def adaptive(self):
        return True

    def select(self, inputs, weights, num_keep):
        norms = inputs.tokens.norm(dim=-1).masked_fill(~inputs.token_mask, -1.0)
        mean = norms.clamp_min(0).sum(1) / inputs.valid_counts
        above = (norms > mean.unsqueeze(1)).sum(1)
        counts = torch.minimum(above.clamp_min(1), inputs.keep_counts)
        order = torch.sort(norms, dim=1, descending=True, stable=True).indices[:, :num_keep]
        return Picks(order=order, counts=counts)


def check_against_reference(result, tokens, mask, ranks, method, preserve_norm=False, **tol):
    expected = reference_merge(tokens, mask, result.mask, ranks, method, preserve_norm)
    for b, values in enumerate(expected):
        count = int(result.counts[b])
        assert count == values.shape[0]
        torch.testing.assert_close(result.values[b, :count].double(), values, **tol)
        assert (result.values[b, count:] == 0).all()


# --------------------------------------------------------------------------- the math


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-6), (torch.float32, 1e-2)])
def test_lstsq_coefficients_equal_float64_lstsq(dtype, tol):
    g = torch.Generator().manual_seed(0)
    kept = torch.randn(3, 5, 12, generator=g, dtype=torch.float64)
    tokens = torch.randn(3, 20, 12, generator=g, dtype=torch.float64)
    valid = torch.tensor([[True] * 5, [True] * 3 + [False] * 2, [True] + [False] * 4])
    got = lstsq_coefficients(kept.to(dtype), tokens.to(dtype), valid)
    assert got.shape == (3, 5, 20) and got.dtype == dtype
    for b in range(3):
        k = int(valid[b].sum())
        expected = torch.linalg.lstsq(kept[b, :k].T, tokens[b].T).solution  # (k, N)
        torch.testing.assert_close(got[b, :k].double(), expected, rtol=tol, atol=tol)
        assert (got[b, k:] == 0).all()
    # the coefficients reconstruct the projection: P_S x_j = sum_i a_ji x_i
    projection = torch.einsum("kn,kd->nd", got[0].double(), kept[0])
    basis = torch.linalg.qr(kept[0].T).Q
    torch.testing.assert_close(projection, tokens[0] @ basis @ basis.T, rtol=tol, atol=tol)


def test_hand_worked_2d_example():
    """Kept a = (1, 0), b = (1, 1) (picked in that order); dropped c = (0.3, 1), d = (-1, 0.3).

    lstsq: c = -0.7 a + 1.0 b: scores 0.7 * 1 vs 1.0 * sqrt(2): c joins b.
           d = -1.3 a + 0.3 b: scores 1.3 vs 0.3 * sqrt(2) = 0.42: d joins a, although it
           points away from a (cos -0.96) and less so from b (cos -0.47).
    nearest: c: cos 0.29 (a) vs 0.88 (b): b; d: -0.96 vs -0.47: b.
    """
    tokens = torch.tensor([[[1.0, 0.0], [1.0, 1.0], [0.3, 1.0], [-1.0, 0.3]]])
    mask = torch.ones(1, 4, dtype=torch.bool)
    order, counts = torch.tensor([[0, 1]]), torch.tensor([2])
    slot, mergeable = assign_dropped(
        tokens, tokens[:, :2], torch.ones(1, 2, dtype=torch.bool), "lstsq"
    )
    assert slot[0, 2:].tolist() == [1, 0] and mergeable.all()
    slot, _ = assign_dropped(tokens, tokens[:, :2], torch.ones(1, 2, dtype=torch.bool), "nearest")
    assert slot[0, 2:].tolist() == [1, 1]

    lstsq = merge_dropped(tokens, mask, order, counts, "lstsq")
    torch.testing.assert_close(lstsq[0], torch.tensor([[0.0, 0.15], [0.65, 1.0]]))
    nearest = merge_dropped(tokens, mask, order, counts, "nearest")
    torch.testing.assert_close(nearest[0], torch.tensor([[1.0, 0.0], [0.1, 2.3 / 3]]))
    assert torch.equal(nearest[0, 0], tokens[0, 0])  # nothing joined a: exactly itself
    # merge_norm: a's mean (0, 0.15) back to norm 1, b's (0.65, 1) to norm sqrt(2)
    normed = merge_dropped(tokens, mask, order, counts, "lstsq", preserve_norm=True)
    torch.testing.assert_close(normed[0, 0], torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(
        normed[0, 1], torch.tensor([0.65, 1.0]) * 2**0.5 / (0.65**2 + 1) ** 0.5
    )
    # swapping the pick order swaps the slots, not the values
    swapped = merge_dropped(tokens, mask, torch.tensor([[1, 0]]), counts, "lstsq")
    torch.testing.assert_close(swapped[0], lstsq[0].flip(0))


@pytest.mark.parametrize("method", ["lstsq", "nearest"])
@pytest.mark.parametrize("preserve_norm", [False, True])
def test_pruner_values_equal_per_token_loops(method, preserve_norm):
    g = torch.Generator().manual_seed(1)
    tokens = torch.randn(3, 30, 16, generator=g, dtype=torch.float64)
    mask = torch.arange(30).unsqueeze(0) < torch.tensor([[30], [21], [9]])
    selection = RecordingSelection()
    pruner = ComposedPruner(selection=selection, merge=method, merge_norm=preserve_norm)
    result = pruner.prune(tokens, budget=0.3, token_mask=mask)
    assert result.counts.tolist() == [9, 6, 3]
    ranks = pick_ranks(selection.order, result.counts)
    check_against_reference(
        result, tokens, mask, ranks, method, preserve_norm, rtol=1e-9, atol=1e-9
    )
    # merging does not change the selection
    plain = ComposedPruner(selection="greedy_residual").prune(tokens, budget=0.3, token_mask=mask)
    assert torch.equal(result.indices, plain.indices) and plain.values is None


@pytest.mark.parametrize("method", ["lstsq", "nearest"])
def test_merge_norm_restores_the_kept_norms(method):
    g = torch.Generator().manual_seed(2)
    tokens = torch.randn(2, 40, 24, generator=g)
    plain = ResPrune(merge=method).prune(tokens, budget=6)
    normed = ResPrune(merge=method, merge_norm=True).prune(tokens, budget=6)
    assert torch.equal(plain.indices, normed.indices)
    original = plain.gather(tokens)
    # averaging shrinks: merged tokens are shorter than the kept tokens they replace
    changed = (plain.values != original).any(dim=-1)
    assert changed.sum() >= 6
    ratio = plain.values.norm(dim=-1)[changed] / original.norm(dim=-1)[changed]
    assert ratio.mean() < 0.9
    torch.testing.assert_close(normed.values.norm(dim=-1), original.norm(dim=-1))
    # same direction as the plain mean
    cos = torch.nn.functional.cosine_similarity(normed.values, plain.values, dim=-1)
    torch.testing.assert_close(cos, torch.ones_like(cos))
    assert torch.equal(normed.values[~changed], original[~changed])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_past_the_rank_and_duplicates_stay_finite(dtype):
    g = torch.Generator().manual_seed(3)
    low_rank = torch.randn(2, 20, 2, generator=g) @ torch.randn(2, 2, 8, generator=g)
    duplicates = torch.randn(2, 5, 8, generator=g)[:, torch.arange(20) % 5]
    for tokens in (low_rank.to(dtype), duplicates.to(dtype)):
        for method in ("lstsq", "nearest"):
            for norm in (False, True):
                result = ResPrune(merge=method, merge_norm=norm).prune(tokens, budget=8)
                assert torch.isfinite(result.values).all()
    # zero tokens: nothing to merge, nothing breaks
    zeros = torch.zeros(1, 10, 4, dtype=dtype)
    result = ResPrune(merge="lstsq", merge_norm=True).prune(zeros, budget=3)
    assert torch.equal(result.values, torch.zeros(1, 3, 4, dtype=dtype))


def test_past_the_rank_equals_minimum_norm_lstsq():
    """K = 6 picks of rank-3 tokens: G_SS is singular, the jittered solve gives the
    minimum-norm least-squares coefficients (what gelsd returns)."""
    g = torch.Generator().manual_seed(4)
    tokens = torch.randn(2, 24, 3, generator=g, dtype=torch.float64)
    tokens = tokens @ torch.randn(2, 3, 10, generator=g, dtype=torch.float64)
    selection = RecordingSelection()
    result = ComposedPruner(selection=selection, merge="lstsq").prune(tokens, budget=6)
    mask = torch.ones(2, 24, dtype=torch.bool)
    ranks = pick_ranks(selection.order, result.counts)
    check_against_reference(result, tokens, mask, ranks, "lstsq", rtol=1e-7, atol=1e-7)


def test_duplicates_join_the_earliest_pick():
    base = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.9, 0.3, 0.0]])
    tokens = base[[0, 0, 1, 2]].unsqueeze(0)  # token 1 duplicates token 0
    mask = torch.ones(1, 4, dtype=torch.bool)
    for method in ("lstsq", "nearest"):
        # kept: token 1, then token 0 (its duplicate), then token 2; dropped: token 3, which
        # loads on the duplicates equally (lstsq: 0.45 each vs 0.3; nearest: cos 0.95 vs 0.32)
        for dtype in (torch.float32, torch.float64):
            order = torch.tensor([[1, 0, 2]])
            values = merge_dropped(tokens.to(dtype), mask, order, torch.tensor([3]), method)
            torch.testing.assert_close(values[0, 0], (tokens[0, 1] + tokens[0, 3]).to(dtype) / 2)
            assert torch.equal(values[0, 1:], tokens[0, [0, 2]].to(dtype))


@pytest.mark.parametrize("method", ["lstsq", "nearest"])
def test_ragged_adaptive_counts_and_padding(method):
    """Counts chosen by the selection (Picks.counts), ragged token masks, NaN in the padding."""
    g = torch.Generator().manual_seed(5)
    tokens = torch.randn(3, 12, 6, generator=g)
    mask = torch.arange(12).unsqueeze(0) < torch.tensor([[12], [7], [2]])
    poisoned = tokens.masked_fill(~mask.unsqueeze(-1), float("nan"))
    pruner = ComposedPruner(selection=FirstHalf(), merge=method)
    result = pruner.prune(poisoned, budget=5, token_mask=mask)
    assert result.counts.tolist() == [5, 4, 1]
    order = [torch.arange(c - 1, -1, -1) for c in result.counts.tolist()]
    ranks = [{int(t): r for r, t in enumerate(row)} for row in order]
    check_against_reference(result, tokens, mask, ranks, method, rtol=1e-5, atol=1e-5)
    for b, n in enumerate([12, 7, 2]):  # each sample alone, unpadded
        alone = pruner.prune(tokens[b : b + 1, :n], budget=5)
        count = int(result.counts[b])
        torch.testing.assert_close(alone.values[0], result.values[b, :count], rtol=1e-5, atol=1e-6)


def test_merge_none_is_todays_resprune():
    g = torch.Generator().manual_seed(6)
    tokens = torch.randn(2, 50, 16, generator=g)
    text = torch.randn(2, 3, 16, generator=g)
    mask = torch.arange(50).unsqueeze(0) < torch.tensor([[50], [33]])
    default = ResPrune().prune(tokens, budget=0.2, text_embeds=text, token_mask=mask)
    none = ResPrune(merge="none").prune(tokens, budget=0.2, text_embeds=text, token_mask=mask)
    composed = ComposedPruner(relevance="text", selection="greedy_residual")
    by_parts = composed.prune(tokens, budget=0.2, text_embeds=text, token_mask=mask)
    for result in (none, by_parts):
        assert torch.equal(result.indices, default.indices)
        assert torch.equal(result.scores, default.scores)
        assert result.values is None
    merged = ResPrune(merge="lstsq").prune(tokens, budget=0.2, text_embeds=text, token_mask=mask)
    assert torch.equal(merged.indices, default.indices)


def test_fields_by_name_and_bad_values():
    pruner = prunekit.create_pruner("resprune", merge="lstsq", merge_norm=True)
    assert (pruner.merge, pruner.merge_norm) == ("lstsq", True)
    with pytest.raises(ValueError, match="merge must be one of .*Did you mean 'lstsq'"):
        prunekit.create_pruner("resprune", merge="lsq")
    with pytest.raises(TypeError, match="merge_norm"):
        ComposedPruner(merge="nearest", merge_norm="yes")
    with pytest.raises(ValueError, match="method"):
        merge_dropped(
            torch.randn(1, 3, 2),
            torch.ones(1, 3, dtype=torch.bool),
            torch.tensor([[0]]),
            torch.tensor([1]),
            "mean",
        )


def test_config_keys():
    from prunekit.experiments.config import build_pruner, compose

    cfg = compose(["pruner=resprune", "pruner.merge=lstsq", "pruner.merge_norm=true"])
    pruner = build_pruner(cfg)
    assert isinstance(pruner, ResPrune) and (pruner.merge, pruner.merge_norm) == ("lstsq", True)
    cfg = compose(["pruner=composed", "relevance=none", "selection=topk", "pruner.merge=nearest"])
    pruner = build_pruner(cfg)
    assert pruner.merge == "nearest" and pruner.selection.name == "topk"
    assert build_pruner(compose(["pruner=resprune"])).merge == "none"


# --------------------------------------------------------------------------- the contract


class TestMergingContract(PrunerContract):
    cases = [
        ("resprune", {"merge": "lstsq"}),
        ("resprune", {"merge": "nearest", "merge_norm": True}),
        (
            "composed",
            {"relevance": "none", "selection": "topk", "merge": "lstsq", "merge_norm": True},
        ),
    ]


# --------------------------------------------------------------------------- through the model


def test_generate_feeds_the_merged_values_to_the_llm():
    model = tiny_llava()
    ids, mask = left_pad([prompt_ids([7, 8], 16)])
    pixels = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    pruner = ComposedPruner(
        relevance="none", selection="greedy_residual", merge="lstsq", merge_norm=True
    )
    seen = []

    def record(module, args, kwargs):
        if kwargs.get("inputs_embeds") is not None and kwargs["inputs_embeds"].shape[1] > 1:
            seen.append(kwargs["inputs_embeds"].detach().clone())

    hook = model.model.language_model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        with prunekit.attach(model, pruner, budget=4) as handle:
            model.generate(
                input_ids=ids, attention_mask=mask, pixel_values=pixels, max_new_tokens=2
            )
    finally:
        hook.remove()
    feats = model.get_image_features(pixel_values=pixels).pooler_output[0]
    expected = pruner.prune(feats.unsqueeze(0), budget=4)
    assert torch.equal(handle.results[0].indices, expected.indices)
    # the merged values differ from the plain kept features, and the LLM received them
    assert not torch.allclose(expected.values[0], expected.gather(feats.unsqueeze(0))[0])
    new_ids = torch.tensor([[1, 5] + [IMAGE_TOKEN_ID] * 4 + [7, 8]])
    embeds = model.get_input_embeddings()(new_ids)
    embeds[new_ids == IMAGE_TOKEN_ID] = expected.values[0].to(embeds.dtype)
    assert len(seen) == 1
    torch.testing.assert_close(seen[0], embeds, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_in_llm_point_applies_the_merged_values(attn):
    """Layers < K on everything; the kept image tokens' hidden states entering layer K
    replaced by their merged values; layers >= K on the kept tokens at original positions."""
    model = tiny_llava(attn_implementation=attn)
    ids, mask = left_pad([prompt_ids([7, 8, 9], 16)])
    pixels = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(8))
    pruner = ComposedPruner(relevance="none", selection="greedy_residual", merge="lstsq")
    with prunekit.attach(model, pruner, budget=5, llm_layer=1) as handle:
        logits = model(input_ids=ids, attention_mask=mask, pixel_values=pixels).logits

    feats = model.get_image_features(pixel_values=pixels).pooler_output[0]
    embeds = model.get_input_embeddings()(ids).masked_scatter(
        (ids == IMAGE_TOKEN_ID).unsqueeze(-1), feats
    )
    lm = model.model.language_model

    def causal(n):
        allowed = torch.ones(n, n, dtype=torch.bool).tril()[None, None]
        if attn == "sdpa":
            return allowed
        return torch.zeros(1, 1, n, n).masked_fill(~allowed, torch.finfo(torch.float32).min)

    positions = torch.arange(ids.shape[1]).unsqueeze(0)
    cos, sin = lm.rotary_emb(embeds, position_ids=positions)
    hidden = lm.layers[0](
        embeds,
        attention_mask=causal(ids.shape[1]),
        position_embeddings=(cos, sin),
        position_ids=positions,
    )
    image_positions = (ids[0] == IMAGE_TOKEN_ID).nonzero()[:, 0]
    expected_pick = pruner.prune(hidden[:, image_positions].float(), budget=5)
    assert torch.equal(handle.results[0].indices, expected_pick.indices)
    kept_positions = image_positions[expected_pick.indices[0]]
    hidden = hidden.clone()
    hidden[0, kept_positions] = expected_pick.values[0].to(hidden.dtype)
    dropped = set(image_positions[~expected_pick.mask[0]].tolist())
    keep = torch.tensor([p for p in range(ids.shape[1]) if p not in dropped])
    hidden = hidden[:, keep]
    for layer in lm.layers[1:]:
        hidden = layer(
            hidden,
            attention_mask=causal(len(keep)),
            position_embeddings=(cos[:, keep], sin[:, keep]),
            position_ids=positions[:, keep],
        )
    expected = model.lm_head(lm.norm(hidden))
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    # and merging changed what the language model computed
    with prunekit.attach(model, ComposedPruner(relevance="none"), budget=5, llm_layer=1):
        plain = model(input_ids=ids, attention_mask=mask, pixel_values=pixels).logits
    assert not torch.allclose(plain, logits, atol=1e-4)


def test_in_llm_point_batch_equals_samples_alone():
    model = tiny_llava(initializer_range=0.2)
    rows = [prompt_ids([7, 8, 9, 10], 16), prompt_ids([11], 16)]
    ids, mask = left_pad(rows)
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(9))
    pruner = ComposedPruner(
        relevance="none", selection=Energetic(), merge="nearest", merge_norm=True
    )
    with prunekit.attach(model, pruner, budget=0.75, llm_layer=1) as handle:
        batched = model(input_ids=ids, attention_mask=mask, pixel_values=pixels).logits[:, -1]
        for b, row in enumerate(rows):
            alone = model(
                input_ids=torch.tensor([row]),
                attention_mask=torch.ones(1, len(row), dtype=torch.long),
                pixel_values=pixels[b : b + 1],
            ).logits[:, -1]
            torch.testing.assert_close(batched[b], alone[0], rtol=1e-4, atol=1e-4)
    counts = handle.results[0].counts.tolist()
    assert counts[0] != counts[1], counts  # the batch was ragged
    assert handle.results[0].values is not None


@pytest.mark.parametrize("name", ["hf_dinov2", "timm_vit_registers", "open_clip"])
def test_in_encoder_point_applies_the_merged_values(name):
    """Blocks < L on every token; the merged patch tokens (kept_tokens) and the prefix
    tokens through blocks >= L, as the encoder families' by-hand forwards run them."""
    from test_encoder_adapters import SOURCES, pixels

    source = next(s for s in SOURCES if s.name == name)
    model = source.build()
    px = pixels(batch=2)
    pruner = ResPrune(merge="lstsq", merge_norm=True)
    with torch.no_grad(), prunekit.attach(model, pruner, budget=5, layer=1) as handle:
        got = source.forward(model, px)
    with torch.no_grad():
        blocks = source.blocks(model)
        h = source.run_block(blocks[0], source.embed(model, px))
        p = source.prefix
        expected = pruner.prune(h[:, p:], budget=5)
        assert torch.equal(handle.results[0].indices, expected.indices)
        assert not torch.allclose(expected.kept_tokens(h[:, p:]), expected.gather(h[:, p:]))
        h = torch.cat([h[:, :p], expected.kept_tokens(h[:, p:])], dim=1)
        for block in blocks[1:]:
            h = source.run_block(block, h)
        reference = source.head(model, h)
    assert len(got) == len(reference)
    for a, b in zip(got, reference):
        torch.testing.assert_close(a, b)


def test_in_encoder_point_refuses_merged_values_in_the_joint_space():
    from test_encoder_adapters import TEXTS, FakeTokenizer, clip_model, pixels

    model = clip_model()
    pruner = ResPrune(merge="nearest")
    with prunekit.attach(model, pruner, budget=4, layer=1, texts=TEXTS, tokenizer=FakeTokenizer()):
        with pytest.raises(ValueError, match="merging pruner returns token values in the space"):
            with torch.no_grad():
                model.get_image_features(pixel_values=pixels(batch=2))
