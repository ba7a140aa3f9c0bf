"""Independent float64 reference implementations of the method page, for tests.

Written from the method page's formulas, deliberately naively (explicit
projections, Python loops), sharing no code with prunekit.
"""

from __future__ import annotations

import numpy as np
import torch


def residual_energies(x: np.ndarray, kept: list[int]) -> np.ndarray:
    """E_S(x_i) = ||x_i - P_S x_i||^2 for every row, with P_S from a least-squares projection."""
    if not kept:
        return (x**2).sum(axis=1)
    basis = x[kept].T  # (d, |S|)
    coef, *_ = np.linalg.lstsq(basis, x.T, rcond=None)
    resid = x.T - basis @ coef
    return (resid**2).sum(axis=0)


def text_relevance(x, text, aggregation="max", center=None):
    """r_i from the method page: cosine of tokens with text rows, aggregated."""
    x = np.asarray(x, dtype=np.float64)
    text = np.asarray(text, dtype=np.float64)
    if center is not None:
        x = x - center
        text = text - center

    def unit(v):
        n = np.linalg.norm(v, axis=-1, keepdims=True)
        return v / np.maximum(n, 1e-12)

    if aggregation == "pooled":
        return unit(x) @ unit(text.mean(axis=0))
    cos = unit(x) @ unit(text).T
    return cos.max(axis=1) if aggregation == "max" else cos.mean(axis=1)


def weights_from_relevance(r, alpha, eps=1e-6):
    """w_i = ((r_i - min r) / (max r - min r + eps)) ** alpha; flat relevance -> 1."""
    spread = r.max() - r.min()
    if spread <= eps:
        return np.ones_like(r)
    normed = (r - r.min()) / (spread + eps)
    normed[r - r.min() <= spread * 1e-5] = 0.0
    return normed**alpha


def first_near_max(score, tie_rtol):
    """Lowest index whose score is within tie_rtol (relative) of the maximum."""
    best = score.max()
    return int(np.flatnonzero(score >= best - abs(best) * tie_rtol)[0])


def resprune_reference(x, k, weights, rank_tol=1e-10, tie_rtol=1e-5):
    """Greedy argmax of w_i * E_S(x_i), returning (picks in order, score rows per step).

    A token whose residual is at most ``rank_tol`` of its own energy counts as
    explained; when no remaining token has a positive score, fill by weight.
    Scores within ``tie_rtol`` of the best tie, and ties go to the lowest index.
    """
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    norms = (x**2).sum(axis=1)
    kept: list[int] = []
    steps = []
    for _ in range(k):
        energy = residual_energies(x, kept)
        score = np.where(energy > rank_tol * norms, w * energy, 0.0)
        score[kept] = -np.inf
        steps.append(score.copy())
        if score.max() > 0:
            pick = first_near_max(score, tie_rtol)
        else:
            fill = w.copy()
            fill[kept] = -np.inf
            pick = first_near_max(fill, tie_rtol)
        kept.append(pick)
    return kept, steps


def projected_residuals(tokens, valid, order, weights):
    """Float64 reference: per sample and prefix of ``order``, the weighted residual energy
    ``sum_i w_i ||x_i - P x_i||^2`` of the valid tokens after a least-squares projection
    onto the span of the prefix's valid picks."""
    batch, n, _ = tokens.shape
    valid = torch.ones(batch, n, dtype=torch.bool) if valid is None else valid
    out = torch.zeros(order.shape, dtype=torch.float64)
    for b in range(batch):
        x = tokens[b].double().numpy()
        rows = valid[b].numpy()
        w = weights[b].double().numpy()
        for k in range(order.shape[1]):
            kept = sorted({p for p in order[b, : k + 1].tolist() if rows[p]})
            out[b, k] = float((w * residual_energies(x, kept))[rows].sum())
    return out
