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
