"""Pruning inside the language model, after decoder layer K (FastV / DART-style point).

Layers ``0 .. K-1`` run on the full prompt; a forward pre-hook on layer ``K``
selects the image tokens to keep from their hidden states, and layers ``K ..``
run on the shorter sequence, so their KV cache is shorter too. Kept tokens keep
their original positions (as FastV does): the rotary embeddings computed by the
model for the full prompt are gathered at the kept positions, and generation
continues the original numbering.

Every layer from ``K`` on gets an explicit attention mask built here: causal in
the kept order, never attending padding or "filler" slots, and always letting a
query attend to itself (so fully padded rows stay finite). Fillers appear only
in ragged batches, when samples drop different numbers of tokens: the shorter
rows keep some dropped tokens as masked slots so the batch stays rectangular.

Supported decoders: those whose layers take ``hidden_states`` plus
``attention_mask`` / ``position_embeddings`` / ``position_ids`` keyword
arguments, as Llama, Mistral and Qwen2 in transformers 5 do; attention
implementations ``sdpa`` and ``eager``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from prunekit.adapters.base import Undo

if TYPE_CHECKING:
    from prunekit.adapters.attach import AttachHandle


@dataclass
class _Prefill:
    """State of one pruned generation: which slots layers >= K keep."""

    is_image: torch.Tensor  # (B, L) image placeholder positions of the prompt
    cache: Any  # the cache object of the prefill call (None without cache)
    keep_index: torch.Tensor | None = None  # (B, L') kept prompt positions, ascending
    kv_valid: torch.Tensor | None = None  # (B, kv) valid key slots of layers >= K
    attention_mask: torch.Tensor | None = None  # (B, L) the prompt's 2-D mask


class DecoderLayerPruning:
    """Installs the layer-K pruning hooks on a decoder's ``layers``."""

    def __init__(self, layers: torch.nn.ModuleList, layer: int, attn_implementation: str) -> None:
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise TypeError(f"llm_layer must be an int, got {type(layer).__name__}")
        if not 1 <= layer < len(layers):
            raise ValueError(
                f"llm_layer must be in [1, {len(layers) - 1}] (prune after that many of the "
                f"{len(layers)} decoder layers), got {layer}"
            )
        if attn_implementation not in ("sdpa", "eager"):
            raise ValueError(
                f"pruning inside the LLM supports sdpa and eager attention, not {attn_implementation!r}"
            )
        self.layers = layers
        self.layer = layer
        self.additive_mask = attn_implementation == "eager"
        self.state: _Prefill | None = None

    # -- called by the adapter's forward wrapper -------------------------------
    def begin(
        self, is_image: torch.Tensor, attention_mask: torch.Tensor | None, cache: Any
    ) -> None:
        """A prompt with images is about to run: prune it at layer K."""
        mask = (
            torch.ones_like(is_image, dtype=torch.long)
            if attention_mask is None
            else attention_mask
        )
        self.state = _Prefill(is_image=is_image, cache=cache, attention_mask=mask)

    def continue_or_reset(self, cache: Any) -> None:
        """A call without images: a decode step of the pruned prompt if it carries its cache."""
        if self.state is not None and (cache is None or cache is not self.state.cache):
            self.state = None

    def install(self, handle: AttachHandle) -> list[Undo]:
        hooks = [
            module.register_forward_pre_hook(self._make_hook(handle, index), with_kwargs=True)
            for index, module in enumerate(self.layers)
            if index >= self.layer
        ]
        return [hook.remove for hook in hooks] + [self._clear]

    def _clear(self) -> None:
        self.state = None

    # -- the hooks -------------------------------------------------------------
    def _make_hook(self, handle: AttachHandle, index: int):
        def hook(module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]):
            state = self.state
            if state is None:
                return None
            hidden = args[0] if args else kwargs.pop("hidden_states")
            args = args[1:]
            if state.keep_index is None:  # first pruned layer of the prefill
                if index != self.layer or hidden.shape[1] != state.is_image.shape[1]:
                    self.state = None  # not the call we were told about
                    return None
                self._select(handle, hidden, state)
            prefill = hidden.shape[1] == state.is_image.shape[1] and index == self.layer
            if prefill:
                hidden = self._gather(hidden, state.keep_index)
            steps = hidden.shape[1]
            if index == self.layer and not prefill:
                new = torch.ones(hidden.shape[0], steps, dtype=torch.bool, device=hidden.device)
                state.kv_valid = torch.cat([state.kv_valid, new], dim=1)
            position_embeddings = kwargs.get("position_embeddings")
            if hidden.shape[1] != _seq_len(position_embeddings, hidden.shape[1]):
                kwargs["position_embeddings"] = tuple(
                    self._gather_positions(p, state.keep_index) for p in position_embeddings
                )
                if kwargs.get("position_ids") is not None:
                    kwargs["position_ids"] = self._gather_positions(
                        kwargs["position_ids"], state.keep_index
                    )
            kwargs["attention_mask"] = self._mask(state, steps, hidden.dtype)
            return (hidden, *args), kwargs

        return hook

    def _select(self, handle: AttachHandle, hidden: torch.Tensor, state: _Prefill) -> None:
        is_image = state.is_image
        batch, length = is_image.shape
        counts = is_image.sum(dim=1)
        n_max = int(counts.max())
        # image tokens of each sample, packed to the left: (B, n_max, d)
        order = torch.sort((~is_image).long(), dim=1, stable=True).indices[:, :n_max]
        token_mask = torch.arange(n_max, device=hidden.device).unsqueeze(0) < counts.unsqueeze(1)
        tokens = hidden.gather(1, order.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
        if n_max == 0:
            keep = torch.ones_like(is_image)
        else:
            result = handle.prune(
                tokens.float(), token_mask=token_mask | (counts == 0).unsqueeze(1)
            )
            kept_image = torch.zeros_like(is_image)
            rows = torch.arange(batch, device=hidden.device).unsqueeze(1).expand(-1, n_max)
            kept_image[rows[result.mask & token_mask], order[result.mask & token_mask]] = True
            keep = ~is_image | kept_image
        lengths = keep.sum(dim=1)
        width = int(lengths.max())
        # rows shorter than the widest keep their first dropped tokens as masked fillers
        need = width - lengths
        dropped_rank = (~keep).long().cumsum(dim=1)
        filler = ~keep & (dropped_rank <= need.unsqueeze(1))
        slots = keep | filler
        state.keep_index = torch.sort(
            torch.where(slots, torch.arange(length, device=hidden.device), length), dim=1
        ).values[:, :width]
        state.kv_valid = (keep & state.attention_mask.bool()).gather(1, state.keep_index)

    @staticmethod
    def _gather(hidden: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return hidden.gather(1, index.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))

    @staticmethod
    def _gather_positions(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Gather (b or 1, L, ...) position tensors at the kept prompt positions."""
        if values.shape[0] != index.shape[0]:
            values = values.expand(index.shape[0], *values.shape[1:])
        extra = values.shape[2:]
        return values.gather(
            1, index.view(*index.shape, *([1] * len(extra))).expand(-1, -1, *extra)
        )

    def _mask(self, state: _Prefill, steps: int, dtype: torch.dtype) -> torch.Tensor:
        """(B, 1, steps, kv) mask: causal over the kept slots, valid keys only, self always."""
        valid = state.kv_valid
        kv = valid.shape[1]
        device = valid.device
        query_slot = torch.arange(kv - steps, kv, device=device)
        key_slot = torch.arange(kv, device=device)
        causal = key_slot.unsqueeze(0) <= query_slot.unsqueeze(1)  # (steps, kv)
        allowed = causal.unsqueeze(0) & valid.unsqueeze(1)
        allowed |= key_slot.unsqueeze(0) == query_slot.unsqueeze(1)
        allowed = allowed.unsqueeze(1)
        if not self.additive_mask:
            return allowed
        return torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(
            ~allowed, torch.finfo(dtype).min
        )


def _seq_len(position_embeddings: Any, default: int) -> int:
    if position_embeddings is None:
        return default
    return position_embeddings[0].shape[1]
