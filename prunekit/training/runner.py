"""Shared-prefix forward passes of MiniLLaVA's language model for training and evaluation.

The LLM runs the image part of the prompt (``<|im_start|>user\\n`` + visual tokens) once
per image, and every question about that image continues from its KV cache: the same
computation as one sequence per question, since the image precedes the question."""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from prunekit.models import minillava


@functools.cache
def _cache_kw_of(forward: Any) -> str:
    params = inspect.signature(forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def cache_kw(lm: torch.nn.Module) -> str:
    """The KV-cache keyword of ``lm``'s forward: ``cache`` (transformers >= 5.2x) or
    ``past_key_values``."""
    return _cache_kw_of(type(lm).forward)


def output_cache(out: Any) -> Any:
    """The KV cache of a model output, under either of its names."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


class Runner:
    """Shared-prefix LLM forward passes for training and evaluation.

    ``model``: a LLaVA-style model (``model.model.language_model``, ``model.lm_head``);
    ``tokenizer``: its tokenizer (``MiniLLaVA``'s chat tokens); ``bf16``: bfloat16
    autocast on the CPU.
    """

    def __init__(self, model: Any, tokenizer: Any, bf16: bool):
        self.model = model
        self.lm = model.model.language_model
        self.embed = self.lm.embed_tokens
        self.head = model.lm_head
        self.tok = tokenizer
        self.bf16 = bf16
        head, _ = minillava.prompt_parts("")
        self.head_ids = tokenizer(head, add_special_tokens=False)["input_ids"]
        self.end_id = tokenizer.convert_tokens_to_ids(minillava.ANSWER_END)
        self._ids: dict[str, list[int]] = {}
        self._state: tuple[Any, torch.Tensor, torch.Tensor] | None = None

    def ids(self, text: str) -> list[int]:
        """``text``'s token ids without special tokens (memoised)."""
        if text not in self._ids:
            self._ids[text] = self.tok(text, add_special_tokens=False)["input_ids"]
        return self._ids[text]

    def autocast(self) -> torch.autocast:
        """bfloat16 autocast on the CPU when :attr:`bf16`, a no-op otherwise."""
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16)

    def prefix(self, image_embeds: torch.Tensor) -> tuple[Any, int]:
        """Run ``<|im_start|>user\\n`` + the visual tokens; return the KV cache and length."""
        b = image_embeds.shape[0]
        head = self.embed(torch.tensor(self.head_ids)).expand(b, -1, -1)
        embeds = torch.cat([head, image_embeds.to(head.dtype)], dim=1)
        cache = DynamicCache(config=self.lm.config)
        with self.autocast():
            out = self.lm(inputs_embeds=embeds, use_cache=True, **{cache_kw(self.lm): cache})
        return output_cache(out), embeds.shape[1]

    def suffix(
        self, cache: Any, plen: int, owners: list[int], seqs: list[list[int]]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Continue image ``owners[j]``'s cache with token ids ``seqs[j]`` (left-padded).

        Returns the last hidden states ``(Q, L, d)``, the padded ids and the suffix mask.
        """
        q, length = len(seqs), max(len(s) for s in seqs)
        ids = torch.full((q, length), self.end_id, dtype=torch.long)
        mask = torch.zeros(q, length, dtype=torch.long)
        for j, s in enumerate(seqs):
            ids[j, length - len(s) :] = torch.tensor(s)
            mask[j, length - len(s) :] = 1
        cache.batch_select_indices(torch.tensor(owners))
        attention = torch.cat([torch.ones(q, plen, dtype=torch.long), mask], dim=1)
        positions = (plen + mask.cumsum(1) - 1).clamp_min(plen)
        with self.autocast():
            out = self.lm(
                inputs_embeds=self.embed(ids),
                attention_mask=attention,
                position_ids=positions,
                use_cache=True,
                **{cache_kw(self.lm): cache},
            )
        self._state = (output_cache(out), attention, positions[:, -1])
        return out.last_hidden_state, ids, mask

    def loss(
        self, image_embeds: torch.Tensor, items: list[tuple[int, str, str]]
    ) -> tuple[torch.Tensor, int]:
        """Mean cross-entropy over answer tokens (answer + ``<|im_end|>``) and their count.

        ``items``: ``(image index, question, answer)``; the question is the user text
        after the image (``CAPTION_PROMPT`` for captions).
        """
        cache, plen = self.prefix(image_embeds)
        seqs, targets = [], []
        for _, question, answer in items:
            prompt = self.ids(minillava.prompt_parts(question)[1])
            target = self.ids(answer) + [self.end_id]
            seqs.append(prompt + target)
            targets.append(target)
        hidden, ids, _ = self.suffix(cache, plen, [i for i, _, _ in items], seqs)
        length = ids.shape[1]
        rows, cols, labels = [], [], []
        for j, target in enumerate(targets):  # position t predicts token t + 1
            for k, token in enumerate(target):
                rows.append(j)
                cols.append(length - len(target) - 1 + k)
                labels.append(token)
        with self.autocast():
            logits = self.head(hidden[torch.tensor(rows), torch.tensor(cols)])
        loss = F.cross_entropy(logits.float(), torch.tensor(labels))
        return loss, len(labels)

    def first_logits(
        self, image_embeds: torch.Tensor, items: list[tuple[int, str]]
    ) -> torch.Tensor:
        """``(Q, vocab)`` float32 logits of the first answer token for each ``(image index,
        question)``."""
        cache, plen = self.prefix(image_embeds)
        seqs = [self.ids(minillava.prompt_parts(q)[1]) for _, q in items]
        hidden, _, _ = self.suffix(cache, plen, [i for i, _ in items], seqs)
        with self.autocast():
            return self.head(hidden[:, -1]).float()

    @torch.no_grad()
    def answer(
        self, image_embeds: torch.Tensor, items: list[tuple[int, str]], max_new_tokens: int = 4
    ) -> tuple[torch.Tensor, list[str]]:
        """For each ``(image index, question)``: the first answer token's logits
        (:meth:`first_logits`) and the greedy decoding (up to ``max_new_tokens``,
        lower-cased)."""
        logits = self.first_logits(image_embeds, items)
        cache, attention, last = self._state
        generated = [logits.argmax(-1)]
        done = generated[0] == self.end_id
        for _ in range(max_new_tokens - 1):
            if bool(done.all()):
                break
            attention = torch.cat([attention, torch.ones(len(items), 1, dtype=torch.long)], 1)
            last = last + 1
            with self.autocast():
                out = self.lm(
                    inputs_embeds=self.embed(generated[-1][:, None]),
                    attention_mask=attention,
                    position_ids=last[:, None],
                    use_cache=True,
                    **{cache_kw(self.lm): cache},
                )
                step = self.head(out.last_hidden_state[:, -1]).float().argmax(-1)
            cache = output_cache(out)
            generated.append(step)
            done = done | (step == self.end_id)
        texts = []
        for row in torch.stack(generated, 1).tolist():
            if self.end_id in row:
                row = row[: row.index(self.end_id)]
            texts.append(self.tok.decode(row, skip_special_tokens=True).strip().lower())
        return logits, texts
