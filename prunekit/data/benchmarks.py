"""Standard VLM benchmarks read from local copies through the ``datasets`` library.

Four families, each scored by its own metric (:mod:`prunekit.metrics`):

* ``vqa`` -- open-ended VQA with several human answers (VQAv2, TextVQA, VizWiz):
  :func:`~prunekit.metrics.vqa_accuracy`;
* ``gqa`` -- one answer word (GQA): :func:`~prunekit.metrics.exact_match`;
* ``mc`` -- multiple choice (ScienceQA-IMG, MMBench): the option letter read by
  :func:`~prunekit.metrics.parse_choice` against the gold letter;
* ``pope`` -- yes/no object hallucination (POPE): :func:`~prunekit.metrics.pope_scores`.

A benchmark is a local file (``.jsonl``, ``.json``, ``.csv``, ``.parquet``) or a folder
written by ``datasets``' ``save_to_disk`` (a ``Dataset`` or a ``DatasetDict``, whose
``split`` is then chosen). Nothing is downloaded: a copy of the public benchmark (for
example ``load_dataset("lmms-lab/POPE")["test"].save_to_disk(DIR)`` on a machine with
hub access) is read as it is. Columns are found by name (:data:`COLUMNS` lists the
names tried when a column is not named explicitly):

* the image: an image stored in the data (a ``datasets`` ``Image`` feature, bytes) or a
  file name, relative to ``image_root`` (``image_file`` turns an id into a file name:
  ``"%s.jpg"`` for GQA's ``imageId``, ``"COCO_val2014_%012d.jpg"`` for VQAv2's ``image_id``);
* the question (``question``; POPE's files call it ``text``);
* ``vqa``: the human answers, a list of strings or of ``{"answer": ...}`` records
  (VQAv2's annotation layout); ``gqa`` / ``pope``: the answer (POPE's files: ``label``);
* ``mc``: the options, a list (``options``, ScienceQA's ``choices``) or one column per
  letter (MMBench's ``A``, ``B``, ``C``, ``D``; empty ones dropped), an optional
  ``hint``, and the answer as a letter, an option index (ScienceQA) or an option text.

Images are read when a question is asked (:attr:`BenchmarkQuestion.image` is a
function), so a benchmark of 100,000 questions costs no image memory up front; image
files named by path are checked to exist when the benchmark is loaded.

Example::

    questions = load("pope", "pope_random.jsonl", image_root="val2014", n_samples=100)
    questions[0].prompt      # 'Is there a dog in the image?\\nAnswer the question using ...'
    questions[0].image()     # PIL RGB
"""

from __future__ import annotations

import io
import json
import math
import os
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "COLUMNS",
    "FAMILIES",
    "MC_SUFFIX",
    "PROMPT_SUFFIX",
    "SHORT_ANSWER_SUFFIX",
    "BenchmarkQuestion",
    "load",
    "read_table",
]

#: the benchmark families (the ``data`` config options of the same names)
FAMILIES = ("vqa", "gqa", "mc", "pope")
#: the instruction LLaVA-1.5 and lmms-eval append to short-answer questions
SHORT_ANSWER_SUFFIX = "Answer the question using a single word or phrase."
#: the instruction LLaVA-1.5 and lmms-eval append to multiple-choice questions
MC_SUFFIX = "Answer with the option's letter from the given choices directly."
#: each family's conventional prompt suffix (after the question, on a line of its own)
PROMPT_SUFFIX = {
    "vqa": SHORT_ANSWER_SUFFIX,
    "gqa": SHORT_ANSWER_SUFFIX,
    "mc": MC_SUFFIX,
    "pope": SHORT_ANSWER_SUFFIX,
}
#: column names tried in order for each role when the config does not name one
COLUMNS: dict[str, tuple[str, ...]] = {
    "id": ("question_id", "questionId", "id", "index"),
    "image": ("image", "image_path", "imageId", "image_id"),
    "question": ("question", "text"),
    "answers": ("answers",),
    "answer": ("multiple_choice_answer", "answer", "label"),
    "options": ("options", "choices"),
    "hint": ("hint",),
}
_TABLE_SUFFIXES = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@dataclass(frozen=True)
class BenchmarkQuestion:
    """One benchmark question: what the model is asked and what its answer is scored against.

    ``prompt`` is the question as the model gets it (hint, options and the family's
    suffix included); ``answer`` the gold answer (``vqa``: the most common human
    answer, or VQAv2's ``multiple_choice_answer``; ``mc``: the option letter;
    ``pope``: ``"yes"``/``"no"``); ``answers`` the human answers (``vqa``) and
    ``options`` the option texts in letter order (``mc``).
    """

    id: str
    question: str
    prompt: str
    answer: str
    image: Callable[[], Any] = field(repr=False, compare=False)
    answers: tuple[str, ...] = ()
    options: tuple[str, ...] = ()


# -- reading the table --------------------------------------------------------------------
def read_table(path: str | os.PathLike[str], split: str | None = None) -> Any:
    """The rows of a local benchmark copy as a ``datasets.Dataset``.

    ``path`` is a ``.jsonl`` / ``.json`` / ``.csv`` / ``.parquet`` file or a
    ``save_to_disk`` folder. ``split`` picks the split of a ``DatasetDict`` folder
    (required when it has several); a single file is one split, whatever its name.
    A ``.json`` file may hold a list of records, an object with one list of records
    (TextVQA's ``{"data": [...]}``, VQAv2's ``{"questions": [...]}``) or an object of
    records keyed by question id (GQA's layout; the key becomes ``question_id``).
    """
    try:
        import datasets
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            "benchmark data sets are read with the 'datasets' library: "
            "pip install 'prunekit[eval]' (or pip install datasets)",
            name="datasets",
        ) from exc
    location = Path(path).expanduser()
    if not location.exists():
        raise FileNotFoundError(
            f"data.path {str(path)!r} does not exist: give a local .jsonl/.json/.csv/.parquet "
            "file or a datasets save_to_disk folder (nothing is downloaded)"
        )
    if location.is_dir():
        loaded = datasets.load_from_disk(str(location))
        if isinstance(loaded, datasets.DatasetDict):
            splits = list(loaded)
            if split is None and len(splits) == 1:
                split = splits[0]
            if split not in loaded:
                raise ValueError(
                    f"data.split must name a split of {str(location)!r}: one of {splits}, "
                    f"got {split!r}"
                )
            return loaded[split]
        return loaded
    builder = _TABLE_SUFFIXES.get(location.suffix.lower())
    if builder is None:
        raise ValueError(
            f"data.path {str(path)!r}: unknown file type {location.suffix!r}; expected one of "
            f"{sorted(_TABLE_SUFFIXES)} or a save_to_disk folder"
        )
    if location.suffix.lower() == ".json":
        rows = _json_rows(location)
        if rows is not None:
            return datasets.Dataset.from_list(rows)
    name = split or "test"
    quiet = not datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        return datasets.load_dataset(
            builder, data_files={name: str(location)}, split=name
        )  # cached as Arrow in the datasets cache (HF_DATASETS_CACHE)
    finally:
        if not quiet:
            datasets.enable_progress_bars()


def _json_rows(path: Path) -> list[dict[str, Any]] | None:
    """The records of a ``.json`` file that is not a plain list (``None``: let ``datasets`` read it)."""
    with path.open() as f:
        first = f.read(1)
        while first.isspace():
            first = f.read(1)
    if first != "{":
        return None
    data = json.loads(path.read_text())
    lists = [k for k, v in data.items() if isinstance(v, list) and v and isinstance(v[0], dict)]
    if len(lists) == 1:
        return data[lists[0]]
    if data and all(isinstance(v, dict) for v in data.values()):
        # GQA's records also hold nested annotations (programs, object ids) that differ
        # from record to record: only plain values and lists of them are kept
        return [
            {"question_id": str(k), **{f: x for f, x in v.items() if _plain_value(x)}}
            for k, v in data.items()
        ]
    raise ValueError(
        f"data.path {str(path)!r}: a JSON object must hold one list of records or records "
        f"keyed by question id; found keys {sorted(data)[:8]}"
    )


def _plain_value(value: Any) -> bool:
    """A scalar, or a list of scalars."""
    scalar = (str, int, float, bool, type(None))
    return isinstance(value, scalar) or (
        isinstance(value, list) and all(isinstance(v, scalar) for v in value)
    )


# -- columns ------------------------------------------------------------------------------
def _column(
    role: str,
    names: Sequence[str],
    given: str | None,
    *,
    required: bool,
    candidates: Sequence[str] | None = None,
) -> str | None:
    """The column playing ``role``: the configured one (which must exist) or the first candidate."""
    if given is not None:
        if given not in names:
            raise ValueError(
                f"data.columns.{role}={given!r} is not a column of the data; columns: {list(names)}"
            )
        return given
    candidates = COLUMNS[role] if candidates is None else candidates
    for candidate in candidates:
        if candidate in names:
            return candidate
    if required:
        raise ValueError(
            f"no {role} column: tried {list(candidates)}; the data has {list(names)}; "
            f"set data.columns.{role}=NAME"
        )
    return None


def _absent(value: Any) -> bool:
    return (
        value is None
        or (isinstance(value, float) and math.isnan(value))
        or (isinstance(value, str) and value.strip().lower() in ("", "nan", "none"))
    )


def _answers(value: Any, row: int) -> tuple[str, ...]:
    """Human answers as strings: a list of strings or of ``{"answer": ...}`` records, or one answer."""
    if isinstance(value, str):
        return (value,)
    if isinstance(value, Mapping) and "answer" in value:  # a struct of lists (datasets' view)
        value = value["answer"]
    out = []
    for item in value or ():
        out.append(str(item["answer"] if isinstance(item, Mapping) else item))
    if not out:
        raise ValueError(f"row {row}: the question has no human answers")
    return tuple(out)


def _yes_no(value: Any, row: int) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    text = str(value).strip().lower()
    if text not in ("yes", "no"):
        raise ValueError(f"row {row}: a POPE answer must be 'yes' or 'no', got {value!r}")
    return text


def _options(record: Mapping[str, Any], column: str | None, letter_columns: list[str]) -> list:
    if column is not None:
        value = record[column]
        if isinstance(value, str):  # a JSON-encoded list in a CSV cell
            value = json.loads(value)
        return [str(v) for v in value]
    return [str(record[c]) for c in letter_columns if not _absent(record[c])]


def _choice_letter(value: Any, options: Sequence[str], row: int) -> str:
    """The gold option letter from a letter, an option index or the option's text."""
    if isinstance(value, bool) or _absent(value):
        raise ValueError(f"row {row}: the multiple-choice answer is missing ({value!r})")
    if isinstance(value, (int, float)) and float(value).is_integer():
        index = int(value)
    else:
        text = str(value).strip()
        if len(text) == 1 and text.upper() in _LETTERS[: len(options)]:
            return text.upper()
        if text.isdigit():
            index = int(text)
        elif text in options:
            index = list(options).index(text)
        else:
            raise ValueError(
                f"row {row}: the answer {value!r} is neither an option letter "
                f"({_LETTERS[: len(options)]}), an index nor an option text"
            )
    if not 0 <= index < len(options):
        raise ValueError(
            f"row {row}: answer index {index} is out of range for {len(options)} options"
        )
    return _LETTERS[index]


# -- images -------------------------------------------------------------------------------
def _open(value: Any) -> Any:
    """A PIL RGB image from what a row holds: a PIL image, bytes or a ``{"bytes", "path"}`` record."""
    from PIL import Image

    if isinstance(value, Image.Image):
        return value.convert("RGB")
    if isinstance(value, Mapping):
        value = value["bytes"] if value.get("bytes") else value.get("path")
    if isinstance(value, (bytes, bytearray)):
        with Image.open(io.BytesIO(value)) as image:
            return image.convert("RGB")
    with Image.open(value) as image:
        return image.convert("RGB")


@dataclass(frozen=True)
class _FileImage:
    path: str

    def __call__(self) -> Any:
        return _open(self.path)


@dataclass(frozen=True)
class _StoredImage:
    """An image stored in row ``row`` of the data (decoded when asked for)."""

    table: Any = field(repr=False)
    row: int
    column: str

    def __call__(self) -> Any:
        return _open(self.table[self.row][self.column])


def _image_path(value: Any, image_root: str | None, image_file: str | None, row: int) -> str:
    name = str(value)
    if image_file is not None:
        try:
            name = image_file % value
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"data.image_file {image_file!r} cannot format the image value {value!r} of "
                f"row {row} ({exc}); use one %-placeholder, e.g. '%s.jpg'"
            ) from None
    path = Path(name).expanduser()
    if not path.is_absolute() and image_root is not None:
        path = Path(image_root).expanduser() / path
    return str(path)


# -- loading ------------------------------------------------------------------------------
def load(
    family: str,
    path: str | os.PathLike[str],
    *,
    split: str | None = None,
    image_root: str | os.PathLike[str] | None = None,
    image_file: str | None = None,
    n_samples: int | None = None,
    prompt_suffix: str | None = None,
    columns: Mapping[str, str | None] | None = None,
) -> list[BenchmarkQuestion]:
    """The first ``n_samples`` questions (all with ``None``) of a local benchmark copy.

    Args:
        family: ``"vqa"``, ``"gqa"``, ``"mc"`` or ``"pope"`` (:data:`FAMILIES`).
        path: a table file or ``save_to_disk`` folder (:func:`read_table`).
        split: the split of a ``DatasetDict`` folder.
        image_root: the folder image file names are relative to.
        image_file: a %-format turning the image column's value into a file name.
        n_samples: how many questions, from the first row (``None``: all).
        prompt_suffix: the instruction after the question (``None``: the family's
            :data:`PROMPT_SUFFIX`; ``""``: none).
        columns: role -> column name for the roles of :data:`COLUMNS` (``None``
            entries: found by name).
    """
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {list(FAMILIES)}, got {family!r}")
    if n_samples is not None and (isinstance(n_samples, bool) or n_samples < 1):
        raise ValueError(f"n_samples must be >= 1 or None, got {n_samples!r}")
    columns = dict(columns or {})
    unknown = sorted(set(columns) - set(COLUMNS))
    if unknown:
        raise ValueError(f"columns has unknown roles {unknown}; roles: {sorted(COLUMNS)}")
    suffix = PROMPT_SUFFIX[family] if prompt_suffix is None else prompt_suffix
    table = read_table(path, split)
    if n_samples is not None:
        table = table.select(range(min(n_samples, len(table))))
    if len(table) == 0:
        raise ValueError(f"data.path {str(path)!r} holds no questions")
    names = list(table.column_names)

    def col(role: str, *, required: bool = True) -> str | None:
        return _column(role, names, columns.get(role), required=required)

    id_col = col("id", required=False)
    image_col = col("image")
    question_col = col("question")
    hint_col = col("hint", required=False) if family == "mc" else None
    answers_col = option_col = None
    letter_cols: list[str] = []
    if family == "vqa":
        answers_col = col("answers", required=False)
        if answers_col is None:
            raise ValueError(
                f"family vqa scores against the human answers, a list column: tried "
                f"{list(COLUMNS['answers'])}; the data has {names}; set data.columns.answers=NAME "
                "(for one answer per question use data=gqa: exact match)"
            )
        answer_col = col("answer", required=False)
    else:  # VQAv2's multiple_choice_answer is no gold answer of the other families
        answer_col = _column(
            "answer",
            names,
            columns.get("answer"),
            required=True,
            candidates=[c for c in COLUMNS["answer"] if c != "multiple_choice_answer"],
        )
    if family == "mc":
        option_col = col("options", required=False)
        letter_cols = [c for c in _LETTERS if c in names]
        if option_col is None and len(letter_cols) < 2:
            raise ValueError(
                f"no options: tried the columns {list(COLUMNS['options'])} and letter columns "
                f"A, B, ...; the data has {names}; set data.columns.options=NAME"
            )
    roles = [id_col, question_col, hint_col, answers_col, answer_col, option_col, *letter_cols]
    text_cols = [c for c in dict.fromkeys(roles) if c is not None and c != image_col]
    records = table.select_columns(text_cols).to_list()
    images = table.select_columns([image_col])
    from datasets import Image as ImageFeature

    stored = isinstance(table.features[image_col], ImageFeature) or not all(
        isinstance(v, (str, int)) for v in images[: min(len(images), 8)][image_col]
    )
    paths = None
    if not stored:
        root = None if image_root is None else str(image_root)
        paths = [_image_path(v, root, image_file, i) for i, v in enumerate(images[image_col])]
        missing = [p for p in paths if not os.path.isfile(p)]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} of {len(paths)} image files not found, e.g. {missing[0]!r}; "
                f"set data.image_root (now {root!r}) or data.image_file to where the images are"
            )

    out = []
    for i, record in enumerate(records):
        question = str(record[question_col]).strip()
        qid = str(record[id_col]) if id_col is not None else str(i)
        options: tuple[str, ...] = ()
        answers: tuple[str, ...] = ()
        if family == "vqa":
            answers = _answers(record[answers_col], i)
            if answer_col is not None and not _absent(record[answer_col]):
                answer = str(record[answer_col])
            else:
                answer = Counter(answers).most_common(1)[0][0]
        elif family == "pope":
            answer = _yes_no(record[answer_col], i)
        elif family == "gqa":
            answer = str(record[answer_col]).strip()
        else:
            options = tuple(_options(record, option_col, letter_cols or []))
            answer = _choice_letter(record[answer_col], options, i)
        lines = []
        if family == "mc":
            hint = record.get(hint_col) if hint_col else None
            if not _absent(hint):
                lines.append(str(hint).strip())
            lines.append(question)
            lines.extend(f"{_LETTERS[j]}. {text}" for j, text in enumerate(options))
        else:
            lines.append(question)
        if suffix:
            lines.append(suffix)
        if paths is None:
            image: Callable[[], Any] = _StoredImage(images, i, image_col)
        else:
            image = _FileImage(paths[i])
        out.append(
            BenchmarkQuestion(
                id=qid,
                question=question,
                prompt="\n".join(lines),
                answer=answer,
                image=image,
                answers=answers,
                options=options,
            )
        )
    return out
