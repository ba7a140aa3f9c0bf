"""The plugin module named in the ``prunekit`` entry-point group: one pruner and its hook."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prunekit import Picks, PruneInputs, TokenPruner, hookimpl


@dataclass
class NormTopK(TokenPruner):
    """Keep the tokens with the largest norm (``p``-norm over the feature dimension).

    Training-free and model-agnostic: needs neither text nor attention. High-norm
    tokens of ViT encoders are those that aggregate global image information
    (Darcet et al., "Vision Transformers Need Registers", ICLR 2024), the same
    tokens [CLS]-attention pruners such as VisionZip keep. ``largest=False`` keeps
    the lowest-norm tokens instead (an ablation). Ties go to the lower index.

    Args:
        p: order of the norm, ``> 0`` (``float("inf")``: the largest absolute entry).
        largest: keep the largest norms (``False``: the smallest).
    """

    name = "norm_topk"  # the registry key; no annotation, so not a hyperparameter

    # the hyperparameters: constructor arguments, repr, config schema, checked types
    p: float = 2.0
    largest: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()  # TypeError naming the field for a value of the wrong type
        if not self.p > 0:
            raise ValueError(f"p must be > 0 (the order of the norm), got {self.p!r}")

    def select(self, inputs: PruneInputs, num_keep: int) -> Picks:
        norms = torch.linalg.vector_norm(inputs.tokens, ord=self.p, dim=-1)  # (B, N)
        # rank valid tokens first (padded ones are never picked), then by norm; a stable
        # sort keeps equal norms in index order, so ties go to the lower index
        key = (norms if self.largest else -norms).clamp_min(torch.finfo(norms.dtype).min)
        key = key.masked_fill(~inputs.token_mask, -torch.inf)
        order = torch.sort(key, dim=1, descending=True, stable=True).indices[:, :num_keep]
        return Picks(order=order, scores=norms)


@hookimpl
def prunekit_register(registry) -> None:
    registry.add_pruner(NormTopK)  # registered under NormTopK.name
