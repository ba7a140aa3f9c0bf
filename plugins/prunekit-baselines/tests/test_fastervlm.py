"""FasterVLM and the ``cls_attention`` relevance strategy."""

from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "..", "tests"))

from tiny_models import IMAGE_TOKEN_ID, prompt_ids, tiny_llava  # noqa: E402

import prunekit  # noqa: E402
from prunekit.strategies.selection.greedy_residual import greedy_residual_order  # noqa: E402
from prunekit.testing import PrunerContract  # noqa: E402
from prunekit_baselines.fastervlm import ClsAttentionRelevance, FasterVLM  # noqa: E402


def official_fastervlm(attention: torch.Tensor, num_keep: int) -> torch.Tensor:
    """FasterVLM's ``encode_images``: head mean, ``topk``, scattered into an index mask."""
    scores = attention.mean(dim=1)
    top = torch.topk(scores, k=num_keep, dim=1)[1]
    mask = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, top, True)
    return torch.stack([row.nonzero()[:, 0] for row in mask])


def attention_batch(seed: int, batch: int = 3, heads: int = 4, n: int = 30) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(batch, heads, n + 1, generator=g) * 2, dim=-1)[..., 1:]


def test_head_mean_top_k_by_hand():
    # head means: [0.2, 0.5, 0.1, 0.5, 0.3] -> top 3 = {1, 3, 4}; top 2 = {1, 3}
    attention = torch.tensor(
        [[[0.1, 0.6, 0.0, 0.4, 0.3], [0.3, 0.4, 0.2, 0.6, 0.3]]], dtype=torch.float32
    )
    tokens = torch.randn(1, 5, 4)
    result = FasterVLM().prune(tokens, budget=3, signals={"cls_attention": attention})
    assert result.indices.tolist() == [[1, 3, 4]]
    torch.testing.assert_close(result.scores, attention.mean(dim=1))
    # the exact tie 1 vs 3 at budget 1 goes to the lower index
    one = FasterVLM().prune(tokens, budget=1, signals={"cls_attention": attention})
    assert one.indices.tolist() == [[1]]


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("budget", [1, 5, 12, 29])
def test_matches_the_official_top_k(seed, budget):
    attention = attention_batch(seed)
    tokens = torch.randn(3, 30, 8)
    result = FasterVLM().prune(tokens, budget=budget, signals={"cls_attention": attention})
    assert torch.equal(result.indices, official_fastervlm(attention, budget))
    assert result.values is None


def test_padded_tokens_are_never_kept_and_attention_there_is_ignored():
    attention = attention_batch(0, batch=2, n=10)
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[1, 6:] = False
    noisy = attention.clone()
    noisy[1, :, 6:] = 10.0  # huge attention on padding must not matter
    result = FasterVLM().prune(
        torch.randn(2, 10, 4), budget=3, token_mask=mask, signals={"cls_attention": noisy}
    )
    assert result.indices[1].tolist() == official_fastervlm(attention[1:, :, :6], 3)[0].tolist()


def test_required_signal_and_any_pruning_point():
    assert FasterVLM.required_signals == {"cls_attention"}
    assert FasterVLM.pruning_points is None
    with pytest.raises(ValueError, match="cls_attention"):
        FasterVLM().prune(torch.randn(1, 5, 4), budget=2)


# --------------------------------------------------------------------------- the relevance


def relevance_weights(attention, mask=None, **kwargs):
    inputs = prunekit.core.validate_inputs(
        torch.zeros(attention.shape[0], attention.shape[-1], 2),
        token_mask=mask,
        signals={"cls_attention": attention},
    )
    return ClsAttentionRelevance(**kwargs).weights(inputs)


def test_relevance_normalisations_by_hand():
    # head mean [0.1, 0.4, 0.2, 0.3]
    attention = torch.tensor([[[0.1, 0.5, 0.2, 0.2], [0.1, 0.3, 0.2, 0.4]]])
    a = torch.tensor([[0.1, 0.4, 0.2, 0.3]])
    torch.testing.assert_close(relevance_weights(attention), a / 0.4)
    torch.testing.assert_close(relevance_weights(attention, normalize="sum"), a / 1.0)
    torch.testing.assert_close(
        relevance_weights(attention, normalize="minmax"), torch.tensor([[0.0, 1.0, 1 / 3, 2 / 3]])
    )
    torch.testing.assert_close(relevance_weights(attention, normalize="none"), a)
    torch.testing.assert_close(relevance_weights(attention, alpha=2.0), (a / 0.4) ** 2)


def test_relevance_padding_flat_and_zero_attention():
    attention = torch.tensor(
        [
            [[0.1, 0.2, 0.9], [0.3, 0.2, 0.9]],  # padded slot 2 has the largest attention
            [[0.2, 0.2, 0.2], [0.2, 0.2, 0.2]],  # flat
            [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]],  # all zero
        ]
    )
    mask = torch.tensor([[True, True, False], [True] * 3, [True] * 3])
    w = relevance_weights(attention, mask)
    torch.testing.assert_close(w[0], torch.tensor([1.0, 1.0, 0.0]))  # 0.2 / 0.2, padding 0
    torch.testing.assert_close(w[1], torch.ones(3))
    torch.testing.assert_close(w[2], torch.ones(3))  # undefined scale: neutral weights
    minmax = relevance_weights(attention, mask, normalize="minmax")
    torch.testing.assert_close(minmax[1], torch.ones(3))  # flat: neutral, not all zero
    torch.testing.assert_close(minmax[0], torch.tensor([1.0, 1.0, 0.0]))


def test_relevance_arguments_are_checked():
    with pytest.raises(ValueError, match="normalize must be one of"):
        ClsAttentionRelevance(normalize="softmax")
    with pytest.raises(ValueError, match="alpha"):
        ClsAttentionRelevance(alpha=-1.0)
    with pytest.raises(TypeError, match="alpha"):
        ClsAttentionRelevance(alpha="2")


@pytest.mark.parametrize("seed", range(3))
def test_relevance_composes_with_every_selection(seed):
    attention = attention_batch(seed)
    tokens = torch.randn(3, 30, 8, generator=torch.Generator().manual_seed(seed))
    signals = {"cls_attention": attention}
    weights = attention.mean(dim=1) / attention.mean(dim=1).amax(dim=1, keepdim=True)

    topk = prunekit.create_pruner("composed", relevance="cls_attention", selection="topk")
    assert topk.required_signals == {"cls_attention"}
    assert torch.equal(
        topk.prune(tokens, budget=7, signals=signals).indices, official_fastervlm(attention, 7)
    )

    greedy = prunekit.create_pruner(
        "composed", relevance="cls_attention", selection="greedy_residual"
    )
    result = greedy.prune(tokens, budget=7, signals=signals)
    expected = greedy_residual_order(tokens, weights, 7).sort(dim=1).values
    assert torch.equal(result.indices, expected)
    torch.testing.assert_close(result.scores, weights)

    sharp = prunekit.create_pruner(
        "composed",
        relevance={"name": "cls_attention", "alpha": 3.0},
        selection={"name": "random", "seed": 1},
    )
    random = prunekit.create_pruner(
        "composed", relevance="cls_attention", selection={"name": "random", "seed": 1}
    )
    assert sharp.prune(tokens, budget=7, signals=signals).counts.tolist() == [7] * 3
    # 'max', 'sum' and 'none' differ by a factor per sample: the same random draw
    plain = prunekit.create_pruner(
        "composed",
        relevance={"name": "cls_attention", "normalize": "sum"},
        selection={"name": "random", "seed": 1},
    )
    assert torch.equal(
        random.prune(tokens, budget=7, signals=signals).indices,
        plain.prune(tokens, budget=7, signals=signals).indices,
    )
    with pytest.raises(ValueError, match="cls_attention"):
        greedy.prune(tokens, budget=7)


class TestFasterVLMContract(PrunerContract):
    """The registry-wide contract, here also for the relevance in non-default settings."""

    cases = [
        ("composed", {"relevance": "cls_attention", "selection": "greedy_residual"}),
        (
            "composed",
            {
                "relevance": {"name": "cls_attention", "normalize": "minmax", "alpha": 2.0},
                "selection": {"name": "random", "seed": 5},
            },
        ),
    ]


# --------------------------------------------------------------------------- end to end


def splice_logits(model, ids_rows, kept_features):
    """Logits of the model on prompts whose image placeholders hold ``kept_features``."""
    ids = torch.tensor(ids_rows)
    embeds = model.get_input_embeddings()(ids)
    embeds = embeds.masked_scatter((ids == IMAGE_TOKEN_ID).unsqueeze(-1), kept_features)
    return model(inputs_embeds=embeds, attention_mask=torch.ones_like(ids)).logits


@pytest.mark.parametrize("before_projector", [False, True])
def test_end_to_end_on_tiny_llava(before_projector):
    model = tiny_llava(attn_implementation="eager")
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    ids = torch.tensor([prompt_ids([7, 8, 9], 16), prompt_ids([10, 11, 12], 16)])
    budget = 5
    with prunekit.attach(model, "fastervlm", budget=budget, before_projector=before_projector):
        with torch.no_grad():
            logits = model(
                input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pixels
            ).logits

    with torch.no_grad():
        out = model.model.vision_tower(pixels, output_hidden_states=True, output_attentions=True)
        attention = out.attentions[-2][:, :, 0, 1:]  # [CLS] row of layer -2, patch columns
        keep = official_fastervlm(attention, budget)
        projected = model.model.multi_modal_projector(out.hidden_states[-2][:, 1:])
        kept = torch.stack([p[k] for p, k in zip(projected, keep)])
        expected = splice_logits(
            model,
            [prompt_ids([7, 8, 9], budget), prompt_ids([10, 11, 12], budget)],
            kept.reshape(-1, kept.shape[-1]),
        )
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
