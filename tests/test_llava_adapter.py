"""prunekit.attach on a tiny random LLaVA: the family-specific tests.

The adapter contract (full budget, pruned generate / forward against a hand-built reference,
batch vs alone, KV cache, restored model, refusals) runs on ``CONTRACT_CASES`` in
tests/test_adapter_contract.py.
"""

from __future__ import annotations

import functools

import pytest
import torch
from tiny_models import IMAGE_TOKEN_ID, Words, left_pad, prompt_ids, tiny_llava

import prunekit
from prunekit.testing import AdapterCase, Refusal, hand_built_prompt, kept_indices

N_IMAGE = 16  # 32 px / 8 px patches, CLS dropped by the 'default' strategy
GEN = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False)


@pytest.fixture(scope="module")
def model():
    return tiny_llava()


def batch(texts=((7, 8, 9), (10, 11)), seed=0):
    ids, mask = left_pad([prompt_ids(list(t), N_IMAGE) for t in texts])
    pixels = torch.randn(len(texts), 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    return {"input_ids": ids, "attention_mask": mask, "pixel_values": pixels}


def reference_generate(model, inputs, kept, positions="contiguous", **gen):
    """Hand-built reference: the model's own image features, only the kept rows, spliced into
    inputs_embeds of a prompt whose dropped placeholders are removed; then plain generate."""
    feats = model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output
    rows, pos = [], []
    for b in range(inputs["input_ids"].shape[0]):
        ids = inputs["input_ids"][b][inputs["attention_mask"][b].bool()].tolist()
        image_slots = [i for i, t in enumerate(ids) if t == IMAGE_TOKEN_ID]
        drop = {image_slots[j] for j in range(N_IMAGE) if j not in set(kept[b])}
        rows.append([t for i, t in enumerate(ids) if i not in drop])
        pos.append([i for i in range(len(ids)) if i not in drop])
    ids, mask = left_pad(rows)
    embeds = model.get_input_embeddings()(ids)
    kept_feats = torch.cat([feats[b][sorted(kept[b])] for b in range(len(kept))])
    embeds = embeds.masked_scatter((ids == IMAGE_TOKEN_ID).unsqueeze(-1), kept_feats)
    extra = {}
    if positions == "original":
        position_ids = torch.zeros_like(ids)
        for b, p in enumerate(pos):
            position_ids[b, ids.shape[1] - len(p) :] = torch.tensor(p)
        extra["position_ids"] = position_ids
    return model.generate(input_ids=ids, inputs_embeds=embeds, attention_mask=mask, **extra, **gen)


def caller_layout(inputs, reference, n_new=GEN["max_new_tokens"]):
    """What generate returns under attach: the caller's input_ids, then the reference's new tokens."""
    return torch.cat([inputs["input_ids"], reference[:, -n_new:]], dim=1)


# -- the adapter contract's case ----------------------------------------------------------------
CONTRACT_PROMPTS = ((7, 8, 9), (10, 11))


def contract_inputs(model, which):
    """Prompts ``which`` of CONTRACT_PROMPTS, left padded; the image of prompt i is seeded by i."""
    ids, mask = left_pad([prompt_ids(list(CONTRACT_PROMPTS[i]), N_IMAGE) for i in which])
    pixels = torch.cat(
        [torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(i)) for i in which]
    )
    return {"input_ids": ids, "attention_mask": mask, "pixel_values": pixels}


def contract_reference(model, inputs, results, options):
    """The model's own image features, kept rows gathered, dropped placeholders removed."""
    with torch.no_grad():
        features = list(model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output)
    positions = options.get("positions", "contiguous")
    return hand_built_prompt(model, inputs, features, kept_indices(results[0]), positions=positions)


def contract_features(model, inputs, options):
    """What the pruner must see: the model's own projected features, per image."""
    return list(model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output)


def without_pixels_with_encoder_outputs(inputs):
    inputs = dict(inputs)
    inputs["mm_encoder_outputs"] = {"image": inputs.pop("pixel_values")}
    return inputs


def one_placeholder_too_many(inputs):
    inputs["input_ids"][0, -1] = IMAGE_TOKEN_ID
    return inputs


CONTRACT_CASES = [
    AdapterCase(
        family="llava",
        build=functools.partial(tiny_llava, initializer_range=0.2),  # positions change tokens
        inputs=contract_inputs,
        reference=contract_reference,
        features=contract_features,
        tokenizer=Words(),  # prompt 0 reads "red triangle ?", prompt 1 "blue circle"
        variants=({"positions": "contiguous"}, {"positions": "original"}),
        budgets=(4, 0.5),
        full_budgets=(1.0, N_IMAGE, 10_000),
        refusals=(
            Refusal(options={"positions": "shifted"}, match="positions must be one of"),
            Refusal(budget=0, match="budget"),
            Refusal(inputs=without_pixels_with_encoder_outputs, match="mm_encoder_outputs"),
            Refusal(inputs=one_placeholder_too_many, match="image tokens but the images give"),
        ),
    )
]


def test_positions_option_changes_the_computation(model):
    inputs = batch()
    outs = {}
    for positions in ("contiguous", "original"):
        with prunekit.attach(model, "resprune", budget=4, positions=positions):
            outs[positions] = model(**inputs).logits
    assert outs["contiguous"].shape == outs["original"].shape
    assert not torch.allclose(outs["contiguous"], outs["original"])


def test_text_conditioning_uses_the_prompt_nouns(model):
    inputs = batch()
    with prunekit.attach(model, prunekit.ResPrune(alpha=4.0), budget=4, tokenizer=Words()) as h:
        model(**inputs)
    with (
        pytest.warns(UserWarning, match="no tokenizer"),
        prunekit.attach(model, prunekit.ResPrune(alpha=4.0), budget=4) as h_none,
    ):
        model(**inputs)
    assert not torch.equal(h.results[0].indices, h_none.results[0].indices)
    assert h.results[0].scores is not None and not torch.all(h.results[0].scores == 1)
    assert torch.all(h_none.results[0].scores == 1)


def test_embedding_mean_is_recomputed_when_the_table_changes(model):
    """The adapter caches the table's mean row, but an in-place edit of the table (a new
    tensor version) gives the new mean, the same as passing it by hand."""
    inputs = batch()
    table = model.get_input_embeddings().weight
    original = table.detach().clone()
    bump = torch.linspace(-1, 1, table.shape[1])
    by_signal = prunekit.ResPrune(alpha=4.0, center="embedding_mean")
    try:
        with prunekit.attach(model, by_signal, budget=4, tokenizer=Words()) as h:
            model(**inputs)
            with torch.no_grad():
                table.add_(bump)
            model(**inputs)
        by_hand = prunekit.ResPrune(alpha=4.0, center=table.mean(dim=0).detach().clone())
        with prunekit.attach(model, by_hand, budget=4, tokenizer=Words()) as h_hand:
            model(**inputs)
    finally:
        with torch.no_grad():
            table.copy_(original)
    assert not torch.allclose(h.results[0].scores, h.results[1].scores)
    torch.testing.assert_close(h.results[1].scores, h_hand.results[0].scores)


def test_embedding_mean_centre_is_the_embedding_tables_mean_row(model):
    """center="embedding_mean": the adapter hands the mean row of the LLM's input-embedding
    table to the relevance, which equals passing that row as a tensor by hand."""
    inputs = batch()
    table = model.get_input_embeddings().weight
    by_hand = prunekit.ResPrune(alpha=4.0, center=table.mean(dim=0).detach().clone())
    by_signal = prunekit.ResPrune(alpha=4.0, center="embedding_mean")
    assert by_signal.required_signals == {"embedding_mean"}
    results = []
    for pruner in (by_hand, by_signal, prunekit.ResPrune(alpha=4.0)):
        with prunekit.attach(model, pruner, budget=4, tokenizer=Words()) as h:
            model(**inputs)
        results.append(h.results[0])
    assert torch.equal(results[0].indices, results[1].indices)
    torch.testing.assert_close(results[0].scores, results[1].scores)
    assert not torch.allclose(results[1].scores, results[2].scores)  # centring changes weights
    with pytest.raises(ValueError, match="center must be one of"):
        prunekit.ResPrune(center="embedding_men")
    with pytest.raises(ValueError, match="embedding_mean"):  # vision-space tokens: no centre
        with prunekit.attach(model, by_signal, budget=4, before_projector=True):
            pass


def test_unsupported_model_lists_families():
    with pytest.raises(TypeError, match=r"no adapter for Linear; supported families: \[.*'llava'"):
        with prunekit.attach(torch.nn.Linear(2, 2), "resprune", budget=4):
            pass


def test_before_projector_equals_hand_built_reference(model):
    inputs = batch()
    pruner = prunekit.create_pruner("composed", relevance="none", selection="greedy_residual")
    with prunekit.attach(model, pruner, budget=5, before_projector=True) as handle:
        got = model.generate(**inputs, **GEN)
    tower = model.model.vision_tower(inputs["pixel_values"], output_hidden_states=True)
    vision = tower.hidden_states[-2][:, 1:]
    expected_pick = pruner.prune(vision, budget=5)
    assert torch.equal(handle.results[0].indices, expected_pick.indices)  # selected in vision space
    kept = [row.tolist() for row in expected_pick.indices]
    assert torch.equal(
        got, caller_layout(inputs, reference_generate(model, inputs, kept, **GEN))
    )  # projector is per token


def test_before_projector_passes_no_text_and_refuses_text_conditioning(model):
    """Before the projector the tokens are vision-space: the prompt's LLM embeddings are not
    handed to the pruner even with a tokenizer, and a text-conditioned pruner is refused."""
    seen = []

    class Spy(prunekit.TokenPruner):
        def select(self, inputs, num_keep):
            seen.append(inputs.text_embeds)
            return prunekit.create_pruner("random").select(inputs, num_keep)

    with prunekit.attach(model, Spy(), budget=4, before_projector=True, tokenizer=Words()):
        model(**batch())
    assert seen == [None]
    with pytest.raises(ValueError, match="text-conditioned.*before_projector=False"):
        with prunekit.attach(model, "resprune", budget=4, before_projector=True, tokenizer=Words()):
            pass


def test_before_projector_and_llm_layer_exclude_each_other(model):
    with pytest.raises(ValueError, match="two different pruning points"):
        with prunekit.attach(model, "resprune", budget=4, before_projector=True, llm_layer=1):
            pass
