"""The training schedule: the learning rate at a point of a stage, and that point
(progress) from the step count or, under a wall-clock budget, from the time used."""

from __future__ import annotations

import math

#: the shortest time stage 2 gets under ``--max-minutes`` (seconds)
MIN_STAGE_SECONDS = 60.0


def lr_at(progress: float, peak: float, warmup: float) -> float:
    """Linear warm-up over the first ``warmup`` of the stage (from ``peak * 1e-3 /
    warmup`` at 0), then cosine decay from ``peak`` to 0 at ``progress`` 1."""
    if progress < warmup:
        return peak * max(progress, 1e-3) / warmup
    rest = (progress - warmup) / max(1e-9, 1 - warmup)
    return peak * 0.5 * (1 + math.cos(math.pi * min(rest, 1.0)))


def stage_seconds(max_minutes: float | None, used_s: float) -> float | None:
    """The time stage 2 may take: what is left of ``max_minutes`` after ``used_s``
    seconds, at least :data:`MIN_STAGE_SECONDS`; ``None`` without a budget."""
    if max_minutes is None:
        return None
    return max(MIN_STAGE_SECONDS, 60 * max_minutes - used_s)


def progress_at(
    step: int, steps: int, elapsed_s: float = 0.0, time_left: float | None = None
) -> float:
    """How far into its stage ``step`` is, in [0, 1) while it runs: ``step / steps``, or
    with a time budget ``time_left`` the larger of that and ``elapsed_s / time_left``
    (1 or more: the stage is out of time)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    progress = step / steps
    if time_left is not None:
        progress = max(progress, elapsed_s / time_left)
    return progress
