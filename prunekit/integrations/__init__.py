"""Bridges from prunekit to other tools (optional extras, imported only when used).

- :mod:`prunekit.integrations.lmms_eval`: the ``prunekit`` model of lmms-eval
  (``pip install prunekit[lmms-eval]``).
"""
