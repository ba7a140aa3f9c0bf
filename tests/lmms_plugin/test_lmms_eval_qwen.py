"""The ``prunekit`` lmms-eval model on a tiny Qwen2.5-VL checkpoint: images of different sizes
through the processor (``image_grid_thw``, ``mm_token_type_ids``), pruned per image.

Runs where lmms-eval is installed (``tox -e lmms-eval``); skipped elsewhere.
"""

from __future__ import annotations

import pytest

pytest.importorskip("lmms_eval")

import torch  # noqa: E402
from lmms_eval.api.instance import Instance  # noqa: E402
from lmms_helpers import MAX_NEW_TOKENS, direct_answers  # noqa: E402
from PIL import Image  # noqa: E402

import prunekit  # noqa: E402
from prunekit.integrations.lmms_eval._model import PrunekitLMM  # noqa: E402
from prunekit.models import load_hf  # noqa: E402

BUDGET = 4  # merged tokens kept per image (of 25 to 50: the task's images are 40 x 40..80 px)
GEN_KWARGS = {"max_new_tokens": MAX_NEW_TOKENS, "temperature": 0, "until": ["\n\n"]}


def _request(kind: str, context: str, second, doc_id: int, index: int) -> Instance:
    return Instance(
        request_type=kind,
        arguments=(context, second, lambda doc: [doc["image"]], doc_id, "t", "test"),
        idx=index,
        metadata={"task": "t", "doc_id": doc_id, "repeats": 1},
    )


def _lmm(checkpoint, pruner, budget, docs, batch_size=1):
    lmm = PrunekitLMM(
        pretrained=str(checkpoint),
        pruner=pruner,
        budget=budget,
        device="cpu",
        batch_size=batch_size,
    )
    images = [{"image": Image.open(d["image"]).convert("RGB")} for d in docs]
    lmm.task_dict = {"t": {"test": images}}
    return lmm


def test_generate_until_on_qwen_equals_prunekits_own_answers(qwen_checkpoint, local_task):
    """Ragged batches (images of 25 to 50 merged tokens) answer as prunekit's own evaluation
    does one question at a time, pruned and unpruned; the tokens kept are counted per image."""
    model, processor = load_hf(qwen_checkpoint)
    docs = local_task.docs
    pruned = direct_answers(model, processor, docs, "resprune", BUDGET)
    unpruned = direct_answers(model, processor, docs, None, None)
    assert pruned != unpruned  # the answers depend on the tokens kept

    requests = [
        _request("generate_until", d["question"], GEN_KWARGS, i, i) for i, d in enumerate(docs)
    ]
    lmm = _lmm(qwen_checkpoint, "resprune", BUDGET, docs, batch_size=3)
    assert lmm.generate_until(requests) == pruned
    assert lmm.kept_tokens == [BUDGET] * len(docs)
    reference = _lmm(qwen_checkpoint, "none", None, docs, batch_size=3)
    assert reference.generate_until(requests) == unpruned


def test_loglikelihood_on_qwen_carries_the_token_types_over_the_continuation(
    qwen_checkpoint, local_task
):
    doc = local_task.docs[1]
    image = Image.open(doc["image"]).convert("RGB")
    question, continuation = doc["question"], "red circle"
    model, processor = load_hf(qwen_checkpoint)
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}
    ]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=[image], text=[prompt], return_tensors="pt")
    cont = processor.tokenizer(continuation, add_special_tokens=False, return_tensors="pt")
    cont_ids = cont["input_ids"]
    n = cont_ids.shape[1]
    inputs["input_ids"] = torch.cat([inputs["input_ids"], cont_ids], dim=1)
    inputs["attention_mask"] = torch.cat([inputs["attention_mask"], torch.ones_like(cont_ids)], 1)
    # the continuation is text: token type 0, so the model numbers it after the image
    types = torch.cat([inputs["mm_token_type_ids"], torch.zeros_like(cont_ids)], dim=1)
    inputs["mm_token_type_ids"] = types

    def reference(logits):  # sum of log p(token | everything before it)
        logprobs = torch.log_softmax(logits[0, -n - 1 : -1], dim=-1)
        return float(logprobs.gather(1, cont_ids[0, :, None]).sum())

    with torch.no_grad():
        full = reference(model(**inputs).logits)
        with prunekit.attach(model, "random", budget=BUDGET):
            pruned = reference(model(**inputs).logits)
    assert abs(full - pruned) > 1e-4  # pruning changes the log-probability

    requests = [_request("loglikelihood", question, continuation, 1, 0)]
    for pruner, budget, expected in (("none", None, full), ("random", BUDGET, pruned)):
        lmm = _lmm(qwen_checkpoint, pruner, budget, local_task.docs)
        [(logprob, greedy)] = lmm.loglikelihood(requests)
        assert logprob == pytest.approx(expected, abs=1e-4)
        assert isinstance(greedy, bool)
        assert lmm.kept_tokens == ([] if budget is None else [BUDGET])
