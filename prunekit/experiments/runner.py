"""Running one configuration: one image and prompt (``prunekit run``) or a whole data set (a sweep's run)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from prunekit.data.images import load_image
from prunekit.experiments.bench import (
    answer_logprobs,
    efficiency,
    generate_answers,
    prompt_text,
    score,
)
from prunekit.experiments.config import (
    attach_options,
    build_model,
    build_pruner,
    load_data,
    resolve_device,
)
from prunekit.experiments.datasets import METRICS
from prunekit.experiments.image_features import image_feature_memo, shared_image_features
from prunekit.experiments.records import environment, write_json

#: keys that do not change a run's results (left out when a rerun compares configs);
#: ``model.llm_layers`` only checks ``adapter.llm_layer`` (runs recorded before it existed match)
NON_RESULT_KEYS = (
    ("bench", "progress"),
    ("bench", "share_image_features"),  # the same numbers, only the encoder time differs
    ("model", "llm_layers"),
)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's random generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolved_config(cfg: DictConfig) -> dict[str, Any]:
    """The fully resolved config as plain data (without Hydra's own node)."""
    keys = [k for k in cfg if k != "hydra"]
    return OmegaConf.to_container(OmegaConf.masked_copy(cfg, keys), resolve=True)


def result_key(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` without the keys that do not change results."""
    config = json.loads(json.dumps(config))
    for path in NON_RESULT_KEYS:
        node = config
        for part in path[:-1]:
            node = node.get(part, {})
        node.pop(path[-1], None)
    return config


def finished_result(run_dir: Path, config: dict[str, Any]) -> dict[str, Any] | None:
    """The run's ``result.json`` if it finished with the same config, else ``None``."""
    path = Path(run_dir) / "result.json"
    if not path.is_file():
        return None
    try:
        result = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return result if result_key(result.get("config", {})) == result_key(config) else None


# -- prunekit run -------------------------------------------------------------------------
@dataclass
class RunReport:
    """What ``prunekit run`` measured on one image and one prompt."""

    model: str
    pruner: str
    budget: Any
    prompt: str
    answer: str
    tokens_in: int
    tokens_kept: int
    seconds: float
    picture: Path | None

    def summary(self) -> str:
        """The report as ``prunekit run`` prints it."""
        lines = [
            f"model: {self.model}   pruner: {self.pruner}   budget: {self.budget}",
            f"prompt: {self.prompt}",
            f"answer: {self.answer}",
            f"tokens kept: {self.tokens_kept} / {self.tokens_in} "
            f"({100 * self.tokens_kept / max(self.tokens_in, 1):.1f} %)",
            f"time: {1e3 * self.seconds:.1f} ms (generate, pruning included)",
        ]
        if self.picture is not None:
            lines.append(f"kept-token picture: {self.picture}")
        else:
            lines.append(
                "kept-token picture: not written (the kept tokens do not form a square grid)"
            )
        return "\n".join(lines)


@torch.no_grad()
def run_single(
    cfg: DictConfig, *, image: str, prompt: str, out: str | Path | None, size: int = 256
) -> RunReport:
    """Prune ``cfg``'s model on one image and prompt: the answer, the tokens kept, the time, a picture."""
    import prunekit
    from prunekit.viz import kept_overlay

    seed_everything(cfg.seed)
    pruner = build_pruner(cfg)
    picture = load_image(image)
    model, processor = build_model(cfg)
    inputs = processor(
        images=[picture],
        text=[prompt_text(cfg.model.prompt, prompt, processor)],
        return_tensors="pt",
        padding=True,
    )
    device = resolve_device(cfg.device)
    inputs = {k: v.to(device) if hasattr(v, "to") else v for k, v in dict(inputs).items()}
    options = attach_options(cfg, processor)
    kwargs = dict(
        max_new_tokens=cfg.bench.max_new_tokens,
        do_sample=False,
        return_dict_in_generate=True,
        output_scores=True,
    )
    with prunekit.attach(model, pruner, budget=cfg.budget, **options) as handle:
        model.generate(**inputs, **{**kwargs, "max_new_tokens": 1})  # warm-up (one-off costs)
        handle.results.clear()
        tic = time.perf_counter()
        output = model.generate(**inputs, **kwargs)
        seconds = time.perf_counter() - tic
    new = output.sequences[:, output.sequences.shape[1] - len(output.scores) :]
    answer = processor.batch_decode(new, skip_special_tokens=True)[0].strip()
    result = handle.results[0]
    mask = result.mask[0]
    n_tokens = int(mask.shape[0])
    side = int(round(n_tokens**0.5))
    written = None
    if out is not None and side * side == n_tokens:
        written = Path(out)
        written.parent.mkdir(parents=True, exist_ok=True)
        kept_overlay(picture, mask, (side, side), size=size).save(written)
    return RunReport(
        model=cfg.model.name,
        pruner=repr(pruner),
        budget=cfg.budget,
        prompt=prompt,
        answer=answer,
        tokens_in=n_tokens,
        tokens_kept=int(result.counts[0]),
        seconds=seconds,
        picture=written,
    )


# -- one run of a sweep ------------------------------------------------------------------
#: the file name of the unpruned reference answers in a sweep's cache folder
REFERENCE_FILE = "unpruned-{digest}.json"


def reference_key(cfg: DictConfig, data: Any) -> dict[str, Any]:
    """What the unpruned answers depend on: the model, the data (config, and the questions
    asked: a data file rewritten in place is not mistaken for the old one) and decoding."""
    content = [[s.id, s.query] for s in data.samples]
    return {
        "model": OmegaConf.to_container(cfg.model, resolve=True),
        "data": OmegaConf.to_container(cfg.data, resolve=True),
        "data_content": hashlib.sha1(json.dumps(content).encode()).hexdigest(),
        "bench": {k: cfg.bench[k] for k in ("batch_size", "max_new_tokens", "closed_answers")},
        "seed": cfg.seed,
        "device": cfg.device,
    }


def _reference_answers(
    cfg: DictConfig, model: Any, processor: Any, data: Any, cache_dir: Path | None
) -> list[str]:
    """The unpruned model's answers, computed once per model, data set and decoding settings.

    With ``cache_dir`` (a sweep's ``.cache`` folder) they are stored in
    ``unpruned-<digest>.json`` and every later run of the sweep -- in this process, in
    a rerun, or in another process of a parallel or cluster launcher sharing the
    folder -- reads them instead of generating them again; a file lock makes the
    processes that start together wait for the one computing them.
    """
    key_config = reference_key(cfg, data)
    if cache_dir is None:
        return _unpruned_generation(cfg, model, processor, data).answers

    def read(cached: dict[str, Any]) -> list[str] | None:
        answers = cached.get("answers", [])
        return answers if len(answers) == len(data) else None

    def compute() -> tuple[list[str], dict[str, Any]]:
        generation = _unpruned_generation(cfg, model, processor, data)
        return generation.answers, {
            "answers": generation.answers,
            "prefill_seconds": generation.prefill_seconds,
            "decode_seconds": generation.decode_seconds,
        }

    return _computed_once(cache_dir, REFERENCE_FILE, key_config, read, compute)


def _computed_once(
    cache_dir: Path,
    template: str,
    key_config: dict[str, Any],
    read: Callable[[dict[str, Any]], Any],
    compute: Callable[[], tuple[Any, dict[str, Any]]],
) -> Any:
    """A value computed once per sweep and key: ``template`` (with ``{digest}``, the key's
    hash) names its file in ``cache_dir``; ``read(cached)`` returns the stored value, or
    ``None`` when the file does not hold a complete one; ``compute()`` returns the value
    and what to store. A file lock makes processes that start together wait for the one
    computing it."""
    from filelock import FileLock

    digest = hashlib.sha1(json.dumps(key_config, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(cache_dir) / template.format(digest=digest)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if path.is_file():
            try:
                cached = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                cached = {}
            value = read(cached) if cached.get("config") == key_config else None
            if value is not None:
                return value
        value, stored = compute()
        write_json(path, {"config": key_config, **stored})
    return value


#: the file name of the unpruned answer distributions in a sweep's cache folder
DISTRIBUTION_FILE = "distribution-{digest}.json"


def measures_distribution(cfg: DictConfig, data: Any) -> bool:
    """Whether runs record the answer distributions: ``bench.distribution`` and
    ``bench.loyalty`` on, and a data set with a closed answer set."""
    return bool(cfg.bench.distribution and cfg.bench.loyalty and data.answers)


def distribution_key(cfg: DictConfig, data: Any) -> dict[str, Any]:
    """What the unpruned answer distributions depend on: :func:`reference_key`'s model,
    data, seed and device, the batch size, and the closed answers (the columns)."""
    key = reference_key(cfg, data)
    key["bench"] = {"batch_size": cfg.bench.batch_size}
    if cfg.bench.answer_scoring != "full":  # (keys written before the option stay valid)
        key["bench"]["answer_scoring"] = cfg.bench.answer_scoring
    key["answers"] = list(data.answers)
    return key


def _reference_distribution(
    cfg: DictConfig, model: Any, processor: Any, data: Any, cache_dir: Path | None
) -> torch.Tensor:
    """The unpruned model's log-probabilities of the closed answers, one row per question.

    Cached as :func:`_reference_answers` caches the answers: ``distribution-<digest>.json``
    beside them in the sweep's ``.cache`` folder (JSON floats read back bit for bit), under
    a file lock, so every pruned run of a sweep reuses one unpruned pass.
    """
    key_config = distribution_key(cfg, data)
    if cache_dir is None:
        return _unpruned_distribution(cfg, model, processor, data)

    def read(cached: dict[str, Any]) -> torch.Tensor | None:
        logprobs = cached.get("logprobs", [])
        return torch.tensor(logprobs, dtype=torch.float64) if len(logprobs) == len(data) else None

    def compute() -> tuple[torch.Tensor, dict[str, Any]]:
        distribution = _unpruned_distribution(cfg, model, processor, data)
        return distribution, {"logprobs": distribution.tolist()}

    return _computed_once(cache_dir, DISTRIBUTION_FILE, key_config, read, compute)


def _unpruned_distribution(cfg: DictConfig, model: Any, processor: Any, data: Any) -> torch.Tensor:
    if cfg.bench.answer_scoring == "first_token":
        return _unpruned_generation(
            cfg, model, processor, data, first_token_scores=True
        ).answer_logprobs
    seed_everything(cfg.seed)
    return answer_logprobs(
        model,
        processor,
        data.samples,
        data.answers,
        prompt=cfg.model.prompt,
        batch_size=cfg.bench.batch_size,
        progress=cfg.bench.progress,
        desc="unpruned answer distributions",
    )


def _unpruned_generation(
    cfg: DictConfig, model: Any, processor: Any, data: Any, *, first_token_scores: bool = False
) -> Any:
    seed_everything(cfg.seed)
    return generate_answers(
        model,
        processor,
        data.samples,
        prompt=cfg.model.prompt,
        max_new_tokens=cfg.bench.max_new_tokens,
        batch_size=cfg.bench.batch_size,
        answers=data.answers if cfg.bench.closed_answers else None,
        progress=cfg.bench.progress,
        desc="unpruned reference",
        first_token_scores=first_token_scores,
    )


def _shared_features(cfg: DictConfig, model: Any, pruner: Any = None) -> Any:
    """The context in which a pass of the run shares the image features
    (:func:`~prunekit.experiments.image_features.shared_image_features`, with the
    process-level memo of ``model``, so every run of a sweep in this process shares
    it), or a null context: ``bench.share_image_features`` off, or a pruned pass
    (``pruner`` given) that computes the features otherwise -- the vision tower's
    attention captured by hooks during the encoder pass (``pruner.required_signals``),
    which a memo hit would skip, or ``adapter.before_projector`` (the adapter calls the
    vision tower itself)."""
    from prunekit.adapters.attention import ATTENTION_SIGNALS

    if not cfg.bench.share_image_features:
        return contextlib.nullcontext()
    if pruner is not None and (
        cfg.adapter.get("before_projector", False)
        or set(getattr(pruner, "required_signals", ())) & ATTENTION_SIGNALS
    ):
        return contextlib.nullcontext()
    return shared_image_features(model, image_feature_memo(model))


@contextlib.contextmanager
def _pruned(cfg: DictConfig, model: Any, pruner: Any, options: dict[str, Any]) -> Any:
    """``prunekit.attach`` of the run, within :func:`_shared_features` (yields the handle)."""
    import prunekit

    with _shared_features(cfg, model, pruner):
        with prunekit.attach(model, pruner, budget=cfg.budget, **options) as handle:
            yield handle


def run_dataset(
    cfg: DictConfig,
    run_dir: str | Path,
    *,
    overrides: list[str] | None = None,
    cache_dir: Path | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """Evaluate ``cfg`` on its data set and write the run folder; ``result.json`` is written last.

    The folder gets ``config.yaml`` (the fully resolved config),
    ``predictions.jsonl`` (one line per sample: the output, the answer its metric
    read, its score) and ``result.json`` (config, seed, versions, git commit, device,
    metrics with the prefill / decoding times, and ``efficiency``: the FLOPs and
    KV-cache savings of :mod:`prunekit.accounting`). The unpruned reference answers
    (``bench.loyalty``) come from the sweep's cache (:func:`_reference_answers`), and so
    do the unpruned answer distributions (:func:`_reference_distribution`) where the runs
    record ``kl`` and ``logprob_reference`` (:func:`measures_distribution`). With
    ``bench.share_image_features`` the passes run the vision tower and projector once per
    distinct image, shared with the other runs of the sweep in this process
    (:func:`_shared_features`); the run's timings then leave the vision encoder out.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    started = datetime.now(timezone.utc)
    config = resolved_config(cfg)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(config))

    seed_everything(cfg.seed)
    pruner = build_pruner(cfg)
    data = load_data(cfg)
    model, processor = build_model(cfg)
    with _shared_features(cfg, model):
        reference = (
            _reference_answers(cfg, model, processor, data, cache_dir)
            if cfg.bench.loyalty
            else None
        )
    options = attach_options(cfg, processor)
    measured = measures_distribution(cfg, data)
    first_token = measured and cfg.bench.answer_scoring == "first_token"
    if first_token and not cfg.bench.closed_answers:
        raise ValueError(
            "bench.answer_scoring=first_token reads the distribution from the answering pass, "
            "which then must decode the closed answers: set bench.closed_answers=true"
        )
    seed_everything(cfg.seed)
    generation = generate_answers(
        model,
        processor,
        data.samples,
        prompt=cfg.model.prompt,
        max_new_tokens=cfg.bench.max_new_tokens,
        batch_size=cfg.bench.batch_size,
        answers=data.answers if cfg.bench.closed_answers else None,
        context=lambda: _pruned(cfg, model, pruner, options),
        progress=cfg.bench.progress,
        desc=name or run_dir.name,
        first_token_scores=first_token,
    )
    distribution = reference_distribution = None
    if measured:
        with _shared_features(cfg, model):
            reference_distribution = _reference_distribution(cfg, model, processor, data, cache_dir)
    if first_token:
        distribution = generation.answer_logprobs
    elif measured:
        seed_everything(cfg.seed)
        distribution = answer_logprobs(
            model,
            processor,
            data.samples,
            data.answers,
            prompt=cfg.model.prompt,
            batch_size=cfg.bench.batch_size,
            context=lambda: _pruned(cfg, model, pruner, options),
            progress=cfg.bench.progress,
            desc=f"{name or run_dir.name} (answer distributions)",
        )
    family = getattr(data, "family", "exact")
    metrics, rows = score(
        data.samples,
        generation,
        reference,
        family=family,
        normalize_answers=getattr(data, "normalize_answers", False),
        distribution=distribution,
        reference_distribution=reference_distribution,
        answers=data.answers,
    )
    accounting = efficiency(
        getattr(model, "config", None),
        generation,
        pruned_after_layer=cfg.adapter.llm_layer or 0,
        dtype=next(model.parameters()).dtype,
    )
    with (run_dir / "predictions.jsonl").open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    finished = datetime.now(timezone.utc)
    result = {
        "name": name or run_dir.name,
        "overrides": list(overrides or []),
        "seed": cfg.seed,
        "config": config,
        "pruner": repr(pruner),
        "data": {
            "name": data.name,
            "family": family,
            "metric": METRICS.get(family, family),
            "n_samples": len(data),
            "answers": data.answers,
        },
        "metrics": metrics,
        "efficiency": accounting,
        "environment": environment(resolve_device(cfg.device)),
        "started": started.isoformat(),
        "finished": finished.isoformat(),
        "seconds": (finished - started).total_seconds(),
    }
    write_json(run_dir / "result.json", result)
    return result
