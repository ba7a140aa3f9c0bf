"""One vision-encoder pass per image (issue 16, item 2): the memo of LLaVA's projected image
features gives exactly the plain path's tokens and scores, pruned and unpruned, runs the
vision tower once per distinct image, passes what it cannot answer exactly to the original,
leaves the model as it found it, and through ``run_dataset`` changes nothing but timings."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from tiny_models import tiny_clip_vision_config, tiny_llama_config

import prunekit
from prunekit.experiments import compose
from prunekit.experiments import runner as runner_module
from prunekit.experiments.config import build_model
from prunekit.experiments.datasets import tiny as tiny_data
from prunekit.experiments.image_features import (
    ImageFeatureMemo,
    image_feature_memo,
    shared_image_features,
    supports,
)
from prunekit.models import tiny

PROMPT = "<image>\n{question}"
GENERATE = dict(max_new_tokens=3, do_sample=False, return_dict_in_generate=True, output_scores=True)


@pytest.fixture(scope="module")
def model_and_processor():
    return tiny.load(initializer_range=0.2)


@pytest.fixture(scope="module")
def images():
    samples = tiny_data(n_samples=3).samples
    return [s.get_image() for s in samples], [PROMPT.format(question=s.query) for s in samples]


def batch(processor, images, prompts, order):
    """A batch of (image, prompt) pairs by index: repeated images are repeated rows."""
    inputs = processor(
        images=[images[i] for i, _ in order],
        text=[prompts[j] for _, j in order],
        return_tensors="pt",
        padding=True,
    )
    return dict(inputs)


class TowerRows:
    """Counts the images (rows) that go through the vision tower, with a forward hook."""

    def __init__(self, model):
        self.rows = 0
        self.calls = 0
        self.handle = model.model.vision_tower.register_forward_hook(self.hook)

    def hook(self, module, args, output):
        self.calls += 1
        self.rows += int(args[0].shape[0])

    def remove(self):
        self.handle.remove()


#: two calls: image 0 twice in the first batch, images 0 and 2 again in the second
FIRST = [(0, 0), (1, 1), (0, 2), (2, 2)]
SECOND = [(2, 0), (0, 1), (2, 1)]


def _context(model, case):
    if case == "unpruned":
        return torch.no_grad()
    if case == "in_llm":
        return prunekit.attach(model, "fastv", budget=8, llm_layer=1)
    return prunekit.attach(model, "resprune", budget=8)


@pytest.mark.parametrize("case", ["unpruned", "pre_llm", "in_llm"])
def test_the_memo_gives_exactly_the_plain_ids_and_scores(model_and_processor, images, case):
    model, processor = model_and_processor
    calls = [batch(processor, *images, FIRST), batch(processor, *images, SECOND)]
    with torch.no_grad():
        plain = []
        for inputs in calls:
            with _context(model, case):
                plain.append(model.generate(**inputs, **GENERATE))
        memo = ImageFeatureMemo()
        rows = TowerRows(model)
        try:
            shared = []
            with shared_image_features(model, memo) as used:
                assert used is memo
                for inputs in calls:
                    with _context(model, case):
                        shared.append(model.generate(**inputs, **GENERATE))
        finally:
            rows.remove()
    for a, b in zip(plain, shared):
        assert torch.equal(a.sequences, b.sequences)
        assert len(a.scores) == len(b.scores)
        assert all(torch.equal(x, y) for x, y in zip(a.scores, b.scores))
    # three distinct images: the tower saw each once, in the first call
    assert (rows.calls, rows.rows) == (1, 3)
    assert (len(memo), memo.misses, memo.hits, memo.bypassed) == (3, 3, 4, 0)


def test_each_distinct_image_goes_through_the_tower_once(model_and_processor, images):
    model, processor = model_and_processor
    first = batch(processor, *images, FIRST)["pixel_values"]
    second = batch(processor, *images, SECOND)["pixel_values"]
    memo = ImageFeatureMemo()
    rows = TowerRows(model)
    try:
        with torch.no_grad(), shared_image_features(model, memo):
            a = model.get_image_features(pixel_values=first).pooler_output
            b = model.model.get_image_features(pixel_values=second, return_dict=True)
            b = b.pooler_output
    finally:
        rows.remove()
    assert rows.rows == 3 and rows.calls == 1
    with torch.no_grad():
        expected_a = model.get_image_features(pixel_values=first).pooler_output
        expected_b = model.get_image_features(pixel_values=second).pooler_output
    assert all(torch.equal(x, y) for x, y in zip(a, expected_a))
    assert all(torch.equal(x, y) for x, y in zip(b, expected_b))
    # every row its own tensor: changing one in place changes neither the memo nor the others
    a[0].zero_()
    assert not torch.equal(a[2], a[0])
    with torch.no_grad(), shared_image_features(model, memo):
        again = model.get_image_features(pixel_values=first).pooler_output
    assert torch.equal(again[0], expected_a[0])


def test_a_bounded_memo_keeps_the_most_recent_images(model_and_processor, images):
    model, processor = model_and_processor
    pixels = batch(processor, *images, [(0, 0), (1, 0), (2, 0)])["pixel_values"]
    one_image = 64 * model.config.text_config.hidden_size * 4  # float32 (tokens, hidden)
    memo = ImageFeatureMemo(max_bytes=2 * one_image)
    rows = TowerRows(model)
    try:
        with torch.no_grad(), shared_image_features(model, memo):
            model.get_image_features(pixel_values=pixels)  # 0, 1, 2: image 0 evicted
            model.get_image_features(pixel_values=pixels[2:])  # hit
            model.get_image_features(pixel_values=pixels[:1])  # computed again
    finally:
        rows.remove()
    assert len(memo) == 2 and memo.nbytes == 2 * one_image
    assert rows.rows == 4 and (memo.hits, memo.misses) == (1, 4)
    with pytest.raises(ValueError, match="max_bytes"):
        ImageFeatureMemo(max_bytes=-1)


def test_changed_weights_empty_the_memo(images):
    model, processor = tiny.load(initializer_range=0.2)
    pixels = batch(processor, *images, [(0, 0)])["pixel_values"]
    memo = ImageFeatureMemo()
    with torch.no_grad(), shared_image_features(model, memo):
        before = model.get_image_features(pixel_values=pixels).pooler_output[0]
        model.model.multi_modal_projector.linear_2.bias.add_(1.0)  # updated in place
        after = model.get_image_features(pixel_values=pixels).pooler_output[0]
    assert memo.hits == 0 and memo.misses == 2
    assert not torch.equal(after, before)


def _list_layer_llava():
    config = transformers.LlavaConfig(
        vision_config=tiny_clip_vision_config(image_size=64, patch_size=8),
        text_config=tiny_llama_config(),
        image_token_id=3,
        vision_feature_layer=[-2, -1],
        vision_feature_select_strategy="default",
    )
    return transformers.LlavaForConditionalGeneration(config).eval()


def test_calls_it_cannot_answer_exactly_go_to_the_original(model_and_processor, images):
    model, processor = model_and_processor
    inner = model.model
    pixels = batch(processor, *images, [(0, 0)])["pixel_values"]
    memo = ImageFeatureMemo()
    rows = TowerRows(model)
    try:
        with shared_image_features(model, memo):
            with torch.no_grad():
                hidden = model.get_image_features(pixel_values=pixels, output_hidden_states=True)
                tuple_output = model.get_image_features(pixel_values=pixels, return_dict=False)
            with torch.enable_grad():  # gradients wanted: the output keeps its graph
                graph = model.get_image_features(pixel_values=pixels).pooler_output[0]
            model.model.vision_tower.train()
            try:
                with torch.no_grad():
                    model.get_image_features(pixel_values=pixels)
            finally:
                model.model.vision_tower.eval()
    finally:
        rows.remove()
    assert rows.rows == 4 and len(memo) == 0 and memo.bypassed == 4
    assert memo.hits == memo.misses == 0
    assert hidden.hidden_states is not None
    assert isinstance(tuple_output, tuple)
    assert graph.requires_grad and graph.grad_fn is not None

    # image_sizes (CLIP takes none: a stand-in original records the calls), pixels not 4-D
    calls = []

    def original(*args, **kwargs):
        calls.append((args, kwargs))
        return "original"

    inner.get_image_features = original
    try:
        with shared_image_features(model, memo):
            sizes = torch.tensor([[64, 64]])
            assert model.get_image_features(pixel_values=pixels, image_sizes=sizes) == "original"
            assert inner.get_image_features(pixels[0]) == "original"
            assert inner.get_image_features(pixels, -2) == "original"  # positional layer
    finally:
        del inner.get_image_features
    assert [c[1].get("image_sizes") is sizes for c in calls] == [True, False, False]
    assert calls[1][0][0].dim() == 3 and calls[2][0][1] == -2
    assert len(memo) == 0 and memo.bypassed == 7

    listed = _list_layer_llava()
    list_memo = ImageFeatureMemo()
    list_rows = TowerRows(listed)
    try:
        with torch.no_grad(), shared_image_features(listed, list_memo):
            listed.get_image_features(pixel_values=pixels)
            listed.get_image_features(pixel_values=pixels)
    finally:
        list_rows.remove()
    assert list_rows.rows == 2 and len(list_memo) == 0 and list_memo.bypassed == 2


def test_other_model_classes_are_left_untouched(model_and_processor):
    model, _ = model_and_processor

    class Sub(transformers.LlavaForConditionalGeneration):
        pass

    class Other(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = torch.nn.Module()
            self.model.get_image_features = lambda **kwargs: "original"

    assert supports(model)
    other = Other()
    found = other.model.get_image_features
    with shared_image_features(other) as memo:
        assert memo is None
        assert other.model.get_image_features is found
        assert other.model.get_image_features(pixel_values=None) == "original"
    subclass = Sub.__new__(Sub)  # exact type only, as the LLaVA adapter matches
    assert not supports(subclass) and not supports(torch.nn.Linear(2, 2))


def test_the_model_is_left_as_found(model_and_processor, images):
    model, processor = model_and_processor
    inner = model.model
    pixels = batch(processor, *images, [(0, 0), (1, 0)])["pixel_values"]
    with torch.no_grad():
        expected = model.get_image_features(pixel_values=pixels).pooler_output
    assert "get_image_features" not in vars(inner)
    with shared_image_features(model, ImageFeatureMemo()):
        assert "get_image_features" in vars(inner)
    assert "get_image_features" not in vars(inner)
    with pytest.raises(RuntimeError, match="inside"):
        with shared_image_features(model, ImageFeatureMemo()):
            with torch.no_grad():
                model.get_image_features(pixel_values=pixels)
            raise RuntimeError("inside the block")
    assert "get_image_features" not in vars(inner)
    # an instance attribute found on entry is put back
    marker = inner.get_image_features
    inner.get_image_features = marker
    try:
        with shared_image_features(model, ImageFeatureMemo()):
            assert vars(inner)["get_image_features"] is not marker
        assert vars(inner)["get_image_features"] is marker
    finally:
        del inner.get_image_features
    rows = TowerRows(model)
    try:
        with torch.no_grad():
            again = model.get_image_features(pixel_values=pixels)
    finally:
        rows.remove()
    assert rows.rows == 2  # the plain path again: no memo
    assert all(torch.equal(x, y) for x, y in zip(again.pooler_output, expected))
    assert again.last_hidden_state is not None


def test_the_process_memo_belongs_to_its_model(model_and_processor):
    model, _ = model_and_processor
    memo = image_feature_memo(model)
    assert image_feature_memo(model) is memo
    assert image_feature_memo(tiny.load()[0]) is not memo


# -- through the runner --------------------------------------------------------------------
def _config(*extra):
    return compose(
        [
            "model=tiny",
            "model.loader.initializer_range=0.2",
            "data=tiny",
            "data.n_samples=6",
            "bench.progress=false",
            "bench.batch_size=4",
            *extra,
        ]
    )


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]


TIMINGS = ("ms_per_sample", "prefill_ms_per_sample", "decode_ms_per_sample")


@pytest.mark.parametrize(
    ("pruner", "shares"),
    [("pruner=resprune", True), ("pruner=fastervlm", False)],
    ids=["resprune", "fastervlm-cls-attention"],
)
def test_run_dataset_with_and_without_the_flag_gives_the_same_answers(tmp_path, pruner, shares):
    off_cfg = _config(pruner, "budget=8")
    on_cfg = _config(pruner, "budget=8", "bench.share_image_features=true")
    model, _ = build_model(on_cfg)
    memo = image_feature_memo(model)
    memo.clear()
    rows = TowerRows(model)
    try:
        off = runner_module.run_dataset(off_cfg, tmp_path / "off")
        off_rows = rows.rows
        on = runner_module.run_dataset(on_cfg, tmp_path / "on")
        on_rows = rows.rows - off_rows
    finally:
        rows.remove()
    assert _records(tmp_path / "on") == _records(tmp_path / "off")
    for key in TIMINGS:
        assert off["metrics"].pop(key) >= 0 and on["metrics"].pop(key) >= 0
    assert on["metrics"] == off["metrics"]
    assert on["efficiency"] == off["efficiency"]
    assert on["config"]["bench"]["share_image_features"] is True
    assert off["config"]["bench"]["share_image_features"] is False
    # off: 4 passes over the 6 images (unpruned answers and distributions, pruned ones),
    # the two answering passes after a one-sample warm-up each
    assert off_rows == 4 * 6 + 2
    if shares:  # each image once, then read back
        assert on_rows == 6 and len(memo) == 6
    else:  # the unpruned passes share, the pruned ones (hooks on the tower) do not
        assert on_rows == 6 + (1 + 2 * 6)


def test_the_runs_of_a_sweep_share_one_encoder_pass_per_image(tmp_path):
    cfg = [
        _config("pruner=resprune", f"budget={b}", "bench.share_image_features=true")
        for b in (8, 16)
    ]
    model, _ = build_model(cfg[0])
    image_feature_memo(model).clear()
    rows = TowerRows(model)
    try:
        for i, c in enumerate(cfg):
            runner_module.run_dataset(c, tmp_path / str(i), cache_dir=tmp_path / ".cache")
    finally:
        rows.remove()
    assert rows.rows == 6  # two runs, six images
