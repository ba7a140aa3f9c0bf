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
    # dont_inherit: the block runs as a user's module would, without this file's __future__
    exec(compile(python_blocks()[2], "README-plugin", "exec", dont_inherit=True), namespace)
    registry = Registry()
    module = type("Plugin", (), {"prunekit_register": staticmethod(namespace["prunekit_register"])})
    assert registry.register_plugin(module, name="readme_plugin")
    pruner = registry.create("pruner", "my_pruner")
    tokens = torch.tensor([[[1.0], [5.0], [2.0], [4.0]]])
    assert pruner.prune(tokens, budget=2).indices.tolist() == [[1, 3]]


def test_llava_example_runs():
    """The README's "prune a LLaVA" block, on the tiny random LLaVA of the adapter tests."""
    from tiny_models import left_pad, prompt_ids, tiny_llava

    class Tokenizer:
        def decode(self, ids, skip_special_tokens=True):
            return " ".join(f"w{i}" for i in ids)

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [int(w[1:]) for w in text.split()]}

    class Processor:
        tokenizer = Tokenizer()

        def batch_decode(self, sequences, skip_special_tokens=True):
            return [self.tokenizer.decode(row.tolist()) for row in sequences]

    model = tiny_llava()
    ids, mask = left_pad([prompt_ids([7, 8], 16)])
    inputs = {"input_ids": ids, "attention_mask": mask, "pixel_values": torch.randn(1, 3, 32, 32)}
    block = python_blocks()[1].replace("budget=128", "budget=4")
    namespace = {"model": model, "processor": Processor(), "inputs": inputs}
    exec(compile(block, "README-llava", "exec"), namespace)
    assert namespace["handle"].results[0].indices.shape == (1, 4)
    out = namespace["out"]  # the caller's prompt (not the pruned one), then the answer
    assert torch.equal(out[:, : ids.shape[1]], ids)
    assert 0 < out.shape[1] - ids.shape[1] <= 32
    assert namespace["answer"] == Processor().batch_decode(out[:, ids.shape[1] :])
