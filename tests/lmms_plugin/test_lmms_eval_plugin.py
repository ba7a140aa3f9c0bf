"""The ``prunekit`` model of lmms-eval, end to end on a tiny checkpoint and a local task.

Runs where lmms-eval is installed (``tox -e lmms-eval``, ``scripts/bootstrap_lmms_eval.sh
--test``); skipped elsewhere. (The folder is not named ``lmms_eval``: with ``tests/`` on
``sys.path`` it would shadow the real package as a namespace package.)
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lmms_eval")

import torch  # noqa: E402
from lmms_eval.api.instance import Instance  # noqa: E402
from lmms_helpers import (  # noqa: E402
    TASK,
    direct_answers,
    exact_match_score,
    write_task,
)

import prunekit  # noqa: E402
from prunekit.integrations.lmms_eval._model import PrunekitLMM  # noqa: E402

BUDGET = 4  # of the tiny checkpoint's 16 visual tokens per image
HERE = Path(__file__).parent


def _load(checkpoint):
    from prunekit.models import load_hf

    return load_hf(checkpoint)


def _evaluate(model_args: str, task_folder: Path, batch_size: int = 1) -> dict:
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(task_folder), include_defaults=False)
    return simple_evaluate(
        model="prunekit",
        model_args=model_args,
        tasks=[TASK],
        task_manager=manager,
        batch_size=batch_size,
        device="cpu",
        log_samples=True,
        bootstrap_iters=0,
    )


def _responses(results: dict) -> list[str]:
    samples = sorted(results["samples"][TASK], key=lambda s: s["doc_id"])
    return [s["filtered_resps"][0] for s in samples]


def test_lmms_eval_finds_the_prunekit_entry_point():
    from lmms_eval import models

    # registered by the entry point while lmms-eval imports itself (a failing entry point
    # would only be logged, and "prunekit" would be missing here)
    assert "prunekit" in models.list_available_models()
    assert models.get_model_manifest("prunekit_hf").model_id == "prunekit"
    assert models.get_model("prunekit") is PrunekitLMM
    assert models.get_model("prunekit_hf") is PrunekitLMM


def test_model_args_configure_the_pruner_and_report_a_wrong_parameter(checkpoint):
    lmm = PrunekitLMM.create_from_arg_string(
        f"pretrained={checkpoint},pruner=resprune,budget=0.25,alpha=2.5,aggregation=mean",
        {"batch_size": 2, "device": "cpu"},
    )
    assert (lmm.budget, lmm.batch_size, str(lmm.device)) == (0.25, 2, "cpu")
    assert (lmm.pruner.alpha, lmm.pruner.aggregation) == (2.5, "mean")
    with pytest.raises(TypeError, match="alpha"):
        PrunekitLMM(pretrained=str(checkpoint), pruner="resprune", budget=8, alpha="high")
    with pytest.raises(TypeError, match="no parameter 'alpah'"):
        PrunekitLMM(pretrained=str(checkpoint), pruner="resprune", budget=8, alpah=2.0)
    with pytest.raises(NotImplementedError, match="multi-round"):
        lmm.generate_until_multi_round([])


def test_local_task_scores_equal_prunekits_own_evaluation(checkpoint, tmp_path):
    model, processor = _load(checkpoint)
    docs = write_task(tmp_path / "probe").docs
    pruned = direct_answers(model, processor, docs, "resprune", BUDGET)
    unpruned = direct_answers(model, processor, docs, None, None)
    assert pruned != unpruned  # the tiny model's answers depend on the tokens kept
    # targets: the pruned answer for half the questions, so the score is neither 0 nor 1
    targets = [a if i % 2 == 0 else "yes" for i, a in enumerate(pruned)]
    task = write_task(tmp_path / "task", answers=targets)
    expected = exact_match_score(pruned, task.docs)
    assert 0 < expected < 1

    for batch_size in (1, 4):  # batched generation (left padding) answers the same
        results = _evaluate(
            f"pretrained={checkpoint},pruner=resprune,budget={BUDGET}", task.folder, batch_size
        )
        assert _responses(results) == pruned
        assert results["results"][TASK]["exact_match,none"] == pytest.approx(expected)

    reference = _evaluate(f"pretrained={checkpoint},pruner=none", task.folder, 2)
    assert _responses(reference) == unpruned


def _ll_request(context: str, continuation: str, image, index: int) -> Instance:
    return Instance(
        request_type="loglikelihood",
        arguments=(context, continuation, lambda doc: [doc["image"]], 0, "t", "test"),
        idx=index,
        metadata={"task": "t", "doc_id": 0, "repeats": 1},
    )


def test_loglikelihood_is_the_continuations_log_prob_with_the_image(checkpoint, local_task):
    from PIL import Image

    image = Image.open(local_task.docs[0]["image"]).convert("RGB")
    question, continuation = "what color is the shape?", "red circle"
    model, processor = _load(checkpoint)
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}
    ]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=[image], text=[prompt], return_tensors="pt")
    cont = processor.tokenizer(continuation, add_special_tokens=False, return_tensors="pt")
    ids = torch.cat([inputs["input_ids"], cont["input_ids"]], dim=1)
    n = cont["input_ids"].shape[1]

    def reference(logits):  # sum of log p(token | everything before it)
        logprobs = torch.log_softmax(logits[0, -n - 1 : -1], dim=-1)
        return float(logprobs.gather(1, cont["input_ids"][0, :, None]).sum())

    with torch.no_grad():
        full = reference(model(input_ids=ids, pixel_values=inputs["pixel_values"]).logits)
        with prunekit.attach(model, "random", budget=BUDGET, tokenizer=processor.tokenizer):
            pruned = reference(model(input_ids=ids, pixel_values=inputs["pixel_values"]).logits)
    assert abs(full - pruned) > 1e-4  # pruning changes the log-probability

    requests = [_ll_request(question, continuation, image, 0)]
    doc = {"image": image}
    for pruner, budget, expected in (("none", None, full), ("random", BUDGET, pruned)):
        lmm = PrunekitLMM(pretrained=str(checkpoint), pruner=pruner, budget=budget, device="cpu")
        lmm.task_dict = {"t": {"test": [doc]}}
        [(logprob, greedy)] = lmm.loglikelihood(requests)
        assert logprob == pytest.approx(expected, abs=1e-4)
        assert isinstance(greedy, bool)
        assert lmm.kept_tokens == ([] if budget is None else [BUDGET])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_give_the_single_process_scores(checkpoint, local_task, tmp_path):
    """``accelerate launch --multi_gpu --num_processes 2`` on CPU (gloo): each rank answers a
    shard of the questions, lmms-eval gathers them (``--multi_gpu``: without it accelerate runs
    one process on a machine without a GPU)."""
    model_args = f"pretrained={checkpoint},pruner=resprune,budget={BUDGET}"
    single = _evaluate(model_args, local_task.folder)
    out = tmp_path / "two.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(_free_port()),
        str(HERE / "run_lmms_eval.py"),
        model_args,
        str(local_task.folder),
        str(out),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-8000:]
    two = json.loads(out.read_text())
    assert two["world_size"] == 2
    assert two["responses"] == _responses(single)
    assert two["exact_match"] == single["results"][TASK]["exact_match,none"]
