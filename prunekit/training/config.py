"""The MiniLLaVA training configuration: one dataclass whose fields are the options of
``scripts/train_minillava.py`` (same names, defaults and help), and the parser built
from it, so the command line and :func:`prunekit.training.trainer.train` cannot drift."""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import typing
from collections.abc import Sequence
from typing import Any

import torch

from prunekit.data import shapes
from prunekit.models import minillava

#: the LoRA target projections of SmolLM2 (attention and MLP)
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class ConfigError(ValueError):
    """A training option that cannot work; the message names the option."""


def _option(default: Any = None, help: str | None = None, nargs: str | None = None, **kw: Any):
    """A config field with its command-line help and ``nargs`` (lists take a factory)."""
    meta = {"help": help, "nargs": nargs}
    if "default_factory" in kw:
        return dataclasses.field(metadata=meta, **kw)
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=meta, **kw)
    return dataclasses.field(default=default, metadata=meta, **kw)


def default_cache_dir() -> pathlib.Path:
    """``$PRUNEKIT_CACHE/minillava`` (default ``~/.cache/prunekit/minillava``)."""
    return pathlib.Path(os.environ.get("PRUNEKIT_CACHE", "~/.cache/prunekit")).expanduser() / (
        "minillava"
    )


@dataclasses.dataclass
class TrainConfig:
    """Everything a MiniLLaVA training run depends on; see ``--help`` for each field.

    ``smoke`` shrinks the data and the steps to a few (outputs under
    ``cache_dir / "smoke"``); ``lora_alpha`` defaults to twice the rank. Both are applied
    when the config is made, and the fields are checked then (:class:`ConfigError`).
    """

    seed: int = _option(0)
    out_dir: pathlib.Path = _option(default_factory=lambda: minillava.PROJECTOR_PATH.parent)
    cache_dir: pathlib.Path = _option(default_factory=default_cache_dir)
    threads: int = _option(default_factory=torch.get_num_threads)
    bf16: bool = _option(
        False,
        "bfloat16 autocast for the LLM: only on CPUs with native bfloat16 "
        "(avx512_bf16 / AMX); on AVX2-only CPUs a bfloat16 matmul is ~7x slower than float32",
    )
    resolutions: list[int] = _option([112, 168, 224], nargs="+")
    # data
    easyvqa_train_images: int = _option(2500)
    easyvqa_test_images: int = _option(500)
    shapes_train_images: int = _option(2500)
    shapes_test_images: int = _option(600)
    shapes_train_per_kind: int = _option(3, "training questions per kind per scene")
    # optimisation
    batch_images: int = _option(8, "images per step")
    questions_per_image: int = _option(4, "stage 2")
    stage1_steps: int = _option(150)
    stage2_steps: int = _option(800)
    lr1: float = _option(1e-3)
    lr2: float = _option(1e-3)
    warmup: float = _option(0.05, "fraction of each stage's steps")
    weight_decay: float = _option(0.0)
    shapes_fraction: float = _option(0.5, "stage 2 image mix")
    caption_fraction: float = _option(
        0.0,
        "share of stage 2's images that are shapes scenes trained on their caption "
        "(taken out of the shapes share)",
    )
    curriculum: float = _option(
        0.0,
        "fraction of stage 2 over which the shapes scenes drawn grow from the fewest "
        f"objects ({shapes.MIN_OBJECTS}) to the most ({shapes.MAX_OBJECTS}); 0: all from the start",
    )
    # MiniLLaVA v2: LoRA on SmolLM2 (peft), trained with the projector in stage 2
    lora_rank: int = _option(0, "0: projector only (MiniLLaVA v1)")
    lora_alpha: float | None = _option(None, "default: 2 x rank")
    lora_targets: list[str] = _option(list(LORA_TARGETS), nargs="+")
    lr_lora: float = _option(3e-4)
    init_projector: pathlib.Path | None = _option(
        None, "start from this projector file (e.g. the committed v1 one) instead of a random one"
    )
    init_lora: pathlib.Path | None = _option(
        None,
        "start the LoRA factors from this file (e.g. the committed v2 one: training "
        "continues across sessions); its rank and scale must match --lora-rank / --lora-alpha",
    )
    max_minutes: float | None = _option(
        None,
        "wall-clock budget of the training phase (both stages and their evals, not the "
        "feature cache or the final evaluation): stage 2's schedule then follows "
        "max(step / stage2-steps, time used / time left at its start), so the learning rate "
        "still decays to 0 and stage 2 ends in time on a slower machine",
    )
    # evaluation
    eval_every: int = _option(150)
    eval_images: int = _option(60, "per dataset, periodic eval")
    eval_questions_per_image: int = _option(4)
    eval_budgets: list[int] = _option([57], "tokens at 224 px", nargs="*")
    eval_pruners: list[str] = _option(
        ["random:per_image=true", "pooling"],
        "NAME or NAME:key=value,... (non-text-conditioned pruners)",
        nargs="*",
    )
    eval_batch_images: int = _option(16)
    final_resolutions: list[int] = _option([224, 112], "all-token evals", nargs="*")
    final_eval_fp32: bool = _option(
        False, "final evaluation in float32 even with --bf16 (about 1.5x slower)"
    )
    checkpoint_every: int = _option(50)
    resume: bool = _option(False, "continue from --cache-dir checkpoint")
    smoke: bool = _option(
        False, "a few steps on a handful of samples (outputs under --cache-dir/smoke)"
    )

    def __post_init__(self) -> None:
        for r in self.resolutions:
            minillava.check_resolution(r)
        if self.smoke:
            self.easyvqa_train_images, self.easyvqa_test_images = 8, 6
            self.shapes_train_images, self.shapes_test_images = 8, 6
            self.stage1_steps, self.stage2_steps = 2, 2
            self.batch_images, self.eval_images, self.eval_every = 2, 3, 1000
            self.eval_batch_images, self.checkpoint_every = 6, 1
            self.final_resolutions = [224]
            self.out_dir = self.cache_dir / "smoke"
        if self.lora_alpha is None:
            self.lora_alpha = 2.0 * self.lora_rank
        if not 0 <= self.caption_fraction <= self.shapes_fraction:
            raise ConfigError("--caption-fraction must be between 0 and --shapes-fraction")
        if self.init_lora is not None and self.lora_rank <= 0:
            raise ConfigError("--init-lora needs --lora-rank")

    @property
    def work_dir(self) -> pathlib.Path:
        """Where the live log, the loss curve and the checkpoint go."""
        return self.cache_dir / ("smoke" if self.smoke else "run")

    def as_record(self) -> dict[str, Any]:
        """The fields as JSON values (paths as strings), for the training record."""
        return {
            k: str(v) if isinstance(v, pathlib.Path) else v
            for k, v in dataclasses.asdict(self).items()
        }


def _argument_type(hint: Any) -> Any:
    """The argparse ``type`` of a field's type hint (``X | None`` and ``list[X]`` give X)."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def argument_parser(description: str | None = None) -> argparse.ArgumentParser:
    """The command line of :class:`TrainConfig`: one ``--option`` per field, with its
    default (taken now, e.g. ``--threads`` from ``torch.get_num_threads()``) and help."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    hints = typing.get_type_hints(TrainConfig)
    for field in dataclasses.fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        has_factory = field.default_factory is not dataclasses.MISSING
        default = field.default_factory() if has_factory else field.default
        if hints[field.name] is bool:
            parser.add_argument(flag, action="store_true", help=field.metadata["help"])
            continue
        kwargs = {"nargs": field.metadata["nargs"]} if field.metadata["nargs"] else {}
        parser.add_argument(
            flag,
            type=_argument_type(hints[field.name]),
            default=default,
            help=field.metadata["help"],
            **kwargs,
        )
    return parser


def parse_config(argv: Sequence[str] | None = None, description: str | None = None) -> TrainConfig:
    """A :class:`TrainConfig` from command-line arguments (``SystemExit`` on a bad one)."""
    parser = argument_parser(description)
    namespace = parser.parse_args(argv)
    try:
        return TrainConfig(**vars(namespace))
    except ConfigError as err:
        raise SystemExit(str(err)) from None
