"""The lmms-eval model class behind ``--model prunekit`` (see :mod:`prunekit.integrations.lmms_eval`).

Private: importing it needs lmms-eval, which the package's entry point must not import.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from typing import Any

import torch
from accelerate import Accelerator
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from PIL import Image
from tqdm.auto import tqdm

import prunekit
from prunekit.integrations.lmms_eval import _NO_PRUNER, split_model_args

#: ``max_new_tokens`` when neither the task nor ``--model_args`` sets one (as lmms-eval's llava_hf)
DEFAULT_MAX_NEW_TOKENS = 1024
#: generation keyword arguments of lmms-eval tasks that ``model.generate`` takes as they are
_GENERATE_KEYS = ("num_beams", "top_p", "top_k", "repetition_penalty")
#: per-token inputs of some processors (Qwen-VL: 0 text, 1 image) that follow ``input_ids``
_TOKEN_TYPE_KEYS = ("mm_token_type_ids", "token_type_ids")


def _auto_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


class PrunekitLMM(lmms):
    """A Hugging Face VLM of any family prunekit supports, pruned by ``prunekit.attach`` on every call.

    Built by lmms-eval from ``--model_args`` (see :mod:`prunekit.integrations.lmms_eval` for the
    keys); in Python: ``PrunekitLMM(pretrained=DIR, pruner="resprune", budget=128)``. Each batch
    runs inside its own ``prunekit.attach`` block; :attr:`kept_tokens` collects the tokens kept
    per image, in call order.
    """

    is_simple = True

    def __init__(
        self,
        pretrained: str,
        pruner: str | None = None,
        budget: int | float | str | None = None,
        *,
        device: str | None = None,
        batch_size: int | str = 1,
        max_new_tokens: int | str = DEFAULT_MAX_NEW_TOKENS,
        max_batch_size: int | None = None,  # passed by lmms-eval's CLI; batches are fixed-size here
        **model_args: Any,
    ) -> None:
        super().__init__()
        args = split_model_args(
            {"pretrained": pretrained, "pruner": pruner, "budget": budget, **model_args}
        )
        self.pretrained = args.pretrained
        self.budget = args.budget
        self.adapter_options = dict(args.adapter)
        self.pruner = (
            None
            if args.pruner == _NO_PRUNER
            else prunekit.create_pruner(args.pruner, **args.pruner_params)
        )
        batch_size = int(batch_size)
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.batch_size_per_gpu = batch_size
        self.max_new_tokens = int(max_new_tokens)

        on_cpu = not torch.cuda.is_available() or (device is not None and device.startswith("cpu"))
        # cpu=True: several CPU processes (torchrun / accelerate launch) form a gloo group
        # (accelerate otherwise treats each CPU process as a run of its own)
        accelerator = Accelerator(cpu=on_cpu)
        device_map = args.load.get("device_map")
        if accelerator.num_processes > 1 and device_map is None:
            # data parallel: one process per GPU (or CPU processes), each with a full model
            device = "cpu" if on_cpu else f"cuda:{accelerator.local_process_index}"
        self.accelerator = accelerator
        self._rank = accelerator.process_index if accelerator.num_processes > 1 else 0
        self._world_size = accelerator.num_processes if accelerator.num_processes > 1 else 1

        from prunekit.models import load_hf

        model, processor = load_hf(self.pretrained, **args.load)
        if device_map is None:
            model.to(device or _auto_device())
        self._model = model.eval()
        self.processor = processor
        tokenizer = getattr(processor, "tokenizer", processor)
        tokenizer.padding_side = "left"  # batched generation
        self.tokenizer = tokenizer
        if self.pruner is not None and "tokenizer" not in self.adapter_options:
            # text-conditioned pruners read the prompt's words through the tokenizer
            self.adapter_options["tokenizer"] = tokenizer
        self.kept_tokens: list[int] = []

    # -- what lmms-eval reads -------------------------------------------------------------------

    @property
    def model(self) -> torch.nn.Module:
        """The Hugging Face model (pruned only inside this class's calls)."""
        return self._model

    @property
    def device(self) -> torch.device:
        """Where the inputs go (the model's first device with ``device_map``)."""
        return self._model.device

    @property
    def batch_size(self) -> int:
        """Requests per ``generate`` call in each process."""
        return self.batch_size_per_gpu

    # -- prompts, inputs, pruning ---------------------------------------------------------------

    def chat_prompt(self, context: str, n_images: int) -> str:
        """The checkpoint's chat template around ``context`` with ``n_images`` images first.

        ``<image>`` markers that a task already wrote into ``context`` are removed: the
        template places the images.
        """
        text = context.replace("<image>", "").strip() if n_images else context
        content = [{"type": "image"}] * n_images + [{"type": "text", "text": text}]
        messages = [{"role": "user", "content": content}]
        return self.processor.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )

    def _inputs(self, prompts: list[str], images: list[Image.Image]) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"text": prompts, "return_tensors": "pt", "padding": True}
        if images:
            kwargs["images"] = images
        inputs = dict(self.processor(**kwargs))
        dtype = self._model.dtype
        return {
            key: (
                value.to(self.device, dtype=dtype)
                if value.is_floating_point()
                else value.to(self.device)
            )
            if isinstance(value, torch.Tensor)
            else value
            for key, value in inputs.items()
        }

    def _visuals(self, doc_to_visual: Any, doc_id: int, task: str, split: str) -> list[Image.Image]:
        if doc_to_visual is None:
            return []
        visuals = doc_to_visual(self.task_dict[task][split][doc_id])
        if visuals is None:
            return []
        if isinstance(visuals, Image.Image):
            visuals = [visuals]
        out = []
        for visual in visuals:
            if not isinstance(visual, Image.Image):
                raise TypeError(
                    f"the prunekit model takes images; task {task!r} gave {type(visual).__name__} "
                    f"for doc {doc_id}"
                )
            out.append(visual.convert("RGB"))
        return out

    def _pruning(self) -> Any:
        """A fresh ``prunekit.attach`` block (attach objects are single-use), or a no-op."""
        if self.pruner is None:
            return contextlib.nullcontext()
        return prunekit.attach(self._model, self.pruner, budget=self.budget, **self.adapter_options)

    def _record(self, handle: Any) -> None:
        for result in getattr(handle, "results", []):
            self.kept_tokens.extend(int(c) for c in result.counts)

    # -- the interface ----------------------------------------------------------------------------

    def generate_until(self, requests: list[Instance]) -> list[str]:
        """Answers to ``requests``, batched by their generation arguments, in request order."""
        groups: dict[str, list[int]] = {}
        for i, request in enumerate(requests):
            key = json.dumps(request.args[1], sort_keys=True, default=repr)
            groups.setdefault(key, []).append(i)
        answers: list[str | None] = [None] * len(requests)
        bar = tqdm(total=len(requests), disable=self.rank != 0, desc="prunekit responding")
        for indices in groups.values():
            # longest prompts first: fewer pad tokens per batch, and memory errors show early
            indices.sort(key=lambda i: -len(requests[i].args[0]))
            for start in range(0, len(indices), self.batch_size):
                batch = [requests[i] for i in indices[start : start + self.batch_size]]
                for i, text in zip(indices[start : start + self.batch_size], self._generate(batch)):
                    answers[i] = text
                bar.update(len(batch))
        bar.close()
        return answers  # type: ignore[return-value]

    def _generate(self, batch: Sequence[Instance]) -> list[str]:
        gen_kwargs = dict(batch[0].args[1])  # the same for the whole batch
        until = gen_kwargs.pop("until", None)
        if until is None:
            until = []
        elif isinstance(until, str):
            until = [until]
        elif not isinstance(until, (list, tuple)):
            raise TypeError(f"gen_kwargs 'until' must be a string or a list, got {until!r}")
        max_new_tokens = int(gen_kwargs.pop("max_new_tokens", self.max_new_tokens))
        temperature = float(gen_kwargs.pop("temperature", 0) or 0)
        options: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": temperature > 0}
        if temperature > 0:
            options["temperature"] = temperature
        for key in _GENERATE_KEYS:
            if gen_kwargs.get(key) is not None:
                options[key] = gen_kwargs[key]
        if self._model.generation_config.pad_token_id is None:
            options["pad_token_id"] = self.tokenizer.pad_token_id

        prompts, images = [], []
        for context, _, doc_to_visual, doc_id, task, split in (r.args for r in batch):
            visuals = self._visuals(doc_to_visual, doc_id, task, split)
            images.extend(visuals)
            prompts.append(self.chat_prompt(context, len(visuals)))
        inputs = self._inputs(prompts, images)
        with self._pruning() as handle, torch.no_grad():
            out = self._model.generate(**inputs, **options)
        self._record(handle)
        # generate keeps the caller's layout under attach: the prompt as given, then the new tokens
        new = out[:, inputs["input_ids"].shape[1] :]
        texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
        answers = []
        for (context, *_), text in zip((r.args for r in batch), texts):
            for stop in until:
                if stop:
                    text = text.split(stop)[0]
            text = text.strip()
            self.cache_hook.add_partial("generate_until", (context, batch[0].args[1]), text)
            answers.append(text)
        return answers

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        """``(log p(continuation | prompt, images), greedy)`` per request, with pruning.

        The prompt is the chat template's (as for generation); the continuation's tokens
        follow it directly, so the log-probability is that of the answer the model would
        write. Pruning removes image tokens only, so the continuation's logits are the
        last ones of the (shorter) pruned sequence.
        """
        results = []
        for context, target, doc_to_visual, doc_id, task, split in (r.args for r in requests):
            doc = self.task_dict[task][split][doc_id] if task in self.task_dict else None
            continuation = target if isinstance(target, str) else target(doc)
            visuals = self._visuals(doc_to_visual, doc_id, task, split)
            inputs = self._inputs([self.chat_prompt(context, len(visuals))], visuals)
            cont = self.tokenizer(continuation, add_special_tokens=False, return_tensors="pt")
            cont_ids = cont["input_ids"].to(self.device)
            if cont_ids.shape[1] == 0:
                raise ValueError(f"the continuation {continuation!r} of doc {doc_id} has no tokens")
            inputs["input_ids"] = torch.cat([inputs["input_ids"], cont_ids], dim=1)
            inputs["attention_mask"] = torch.cat(
                [inputs["attention_mask"], torch.ones_like(cont_ids)], dim=1
            )
            for key in _TOKEN_TYPE_KEYS:  # the continuation is text (Qwen-VL's 3-D positions)
                if inputs.get(key) is not None:
                    inputs[key] = torch.cat([inputs[key], torch.zeros_like(cont_ids)], dim=1)
            with self._pruning() as handle, torch.no_grad():
                logits = self._model(**inputs).logits
            self._record(handle)
            n = cont_ids.shape[1]
            logprobs = torch.log_softmax(logits[0, -n - 1 : -1].float(), dim=-1)
            token_logprobs = logprobs.gather(1, cont_ids[0, :, None])[:, 0]
            greedy = bool((logprobs.argmax(dim=-1) == cont_ids[0]).all())
            results.append((float(token_logprobs.sum()), greedy))
            self.cache_hook.add_partial("loglikelihood", (context, continuation), results[-1])
        return results

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        """Not implemented: multi-round tasks raise ``NotImplementedError``."""
        raise NotImplementedError(
            "the prunekit lmms-eval model does not implement multi-round generation "
            "(generate_until_multi_round); use single-round tasks"
        )
