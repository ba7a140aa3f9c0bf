"""One vision-encoder pass per distinct image: a memo of LLaVA's projected image features.

Every run of a sweep asks the same questions, and a data set asks several questions
about one picture (easy-VQA about 10, shapes about 4), so the vision tower and the
projector see the same pixels far more often than there are images. For a pruning
point after the projector the projected features are the same in every run: the
first pass stores them and later passes read them back.

:func:`shared_image_features` does it for ``transformers.LlavaForConditionalGeneration``
(LLaVA-1.5 style models, MiniLLaVA, the tiny model): for the duration of a ``with``
block it sets the *instance* attribute ``get_image_features`` of the inner
``LlavaModel`` (``model.model``, which the model's own forward, ``generate``'s
multimodal encoding and prunekit's LLaVA adapter all end up calling) to a wrapper
that keys each image row of ``pixel_values`` by a digest of its bytes, its shape,
dtype and device and the call's feature layer and selection strategy, runs the
original on the rows not seen before (one call, each distinct row once) and returns
the stored features for the others. Whatever it cannot answer exactly goes to the
original untouched (see :func:`shared_image_features`); other model classes are left
as they are.

The memo (:class:`ImageFeatureMemo`) is bounded in bytes (least recently used rows go
first) and tied to the weights of the vision tower and projector it was filled with:
it empties itself when they change. :func:`image_feature_memo` keeps one per model
for the whole process, so all runs of a sweep in one process share it (the runner
reuses the model object across runs, :func:`prunekit.experiments.config.build_model`).

Forward hooks on the vision tower (e.g. the attention signals of
:mod:`prunekit.adapters.attention`) do not run for rows read from the memo; the
runner does not use it for such runs (``bench.share_image_features``,
:func:`prunekit.experiments.runner.run_dataset`).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import weakref
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import torch

from prunekit.adapters.base import override_attribute

#: the model class whose image features are shared (exact type; others pass through)
MODEL_CLASS = "LlavaForConditionalGeneration"

#: default bound of a memo: 1 GiB of stored features (LLaVA-1.5-7B: about 4.7 MB per
#: image in float16, so some 220 images; MiniLLaVA: about 0.3 MB per image)
DEFAULT_MAX_BYTES = 1 << 30

#: keyword arguments of ``get_image_features`` the wrapper understands
_KNOWN_KWARGS = frozenset(
    {
        "pixel_values",
        "vision_feature_layer",
        "vision_feature_select_strategy",
        "image_sizes",
        "return_dict",
    }
)


class ImageFeatureMemo:
    """Projected features of single images, least recently used first out.

    Keys are those of :func:`shared_image_features` (image digest, shape, dtype, device,
    feature layer, selection strategy); values are detached tensors, one per image
    (its ``(tokens, hidden)`` features). At most ``max_bytes`` are held: adding a row
    evicts the least recently used ones, and a row larger than the bound is not stored.

    Attributes:
        hits: image rows answered from the memo.
        misses: image rows computed by the original ``get_image_features`` (each
            distinct row of a call once).
        bypassed: calls passed to the original untouched (nothing looked up or stored).
    """

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self._rows: OrderedDict[tuple[Any, ...], torch.Tensor] = OrderedDict()
        self._nbytes = 0
        self._weights: tuple[Any, ...] | None = None
        self.hits = 0
        self.misses = 0
        self.bypassed = 0

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, key: object) -> bool:
        return key in self._rows

    @property
    def nbytes(self) -> int:
        """Bytes of the stored features."""
        return self._nbytes

    def get(self, key: tuple[Any, ...]) -> torch.Tensor | None:
        """The stored features of ``key`` (now the most recently used), or ``None``."""
        value = self._rows.get(key)
        if value is not None:
            self._rows.move_to_end(key)
        return value

    def put(self, key: tuple[Any, ...], value: torch.Tensor) -> bool:
        """Store ``value`` (detached) under ``key``; whether it was stored."""
        size = value.numel() * value.element_size()
        if size > self.max_bytes:
            return False
        old = self._rows.pop(key, None)
        if old is not None:
            self._nbytes -= old.numel() * old.element_size()
        while self._rows and self._nbytes + size > self.max_bytes:
            _, evicted = self._rows.popitem(last=False)
            self._nbytes -= evicted.numel() * evicted.element_size()
        self._rows[key] = value.detach()
        self._nbytes += size
        return True

    def clear(self) -> None:
        """Forget every stored row (the counters stay)."""
        self._rows.clear()
        self._nbytes = 0

    def check_weights(self, token: tuple[Any, ...]) -> None:
        """Empty the memo if it was filled with other weights than ``token`` names."""
        if self._weights != token:
            self.clear()
            self._weights = token

    def __repr__(self) -> str:
        return (
            f"ImageFeatureMemo({len(self)} images, {self._nbytes} of {self.max_bytes} bytes, "
            f"hits={self.hits}, misses={self.misses}, bypassed={self.bypassed})"
        )


#: one memo per model object for the whole process (dropped with the model)
_MEMOS: weakref.WeakKeyDictionary[Any, ImageFeatureMemo] = weakref.WeakKeyDictionary()


def image_feature_memo(model: Any, max_bytes: int = DEFAULT_MAX_BYTES) -> ImageFeatureMemo:
    """The process-level memo of ``model`` (created on first use with ``max_bytes``;
    held as long as the model object lives)."""
    memo = _MEMOS.get(model)
    if memo is None:
        memo = _MEMOS[model] = ImageFeatureMemo(max_bytes)
    return memo


def supports(model: Any) -> bool:
    """Whether :func:`shared_image_features` shares ``model``'s image features (exactly a
    ``LlavaForConditionalGeneration`` with an inner model that has ``get_image_features``)."""
    import transformers

    target = getattr(transformers, MODEL_CLASS, None)
    inner = getattr(model, "model", None)
    return (
        target is not None
        and type(model) is target
        and callable(getattr(inner, "get_image_features", None))
    )


@contextlib.contextmanager
def shared_image_features(model: Any, memo: ImageFeatureMemo | None = None) -> Iterator[Any]:
    """Within the block, ``model``'s vision tower and projector run once per distinct image.

    ``memo``: where the features are kept (default: :func:`image_feature_memo` of
    ``model``, shared by the whole process). Yields the memo, or ``None`` for a model
    this does not apply to (:func:`supports`), which is left untouched.

    Each image row of a 4-D ``pixel_values`` is keyed by a digest of its bytes, its
    shape, dtype and device, and the call's ``vision_feature_layer`` and
    ``vision_feature_select_strategy`` (the config's where the call gives none). The
    rows not in the memo go to the original ``get_image_features`` in one call (each
    distinct row once; all of ``pixel_values`` as given when every row is new and
    distinct), and the result holds ``pooler_output``: one ``(tokens, hidden)`` tensor
    per image, as the original's (its other fields, e.g. ``hidden_states``, are not
    kept). The original is called as given, and nothing is stored, when the answer
    could not be exact: ``image_sizes`` given, ``pixel_values`` not a 4-D tensor or
    passed positionally with other arguments, a list of feature layers, a tuple output
    asked for (``return_dict=False``), any other keyword argument (e.g.
    ``output_hidden_states``), gradients wanted (grad mode on and the pixels or the
    encoder's parameters requiring grad) or the vision tower / projector in training
    mode. The memo empties itself when the tower's or projector's parameters change
    (replaced, moved, converted or updated in place).

    On exit (also on an exception) the instance attribute is removed again (or the one
    found on entry restored).
    """
    if not supports(model):
        yield None
        return
    memo = image_feature_memo(model) if memo is None else memo
    inner = model.model
    original = inner.get_image_features

    @functools.wraps(original)  # generate() reads the signature for its multimodal encoding
    def get_image_features(*args: Any, **kwargs: Any) -> Any:
        call = _memo_call(inner, args, kwargs)
        if call is None:
            memo.bypassed += 1
            return original(*args, **kwargs)
        pixel_values, layer, strategy = call
        memo.check_weights(_weights_token(inner))
        keys = _row_keys(pixel_values, layer, strategy)
        found: dict[tuple[Any, ...], torch.Tensor] = {}
        for key in dict.fromkeys(keys):
            value = memo.get(key)
            if value is not None:
                found[key] = value
        missing = [k for k in dict.fromkeys(keys) if k not in found]  # distinct, in order
        computed: dict[tuple[Any, ...], torch.Tensor] = {}
        if missing:
            rows = [keys.index(k) for k in missing]
            pixels = pixel_values
            if len(rows) != len(keys):  # only the new rows, each once
                pixels = pixel_values[torch.tensor(rows, device=pixel_values.device)]
            rest = {k: v for k, v in kwargs.items() if k != "pixel_values"}
            features = _pooled(original(pixel_values=pixels, **rest))
            if len(features) != len(rows):
                raise RuntimeError(
                    f"get_image_features returned {len(features)} images for {len(rows)} rows"
                )
            for key, value in zip(missing, features):
                computed[key] = value
                memo.put(key, value.detach().clone())
            memo.misses += len(missing)
        memo.hits += len(keys) - len(missing)
        # a tensor of its own per image row: callers may modify what they get in place
        pooled, handed = [], set()
        for key in keys:
            if key in computed and key not in handed:
                pooled.append(computed[key])
                handed.add(key)
            else:
                pooled.append((computed[key] if key in computed else found[key]).clone())
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        return BaseModelOutputWithPooling(pooler_output=pooled)

    undo = override_attribute(inner, "get_image_features", get_image_features)
    try:
        yield memo
    finally:
        undo()


def _memo_call(
    inner: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[torch.Tensor, int, str] | None:
    """``(pixel_values, layer, strategy)`` of a call the memo answers exactly, else ``None``."""
    if args:
        if len(args) > 1 or "pixel_values" in kwargs:
            return None
        pixel_values = args[0]
    else:
        pixel_values = kwargs.get("pixel_values")
    if set(kwargs) - _KNOWN_KWARGS or kwargs.get("image_sizes") is not None:
        return None
    if not isinstance(pixel_values, torch.Tensor) or pixel_values.dim() != 4:
        return None
    config = inner.config
    return_dict = kwargs.get("return_dict")
    if return_dict is None:
        return_dict = getattr(config, "return_dict", True)
    if not return_dict:
        return None
    layer = kwargs.get("vision_feature_layer")
    layer = getattr(config, "vision_feature_layer", None) if layer is None else layer
    strategy = kwargs.get("vision_feature_select_strategy")
    strategy = (
        getattr(config, "vision_feature_select_strategy", None) if strategy is None else strategy
    )
    if isinstance(layer, bool) or not isinstance(layer, int) or not isinstance(strategy, str):
        return None
    modules = _encoder_modules(inner)
    if any(m.training for m in modules):
        return None
    if torch.is_grad_enabled() and (
        pixel_values.requires_grad or any(p.requires_grad for m in modules for p in m.parameters())
    ):
        return None
    return pixel_values, layer, strategy


def _encoder_modules(inner: Any) -> list[torch.nn.Module]:
    """The modules the image features come from: the vision tower and the projector."""
    names = ("vision_tower", "multi_modal_projector")
    return [m for m in (getattr(inner, n, None) for n in names) if isinstance(m, torch.nn.Module)]


def _weights_token(inner: Any) -> tuple[Any, ...]:
    """What the stored features depend on besides the pixels: the encoder's parameters
    and buffers (their storage, in-place version, dtype and device)."""
    token = []
    for module in _encoder_modules(inner):
        for tensor in (*module.parameters(), *module.buffers()):
            token.append((tensor.data_ptr(), tensor._version, tensor.dtype, tensor.device))
    return tuple(token)


def _row_keys(pixel_values: torch.Tensor, layer: int, strategy: str) -> list[tuple[Any, ...]]:
    """One key per image row: a digest of its bytes, its shape, dtype and device, the
    feature layer and the selection strategy."""
    pixels = pixel_values.detach().cpu().contiguous()
    flat = pixels.reshape(pixels.shape[0], -1)
    shape = tuple(pixels.shape[1:])
    keys = []
    for row in flat:
        data = row.view(torch.uint8).numpy().tobytes()
        digest = hashlib.blake2b(data, digest_size=16).hexdigest()
        keys.append(
            (digest, shape, str(pixel_values.dtype), str(pixel_values.device), layer, strategy)
        )
    return keys


def _pooled(output: Any) -> list[torch.Tensor]:
    """The per-image features of ``get_image_features``'s output (``pooler_output``)."""
    from prunekit.adapters.llava import pooled_features

    return pooled_features(output)
