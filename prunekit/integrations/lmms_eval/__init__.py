"""The ``prunekit`` model of lmms-eval: any supported Hugging Face VLM, pruned with ``prunekit.attach``.

Install the extra (``pip install prunekit[lmms-eval]``); lmms-eval then finds the model through
its entry-point group ``lmms_eval.models`` (this module's :func:`manifest`). Every lmms-eval task
runs with pruning::

    lmms-eval --model prunekit \\
        --model_args pretrained=llava-hf/llava-1.5-7b-hf,pruner=resprune,budget=128,dtype=bfloat16 \\
        --tasks pope --batch_size 8 --output_path results/ --log_samples

    # one process per GPU, each evaluates a shard of the questions
    accelerate launch --num_processes 8 -m lmms_eval --model prunekit \\
        --model_args pretrained=llava-hf/llava-1.5-7b-hf,pruner=divprune,budget=64 \\
        --tasks pope,gqa,textvqa_val --batch_size 8 --output_path results/

``--model_args`` keys:

- ``pretrained``: hub id or local directory (loaded by :func:`prunekit.models.load_hf`);
- ``pruner``: a registered pruner name (``prunekit.list_pruners()``), or ``none`` for the unpruned
  model with the same prompts and decoding (the reference row of a table);
- ``budget``: tokens kept per image (``128``) or the fraction kept (``0.25``; ``1.0`` keeps all);
- loading, as lmms-eval's ``llava_hf`` model: ``revision``, ``dtype`` (``auto``, ``bfloat16``,
  ``float16``, ``float32``), ``device_map`` (``auto`` spreads one model over the GPUs of a node,
  in one process), ``attn_implementation``, ``trust_remote_code``;
- adapter options of :func:`prunekit.attach`: ``llm_layer``, ``positions``, ``before_projector``;
- ``max_new_tokens``: the default when a task's ``generation_kwargs`` set none (1024);
- every other key is a parameter of the pruner, e.g. ``alpha=2.0`` for ResPrune; values are typed
  (``128`` int, ``0.5`` float, ``true``/``false`` bool, ``none`` None) and a wrong name or type is
  reported by the pruner (``TypeError`` naming the parameter).

On a machine without a hub, set ``HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1`` and point tasks at local
files (``--include_path`` with task YAMLs whose ``dataset_path: json`` reads ``data_files``).

The model class, ``PrunekitLMM``, lives in ``prunekit.integrations.lmms_eval._model`` (it
subclasses lmms-eval's ``lmms``, so importing it needs lmms-eval); this module does not import
lmms-eval, because lmms-eval loads its entry points while it is itself being imported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["MODEL_ID", "ModelArgs", "manifest", "parse_value", "split_model_args"]

#: the model name of ``lmms-eval --model``
MODEL_ID = "prunekit"
#: other names lmms-eval accepts for the same model
_ALIASES = ("prunekit_hf",)
#: ``--model_args`` keys that go to :func:`prunekit.models.load_hf`
_LOAD_KEYS = ("revision", "dtype", "device_map", "attn_implementation", "trust_remote_code")
#: ``--model_args`` keys that go to :func:`prunekit.attach` as adapter options
_ADAPTER_KEYS = ("llm_layer", "positions", "before_projector")
#: the pruner name that evaluates the unpruned model
_NO_PRUNER = "none"


def manifest() -> Any:
    """The ``ModelManifest`` that registers the ``prunekit`` model (the entry point's target)."""
    from lmms_eval.models.registry_v2 import ModelManifest  # lazy: see the module docstring

    return ModelManifest(
        model_id=MODEL_ID,
        simple_class_path="prunekit.integrations.lmms_eval._model.PrunekitLMM",
        aliases=_ALIASES,
    )


def parse_value(value: Any) -> Any:
    """A ``--model_args`` value typed: ``"128"`` -> 128, ``"0.5"`` -> 0.5, ``"true"`` -> True,
    ``"none"`` -> None; other strings and non-strings are returned unchanged."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return value


@dataclass
class ModelArgs:
    """``--model_args`` sorted by destination: the loader, ``attach`` and the pruner."""

    pretrained: str
    pruner: str
    budget: int | float | None
    load: dict[str, Any] = field(default_factory=dict)
    adapter: dict[str, Any] = field(default_factory=dict)
    pruner_params: dict[str, Any] = field(default_factory=dict)


def split_model_args(args: dict[str, Any]) -> ModelArgs:
    """Type every value (:func:`parse_value`) and sort the keys by destination.

    ``pretrained`` is required, as are ``pruner`` and ``budget`` unless ``pruner=none``.
    """
    args = dict(args)
    pruner = args.pop("pruner", None)  # a name, never typed ("none" is the unpruned model)
    args = {key: parse_value(value) for key, value in args.items()}
    pretrained = args.pop("pretrained", None)
    if not isinstance(pretrained, str) or not pretrained:
        raise ValueError(
            "model_args needs pretrained=<hub id or local directory>, "
            f"got pretrained={pretrained!r}"
        )
    if not isinstance(pruner, str) or not pruner:
        raise ValueError(
            f"model_args needs pruner=<name> (a registered pruner, or {_NO_PRUNER!r} for the "
            f"unpruned model), got pruner={pruner!r}"
        )
    budget = args.pop("budget", None)
    if pruner != _NO_PRUNER:
        if budget is None:
            raise ValueError(
                "model_args needs budget=<tokens kept per image (int) or fraction (float)>"
            )
        from prunekit.core.budget import check_budget

        check_budget(budget)
    load = {key: args.pop(key) for key in _LOAD_KEYS if key in args}
    adapter = {key: args.pop(key) for key in _ADAPTER_KEYS if key in args}
    if pruner == _NO_PRUNER and (args or adapter):
        raise ValueError(
            f"pruner={_NO_PRUNER!r} takes no pruner parameters or adapter options, "
            f"got {sorted({**args, **adapter})}"
        )
    return ModelArgs(pretrained, pruner, budget, load, adapter, args)
