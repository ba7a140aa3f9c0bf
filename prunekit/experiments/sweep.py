"""``prunekit ablate``: a Hydra multirun over config values, resumable, with a summary.

The sweep is Hydra's own (basic sweeper, grid over every comma list,
``range()``, ``choice()`` or ``glob()``), and so is the launcher: the default
runs the jobs one after the other in this process; ``launcher=joblib``
(``n_jobs`` local processes), ``launcher=submitit_slurm`` (a Slurm job array),
``launcher=ray`` send the same runs to Hydra's launcher plugins
(:mod:`prunekit.experiments.launch`), with no change to the runs: each job
writes its own folder, and this process summarises the folders when the jobs
are done.

Before anything runs, every run's config is composed and checked
(:func:`prunekit.experiments.config.compose_sweep`; a model option that does not
declare ``llm_layers`` has ``adapter.llm_layer`` checked on the loaded model,
still before the first run). Each run writes its own
folder, ``<sweep dir>/<overrides>`` (``hydra.job.override_dirname``: the run's
overrides sorted by key, e.g. ``budget=0.111,relevance=none,selection=topk``),
so a rerun of the same command finds it: a folder whose ``result.json`` holds
the same resolved config is skipped. An interrupted sweep resumes where it
stopped. A run that fails (an exception inside it) writes ``failure.json``
(its overrides, the error, the traceback) into its folder instead of
``result.json``; the other runs go on, the summary
(:mod:`prunekit.experiments.summary`) covers the runs of the command that
finished, and the failed runs are reported by name.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from prunekit.experiments.config import (
    CONFIG_MODULE,
    CONFIG_NAME,
    VERSION_BASE,
    ConfigError,
    attach_options,
    build_model,
    compose_sweep,
    finalize,
    override_key,
    search_path_override,
    setup,
    task_overrides,
)
from prunekit.experiments.launch import LauncherChoice, choose_launcher
from prunekit.experiments.records import write_json
from prunekit.experiments.runner import finished_result, resolved_config, run_dataset

#: the file a failed run writes into its folder (instead of ``result.json``)
FAILURE_FILE = "failure.json"


def error_line(exc: BaseException) -> str:
    """``"RuntimeError: first line of the message"``: an exception on one line."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def read_failure(run_dir: Path) -> dict[str, Any] | None:
    """The ``failure.json`` of a run folder (``None`` if the run has not failed)."""
    path = Path(run_dir) / FAILURE_FILE
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, json.JSONDecodeError):
        return None


def run_job(cfg: DictConfig) -> dict[str, Any]:
    """Hydra's task function: one run of a sweep (skipped when its folder holds the same finished run)."""
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get()
    overrides = list(hydra_cfg.overrides.task)
    cfg = finalize(cfg, overrides)
    run_dir = Path(hydra_cfg.runtime.output_dir)
    name = run_dir.name
    done = finished_result(run_dir, resolved_config(cfg))
    if done is not None:
        print(f"[skip] {name}: finished earlier ({run_dir / 'result.json'})", flush=True)
        return done
    print(f"[run]  {name}", flush=True)
    failure = run_dir / FAILURE_FILE
    failure.unlink(missing_ok=True)
    try:
        result = run_dataset(
            cfg,
            run_dir,
            overrides=overrides,
            cache_dir=Path(hydra_cfg.sweep.dir) / ".cache",
            name=name,
        )
    except Exception as exc:  # one failed run must not lose the others' summary
        error = error_line(exc)
        record = {
            "name": name,
            "overrides": task_overrides(overrides),
            "error": error,
            "traceback": traceback.format_exc(),
        }
        write_json(failure, record)
        print(f"[fail] {name}: {error} (traceback in {failure})", flush=True)
        return {"name": name, "failed": error}
    m = result["metrics"]
    loyalty = f", loyalty {m['loyalty']:.3f}" if "loyalty" in m else ""
    print(
        f"[done] {name}: accuracy {m['accuracy']:.3f} (n={m['n']}){loyalty}, "
        f"{result['seconds']:.1f} s",
        flush=True,
    )
    return result


def launch(overrides: Sequence[str], *, command: str | None = None) -> None:
    """Run Hydra's multirun for ``overrides`` (Hydra's own command line, through ``hydra.main``)."""
    import hydra

    setup()
    main = hydra.main(
        version_base=VERSION_BASE, config_path=f"pkg://{CONFIG_MODULE}", config_name=CONFIG_NAME
    )(run_job)
    saved, saved_command = sys.argv, os.environ.get("PRUNEKIT_COMMAND")
    # the command each run's result.json records (the environment reaches cluster jobs too)
    os.environ["PRUNEKIT_COMMAND"] = command or shlex.join(["prunekit", "ablate", *overrides])
    sys.argv = ["prunekit-ablate", "--multirun", *overrides]
    try:
        main()
    finally:
        sys.argv = saved
        if saved_command is None:
            os.environ.pop("PRUNEKIT_COMMAND", None)
        else:
            os.environ["PRUNEKIT_COMMAND"] = saved_command


def quote(value: str) -> str:
    """``value`` as a quoted Hydra override value."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


@dataclass
class Ablation:
    """The runs of one ``prunekit ablate`` command and what became of them."""

    sweep_dir: Path
    runs: list[tuple[list[str], Path]]
    finished_before: list[Path] = field(default_factory=list)
    results: list[dict[str, Any]] = field(default_factory=list)
    summary: Any = None
    #: each run's checked config, in the order of :attr:`runs`
    configs: list[DictConfig] = field(default_factory=list)
    #: the ``failure.json`` records of the runs that failed (no result)
    failures: list[dict[str, Any]] = field(default_factory=list)
    #: the launcher (``launcher=NAME``; name ``None``: Hydra's default, in this process)
    launcher: LauncherChoice = field(default_factory=lambda: LauncherChoice(None, []))
    #: the overrides of the multirun (the launcher ones as Hydra's ``hydra.launcher...``)
    overrides: list[str] = field(default_factory=list)

    @property
    def missing(self) -> list[Path]:
        """Run folders of this sweep without a finished result."""
        names = {r["name"] for r in self.results}
        return [d for _, d in self.runs if d.name not in names]


def plan(
    overrides: Sequence[str], *, out: str | None = None, config_dirs: Sequence[str] = ()
) -> Ablation:
    """Compose and check every run of the sweep and its launcher; find the runs finished earlier.
    Runs nothing."""
    overrides, launcher = choose_launcher(overrides, config_dirs=config_dirs)
    overrides += launcher.hydra_overrides
    if out is not None and not any(override_key(o) == "hydra.sweep.dir" for o in overrides):
        overrides.append(f"hydra.sweep.dir={quote(str(out))}")
    runs = compose_sweep(overrides, config_dirs=config_dirs)
    first = runs[0][1]
    ablation = Ablation(
        sweep_dir=Path(first.hydra.sweep.dir), runs=[], launcher=launcher, overrides=overrides
    )
    for run, cfg in runs:
        run_dir = Path(cfg.hydra.sweep.dir) / str(cfg.hydra.sweep.subdir)
        ablation.runs.append((task_overrides(run), run_dir))
        ablation.configs.append(cfg)
        if finished_result(run_dir, resolved_config(cfg)) is not None:
            ablation.finished_before.append(run_dir)
    return ablation


def check_on_models(ablation: Ablation) -> None:
    """Check ``adapter.llm_layer`` on the loaded model for the runs whose model option has no
    ``llm_layers`` (composition could not check it); raises :class:`ConfigError` before any run."""
    from prunekit.adapters.attach import find_adapter

    for (run, run_dir), cfg in zip(ablation.runs, ablation.configs):
        if run_dir in ablation.finished_before or cfg.adapter.llm_layer is None:
            continue
        if cfg.model.get("llm_layers") is not None:
            continue  # checked at composition
        model, processor = build_model(cfg)  # kept for the runs (build_model reuses it)
        try:
            find_adapter(model)(model, **attach_options(cfg, processor))
        except (TypeError, ValueError) as exc:
            raise ConfigError(
                f"run {' '.join(run) or 'default'}: adapter.llm_layer={cfg.adapter.llm_layer} "
                f"on model={cfg.model.name}: {exc}"
            ) from None


def ablate(
    overrides: Sequence[str],
    *,
    out: str | None = None,
    config_dirs: Sequence[str] = (),
    dry_run: bool = False,
    baseline: str | None = None,
    echo: Any = print,
) -> Ablation:
    """Plan, launch the multirun (unless ``dry_run``), then summarise the runs of this command.

    ``baseline``: the run every other run of the same data set and budget is compared
    with, question by question (a label or ``key=value`` pairs, see
    :func:`prunekit.experiments.summary.paired_table`); default: the first run of each group.
    """
    from prunekit.experiments.summary import read_results, write_summary

    ablation = plan(overrides, out=out, config_dirs=config_dirs)
    n, done = len(ablation.runs), len(ablation.finished_before)
    echo(
        f"ablation: {n} run{'s' * (n != 1)} in {ablation.sweep_dir} "
        f"({done} finished earlier and skipped, {n - done} to run)"
    )
    if ablation.launcher.name is not None:
        echo(f"launcher: {ablation.launcher.describe()}")
    if dry_run:
        for run, run_dir in ablation.runs:
            state = "finished" if run_dir in ablation.finished_before else "to run"
            echo(f"  {run_dir.name}  [{state}]  {' '.join(run)}")
        return ablation
    check_on_models(ablation)
    started = datetime.now(timezone.utc)
    if ablation.launcher.name not in (None, "basic") and done == n:
        # on a cluster, jobs that only find their run finished still wait in the queue
        echo(f"every run finished earlier: nothing sent to launcher={ablation.launcher.name}")
    else:
        launch(
            [*ablation.overrides, *search_path_override(config_dirs)],
            command=shlex.join(["prunekit", "ablate", *overrides]),
        )
    ablation.results = read_results([d for _, d in ablation.runs])
    ablation.failures = [f for f in map(read_failure, ablation.missing) if f is not None]
    if ablation.results:
        ablation.summary = write_summary(
            ablation.results, ablation.sweep_dir, failed=ablation.failures, baseline=baseline
        )
        echo("")
        echo(ablation.summary.markdown.rstrip())
        echo("")
        for kind, path in ablation.summary.paths.items():
            echo(f"{kind}: {path}")
    fresh = sum(1 for r in ablation.results if datetime.fromisoformat(r["finished"]) >= started)
    failed = f", {len(ablation.failures)} failed" if ablation.failures else ""
    echo(
        f"{len(ablation.results)} / {n} runs finished ({fresh} now, "
        f"{len(ablation.results) - fresh} earlier){failed}"
    )
    return ablation
