"""Any Hugging Face checkpoint of a supported VLM family, by hub id or local folder.

:func:`load_hf` returns ``(model, processor)`` as the checkpoint defines them: the
model class named by its ``config.json`` (``architectures``), the processor, its
tokenizer and chat template from the same checkpoint. It reads what is already on
disk first (a local folder, or the Hugging Face cache under ``HF_HOME``) and honours
``HF_HUB_OFFLINE=1``; a checkpoint that is neither there nor downloadable raises
:class:`CheckpointNotFoundError`, one line naming the path and how to get it. A model
class that no prunekit adapter handles is refused before its weights are read.

:func:`chat_prompt` writes a question in the checkpoint's own chat template (a user
turn of one image and the text, then the assistant's turn), with the image
placeholder where the processor expects it. A checkpoint without a chat template is
refused with its name: set ``model.prompt`` (e.g. ``"USER: <image>\\n{question}
ASSISTANT:"``) to give the format explicitly.

Example::

    model, processor = load_hf("llava-hf/llava-1.5-7b-hf", dtype="bfloat16", device_map="auto")
    text = chat_prompt("What is in the picture?", processor)
    inputs = processor(images=[image], text=[text], return_tensors="pt").to(model.device)
    with prunekit.attach(model, "resprune", budget=64, tokenizer=processor.tokenizer):
        out = model.generate(**inputs, max_new_tokens=16)
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "DTYPES",
    "CheckpointNotFoundError",
    "chat_prompt",
    "checkpoint_config",
    "load_hf",
    "num_llm_layers",
]

#: the ``dtype`` values :func:`load_hf` accepts (``auto``: the checkpoint's own)
DTYPES = ("auto", "bfloat16", "float16", "float32")
_HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")


class CheckpointNotFoundError(FileNotFoundError):
    """A checkpoint that is neither a local folder nor in (or downloadable to) the HF cache."""


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def _looks_local(path: str) -> bool:
    """Whether ``path`` can only be a folder (not a hub id such as ``org/name``)."""
    return path.startswith(("/", ".", "~")) or not _HUB_ID.match(path) or Path(path).exists()


def _not_found(path: str, reason: str) -> CheckpointNotFoundError:
    if _looks_local(path):
        how = "pass the folder that save_pretrained wrote (it holds config.json)"
    else:
        from huggingface_hub import constants

        offline = " (HF_HUB_OFFLINE is set)" if _offline() else ""
        how = (
            f"it is not in the Hugging Face cache {constants.HF_HUB_CACHE}{offline}: download "
            f"it with `huggingface-cli download {path}` (or `hf download {path}`), set HF_HOME "
            "to the folder whose cache holds it, or pass a local directory"
        )
    return CheckpointNotFoundError(f"checkpoint {path!r} not found ({reason}); {how}")


def checkpoint_config(path: str, revision: str | None = None) -> dict[str, Any] | None:
    """The checkpoint's ``config.json`` as a dict, read without transformers or the network.

    From a local folder, or from the Hugging Face cache for a hub id; ``None`` when a hub
    id is not cached and downloads are allowed (only loading can tell). Raises
    :class:`CheckpointNotFoundError` for a missing folder, a folder without
    ``config.json``, or a hub id not cached while ``HF_HUB_OFFLINE`` is set.
    """
    if not isinstance(path, str) or not path.strip():
        raise ValueError(f"path must be a hub id or a local folder, got {path!r}")
    local = Path(path).expanduser()
    if local.is_dir():
        file = local / "config.json"
        if not file.is_file():
            raise _not_found(path, "the folder has no config.json")
        return json.loads(file.read_text())
    if _looks_local(path):
        raise _not_found(path, "a file, not a folder" if local.exists() else "no such folder")
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(path, "config.json", revision=revision)
    if isinstance(cached, str):
        return json.loads(Path(cached).read_text())
    if _offline():
        raise _not_found(path, "not a local folder")
    return None


def num_llm_layers(config: dict[str, Any]) -> int | None:
    """Decoder layers of the language model in a ``config.json`` dict (``None`` if it names none)."""
    for node in (config.get("text_config") or {}, config.get("llm_config") or {}, config):
        layers = node.get("num_hidden_layers")
        if isinstance(layers, int):
            return layers
    return None


def _torch_dtype(dtype: str) -> Any:
    import torch

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
    return "auto" if dtype == "auto" else getattr(torch, dtype)


def _model_class(config: Any, path: str) -> type:
    """The class named by the checkpoint's ``architectures`` (else the image-text-to-text auto class)."""
    import transformers

    for name in getattr(config, "architectures", None) or ():
        cls = getattr(transformers, name, None)
        if cls is not None:
            return cls
    mapping = transformers.AutoModelForImageTextToText._model_mapping
    try:
        return mapping[type(config)]
    except KeyError:
        raise ValueError(
            f"checkpoint {path!r}: transformers has no vision-language model class for "
            f"{type(config).__name__} (architectures: {getattr(config, 'architectures', None)})"
        ) from None


def _check_supported(model: Any, path: str) -> None:
    """Raise ``TypeError`` naming the supported families unless an adapter handles ``model``."""
    from prunekit.adapters.attach import find_adapter

    try:
        find_adapter(model)
    except TypeError as exc:
        raise TypeError(f"checkpoint {path!r}: {exc}") from None


@contextlib.contextmanager
def _quiet(verbose: bool) -> Iterator[None]:
    """Silence transformers' loading progress bars and info (not its errors) unless ``verbose``."""
    from transformers.utils import logging as hf_logging

    if verbose:
        yield
        return
    bars, verbosity = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def load_hf(
    path: str | os.PathLike[str],
    *,
    revision: str | None = None,
    dtype: str = "auto",
    device_map: str | dict[str, Any] | None = None,
    attn_implementation: str | None = None,
    trust_remote_code: bool = False,
    verbose: bool = False,
) -> tuple[Any, Any]:
    """``(model, processor)`` of a checkpoint of a supported family, in eval mode.

    Args:
        path: a hub id (``llava-hf/llava-1.5-7b-hf``) or a local folder written by
            ``save_pretrained``.
        revision: the hub revision (branch, tag or commit).
        dtype: ``auto`` (the checkpoint's own), ``bfloat16``, ``float16`` or ``float32``.
        device_map: e.g. ``"auto"`` to spread a large model over the GPUs of a node
            (needs ``accelerate``); ``None``: loaded on the CPU.
        attn_implementation: ``sdpa``, ``eager``, ``flash_attention_2``, ...; ``None``:
            transformers' default.
        trust_remote_code: run the checkpoint's own modelling code (off by default).
        verbose: show transformers' loading progress bars and warnings.

    Raises:
        CheckpointNotFoundError: the checkpoint is not on disk and cannot be downloaded.
        TypeError: no prunekit adapter handles the checkpoint's model class (checked
            before the weights are read).
    """
    import torch
    import transformers

    path = os.path.expanduser(os.fspath(path))
    torch_dtype = _torch_dtype(dtype)
    checkpoint_config(path, revision)  # a missing folder / uncached offline id: one clear error
    try:
        config = transformers.AutoConfig.from_pretrained(
            path, revision=revision, trust_remote_code=trust_remote_code
        )
    except OSError as exc:
        raise _not_found(path, str(exc).splitlines()[0]) from None
    model_class = _model_class(config, path)
    try:
        with torch.device("meta"):  # no weights: is the class one an adapter handles?
            skeleton = model_class(config)
    except Exception:  # a class that cannot be built on meta: checked after loading
        skeleton = None
    if skeleton is not None:
        _check_supported(skeleton, path)
    kwargs: dict[str, Any] = {"revision": revision, "dtype": torch_dtype}
    if device_map is not None:
        kwargs["device_map"] = device_map
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    if trust_remote_code:
        kwargs["trust_remote_code"] = True
    with _quiet(verbose):
        model = model_class.from_pretrained(path, config=config, **kwargs).eval()
    _check_supported(model, path)
    processor = transformers.AutoProcessor.from_pretrained(
        path, revision=revision, trust_remote_code=trust_remote_code
    )
    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is not None:
        tokenizer.padding_side = "left"  # batched generation
        if tokenizer.pad_token is None and tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
    return model, processor


def chat_prompt(question: str, processor: Any) -> str:
    """``question`` with one image in the checkpoint's chat template, ready for the answer.

    ``processor.apply_chat_template`` of a user turn ``[image, text]`` with
    ``add_generation_prompt=True``: the image placeholder is written as the processor
    expects it (the processor expands it to the image's tokens).

    Raises:
        ValueError: the checkpoint has no chat template (set ``model.prompt`` instead).
    """
    template = getattr(processor, "chat_template", None)
    if not template:
        tokenizer = getattr(processor, "tokenizer", processor)
        name = getattr(tokenizer, "name_or_path", None) or type(processor).__name__
        token = getattr(processor, "image_token", None) or "<image>"
        raise ValueError(
            f"checkpoint {name!r} has no chat template; give the prompt format with "
            f"model.prompt, e.g. model.prompt='USER: {token}\\n{{question}} ASSISTANT:'"
        )
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}
    ]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
