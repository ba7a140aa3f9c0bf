#!/usr/bin/env bash
# Set up the lmms-eval plugin's own environment (.venv-lmms, kept apart from .venv because
# lmms-eval pulls in ~1.3 GB of dependencies) and optionally run its tests:
#   bash scripts/bootstrap_lmms_eval.sh          # install
#   bash scripts/bootstrap_lmms_eval.sh --test   # install, then pytest tests/lmms_plugin
# tox -e lmms-eval does the same with tox's own environment.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv-lmms}

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip "$@" --quiet --disable-pip-version-check; }
pip install --upgrade pip
pip install torch==2.14.1 torchvision==0.29.1
# the extra pins filelock<4 (lmms-eval 0.7.3 crashes with filelock 4.x); pytest and
# hypothesis for the tests (tests/conftest.py)
pip install -e ".[lmms-eval]" -e plugins/prunekit-baselines "pytest>=8" "hypothesis>=6.100"
echo "prunekit[lmms-eval] installed in $VENV"
if [ "${1:-}" = "--test" ]; then
    "$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/lmms_plugin
fi
