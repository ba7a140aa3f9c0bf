"""Offline VQA data for MiniLLaVA training and the quality benchmark.

* :mod:`prunekit.data.shapes` -- a procedural multi-object VQA generator (224 px scenes of
  3 to 8 objects; colour / shape / existence / count questions targeting one object among
  several; captions for stage-1 alignment), deterministic from a seed, with disjoint
  train / test seed ranges.
* :mod:`prunekit.data.easyvqa` -- a deterministic loader over the ``easy-vqa`` package
  (64 px single-shape images, 13 answers, its own train / test split).
"""
