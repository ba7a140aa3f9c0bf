"""Checks a training run makes on itself: the shared-prefix path equals the stock model's
forward, and the saved (merged) LoRA model equals the trained one."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from prunekit.models import minillava
from prunekit.training.data import Source
from prunekit.training.features import Standardized
from prunekit.training.runner import Runner


def merged_projector(runner: Runner) -> torch.nn.Module:
    """The multimodal projector of ``runner``'s model."""
    return runner.model.model.multi_modal_projector


@torch.no_grad()
def lora_merge_check(
    trained: Runner,
    project: Standardized,
    merged: Runner,
    src: Source,
    feats: dict,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Logits of the first answer token: the trained model (peft LoRA layers, float32)
    against ``minillava.build``'s stock model with the saved (float16) LoRA merged, on
    two questions of each of the first 4 images of ``src``; ``RuntimeError`` when they
    differ by more than 5 % of the largest logit."""
    bf16, trained.bf16 = trained.bf16, False
    questions = [(j, qa.question) for j in range(4) for qa in src.qas[j][:2]]
    raw = feats[src.name, 224][:4].float()
    ours = trained.first_logits(project(raw), questions)
    theirs = merged.first_logits(merged_projector(merged)(raw), questions)
    trained.bf16 = bf16
    diff = float((ours - theirs).abs().max())
    same = bool((ours.argmax(-1) == theirs.argmax(-1)).all())
    log(f"LoRA merge: max |logit diff| trained vs merged {diff:.3e}, same argmax {same}")
    if diff > 0.05 * max(float(ours.abs().max()), 1.0):
        raise RuntimeError("the merged LoRA model disagrees with the trained one")
    return {"max_abs_logit_diff": diff, "same_argmax": same, "questions": len(questions)}


@torch.no_grad()
def consistency_check(
    model: Any,
    processor: Any,
    runner: Runner,
    project: Standardized,
    src: Source,
    feats: dict,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Logits of the first answer token and the answer loss: the training path (cached
    float16 features, shared prefix) vs the stock ``LlavaForConditionalGeneration``
    forward on pixels, for the first question of ``src``'s first two images;
    ``RuntimeError`` when they differ by more than 1 %."""
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
    ours = runner.first_logits(project(feats[src.name, 224][:2]), [(0, qs[0]), (1, qs[1])])
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
