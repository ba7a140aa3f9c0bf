"""MiniLLaVA training (:mod:`prunekit.training`, the logic of scripts/train_minillava.py):
the LoRA factors it saves are the update peft's layers apply (so ``minillava.load()``'s
merge reproduces the trained model), a saved update or checkpoint state restarts training
where it stopped, the projector un-standardisation inverts the folding, the object-count
curriculum, the mix of sources in each step, the learning-rate schedule and the command
line."""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import math
import random
from collections import Counter
from types import SimpleNamespace

import pytest
import torch
from repo_scripts import REPO, load_script
from tiny_models import tiny_llama_config

from prunekit.data import shapes
from prunekit.models import minillava
from prunekit.training import config as train_config
from prunekit.training import data, features, lora, schedule

MISSING = [n for n in ("gguf", "safetensors") if importlib.util.find_spec(n) is None]
if MISSING:
    pytest.skip(f"the training script needs {MISSING}", allow_module_level=True)

needs_peft = pytest.mark.skipif(
    importlib.util.find_spec("peft") is None, reason="needs peft (train extra)"
)
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _tiny_llama():
    from transformers import LlamaModel

    torch.manual_seed(0)
    return LlamaModel(tiny_llama_config()).eval()


def _holder(lm):
    return SimpleNamespace(model=SimpleNamespace(language_model=lm))


# --------------------------------------------------------------------------- LoRA


@needs_peft
def test_saved_lora_merged_equals_the_trained_peft_model(tmp_path):
    lm = _tiny_llama()
    stock = copy.deepcopy(lm)
    modules = lora.inject_lora(_holder(lm), 4, 8.0, TARGETS)
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
    updates, scale = lora.lora_updates(modules)
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
    fresh_modules = lora.inject_lora(_holder(fresh), 4, 8.0, TARGETS)
    lora.init_lora_(fresh_modules, path)
    with torch.no_grad():
        torch.testing.assert_close(
            fresh(input_ids=ids).last_hidden_state, merged, rtol=0, atol=1e-5
        )
    other = lora.inject_lora(_holder(_tiny_llama()), 2, 8.0, TARGETS)
    with pytest.raises(train_config.ConfigError, match="--init-lora"):
        lora.init_lora_(other, path)  # another scale (alpha / rank)


@needs_peft
def test_lora_targets_that_match_nothing_are_an_error():
    with pytest.raises(train_config.ConfigError, match="--lora-targets"):
        lora.inject_lora(_holder(_tiny_llama()), 4, 8.0, ["no_such_proj"])


@needs_peft
def test_lora_state_round_trip_restores_the_trained_model():
    """A checkpoint's LoRA state, put into a fresh injection, gives the trained outputs;
    the state is a copy that later training does not change."""
    lm = _tiny_llama()
    modules = lora.inject_lora(_holder(lm), 4, 8.0, ["q_proj", "v_proj"])
    torch.manual_seed(3)
    with torch.no_grad():
        for p in lora.lora_parameters(modules):
            p.normal_(0, 0.1)
    state = lora.lora_state(_holder(lm))
    assert len(state) == 2 * 2 * 2  # 2 layers x (q, v) x (A, B)
    assert all(".lora_" in k for k in state)
    ids = torch.tensor([[1, 4, 9, 16, 25]])
    with torch.no_grad():
        trained = lm(input_ids=ids).last_hidden_state
        for p in lora.lora_parameters(modules):
            p.add_(1.0)  # training moves on; the saved state must not
    fresh = _tiny_llama()
    lora.inject_lora(_holder(fresh), 4, 8.0, ["q_proj", "v_proj"])
    with torch.no_grad():
        assert (fresh(input_ids=ids).last_hidden_state - trained).abs().max() > 1e-3
        lora.load_lora_state(_holder(fresh), state)
        torch.testing.assert_close(fresh(input_ids=ids).last_hidden_state, trained)
    with pytest.raises(ValueError, match="not LoRA layers"):
        lora.load_lora_state(_holder(fresh), {**state, "layers.9.bogus.weight": torch.ones(1)})


# --------------------------------------------------------------------------- features


def test_unfold_inverts_the_fold():
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
    features.unfold_(standardized, mean, std)
    wrapped = features.Standardized(standardized, mean, std)
    raw = torch.randn(3, 5, 8)
    with torch.no_grad():
        torch.testing.assert_close(wrapped(raw), raw_projector(raw), rtol=1e-5, atol=1e-5)
        folded = LlavaMultiModalProjector(config)
        wrapped.fold_into(folded)
        for a, b in zip(folded.state_dict().values(), raw_projector.state_dict().values()):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_channel_statistics_of_the_first_images_of_each_set():
    a = torch.tensor([[[1.0, 10.0], [3.0, 10.0]], [[100.0, 0.0], [100.0, 0.0]]])
    b = torch.tensor([[[5.0, 10.0 + 1e-4], [7.0, 10.0]]], dtype=torch.float16)
    mean, std, sample = features.channel_statistics([a, b], rows=1)  # a's 2nd image left out
    assert sample.shape == (4, 2) and sample.dtype == torch.float32
    torch.testing.assert_close(mean, torch.tensor([4.0, 10.0]))
    # channel 0: values 1, 3, 5, 7 -> sample std sqrt(20 / 3); channel 1: floored at 1e-3
    torch.testing.assert_close(std, torch.tensor([math.sqrt(20 / 3), 1e-3]))


# --------------------------------------------------------------------------- data


def test_objects_allowed_grows_from_the_fewest_to_the_most():
    assert data.objects_allowed(0.0, 0.0) == shapes.MAX_OBJECTS  # no curriculum
    assert data.objects_allowed(0.0, 0.4) == shapes.MIN_OBJECTS
    span = shapes.MAX_OBJECTS - shapes.MIN_OBJECTS
    assert data.objects_allowed(0.2, 0.4) == shapes.MIN_OBJECTS + int(span * 0.5)
    assert data.objects_allowed(0.4, 0.4) == shapes.MAX_OBJECTS
    assert data.objects_allowed(0.9, 0.4) == shapes.MAX_OBJECTS


def test_objects_allowed_hand_worked_values(monkeypatch):
    """With 2 to 8 objects (span 6) over a curriculum of half the stage: 2 + int(6 p / 0.5)."""
    monkeypatch.setattr(shapes, "MIN_OBJECTS", 2)
    monkeypatch.setattr(shapes, "MAX_OBJECTS", 8)
    expected = {0.0: 2, 0.05: 2, 0.1: 3, 0.2: 4, 0.25: 5, 0.45: 7, 0.49: 7, 0.5: 8, 0.8: 8}
    assert {p: data.objects_allowed(p, 0.5) for p in expected} == expected


def test_next_image_keeps_to_the_allowed_scenes_and_starts_new_passes():
    source = data.Source(
        name="s",
        images=[None] * 5,
        qas=[[]] * 5,
        answers=(),
        key="s",
        n_objects=[3, 8, 5, 3, 4],
    )
    rng = random.Random(0)
    orders: dict[str, list[int]] = {}
    picked = [data.next_image(source, orders, rng, 3) for _ in range(6)]
    assert set(picked) == {0, 3}
    assert sorted(picked[:2]) == [0, 3] and sorted(picked[2:4]) == [0, 3]  # one per pass
    orders = {}
    epoch = [data.next_image(source, orders, rng, None) for _ in range(5)]
    assert sorted(epoch) == [0, 1, 2, 3, 4]  # no curriculum: each image once per pass
    with pytest.raises(RuntimeError, match="at most 2 objects"):
        data.next_image(source, {}, rng, 2)


def _source(name, n_images, n_questions, n_objects=None):
    return data.Source(
        name=name,
        images=[None] * n_images,
        qas=[
            [data.QA(f"{name} {i} q{k}", f"a{k}") for k in range(n_questions)]
            for i in range(n_images)
        ],
        answers=(),
        key=name,
        n_objects=n_objects,
    )


def test_stage2_mix_hand_worked_shares():
    sh, ev, cap = _source("sh", 2, 1), _source("ev", 2, 1), _source("cap", 2, 1)
    sources, weights = data.stage2_mix(sh, ev, cap, 0.5, 0.2)
    assert [s.name for s in sources] == ["sh", "ev", "cap"]
    assert weights == pytest.approx([0.3, 0.5, 0.2])
    sources, weights = data.stage2_mix(sh, ev, cap, 0.7, 0.0)  # no captions: left out
    assert [s.name for s in sources] == ["sh", "ev"] and weights == pytest.approx([0.7, 0.3])
    with pytest.raises(ValueError, match="caption_fraction"):
        data.stage2_mix(sh, ev, cap, 0.3, 0.4)


def test_draw_batch_mixes_the_sources_in_their_shares_and_is_seeded():
    sources = [_source("a", 40, 6), _source("b", 30, 2), _source("c", 20, 3)]
    weights = [0.3, 0.5, 0.2]
    rng, orders = random.Random(7), {}
    counts: Counter = Counter()
    resolutions: Counter = Counter()
    for _ in range(500):
        batch = data.draw_batch(rng, sources, weights, orders, [112, 224], 8, 4)
        assert len(batch.picks) == 8
        resolutions[batch.resolution] += 1
        counts.update(src.name for src, _ in batch.picks)
        # up to 4 questions of each image, all of that image, each once
        expected = sum(min(4, len(src.qas[i])) for src, i in batch.picks)
        assert len(batch.items) == expected
        for j, question, answer in batch.items:
            src, i = batch.picks[j]
            assert data.QA(question, answer) in src.qas[i]
        for j in range(8):
            questions = [q for row, q, _ in batch.items if row == j]
            assert len(set(questions)) == len(questions)
    total = sum(counts.values())
    for name, share in zip("abc", weights):  # 4000 images: binomial sd < 0.008
        assert counts[name] / total == pytest.approx(share, abs=0.03), counts
    assert resolutions[112] / 500 == pytest.approx(0.5, abs=0.08)

    def draws(seed):
        rng, orders = random.Random(seed), {}
        return [
            (b.resolution, [(s.name, i) for s, i in b.picks], b.items)
            for b in (
                data.draw_batch(rng, sources, weights, orders, [112, 224], 4, 2) for _ in range(20)
            )
        ]

    assert draws(3) == draws(3)
    assert draws(3) != draws(4)


def test_draw_batch_follows_the_curriculum_and_epochs():
    scenes = _source("scenes", 6, 2, n_objects=[2, 9, 3, 7, 2, 5])
    rng, orders = random.Random(0), {}
    picked = [
        i
        for _ in range(10)
        for _, i in data.draw_batch(rng, [scenes], [1.0], orders, [224], 3, 1, most=3).picks
    ]
    assert set(picked) == {0, 2, 4}
    for k in range(0, 30, 3):  # each pass of the allowed scenes shows each of them once
        assert sorted(picked[k : k + 3]) == [0, 2, 4]
    with pytest.raises(ValueError, match="n_images"):
        data.draw_batch(rng, [scenes], [1.0], {}, [224], 0, 1)


# --------------------------------------------------------------------------- schedule


def test_lr_at_hand_worked_warmup_and_cosine_decay():
    peak, warmup = 1e-3, 0.1
    assert schedule.lr_at(0.0, peak, warmup) == pytest.approx(1e-3 * 1e-3 / 0.1)  # not 0
    assert schedule.lr_at(0.05, peak, warmup) == pytest.approx(5e-4)
    assert schedule.lr_at(0.1, peak, warmup) == pytest.approx(1e-3)  # the peak
    # cosine over the remaining 0.9: at 0.55 half-way -> peak / 2; at 0.325 a quarter
    assert schedule.lr_at(0.55, peak, warmup) == pytest.approx(5e-4)
    assert schedule.lr_at(0.325, peak, warmup) == pytest.approx(1e-3 * (1 + math.sqrt(0.5)) / 2)
    assert schedule.lr_at(1.0, peak, warmup) == pytest.approx(0.0, abs=1e-15)
    assert schedule.lr_at(1.3, peak, warmup) == pytest.approx(0.0, abs=1e-15)  # clamped
    assert schedule.lr_at(0.0, 2e-3, 0.0) == pytest.approx(2e-3)  # no warm-up


def test_progress_follows_steps_or_the_time_budget():
    assert schedule.progress_at(5, 10) == 0.5
    assert schedule.progress_at(5, 10, elapsed_s=80.0, time_left=100.0) == pytest.approx(0.8)
    assert schedule.progress_at(9, 10, elapsed_s=10.0, time_left=100.0) == pytest.approx(0.9)
    assert schedule.progress_at(2, 10, elapsed_s=120.0, time_left=100.0) >= 1.0  # out of time
    assert schedule.stage_seconds(None, 50.0) is None
    assert schedule.stage_seconds(10.0, 30.0) == 570.0
    assert schedule.stage_seconds(0.5, 50.0) == schedule.MIN_STAGE_SECONDS
    with pytest.raises(ValueError, match="steps"):
        schedule.progress_at(0, 0)


# --------------------------------------------------------------------------- command line


def test_the_command_line_lists_every_config_field_with_its_default(tmp_path):
    script = load_script("scripts/train_minillava.py", "train_minillava")
    assert len((REPO / "scripts/train_minillava.py").read_text().splitlines()) < 150  # wiring
    usage = train_config.argument_parser().format_usage()
    flags = {word.strip("[]") for word in usage.split() if word.startswith("[--")}
    fields = dataclasses.fields(train_config.TrainConfig)
    assert flags == {"--" + f.name.replace("_", "-") for f in fields}
    config = train_config.parse_config([])
    assert config.resolutions == [112, 168, 224] and config.stage2_steps == 800
    assert config.eval_pruners == ["random:per_image=true", "pooling"]
    assert config.lora_targets == TARGETS and config.lora_alpha == 0.0
    assert config.out_dir == minillava.PROJECTOR_PATH.parent
    config = train_config.parse_config(
        ["--smoke", "--cache-dir", str(tmp_path), "--lora-rank", "8", "--bf16"]
    )
    assert config.out_dir == tmp_path / "smoke" and config.work_dir == tmp_path / "smoke"
    assert (config.stage1_steps, config.stage2_steps, config.batch_images) == (2, 2, 2)
    assert config.lora_alpha == 16.0 and config.bf16 is True
    with pytest.raises(SystemExit, match="--caption-fraction"):
        script.main(["--shapes-fraction", "0.2", "--caption-fraction", "0.3"])
    with pytest.raises(SystemExit, match="--init-lora needs --lora-rank"):
        script.main(["--init-lora", str(tmp_path / "x.safetensors")])
    with pytest.raises(ValueError, match="image sizes"):
        train_config.parse_config(["--resolutions", "100"])
    with pytest.raises(SystemExit):
        train_config.parse_config(["--no-such-option"])
