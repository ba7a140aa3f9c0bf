"""LoRA on SmolLM2 for MiniLLaVA v2: peft layers injected in place, their factors read
and written in the plain form :func:`prunekit.models.minillava.save_lora` stores."""

from __future__ import annotations

import math
import pathlib
from collections.abc import Sequence
from typing import Any

import torch

from prunekit.models import minillava
from prunekit.training.config import ConfigError


def inject_lora(
    model: Any, rank: int, alpha: float, targets: Sequence[str]
) -> dict[str, torch.nn.Module]:
    """Add peft LoRA layers of ``rank`` and ``alpha`` to the ``targets`` projections of
    ``model.model.language_model`` in place; freeze its other weights; return the LoRA
    layers by name inside the language model. B starts at 0, so the model's outputs are
    unchanged until training moves it."""
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ModuleNotFoundError as err:  # pragma: no cover - depends on the environment
        raise ModuleNotFoundError("LoRA training needs peft: pip install -e '.[train]'") from err
    if rank < 1:
        raise ConfigError(f"--lora-rank must be >= 1 to inject LoRA layers, got {rank}")
    config = LoraConfig(
        r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=list(targets), bias="none"
    )
    lm = model.model.language_model
    no_match = ConfigError(f"--lora-targets {list(targets)} matched no module of the LLM")
    try:
        inject_adapter_in_model(config, lm)
    except ValueError as err:  # peft's NoMatchingPeftModuleError, older peft: none
        if "not found" in str(err):
            raise no_match from err
        raise
    modules = {n: m for n, m in lm.named_modules() if hasattr(m, "lora_A") and m.lora_A}
    if not modules:
        raise no_match
    for param in lm.parameters():
        param.requires_grad_(False)
    return modules


def lora_updates(
    modules: dict[str, torch.nn.Module],
) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], float]:
    """``({module: (A, B)}, scale)`` in :func:`prunekit.models.minillava.save_lora`'s form."""
    updates, scales = {}, set()
    for name, module in modules.items():
        (adapter,) = module.lora_A.keys()
        updates[name] = (module.lora_A[adapter].weight, module.lora_B[adapter].weight)
        scales.add(float(module.scaling[adapter]))
    if len(scales) != 1:
        raise RuntimeError(f"LoRA layers with different scales {scales}")
    return updates, scales.pop()


def init_lora_(modules: dict[str, torch.nn.Module], path: pathlib.Path) -> None:
    """Copy the factors of a :func:`prunekit.models.minillava.save_lora` file into the
    injected LoRA layers (same modules, rank and scale; :class:`ConfigError` otherwise)."""
    updates, scale, _ = minillava.load_lora(path)
    _, current = lora_updates(modules)
    if sorted(updates) != sorted(modules) or not math.isclose(scale, current):
        raise ConfigError(
            f"--init-lora {path}: modules / scale ({len(updates)}, {scale}) differ from the "
            f"injected LoRA layers ({len(modules)}, {current})"
        )
    with torch.no_grad():
        for name, module in modules.items():
            (adapter,) = module.lora_A.keys()
            a, b = updates[name]
            module.lora_A[adapter].weight.copy_(a)
            module.lora_B[adapter].weight.copy_(b)


def lora_parameters(modules: dict[str, torch.nn.Module]) -> list[torch.nn.Parameter]:
    """The trainable factors (A and B of every LoRA layer)."""
    return [p for m in modules.values() for p in (*m.lora_A.parameters(), *m.lora_B.parameters())]


def lora_state(model: Any) -> dict[str, torch.Tensor]:
    """Copies of the LoRA tensors of the language model's state dict (for checkpoints)."""
    return {
        k: v.detach().clone()
        for k, v in model.model.language_model.state_dict().items()
        if ".lora_" in k
    }


def load_lora_state(model: Any, state: dict[str, torch.Tensor]) -> None:
    """Put :func:`lora_state`'s tensors back into the language model's LoRA layers."""
    result = model.model.language_model.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise ValueError(f"state: keys that are not LoRA layers: {result.unexpected_keys[:3]}")
