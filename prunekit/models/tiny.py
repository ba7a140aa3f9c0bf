"""A tiny random LLaVA and a word-level processor, built offline from configs.

``load()`` returns ``(model, processor)`` like a Hugging Face checkpoint would:
a stock :class:`transformers.LlavaForConditionalGeneration` (CLIP-style vision
tower, 2-layer Llama) with seeded random weights, and a processor with the
call signature of ``LlavaProcessor`` (``processor(images=..., text=...,
return_tensors="pt", padding=True)``, ``batch_decode``, ``.tokenizer``). It runs
prunekit's whole pipeline (``prunekit run``, ``prunekit ablate``) in seconds
with nothing downloaded. Its answers are those of random weights: a pipeline
check, never a measurement of a VLM.

The tokenizer is word-level: a fixed vocabulary (special tokens, the words of
easy-VQA and of the tiny data set, a few common words) plus hashed buckets for
any other word, so every word gets a stable id and an embedding of its own.
``"<image>"`` in a prompt expands to the image's placeholder tokens (one per
patch: ``(image_size / patch_size) ** 2``).
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from PIL import Image

#: the special tokens (``IMAGE`` is the image placeholder, expanded to one token per patch)
PAD, BOS, EOS, IMAGE, UNK = "<pad>", "<s>", "</s>", "<image>", "<unk>"
#: the special tokens in id order
SPECIALS = (PAD, BOS, EOS, IMAGE, UNK)
#: the special tokens' ids (0 to 4)
PAD_ID, BOS_ID, EOS_ID, IMAGE_ID, UNK_ID = range(len(SPECIALS))
_EASYVQA_WORDS = (
    "a black blue brown circle color contain does gray green image in is no not of "
    "present rectangle red shape teal the there triangle what yellow yes"
)
_PROMPT_WORDS = (
    "an and animal are colour describe how many object picture photo this which "
    "where who holding person cat dog astronaut coffee"
)
#: words with an id of their own (everything else is hashed into the remaining ids)
WORDS = tuple(sorted(set(_EASYVQA_WORDS.split()) | set(_PROMPT_WORDS.split())))
#: vocabulary size: the special tokens, :data:`WORDS`, then hashed buckets
VOCAB_SIZE = 512
#: CLIP's channel means (pixels are normalised as CLIP's processor does)
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
#: CLIP's channel standard deviations
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)
_WORD = re.compile(r"<image>|<s>|</s>|<pad>|\w+|[^\w\s]")


class WordTokenizer:
    """Word-level tokenizer with the parts of the Hugging Face tokenizer API prunekit uses."""

    pad_token_id = PAD_ID
    bos_token_id = BOS_ID
    eos_token_id = EOS_ID
    unk_token_id = UNK_ID
    padding_side = "left"

    def __init__(self, vocab_size: int = VOCAB_SIZE) -> None:
        known = list(SPECIALS) + list(WORDS)
        if vocab_size <= len(known):
            raise ValueError(f"vocab_size must exceed the {len(known)} fixed tokens")
        self.vocab_size = vocab_size
        self.vocab = {w: i for i, w in enumerate(known)}
        self._words = {i: w for w, i in self.vocab.items()}

    def __len__(self) -> int:
        return self.vocab_size

    def token_id(self, word: str) -> int:
        """The id of one word: its own in the vocabulary, else a hashed bucket (stable across runs)."""
        word = word.lower()
        if word in self.vocab:
            return self.vocab[word]
        n_fixed = len(self.vocab)
        index = n_fixed + zlib.crc32(word.encode()) % (self.vocab_size - n_fixed)
        self._words.setdefault(index, word)  # decode shows the first word seen for a bucket
        return index

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Word ids of ``text`` (``<s>`` first with ``add_special_tokens``)."""
        ids = [self.token_id(w) for w in _WORD.findall(text)]
        return [BOS_ID, *ids] if add_special_tokens else ids

    def __call__(
        self, text: str, add_special_tokens: bool = True, **_: Any
    ) -> dict[str, list[int]]:
        return {"input_ids": self.encode(text, add_special_tokens=add_special_tokens)}

    def decode(self, ids: Sequence[int] | torch.Tensor, skip_special_tokens: bool = False) -> str:
        """The words of ``ids``, space-separated."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        words = []
        for i in ids:
            if skip_special_tokens and i < len(SPECIALS):
                continue
            words.append(self._words.get(int(i), UNK))
        return " ".join(words)

    def batch_decode(self, sequences: Any, skip_special_tokens: bool = False) -> list[str]:
        """:meth:`decode` of each row of ``sequences``."""
        return [self.decode(row, skip_special_tokens=skip_special_tokens) for row in sequences]


class TinyProcessor:
    """Images to CLIP-normalised pixels, prompts to word ids with ``<image>`` expanded; left padding."""

    def __init__(self, tokenizer: WordTokenizer, image_size: int, n_image_tokens: int) -> None:
        self.tokenizer = tokenizer
        self.image_size = image_size
        self.n_image_tokens = n_image_tokens

    def pixels(self, image: Image.Image | np.ndarray) -> torch.Tensor:
        """``(3, image_size, image_size)`` CLIP-normalised pixels of one image."""
        if not isinstance(image, Image.Image):
            image = Image.fromarray(np.asarray(image).astype(np.uint8))
        image = image.convert("RGB").resize((self.image_size, self.image_size), Image.BICUBIC)
        array = (np.asarray(image, dtype=np.float32) / 255.0 - CLIP_MEAN) / CLIP_STD
        return torch.from_numpy(array).permute(2, 0, 1)

    def __call__(
        self,
        images: Sequence[Image.Image] | Image.Image | None = None,
        text: Sequence[str] | str | None = None,
        return_tensors: str = "pt",
        padding: bool = True,
        **_: Any,
    ) -> dict[str, torch.Tensor]:
        if return_tensors != "pt":
            raise ValueError("TinyProcessor returns PyTorch tensors only (return_tensors='pt')")
        texts = [text] if isinstance(text, str) else list(text or [])
        images = [images] if isinstance(images, Image.Image) else list(images or [])
        rows = []
        for prompt in texts:
            ids = []
            for token in self.tokenizer.encode(prompt):
                ids.extend([IMAGE_ID] * self.n_image_tokens if token == IMAGE_ID else [token])
            rows.append(ids)
        n_placeholders = sum(row.count(IMAGE_ID) for row in rows)
        if n_placeholders != len(images) * self.n_image_tokens:
            raise ValueError(
                f"{len(images)} images but {n_placeholders // self.n_image_tokens} '<image>' "
                "markers in the prompts"
            )
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), PAD_ID, dtype=torch.long)
        attention_mask = torch.zeros(len(rows), width, dtype=torch.long)
        for i, row in enumerate(rows):  # left padding, as batched generation needs
            input_ids[i, width - len(row) :] = torch.tensor(row)
            attention_mask[i, width - len(row) :] = 1
        out = {"input_ids": input_ids, "attention_mask": attention_mask}
        if images:
            out["pixel_values"] = torch.stack([self.pixels(im) for im in images])
        return out

    def batch_decode(self, sequences: Any, skip_special_tokens: bool = True) -> list[str]:
        """The tokenizer's :meth:`WordTokenizer.batch_decode`."""
        return self.tokenizer.batch_decode(sequences, skip_special_tokens=skip_special_tokens)


def tiny_llava_config(
    *,
    image_size: int = 64,
    patch_size: int = 8,
    hidden_size: int = 32,
    num_layers: int = 2,
    initializer_range: float = 0.1,
) -> transformers.LlavaConfig:
    """LLaVA-1.5 shaped: CLIP tower (patches + CLS; the ``default`` strategy drops CLS), Llama LLM.

    ``initializer_range`` is larger than a real model's 0.02 so that the random
    model's answers depend on the image (and so on which tokens are kept).
    """
    vision = transformers.CLIPVisionConfig(
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=hidden_size,
        initializer_range=initializer_range,
    )
    text = transformers.LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        pad_token_id=PAD_ID,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        initializer_range=initializer_range,
    )
    return transformers.LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=IMAGE_ID,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        initializer_range=initializer_range,
    )


def load(
    seed: int = 0,
    image_size: int = 64,
    patch_size: int = 8,
    hidden_size: int = 32,
    num_layers: int = 2,
    initializer_range: float = 0.1,
) -> tuple[transformers.LlavaForConditionalGeneration, TinyProcessor]:
    """The tiny random LLaVA (weights drawn with ``seed``) and its processor."""
    if image_size % patch_size:
        raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
    config = tiny_llava_config(
        image_size=image_size,
        patch_size=patch_size,
        hidden_size=hidden_size,
        num_layers=num_layers,
        initializer_range=initializer_range,
    )
    config._attn_implementation = "sdpa"
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = transformers.LlavaForConditionalGeneration(config).eval()
    finally:
        torch.random.set_rng_state(state)
    model.generation_config.pad_token_id = PAD_ID
    model.generation_config.bos_token_id = BOS_ID
    model.generation_config.eos_token_id = EOS_ID
    n_image_tokens = (image_size // patch_size) ** 2
    return model, TinyProcessor(WordTokenizer(), image_size, n_image_tokens)


# -- tiny checkpoints in the real formats (for tests of model=hf and the lmms-eval plugin) --
#: the VLM families :func:`save_tiny_checkpoint` writes
CHECKPOINT_FAMILIES = (
    "llava",
    "llava_next",
    "internvl",
    "qwen2_5_vl",
    "qwen3_vl",
    "llava_onevision",
)
#: the families whose checkpoints use the Qwen2 tokenizer's conventions (no BOS, ``<|im_end|>``
#: ends a turn, ``<|endoftext|>`` pads) and the extra tokens below
_QWEN_TOKENIZER = ("qwen2_5_vl", "qwen3_vl", "llava_onevision")
#: special tokens of the Qwen-style tokenizers, after :data:`CHECKPOINT_SPECIALS` and the words
#: (so that the other families' ids do not change)
QWEN_SPECIALS = (
    "<|endoftext|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
_QWEN_WORDS = ("you", "helpful", "seconds")
#: special tokens of the tiny checkpoints' tokenizer (one vocabulary for every family)
CHECKPOINT_SPECIALS = (
    PAD,
    BOS,
    EOS,
    UNK,
    IMAGE,
    "<img>",
    "</img>",
    "<IMG_CONTEXT>",
    "<video>",
    "<|im_start|>",
    "<|im_end|>",
    "[INST]",
    "[/INST]",
)
_CHAT_WORDS = "user assistant system answer question using single word or phrase"
_SYMBOLS = ". , ? ! : ; ' \" ( ) - 0 1 2 3 4 5 6 7 8 9"
_CHECKPOINT_WORDS = (*WORDS, *_CHAT_WORDS.split(), *_SYMBOLS.split())
#: chat templates in the style of each family's public checkpoints (llava-1.5-hf,
#: llava-v1.6-mistral-hf, InternVL3-hf): images first, then the text
CHAT_TEMPLATES = {
    "llava": (
        "{% for message in messages %}{{ message['role'].upper() + ': ' }}"
        "{% for item in message['content'] if item['type'] == 'image' %}{{ '<image>\n' }}"
        "{% endfor %}{% for item in message['content'] if item['type'] == 'text' %}"
        "{{ item['text'] + ' ' }}{% endfor %}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
    ),
    "llava_next": (
        "{% for message in messages %}{% if message['role'] == 'user' %}{{ '[INST] ' }}"
        "{% endif %}{% for item in message['content'] if item['type'] == 'image' %}"
        "{{ '<image>\n' }}{% endfor %}"
        "{% for item in message['content'] if item['type'] == 'text' %}{{ item['text'] }}"
        "{% endfor %}{% if message['role'] == 'user' %}{{ ' [/INST]' }}{% else %}"
        "{{ '</s>' }}{% endif %}{% endfor %}"
    ),
    "internvl": (
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}"
        "{% for item in message['content'] if item['type'] == 'image' %}{{ '<IMG_CONTEXT>\n' }}"
        "{% endfor %}{% for item in message['content'] if item['type'] == 'text' %}"
        "{{ item['text'] }}{% endfor %}{{ '<|im_end|>\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
    # Qwen2.5-VL-Instruct: a default system turn; each image is <|vision_start|><|image_pad|>
    # <|vision_end|> where the message has it (the processor expands the pad to the image's tokens)
    "qwen2_5_vl": (
        "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
        "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
        "{{ '<|im_start|>' + message['role'] + '\n' }}{% if message['content'] is string %}"
        "{{ message['content'] }}{% else %}{% for item in message['content'] %}"
        "{% if item['type'] == 'image' %}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
        "{% elif item['type'] == 'video' %}{{ '<|vision_start|><|video_pad|><|vision_end|>' }}"
        "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}{% endif %}"
        "{{ '<|im_end|>\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
    # Qwen3-VL-Instruct: the same turns, no default system turn
    "qwen3_vl": (
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}"
        "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
        "{% for item in message['content'] %}"
        "{% if item['type'] == 'image' %}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
        "{% elif item['type'] == 'video' %}{{ '<|vision_start|><|video_pad|><|vision_end|>' }}"
        "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}{% endif %}"
        "{{ '<|im_end|>\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
    # llava-onevision-qwen2-*-hf: images, then videos, then the text of each turn
    "llava_onevision": (
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + ' ' }}"
        "{% for item in message['content'] if item['type'] == 'image' %}{{ '<image>\n' }}"
        "{% endfor %}{% for item in message['content'] if item['type'] == 'video' %}"
        "{{ '<video>\n' }}{% endfor %}"
        "{% for item in message['content'] if item['type'] == 'text' %}{{ item['text'] }}"
        "{% endfor %}{{ '<|im_end|>' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
}
_CKPT_IMAGE, _CKPT_PATCH, _CKPT_WIDTH = 32, 8, 32


def checkpoint_tokenizer(
    *, add_bos: bool = True, family: str | None = None
) -> transformers.PreTrainedTokenizerFast:
    """A word-level ``tokenizers`` tokenizer (lower case; unknown words -> ``<unk>``) with the
    special tokens of every family's processor, as a ``PreTrainedTokenizerFast``.

    For the Qwen-based families (``qwen2_5_vl``, ``qwen3_vl``, ``llava_onevision``) it follows
    the Qwen2 tokenizer: no BOS, ``<|im_end|>`` is the end of a turn (EOS) and
    ``<|endoftext|>`` pads; :data:`QWEN_SPECIALS` come after the shared vocabulary and its
    image token is the family's (``<|image_pad|>`` for Qwen-VL, ``<image>`` for OneVision).
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    qwen = family in _QWEN_TOKENIZER
    specials = (*CHECKPOINT_SPECIALS, *QWEN_SPECIALS) if qwen else CHECKPOINT_SPECIALS
    vocab: dict[str, int] = {}
    for token in (*CHECKPOINT_SPECIALS, *_CHECKPOINT_WORDS):
        vocab.setdefault(token, len(vocab))
    if qwen:
        for token in (*QWEN_SPECIALS, *_QWEN_WORDS):
            vocab.setdefault(token, len(vocab))
    raw = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    raw.normalizer = normalizers.Lowercase()
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    raw.add_special_tokens(list(specials))
    if add_bos and not qwen:  # Llama-style: <s> first
        raw.post_processor = processors.TemplateProcessing(
            single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])]
        )
    extra = {
        "image_token": IMAGE,
        "start_image_token": "<img>",
        "end_image_token": "</img>",
        "context_image_token": "<IMG_CONTEXT>",
        "video_token": "<video>",
    }
    tokens = {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD}
    if qwen:
        tokens = {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}
        extra = {"image_token": IMAGE, "video_token": "<video>"}
        if family != "llava_onevision":
            extra = {
                "image_token": "<|image_pad|>",
                "video_token": "<|video_pad|>",
                "vision_start_token": "<|vision_start|>",
                "vision_end_token": "<|vision_end|>",
            }
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=raw,
        unk_token=UNK,
        padding_side="left",
        extra_special_tokens=extra,
        **tokens,
    )


#: Qwen-VL checkpoints: 4 px patches, 2 x 2 merged (a merged token is 8 x 8 px); images are
#: resized to whole merged tokens with at least 16 x 16 and at most 64 x 64 pixels
_QWEN_PATCH, _QWEN_MIN_PIXELS, _QWEN_MAX_PIXELS = 4, 16 * 16, 64 * 64


def _qwen_vl_parts(
    family: str, tokenizer: Any, text_kwargs: dict[str, Any], initializer_range: float
) -> tuple[Any, Any]:
    """``(config, processor)`` of a tiny Qwen2.5-VL or Qwen3-VL (32 x 32 px image: 16 tokens)."""
    ids = tokenizer.convert_tokens_to_ids
    vision = dict(
        depth=2,
        hidden_size=_CKPT_WIDTH,
        intermediate_size=2 * _CKPT_WIDTH,
        num_heads=4,
        patch_size=_QWEN_PATCH,
        spatial_merge_size=2,
        temporal_patch_size=2,
        out_hidden_size=_CKPT_WIDTH,
        initializer_range=initializer_range,
    )
    text = {
        **text_kwargs,
        "num_attention_heads": 2,  # head_dim 16: 8 rotary frequencies over (t, h, w)
        "num_key_value_heads": 1,
        "eos_token_id": ids("<|im_end|>"),
        "pad_token_id": ids("<|endoftext|>"),
        "bos_token_id": None,
    }
    special = dict(
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )
    size = {"shortest_edge": _QWEN_MIN_PIXELS, "longest_edge": _QWEN_MAX_PIXELS}
    patches = dict(patch_size=_QWEN_PATCH, temporal_patch_size=2, merge_size=2)
    if family == "qwen2_5_vl":
        # one windowed and one full-attention block (windows of 2 x 2 merged tokens)
        vision.update(window_size=16, fullatt_block_indexes=[1])
        text["rope_parameters"] = {
            "rope_type": "default",
            "rope_theta": 10000.0,
            "mrope_section": [2, 3, 3],
        }
        config = transformers.Qwen2_5_VLConfig(vision_config=vision, text_config=text, **special)
        image_processor = transformers.Qwen2VLImageProcessor(size=size, **patches)
        video_processor = transformers.Qwen2VLVideoProcessor(size=size, **patches)
        processor_class = transformers.Qwen2_5_VLProcessor
    else:
        # DeepStack: both vision blocks feed the first two decoder layers, as blocks 8, 16,
        # 24 feed layers 0-2 of the public checkpoints
        vision.update(num_position_embeddings=16, deepstack_visual_indexes=[0, 1])
        text["head_dim"] = _CKPT_WIDTH // 2
        text["rope_parameters"] = {
            "rope_type": "default",
            "rope_theta": 10000.0,
            "mrope_section": [4, 2, 2],
            "mrope_interleaved": True,
        }
        config = transformers.Qwen3VLConfig(vision_config=vision, text_config=text, **special)
        half = {"image_mean": [0.5] * 3, "image_std": [0.5] * 3}  # Qwen3-VL's normalisation
        image_processor = transformers.Qwen2VLImageProcessor(size=size, **patches, **half)
        video_processor = transformers.Qwen3VLVideoProcessor(size=size, **patches, **half)
        processor_class = transformers.Qwen3VLProcessor
    processor = processor_class(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=CHAT_TEMPLATES[family],
    )
    return config, processor


def _onevision_parts(
    tokenizer: Any,
    text_kwargs: dict[str, Any],
    vision_kwargs: dict[str, Any],
    initializer_range: float,
) -> tuple[Any, Any]:
    """``(config, processor)`` of a tiny LLaVA-OneVision: SigLIP tower (32 px, 8 px patches: 16
    tokens per view, no CLS), Qwen2 LLM, any-resolution crops up to 64 x 64 px."""
    ids = tokenizer.convert_tokens_to_ids
    text = {
        **text_kwargs,
        "eos_token_id": ids("<|im_end|>"),
        "pad_token_id": ids("<|endoftext|>"),
        "bos_token_id": None,
    }
    pinpoints = [[32, 32], [32, 64], [64, 32], [64, 64]]
    config = transformers.LlavaOnevisionConfig(
        vision_config=transformers.SiglipVisionConfig(**vision_kwargs),
        text_config=transformers.Qwen2Config(**text),
        image_token_id=ids(IMAGE),
        video_token_id=ids("<video>"),
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        image_grid_pinpoints=pinpoints,
        vision_aspect_ratio="anyres_max_9",
        initializer_range=initializer_range,
    )
    size = {"height": _CKPT_IMAGE, "width": _CKPT_IMAGE}
    processor = transformers.LlavaOnevisionProcessor(
        image_processor=transformers.LlavaOnevisionImageProcessor(
            size=size, image_grid_pinpoints=pinpoints
        ),
        tokenizer=tokenizer,
        video_processor=transformers.LlavaOnevisionVideoProcessor(size=size),
        num_image_tokens=(_CKPT_IMAGE // _CKPT_PATCH) ** 2,
        vision_feature_select_strategy="full",
        chat_template=CHAT_TEMPLATES["llava_onevision"],
        image_token=IMAGE,
        video_token="<video>",
        vision_aspect_ratio="anyres_max_9",
    )
    return config, processor


def _checkpoint_parts(family: str, tokenizer: Any, initializer_range: float) -> tuple[Any, Any]:
    """``(config, processor)`` of one tiny family (32 px images of 8 px patches, 2 layers)."""
    ids = tokenizer.convert_tokens_to_ids
    text_kwargs = dict(
        vocab_size=len(tokenizer),
        hidden_size=_CKPT_WIDTH,
        intermediate_size=2 * _CKPT_WIDTH,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        pad_token_id=ids(PAD),
        bos_token_id=ids(BOS),
        eos_token_id=ids(EOS),
        initializer_range=initializer_range,
    )
    vision_kwargs = dict(
        hidden_size=_CKPT_WIDTH,
        intermediate_size=2 * _CKPT_WIDTH,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=_CKPT_IMAGE,
        patch_size=_CKPT_PATCH,
        initializer_range=initializer_range,
    )
    if family in ("qwen2_5_vl", "qwen3_vl"):
        return _qwen_vl_parts(family, tokenizer, text_kwargs, initializer_range)
    if family == "llava_onevision":
        return _onevision_parts(tokenizer, text_kwargs, vision_kwargs, initializer_range)
    template = CHAT_TEMPLATES[family]
    if family == "internvl":
        config = transformers.InternVLConfig(
            vision_config=transformers.InternVLVisionConfig(**vision_kwargs),
            text_config=transformers.Qwen2Config(**text_kwargs),
            image_token_id=ids("<IMG_CONTEXT>"),
            image_seq_length=4,  # (32 / 8) ** 2 patches, pixel shuffle 0.5
            downsample_ratio=0.5,
            initializer_range=initializer_range,
        )
        image_processor = transformers.GotOcr2ImageProcessor(
            size={"height": _CKPT_IMAGE, "width": _CKPT_IMAGE},
            crop_to_patches=True,
            min_patches=1,
            max_patches=4,
        )
        processor = transformers.InternVLProcessor(
            image_processor=image_processor,
            tokenizer=tokenizer,
            video_processor=transformers.InternVLVideoProcessor(),
            image_seq_length=4,
            chat_template=template,
        )
        return config, processor
    vision = transformers.CLIPVisionConfig(**vision_kwargs, projection_dim=_CKPT_WIDTH)
    common = dict(
        vision_config=vision,
        text_config=transformers.LlamaConfig(**text_kwargs),
        image_token_id=ids(IMAGE),
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        initializer_range=initializer_range,
    )
    crop = {"height": _CKPT_IMAGE, "width": _CKPT_IMAGE}
    processor_kwargs = dict(
        tokenizer=tokenizer,
        patch_size=_CKPT_PATCH,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS, dropped by the 'default' strategy
        image_token=IMAGE,
        chat_template=template,
    )
    if family == "llava":
        config = transformers.LlavaConfig(**common, projector_hidden_act="gelu")
        image_processor = transformers.CLIPImageProcessor(
            size={"shortest_edge": _CKPT_IMAGE}, crop_size=crop
        )
        return config, transformers.LlavaProcessor(image_processor, **processor_kwargs)
    pinpoints = [[32, 32], [32, 64], [64, 32], [64, 64]]
    config = transformers.LlavaNextConfig(**common, image_grid_pinpoints=pinpoints)
    image_processor = transformers.LlavaNextImageProcessor(
        size={"shortest_edge": _CKPT_IMAGE}, crop_size=crop, image_grid_pinpoints=pinpoints
    )
    return config, transformers.LlavaNextProcessor(image_processor, **processor_kwargs)


def save_tiny_checkpoint(
    family: str, directory: str | Path, *, seed: int = 0, initializer_range: float = 0.1
) -> Path:
    """Write a tiny random checkpoint of ``family`` (one of :data:`CHECKPOINT_FAMILIES`)
    into ``directory`` and return its path.

    The folder is what ``save_pretrained`` writes for a real checkpoint: the model
    (config, safetensors weights, generation config) and its processor (the family's
    real processor class, image and video processors, a word-level tokenizer with the
    special tokens the processor needs, and a chat template in the style of the family's
    public checkpoints), so ``prunekit.models.load_hf(directory)`` and
    ``AutoProcessor.from_pretrained(directory)`` load it offline. Images are 32 px of
    8 px patches (16 visual tokens per LLaVA image or OneVision view; 4 per InternVL
    tile); Qwen-VL images keep their size between 16 x 16 and 64 x 64 px in 8 px merged
    tokens (4 px patches merged 2 x 2: 16 tokens for 32 x 32 px; Qwen3-VL with DeepStack
    from both vision blocks). The language model has 2 layers of width 32. Random
    weights: a pipeline check, never a measurement.
    """
    if family not in CHECKPOINT_FAMILIES:
        raise ValueError(f"family must be one of {list(CHECKPOINT_FAMILIES)}, got {family!r}")
    directory = Path(directory)
    # Qwen2 tokenizers (InternVL3's LLM, Qwen-VL, OneVision) add no BOS
    tokenizer = checkpoint_tokenizer(add_bos=family != "internvl", family=family)
    config, processor = _checkpoint_parts(family, tokenizer, initializer_range)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = transformers.AutoModelForImageTextToText.from_config(config).eval()
    generation = model.generation_config
    generation.bos_token_id = tokenizer.bos_token_id
    generation.eos_token_id = tokenizer.eos_token_id
    generation.pad_token_id = tokenizer.pad_token_id
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory
