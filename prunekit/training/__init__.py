"""MiniLLaVA training inside the package: ``scripts/train_minillava.py`` is its command line.

One concept per module: :mod:`~prunekit.training.config` (the options),
:mod:`~prunekit.training.data` (sources, epoch order, curriculum, the mix of each step),
:mod:`~prunekit.training.features` (cached encoder features, standardisation),
:mod:`~prunekit.training.lora` (peft LoRA layers and their plain factors),
:mod:`~prunekit.training.schedule` (learning rate, progress),
:mod:`~prunekit.training.runner` (shared-prefix forward passes, the loss),
:mod:`~prunekit.training.evaluation` (the accuracy metric),
:mod:`~prunekit.training.checks` (self-checks of a run),
:mod:`~prunekit.training.logbook` (log and loss curve) and
:mod:`~prunekit.training.trainer` (:func:`~prunekit.training.trainer.train`, the run).
"""

from __future__ import annotations

from prunekit.training.config import ConfigError, TrainConfig, parse_config
from prunekit.training.trainer import train

__all__ = ["ConfigError", "TrainConfig", "parse_config", "train"]
