"""The ``prunekit`` command end to end on the tiny model: list, run, ablate (and its rerun),
config errors, and configs that build exactly what the Python API builds."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

import prunekit
from prunekit.cli import main
from prunekit.experiments import ConfigError, attach_options, build_pruner, compose, load_data

ABLATE = [
    "ablate",
    "relevance=none,text",
    "selection=greedy_residual,topk",
    "budget=16",
    "data=tiny",
    "data.n_samples=6",
    "bench.progress=false",
]


# -- prunekit list ------------------------------------------------------------------------
def test_list_shows_components_parameters_and_config_groups(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for kind in ("pruner:", "relevance:", "selection:", "adapter:", "config groups"):
        assert kind in out
    assert "resprune" in out and "alpha=1.0" in out and "aggregation='max'" in out
    assert "greedy_residual" in out and "topk" in out
    # adapters list their inherited options too
    llava = next(line for line in out.splitlines() if line.strip().startswith("llava "))
    assert "before_projector=False" in llava and "tokenizer=None" in llava
    groups = out.split("config groups", 1)[1]
    assert "easyvqa" in groups and "tiny" in groups and "budget" in groups


# -- prunekit run --------------------------------------------------------------------------
def test_run_prints_answer_tokens_time_and_writes_the_picture(tmp_path, capsys):
    image = tmp_path / "shape.png"
    Image.new("RGB", (80, 60), (200, 30, 30)).save(image)
    out = tmp_path / "kept.png"
    code = main(
        [
            "run",
            "pruner=resprune",
            "budget=16",
            "--image",
            str(image),
            "--prompt",
            "what color is the shape?",
            "--out",
            str(out),
            "--size",
            "128",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "answer: " in printed
    assert "tokens kept: 16 / 64 (25.0 %)" in printed
    assert "time: " in printed and " ms" in printed
    assert Image.open(out).size == (128, 128)


def test_run_defaults_use_the_embedded_tiny_model(tmp_path, capsys):
    pytest.importorskip("skimage")
    out = tmp_path / "kept.png"
    assert main(["run", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "model: tiny" in printed and "tokens kept: 14 / 64" in printed  # budget 0.222 of 64
    assert Image.open(out).size == (256, 256)


def test_viz_dispatches_to_the_viz_command(monkeypatch):
    import types

    seen = []
    fake = types.ModuleType("prunekit.vizcmd")
    fake.main = lambda argv: seen.append(argv) or 0
    monkeypatch.setitem(sys.modules, "prunekit.vizcmd", fake)
    assert main(["viz", "--pruners", "resprune,divprune", "--budget", "16"]) == 0
    assert seen == [["--pruners", "resprune,divprune", "--budget", "16"]]


# -- prunekit ablate ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ablation(tmp_path_factory):
    """A 2 x 2 ablation run once for the tests below."""
    out = tmp_path_factory.mktemp("ablation") / "sweep"
    code = main([*ABLATE, "--out", str(out)])
    assert code == 0
    return out


def _run_dirs(out: Path) -> list[Path]:
    return sorted(p.parent for p in out.glob("*/result.json"))


def test_ablate_writes_one_folder_per_run_and_a_summary(ablation):
    runs = _run_dirs(ablation)
    assert len(runs) == 4
    assert {r.name for r in runs} == {
        f"budget=16,data.n_samples=6,data=tiny,relevance={r},selection={s}"
        for r in ("none", "text")
        for s in ("greedy_residual", "topk")
    }
    table = (ablation / "summary.md").read_text().splitlines()
    rows = [line for line in table if line.startswith("| ") and not line.startswith("| relevance")]
    assert len(rows) == 4
    assert table[0] == "Fixed: budget=16, data=tiny, data.n_samples=6"
    assert (
        "| relevance | selection | budget | n | accuracy | accuracy 95% CI | loyalty |" in table[2]
    )
    with (ablation / "summary.csv").open() as f:
        records = list(csv.DictReader(f))
    assert len(records) == 4
    for record in records:
        assert record["n"] == "6"
        low, acc, high = (
            float(record[k]) for k in ("accuracy_ci_low", "accuracy", "accuracy_ci_high")
        )
        assert 0 <= low <= acc <= high <= 1
        assert float(record["tokens_kept"]) == 16.0 and float(record["tokens_in"]) == 64.0
    assert (ablation / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ablate_run_folders_hold_a_complete_record(ablation):
    for run in _run_dirs(ablation):
        result = json.loads((run / "result.json").read_text())
        config = result["config"]
        assert config["budget"] == 16 and config["data"]["name"] == "tiny"
        assert config["pruner"]["name"] == "composed"
        assert (run / "config.yaml").is_file() and (run / ".hydra" / "overrides.yaml").is_file()
        assert result["seed"] == config["seed"] == 0
        versions = result["environment"]["versions"]
        assert versions["prunekit"] == prunekit.__version__
        assert versions["torch"] and versions["transformers"]
        assert "commit" in result["environment"]["git"]
        assert result["environment"]["device"]["device"] == "cpu"
        metrics = result["metrics"]
        assert metrics["n"] == 6 and len(metrics["accuracy_ci95"]) == 2
        assert 0 <= metrics["loyalty"] <= 1 and metrics["tokens_kept"] == 16
        lines = (run / "predictions.jsonl").read_text().splitlines()
        assert len(lines) == 6 and {"prediction", "answer", "correct"} <= set(json.loads(lines[0]))


def test_ablate_rerun_skips_finished_runs_and_resumes_unfinished(ablation, capsys):
    runs = _run_dirs(ablation)
    stamps = {r: (r / "result.json").stat().st_mtime_ns for r in runs}
    capsys.readouterr()
    assert main([*ABLATE, "--out", str(ablation)]) == 0
    out = capsys.readouterr().out
    assert "(4 finished earlier and skipped, 0 to run)" in out
    assert out.count("[skip]") == 4 and "[run]" not in out
    assert "4 / 4 runs finished (0 now, 4 earlier)" in out
    assert {r: (r / "result.json").stat().st_mtime_ns for r in runs} == stamps

    # an interrupted sweep: one run has no result.json; only that one runs again
    (runs[0] / "result.json").unlink()
    assert main([*ABLATE, "--out", str(ablation)]) == 0
    out = capsys.readouterr().out
    assert out.count("[skip]") == 3 and out.count("[run]") == 1
    assert "4 / 4 runs finished (1 now, 3 earlier)" in out


def test_ablate_dry_run_lists_runs_without_running(tmp_path, capsys):
    out = tmp_path / "sweep"
    assert main([*ABLATE, "--out", str(out), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "4 runs" in printed and printed.count("[to run]") == 4
    assert not out.exists()


# -- config errors ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["ablate", "relevanc=none,text"], "unknown key 'relevanc'. Did you mean 'relevance'?"),
        (["run", "pruner=resprune", "pruner.alpah=2"], "Did you mean 'pruner.alpha'?"),
        (
            ["ablate", "relevance=none,txt"],
            "unknown option 'txt' for config group 'relevance'. Did you mean 'text'?",
        ),
        (["run", "pruner=resprune", "pruner.alpha=abc"], "wrong type for 'pruner.alpha'"),
        (["ablate", "bench.batchsize=2"], "Did you mean 'bench.batch_size'?"),
        (["run", "budget=1.5"], "budget: a float budget is a fraction in (0, 1]"),
        (["run", "pruner=resprune", "selection=topk"], "applies to pruner=composed only"),
        (["run", "pruner=resprune", "pruner.aggregation=maxx"], "Did you mean 'max'?"),
    ],
)
def test_config_errors_name_the_key_and_suggest(args, expected, tmp_path, capsys):
    out = tmp_path / "sweep"
    extra = ["--out", str(out)] if args[0] == "ablate" else ["--out", str(tmp_path / "k.png")]
    assert main([*args, *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("prunekit: error: ") and expected in err
    assert not out.exists() and not (tmp_path / "k.png").exists()  # nothing ran


def test_bad_key_exit_status_of_the_command(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "prunekit.cli",
            "ablate",
            "relevanc=text",
            "--out",
            str(tmp_path / "s"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 2
    assert "unknown key 'relevanc'" in done.stderr and "'relevance'" in done.stderr
    assert not (tmp_path / "s").exists()


# -- config composition == Python API ---------------------------------------------------
API_CASES = [
    (
        ["pruner=composed", "relevance=text", "relevance.alpha=2", "selection=topk"],
        lambda: prunekit.create_pruner(
            "composed", relevance={"name": "text", "alpha": 2.0}, selection="topk"
        ),
    ),
    (
        ["pruner=resprune", "pruner.alpha=0.5", "pruner.aggregation=mean"],
        lambda: prunekit.create_pruner("resprune", alpha=0.5, aggregation="mean"),
    ),
    (
        ["pruner=composed", "relevance=none", "selection=random", "selection.seed=3"],
        lambda: prunekit.ComposedPruner(
            relevance=prunekit.create_relevance("none"),
            selection=prunekit.create_selection("random", seed=3),
        ),
    ),
    ([], lambda: prunekit.create_pruner("composed", relevance="text", selection="greedy_residual")),
]


def _state(pruner) -> dict:
    """Class and parameters of a pruner, its strategies unfolded."""
    state = {"class": type(pruner)}
    for key, value in vars(pruner).items():
        state[key] = (type(value), vars(value)) if hasattr(value, "__dict__") else value
    return state


@pytest.mark.parametrize(
    ("overrides", "api"), API_CASES, ids=lambda v: " ".join(v) if isinstance(v, list) else ""
)
def test_config_builds_the_same_pruner_as_the_python_api(overrides, api):
    from_config, from_api = build_pruner(compose(overrides)), api()
    assert type(from_config) is type(from_api)
    assert _state(from_config) == _state(from_api)
    assert repr(from_config) == repr(from_api)
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randn(2, 64, 16, generator=gen)
    text = torch.randn(2, 3, 16, generator=gen)
    for budget in (7, 0.333):
        a = from_config.prune(tokens, budget=budget, text_embeds=text)
        b = from_api.prune(tokens, budget=budget, text_embeds=text)
        assert torch.equal(a.indices, b.indices)


def test_every_registered_pruner_is_a_config_option_with_its_defaults():
    registry = prunekit.get_registry()
    for name in registry.names("pruner"):
        if name == "composed":
            continue
        points = prunekit.create_pruner(name).pruning_points
        point = []  # a pruner defined only inside the LLM or before the projector is placed there
        if points is not None and "pre_llm" not in points:
            point = [
                "adapter.llm_layer=1" if "in_llm" in points else "adapter.before_projector=true"
            ]
        cfg = compose([f"pruner={name}", *point])
        assert _state(build_pruner(cfg)) == _state(prunekit.create_pruner(name)), name


def test_yaml_defaults_match_the_factories():
    """The YAML files of the component groups restate the factories' defaults, never other values."""
    import inspect

    registry = prunekit.get_registry()
    for group in ("pruner", "relevance", "selection"):
        folder = Path(prunekit.__file__).parent / "conf" / group
        for path in folder.glob("*.yaml"):
            node = compose(
                [f"pruner={path.stem}"] if group == "pruner" else [f"{group}={path.stem}"]
            )[group]
            defaults = registry.spec(group, path.stem).parameters()
            for key, value in node.items():
                if key != "name":
                    assert defaults[key] is not inspect.Parameter.empty
                    assert value == defaults[key], (path, key)


def test_budget_and_adapter_options_from_config():
    cfg = compose(["budget=64", "adapter.llm_layer=1", "adapter.positions=original"])
    assert cfg.budget == 64 and isinstance(cfg.budget, int)
    processor = type("P", (), {"tokenizer": object()})()
    options = attach_options(cfg, processor)
    assert options == {"tokenizer": processor.tokenizer, "llm_layer": 1, "positions": "original"}
    assert compose(["budget=0.5"]).budget == 0.5
    with pytest.raises(ConfigError, match="budget"):
        compose(["budget=0"])


def test_non_composed_pruners_leave_the_strategy_groups_empty():
    cfg = compose(["pruner=resprune"])
    assert cfg.relevance is None and cfg.selection is None


# -- the pieces: tiny model, data, metrics -------------------------------------------------
def test_tiny_processor_expands_the_image_and_pads_left():
    from prunekit.models.tiny import IMAGE_ID, PAD_ID, load

    model, processor = load()
    image = Image.new("RGB", (64, 64))
    batch = processor(
        images=[image, image], text=["<image>\nwhat shape?", "<image>\nis there a red circle?"]
    )
    assert batch["pixel_values"].shape == (2, 3, 64, 64)
    assert (batch["input_ids"] == IMAGE_ID).sum(dim=1).tolist() == [64, 64]
    assert batch["input_ids"][0, 0] == PAD_ID and batch["attention_mask"][0, 0] == 0
    ids = processor.tokenizer("red circle", add_special_tokens=False)["input_ids"]
    assert processor.tokenizer.decode(ids) == "red circle"
    assert model.config.image_token_id == IMAGE_ID


def test_data_sets_are_deterministic():
    cfg = compose(["data=tiny", "data.n_samples=5"])
    a, b = load_data(cfg), load_data(cfg)
    assert [(s.id, s.question, s.answer) for s in a.samples] == [
        (s.id, s.question, s.answer) for s in b.samples
    ]
    assert all(s.answer in a.answers for s in a.samples)
    pytest.importorskip("easy_vqa")
    cfg = compose(["data=easyvqa", "data.n_samples=5", "data.seed=1"])
    a, b = load_data(cfg), load_data(cfg)
    assert len(a) == 5 and [s.id for s in a.samples] == [s.id for s in b.samples]
    assert all(s.answer in a.answers for s in a.samples) and len(a.answers) == 13
    assert a.samples[0].image.size == (64, 64)


def test_wilson_interval_and_closed_answers():
    from prunekit.experiments.bench import AnswerTrie, normalize_answer, wilson_interval

    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-4) and high == pytest.approx(0.9433, abs=1e-4)
    assert wilson_interval(0, 5)[0] == 0.0
    trie = AnswerTrie([[5], [6, 7]], eos_token_id=2)
    assert sorted(trie.allowed([])) == [5, 6]
    assert trie.allowed([5]) == [2] and trie.allowed([6]) == [7] and trie.allowed([9]) == [2]
    assert normalize_answer("  Circle. ") == "circle"


def test_ablate_baseline_option_pairs_every_run_with_the_named_one(ablation, capsys):
    """A rerun of the finished sweep with --baseline writes the paired table against that run."""
    code = main([*ABLATE, "--out", str(ablation), "--baseline", "relevance=text,selection=topk"])
    assert code == 0
    with (ablation / "paired.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert rows, "no paired comparisons written"
    assert {row["run_b"] for row in rows} == {
        "budget=16,data.n_samples=6,data=tiny,relevance=text,selection=topk"
    }
    assert len({row["run_a"] for row in rows}) == 3  # every other run of the sweep
    assert {"accuracy", "KL"} <= {row["metric"] for row in rows}
    capsys.readouterr()
    assert main([*ABLATE, "--out", str(ablation), "--baseline", "relevance=nothing"]) != 0
    assert "baseline 'relevance=nothing' matches no run" in capsys.readouterr().err
