"""Hydra config groups of ``prunekit run`` / ``prunekit ablate`` (YAML files, no code).

``config.yaml`` is the primary config; the folders ``pruner``, ``relevance``,
``selection``, ``model``, ``data`` and ``bench`` are the config groups (see
:mod:`prunekit.experiments`).
"""
