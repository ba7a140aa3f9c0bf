"""Pruners that merge dropped tokens into kept ones (PruneResult.values)."""

from __future__ import annotations

import pytest
import torch
from tiny_models import IMAGE_TOKEN_ID, left_pad, prompt_ids, tiny_llava

import prunekit
from prunekit import Picks, TokenPruner


class MergeIntoLast(TokenPruner):
    """Keeps tokens N-1, N-2, ... (picked in that order); the last pick absorbs the mean of the dropped ones."""

    def select(self, inputs, num_keep):
        n = inputs.num_tokens
        order = torch.arange(n - 1, n - 1 - num_keep, -1).expand(inputs.batch_size, -1)
        values = inputs.tokens.gather(
            1, order.unsqueeze(-1).expand(-1, -1, inputs.tokens.shape[-1])
        ).clone()
        dropped = inputs.tokens[:, : n - num_keep].mean(dim=1)
        values[:, -1] = (values[:, -1] + dropped) / 2
        return Picks(order=order, values=values)


def test_values_follow_the_sorted_indices():
    tokens = torch.arange(2 * 6 * 2, dtype=torch.float32).reshape(2, 6, 2)
    result = MergeIntoLast().prune(tokens, budget=3)
    assert result.indices.tolist() == [[3, 4, 5]] * 2
    merged = (tokens[:, 3] + tokens[:, :3].mean(dim=1)) / 2
    assert torch.equal(result.values[:, 0], merged)  # token 3 was the last pick
    assert torch.equal(result.values[:, 1:], tokens[:, 4:])
    assert torch.equal(result.kept_tokens(tokens), result.values)
    assert torch.equal(result.gather(tokens), tokens[:, 3:])  # gather stays the original rows


def test_bad_values_shape_is_a_pruner_bug():
    class Broken(MergeIntoLast):
        def select(self, inputs, num_keep):
            picks = super().select(inputs, num_keep)
            return Picks(order=picks.order, values=picks.values[:, :-1])

    with pytest.raises(RuntimeError, match="returned values of shape"):
        Broken().prune(torch.randn(1, 6, 2), budget=3)


def test_merged_values_reach_the_language_model():
    model = tiny_llava()
    ids, mask = left_pad([prompt_ids([7, 8], 16)])
    pixels = torch.randn(1, 3, 32, 32)
    with prunekit.attach(model, MergeIntoLast(), budget=4) as handle:
        logits = model(input_ids=ids, attention_mask=mask, pixel_values=pixels).logits
    feats = model.get_image_features(pixel_values=pixels).pooler_output[0]
    kept = (feats[12] + feats[:12].mean(dim=0)) / 2
    expected_feats = torch.cat([kept[None], feats[13:]])
    assert torch.allclose(handle.results[0].values[0].to(feats.dtype), expected_feats, atol=1e-6)
    new_ids = torch.tensor([[1, 5] + [IMAGE_TOKEN_ID] * 4 + [7, 8]])
    embeds = model.get_input_embeddings()(new_ids).masked_scatter(
        (new_ids == IMAGE_TOKEN_ID).unsqueeze(-1), expected_feats
    )
    expected = model(inputs_embeds=embeds, attention_mask=torch.ones_like(new_ids)).logits
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
