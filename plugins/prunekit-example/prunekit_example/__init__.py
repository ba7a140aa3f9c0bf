"""A minimal prunekit plugin: the ``norm_topk`` pruner (see :mod:`prunekit_example.plugin`)."""

from prunekit_example.plugin import NormTopK

__all__ = ["NormTopK"]
