"""Pruning inside the language model, after decoder layer K (FastV / DART-style point).

Layers ``0 .. K-1`` run on the full prompt; a forward pre-hook on layer ``K``
selects the image tokens to keep from their hidden states, and layers ``K ..``
run on the shorter sequence, so their KV cache is shorter too. Kept tokens keep
their original positions (as FastV does): the rotary embeddings computed by the
model for the full prompt are gathered at the kept positions, and generation
continues the original numbering. A pruner that merges dropped tokens into kept
ones (``PruneResult.values``) replaces the kept image tokens' hidden states
entering layer ``K`` by their merged values, at the same positions.

Every layer from ``K`` on gets an explicit attention mask built here: causal in
the kept order, never attending padding or "filler" slots, and always letting a
query attend to itself (so fully padded rows stay finite). Fillers appear only
in ragged batches, when samples drop different numbers of tokens: the shorter
rows keep some dropped tokens as masked slots so the batch stays rectangular.

Supported decoders: those whose layers take ``hidden_states`` plus
``attention_mask`` / ``position_embeddings`` / ``position_ids`` keyword
arguments, as Llama, Mistral and Qwen2 in transformers 5 do; attention
implementations ``sdpa`` and ``eager``.

Signals (see :mod:`prunekit.core.signals`), computed only when the pruner asks
for them, from decoder layer ``K-1`` on the full prompt:

* ``"last_query_attention"`` (FastV): the attention row of the last real prompt
  token at layer ``K-1``, recomputed from that layer's own ``input_layernorm``,
  ``q_proj`` / ``k_proj`` (and ``q_norm`` / ``k_norm`` where the model has them)
  on the hidden states entering it, with the model's ``apply_rotary_pos_emb`` on
  the ``position_embeddings`` the layer received, key/value heads repeated, the
  layer's ``scaling``, and the layer's own attention mask (causal + padding);
  softmax in float32. Only this one query row is eager: the model keeps SDPA.
* ``"text_attention"`` (the ``llm_attention`` relevance): the same computation for
  the ``T`` text query rows (``T x L`` scores, never ``L x L``), averaged over
  each sample's text rows; zeros for a sample without text.
* ``"llm_image_keys"`` / ``"llm_text_keys"`` (DART): that layer's post-RoPE keys.
* ``"llm_image_hidden"`` / ``"llm_text_hidden"`` (DART): the hidden states
  leaving layer ``K-1`` (entering layer ``K``) through the decoder's final norm.
* ``"llm_image_positions"`` / ``"llm_text_positions"`` / ``"llm_text_mask"``:
  positions among the prompt's real tokens, and which text rows are real.

"Text" means the real tokens after the sample's first image token that are not
image tokens. The input of layer ``K-1`` is recorded by a pre-hook that exists
only while attached and only if the pruner needs a signal computed from it.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from prunekit.adapters.base import Undo
from prunekit.core.result import PruneResult
from prunekit.core.tensor_ops import gather_rows

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
    # hidden states, attention mask and position embeddings entering layer K-1
    layer_input: tuple[torch.Tensor, Any, Any] | None = None


#: signals computed from the input of decoder layer K-1 (its projections)
LAYER_INPUT_SIGNALS = frozenset(
    {"last_query_attention", "text_attention", "llm_image_keys", "llm_text_keys"}
)
#: signals computed with the decoder's final norm
NORM_SIGNALS = frozenset({"llm_image_hidden", "llm_text_hidden"})
#: signals computed from the prompt alone
PROMPT_SIGNALS = frozenset({"llm_image_positions", "llm_text_positions", "llm_text_mask"})
#: every signal the in-LLM pruning point can provide
LLM_SIGNALS = LAYER_INPUT_SIGNALS | NORM_SIGNALS | PROMPT_SIGNALS


class DecoderLayerPruning:
    """Installs the layer-K pruning hooks on a decoder's ``layers``."""

    def __init__(
        self,
        layers: torch.nn.ModuleList,
        layer: int,
        attn_implementation: str,
        norm: torch.nn.Module | None = None,
    ) -> None:
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
        self.norm = norm
        self.additive_mask = attn_implementation == "eager"
        self.state: _Prefill | None = None

    def available_signals(self) -> frozenset[str]:
        """The signals this decoder can provide at the layer-K point."""
        signals = set(PROMPT_SIGNALS)
        if _attention_parts(self.layers[self.layer - 1]) is not None:
            signals |= LAYER_INPUT_SIGNALS
        if self.norm is not None:
            signals |= NORM_SIGNALS
        return frozenset(signals)

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
        """Register the pre-hooks on the decoder layers; return their removers."""
        hooks = [
            module.register_forward_pre_hook(self._make_hook(handle, index), with_kwargs=True)
            for index, module in enumerate(self.layers)
            if index >= self.layer
        ]
        if handle.required_signals & LAYER_INPUT_SIGNALS:
            hooks.append(
                self.layers[self.layer - 1].register_forward_pre_hook(
                    self._record_layer_input, with_kwargs=True
                )
            )
        return [hook.remove for hook in hooks] + [self._clear]

    def _clear(self) -> None:
        self.state = None

    # -- the hooks -------------------------------------------------------------
    def _record_layer_input(self, module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]):
        """Pre-hook of layer K-1: keep what enters it during a prefill to be pruned."""
        state = self.state
        if state is None or state.keep_index is not None:
            return None
        hidden = args[0] if args else kwargs.get("hidden_states")
        if hidden is not None and hidden.shape[1] == state.is_image.shape[1]:
            state.layer_input = (
                hidden,
                kwargs.get("attention_mask"),
                kwargs.get("position_embeddings"),
            )
        return None

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
                hidden = self._select(handle, hidden, state)
            prefill = hidden.shape[1] == state.is_image.shape[1] and index == self.layer
            if prefill:
                hidden = gather_rows(hidden, state.keep_index)
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

    def _select(self, handle: AttachHandle, hidden: torch.Tensor, state: _Prefill) -> torch.Tensor:
        """Prune this prefill: set ``state``'s kept slots; return the hidden states entering
        layer K, the kept image tokens replaced by the pruner's merged ``values`` if it has any."""
        is_image = state.is_image
        batch, length = is_image.shape
        counts = is_image.sum(dim=1)
        n_max = int(counts.max())
        # image tokens of each sample, packed to the left: (B, n_max, d)
        order = torch.sort((~is_image).long(), dim=1, stable=True).indices[:, :n_max]
        token_mask = torch.arange(n_max, device=hidden.device).unsqueeze(0) < counts.unsqueeze(1)
        tokens = gather_rows(hidden, order)
        if n_max == 0:
            keep = torch.ones_like(is_image)
        else:
            wanted = handle.required_signals & LLM_SIGNALS
            signals = self._signals(wanted, hidden, state, order, token_mask) if wanted else None
            state.layer_input = None
            result = handle.prune(
                tokens.float(),
                token_mask=token_mask | (counts == 0).unsqueeze(1),
                signals=signals,
            )
            kept_image = torch.zeros_like(is_image)
            rows = torch.arange(batch, device=hidden.device).unsqueeze(1).expand(-1, n_max)
            kept_image[rows[result.mask & token_mask], order[result.mask & token_mask]] = True
            keep = ~is_image | kept_image
            if result.values is not None:
                hidden = self._merged(hidden, result, order, token_mask)
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
        return hidden

    @staticmethod
    def _merged(
        hidden: torch.Tensor, result: PruneResult, order: torch.Tensor, token_mask: torch.Tensor
    ) -> torch.Tensor:
        """``hidden`` with each kept image token's row replaced by its value in ``result.values``
        (rows of ``result`` follow ``order`` (B, N), the image tokens' prompt positions)."""
        slot = result.indices.clamp_min(0)  # (B, K) image-token index of each kept slot
        real = result.slot_mask & token_mask.gather(1, slot)  # not padding, not a filler sample
        positions = order.gather(1, slot)
        rows = torch.arange(hidden.shape[0], device=hidden.device).unsqueeze(1).expand_as(slot)
        hidden = hidden.clone()
        hidden[rows[real], positions[real]] = result.values[real].to(hidden.dtype)
        return hidden

    # -- signals ---------------------------------------------------------------
    @torch.no_grad()
    def _signals(
        self,
        wanted: frozenset[str],
        hidden: torch.Tensor,
        state: _Prefill,
        image_order: torch.Tensor,
        image_valid: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """The ``wanted`` signals of this prefill; image rows follow ``image_order`` (B, N)."""
        is_image = state.is_image
        real = state.attention_mask.bool()
        device = hidden.device
        positions = (real.long().cumsum(dim=1) - 1).clamp_min(0)
        is_text = real & ~is_image & (is_image.long().cumsum(dim=1) > 0)
        text_counts = is_text.sum(dim=1)
        t_max = int(text_counts.max())
        text_order = torch.sort((~is_text).long(), dim=1, stable=True).indices[:, :t_max]
        text_valid = torch.arange(t_max, device=device).unsqueeze(0) < text_counts.unsqueeze(1)

        signals: dict[str, torch.Tensor] = {}
        if "llm_image_positions" in wanted:
            signals["llm_image_positions"] = positions.gather(1, image_order) * image_valid
        if "llm_text_positions" in wanted:
            signals["llm_text_positions"] = positions.gather(1, text_order) * text_valid
        if "llm_text_mask" in wanted:
            signals["llm_text_mask"] = text_valid
        for name, index, valid in (
            ("llm_image_hidden", image_order, image_valid),
            ("llm_text_hidden", text_order, text_valid),
        ):
            if name in wanted:
                # the norm is per token: gather the rows first
                normed = self.norm(gather_rows(hidden, index))
                signals[name] = normed.masked_fill(~valid.unsqueeze(-1), 0.0)
        if wanted & LAYER_INPUT_SIGNALS:
            signals.update(
                self._layer_signals(wanted, state, image_order, image_valid, text_order, text_valid)
            )
        return signals

    def _layer_signals(
        self,
        wanted: frozenset[str],
        state: _Prefill,
        image_order: torch.Tensor,
        image_valid: torch.Tensor,
        text_order: torch.Tensor,
        text_valid: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """Signals recomputed from the projections of layer K-1 on its recorded input."""
        layer = self.layers[self.layer - 1]
        parts = _attention_parts(layer)
        if state.layer_input is None or parts is None:
            raise RuntimeError(
                f"the input of decoder layer {self.layer - 1} was not recorded; the signals "
                f"{sorted(wanted & LAYER_INPUT_SIGNALS)} cannot be computed"
            )
        attn, rope = parts
        hidden, mask, position_embeddings = state.layer_input
        if position_embeddings is None:
            raise TypeError(
                f"decoder layer {self.layer - 1} got no position_embeddings; in-LLM attention "
                "signals need a decoder that passes them (Llama, Mistral, Qwen2)"
            )
        cos, sin = position_embeddings
        batch, length, _ = hidden.shape
        head_dim = attn.head_dim
        x = layer.input_layernorm(hidden)

        keys = attn.k_proj(x).view(batch, length, -1, head_dim)
        if getattr(attn, "k_norm", None) is not None:
            keys = attn.k_norm(keys)
        keys = keys.transpose(1, 2)  # (B, H_kv, L, d)
        keys = rope(keys, keys, cos, sin)[1]
        n_heads = attn.q_proj.out_features // head_dim
        repeat = n_heads // keys.shape[1]
        keys = keys.repeat_interleave(repeat, dim=1)  # (B, H, L, d), as repeat_kv

        signals: dict[str, torch.Tensor] = {}
        for name, index, valid in (
            ("llm_image_keys", image_order, image_valid),
            ("llm_text_keys", text_order, text_valid),
        ):
            if name in wanted:
                rows = keys.transpose(1, 2).gather(
                    1, index[..., None, None].expand(-1, -1, n_heads, head_dim)
                )
                signals[name] = rows.masked_fill(~valid[..., None, None], 0.0)
        real = state.attention_mask.bool()
        last = (length - 1 - real.flip(1).long().argmax(dim=1)).unsqueeze(1)  # (B, 1)
        columns = image_order.unsqueeze(1).expand(-1, n_heads, -1)
        if "last_query_attention" in wanted:
            probs = self._query_probs(attn, rope, x, keys, mask, cos, sin, real, last)[:, :, 0]
            signals["last_query_attention"] = probs.gather(2, columns) * image_valid.unsqueeze(1)
        if "text_attention" in wanted:
            # padded text slots query from the last real token (a finite row), weighted 0
            queries = torch.where(text_valid, text_order, last)
            probs = self._query_probs(attn, rope, x, keys, mask, cos, sin, real, queries)
            share = text_valid.float() / text_valid.sum(dim=1, keepdim=True).clamp_min(1)
            mean = torch.einsum("bhql,bq->bhl", probs, share)  # (B, H, L), zeros without text
            signals["text_attention"] = mean.gather(2, columns) * image_valid.unsqueeze(1)
        return signals

    @staticmethod
    def _query_probs(
        attn: torch.nn.Module,
        rope: Any,
        x: torch.Tensor,
        keys: torch.Tensor,
        mask: Any,
        cos: torch.Tensor,
        sin: torch.Tensor,
        real: torch.Tensor,
        queries: torch.Tensor,
    ) -> torch.Tensor:
        """(B, H, Q, L) float32 attention probabilities of the real prompt tokens at ``queries``.

        ``queries`` (B, Q) are prompt positions of real tokens; each row is recomputed as
        the layer computes it (``q_proj``, ``q_norm``, RoPE at the query's own position,
        ``scaling``, the layer's mask), so only ``Q x L`` scores are ever built.
        """
        batch, length, _ = x.shape
        n_queries = queries.shape[1]
        head_dim = attn.head_dim
        n_heads = attn.q_proj.out_features // head_dim
        query = attn.q_proj(gather_rows(x, queries)).view(batch, n_queries, n_heads, head_dim)
        if getattr(attn, "q_norm", None) is not None:
            query = attn.q_norm(query)
        query = query.transpose(1, 2)  # (B, H, Q, d)

        def at_queries(table: torch.Tensor) -> torch.Tensor:
            return gather_rows(table.expand(batch, *table.shape[1:]), queries)

        query = rope(query, query, at_queries(cos), at_queries(sin))[0]
        scaling = getattr(attn, "scaling", head_dim**-0.5)
        scores = (query @ keys.transpose(-1, -2) * scaling).float()  # (B, H, Q, L)

        if isinstance(mask, torch.Tensor) and mask.dim() == 4:
            rows = mask.expand(batch, *mask.shape[1:])
            index = queries.view(batch, 1, n_queries, 1)
            rows = rows.gather(2, index.expand(-1, rows.shape[1], -1, rows.shape[3]))
            rows = rows[..., :length]  # (B, 1 or H, Q, L)
            if rows.dtype == torch.bool:
                scores = scores.masked_fill(~rows, float("-inf"))
            else:
                scores = scores + rows.float()
        else:  # no mask tensor (SDPA's causal shortcut): causal over the real tokens
            key = torch.arange(length, device=x.device)
            allowed = (key.view(1, 1, -1) <= queries.unsqueeze(-1)) & real.unsqueeze(1)
            scores = scores.masked_fill(~allowed.unsqueeze(1), float("-inf"))
        return torch.softmax(scores, dim=-1)

    @staticmethod
    def _gather_positions(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Gather (b or 1, L, ...) position tensors at the kept prompt positions."""
        if values.shape[0] != index.shape[0]:
            values = values.expand(index.shape[0], *values.shape[1:])
        return gather_rows(values, index)

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


def _attention_parts(layer: torch.nn.Module) -> tuple[torch.nn.Module, Any] | None:
    """(self_attn, apply_rotary_pos_emb) of a Llama-style decoder layer, or ``None``."""
    attn = getattr(layer, "self_attn", None)
    if attn is None or not hasattr(layer, "input_layernorm"):
        return None
    if not all(hasattr(attn, name) for name in ("q_proj", "k_proj", "head_dim")):
        return None
    rope = getattr(sys.modules.get(type(attn).__module__), "apply_rotary_pos_emb", None)
    return None if rope is None else (attn, rope)


def _seq_len(position_embeddings: Any, default: int) -> int:
    if position_embeddings is None:
        return default
    return position_embeddings[0].shape[1]
