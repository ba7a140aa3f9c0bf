"""The MiniLLaVA v2 training pieces of scripts/train_minillava.py: the LoRA factors it
saves are the update peft's layers apply (so ``minillava.load()``'s merge reproduces the
trained model), a saved update restarts training where it stopped, the projector
un-standardisation inverts the folding, and the object-count curriculum's sampling."""

from __future__ import annotations

import copy
import importlib.util
import random
from types import SimpleNamespace

import pytest
import torch
from repo_scripts import load_script
from tiny_models import tiny_llama_config

from prunekit.models import minillava

MISSING = [n for n in ("gguf", "safetensors") if importlib.util.find_spec(n) is None]
if MISSING:
    pytest.skip(f"the training script needs {MISSING}", allow_module_level=True)


@pytest.fixture(scope="module")
def train():
    return load_script("scripts/train_minillava.py", "train_minillava")


def _tiny_llama():
    from transformers import LlamaModel

    torch.manual_seed(0)
    return LlamaModel(tiny_llama_config()).eval()


def _lora_args(rank=4, alpha=8.0):
    return SimpleNamespace(
        lora_rank=rank,
        lora_alpha=alpha,
        lora_targets=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    )


@pytest.mark.skipif(importlib.util.find_spec("peft") is None, reason="needs peft (train extra)")
def test_saved_lora_merged_equals_the_trained_peft_model(train, tmp_path):
    lm = _tiny_llama()
    stock = copy.deepcopy(lm)
    holder = SimpleNamespace(model=SimpleNamespace(language_model=lm))
    modules = train.inject_lora(holder, _lora_args())
    assert len(modules) == 2 * 7
    assert all(not p.requires_grad for n, p in lm.named_parameters() if "lora_" not in n)
    ids = torch.tensor([[1, 5, 7, 9, 11, 3]])
    with torch.no_grad():
        before = lm(input_ids=ids).last_hidden_state
        torch.testing.assert_close(before, stock(input_ids=ids).last_hidden_state)  # B = 0
        for module in modules.values():  # as if trained
            for adapter in module.lora_B.values():
                adapter.weight.normal_(0, 0.05)
        trained = lm(input_ids=ids).last_hidden_state
    assert (trained - before).abs().max() > 1e-2
    updates, scale = train.lora_updates(modules)
    assert scale == 8.0 / 4
    path = tmp_path / "lora.safetensors"
    minillava.save_lora(updates, scale, path)
    loaded, loaded_scale, _ = minillava.load_lora(path)
    minillava.merge_lora(stock, loaded, loaded_scale)
    with torch.no_grad():
        merged = stock(input_ids=ids).last_hidden_state
    # the factors are stored in float16: agreement to that rounding
    torch.testing.assert_close(merged, trained, rtol=0, atol=2e-3)
    # a saved update restarts training: a fresh injection initialised from the file
    # computes what the merged model computes
    fresh = copy.deepcopy(_tiny_llama())
    fresh_modules = train.inject_lora(
        SimpleNamespace(model=SimpleNamespace(language_model=fresh)), _lora_args()
    )
    train.init_lora_(fresh_modules, path)
    with torch.no_grad():
        torch.testing.assert_close(
            fresh(input_ids=ids).last_hidden_state, merged, rtol=0, atol=1e-5
        )
    other = train.inject_lora(
        SimpleNamespace(model=SimpleNamespace(language_model=_tiny_llama())), _lora_args(2, 8.0)
    )
    with pytest.raises(SystemExit, match="--init-lora"):
        train.init_lora_(other, path)  # another scale (alpha / rank)


def test_unfold_inverts_the_fold(train):
    from transformers import LlavaConfig
    from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

    config = LlavaConfig(
        vision_config={
            "model_type": "clip_vision_model",
            "hidden_size": 8,
            "num_attention_heads": 2,
        },
        text_config={"model_type": "llama", "hidden_size": 12, "num_attention_heads": 2},
        projector_hidden_act="gelu",
    )
    torch.manual_seed(1)
    raw_projector = LlavaMultiModalProjector(config)
    mean, std = torch.randn(8), torch.rand(8) + 0.5
    standardized = copy.deepcopy(raw_projector)
    train.unfold_(standardized, mean, std)
    wrapped = train.Standardized(standardized, mean, std)
    raw = torch.randn(3, 5, 8)
    with torch.no_grad():
        torch.testing.assert_close(wrapped(raw), raw_projector(raw), rtol=1e-5, atol=1e-5)
        folded = LlavaMultiModalProjector(config)
        wrapped.fold_into(folded)
        for a, b in zip(folded.state_dict().values(), raw_projector.state_dict().values()):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_objects_allowed_grows_from_the_fewest_to_the_most(train):
    shapes = train.shapes
    assert train.objects_allowed(0.0, 0.0) == shapes.MAX_OBJECTS  # no curriculum
    assert train.objects_allowed(0.0, 0.4) == shapes.MIN_OBJECTS
    span = shapes.MAX_OBJECTS - shapes.MIN_OBJECTS
    assert train.objects_allowed(0.2, 0.4) == shapes.MIN_OBJECTS + int(span * 0.5)
    assert train.objects_allowed(0.4, 0.4) == shapes.MAX_OBJECTS
    assert train.objects_allowed(0.9, 0.4) == shapes.MAX_OBJECTS


def test_next_image_keeps_to_the_allowed_scenes_and_starts_new_passes(train):
    source = train.Source(
        name="s",
        images=[None] * 5,
        qas=[[]] * 5,
        answers=(),
        key="s",
        n_objects=[3, 8, 5, 3, 4],
    )
    rng = random.Random(0)
    orders: dict[str, list[int]] = {}
    picked = [train.next_image(source, orders, rng, 3) for _ in range(6)]
    assert set(picked) == {0, 3}
    assert sorted(picked[:2]) == [0, 3] and sorted(picked[2:4]) == [0, 3]  # one per pass
    orders = {}
    epoch = [train.next_image(source, orders, rng, None) for _ in range(5)]
    assert sorted(epoch) == [0, 1, 2, 3, 4]  # no curriculum: each image once per pass
    with pytest.raises(RuntimeError, match="at most 2 objects"):
        train.next_image(source, {}, rng, 2)
