"""Structured-config schemas: the keys and types every composed config is checked against.

Hydra composes the YAML files of :mod:`prunekit.conf` on top of these
dataclasses (registered in Hydra's ``ConfigStore``), so an unknown key or a
value of the wrong type fails at composition, before any work starts.

The schemas of the components (groups ``pruner``, ``relevance``, ``selection``)
are generated from the registry: one dataclass per registered component, its
fields the keyword parameters of the component's factory with their defaults
and annotated types. A plugin's pruner is therefore selectable as
``pruner=<name>`` with checked parameters without shipping any YAML. A YAML
file of the same group (e.g. ``pruner/resprune.yaml``) extends the generated
schema ``schema/<group>/<name>`` and takes precedence.

Types are checked by OmegaConf; value ranges and choices by
:func:`prunekit.experiments.config.finalize`, from the fields' metadata
(:func:`bounded`, :func:`one_of`), so that ``bench.batch_size=0`` fails at
composition too. A component parameter without a default is ``MISSING``
(``???``) in its schema; :func:`~prunekit.experiments.config.finalize` refuses a
config that does not set it.

Parameters that a config cannot express (a tensor, a callable) are left out of
the schema: the factory's own default is used. Literal choices are typed
``str``; the factory checks them when :func:`prunekit.experiments.build_pruner`
builds the pruner, which ``prunekit run`` / ``ablate`` do before loading a model.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Literal, Optional, Union

from omegaconf import MISSING

#: the config groups whose options are registered components
COMPONENT_GROUPS = ("pruner", "relevance", "selection")
#: every config group of the primary config, in defaults-list order
GROUPS = ("pruner", "relevance", "selection", "model", "data", "bench")
#: parameters of the composed pruner that come from the relevance / selection groups
COMPOSED_FROM_GROUPS = ("relevance", "selection")

_PRIMITIVES = (bool, int, float, str)


def bounded(
    default: Any,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    multiple_of: int | None = None,
) -> Any:
    """A dataclass field whose value must lie in a range (checked at composition; ``None`` passes)."""
    limits = {"ge": ge, "gt": gt, "le": le, "multiple_of": multiple_of}
    return field(default=default, metadata={k: v for k, v in limits.items() if v is not None})


def one_of(default: str | None, *choices: str) -> Any:
    """A dataclass field whose value must be one of ``choices`` (checked at composition)."""
    return field(default=default, metadata={"choices": choices})


def check_value(key: str, value: Any, metadata: Any) -> None:
    """Raise ``ValueError`` naming ``key`` if ``value`` breaks its field's ``metadata`` limits."""
    if value is None:
        return
    choices = metadata.get("choices")
    if choices is not None and value not in choices:
        raise ValueError(f"{key} must be one of {list(choices)}, got {value!r}")
    ge, gt, le = metadata.get("ge"), metadata.get("gt"), metadata.get("le")
    if ge is not None and value < ge:
        raise ValueError(f"{key} must be >= {ge}, got {value!r}")
    if gt is not None and value <= gt:
        raise ValueError(f"{key} must be > {gt}, got {value!r}")
    if le is not None and value > le:
        raise ValueError(f"{key} must be <= {le}, got {value!r}")
    step = metadata.get("multiple_of")
    if step is not None and value % step:
        raise ValueError(f"{key} must be a multiple of {step}, got {value!r}")


# -- fixed schemas -------------------------------------------------------------------------
@dataclass
class AdapterConf:
    """Options passed to :func:`prunekit.attach` (only those that differ from the defaults).

    ``tokenizer``: hand the processor's tokenizer to the adapter (text-conditioned
    pruners read the prompt's nouns with it). ``positions``: ``null`` is the adapter's own
    default (``contiguous``; ``original`` for the Qwen-VL families).
    """

    tokenizer: bool = True
    positions: Optional[str] = one_of(None, "contiguous", "original")  # noqa: UP045
    #: prune inside the language model after this many decoder layers (``model.llm_layers``)
    llm_layer: Optional[int] = bounded(None, ge=1)  # noqa: UP045 - OmegaConf reads typing.Optional
    before_projector: bool = False


@dataclass
class BenchConf:
    """How a data set is evaluated (see :mod:`prunekit.experiments.bench`)."""

    batch_size: int = bounded(8, ge=1)
    max_new_tokens: int = bounded(4, ge=1)
    #: decode only the data set's answers (closed-vocabulary VQA); off: free generation.
    #: Benchmarks (data=vqa, gqa, mc, pope) have no closed answer set: always free
    closed_answers: bool = True
    #: also run the unpruned model and report agreement with its answers
    loyalty: bool = True
    #: with loyalty, on data sets with a closed answer set: per question the KL divergence
    #: from the unpruned answer distribution and the log-probability of the unpruned answer
    distribution: bool = True
    #: how the answer distribution is scored: ``full`` teacher-forces every answer (one
    #: extra prefill per multi-token answer); ``first_token`` reads the answers' first
    #: tokens from the answering pass itself (no extra pass; answers must have distinct
    #: first tokens)
    answer_scoring: str = one_of("full", "full", "first_token")
    #: run the vision tower and projector once per distinct image, shared by every pass
    #: and every run of the sweep in one process
    #: (:mod:`prunekit.experiments.image_features`); runs whose pruner needs the vision
    #: tower's attention, and ``adapter.before_projector`` runs, do not use it. Off by
    #: default: the timings of a run that uses it leave out the vision encoder
    share_image_features: bool = False
    #: show a tqdm progress bar over the samples
    progress: bool = True


@dataclass
class TinyLoaderConf:
    _target_: str = "prunekit.models.tiny.load"
    seed: int = 0
    image_size: int = bounded(64, ge=1)
    patch_size: int = bounded(8, ge=1)
    hidden_size: int = bounded(32, ge=4, multiple_of=4)  # 4 attention heads
    num_layers: int = bounded(2, ge=1)
    initializer_range: float = bounded(0.1, gt=0)

    @staticmethod
    def check(node: Any, path: str) -> None:
        """Checks across fields (called by ``finalize``)."""
        if node.image_size % node.patch_size:
            raise ValueError(
                f"{path}.image_size must be a multiple of {path}.patch_size "
                f"({node.patch_size}), got {node.image_size}"
            )


@dataclass
class MiniLlavaLoaderConf:
    _target_: str = "prunekit.models.minillava.load"
    image_size: int = bounded(224, ge=112, le=224, multiple_of=14)  # minillava.RESOLUTIONS
    attn_implementation: str = one_of("sdpa", "sdpa", "eager")


@dataclass
class ModelConf:
    """A model option: ``loader`` is instantiated (Hydra ``_target_``) into ``(model, processor)``.

    ``prompt`` is the model's prompt format, ``{question}`` replaced by the
    question; ``null``: the processor's own ``chat_prompt(question)``.
    ``llm_layers`` is the number of decoder layers of the language model, which
    lets ``adapter.llm_layer`` be checked at composition, without loading the
    model; ``null`` (unknown): it is checked when the model is loaded, before
    the first run of a sweep.
    """

    name: str = MISSING
    loader: Any = MISSING
    prompt: Optional[str] = "<image>\n{question}"  # noqa: UP045
    llm_layers: Optional[int] = bounded(None, ge=1)  # noqa: UP045


@dataclass
class MiniLlavaModelConf(ModelConf):
    loader: MiniLlavaLoaderConf = field(default_factory=MiniLlavaLoaderConf)
    prompt: Optional[str] = None  # noqa: UP045
    llm_layers: Optional[int] = bounded(30, ge=1)  # noqa: UP045 - SmolLM2-135M


@dataclass
class TinyModelConf(ModelConf):
    loader: TinyLoaderConf = field(default_factory=TinyLoaderConf)
    llm_layers: Optional[int] = "${.loader.num_layers}"  # type: ignore[assignment]  # noqa: UP045


@dataclass
class HfLoaderConf:
    """:func:`prunekit.models.hf.load_hf`'s arguments, taken from the ``model`` node's keys."""

    _target_: str = "prunekit.models.hf.load_hf"
    path: str = "${..path}"
    revision: Optional[str] = "${..revision}"  # noqa: UP045
    dtype: str = "${..dtype}"
    device_map: Optional[str] = "${..device_map}"  # noqa: UP045
    attn_implementation: Optional[str] = "${..attn_implementation}"  # noqa: UP045
    trust_remote_code: bool = "${..trust_remote_code}"  # type: ignore[assignment]


@dataclass
class HfModelConf(ModelConf):
    """Any checkpoint of a supported family (:func:`prunekit.models.hf.load_hf`).

    ``path``: a hub id or a local folder (required). ``prompt`` ``null``: the
    checkpoint's own chat template. ``llm_layers`` ``null``: read from the
    checkpoint's ``config.json`` at composition when it is on disk.
    """

    name: str = "hf"
    path: str = MISSING
    revision: Optional[str] = None  # noqa: UP045
    dtype: str = one_of("auto", "auto", "bfloat16", "float16", "float32")
    #: e.g. ``auto`` to spread the model over the GPUs of a node; ``null``: on ``device``
    device_map: Optional[str] = None  # noqa: UP045
    attn_implementation: Optional[str] = None  # noqa: UP045
    trust_remote_code: bool = False
    loader: HfLoaderConf = field(default_factory=HfLoaderConf)
    prompt: Optional[str] = None  # noqa: UP045


@dataclass
class TinyDataConf:
    """A handful of generated shape pictures with shape / colour questions."""

    _target_: str = "prunekit.experiments.datasets.tiny"
    name: str = "tiny"
    n_samples: int = bounded(8, ge=1)
    image_size: int = bounded(64, ge=8)
    seed: int = 0


@dataclass
class EasyVQAConf:
    """A fixed, seeded subset of the easy-VQA test split (PyPI ``easy-vqa``)."""

    _target_: str = "prunekit.experiments.datasets.easyvqa"
    name: str = "easyvqa"
    split: str = one_of("test", "train", "test")
    n_samples: int = bounded(200, ge=1)
    seed: int = 0


@dataclass
class ShapesConf:
    """A fixed prefix of the shapes test split (:mod:`prunekit.data.shapes`)."""

    _target_: str = "prunekit.experiments.datasets.shapes"
    name: str = "shapes"
    split: str = one_of("test", "train", "test")
    n_images: int = bounded(100, ge=1)
    per_kind: int = bounded(1, ge=1)
    seed: int = 0


@dataclass
class BenchmarkColumnsConf:
    """Which column holds what (``null``: found by name, see
    :data:`prunekit.data.benchmarks.COLUMNS`)."""

    id: Optional[str] = None  # noqa: UP045
    image: Optional[str] = None  # noqa: UP045
    question: Optional[str] = None  # noqa: UP045
    #: ``vqa``: the human answers (a list per question)
    answers: Optional[str] = None  # noqa: UP045
    answer: Optional[str] = None  # noqa: UP045
    #: ``mc``: a list column; ``null``: ``options``, ``choices`` or letter columns A, B, ...
    options: Optional[str] = None  # noqa: UP045
    hint: Optional[str] = None  # noqa: UP045


@dataclass
class BenchmarkDataConf:
    """A local copy of a standard benchmark (:func:`prunekit.experiments.datasets.benchmark`).

    ``path`` (required): a ``.jsonl`` / ``.json`` / ``.csv`` / ``.parquet`` file or a
    ``datasets`` ``save_to_disk`` folder; ``n_samples`` ``null``: every question;
    ``prompt_suffix`` ``null``: the family's conventional instruction.
    """

    _target_: str = "prunekit.experiments.datasets.benchmark"
    name: str = MISSING
    family: str = one_of("vqa", "vqa", "gqa", "mc", "pope")
    path: str = MISSING
    split: Optional[str] = None  # noqa: UP045
    image_root: Optional[str] = None  # noqa: UP045
    #: a %-format from the image column's value to a file name, e.g. ``%s.jpg``
    image_file: Optional[str] = None  # noqa: UP045
    n_samples: Optional[int] = bounded(None, ge=1)  # noqa: UP045
    prompt_suffix: Optional[str] = None  # noqa: UP045
    #: ``vqa``: normalise the human answers like the prediction (TextVQA, VizWiz)
    normalize_answers: bool = False
    columns: BenchmarkColumnsConf = field(default_factory=BenchmarkColumnsConf)


@dataclass
class PrunekitConf:
    """The primary config (``prunekit/conf/config.yaml`` extends it)."""

    pruner: Any = MISSING
    #: used by ``pruner=composed`` only; ``None`` for other pruners
    relevance: Any = None
    selection: Any = None
    model: Any = MISSING
    data: Any = MISSING
    bench: BenchConf = field(default_factory=BenchConf)
    adapter: AdapterConf = field(default_factory=AdapterConf)
    #: tokens kept per image (int) or fraction kept (float in (0, 1])
    budget: Any = 0.222
    seed: int = 0
    #: ``cpu``, ``cuda``, ``cuda:1``, ... or ``auto`` (CUDA when available)
    device: str = "cpu"


# -- component schemas generated from the registry ----------------------------------------
def _type_hints(factory: Any) -> dict[str, Any]:
    target = factory.__init__ if inspect.isclass(factory) else factory
    try:
        return typing.get_type_hints(target)
    except Exception:  # unresolvable forward references: fall back to the defaults' types
        return {}


def config_type(hint: Any, default: Any = None) -> Any:
    """The OmegaConf field type for an annotation (``Any`` where OmegaConf has none)."""
    if hint is None:
        return type(default) if type(default) in _PRIMITIVES else Any
    if hint in _PRIMITIVES:
        return hint
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is Literal:
        kinds = {type(a) for a in args}
        return kinds.pop() if len(kinds) == 1 and next(iter(kinds)) in _PRIMITIVES else Any
    if origin in (Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            inner = config_type(rest[0])
            if inner is Any:
                return Any
            return Optional[inner] if len(rest) < len(args) else inner  # noqa: UP045
        return Any
    if origin in (list, tuple, Sequence, typing.Sequence) and args:
        inner = config_type(args[0])
        return list[inner] if inner in _PRIMITIVES else Any
    return Any


def _representable(value: Any) -> bool:
    return value is None or type(value) in _PRIMITIVES


def component_schema(kind: str, spec: Any) -> type:
    """A dataclass for one registered component: ``name`` plus its configurable parameters."""
    hints = _type_hints(spec.factory)
    fields: list[tuple[str, Any, Any]] = [("name", str, field(default=spec.name))]
    for pname, default in spec.parameters().items():
        if pname == "name" or (
            kind == "pruner" and spec.name == "composed" and pname in COMPOSED_FROM_GROUPS
        ):
            continue
        if default is inspect.Parameter.empty:
            fields.append((pname, config_type(hints.get(pname)), field(default=MISSING)))
            continue
        if not _representable(default):
            continue  # a tensor, a tuple, a callable: the factory's default applies
        ftype = config_type(hints.get(pname), default)
        if default is None and ftype is not Any and typing.get_origin(ftype) is not Union:
            ftype = Optional[ftype]  # noqa: UP045
        fields.append((pname, ftype, field(default=default)))
    title = "".join(part.capitalize() for part in f"{spec.name}_{kind}".split("_"))
    return dataclasses.make_dataclass(f"{title}Conf", fields)


def _has_yaml(group: str, name: str) -> bool:
    return (resources.files("prunekit.conf") / group / f"{name}.yaml").is_file()


def register_configs() -> None:
    """Store every schema in Hydra's ConfigStore (idempotent; plugins included)."""
    from hydra.core.config_store import ConfigStore

    from prunekit.registry import get_registry

    store = ConfigStore.instance()
    store.store(name="prunekit_schema", node=PrunekitConf)
    store.store(group="schema/model", name="tiny", node=TinyModelConf)
    store.store(group="schema/model", name="minillava", node=MiniLlavaModelConf)
    store.store(group="schema/model", name="hf", node=HfModelConf)
    store.store(group="schema/model", name="base", node=ModelConf)
    store.store(group="schema/data", name="tiny", node=TinyDataConf)
    store.store(group="schema/data", name="easyvqa", node=EasyVQAConf)
    store.store(group="schema/data", name="shapes", node=ShapesConf)
    store.store(group="schema/data", name="benchmark", node=BenchmarkDataConf)
    registry = get_registry()
    for kind in COMPONENT_GROUPS:
        for spec in registry.specs(kind):
            schema = component_schema(kind, spec)
            store.store(group=f"schema/{kind}", name=spec.name, node=schema)
            if not _has_yaml(kind, spec.name):
                store.store(group=kind, name=spec.name, node=schema)
