"""Compiled selection kernels: a native C kernel for CPU (:mod:`.native`, :mod:`.greedy_cpu`)
and a Triton kernel for CUDA (:mod:`.greedy_triton`). They depend on nothing else of
prunekit; the selection strategies choose among them and the PyTorch reference loop."""
