"""Contract tests run over every registered pruner (and every strategy composition).

The tests live in :mod:`prunekit.testing`, which plugin authors reuse: a pruner
registered through an installed plugin is tested here for free, with synthesized
values of the signals it requires.
"""

from __future__ import annotations

from conftest import pruner_cases

import prunekit
from prunekit.testing import PrunerContractTests, as_case, registered_cases

CASES = pruner_cases()


class TestEveryPruner(PrunerContractTests):
    cases = CASES


def test_every_registered_pruner_is_covered():
    assert {name for name, _ in CASES} >= set(prunekit.list_pruners())
    assert "resprune" in prunekit.list_pruners()
    assert [name for name, _ in registered_cases()] == prunekit.list_pruners()
    labels = [case.label for case in TestEveryPruner().contract_cases()]
    assert labels == [as_case(case).label for case in CASES]
