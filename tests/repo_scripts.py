"""Import a script of the repository (``benchmarks/*.py``, ``scripts/*.py``) as a module,
so tests can call its functions."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]


def load_script(relative_path: str, module_name: str) -> ModuleType:
    """Execute ``REPO / relative_path`` as the module ``module_name`` and return it."""
    spec = importlib.util.spec_from_file_location(module_name, REPO / relative_path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(module_name, module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module
