"""Any relevance strategy x any selection strategy, as one pruner."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from prunekit.core.inputs import PruneInputs
from prunekit.core.pruner import Picks, TokenPruner
from prunekit.strategies.merge import MergeMethod, merge_dropped
from prunekit.strategies.relevance.base import RelevanceStrategy
from prunekit.strategies.selection.base import SelectionStrategy

#: a strategy given by registered name, by ``{"name": ..., **params}`` or as an object
StrategySpec = str | Mapping[str, Any] | RelevanceStrategy | SelectionStrategy
#: :data:`StrategySpec` for the relevance slot (a selection object is refused by name)
RelevanceSpec = str | Mapping[str, Any] | RelevanceStrategy
#: :data:`StrategySpec` for the selection slot
SelectionSpec = str | Mapping[str, Any] | SelectionStrategy


def build_strategy(kind: str, spec: StrategySpec, base: type) -> Any:
    """Build a strategy from an object, a registered name, or a mapping ``{"name": ..., **kwargs}``."""
    from prunekit.registry import get_registry

    if isinstance(spec, base):
        return spec
    if isinstance(spec, str):
        return get_registry().create(kind, spec)
    if isinstance(spec, Mapping):
        options = dict(spec)
        if "name" not in options:
            raise ValueError(
                f"a {kind} given as a mapping needs a 'name' key, got keys {sorted(options)}"
            )
        return get_registry().create(kind, options.pop("name"), **options)
    raise TypeError(
        f"{kind} must be a {base.__name__}, a registered name or a mapping with 'name', "
        f"got {type(spec).__name__}"
    )


@dataclass
class ComposedPruner(TokenPruner):
    """Weights from a relevance strategy, then picks from a selection strategy.

    Args:
        relevance: a :class:`RelevanceStrategy`, a registered name (``"none"``,
            ``"text"``, ...) or a mapping such as ``{"name": "text", "alpha": 2.0}``;
            built into a strategy object at construction.
        selection: the same for a :class:`SelectionStrategy` (``"greedy_residual"``,
            ``"topk"``, ``"random"``, ...).
        merge: what becomes of the dropped tokens: ``"none"`` drops them;
            ``"lstsq"`` merges each into the kept token it loads on most in its
            least-squares projection on the kept span, ``"nearest"`` into the kept token
            of highest cosine; a kept token becomes the mean of itself and the tokens
            merged into it (the result's ``values``, see :mod:`prunekit.strategies.merge`).
        merge_norm: rescale each merged token to the norm of the kept token it replaces
            (averaging shrinks norms, and a language model is sensitive to them).

    The result's ``scores`` are the relevance weights.
    """

    name = "composed"

    relevance: RelevanceSpec = "none"
    selection: SelectionSpec = "greedy_residual"
    merge: MergeMethod = "none"
    merge_norm: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        self.relevance = build_strategy("relevance", self.relevance, RelevanceStrategy)
        self.selection = build_strategy("selection", self.selection, SelectionStrategy)
        self.required_signals = self.relevance.required_signals | self.selection.required_signals

    @property
    def adaptive(self) -> bool:
        return self.selection.adaptive

    def select(self, inputs: PruneInputs, num_keep: int) -> Picks:
        weights = self.relevance.weights(inputs)
        picked = self.selection.select(inputs, weights, num_keep)
        if isinstance(picked, Picks):  # a selection that decides its own counts
            picks = Picks(order=picked.order, scores=weights, counts=picked.counts)
        else:
            picks = Picks(order=picked, scores=weights)
        if self.merge == "none":
            return picks
        counts = picks.counts if picks.counts is not None else inputs.keep_counts
        if counts is None:  # select called directly, outside prune
            counts = inputs.valid_counts.clamp(max=num_keep)
        values = merge_dropped(
            inputs.tokens,
            inputs.token_mask,
            picks.order,
            counts.to(picks.order.device),
            self.merge,
            preserve_norm=self.merge_norm,
        )
        return Picks(order=picks.order, scores=weights, values=values, counts=picks.counts)
