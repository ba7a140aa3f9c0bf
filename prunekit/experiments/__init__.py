"""Ablations by configuration composition: configs, runs, sweeps and their records.

The configs live in :mod:`prunekit.conf` (Hydra config groups ``pruner``,
``relevance``, ``selection``, ``model``, ``data``, ``bench``; ``budget`` is a
value). The same composed config builds the same objects as the Python API::

    from prunekit.experiments import build_pruner, compose

    cfg = compose(["pruner=resprune", "pruner.alpha=2", "budget=64"])
    pruner = build_pruner(cfg)      # == prunekit.create_pruner("resprune", alpha=2.0)

``prunekit run`` and ``prunekit ablate`` are the command-line faces of
:func:`run_single` and :func:`ablate`.
"""

from prunekit.experiments.config import (
    ConfigError,
    attach_options,
    build_model,
    build_pruner,
    compose,
    group_options,
    load_data,
)
from prunekit.experiments.runner import RunReport, run_dataset, run_single
from prunekit.experiments.sweep import Ablation, ablate, plan

__all__ = [
    "Ablation",
    "ConfigError",
    "RunReport",
    "ablate",
    "attach_options",
    "build_model",
    "build_pruner",
    "compose",
    "group_options",
    "load_data",
    "plan",
    "run_dataset",
    "run_single",
]
