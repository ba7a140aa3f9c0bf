"""Shared fixtures and the list of pruners every contract test runs over."""

from __future__ import annotations

import os
import sys

import pytest
import torch
from hypothesis import settings

sys.path.insert(0, os.path.dirname(__file__))

from prunekit.testing import case_id, registered_cases  # noqa: E402, F401

# HYPOTHESIS_PROFILE=stress runs the property tests much longer than CI does.
settings.register_profile("default", max_examples=30)
settings.register_profile("stress", max_examples=600)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

# Compositions tested in addition to every registered pruner with its defaults.
COMPOSITIONS = (
    [
        {"relevance": r, "selection": s}
        for r in ("none", {"name": "text", "alpha": 2.0})
        for s in ("greedy_residual", "topk", {"name": "random", "seed": 3})
    ]
    + [
        # beyond the paper: the signal-based relevances, an adaptive budget, merging
        {"relevance": r, "selection": "greedy_residual"}
        for r in ("llm_attention", "logit_lens", "clip_text")
    ]
    + [
        {"relevance": "none", "selection": {"name": "greedy_residual", "energy": 0.9}},
        {"relevance": {"name": "text"}, "selection": "greedy_residual", "merge": "lstsq"},
        {"relevance": "none", "selection": "topk", "merge": "nearest", "merge_norm": True},
    ]
)


def pruner_cases() -> list[tuple[str, dict]]:
    """(registered name, kwargs) for every registered pruner, plus each strategy composition."""
    return registered_cases() + [("composed", kwargs) for kwargs in COMPOSITIONS]


@pytest.fixture
def generator() -> torch.Generator:
    return torch.Generator().manual_seed(1234)
