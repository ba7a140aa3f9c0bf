"""Benchmark data sets (issue 14, items 2-3): the public benchmarks' layouts written to a
temporary folder, loaded, run end to end on the tiny model and scored by their official
metric; batched, timed evaluation with the accounting in the record; the unpruned
reference answers computed once per sweep."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import pytest
import torch
from PIL import Image

import prunekit
from prunekit import accounting, metrics
from prunekit.data import benchmarks
from prunekit.experiments import ConfigError, ablate, build_model, compose, load_data
from prunekit.experiments import runner as runner_module
from prunekit.experiments.bench import Generation, generate_answers, score
from prunekit.experiments.datasets import Sample
from prunekit.models import tiny

datasets = pytest.importorskip("datasets")

SHORT = "Answer the question using a single word or phrase."
MC = "Answer with the option's letter from the given choices directly."


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path, monkeypatch):
    """``datasets`` caches what it reads in a scratch folder, not in the home folder."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))


@pytest.fixture
def named_tokens(monkeypatch):
    """The tiny model's free-form answers as words: a token id its word-level tokenizer has no
    word for decodes as ``w<id>`` (not ``<unk>``), so that answers differ as the ids do."""

    def decode(self, ids, skip_special_tokens=False):
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else ids
        return " ".join(
            self._words.get(int(i), f"w{int(i)}")
            for i in ids
            if not (skip_special_tokens and i < len(tiny.SPECIALS))
        )

    monkeypatch.setattr(tiny.WordTokenizer, "decode", decode)


def write_images(folder: Path, names: list[str]) -> list[Image.Image]:
    """One picture per name, each of another size and colour (ragged batches)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    images = []
    for i, name in enumerate(names):
        image = Image.new(
            "RGB", (40 + 12 * i, 72 - 6 * i), tuple(rng.randrange(256) for _ in "rgb")
        )
        image.save(folder / name)
        images.append(image)
    return images


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


QUESTIONS = [
    "what color is the shape?",
    "is there a dog in the image?",
    "how many objects are there?",
    "what is the man holding?",
    "where is the cat?",
]


def vqav2_rows(answers: list[list[str]]) -> list[dict]:
    """VQAv2's layout: integer image ids, ten answer records per question."""
    return [
        {
            "question_id": 262148000 + i,
            "image_id": i,
            "question": QUESTIONS[i],
            "answers": [
                {"answer": a, "answer_confidence": "yes", "answer_id": k + 1}
                for k, a in enumerate(human)
            ],
            "answer_type": "other",
        }
        for i, human in enumerate(answers)
    ]


def image_names(n: int) -> list[str]:
    return [f"COCO_val2014_{i:012d}.jpg" for i in range(n)]


# -- loading each public layout -------------------------------------------------------------
def test_vqav2_and_textvqa_layouts_load_with_their_ten_answers(tmp_path):
    root = tmp_path / "val2014"
    pictures = write_images(root, image_names(3))
    human = [["down"] * 7 + ["up"] * 3, ["yes"] * 10, ["2"] * 4 + ["3"] * 6]
    vqav2 = write_jsonl(tmp_path / "vqav2.jsonl", vqav2_rows(human))
    questions = benchmarks.load(
        "vqa", vqav2, image_root=root, image_file="COCO_val2014_%012d.jpg", n_samples=2
    )
    assert [q.id for q in questions] == ["262148000", "262148001"]
    assert questions[0].answers == tuple(human[0]) and questions[0].answer == "down"
    assert questions[0].prompt == f"what color is the shape?\n{SHORT}"
    assert questions[1].image().size == pictures[1].size
    # TextVQA's json: {"data": [...]} with answer strings and string image ids
    textvqa = tmp_path / "TextVQA_0.5.1_val.json"
    textvqa.write_text(
        json.dumps(
            {
                "dataset_name": "textvqa",
                "data": [
                    {
                        "question_id": 34602,
                        "image_id": "COCO_val2014_000000000002",
                        "question": "what is the brand of this camera?",
                        "answers": ["nous les gosses"] * 3 + ["dakota"] * 7,
                    }
                ],
            }
        )
    )
    [q] = benchmarks.load("vqa", textvqa, image_root=root, image_file="%s.jpg", prompt_suffix="")
    assert q.answer == "dakota" and len(q.answers) == 10  # the most common human answer
    assert q.prompt == "what is the brand of this camera?"  # an empty suffix: none
    assert q.image().size == pictures[2].size


def test_gqa_questions_keyed_by_id_with_image_ids(tmp_path):
    write_images(tmp_path / "images", ["n161313.jpg", "n235859.jpg"])
    path = tmp_path / "testdev_balanced_questions.json"
    path.write_text(
        json.dumps(
            {
                "20968975": {
                    "imageId": "n161313",
                    "question": "Is the sky dark?",
                    "answer": "yes",
                    "fullAnswer": "Yes, the sky is dark.",
                    "isBalanced": True,
                    "types": {"structural": "verify", "semantic": "attr"},
                    "semantic": [{"operation": "select", "dependencies": [], "argument": "sky"}],
                    "annotations": {"answer": {}, "question": {"2": "2486325"}},
                    "entailed": ["20968976"],
                },
                "201640614": {
                    "imageId": "n235859",
                    "question": "Who is wearing the shirt?",
                    "answer": "girl",
                    "fullAnswer": "The girl is wearing a shirt.",
                    "isBalanced": True,
                    "types": {"structural": "query", "semantic": "rel"},
                    "semantic": [{"operation": "relate", "dependencies": [0], "argument": "x"}],
                    "annotations": {"answer": {"0": "1232"}, "fullAnswer": {"1": "1232"}},
                    "entailed": [],
                },
            }
        )
    )
    questions = benchmarks.load("gqa", path, image_root=tmp_path / "images", image_file="%s.jpg")
    assert [(q.id, q.answer) for q in questions] == [("20968975", "yes"), ("201640614", "girl")]
    assert questions[1].prompt == f"Who is wearing the shirt?\n{SHORT}"
    assert questions[1].image().size == (52, 66)


def test_scienceqa_parquet_with_embedded_images_and_index_answers(tmp_path):
    pictures = write_images(tmp_path / "png", ["a.png", "b.png"])
    table = datasets.Dataset.from_dict(
        {
            "image": [{"bytes": png_bytes(p), "path": None} for p in pictures],
            "question": ["Which animal is a mammal?", "Which is a solid?"],
            "choices": [["lizard", "dolphin", "shark"], ["juice", "rock"]],
            "answer": [1, 1],
            "hint": ["", "Think about the states of matter."],
            "subject": ["natural science", "natural science"],
        }
    ).cast_column("image", datasets.Image())
    path = tmp_path / "scienceqa_img_test.parquet"
    table.to_parquet(str(path))  # the image bytes are stored in the file
    questions = benchmarks.load("mc", path)
    assert [q.answer for q in questions] == ["B", "B"]
    assert questions[0].options == ("lizard", "dolphin", "shark")
    assert questions[0].prompt == (
        f"Which animal is a mammal?\nA. lizard\nB. dolphin\nC. shark\n{MC}"
    )
    assert questions[1].prompt.startswith("Think about the states of matter.\nWhich is a solid?\n")
    assert questions[0].image().size == pictures[0].size


def mmbench_folder(tmp_path: Path) -> Path:
    """MMBench's columns (index, question, hint, A-D, answer letter, image) as a
    ``save_to_disk`` DatasetDict with a ``dev`` split; the third question has two options."""
    write_images(tmp_path / "png", [f"{i}.png" for i in range(3)])
    split = datasets.Dataset.from_dict(
        {
            "index": [241, 242, 243],
            "question": ["What is the main colour?", "Which shape is it?", "Is it day?"],
            "hint": [None, "Look at the edges.", None],
            "A": ["red", "circle", "yes"],
            "B": ["green", "square", "no"],
            "C": ["blue", "triangle", None],
            "D": ["black", "star", None],
            "answer": ["C", "A", "B"],
            "category": ["attribute", "shape", "time"],
            "image": [str(tmp_path / "png" / f"{i}.png") for i in range(3)],
        }
    ).cast_column("image", datasets.Image())
    folder = tmp_path / "mmbench_en"
    datasets.DatasetDict({"dev": split}).save_to_disk(str(folder))
    return folder


def test_mmbench_letter_columns_from_a_save_to_disk_folder(tmp_path):
    folder = mmbench_folder(tmp_path)
    questions = benchmarks.load("mc", folder, split="dev")
    assert [q.id for q in questions] == ["241", "242", "243"]
    assert [q.answer for q in questions] == ["C", "A", "B"]
    assert questions[1].prompt == (
        "Look at the edges.\nWhich shape is it?\nA. circle\nB. square\nC. triangle\nD. star\n" + MC
    )
    assert questions[2].options == ("yes", "no")  # the empty C and D are no options
    assert questions[2].image().size == (64, 60)
    with pytest.raises(ValueError, match=r"data.split must name a split .*\['dev'\], got 'test'"):
        benchmarks.load("mc", folder, split="test")


def test_pope_files_with_label_or_answer_columns(tmp_path):
    write_images(tmp_path / "val2014", image_names(2))
    own = write_jsonl(
        tmp_path / "coco_pope_random.jsonl",
        [
            {
                "question_id": 1,
                "image": image_names(2)[0],
                "text": "Is there a dog in the image?",
                "label": "yes",
            },
            {
                "question_id": 2,
                "image": image_names(2)[1],
                "text": "Is there a car in the image?",
                "label": "no",
            },
        ],
    )
    questions = benchmarks.load("pope", own, image_root=tmp_path / "val2014")
    assert [(q.question, q.answer) for q in questions] == [
        ("Is there a dog in the image?", "yes"),
        ("Is there a car in the image?", "no"),
    ]
    assert questions[0].prompt == f"Is there a dog in the image?\n{SHORT}"
    lmms = tmp_path / "pope.csv"  # lmms-lab/POPE's column names, as a CSV
    lmms.write_text(
        "id,question_id,question,answer,image_source,category,image\n"
        f"0,1,Is there a snowboard in the image?,Yes,x,random,{image_names(1)[0]}\n"
    )
    [q] = benchmarks.load("pope", lmms, image_root=tmp_path / "val2014", prompt_suffix="Yes or no?")
    assert (q.id, q.answer, q.prompt) == (
        "1",
        "yes",
        "Is there a snowboard in the image?\nYes or no?",
    )


def test_mistakes_in_the_data_name_what_to_set(tmp_path):
    write_images(tmp_path / "img", ["x.jpg"])
    rows = write_jsonl(tmp_path / "q.jsonl", [{"img": "x.jpg", "question": "q?", "answer": "yes"}])
    with pytest.raises(ValueError, match=r"no image column: tried .*set data.columns.image=NAME"):
        benchmarks.load("pope", rows)
    [q] = benchmarks.load("pope", rows, columns={"image": "img"}, image_root=tmp_path / "img")
    assert q.answer == "yes"
    with pytest.raises(FileNotFoundError, match=r"1 of 1 image files not found.*data.image_root"):
        benchmarks.load("pope", rows, columns={"image": "img"}, image_root=tmp_path)
    with pytest.raises(ValueError, match=r"family vqa .*human answers.*data=gqa"):
        benchmarks.load("vqa", rows, columns={"image": "img"}, image_root=tmp_path / "img")
    with pytest.raises(ValueError, match="data.columns.answer='gold' is not a column"):
        benchmarks.load("gqa", rows, columns={"image": "img", "answer": "gold"})
    bad = write_jsonl(
        tmp_path / "bad.jsonl", [{"image": "x.jpg", "question": "q?", "label": "maybe"}]
    )
    with pytest.raises(ValueError, match=r"row 0: a POPE answer must be 'yes' or 'no'"):
        benchmarks.load("pope", bad, image_root=tmp_path / "img")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        benchmarks.load("pope", tmp_path / "nowhere.jsonl")


def test_data_configs_require_a_path_and_check_it_before_any_run(tmp_path):
    with pytest.raises(ConfigError, match=r"data.path is required: add data.path=VALUE"):
        compose(["data=pope"])
    with pytest.raises(ConfigError, match=r"data.path='.*missing.jsonl' does not exist"):
        compose(["data=pope", f"data.path={tmp_path / 'missing.jsonl'}"])
    with pytest.raises(
        ConfigError, match=r"data.family must be one of \['vqa', 'gqa', 'mc', 'pope'\]"
    ):
        compose(["data=vqa", f"data.path={tmp_path}", "data.family=vqav2"])
    with pytest.raises(ConfigError, match=r"unknown key 'data.columns.answerz'"):
        compose(["data=vqa", f"data.path={tmp_path}", "data.columns.answerz=a"])
    cfg = compose(["data=mc", f"data.path={tmp_path}", "data.prompt_suffix=Pick one."])
    assert (cfg.data.family, cfg.data.prompt_suffix, cfg.data.n_samples) == (
        "mc",
        "Pick one.",
        None,
    )


# -- scoring by each family's metric (hand-worked) -------------------------------------------
def _samples(family_answers: list[dict]) -> list[Sample]:
    return [
        Sample(id=str(i), image=None, question="q", **kw) for i, kw in enumerate(family_answers)
    ]


def test_score_applies_each_familys_official_metric():
    # VQA: 4 / 3 / 2 / 1 matches among ten human answers score 1, 0.9, 0.6, 0.3
    human = [["two"] * k + ["three"] * (10 - k) for k in (4, 3, 2, 1)]
    samples = _samples([{"answer": "two", "answers": tuple(h)} for h in human])
    generation = Generation(answers=["Two.", "2", "two", "two"])
    m, rows = score(samples, generation, family="vqa", normalize_answers=True)
    assert [r["score"] for r in rows] == pytest.approx([1.0, 0.9, 0.6, 0.3])
    assert m["accuracy"] == pytest.approx(0.7) and m["metric"] == "vqa"
    assert "correct" not in rows[0] and rows[1]["prediction"] == "2"
    # multiple choice: the letter read from free text against the gold letter
    options = ("cat", "dog", "bird")
    samples = _samples([{"answer": a, "options": options} for a in ("B", "C", "A", "A")])
    generation = Generation(answers=["B", "The answer is C.", "It is a dog.", "maybe"])
    m, rows = score(samples, generation, reference=["B", "C", "B", "A"], family="mc")
    assert [r["prediction"] for r in rows] == ["B", "C", "B", None]
    assert [r["correct"] for r in rows] == [True, True, False, False]
    assert m["accuracy"] == 0.5 and m["loyalty"] == 0.75 and m["unpruned_accuracy"] == 0.75
    # GQA: exact match after stripping, final period, case
    samples = _samples([{"answer": a} for a in ("left", "man", "yes")])
    m, _ = score(samples, Generation(answers=[" Left.", "the man", "Yes"]), family="gqa")
    assert m["accuracy"] == pytest.approx(2 / 3)
    # POPE: "no" when a word is no / not; an empty answer counts as "yes"
    labels = ["yes", "yes", "no", "no", "no"]
    outputs = ["Yes, there is.", "No.", "There is not.", "", "yes"]
    m, rows = score(
        _samples([{"answer": a} for a in labels]), Generation(answers=outputs), family="pope"
    )
    # predicted yes, no, no, yes, yes: TP 1, FN 1, TN 1, FP 2
    assert [r["correct"] for r in rows] == [True, False, True, False, False]
    assert m["accuracy"] == pytest.approx(0.4)
    assert m["pope"] == pytest.approx(
        {"accuracy": 0.4, "precision": 1 / 3, "recall": 0.5, "f1": 0.4, "yes_ratio": 0.6}
    )


# -- end to end: prunekit ablate on each benchmark ----------------------------------------------
ABLATE = ["model=tiny", "bench.progress=false", "bench.max_new_tokens=3"]


def _runs(out: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(out.glob("*/result.json"))}


def _rows(out: Path, name: str) -> list[dict]:
    return [
        json.loads(line) for line in (out / name / "predictions.jsonl").read_text().splitlines()
    ]


def _unpruned_outputs(overrides: list[str]) -> list[str]:
    """The tiny model's own answers to the data of ``overrides`` (what budget 1.0 reproduces)."""
    cfg = compose([*ABLATE, *overrides])
    model, processor = build_model(cfg)
    data = load_data(cfg)
    return generate_answers(
        model, processor, data.samples, prompt=cfg.model.prompt, max_new_tokens=3, batch_size=8
    ).answers


def test_ablate_on_vqav2_scores_the_official_vqa_accuracy(tmp_path, named_tokens):
    root = tmp_path / "val2014"
    write_images(root, image_names(5))
    data = [
        "data=vqa",
        f"data.path={tmp_path / 'vqav2.jsonl'}",
        f"data.image_root={root}",
        "data.image_file=COCO_val2014_%012d.jpg",
    ]
    write_jsonl(tmp_path / "vqav2.jsonl", vqav2_rows([["?"] * 10] * 5))
    outputs = _unpruned_outputs(data)
    assert len(set(outputs)) > 1  # the answers depend on the question and image
    # the model's answer among 4, 3, 2, 1, 0 of the ten human answers: 1, 0.9, 0.6, 0.3, 0
    said = [metrics.normalize_answer(o) for o in outputs]
    write_jsonl(
        tmp_path / "vqav2.jsonl",
        vqav2_rows([[said[i]] * (4 - i) + ["zzz"] * (6 + i) for i in range(5)]),
    )
    out = tmp_path / "sweep"
    ablate([*ABLATE, *data, "pruner=resprune", "budget=1.0,16"], out=str(out), echo=lambda *a: None)
    runs = _runs(out)
    assert len(runs) == 2 and all("/" not in name for name in runs)  # one folder per run
    for name, result in runs.items():
        rows = _rows(out, name)
        by_hand = [metrics.vqa_accuracy(r["output"], r["answers"]) for r in rows]
        assert [r["score"] for r in rows] == by_hand
        assert result["metrics"]["accuracy"] == pytest.approx(sum(by_hand) / 5)
        assert result["data"]["family"] == "vqa" and result["metrics"]["metric"] == "vqa"
        if result["config"]["budget"] == 1.0:  # every token kept: the unpruned answers
            assert [r["output"] for r in rows] == [o.strip() for o in outputs]
            assert result["metrics"]["accuracy"] == pytest.approx((1 + 0.9 + 0.6 + 0.3 + 0) / 5)
            assert result["metrics"]["loyalty"] == 1.0
        assert result["metrics"]["unpruned_accuracy"] == pytest.approx(0.56)


def test_ablate_on_pope_records_precision_recall_f1_and_the_yes_ratio(tmp_path, named_tokens):
    write_images(tmp_path / "val2014", image_names(4))
    pope = tmp_path / "coco_pope_adversarial.jsonl"

    def write(labels: list[str]) -> None:
        write_jsonl(
            pope,
            [
                {"question_id": i + 1, "image": image_names(4)[i], "text": q, "label": label}
                for i, (q, label) in enumerate(zip(QUESTIONS, labels))
            ],
        )

    write(["yes"] * 4)
    data = ["data=pope", f"data.path={pope}", f"data.image_root={tmp_path / 'val2014'}"]
    said = ["no" if metrics.parse_yes_no(o) == "no" else "yes" for o in _unpruned_outputs(data)]
    flip = {"yes": "no", "no": "yes"}
    labels = [said[0], said[1], flip[said[2]], flip[said[3]]]  # two right, two wrong
    write(labels)
    out = tmp_path / "sweep"
    ablate([*ABLATE, *data, "pruner=resprune", "budget=1.0"], out=str(out), echo=lambda *a: None)
    [(name, result)] = _runs(out).items()
    m = result["metrics"]
    tp = sum(s == "yes" and s == g for s, g in zip(said, labels))
    fp = sum(s == "yes" and s != g for s, g in zip(said, labels))
    fn = sum(s == "no" and s != g for s, g in zip(said, labels))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    assert m["accuracy"] == m["pope"]["accuracy"] == 0.5
    assert m["pope"]["precision"] == pytest.approx(precision)
    assert m["pope"]["recall"] == pytest.approx(recall)
    assert m["pope"]["yes_ratio"] == pytest.approx(said.count("yes") / 4)
    rows = _rows(out, name)
    assert [r["correct"] for r in rows] == [True, True, False, False]
    assert m["pope"] == pytest.approx(metrics.pope_scores([r["output"] for r in rows], labels))
    table = (out / "summary.md").read_text()
    assert (
        "| F1 | yes ratio |" in table
        and f"| {m['pope']['f1']:.3f} | {m['pope']['yes_ratio']:.3f} |" in table
    )


def test_ablate_on_gqa_and_mmbench_scores_exact_match_and_option_letters(tmp_path, named_tokens):
    write_images(tmp_path / "images", [f"n{i}.jpg" for i in range(4)])
    gqa = tmp_path / "gqa.json"

    def write(answers: list[str]) -> None:
        gqa.write_text(
            json.dumps(
                {
                    str(100 + i): {"imageId": f"n{i}", "question": QUESTIONS[i], "answer": a}
                    for i, a in enumerate(answers)
                }
            )
        )

    write(["x"] * 4)
    data = [
        "data=gqa",
        f"data.path={gqa}",
        f"data.image_root={tmp_path / 'images'}",
        "data.image_file=%s.jpg",
    ]
    said = [o.strip().lower() for o in _unpruned_outputs(data)]
    write([said[0], "zzz", said[2], "zzz"])
    out = tmp_path / "gqa-sweep"
    ablate([*ABLATE, *data, "pruner=resprune", "budget=1.0"], out=str(out), echo=lambda *a: None)
    [(name, result)] = _runs(out).items()
    assert result["metrics"]["accuracy"] == 0.5 and result["metrics"]["metric"] == "gqa"
    assert [r["correct"] for r in _rows(out, name)] == [True, False, True, False]

    folder = mmbench_folder(tmp_path)
    out = tmp_path / "mc-sweep"
    mc = ["data=mc", "data.name=mmbench", f"data.path={folder}", "data.split=dev"]
    ablate([*ABLATE, *mc, "pruner=resprune", "budget=16"], out=str(out), echo=lambda *a: None)
    [(name, result)] = _runs(out).items()
    rows = _rows(out, name)
    letters = [metrics.parse_choice(r["output"], r["options"]) for r in rows]
    assert [r["prediction"] for r in rows] == letters
    by_hand = [float(letter == r["answer"]) for letter, r in zip(letters, rows)]
    assert result["metrics"]["accuracy"] == pytest.approx(sum(by_hand) / 3)
    assert result["data"]["name"] == "mmbench" and [r["answer"] for r in rows] == ["C", "A", "B"]


# -- item 3: batching, timing, accounting, one reference per sweep -----------------------------
class IdProcessor:
    """The tiny processor, decoding the generated token ids themselves (exact comparisons)."""

    def __init__(self, processor):
        self.processor = processor
        self.tokenizer = processor.tokenizer

    def __call__(self, **kwargs):
        return self.processor(**kwargs)

    def batch_decode(self, sequences, **_):
        return [" ".join(str(int(t)) for t in row) for row in sequences]


def _pope_samples(tmp_path: Path, n: int = 5) -> list[Sample]:
    write_images(tmp_path / "img", image_names(n))
    rows = [
        {"question_id": i, "image": name, "text": QUESTIONS[i % 5], "label": "yes"}
        for i, name in enumerate(image_names(n))
    ]
    path = write_jsonl(tmp_path / "pope.jsonl", rows)
    from prunekit.experiments.datasets import benchmark

    return benchmark("pope", str(path), image_root=str(tmp_path / "img")).samples


def test_batches_of_3_give_the_answers_of_batches_of_1(tmp_path):
    samples = _pope_samples(tmp_path)  # five images of five sizes: ragged batches
    model, processor = tiny.load()
    processor = IdProcessor(processor)
    pruner = prunekit.create_pruner("resprune")
    out = {}
    for batch_size in (1, 3):
        for pruned in (False, True):
            context = (
                (lambda: prunekit.attach(model, pruner, budget=8, tokenizer=processor.tokenizer))
                if pruned
                else None
            )
            out[batch_size, pruned] = generate_answers(
                model,
                processor,
                samples,
                prompt="<image>\n{question}",
                max_new_tokens=3,
                batch_size=batch_size,
                context=context,
            )
    for pruned in (False, True):
        one, three = out[1, pruned], out[3, pruned]
        assert one.answers == three.answers
        assert one.kept == three.kept and one.text_tokens == three.text_tokens
    assert len(set(out[1, False].answers)) > 1
    assert out[1, True].kept == [8] * 5 and out[1, True].tokens_in == [64] * 5
    assert out[1, False].kept == [] and out[1, False].image_tokens == [64] * 5


def test_run_record_times_prefill_and_decoding_and_counts_the_savings(tmp_path):
    samples = _pope_samples(tmp_path, n=3)
    model, processor = tiny.load()
    pruner = prunekit.create_pruner("resprune")
    generation = generate_answers(
        model,
        processor,
        samples,
        prompt="<image>\n{question}",
        max_new_tokens=2,
        batch_size=2,
        context=lambda: prunekit.attach(model, pruner, budget=16, tokenizer=processor.tokenizer),
    )
    assert generation.prefill_seconds > 0 and generation.decode_seconds > 0
    assert generation.prefill_seconds + generation.decode_seconds == pytest.approx(
        generation.seconds
    )
    # the prompt's text tokens, counted by hand: <s>, the words and marks of the prompt
    texts = [len(processor.tokenizer.encode(f"<image>\n{s.query}")) - 1 for s in samples]
    assert generation.text_tokens == texts
    from prunekit.experiments.bench import efficiency

    record = efficiency(model.config, generation, dtype=torch.float32)
    expected = [accounting.savings(model.config, 64, 16, t, dtype=torch.float32) for t in texts]
    total = expected[0] + expected[1] + expected[2]
    assert record["flops_before"] == total.flops_before
    assert record["flops_after"] == total.flops_after
    assert record["kv_cache_bytes_after"] == total.kv_cache_bytes_after
    assert record["kept_visual_tokens"] == 48 and record["text_tokens"] == sum(texts)
    m, _ = score(samples, generation, family="pope")
    assert m["prefill_ms_per_sample"] == pytest.approx(1e3 * generation.prefill_seconds / 3)


def test_the_unpruned_answers_are_computed_once_per_sweep_and_reused_by_reruns(
    tmp_path, monkeypatch
):
    write_images(tmp_path / "img", image_names(3))
    rows = [
        {"question_id": i, "image": name, "text": QUESTIONS[i], "label": "no"}
        for i, name in enumerate(image_names(3))
    ]
    pope = write_jsonl(tmp_path / "pope.jsonl", rows)
    calls = []
    real = runner_module.generate_answers

    def counting(*args, **kwargs):
        calls.append("pruned" if kwargs.get("context") else "unpruned")
        return real(*args, **kwargs)

    monkeypatch.setattr(runner_module, "generate_answers", counting)
    out = tmp_path / "sweep"
    data = ["data=pope", f"data.path={pope}", f"data.image_root={tmp_path / 'img'}"]
    sweep = [*ABLATE, *data, "pruner=resprune,random", "budget=16"]
    ablate(sweep, out=str(out), echo=lambda *a: None)
    assert calls == ["unpruned", "pruned", "pruned"]
    runs = _runs(out)
    assert len(runs) == 2 and all("loyalty" in r["metrics"] for r in runs.values())
    [cache] = (out / ".cache").glob("unpruned-*.json")
    reference = json.loads(cache.read_text())["answers"]
    for name in runs:
        assert [r["reference"] for r in _rows(out, name)] == [
            metrics.parse_yes_no(a) for a in reference
        ]
    # a rerun with new budgets (a new process would do the same) reads the stored answers
    calls.clear()
    ablate(
        [*ABLATE, *data, "pruner=resprune,random", "budget=8"], out=str(out), echo=lambda *a: None
    )
    assert calls == ["pruned", "pruned"]
    # new labels ask the same questions: the same unpruned answers
    write_jsonl(pope, [{**r, "label": "yes"} for r in rows])
    calls.clear()
    ablate([*ABLATE, *data, "pruner=resprune", "budget=4"], out=str(out), echo=lambda *a: None)
    assert calls == ["pruned"]
    # the file rewritten in place with other questions: answered anew, not read from the cache
    write_jsonl(pope, [{**r, "text": "Is there a person in the image?"} for r in rows])
    calls.clear()
    ablate([*ABLATE, *data, "pruner=resprune", "budget=2"], out=str(out), echo=lambda *a: None)
    assert calls == ["unpruned", "pruned"]
    assert len(list((out / ".cache").glob("unpruned-*.json"))) == 2


def test_processes_starting_together_compute_the_unpruned_answers_once(tmp_path, monkeypatch):
    """The cache file is locked while one process computes it; the others wait and read it."""
    import threading
    import time

    from prunekit.experiments.datasets import tiny as tiny_data

    cfg = compose(["data=tiny", "data.n_samples=2"])
    data = tiny_data(n_samples=2)
    computed = []

    def slow_generation(cfg, model, processor, data):
        computed.append(threading.get_ident())
        time.sleep(0.5)
        return Generation(answers=["red", "blue"])

    monkeypatch.setattr(runner_module, "_unpruned_generation", slow_generation)
    answers = []

    def worker():
        answers.append(runner_module._reference_answers(cfg, None, None, data, tmp_path / "c"))

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(computed) == 1 and answers == [["red", "blue"]] * 3
