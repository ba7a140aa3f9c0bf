"""Fixtures of the lmms-eval plugin tests: a tiny checkpoint, a local task, offline settings.

These tests run in the lmms-eval environment (``tox -e lmms-eval``, or
``scripts/bootstrap_lmms_eval.sh --test``); in an environment without lmms-eval the test
modules that need it skip themselves and this file changes nothing.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))

if importlib.util.find_spec("lmms_eval") is not None:
    # before lmms-eval (and with it `datasets` and the hub client) is imported by a test
    # module: no hub, no usage ping, caches in a scratch folder
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="prunekit_lmms_hf_"))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random LLaVA checkpoint folder (model, processor, chat template)."""
    from lmms_helpers import save_checkpoint

    return save_checkpoint(tmp_path_factory.mktemp("checkpoint"))


@pytest.fixture(scope="session")
def qwen_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Qwen2.5-VL checkpoint folder (dynamic resolution, 3-D positions)."""
    from lmms_helpers import save_checkpoint

    return save_checkpoint(
        tmp_path_factory.mktemp("qwen_checkpoint"), "qwen2_5_vl", initializer_range=0.2
    )


@pytest.fixture(scope="session")
def local_task(tmp_path_factory: pytest.TempPathFactory):
    """A local generate-until task (YAML, utils.py, JSON lines, PNG images) in a temporary folder."""
    from lmms_helpers import write_task

    return write_task(tmp_path_factory.mktemp("task"))
