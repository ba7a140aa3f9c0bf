"""Answer distributions over a closed answer set (issue 16, item 1): teacher-forced
log-probabilities against a forward pass of the whole prompt + answer; KL from the
unpruned distribution and the log-probability of the unpruned answer in the run records;
the cached unpruned distributions give exactly the numbers of the uncached ones."""

from __future__ import annotations

import json
import math

import pytest
import torch

import prunekit
from prunekit.experiments import attach_options, bench, build_model, build_pruner, compose
from prunekit.experiments import runner as runner_module
from prunekit.experiments.bench import answer_logprobs
from prunekit.experiments.datasets import tiny as tiny_data
from prunekit.models import tiny

PROMPT = "<image>\n{question}"
#: ``generate`` hands its scores on in float32: agreement to float32 rounding of the logits
ATOL = 1e-6
#: the tiny data set's one-word answers and answers of two and three tokens
ANSWERS = ["red", "circle", "yes", "no", "red circle", "blue big star"]


@pytest.fixture(scope="module")
def model_and_processor():
    model, processor = tiny.load(initializer_range=0.2)
    return model.double(), processor


def by_hand(model, processor, samples, answers, context=None):
    """Each (question, answer) alone: one forward over the prompt + the answer's tokens, the
    log-softmax of the scores before each answer token, summed, then normalised."""
    rows = []
    for sample in samples:
        inputs = processor(
            images=[sample.get_image()], text=[PROMPT.replace("{question}", sample.query)]
        )
        scores = []
        for answer in answers:
            tokens = processor.tokenizer.encode(answer, add_special_tokens=False)
            ids = torch.cat([inputs["input_ids"], torch.tensor([tokens])], dim=1)
            with context() if context else torch.no_grad(), torch.no_grad():
                logits = model(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    pixel_values=inputs["pixel_values"].double(),
                ).logits[0]
            # the scores before answer token s sit len(tokens) - s positions from the end
            steps = torch.log_softmax(logits[-len(tokens) - 1 : -1].double(), dim=-1)
            scores.append(sum(float(steps[s, t]) for s, t in enumerate(tokens)))
        total = math.log(sum(math.exp(x) for x in scores))
        rows.append([x - total for x in scores])
    return torch.tensor(rows, dtype=torch.float64)


def test_answer_distribution_equals_a_forward_over_prompt_and_answer(model_and_processor):
    model, processor = model_and_processor
    samples = tiny_data(n_samples=5).samples
    assert [len(processor.tokenizer.encode(a, add_special_tokens=False)) for a in ANSWERS] == [
        1, 1, 1, 1, 2, 3,
    ]  # fmt: skip
    got = answer_logprobs(model, processor, samples, ANSWERS, prompt=PROMPT, batch_size=4)
    expected = by_hand(model, processor, samples, ANSWERS)
    assert got.dtype == torch.float64 and got.shape == (5, len(ANSWERS))
    assert not torch.isnan(got).any()
    torch.testing.assert_close(got, expected, rtol=0, atol=ATOL)
    assert torch.exp(got).sum(-1).sub(1).abs().max() < 1e-12
    # single-token answers only: the prompt's last scores (one row per question)
    short = answer_logprobs(model, processor, samples, ANSWERS[:4], prompt=PROMPT, batch_size=2)
    torch.testing.assert_close(
        short, by_hand(model, processor, samples, ANSWERS[:4]), rtol=0, atol=ATOL
    )


def test_pruned_answer_distribution_equals_a_pruned_forward(model_and_processor):
    """Random selection keeps the same tokens whatever the text, so the pruned forward over the
    prompt + answer keeps what the pruned prompt keeps."""
    model, processor = model_and_processor
    samples = tiny_data(n_samples=3).samples
    pruner = prunekit.create_pruner("random")

    def context():
        return prunekit.attach(model, pruner, budget=8)

    got = answer_logprobs(
        model, processor, samples, ANSWERS, prompt=PROMPT, batch_size=4, context=context
    )
    expected = by_hand(model, processor, samples, ANSWERS, context=context)
    torch.testing.assert_close(got, expected, rtol=0, atol=ATOL)
    unpruned = answer_logprobs(model, processor, samples, ANSWERS, prompt=PROMPT, batch_size=4)
    assert (got - unpruned).abs().max() > 1e-3  # pruning changed the distributions


def test_answer_distribution_refuses_bad_arguments(model_and_processor):
    model, processor = model_and_processor
    samples = tiny_data(n_samples=1).samples
    with pytest.raises(ValueError, match="closed answer set"):
        answer_logprobs(model, processor, samples, [], prompt=PROMPT)
    with pytest.raises(ValueError, match="no tokens"):
        answer_logprobs(model, processor, samples, ["red", ""], prompt=PROMPT)
    with pytest.raises(ValueError, match="batch_size"):
        answer_logprobs(model, processor, samples, ["red"], prompt=PROMPT, batch_size=0)


def _config(budget, *extra):
    return compose(
        [
            "model=tiny",
            "model.loader.initializer_range=0.2",
            "data=tiny",
            "data.n_samples=6",
            "pruner=resprune",
            f"budget={budget}",
            "bench.progress=false",
            "bench.batch_size=4",
            *extra,
        ]
    )


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]


def test_all_tokens_kl_0_and_loyal_pruned_kl_positive_and_the_cache_exact(tmp_path, monkeypatch):
    unpruned_passes = []
    real = runner_module._unpruned_distribution

    def counting(*args):
        unpruned_passes.append(1)
        return real(*args)

    monkeypatch.setattr(runner_module, "_unpruned_distribution", counting)
    cache = tmp_path / ".cache"
    # all 64 tokens kept: the pruned model is the unpruned one
    full = runner_module.run_dataset(_config(64), tmp_path / "full", cache_dir=cache)
    assert full["metrics"]["loyalty"] == 1.0
    assert full["metrics"]["kl"] == 0.0 and full["metrics"]["kl_ci95"] == [0.0, 0.0]
    records = _records(tmp_path / "full")
    assert all(r["loyal"] and r["kl"] == 0.0 for r in records)
    [stored] = cache.glob("distribution-*.json")
    reference = torch.tensor(json.loads(stored.read_text())["logprobs"], dtype=torch.float64)
    answers = full["data"]["answers"]
    assert reference.shape == (6, len(answers))
    for i, r in enumerate(records):  # the unpruned answer's log-probability, by its column
        assert r["logprob_reference"] == reference[i, answers.index(r["reference"])].item()

    # 8 of 64 tokens: the distributions move; the unpruned pass is read from the cache
    pruned = runner_module.run_dataset(_config(8), tmp_path / "pruned", cache_dir=cache)
    assert len(unpruned_passes) == 1
    records = _records(tmp_path / "pruned")
    assert max(r["kl"] for r in records) > 1e-4 and min(r["kl"] for r in records) >= 0
    assert pruned["metrics"]["kl"] == pytest.approx(sum(r["kl"] for r in records) / 6)
    low, high = pruned["metrics"]["kl_ci95"]
    assert low < pruned["metrics"]["kl"] < high
    mean_logprob = sum(r["logprob_reference"] for r in records) / 6
    assert pruned["metrics"]["logprob_reference"] == pytest.approx(mean_logprob)
    # each record against the pruned distribution (checked above against forwards by hand)
    cfg = _config(8)
    model, processor = build_model(cfg)
    pruner = build_pruner(cfg)
    options = attach_options(cfg, processor)
    distribution = answer_logprobs(
        model,
        processor,
        tiny_data(n_samples=6).samples,
        answers,
        prompt=PROMPT,
        batch_size=4,
        context=lambda: prunekit.attach(model, pruner, budget=8, **options),
    )
    for i, r in enumerate(records):
        p, q = reference[i].tolist(), distribution[i].tolist()
        kl = sum(math.exp(a) * (a - b) for a, b in zip(p, q))
        assert r["kl"] == pytest.approx(kl, rel=1e-9, abs=1e-12)
        assert r["logprob_reference"] == q[answers.index(r["reference"])]
    assert any(r["prediction"] != r["reference"] for r in records)  # the column is the reference's

    # the uncached path (no cache folder) gives exactly the same numbers
    uncached = runner_module.run_dataset(_config(8), tmp_path / "uncached", cache_dir=None)
    assert len(unpruned_passes) == 2
    assert _records(tmp_path / "uncached") == records
    assert uncached["metrics"]["kl"] == pruned["metrics"]["kl"]
    assert uncached["metrics"]["logprob_reference"] == pruned["metrics"]["logprob_reference"]


def test_bench_distribution_false_records_no_distributions(tmp_path):
    result = runner_module.run_dataset(
        _config(8, "bench.distribution=false"), tmp_path / "off", cache_dir=tmp_path / ".cache"
    )
    assert "kl" not in result["metrics"] and "kl" not in _records(tmp_path / "off")[0]
    assert not list((tmp_path / ".cache").glob("distribution-*.json"))
    assert "loyalty" in result["metrics"]


def test_score_records_kl_and_the_unpruned_answers_logprob_by_hand():
    from prunekit.experiments.bench import Generation, score
    from prunekit.experiments.datasets import Sample

    samples = [Sample(id=f"q{i}", image=None, question="?", answer="red") for i in range(3)]
    answers = ["red", "blue"]
    unpruned = torch.log(torch.tensor([[0.5, 0.5], [0.9, 0.1], [0.2, 0.8]], dtype=torch.float64))
    pruned = torch.log(torch.tensor([[0.25, 0.75], [0.9, 0.1], [0.6, 0.4]], dtype=torch.float64))
    # the third unpruned answer was generated freely and is not in the answer set
    reference = ["Red", "red", "purple"]
    metrics, rows = score(
        samples,
        Generation(answers=["blue", "red", "red"]),
        reference,
        distribution=pruned,
        reference_distribution=unpruned,
        answers=answers,
    )
    kl = [
        0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75),
        0.0,
        0.2 * math.log(0.2 / 0.6) + 0.8 * math.log(0.8 / 0.4),
    ]
    assert [r["kl"] for r in rows] == pytest.approx(kl, abs=1e-12)
    assert [r["logprob_reference"] for r in rows] == [math.log(0.25), math.log(0.9), None]
    assert [r["loyal"] for r in rows] == [False, True, False]
    assert metrics["kl"] == pytest.approx(sum(kl) / 3, abs=1e-12)
    assert metrics["logprob_reference"] == pytest.approx((math.log(0.25) + math.log(0.9)) / 2)
    assert metrics["logprob_reference_n"] == 2
    with pytest.raises(ValueError, match="reference_distribution"):
        score(
            samples,
            Generation(answers=["red"] * 3),
            reference,
            distribution=pruned,
            answers=answers,
        )
    with pytest.raises(ValueError, match="one column per answer"):
        score(
            samples,
            Generation(answers=["red"] * 3),
            reference,
            distribution=pruned,
            reference_distribution=unpruned,
            answers=["red", "blue", "green"],
        )


# -- first-token scoring: the distribution from the answering pass itself ----------------


def test_first_token_distribution_by_hand():
    # vocabulary of 4; answers start with tokens 1 and 3
    logits = torch.tensor([[0.0, math.log(2.0), 5.0, math.log(6.0)]])
    got = bench.first_token_distribution(logits, [1, 3])
    torch.testing.assert_close(
        got, torch.tensor([[math.log(0.25), math.log(0.75)]], dtype=torch.float64)
    )
    assert got.dtype == torch.float64


def test_answer_first_tokens_refuses_shared_first_tokens(model_and_processor):
    _, processor = model_and_processor
    assert bench.answer_first_tokens(processor, ["red", "circle"]) == [
        processor.tokenizer.encode(a, add_special_tokens=False)[0] for a in ("red", "circle")
    ]
    with pytest.raises(ValueError, match="'red' and 'red circle' start with the same token"):
        bench.answer_first_tokens(processor, ["red", "red circle"])
    with pytest.raises(ValueError, match="no tokens"):
        bench.answer_first_tokens(processor, ["red", ""])


@pytest.mark.parametrize("budget", [None, 8])
def test_first_token_scores_equal_a_forward_and_pick_the_generated_answer(
    model_and_processor, budget
):
    """The answering pass's distribution is the last prompt position's log-softmax at the
    answers' first tokens (a plain forward by hand, pruned the same way), and the closed
    greedy answer is its argmax."""
    model, processor = model_and_processor
    data = tiny_data(n_samples=6)
    pruner = prunekit.create_pruner("random")

    def context():
        return prunekit.attach(model, pruner, budget=budget)

    scope = context if budget else None
    generation = bench.generate_answers(
        model,
        processor,
        data.samples,
        prompt=PROMPT,
        max_new_tokens=4,
        batch_size=4,
        answers=data.answers,
        context=scope,
        first_token_scores=True,
    )
    got = generation.answer_logprobs
    assert got.shape == (6, len(data.answers)) and got.dtype == torch.float64
    firsts = [processor.tokenizer.encode(a, add_special_tokens=False)[0] for a in data.answers]
    rows = []
    for sample in data.samples:
        inputs = processor(
            images=[sample.get_image()], text=[PROMPT.replace("{question}", sample.query)]
        )
        with scope() if scope else torch.no_grad(), torch.no_grad():
            logits = model(
                input_ids=inputs["input_ids"],
                attention_mask=inputs["attention_mask"],
                pixel_values=inputs["pixel_values"].double(),
            ).logits[0, -1]
        rows.append(torch.log_softmax(torch.log_softmax(logits.double(), -1)[firsts], -1))
    torch.testing.assert_close(got, torch.stack(rows), rtol=0, atol=ATOL)
    picked = [data.answers[i] for i in got.argmax(-1).tolist()]
    assert [a.strip() for a in generation.answers] == picked
    # the full (teacher-forced) scoring of single-token answers is the same distribution
    full = answer_logprobs(
        model, processor, data.samples, data.answers, prompt=PROMPT, batch_size=4, context=scope
    )
    if all(len(processor.tokenizer.encode(a, add_special_tokens=False)) == 1 for a in data.answers):
        torch.testing.assert_close(got, full, rtol=0, atol=ATOL)


def test_run_with_first_token_scoring_records_kl_without_a_distribution_pass(tmp_path, monkeypatch):
    calls = []
    real = runner_module.answer_logprobs
    monkeypatch.setattr(
        runner_module, "answer_logprobs", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    first = "bench.answer_scoring=first_token"
    full_tokens = runner_module.run_dataset(
        _config(1.0, first), tmp_path / "all", cache_dir=tmp_path / ".cache"
    )
    assert full_tokens["metrics"]["kl"] == 0.0  # same pass, same numbers
    pruned = runner_module.run_dataset(
        _config(8, first), tmp_path / "pruned", cache_dir=tmp_path / ".cache"
    )
    assert calls == []  # neither the unpruned nor the pruned runs teacher-forced anything
    assert pruned["metrics"]["kl"] > 0
    records = _records(tmp_path / "pruned")
    assert all(r["kl"] >= 0 for r in records)
    # the cached unpruned distribution is the one a fresh unpruned pass gives
    uncached = runner_module.run_dataset(_config(8, first), tmp_path / "uncached")
    assert _records(tmp_path / "uncached") == records
    assert uncached["metrics"]["kl"] == pruned["metrics"]["kl"]
    with pytest.raises(ValueError, match="bench.closed_answers=true"):
        runner_module.run_dataset(
            _config(8, first, "bench.closed_answers=false"), tmp_path / "open"
        )
    with pytest.raises(ValueError, match="answer_scoring"):
        compose(["model=tiny", "data=tiny", "bench.answer_scoring=argmax"])
