"""The README's Python examples run as written."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from prunekit.registry import Registry

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_api_example_runs():
    namespace: dict = {}
    exec(compile(python_blocks()[0], "README-api", "exec"), namespace)
    result = namespace["result"]
    assert result.indices.shape == (2, 128)
    assert namespace["kept"].shape == (2, 128, 4096)
    assert torch.equal(namespace["kept"], result.gather(namespace["tokens"]))


def test_plugin_example_registers_and_prunes():
    namespace: dict = {"__name__": "readme_plugin"}
    exec(compile(python_blocks()[1], "README-plugin", "exec"), namespace)
    registry = Registry()
    module = type("Plugin", (), {"prunekit_register": staticmethod(namespace["prunekit_register"])})
    assert registry.register_plugin(module, name="readme_plugin")
    pruner = registry.create("pruner", "my_pruner")
    tokens = torch.tensor([[[1.0], [5.0], [2.0], [4.0]]])
    assert pruner.prune(tokens, budget=2).indices.tolist() == [[1, 3]]
