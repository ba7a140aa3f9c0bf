"""Pre-LLM pruning for LLaVA-style VLMs: prune the projected image features,
then feed the language model a shorter sequence.

The shared mechanism: when ``generate`` or ``forward`` of the model instance is
called with pixel values, the adapter computes the image features itself,
prunes them (all images of the batch in one batched call), removes the
placeholder positions of dropped tokens from ``input_ids`` / ``attention_mask``
(and ``labels``), re-pads the batch on the side it was padded, splices the kept
features into ``inputs_embeds`` and calls the original method without pixel
values. Generation then runs with an ordinary, shorter KV cache, and
``generate`` returns what Hugging Face's returns: the caller's ``input_ids``
(as given, padding included) followed by the new tokens, so
``out[:, inputs["input_ids"].shape[1]:]`` is the answer; an explicit
``max_length`` / ``min_length`` counts the caller's prompt. What ``generate``
hands to logits processors, stopping criteria and streamers, and the
attentions / hidden states / cache it can return, are those of the pruned
prompt.

Positions: ``"contiguous"`` (default, what peer pre-LLM methods do) lets the
model number the shorter sequence as usual; ``"original"`` passes the kept
tokens' original position ids, and generation continues after the last one.
"""

from __future__ import annotations

import abc
import contextlib
import functools
import inspect
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch

from prunekit.adapters.base import (
    Adapter,
    Undo,
    caller_stacklevel,
    override_attribute,
    undo_on_error,
)
from prunekit.core.errors import check_choice
from prunekit.core.points import IN_LLM, PRE_LLM

if TYPE_CHECKING:
    from prunekit.adapters.attach import AttachHandle

#: position ids of the kept tokens: renumbered (``"contiguous"``) or the original ones
Positions = Literal["contiguous", "original"]


@dataclass
class ImageFeatures:
    """Projected features of the images of one call, in placeholder order.

    Attributes:
        features: one ``(n_i, d)`` tensor per image, in the order the model
            scatters them into the image placeholders.
        prunable: optional ``(n_i,)`` bool per image; ``False`` tokens (e.g.
            LLaVA-NeXT's row-newline tokens) are always kept and do not count
            towards the budget. ``None``: every token is prunable.
        signals: model signals for the pruner (see
            :attr:`prunekit.TokenPruner.required_signals`), per name one
            tensor per image (shapes in :mod:`prunekit.core.signals`, without the batch axis).
        project: for a pruning point before the projector: the projector,
            applied to the kept (or merged) tokens before they reach the LLM.
    """

    features: list[torch.Tensor]
    prunable: list[torch.Tensor] | None = None
    signals: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    project: Callable[[torch.Tensor], torch.Tensor] | None = None


class PreLLMAdapter(Adapter):
    """Base of VLM adapters whose pruning point is after the projector.

    A family implements :meth:`matches`, :meth:`image_features` (the projected
    features, computed exactly as the model computes them) and names the
    model's image placeholder id and the keyword arguments that only the vision
    side consumes.

    Options:
        tokenizer: a tokenizer to decode the prompt for text-conditioned pruners
            (the nouns are embedded with the LLM's input embeddings, and read by
            the logit lens). Without it, text relevance gets no text (uniform
            weights) and a warning says so.
        positions: ``"contiguous"`` or ``"original"``.
        noun_extractor: a registered noun extractor name or callable (default:
            spaCy when installed, else the offline heuristic).
        llm_layer: ``K`` to prune inside the language model after ``K`` decoder
            layers instead (FastV / DART point, :mod:`prunekit.adapters.llm_layers`);
            the signals there are those of decoder layer ``K-1``
            (``"last_query_attention"``, ``"llm_image_keys"``, ...).

    Signals at the pre-LLM point, besides the family's own: ``"embedding_mean"``
    and ``"text_logprobs"`` (the logit lens: each visual token's log-probability
    of each of the prompt's nouns through the decoder's final norm and the output
    head; models without both reachable do not provide it).
    """

    points: ClassVar[tuple[str, ...]] = (PRE_LLM, IN_LLM)
    #: the ``transformers`` class name this adapter handles (exact type)
    model_class: ClassVar[str] = ""
    #: model signals this family can compute at the pre-LLM point
    provided_signals: ClassVar[frozenset[str]] = frozenset()
    #: keyword arguments consumed by the vision side (removed before the LLM call)
    vision_kwargs: ClassVar[tuple[str, ...]] = ("pixel_values",)
    #: keyword arguments that carry pixels to prune (a call without any of them is left as is)
    pixel_kwargs: ClassVar[tuple[str, ...]] = ("pixel_values",)

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        tokenizer: Any = None,
        positions: Positions = "contiguous",
        noun_extractor: Any = None,
        llm_layer: int | None = None,
    ) -> None:
        super().__init__(model)
        self.tokenizer = tokenizer
        self.positions = check_choice("positions", positions, ("contiguous", "original"))
        self.noun_extractor = noun_extractor
        self.required_signals: frozenset[str] = frozenset()
        #: ((table storage, version, device), the table's mean row), so that every
        #: pruned prefill does not re-reduce the whole vocabulary
        self._embedding_mean: tuple[tuple[Any, ...], torch.Tensor] | None = None
        self._generating = False
        self.llm_pruning = None
        if llm_layer is not None:
            from prunekit.adapters.llm_layers import DecoderLayerPruning

            language_model = self.language_model()
            self.llm_pruning = DecoderLayerPruning(
                language_model.layers,
                llm_layer,
                language_model.config._attn_implementation,
                norm=getattr(language_model, "norm", None),
            )

    def logit_lens(self) -> tuple[torch.nn.Module, torch.nn.Module] | None:
        """``(final norm, output head)`` that read a hidden state as next-token logits:
        the decoder's ``norm`` and ``get_output_embeddings()`` (else ``lm_head``);
        ``None`` when the model lacks either."""
        try:
            norm = getattr(self.language_model(), "norm", None)
        except TypeError:  # no decoder reachable
            return None
        get_head = getattr(self.model, "get_output_embeddings", None)
        head = get_head() if callable(get_head) else None
        if head is None:
            head = getattr(self.model, "lm_head", None)
        if not isinstance(norm, torch.nn.Module) or not isinstance(head, torch.nn.Module):
            return None
        return norm, head

    def language_model(self) -> torch.nn.Module:
        """The decoder (with ``.layers``) that receives the visual tokens."""
        inner = getattr(self.model, "model", self.model)
        decoder = getattr(inner, "language_model", None)
        if decoder is None or not hasattr(decoder, "layers"):
            raise TypeError(
                f"{type(self.model).__name__} has no language_model with decoder layers"
            )
        return decoder

    # -- what a family provides ------------------------------------------------
    @classmethod
    def matches(cls, model: object) -> bool:
        """Exact-type match on :attr:`model_class` (subclasses of it need their own adapter)."""
        import transformers

        target = getattr(transformers, cls.model_class, None)
        return target is not None and type(model) is target

    @property
    def image_token_id(self) -> int:
        """The id of the image placeholder token in ``input_ids``, under its transformers 5 or 4 name."""
        config = self.model.config
        for name in ("image_token_id", "image_token_index"):
            value = getattr(config, name, None)
            if value is not None:
                return int(value)
        raise ValueError(f"{type(config).__name__} names no image token id")

    def placeholder_mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Where the visual tokens to prune sit in ``input_ids``: the image placeholders
        (a family with other visual placeholders, e.g. video, widens it)."""
        return input_ids == self.image_token_id

    @abc.abstractmethod
    def image_features(
        self, vision_inputs: dict[str, Any], call_kwargs: dict[str, Any]
    ) -> ImageFeatures:
        """Projected features of the images in ``vision_inputs`` (no pruning)."""

    def input_embeddings(self) -> torch.nn.Module:
        """The language model's input-embedding table (text embeddings for relevance and splicing)."""
        return self.model.get_input_embeddings()

    def pad_token_id(self) -> int:
        """The id used to pad the shortened prompts (the text config's, else the model's, else 0)."""
        for config in (getattr(self.model.config, "text_config", None), self.model.config):
            value = getattr(config, "pad_token_id", None)
            if value is not None:
                return int(value)
        return 0

    # -- installation ------------------------------------------------------------
    def available_signals(self) -> frozenset[str]:
        if self.llm_pruning is not None:  # signals of decoder layer K-1 (see llm_layers)
            return self.llm_pruning.available_signals()
        if not self.text_in_token_space():  # no LLM embedding centre for these tokens
            return self.provided_signals
        signals = self.provided_signals | {"embedding_mean"}
        if self.logit_lens() is not None:
            signals |= {"text_logprobs"}
        return signals

    def missing_signals_note(self, missing: frozenset[str]) -> str:
        """Why ``"text_logprobs"`` is missing (attach's refusal message)."""
        if "text_logprobs" not in missing:
            return ""
        if self.llm_pruning is not None:
            return "text_logprobs is a signal of the pre-LLM point (attach without llm_layer)"
        if not self.text_in_token_space():
            return (
                "text_logprobs reads the tokens through the LLM's output head, so it needs "
                "them in the LLM's embedding space: prune after the projector "
                "(before_projector=False)"
            )
        return (
            f"text_logprobs needs the language model's final norm (.norm) and output head "
            f"(get_output_embeddings() or .lm_head); {type(self.model).__name__} lacks one"
        )

    def pruning_point(self) -> str:
        return IN_LLM if self.llm_pruning is not None else PRE_LLM

    def llm_layer(self) -> int | None:
        return None if self.llm_pruning is None else self.llm_pruning.layer

    def install(self, handle: AttachHandle) -> list[Undo]:
        self.required_signals = handle.required_signals
        self._check_text_conditioning(handle)
        original_forward = self.model.forward
        original_generate = self.model.generate

        @functools.wraps(original_forward)  # generate() inspects forward's signature
        def forward(*args: Any, **kwargs: Any) -> Any:
            kwargs = self._bind_positional(original_forward, args, kwargs)
            if self.llm_pruning is not None:
                self._mark_images_for_llm(kwargs)
                return original_forward(**kwargs)
            if self._generating:  # generate()'s own calls: its inputs were pruned already
                return original_forward(**kwargs)
            return original_forward(**self.rewrite(handle, kwargs, generating=False))

        @functools.wraps(original_generate)
        def generate(*args: Any, **kwargs: Any) -> Any:
            if args:
                kwargs = (
                    {"input_ids": args[0], **kwargs} if len(args) == 1 else self._too_many(args)
                )
            if self.llm_pruning is not None:  # pruned inside the LLM by the forward wrapper
                return original_generate(**kwargs)
            caller_ids = kwargs.get("input_ids")
            kwargs = self.rewrite(handle, kwargs, generating=True)
            pruned_ids = kwargs.get("input_ids")
            shortened = caller_ids is not None and pruned_ids is not caller_ids
            if shortened:  # max_length / min_length count the caller's prompt
                dropped = caller_ids.shape[1] - pruned_ids.shape[1]
                for name in ("max_length", "min_length"):
                    if kwargs.get(name) is not None:
                        kwargs[name] = kwargs[name] - dropped
            self._generating = True
            try:
                output = original_generate(**kwargs)
            finally:
                self._generating = False
            if not shortened:
                return output
            return caller_layout(output, caller_ids, pruned_ids.shape[1])

        undos: list[Undo] = []
        with undo_on_error(undos):
            if self.llm_pruning is not None:
                undos.extend(self.llm_pruning.install(handle))
            undos.append(override_attribute(self.model, "forward", forward))
            undos.append(override_attribute(self.model, "generate", generate))
        return undos

    def _mark_images_for_llm(self, kwargs: dict[str, Any]) -> None:
        """Tell the in-LLM pruning which prompt positions are image tokens (or that this is a decode step)."""
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        input_ids = kwargs.get("input_ids")
        # generate() may pass precomputed image features instead of pixel values
        carries_images = any(
            kwargs.get(k) is not None for k in (*self.pixel_kwargs, "mm_encoder_outputs")
        )
        if carries_images and input_ids is None:
            raise ValueError("prunekit.attach needs input_ids to locate the image tokens")
        is_image = None if input_ids is None else self.placeholder_mask(input_ids)
        # a call without images is a decoding step (even if it generated a placeholder id)
        if not carries_images or not bool(is_image.any()):
            self.llm_pruning.continue_or_reset(cache)
            return
        self.llm_pruning.begin(is_image, kwargs.get("attention_mask"), cache)

    @staticmethod
    def _too_many(args: tuple) -> dict:
        raise TypeError(f"pass generate's inputs by keyword (got {len(args)} positional arguments)")

    @staticmethod
    def _bind_positional(method: Any, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
        if not args:
            return kwargs
        bound = inspect.signature(method).bind_partial(*args, **kwargs)
        return dict(bound.arguments) | bound.arguments.pop("kwargs", {})

    def text_in_token_space(self) -> bool:
        """Whether the pruned tokens live in the LLM's embedding space, where the prompt's
        embeddings can condition them (not so for tokens pruned before the projector)."""
        return True

    def _check_text_conditioning(self, handle: AttachHandle) -> None:
        """Refuse a text-conditioned pruner where the tokens are not in the prompt's
        embedding space; warn when it gets no tokenizer to read the prompt with."""
        from prunekit.strategies.relevance.logit_lens import LogitLensRelevance
        from prunekit.strategies.relevance.text import TextRelevance

        text_conditioned = isinstance(
            getattr(handle.pruner, "relevance", None), (TextRelevance, LogitLensRelevance)
        )
        if text_conditioned and not self.text_in_token_space():
            raise ValueError(
                f"{type(handle.pruner).__name__} is text-conditioned, but this pruning point "
                "holds vision-encoder tokens, not in the space of the prompt's LLM embeddings; "
                "prune after the projector (before_projector=False)"
            )
        if self.tokenizer is None and text_conditioned:
            warnings.warn(
                f"{type(handle.pruner).__name__} is text-conditioned but attach() got no tokenizer: "
                "the prompt's nouns cannot be read, so every token gets weight 1. "
                "Pass tokenizer=processor.tokenizer.",
                stacklevel=caller_stacklevel(),  # the user's attach(...) line
            )

    # -- the rewrite -------------------------------------------------------------
    def rewrite(
        self, handle: AttachHandle, kwargs: dict[str, Any], *, generating: bool
    ) -> dict[str, Any]:
        """Return the call's keyword arguments with the images pruned (unchanged if it has no images)."""
        if all(kwargs.get(k) is None for k in self.pixel_kwargs):
            if kwargs.get("mm_encoder_outputs") is not None:
                raise ValueError(
                    "prunekit.attach prunes images given as pixel_values; precomputed "
                    "mm_encoder_outputs would bypass the pruning"
                )
            return kwargs
        if kwargs.get("inputs_embeds") is not None:
            raise ValueError(
                "prunekit.attach needs input_ids (not inputs_embeds) to locate the image tokens"
            )
        input_ids = kwargs.get("input_ids")
        if input_ids is None:
            raise ValueError("prunekit.attach needs input_ids to locate the image tokens")
        vision_inputs = {k: kwargs.pop(k) for k in self.vision_kwargs if k in kwargs}
        attention_mask = kwargs.get("attention_mask")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)

        with torch.no_grad() if generating else contextlib.nullcontext():
            images = self.image_features(vision_inputs, kwargs)
        counts = [f.shape[0] for f in images.features]
        is_image = self.placeholder_mask(input_ids)
        n_placeholders = int(is_image.sum())
        if n_placeholders != sum(counts):
            raise ValueError(
                f"the prompt has {n_placeholders} image tokens but the images give {sum(counts)} "
                f"features ({counts} per image); the processor and the model disagree"
            )
        owner = self._image_owner(is_image, counts)  # sample index of every image
        text_embeds, text_mask, noun_ids = self._text(input_ids, attention_mask, is_image, owner)
        keep_image_token = self._prune(handle, images, text_embeds, text_mask, noun_ids)

        if all(bool(k.all()) for k in keep_image_token):
            kwargs.update(
                vision_inputs
            )  # budget covers every token: the model's own path, untouched
            return kwargs
        return self._rebuild(
            kwargs,
            input_ids,
            attention_mask,
            is_image,
            images,
            keep_image_token,
            generating=generating,
        )

    @staticmethod
    def _image_owner(is_image: torch.Tensor, counts: list[int]) -> list[int]:
        rows = is_image.nonzero()[:, 0].tolist()
        owners, start = [], 0
        for n in counts:
            owners.append(rows[start])
            if rows[start + n - 1] != rows[start]:
                raise ValueError("an image's placeholder tokens span two prompts of the batch")
            start += n
        return owners

    def _text(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        is_image: torch.Tensor,
        owner: list[int],
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, list[list[list[int]]] | None]:
        """Per image (``owner``: its prompt): its prompt's nouns as ``text_embeds``
        ``(I, M, d)``, ``text_mask`` ``(I, M)`` and their sub-word ids (one list per
        noun, the rows of ``text_embeds`` in order); ``None`` s without a tokenizer."""
        if self.tokenizer is None or not self.text_in_token_space():
            return None, None, None
        from prunekit.text.embed import embed_token_ids, prompt_noun_ids

        # keep special tokens: the noun extractor strips chat-template markers itself and
        # uses them to keep only the user's turns
        prompts = []
        for row, mask, image in zip(input_ids, attention_mask.bool(), is_image):
            prompts.append(
                self.tokenizer.decode(row[mask & ~image].tolist(), skip_special_tokens=False)
            )
        noun_ids = prompt_noun_ids(prompts, self.tokenizer, extractor=self.noun_extractor)
        embeds, text_mask = embed_token_ids(noun_ids, self.input_embeddings())
        index = torch.tensor(owner, device=embeds.device)
        return embeds[index], text_mask[index], [noun_ids[o] for o in owner]

    def embedding_mean(self, device: torch.device) -> torch.Tensor:
        """The mean row of the LLM's input-embedding table (float32), cached until the
        table is replaced or modified in place."""
        table = self.input_embeddings().weight
        key = (table.data_ptr(), table._version, device)
        if self._embedding_mean is None or self._embedding_mean[0] != key:
            mean = table.detach().mean(dim=0, dtype=torch.float32).to(device)
            self._embedding_mean = (key, mean)
        return self._embedding_mean[1]

    def text_logprobs(
        self,
        batch: torch.Tensor,
        feats: list[torch.Tensor],
        noun_ids: list[list[list[int]]] | None,
    ) -> torch.Tensor:
        """The ``"text_logprobs"`` signal ``(I, N, M)`` of the zero-padded ``batch`` of the
        images' features ``feats``: the logit lens (:func:`prunekit.text.embed.phrase_logprobs`)
        over each image's nouns; zeros at padded tokens and absent nouns, all zeros
        ``(I, N, 1)`` without a tokenizer."""
        from prunekit.text.embed import phrase_logprobs

        lens = self.logit_lens()
        if lens is None:  # attach checked available_signals; the model changed since
            raise ValueError(self.missing_signals_note(frozenset({"text_logprobs"})))
        norm, head = lens
        if noun_ids is None:
            noun_ids = [[] for _ in feats]
        lengths = torch.tensor([f.shape[0] for f in feats], device=batch.device)
        real = torch.arange(batch.shape[1], device=batch.device) < lengths.unsqueeze(1)
        return phrase_logprobs(batch, noun_ids, head, norm=norm, token_mask=real)

    def _prune(
        self,
        handle: AttachHandle,
        images: ImageFeatures,
        text_embeds: torch.Tensor | None,
        text_mask: torch.Tensor | None,
        noun_ids: list[list[list[int]]] | None = None,
    ) -> list[torch.Tensor]:
        """Prune all images in one batched call; return per image the kept flags of its tokens.

        ``noun_ids``: per image, the sub-word ids of its prompt's nouns (from :meth:`_text`),
        read by the logit lens when the pruner requires ``"text_logprobs"``.

        Methods that merge tokens (``PruneResult.values``) update ``images.features`` in place.
        """
        feats = images.features
        n_max = max(f.shape[0] for f in feats)
        device = feats[0].device
        batch = torch.zeros(
            len(feats), n_max, feats[0].shape[1], dtype=feats[0].dtype, device=device
        )
        token_mask = torch.zeros(len(feats), n_max, dtype=torch.bool, device=device)
        for i, f in enumerate(feats):
            batch[i, : f.shape[0]] = f
            prunable = torch.ones(f.shape[0], dtype=torch.bool, device=device)
            if images.prunable is not None:
                prunable = images.prunable[i].to(device)
            token_mask[i, : f.shape[0]] = prunable
        if text_embeds is not None:
            text_embeds = text_embeds.to(device)
            text_mask = text_mask.to(device)
        signals = {
            name: _stack_signal(name, values, n_max, device)
            for name, values in images.signals.items()
        }
        if "embedding_mean" in self.required_signals:
            signals["embedding_mean"] = self.embedding_mean(device).expand(len(feats), -1)
        if "text_logprobs" in self.required_signals:
            signals["text_logprobs"] = self.text_logprobs(batch, feats, noun_ids)
        result = handle.prune(
            batch,
            text_embeds=text_embeds,
            text_mask=text_mask,
            token_mask=token_mask,
            signals=signals or None,
        )
        if result.values is not None:
            merged = result.kept_tokens(batch)
            for i, (index, count) in enumerate(zip(result.indices, result.counts.tolist())):
                feats[i] = feats[i].clone()
                feats[i][index[:count]] = merged[i, :count]
        keep = result.mask | ~token_mask  # non-prunable tokens are always kept
        return [keep[i, : f.shape[0]] for i, f in enumerate(feats)]

    def _rebuild(
        self,
        kwargs: dict[str, Any],
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        is_image: torch.Tensor,
        images: ImageFeatures,
        keep_image_token: list[torch.Tensor],
        *,
        generating: bool,
    ) -> dict[str, Any]:
        device = input_ids.device
        real = attention_mask.bool()
        keep = real.clone()
        keep[is_image] = torch.cat(keep_image_token).to(device)
        lengths = keep.sum(dim=1)
        width = int(lengths.max())
        batch = input_ids.shape[0]
        right_padded = bool((~real[:, -1]).any()) and not bool((~real[:, 0]).any())
        offset = torch.zeros_like(lengths) if right_padded else width - lengths
        target = (
            offset.unsqueeze(1) + keep.long().cumsum(dim=1) - 1
        )  # new column of every kept position
        rows, cols = keep.nonzero(as_tuple=True)
        new_cols = target[rows, cols]

        new_ids = torch.full(
            (batch, width), self.pad_token_id(), dtype=input_ids.dtype, device=device
        )
        new_ids[rows, new_cols] = input_ids[rows, cols]
        new_mask = torch.zeros(batch, width, dtype=attention_mask.dtype, device=device)
        new_mask[rows, new_cols] = 1

        embedding = self.input_embeddings()
        embeds = embedding(new_ids)
        kept_features = torch.cat(
            [f[k.to(f.device)] for f, k in zip(images.features, keep_image_token)]
        )
        if images.project is not None:
            kept_features = images.project(kept_features)
        new_image = self.placeholder_mask(new_ids)
        new_image &= new_mask.bool()
        embeds = embeds.masked_scatter(
            new_image.unsqueeze(-1), kept_features.to(embeds.dtype).to(device)
        )

        # generate() takes both (the ids carry the prompt into its output); forward() only the embeds
        kwargs["input_ids"] = new_ids if generating else None
        kwargs["inputs_embeds"] = embeds
        kwargs["attention_mask"] = new_mask
        if kwargs.get("labels") is not None:
            labels = torch.full((batch, width), -100, dtype=kwargs["labels"].dtype, device=device)
            labels[rows, new_cols] = kwargs["labels"][rows, cols]
            kwargs["labels"] = labels
        position_ids = kwargs.get("position_ids")
        if self.positions == "original" or position_ids is not None:
            if position_ids is None:  # the positions the model itself would have used
                if generating:
                    position_ids = (attention_mask.long().cumsum(dim=1) - 1).clamp_min(0)
                else:
                    position_ids = torch.arange(input_ids.shape[1], device=device).expand(batch, -1)
            new_positions = torch.zeros(batch, width, dtype=position_ids.dtype, device=device)
            if self.positions == "original":
                new_positions[rows, new_cols] = position_ids[rows, cols]
            else:
                new_positions = (
                    (new_mask.long().cumsum(dim=1) - 1).clamp_min(0).to(position_ids.dtype)
                )
            kwargs["position_ids"] = new_positions
        return kwargs


def caller_layout(output: Any, input_ids: torch.Tensor, pruned_width: int) -> Any:
    """``generate``'s output with the caller's prompt: ``input_ids`` as given (padding
    included), then the new tokens, as Hugging Face's ``generate`` returns them.

    ``output`` is what the original ``generate`` returned for the pruned prompt of
    ``pruned_width`` columns: a tensor, or a ``ModelOutput`` whose ``sequences`` are
    replaced (``scores`` / ``logits`` are per new token and stay as they are). Rows
    repeated for ``num_return_sequences`` or beams repeat the caller's prompt.
    """
    sequences = output if isinstance(output, torch.Tensor) else output.sequences
    new_tokens = sequences[:, pruned_width:]
    prompt = input_ids.to(new_tokens.device)
    if new_tokens.shape[0] != prompt.shape[0]:
        prompt = prompt.repeat_interleave(new_tokens.shape[0] // prompt.shape[0], dim=0)
    sequences = torch.cat([prompt, new_tokens.to(prompt.dtype)], dim=1)
    if isinstance(output, torch.Tensor):
        return sequences
    output.sequences = sequences
    return output


def _stack_signal(
    name: str, per_image: list[torch.Tensor], n_max: int, device: torch.device
) -> torch.Tensor:
    """Stack per-image signals into a batch, zero-padding the token axis to ``n_max``."""
    from prunekit.core.signals import SIGNALS

    spec = SIGNALS.get(name)
    if spec is None or spec.token_axis is None:
        return torch.stack([value.to(device) for value in per_image])
    axis = spec.token_axis - 1 if spec.token_axis > 0 else spec.token_axis  # axis without the batch
    padded = []
    for value in per_image:
        value = value.to(device).movedim(axis, -1)
        value = torch.nn.functional.pad(value, (0, n_max - value.shape[-1]))
        padded.append(value.movedim(-1, axis))
    return torch.stack(padded)
