"""Property-based tests of the prune API on random shapes, budgets and masks, over every
registered pruner (and every strategy composition); the test lives in :mod:`prunekit.testing`."""

from __future__ import annotations

from conftest import pruner_cases

from prunekit.testing import PrunerPropertyTests


class TestEveryPrunerProperties(PrunerPropertyTests):
    cases = pruner_cases()
