"""VisionZip: dominant tokens by [CLS] attention, contextual tokens merged by key similarity."""

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
from prunekit_baselines.visionzip import VisionZip, contextual_count  # noqa: E402


def official_visionzip(hidden, cls_attention, metric, dominant_num, contextual_num):
    """The official ``CLIPVisionTower_VisionZip.forward`` on one batch, transcribed.

    Args:
        hidden: (B, 1 + N, d) hidden states of layer -2, [CLS] first.
        cls_attention: (B, H, N) the [CLS] row of that layer's attention, patch columns.
        metric: (B, 1 + N, d_head) that layer's keys averaged over heads.
        dominant_num: patches picked by attention ([CLS] is added on top).
        contextual_num: contextual tokens.

    Returns:
        the output tokens [CLS, dominant..., contextual...] (B, 1 + D + C, d) and their
        positions in ``hidden`` (for a contextual token: its target's).
    """
    batch, length, dim = hidden.shape
    top = cls_attention.sum(dim=1).topk(dominant_num, dim=1).indices + 1
    all_indices = torch.cat([torch.zeros(batch, 1, dtype=top.dtype), top], dim=1)
    mask = torch.ones(batch, length, dtype=torch.bool).scatter_(1, all_indices, False)
    dominant = hidden.masked_select(~mask.unsqueeze(-1)).view(batch, dominant_num + 1, dim)
    remaining = length - (dominant_num + 1)
    metric_filtered = metric[mask].view(batch, remaining, metric.shape[2])
    hidden_filtered = hidden.masked_select(mask.unsqueeze(-1)).view(batch, remaining, dim)
    normed = metric_filtered / metric_filtered.norm(dim=-1, keepdim=True)
    step = max(1, remaining // contextual_num)
    targets = torch.arange(0, remaining, step)[:contextual_num]
    others = ~torch.isin(torch.arange(remaining), targets)
    similarity = torch.bmm(normed[:, others], normed[:, targets].transpose(1, 2))
    assign = torch.zeros(batch, int(others.sum()), contextual_num, dtype=hidden.dtype)
    assign.scatter_(2, similarity.argmax(dim=2).unsqueeze(-1), 1)
    counts = assign.sum(dim=1).clamp(min=1).unsqueeze(-1)
    aggregated = torch.bmm(assign.transpose(1, 2), hidden_filtered[:, others]) / counts
    contextual = hidden_filtered[:, targets] + aggregated
    remaining_positions = torch.stack([row.nonzero()[:, 0] for row in mask])
    positions = torch.cat([all_indices.sort(dim=1).values, remaining_positions[:, targets]], 1)
    return torch.cat([dominant, contextual], dim=1), positions


def prunekit_view(output, positions):
    """The official output without [CLS], in position order, with positions of the patches."""
    output, positions = output[:, 1:], positions[:, 1:] - 1
    order = positions.argsort(dim=1)
    values = output.gather(1, order.unsqueeze(-1).expand(-1, -1, output.shape[-1]))
    return positions.gather(1, order), values


def problem(seed, batch=2, n=48, dim=16, heads=4, head_dim=8):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(batch, n + 1, dim, generator=g)
    attention = torch.softmax(torch.randn(batch, heads, n + 1, generator=g) * 2, -1)[..., 1:]
    keys = torch.randn(batch, n + 1, heads, head_dim, generator=g)
    return hidden, attention, keys


def test_split_reproduces_the_official_settings():
    assert [VisionZip().split(k) for k in (64, 128, 192)] == [(54, 10), (108, 20), (162, 30)]
    assert [contextual_count(k) for k in (1, 2, 3, 4, 576)] == [0, 0, 0, 1, 90]
    assert VisionZip(contextual=3).split(8) == (5, 3)
    assert VisionZip(contextual=30).split(8) == (0, 8)
    assert VisionZip(contextual_ratio=0.5).split(9) == (4, 5)


def test_dominant_and_contextual_by_hand():
    """8 tokens; dominant {2, 5}; the remaining [0, 1, 3, 4, 6, 7] give step 3 and the
    targets 0 and 4; keys (equal in both heads) send 1 -> 0, 3 -> 4, 7 -> 4 and 6 (a tie)
    to the first target 0."""
    x = torch.tensor([[float(i), float(i * i), 1.0] for i in range(8)])
    keys = torch.tensor(
        [[1, 0], [1, 0.1], [5, 5], [0.2, 1], [0, 1], [5, 5], [2, 2], [-1, 0]], dtype=torch.float32
    )
    keys = keys[:, None, :].expand(8, 2, 2)  # (N, H, d_head)
    attention = torch.tensor([0.1, 0.1, 0.9, 0.1, 0.1, 0.8, 0.1, 0.1]).expand(2, 8)
    result = VisionZip(contextual=2).prune(
        x[None],
        budget=4,
        signals={"cls_attention": attention[None], "vision_keys": keys[None]},
    )
    assert result.indices.tolist() == [[0, 2, 4, 5]]
    expected = torch.stack([x[0] + (x[1] + x[6]) / 2, x[2], x[4] + (x[3] + x[7]) / 2, x[5]])
    torch.testing.assert_close(result.values[0], expected)
    torch.testing.assert_close(result.kept_tokens(x[None])[0], expected)
    torch.testing.assert_close(result.scores, attention.sum(dim=0, keepdim=True))

    # a key of norm 0 is orthogonal to every target, so it joins the first one;
    # a target nobody joins stays itself
    zero = keys.clone()
    zero[7] = 0.0
    zero[3] = torch.tensor([1.0, 0.0])
    result = VisionZip(contextual=2).prune(
        x[None], budget=4, signals={"cls_attention": attention[None], "vision_keys": zero[None]}
    )
    expected = torch.stack([x[0] + (x[1] + x[3] + x[6] + x[7]) / 4, x[2], x[4], x[5]])
    torch.testing.assert_close(result.values[0], expected)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(("dominant", "contextual"), [(10, 2), (7, 5), (20, 1), (1, 8)])
def test_matches_the_official_code_with_the_cls_slot_given_to_a_patch(seed, dominant, contextual):
    """prunekit with budget D + C on the patches == official with D patches (+ [CLS]) + C,
    [CLS] removed: the official remaining set, targets and merges are the same."""
    hidden, attention, keys = problem(seed)
    official, positions = official_visionzip(
        hidden, attention, keys.mean(dim=2), dominant, contextual
    )
    expected_positions, expected_values = prunekit_view(official, positions)
    result = VisionZip(contextual=contextual).prune(
        hidden[:, 1:],
        budget=dominant + contextual,
        signals={"cls_attention": attention, "vision_keys": keys[:, 1:]},
    )
    assert torch.equal(result.indices, expected_positions)
    torch.testing.assert_close(result.values, expected_values)


def test_float64_keys_choose_targets_in_float64():
    """Targets 0 and 2 (no dominant token); token 1's key is closer to target 2 by ~1e-10
    in cosine, below float32's resolution (~6e-8 near 1): float32 rounding made it a tie
    (first target, 0); float64 inputs compare in float64, as the official code does in
    the model's dtype."""
    angles = torch.tensor([0.0, 5e-4 + 1e-7, 1e-3, -math.pi / 2], dtype=torch.float64)
    keys = torch.stack([angles.cos(), angles.sin()], dim=-1)[None, :, None]  # (1, 4, 1, 2)
    x = torch.arange(12, dtype=torch.float64).view(1, 4, 3) ** 2
    attention = torch.full((1, 1, 4), 0.25, dtype=torch.float64)
    signals = {"cls_attention": attention, "vision_keys": keys}
    result = VisionZip(contextual=2).prune(x, budget=2, signals=signals)
    assert result.indices.tolist() == [[0, 2]]
    torch.testing.assert_close(
        result.values[0], torch.stack([x[0, 0] + x[0, 3], x[0, 2] + x[0, 1]])
    )
    # the official code on the same float64 inputs ([CLS] in front, no dominant patch)
    hidden = torch.cat([torch.zeros(1, 1, 3, dtype=torch.float64), x], dim=1)
    metric = torch.cat([torch.ones(1, 1, 2, dtype=torch.float64), keys[:, :, 0]], dim=1)
    official, positions = official_visionzip(hidden, attention, metric, 0, 2)
    expected_positions, expected_values = prunekit_view(official, positions)
    assert torch.equal(result.indices, expected_positions)
    torch.testing.assert_close(result.values, expected_values)


@pytest.mark.parametrize("budget", [64, 128, 192])
def test_default_splits_on_576_patches(budget):
    hidden, attention, keys = problem(0, batch=1, n=576, dim=8, heads=2, head_dim=4)
    dominant, contextual = VisionZip().split(budget)
    official, positions = official_visionzip(
        hidden, attention, keys.mean(dim=2), dominant, contextual
    )
    expected_positions, expected_values = prunekit_view(official, positions)
    result = prunekit.create_pruner("visionzip").prune(
        hidden[:, 1:],
        budget=budget,
        signals={"cls_attention": attention, "vision_keys": keys[:, 1:]},
    )
    assert torch.equal(result.indices, expected_positions)
    torch.testing.assert_close(result.values, expected_values)


def test_ragged_samples_use_their_own_split():
    hidden, attention, keys = problem(3, batch=2, n=40)
    mask = torch.ones(2, 40, dtype=torch.bool)
    mask[1, 20:] = False
    signals = {"cls_attention": attention, "vision_keys": keys[:, 1:]}
    result = VisionZip().prune(hidden[:, 1:], budget=0.5, token_mask=mask, signals=signals)
    assert result.counts.tolist() == [20, 10]
    for i, (n, split) in enumerate([(40, (17, 3)), (20, (8, 2))]):
        assert VisionZip().split(result.counts[i].item()) == split
        official, positions = official_visionzip(
            hidden[i : i + 1, : n + 1],
            attention[i : i + 1, :, :n],
            keys[i : i + 1, : n + 1].mean(dim=2),
            *split,
        )
        expected_positions, expected_values = prunekit_view(official, positions)
        count = result.counts[i].item()
        assert result.indices[i, :count].tolist() == expected_positions[0].tolist()
        torch.testing.assert_close(result.values[i, :count], expected_values[0])


def test_half_precision_inputs_and_pure_dominant():
    hidden, attention, keys = problem(5)
    signals = {"cls_attention": attention.half(), "vision_keys": keys[:, 1:].half()}
    low = VisionZip().prune(hidden[:, 1:].half(), budget=16, signals=signals)
    high = VisionZip().prune(
        hidden[:, 1:].half().float(),
        budget=16,
        signals={k: v.float() for k, v in signals.items()},
    )
    assert torch.equal(low.indices, high.indices)
    assert low.values.dtype == torch.float32
    # no contextual token: the top-K by attention, values unchanged
    pure = VisionZip(contextual=0).prune(
        hidden[:, 1:], budget=6, signals={"cls_attention": attention, "vision_keys": keys[:, 1:]}
    )
    top = attention.sum(dim=1).topk(6, dim=1).indices.sort(dim=1).values
    assert torch.equal(pure.indices, top)
    torch.testing.assert_close(pure.values, pure.gather(hidden[:, 1:]))


def test_arguments_and_declarations():
    assert VisionZip.required_signals == {"cls_attention", "vision_keys"}
    assert VisionZip.pruning_points == {"pre_projector"}
    with pytest.raises(ValueError, match="contextual_ratio"):
        VisionZip(contextual_ratio=1.5)
    with pytest.raises(ValueError, match="contextual"):
        VisionZip(contextual=-1)
    with pytest.raises(TypeError, match="contextual"):
        VisionZip(contextual=2.5)
    with pytest.raises(ValueError, match="vision_keys"):
        VisionZip().prune(
            torch.randn(1, 8, 4), budget=4, signals={"cls_attention": torch.rand(1, 2, 8)}
        )


class TestVisionZipContract(PrunerContract):
    cases = [
        ("visionzip", {"contextual": 3}),
        ("visionzip", {"contextual_ratio": 0.5}),
        ("visionzip", {"contextual_ratio": 1.0}),
    ]


# --------------------------------------------------------------------------- end to end


@pytest.mark.parametrize(
    ("pruner", "split"), [("visionzip", (7, 1)), (VisionZip(contextual=3), (5, 3))]
)
def test_end_to_end_on_tiny_llava_before_the_projector(pruner, split):
    model = tiny_llava(attn_implementation="eager")
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    texts = [[7, 8, 9], [10, 11, 12]]
    ids = torch.tensor([prompt_ids(t, 16) for t in texts])
    budget = 8
    with prunekit.attach(model, pruner, budget=budget, before_projector=True) as handle:
        with torch.no_grad():
            logits = model(
                input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pixels
            ).logits

    layer = model.model.vision_tower.encoder.layers[-2].self_attn
    captured = {}
    hook = layer.k_proj.register_forward_hook(lambda m, i, o: captured.setdefault("keys", o))
    try:
        with torch.no_grad():
            out = model.model.vision_tower(
                pixels, output_hidden_states=True, output_attentions=True
            )
    finally:
        hook.remove()
    heads = model.config.vision_config.num_attention_heads
    metric = captured["keys"].view(2, 17, heads, -1).mean(dim=2)
    with torch.no_grad():
        official, positions = official_visionzip(
            out.hidden_states[-2], out.attentions[-2][:, :, 0, 1:], metric, *split
        )
        keep, merged = prunekit_view(official, positions)
        assert torch.equal(handle.results[0].indices, keep)
        torch.testing.assert_close(handle.results[0].values, merged, rtol=1e-5, atol=1e-6)
        projected = model.model.multi_modal_projector(merged).reshape(-1, 32)
        new_ids = torch.tensor([prompt_ids(t, budget) for t in texts])
        embeds = model.get_input_embeddings()(new_ids).masked_scatter(
            (new_ids == IMAGE_TOKEN_ID).unsqueeze(-1), projected
        )
        expected = model(inputs_embeds=embeds, attention_mask=torch.ones_like(new_ids)).logits
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)


def test_attach_refuses_the_post_projector_point():
    with pytest.raises(ValueError, match=r"defined for the pruning points \['pre_projector'\]"):
        with prunekit.attach(tiny_llava(), "visionzip", budget=8):
            pass
