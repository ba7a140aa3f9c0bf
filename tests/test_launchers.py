"""``prunekit ablate ... launcher=NAME``: the same runs through Hydra's launcher plugins.

A joblib sweep (two local processes) writes the same run folders, records and
summary as the sequential one and resumes like it; a submitit Slurm sweep builds
its jobs with the Slurm parameters given and runs them (submitit's DebugExecutor
stands in for Slurm); launcher settings are checked at composition.
"""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import pytest

from prunekit.cli import main
from prunekit.experiments import ConfigError, plan
from prunekit.experiments.launch import choose_launcher

# 2 budgets x 2 pruners on the tiny model, 4 questions: a few seconds a run
BASE = [
    "ablate",
    "pruner=resprune,random",
    "budget=0.25,0.5",
    "data=tiny",
    "data.n_samples=4",
    "bench.progress=false",
]

needs_joblib = pytest.mark.skipif(
    importlib.util.find_spec("hydra_plugins.hydra_joblib_launcher") is None,
    reason="hydra-joblib-launcher not installed (pip install 'prunekit[joblib]')",
)
needs_submitit = pytest.mark.skipif(
    importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is None,
    reason="hydra-submitit-launcher not installed (pip install 'prunekit[slurm]')",
)


def _timing_free(value):
    """``value`` without the keys that hold times (they differ from one run to the next)."""
    if isinstance(value, dict):
        return {
            k: _timing_free(v)
            for k, v in value.items()
            if not any(t in k for t in ("ms", "second", "time", "started", "finished"))
        }
    if isinstance(value, list):
        return [_timing_free(v) for v in value]
    return value


def _same(a, b) -> bool:
    """Equal, floats up to rounding (worker processes may use other thread counts)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float):
        return a == pytest.approx(b, rel=1e-4, abs=1e-6)
    return a == b


def _records(out: Path) -> dict[str, dict]:
    """Each run folder's result.json (without times and environment) and predictions."""
    records = {}
    for path in sorted(out.glob("*/result.json")):
        result = json.loads(path.read_text())
        result.pop("environment")
        records[path.parent.name] = {
            "result": _timing_free(result),
            "predictions": [
                _timing_free(json.loads(line))
                for line in (path.parent / "predictions.jsonl").read_text().splitlines()
            ],
            "config.yaml": (path.parent / "config.yaml").read_text(),
        }
    return records


def _summary(out: Path) -> tuple[list[dict], list[list[str]]]:
    """summary.csv rows and summary.md table cells, without the time columns."""
    with (out / "summary.csv").open() as f:
        rows = [_timing_free(row) for row in csv.DictReader(f)]
    lines = [line for line in (out / "summary.md").read_text().splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    keep = [i for i, c in enumerate(header) if "ms" not in c]
    cells = [[line.strip("|").split("|")[i].strip() for i in keep] for line in lines]
    return rows, cells


@needs_joblib
def test_joblib_sweep_equals_the_sequential_one_and_resumes_like_it(tmp_path, capsys):
    sequential, parallel = tmp_path / "sequential", tmp_path / "joblib"
    assert main([*BASE, "--out", str(sequential)]) == 0
    capsys.readouterr()
    assert main([*BASE, "launcher=joblib", "launcher.n_jobs=2", "--out", str(parallel)]) == 0
    printed = capsys.readouterr().out
    assert "launcher: joblib (n_jobs=2)" in printed
    assert "4 / 4 runs finished (4 now, 0 earlier)" in printed

    # the runs went through joblib's launcher, in its worker processes
    for hydra_yaml in parallel.glob("*/.hydra/hydra.yaml"):
        text = hydra_yaml.read_text()
        assert "hydra_joblib_launcher.joblib_launcher.JoblibLauncher" in text
        assert "n_jobs: 2" in text
    # same folders, same records apart from times, same summary
    seq_records, par_records = _records(sequential), _records(parallel)
    assert len(seq_records) == 4 and set(par_records) == set(seq_records)
    assert _same(par_records, seq_records)
    assert _summary(parallel) == _summary(sequential)

    # resume: the sequential command finds every run of the joblib sweep finished ...
    assert main([*BASE, "--out", str(parallel)]) == 0
    printed = capsys.readouterr().out
    assert "(4 finished earlier and skipped, 0 to run)" in printed and "[run]" not in printed
    # ... and a joblib rerun sends nothing to the launcher when every run is finished
    assert main([*BASE, "launcher=joblib", "launcher.n_jobs=2", "--out", str(parallel)]) == 0
    assert "nothing sent to launcher=joblib" in capsys.readouterr().out
    # an interrupted joblib sweep: only the missing run is run again, through joblib
    missing = sorted(parallel.glob("*/result.json"))[0]
    missing.unlink()
    assert main([*BASE, "launcher=joblib", "launcher.n_jobs=2", "--out", str(parallel)]) == 0
    printed = capsys.readouterr().out
    assert "(3 finished earlier and skipped, 1 to run)" in printed
    assert "4 / 4 runs finished (1 now, 3 earlier)" in printed
    assert _same(_records(parallel), seq_records)


class _Recorder:
    """Stands in for ``submitit.AutoExecutor``: records what the launcher asks for and runs the
    jobs with submitit's DebugExecutor (in this process, no Slurm)."""

    def __init__(self, executor_class):
        self.executor_class = executor_class
        self.init: list[dict] = []
        self.parameters: dict = {}

    def __call__(self, cluster, folder, **init):
        self.init.append({"cluster": cluster, "folder": folder, **init})
        executor = self.executor_class(folder=folder, cluster="debug")
        update = executor.update_parameters

        def update_parameters(**params):
            self.parameters.update(params)
            update(**params)  # submitit checks the slurm_* names against its SlurmExecutor

        executor.update_parameters = update_parameters
        return executor


@needs_submitit
def test_submitit_slurm_sweep_builds_its_jobs_and_runs_them_without_slurm(
    tmp_path, monkeypatch, capsys
):
    import submitit

    recorder = _Recorder(submitit.AutoExecutor)
    monkeypatch.setattr(submitit, "AutoExecutor", recorder)
    out = tmp_path / "slurm"
    overrides = [
        "ablate",
        "pruner=resprune",
        "budget=0.25,0.5",
        "data=tiny",
        "data.n_samples=4",
        "bench.progress=false",
        "launcher=submitit_slurm",
        "launcher.partition=gpu",
        "launcher.gpus_per_node=1",
        "launcher.cpus_per_task=8",
        "launcher.timeout_min=120",
        "launcher.array_parallelism=4",
        "launcher.additional_parameters.mail-type=END",
        "launcher.setup=[source /shared/venv/bin/activate]",
    ]
    assert main([*overrides, "--out", str(out)]) == 0
    assert "2 / 2 runs finished (2 now, 0 earlier)" in capsys.readouterr().out
    assert len(list(out.glob("*/result.json"))) == 2 and (out / "summary.md").is_file()

    # the executor the Slurm launcher built, and the parameters it passed to submitit
    assert recorder.init == [
        {"cluster": "slurm", "folder": f"{out}/.submitit/%j", "slurm_max_num_timeout": 0}
    ]
    params = recorder.parameters
    assert params["slurm_partition"] == "gpu" and params["gpus_per_node"] == 1
    assert params["cpus_per_task"] == 8 and params["timeout_min"] == 120
    assert params["slurm_array_parallelism"] == 4 and params["tasks_per_node"] == 1
    assert params["slurm_setup"] == ["source /shared/venv/bin/activate"]
    # ... which make this sbatch script on a Slurm cluster (submitit's own translation)
    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", staticmethod(lambda: 1))
    executor = recorder.executor_class(folder=tmp_path / "sbatch", cluster="slurm")
    executor.update_parameters(**params)
    executor = executor._executor
    script = executor._make_submission_file_text("python -u -m submitit.core._submit X", "uid")
    for line in (
        "#SBATCH --partition=gpu",
        "#SBATCH --gpus-per-node=1",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --time=120",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --mail-type=END",
        "source /shared/venv/bin/activate",
    ):
        assert line in script


@needs_submitit
@pytest.mark.slow
def test_submitit_local_runs_a_job_in_its_own_process(tmp_path, capsys):
    out = tmp_path / "local"
    args = ["ablate", "pruner=random", "budget=0.5", "data=tiny", "data.n_samples=2"]
    assert main([*args, "bench.progress=false", "launcher=submitit_local", "--out", str(out)]) == 0
    (result,) = out.glob("*/result.json")
    logs = list((out / ".submitit").glob("*/*_log.out"))
    assert logs and "[done]" in logs[0].read_text()  # printed by the job's own process
    assert json.loads(result.read_text())["metrics"]["n"] == 2


# -- settings checked at composition ---------------------------------------------------------
def test_launcher_overrides_become_hydra_launcher_overrides():
    rest, choice = choose_launcher(["budget=64", "launcher=basic"])
    assert rest == ["budget=64"] and choice.hydra_overrides == ["hydra/launcher=basic"]
    rest, choice = choose_launcher(["budget=64"])
    assert rest == ["budget=64"] and choice.name is None and choice.hydra_overrides == []


@needs_submitit
def test_slurm_settings_pass_through_with_free_dicts_force_added():
    rest, choice = choose_launcher(
        [
            "pruner=resprune",
            "launcher=submitit_slurm",
            "launcher.partition=gpu",
            "launcher.timeout_min=30",
            "launcher.additional_parameters.mail-user=me@lab.org",
        ]
    )
    assert rest == ["pruner=resprune"] and choice.name == "submitit_slurm"
    assert choice.hydra_overrides == [
        "hydra/launcher=submitit_slurm",
        "hydra.launcher.partition=gpu",
        "hydra.launcher.timeout_min=30",
        "++hydra.launcher.additional_parameters.mail-user=me@lab.org",
    ]
    assert choice.describe() == (
        "submitit_slurm (partition=gpu, timeout_min=30, additional_parameters.mail-user=me@lab.org)"
    )


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["launcher=jobli"], "unknown launcher 'jobli'. Did you mean 'joblib'?"),
        (["launcher.n_jobs=2"], "'launcher.n_jobs=2' sets an option of a launcher: add launcher="),
        (["launcher=basic,joblib"], "a launcher setting takes one value"),
        (["launcher=basic", "hydra/launcher=basic"], "give one of them"),
        (
            ["launcher=basic", "launcher.n_jobs=2"],
            "unknown key 'launcher.n_jobs' for launcher=basic",
        ),
        pytest.param(
            ["launcher=joblib", "launcher.n_job=2"],
            "unknown key 'launcher.n_job' for launcher=joblib. Did you mean 'launcher.n_jobs'?",
            marks=needs_joblib,
        ),
        pytest.param(
            ["launcher=joblib", "launcher.n_jobs=two"],
            "wrong value for 'launcher.n_jobs' (launcher=joblib): Value 'two'",
            marks=needs_joblib,
        ),
        pytest.param(
            ["launcher=joblib", "launcher.n_jobs=0"],
            "launcher.n_jobs must be >= 1 (or -1: one per CPU), got 0",
            marks=needs_joblib,
        ),
        pytest.param(
            ["launcher=submitit_slurm", "launcher.timeout_min=0"],
            "launcher.timeout_min must be >= 1, got 0",
            marks=needs_submitit,
        ),
        pytest.param(
            ["launcher=submitit_slurm", "launcher.gpus_per_node=-1"],
            "launcher.gpus_per_node must be >= 0, got -1",
            marks=needs_submitit,
        ),
        pytest.param(
            ["launcher=submitit_slurm", "launcher.tasks_per_node=8"],
            "launcher.tasks_per_node must be 1, got 8: each run of a sweep is one process",
            marks=needs_submitit,
        ),
        pytest.param(
            ["launcher=submitit_slurm", "launcher.partiton=gpu"],
            "Did you mean 'launcher.partition'?",
            marks=needs_submitit,
        ),
    ],
)
def test_launcher_mistakes_fail_at_composition(overrides, message, tmp_path, capsys):
    with pytest.raises(ConfigError) as error:
        plan(["data=tiny", *overrides], out=str(tmp_path / "sweep"))
    assert message in str(error.value)
    # the command line says the same, before anything runs (also with --dry-run)
    code = main(["ablate", "data=tiny", *overrides, "--out", str(tmp_path / "s"), "--dry-run"])
    assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


@pytest.mark.skipif(
    importlib.util.find_spec("hydra_plugins.hydra_ray_launcher") is not None,
    reason="hydra-ray-launcher is installed",
)
def test_a_launcher_whose_plugin_is_missing_says_what_to_install(tmp_path):
    with pytest.raises(ConfigError) as error:
        plan(["launcher=ray", "launcher.ray.remote.num_gpus=1"], out=str(tmp_path / "s"))
    assert "launcher=ray needs the Hydra plugin hydra-ray-launcher" in str(error.value)
    assert "pip install 'prunekit[ray]'" in str(error.value)


def test_a_launcher_preset_in_a_config_folder(tmp_path):
    presets = tmp_path / "myconf" / "hydra" / "launcher"
    presets.mkdir(parents=True)
    (presets / "mine.yaml").write_text("defaults:\n  - basic\n")
    ablation = plan(
        ["data=tiny", "launcher=mine"],
        out=str(tmp_path / "s"),
        config_dirs=[str(tmp_path / "myconf")],
    )
    assert "hydra/launcher=mine" in ablation.overrides
    assert ablation.configs[0].hydra.runtime.choices["hydra/launcher"] == "mine"
