"""Pruning points: where in a model tokens are dropped.

Adapters say which points they support (``Adapter.points``), pruners which points
they are defined for (``TokenPruner.pruning_points``); ``attach`` refuses a pruner
at a point it does not declare, and the registry refuses a pruner that declares a
point not listed here (a misspelt point would otherwise never match any adapter).
"""

from __future__ import annotations

from collections.abc import Iterable

from prunekit.core.errors import did_you_mean

#: after the multimodal projector, before the language model (ResPrune's point)
PRE_LLM = "pre_llm"
#: the vision tower's features, before the multimodal projector
PRE_PROJECTOR = "pre_projector"
#: inside the language model, after decoder layer K
IN_LLM = "in_llm"
#: inside the vision encoder, after layer L
IN_ENCODER = "in_encoder"
#: every pruning point
PRUNING_POINTS = frozenset({PRE_LLM, PRE_PROJECTOR, IN_LLM, IN_ENCODER})


def check_pruning_points(owner: str, points: Iterable[str] | None) -> None:
    """Raise ``ValueError`` naming ``owner`` if ``points`` (``None``: any point) holds a
    name that is not a pruning point.

    >>> check_pruning_points("MyPruner", {"pre_llm", "in_llm"})
    >>> check_pruning_points("MyPruner", {"pre-llm"})
    Traceback (most recent call last):
    ...
    ValueError: MyPruner declares the unknown pruning point 'pre-llm'. Did you mean 'pre_llm'? The pruning points: ['in_encoder', 'in_llm', 'pre_llm', 'pre_projector']
    """
    if points is None:
        return
    if isinstance(points, str):
        raise TypeError(
            f"{owner}: pruning_points must be a set of names, got the string {points!r}"
        )
    for point in sorted(points):
        if point not in PRUNING_POINTS:
            raise ValueError(
                f"{owner} declares the unknown pruning point {point!r}."
                f"{did_you_mean(point, PRUNING_POINTS)} The pruning points: {sorted(PRUNING_POINTS)}"
            )
