"""attach() safety: generate keeps the caller's layout, misuse fails loudly, nothing leaks.

Issue 13, items 1 and 2 (and the missing-tokenizer warning of item 9). Tiny random
models built from configs; batches of two prompts of different lengths, left padded.
"""

from __future__ import annotations

import copy
import gc
import pickle
import warnings

import pytest
import torch
import transformers
from test_internvl_adapter import batch as internvl_batch
from test_internvl_adapter import tiny_internvl
from test_llava_next_adapter import batch as llava_next_batch
from test_llava_next_adapter import tiny_llava_next
from test_qwen2_5_vl_adapter import batch as qwen2_5_vl_batch
from test_qwen2_5_vl_adapter import tiny_qwen2_5_vl
from tiny_models import left_pad, prompt_ids, tiny_clip_vision_config, tiny_llava

import prunekit
from prunekit.adapters import AttachNotEnteredWarning

N_NEW = 4
GEN = dict(max_new_tokens=N_NEW, min_new_tokens=N_NEW, do_sample=False)


def llava_batch(texts=((7, 8, 9, 12), (10,)), seed=0, right=False):
    rows = [prompt_ids(list(t), 16) for t in texts]
    ids, mask = left_pad(rows)
    if right:  # the same rows, padded on the right
        ids, mask = torch.zeros_like(ids), torch.zeros_like(mask)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
    pixels = torch.randn(len(texts), 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    return {"input_ids": ids, "attention_mask": mask, "pixel_values": pixels}


FAMILIES = {
    "llava": (tiny_llava, lambda model: llava_batch()),
    "llava_next": (tiny_llava_next, llava_next_batch),
    "internvl": (tiny_internvl, lambda model: internvl_batch()),
    "qwen2_5_vl": (tiny_qwen2_5_vl, lambda model: qwen2_5_vl_batch()),
}
#: pruning points: attach options, and whether the family supports them
POINTS = {
    "contiguous": dict(positions="contiguous"),
    "original": dict(positions="original"),
    "before_projector": dict(before_projector=True),
    "llm_layer": dict(llm_layer=1),
}
#: pruning points other than the adapters' pre-LLM ones
OTHER_POINTS = ("before_projector", "llm_layer")
CASES = [
    (family, point)
    for family in FAMILIES
    for point in POINTS
    if (point != "before_projector" or family == "llava")
    and (point in ("contiguous", "original") or family != "qwen2_5_vl")
]


@pytest.fixture(scope="module")
def models():
    return {name: build() for name, (build, _) in FAMILIES.items()}


def inputs_of(models, family):
    inputs = FAMILIES[family][1](models[family])
    assert inputs["attention_mask"].sum(dim=1).unique().numel() == 2  # different lengths
    assert (inputs["attention_mask"][:, 0] == 0).any()  # left padded
    return {k: v.clone() for k, v in inputs.items()}


def pruner_for(point):
    if point in ("llm_layer", "before_projector"):  # no text conditioning there
        return prunekit.create_pruner("composed", relevance="none", selection="greedy_residual")
    return "resprune"


def n_visual(model, inputs):
    return int((inputs["input_ids"] == model.config.image_token_id).sum())


# -- item 1: generate returns the caller's layout ----------------------------------------------
# (at the pre-LLM points the adapter contract, tests/test_adapter_contract.py, checks this)
@pytest.mark.parametrize(("family", "point"), [c for c in CASES if c[1] in OTHER_POINTS])
def test_full_budget_generate_is_the_unpruned_output(models, family, point):
    model, inputs = models[family], inputs_of(models, family)
    expected = model.generate(**inputs, **GEN)
    with prunekit.attach(model, pruner_for(point), budget=1.0, **POINTS[point]):
        got = model.generate(**inputs, **GEN)
    assert torch.equal(got, expected)


@pytest.mark.parametrize(("family", "point"), CASES)
def test_pruned_generate_returns_the_callers_ids_then_the_new_tokens(models, family, point):
    model, inputs = models[family], inputs_of(models, family)
    width = inputs["input_ids"].shape[1]
    with prunekit.attach(model, pruner_for(point), budget=0.5, **POINTS[point]) as handle:
        out = model.generate(**inputs, **GEN)
        # independent of generate: the pruned forward pass's next-token prediction
        first = model(**inputs).logits[:, -1].argmax(dim=-1)
        scored = model.generate(**inputs, **GEN, return_dict_in_generate=True, output_scores=True)
    assert int(handle.results[0].counts.sum()) < n_visual(model, inputs)  # it did prune
    assert out.shape == (2, width + N_NEW)
    assert torch.equal(out[:, :width], inputs["input_ids"])  # as given, left padding included
    assert torch.equal(out[:, width], first)
    # the greedy tokens are the argmax of each step's scores
    greedy = torch.stack([s.argmax(dim=-1) for s in scored.scores], dim=1)
    assert torch.equal(out[:, width:], greedy)
    assert torch.equal(scored.sequences, out)
    # the idiom of every evaluation loop, and the runner's slicing by len(scores)
    assert torch.equal(out[:, inputs["input_ids"].shape[1] :], greedy)
    assert scored.sequences.shape[1] - len(scored.scores) == width


def test_right_padding_keeps_the_callers_ids(models):
    model = models["llava"]
    inputs = llava_batch(right=True)
    assert inputs["attention_mask"][:, -1].tolist() == [1, 0]
    with prunekit.attach(model, "resprune", budget=4):
        out = model.generate(**inputs, **GEN)
    width = inputs["input_ids"].shape[1]
    assert torch.equal(out[:, :width], inputs["input_ids"])
    assert out.shape[1] == width + N_NEW


def test_max_length_counts_the_callers_prompt(models):
    """max_length means the same total length with and without pruning."""
    model, inputs = models["llava"], llava_batch()
    width = inputs["input_ids"].shape[1]
    with prunekit.attach(model, "resprune", budget=4):
        out = model.generate(**inputs, max_length=width + 3, min_length=width + 3, do_sample=False)
        reference = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert out.shape[1] == width + 3
    assert torch.equal(out, reference)


def test_several_sequences_per_prompt_repeat_the_callers_ids(models):
    model, inputs = models["llava"], llava_batch()
    width = inputs["input_ids"].shape[1]
    with prunekit.attach(model, "resprune", budget=4):
        out = model.generate(**inputs, **GEN, num_beams=2, num_return_sequences=2)
    assert out.shape == (4, width + N_NEW)
    assert torch.equal(out[:, :width], inputs["input_ids"].repeat_interleave(2, dim=0))


# -- item 2: attach misuse -------------------------------------------------------------------
def from_prunekit(function):
    return getattr(function, "__module__", "").startswith("prunekit")


def instance_patches(model):
    """Instance attributes and hooks prunekit could leave behind, over every module
    (transformers registers hooks of its own; only prunekit's count)."""
    return {
        name: (
            sorted(
                k for k in vars(m) if k in ("forward", "generate", "__deepcopy__", "__reduce_ex__")
            ),
            sum(map(from_prunekit, m._forward_pre_hooks.values())),
            sum(map(from_prunekit, m._forward_hooks.values())),
            "forward_intermediates" in vars(m),
        )
        for name, m in model.named_modules()
    }


def clean_state(model):
    return {name: ([], 0, 0, False) for name, _ in model.named_modules()}


def tiny_clip_encoder():
    torch.manual_seed(0)
    return transformers.CLIPVisionModel(tiny_clip_vision_config()).eval()


def tiny_timm_vit():
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    return VisionTransformer(
        img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=4, num_classes=5
    ).eval()


ENCODER_PRUNER = dict(pruner="composed", budget=4, layer=1)


def encoder_pixels():
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def encoder_output(model, px):
    """The tokens leaving the encoder (timm: ``forward_features``)."""
    if hasattr(model, "forward_features"):
        return model.forward_features(px)
    return model(px).last_hidden_state


@pytest.mark.parametrize(
    "second",
    [
        dict(pruner="resprune", budget=4),
        dict(pruner="fastv", budget=4, llm_layer=1),  # resprune nested with fastv
        dict(pruner="composed", budget=8, positions="original"),
    ],
)
def test_second_attach_on_an_attached_vlm_is_refused(models, second):
    model, inputs = models["llava"], llava_batch()
    with prunekit.attach(model, "resprune", budget=4) as outer:
        inner = prunekit.attach(model, **second)
        with pytest.raises(RuntimeError, match="LlavaForConditionalGeneration is already attached"):
            inner.__enter__()
        with pytest.raises(RuntimeError, match="detach"):
            with prunekit.attach(model, **second):
                pass
        model.generate(**inputs, **GEN)  # the outer block still prunes and records
    assert len(outer.results) == 1
    assert instance_patches(model) == clean_state(model)


@pytest.mark.parametrize("build", [tiny_clip_encoder, tiny_timm_vit])
def test_second_attach_on_an_attached_encoder_is_refused(build):
    model = build()
    name = type(model).__name__
    with prunekit.attach(model, **ENCODER_PRUNER):
        with pytest.raises(RuntimeError, match=f"{name} is already attached.*detach"):
            with prunekit.attach(model, **ENCODER_PRUNER):
                pass
    assert instance_patches(model) == clean_state(model)


def test_attach_inside_an_attached_model_is_refused(models):
    model = models["llava"]
    tower = model.model.vision_tower  # a CLIPVisionModel, which the hf_clip adapter handles
    with prunekit.attach(model, "resprune", budget=4):
        with pytest.raises(RuntimeError, match="inside a LlavaForConditionalGeneration"):
            with prunekit.attach(tower, **ENCODER_PRUNER):
                pass
    with prunekit.attach(tower, **ENCODER_PRUNER):
        with pytest.raises(RuntimeError, match="contains a CLIPVisionModel"):
            with prunekit.attach(model, "resprune", budget=4):
                pass
    assert instance_patches(model) == clean_state(model)


def test_out_of_order_exit_on_one_model_leaves_nothing_patched(models):
    model, inputs = models["llava"], llava_batch()
    before = model.generate(**inputs, **GEN)
    first = prunekit.attach(model, "resprune", budget=4)
    second = prunekit.attach(model, "resprune", budget=8)
    first.__enter__()
    with pytest.raises(RuntimeError, match="already attached"):
        second.__enter__()
    first.__exit__(None, None, None)  # the outer one exits first
    second.__exit__(None, None, None)
    assert instance_patches(model) == clean_state(model)
    assert torch.equal(model.generate(**inputs, **GEN), before)


def test_two_models_exited_out_of_order_restore_bit_identically(models):
    a, b = models["llava"], tiny_llava(seed=1)
    inputs = llava_batch()
    before = {
        name: (m(**inputs).logits, m.generate(**inputs, **GEN)) for name, m in (("a", a), ("b", b))
    }
    first = prunekit.attach(a, "resprune", budget=4)
    second = prunekit.attach(b, "fastv", budget=4, llm_layer=1)
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    assert instance_patches(a) == clean_state(a)
    assert instance_patches(b) != clean_state(b)  # still attached
    second.__exit__(None, None, None)
    for name, m in (("a", a), ("b", b)):
        assert instance_patches(m) == clean_state(m)
        assert torch.equal(m(**inputs).logits, before[name][0])
        assert torch.equal(m.generate(**inputs, **GEN), before[name][1])


@pytest.mark.parametrize("options", [dict(pruner="resprune"), dict(pruner="fastv", llm_layer=1)])
def test_deepcopy_inside_the_block_is_unpatched_and_unpruned(models, options):
    model, inputs = models["llava"], llava_batch()
    unpruned = model.generate(**inputs, **GEN)
    unpruned_logits = model(**inputs).logits
    with prunekit.attach(model, budget=4, **options) as handle:
        twin = copy.deepcopy(model)
        assert instance_patches(twin) == clean_state(twin)
        assert torch.equal(twin.generate(**inputs, **GEN), unpruned)
        assert torch.equal(twin(**inputs).logits, unpruned_logits)
        assert handle.results == []  # the copy never prunes through the handle
        pruned = model(**inputs).logits  # the original is still pruned
        assert len(handle.results) == 1
    if "llm_layer" not in options:
        assert pruned.shape[1] < unpruned_logits.shape[1]
    assert instance_patches(model) == clean_state(model)
    assert torch.equal(twin(**inputs).logits, unpruned_logits)
    with prunekit.attach(twin, budget=4, **options):  # the copy is not "attached"
        pass


def test_deepcopy_of_a_hooked_submodule_is_unpatched(models):
    """The decoder layers carry the in-LLM hooks: a copy of the decoder alone is clean too."""
    model = models["llava"]
    decoder = model.model.language_model
    with prunekit.attach(model, "fastv", budget=4, llm_layer=1):
        assert instance_patches(decoder) != clean_state(decoder)
        twin = copy.deepcopy(decoder)
    assert instance_patches(twin) == clean_state(twin)
    assert instance_patches(decoder) == clean_state(decoder)


@pytest.mark.parametrize("build", [tiny_clip_encoder, tiny_timm_vit])
def test_deepcopy_of_an_attached_encoder_is_unpatched(build):
    model, px = build(), encoder_pixels()
    with torch.no_grad():
        unpruned = encoder_output(model, px)
        with prunekit.attach(model, **ENCODER_PRUNER) as handle:
            twin = copy.deepcopy(model)
            copied = encoder_output(twin, px)
            assert handle.results == []
            assert encoder_output(model, px).shape[1] < unpruned.shape[1]
    assert instance_patches(twin) == clean_state(twin)
    assert torch.equal(copied, unpruned)


def test_pickle_inside_the_block_is_refused_clearly():
    model, px = tiny_timm_vit(), encoder_pixels()
    with prunekit.attach(model, **ENCODER_PRUNER):
        with pytest.raises(TypeError, match="VisionTransformer while prunekit.attach is active"):
            pickle.dumps(model)
    with torch.no_grad():  # outside the block pickling works, and gives the plain model
        assert torch.equal(pickle.loads(pickle.dumps(model))(px), model(px))


def test_entering_one_attach_object_twice_is_a_clear_error(models):
    model = models["llava"]
    attachment = prunekit.attach(model, "resprune", budget=4)
    with attachment:
        pass
    with pytest.raises(RuntimeError, match="already entered.*call prunekit.attach"):
        with attachment:
            pass
    again = prunekit.attach(model, "resprune", budget=4)
    with again:  # also while it is active
        with pytest.raises(RuntimeError, match="already entered"):
            again.__enter__()
    assert instance_patches(model) == clean_state(model)


def test_an_attach_never_entered_warns_at_the_users_line(models):
    model = models["llava"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        handle = prunekit.attach(model, "resprune", budget=4)
        del handle
        gc.collect()
    (warning,) = [w for w in caught if issubclass(w.category, AttachNotEnteredWarning)]
    assert "with prunekit.attach(...) as handle:" in str(warning.message)
    assert warning.filename == __file__
    with warnings.catch_warnings(record=True) as caught:  # entered: no warning
        warnings.simplefilter("always")
        with prunekit.attach(model, "resprune", budget=4):
            pass
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, AttachNotEnteredWarning)]


# -- item 9: the missing-tokenizer warning names the user's line ------------------------------
def test_missing_tokenizer_warning_points_at_the_attach_line(models):
    model = models["llava"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with prunekit.attach(model, "resprune", budget=4):
            pass
    (warning,) = [w for w in caught if "got no tokenizer" in str(w.message)]
    assert warning.filename == __file__
