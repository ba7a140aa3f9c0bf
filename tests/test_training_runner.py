"""MiniLLaVA training on a tiny language model, against by-hand computations: the
evaluation metric (:func:`prunekit.training.evaluation.evaluate`: one full forward per
question, no shared prefix, no padding; the first answer token read from its logits;
greedy decoding by repeated full forwards), the shared-prefix answer loss, and the
training loop (schedule, curriculum, checkpoint and exact resume)."""

from __future__ import annotations

import copy
import csv
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
import transformers
from tiny_models import tiny_llama_config

from prunekit.models import minillava
from prunekit.training.config import TrainConfig
from prunekit.training.data import CAPTION_PROMPT, QA, Source, objects_allowed
from prunekit.training.evaluation import (
    evaluate,
    first_token_picks,
    image_only_pruner,
    parse_pruner,
)
from prunekit.training.features import Standardized
from prunekit.training.logbook import Logger
from prunekit.training.runner import Runner
from prunekit.training.schedule import lr_at
from prunekit.training.trainer import Sources, TrainingLoop, build_stages

ANSWERS = ("red", "blue", "green", "yes")
QUESTIONS = ("what color?", "is it round?", "and the big one on the left?", "hue?", "ok")
KINDS = ("color", "shape", "")
VOCAB = 128


class CharTokenizer:
    """Characters as token ids (their code points), the two chat tokens as 1 and 2."""

    specials = {"<|im_start|>": 1, "<|im_end|>": 2}

    def __call__(self, text, add_special_tokens=False):
        ids, i = [], 0
        while i < len(text):
            for token, token_id in self.specials.items():
                if text.startswith(token, i):
                    ids.append(token_id)
                    i += len(token)
                    break
            else:
                ids.append(ord(text[i]))
                i += 1
        return {"input_ids": ids}

    def convert_tokens_to_ids(self, token):
        return self.specials[token]

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i) for i in ids if i not in self.specials.values())


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    causal = transformers.LlamaForCausalLM(
        tiny_llama_config(vocab_size=VOCAB, initializer_range=0.2)
    ).eval()
    model = SimpleNamespace(
        model=SimpleNamespace(language_model=causal.model), lm_head=causal.lm_head
    )
    project = torch.nn.Linear(8, 32)
    feats = torch.randn(5, 6, 8).to(torch.float16)  # 5 images of 6 raw tokens
    return model, project, feats


def by_hand(model, project, feats, image, question, tok, new_tokens=4):
    """First-answer-token logits and greedy text from full forwards over one sequence."""
    head, tail = minillava.prompt_parts(question)
    embed = model.model.language_model.embed_tokens
    with torch.no_grad():
        prompt = torch.cat(
            [
                embed(torch.tensor(tok(head)["input_ids"])),
                project(feats[image].float()),
                embed(torch.tensor(tok(tail)["input_ids"])),
            ]
        )
        generated, logits = [], None
        for _ in range(new_tokens):
            ids = torch.tensor(generated, dtype=torch.long)
            sequence = torch.cat([prompt, embed(ids)])[None]
            hidden = model.model.language_model(inputs_embeds=sequence).last_hidden_state
            step = model.lm_head(hidden[0, -1]).float()
            logits = step if logits is None else logits
            generated.append(int(step.argmax()))
            if generated[-1] == 2:
                generated = generated[:-1]
                break
    return logits, tok.decode(generated).strip().lower()


def test_evaluate_equals_the_metric_computed_by_hand(tiny):
    model, project, feats = tiny
    tok = CharTokenizer()
    firsts = [ord(a[0]) for a in ANSWERS]
    qas, expected_first, expected_exact, by_kind = [], [], [], {}
    n_images, q_per_image = 4, 3  # of 5 images with 4 or 5 questions each
    for image in range(5):
        row = []
        for k in range(4 + image % 2):
            question = QUESTIONS[(image + k) % len(QUESTIONS)]
            logits, text = by_hand(model, project, feats, image, question, tok)
            top2 = logits[firsts].topk(2).values
            assert float(top2[0] - top2[1]) > 1e-3  # no near-tie for rounding to flip
            pick = ANSWERS[int(logits[firsts].argmax())]
            n = len(qas) * 10 + k
            # gold: the greedy text (an exact hit), the first-token pick, or another answer
            gold = (
                text
                if n % 4 == 0
                else pick
                if n % 4 in (1, 2)
                else ANSWERS[(ANSWERS.index(pick) + 1) % 4]
            )
            kind = KINDS[n % 3]
            row.append(QA(question, gold, kind))
            if image < n_images and k < q_per_image:
                expected_first.append(pick == gold)
                expected_exact.append(text == gold)
                if kind:
                    by_kind.setdefault(kind, []).append(pick == gold)
        qas.append(row)
    src = Source("tiny", [None] * 5, qas, ANSWERS, "tiny")
    assert 0 < sum(expected_first) < len(expected_first)  # the check can tell right from wrong
    assert sum(expected_exact) > 0

    runner = Runner(model, tok, bf16=False)
    result = evaluate(runner, project, feats, src, n_images, q_per_image, batch_images=3)
    assert result["questions"] == len(expected_first) == n_images * q_per_image
    assert result["images"] == n_images
    assert result["first_token"] == pytest.approx(sum(expected_first) / len(expected_first))
    assert result["exact"] == pytest.approx(sum(expected_exact) / len(expected_exact))
    assert result["first_token_by_kind"] == pytest.approx(
        {k: sum(v) / len(v) for k, v in sorted(by_kind.items())}
    )
    # all images and questions, one batch: every question counted
    everything = evaluate(runner, project, feats, src, None, None, batch_images=8)
    assert everything["questions"] == sum(len(r) for r in qas)
    with pytest.raises(ValueError, match="batch_images"):
        evaluate(runner, project, feats, src, None, None, batch_images=0)


def test_first_token_picks_reads_the_answers_first_tokens():
    logits = torch.zeros(3, 10)
    logits[0, [2, 5, 7]] = torch.tensor([0.1, 0.9, 0.3])
    logits[1, [2, 5, 7]] = torch.tensor([2.0, 1.0, 1.5])
    logits[2, [2, 5, 7]] = torch.tensor([-1.0, -2.0, -0.5])
    logits[2, 0] = 9.0  # a higher token that is no answer's first token does not count
    assert first_token_picks(logits, [2, 5, 7]) == [1, 0, 2]
    with pytest.raises(ValueError, match="logits"):
        first_token_picks(logits[0], [2, 5, 7])


def test_parse_pruner_and_the_image_only_check():
    assert parse_pruner("pooling") == ("pooling", {})
    assert parse_pruner("random:per_image=TRUE,seed=3,mode=fast") == (
        "random",
        {"per_image": True, "seed": 3, "mode": "fast"},
    )
    with pytest.raises(ValueError, match="no pruner name"):
        parse_pruner(":seed=1")
    assert image_only_pruner("pooling") is not None
    with pytest.raises(ValueError, match="need neither text"):
        image_only_pruner("resprune")


# --------------------------------------------------------------------------- loss and loop


def test_loss_equals_the_answer_token_cross_entropy_by_hand(tiny):
    model, project, feats = tiny
    tok = CharTokenizer()
    items = [(0, QUESTIONS[0], "red"), (0, QUESTIONS[2], "green"), (1, QUESTIONS[4], "no way")]
    runner = Runner(model, tok, bf16=False)
    raw = feats[[3, 1]].float()
    loss, n_tokens = runner.loss(project(raw), items)
    embed, lm = model.model.language_model.embed_tokens, model.model.language_model
    total, count = 0.0, 0
    with torch.no_grad():
        for image, question, answer in items:
            head, tail = minillava.prompt_parts(question)
            target = tok(answer)["input_ids"] + [2]  # the answer and <|im_end|>
            sequence = torch.cat(
                [
                    embed(torch.tensor(tok(head)["input_ids"])),
                    project(raw[image]),
                    embed(torch.tensor(tok(tail)["input_ids"] + target)),
                ]
            )
            logits = model.lm_head(lm(inputs_embeds=sequence[None]).last_hidden_state[0])
            predicting = logits[-len(target) - 1 : -1]  # position t predicts token t + 1
            total += float(F.cross_entropy(predicting, torch.tensor(target), reduction="sum"))
            count += len(target)
    assert n_tokens == count == 4 + 6 + 7
    assert float(loss.detach()) == pytest.approx(total / count, rel=1e-5)
    loss.backward()  # the loss trains the projector
    assert project.weight.grad is not None and project.weight.grad.abs().sum() > 0
    project.zero_grad()


def _tiny_run(tmp_path, tok, resume=False):
    """A TrainingLoop over tiny sources and features on a fresh tiny model."""
    torch.manual_seed(4)  # the same (frozen) language model in both runs
    causal = transformers.LlamaForCausalLM(
        tiny_llama_config(vocab_size=VOCAB, initializer_range=0.2)
    ).eval()
    causal.requires_grad_(False)
    model = SimpleNamespace(
        model=SimpleNamespace(language_model=causal.model), lm_head=causal.lm_head
    )
    torch.manual_seed(5 if resume else 4)  # the resumed run starts from another projector
    project = Standardized(torch.nn.Linear(8, 32), torch.zeros(8), torch.ones(8))

    def source(name, n, questions, n_objects=None):
        qas = [
            [QA(q, ANSWERS[(i + k) % 4], KINDS[k % 3]) for k, q in enumerate(questions)]
            for i in range(n)
        ]
        return Source(name, [None] * n, qas, ANSWERS, name, n_objects)

    shapes_train = source("shapes_train", 6, QUESTIONS[:3], n_objects=[2, 3, 4, 5, 6, 7])
    captions = Source(
        "captions_train",
        shapes_train.images,
        [[QA(CAPTION_PROMPT, "red blue")] for _ in range(6)],
        (),
        shapes_train.key,
        shapes_train.n_objects,
    )
    sources = Sources(
        source("easyvqa_train", 5, QUESTIONS[1:4]),
        source("easyvqa_test", 3, QUESTIONS[:2]),
        shapes_train,
        source("shapes_test", 3, QUESTIONS[2:4]),
        captions,
    )
    generator = torch.Generator().manual_seed(0)  # the same features in both runs
    feats = {}
    for src in (
        sources.easyvqa_train,
        sources.easyvqa_test,
        sources.shapes_train,
        sources.shapes_test,
    ):
        for res, tokens in ((112, 4), (224, 6)):
            feats[src.name, res] = torch.randn(len(src.qas), tokens, 8, generator=generator)
    for res in (112, 224):
        feats[captions.name, res] = feats[shapes_train.name, res]
    config = TrainConfig(
        cache_dir=tmp_path,
        resolutions=[112, 224],
        batch_images=2,
        questions_per_image=2,
        stage1_steps=2,
        stage2_steps=4,
        lr1=1e-2,
        lr2=1e-2,
        caption_fraction=0.1,
        curriculum=0.5,
        eval_every=1000,
        eval_images=2,
        eval_batch_images=2,
        checkpoint_every=3,
        resume=resume,
    )
    log = Logger(config.work_dir / "log.txt")
    loop = TrainingLoop(config, model, Runner(model, tok, False), project, {}, sources, feats, log)
    return loop, build_stages(config, sources)


def _timeless(rows):
    return [{k: v for k, v in r.items() if k not in ("seconds", "elapsed")} for r in rows]


def test_training_loop_follows_the_schedule_and_resumes_exactly(tmp_path, monkeypatch):
    tok = CharTokenizer()
    loop, stages = _tiny_run(tmp_path, tok)
    before = copy.deepcopy(loop.project.state_dict())
    lm_before = copy.deepcopy(loop.model.model.language_model.state_dict())
    loop.run(stages)
    curve = loop.curve
    assert [r["stage"] for r in curve] == ["caption"] * 2 + ["vqa"] * 4
    assert [r["step"] for r in curve] == [0, 1, 0, 1, 2, 3]
    assert [r["questions"] for r in curve[:2]] == [2, 2]  # one caption per image
    for r in curve:
        stage = stages[0] if r["stage"] == "caption" else stages[1]
        assert r["lr"] == pytest.approx(lr_at(r["step"] / stage.steps, 1e-2, 0.05))
        assert r["resolution"] in (112, 224) and math.isfinite(r["loss"])
    # the curriculum: 1 + span/2 ... objects over the first half of stage 2, then all
    assert [r["max_objects"] for r in curve] == [None, None] + [
        objects_allowed(s / 4, 0.5) for s in range(4)
    ]
    assert [(e["stage"], e["step"]) for e in loop.evals] == [
        ("init", 0),
        ("caption", 2),
        ("vqa", 4),
    ]
    assert set(loop.evals[-1]) >= {"easyvqa_test", "shapes_test"}
    with open(loop.curve_path) as f:
        assert len(list(csv.DictReader(f))) == 6
    after = loop.project.state_dict()
    assert (after["projector.weight"] - before["projector.weight"]).abs().max() > 1e-4
    for k, v in loop.model.model.language_model.state_dict().items():
        assert torch.equal(v, lm_before[k]), k  # the frozen LLM did not move
    assert loop.checkpoint_path.is_file()  # after stage 2 step 3 (of 4)

    resumed, stages = _tiny_run(tmp_path, tok, resume=True)
    assert not torch.equal(
        resumed.project.state_dict()["projector.weight"], after["projector.weight"]
    )
    resumed.run(stages)
    assert _timeless(resumed.curve) == _timeless(curve)
    assert _timeless(resumed.evals) == _timeless(loop.evals)
    for k, v in resumed.project.state_dict().items():
        torch.testing.assert_close(v, after[k], rtol=1e-6, atol=1e-7)
