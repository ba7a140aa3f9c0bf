"""DART (Wen et al., EMNLP 2025, arXiv 2502.11494, "Stop Looking for Important Tokens in
Multimodal Language Models: Duplication Matters More").

Inside the language model, after decoder layer ``K``: a few pivot tokens (image and
text tokens with the largest key L1 norm at layer ``K-1``) each claim the image tokens
least similar to them, so the kept set covers the image with little duplication.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from prunekit.core.inputs import PruneInputs
from prunekit.core.points import IN_LLM
from prunekit.core.pruner import Picks, TokenPruner
from prunekit.core.tensor_ops import gather_rows
from prunekit_baselines._ops import COSINE_SIMILARITY_EPS, unit_rows

PivotOrder = Literal["set", "norm"]
PIVOT_ORDERS = ("set", "norm")

IMAGE_KEYS = "llm_image_keys"
IMAGE_HIDDEN = "llm_image_hidden"
IMAGE_POSITIONS = "llm_image_positions"
TEXT_KEYS = "llm_text_keys"
TEXT_HIDDEN = "llm_text_hidden"
TEXT_MASK = "llm_text_mask"
TEXT_POSITIONS = "llm_text_positions"


def key_l1_norms(keys: torch.Tensor) -> torch.Tensor:
    """``(..., T)`` L1 norm of ``(..., T, H, d_head)`` keys over all heads, as DART ranks pivots."""
    return keys.abs().flatten(-2).sum(dim=-1)


def set_iteration_order(positions: list[int]) -> list[int]:
    """The order in which DART's official code visits its pivots.

    It puts the pivots' absolute positions (image pivots, then text pivots, each by
    decreasing key norm) into a Python ``set``, copies it and iterates ``list(copy)``;
    this replays exactly that on the same integers (CPython's set order of ints).
    Returns indices into ``positions``; a position given twice is visited once per entry.
    """
    visit = list(set(positions).copy())
    slots: dict[int, list[int]] = {}
    for index, position in enumerate(positions):
        slots.setdefault(position, []).append(index)
    return [index for position in visit for index in slots[position]]


def claim_counts(remaining: int, pivots: int) -> list[int]:
    """How many tokens each of ``pivots`` pivots claims (in visiting order) to keep ``remaining``.

    ``remaining // pivots`` each, the first ``remaining % pivots`` one more; with the
    official budget arithmetic (see :meth:`DART.official_budget`) the remainder is 0.
    """
    share, extra = divmod(remaining, pivots)
    return [share + (1 if j < extra else 0) for j in range(pivots)]


def _claim_table(remaining: torch.Tensor, pivots: torch.Tensor, slots: int) -> torch.Tensor:
    """:func:`claim_counts` batched: ``(B, slots)`` for ``(B, 1)`` remaining and pivot counts
    (0 past a sample's pivots)."""
    j = torch.arange(slots, device=remaining.device)
    share = remaining // pivots + (j < remaining % pivots)
    return torch.where(j < pivots, share, 0)


def _top_slots(norms: torch.Tensor, valid: torch.Tensor, k: int) -> torch.Tensor:
    """``(B, k)`` indices of the ``k`` largest ``norms`` per row among ``valid`` ones,
    largest first, ties towards the lowest index (invalid ones last)."""
    ranked = norms.masked_fill(~valid, -torch.inf)
    return torch.sort(ranked, dim=1, descending=True, stable=True).indices[:, :k]


def _set_visit_order(positions: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    """``(B, P)`` pivot slots in the official visiting order (:func:`set_iteration_order` of
    the active pivots' positions), then the inactive slots.

    CPython's ``set`` order is only defined by CPython itself, so this runs on the host:
    one read of the ``(B, P)`` pivot positions per call and a pass over at most ``P``
    integers per sample; the claims themselves stay batched on the device.
    """
    slots_total = positions.shape[1]
    rows = []
    for values in torch.cat([positions, active.long()], dim=1).tolist():  # one device read
        row, flags = values[:slots_total], values[slots_total:]
        slots = [j for j, on in enumerate(flags) if on]
        order = [slots[i] for i in set_iteration_order([row[j] for j in slots])]
        rows.append(order + [j for j, on in enumerate(flags) if not on])
    return torch.tensor(rows, dtype=torch.int64, device=positions.device)


@dataclass
class DART(TokenPruner):
    """DART: duplication-aware pruning with key-norm pivots, inside the language model.

    Paper: Wen et al., "Stop Looking for Important Tokens in Multimodal Language
    Models: Duplication Matters More" (EMNLP 2025, arXiv 2502.11494). Official
    code: https://github.com/ZichenWen1/DART (LLaVA:
    ``llava/model/language_model/modeling_llama_self.py``,
    ``get_retained_image_token`` and ``DART_K_norm.forward``; Qwen2-VL:
    ``Qwen2-VL/Qwen2VL_DART/modeling_qwen2_vl_self.py``). What it does, at
    decoder layer ``K`` (before it runs), for one prompt with one image:

    1. ``h`` = the hidden states leaving layer ``K-1`` through the decoder's
       final norm; ``k`` = layer ``K-1``'s post-RoPE keys (heads repeated,
       flattened over heads);
    2. pivots: the ``pivot_image_tokens`` image tokens and the
       ``pivot_text_tokens`` tokens after the image with the largest ``||k||_1``;
    3. each pivot in turn (in the iteration order of a Python ``set`` of their
       absolute positions) claims the ``floor(B / (p_img + p_txt))`` remaining
       image tokens (not pivots, not yet claimed) with the lowest cosine
       similarity of ``h`` to its own ``h``;
    4. kept: the image pivots and every claimed token; layers ``K ..`` run on
       them and the text, with original positions.

    Defaults (official LLaVA-1.5 scripts): ``K=2`` (``attach(...,
    llm_layer=2)``), 4 image and 4 text pivots, ``max_num_trunction B=128``.
    Signals (prunekit's VLM adapters compute them at the in-LLM point):
    ``"llm_image_keys"``, ``"llm_image_hidden"``, ``"llm_text_keys"``,
    ``"llm_text_hidden"``, ``"llm_text_mask"``, and with ``pivot_order="set"``
    ``"llm_image_positions"`` and ``"llm_text_positions"``.

    The budget. The official code keeps ``p_img + (p_img + p_txt) * floor(B /
    (p_img + p_txt))`` tokens, not ``B`` (``B=128`` keeps ``4 + 8 x 16 = 132``),
    while a prunekit pruner keeps exactly its budget. prunekit keeps the budget
    ``c``: the ``min(p_img, c)`` image pivots, and the ``R = c - p_img`` others
    claimed ``R // P`` per pivot (``P`` pivots), the first ``R % P`` pivots in
    visiting order claiming one more. For ``c = official_budget(B)`` (132 for
    ``B=128``) that is exactly the official selection; use
    ``budget=DART().official_budget(128)`` to reproduce the official runs.

    Args:
        pivot_image_tokens: image pivots (official: 4).
        pivot_text_tokens: text pivots (official: 4); 0 uses no text.
        pivot_order: the order in which pivots claim tokens, which matters because
            claimed tokens are gone for later pivots. ``"set"`` (default, fidelity):
            the official code's Python ``set`` iteration order of the pivots'
            absolute positions (CPython's order of ints; positions count the
            prompt's real tokens from 0, as the official code's batch of one does).
            ``"norm"`` (deterministic, no implementation detail): image pivots by
            decreasing key norm, then text pivots by decreasing key norm.

    Departures from the official code:

    * the budget arithmetic above (identical at the official budgets);
    * "text" is every real non-image token after the sample's first image token
      (the official code: every token after its single image); a sample with
      fewer text tokens than ``pivot_text_tokens`` uses the ones it has (the
      official ``topk`` raises), and a budget below ``pivot_image_tokens`` keeps
      the top image pivots only;
    * ranking and similarities run in float32 (the official code: the model's
      dtype, fp16), ties go to the lowest index (``torch.topk`` leaves them
      unspecified), and the candidate order of each claim is the token order
      (the official code iterates a ``set`` there too, which only matters for ties);
    * batches: the official code handles one prompt with one image at a fixed
      offset; prunekit handles each sample on its own (padding excluded), all
      image tokens of a sample together under one per-sample budget, batched over the
      samples (with ``"set"``, CPython's set order of the pivots' positions is computed on
      the host: one read of the pivot positions per call).
    """

    name = "dart"
    pruning_points: ClassVar[frozenset[str] | None] = frozenset({IN_LLM})

    pivot_image_tokens: int = 4
    pivot_text_tokens: int = 4
    pivot_order: PivotOrder = "set"

    def __post_init__(self) -> None:
        super().__post_init__()  # types and pivot_order's choices, from the annotations
        for label, value, low in (
            ("pivot_image_tokens", self.pivot_image_tokens, 1),
            ("pivot_text_tokens", self.pivot_text_tokens, 0),
        ):
            if value < low:
                raise ValueError(f"{label} must be >= {low}, got {value}")
        required = {IMAGE_KEYS, IMAGE_HIDDEN}
        if self.pivot_text_tokens:
            required |= {TEXT_KEYS, TEXT_HIDDEN, TEXT_MASK}
        if self.pivot_order == "set":
            required.add(IMAGE_POSITIONS)
            if self.pivot_text_tokens:
                required.add(TEXT_POSITIONS)
        self.required_signals = frozenset(required)

    def official_budget(self, max_num_trunction: int = 128) -> int:
        """Tokens the official code keeps for its ``max_num_trunction`` (``B``): 132 for 128."""
        pivots = self.pivot_image_tokens + self.pivot_text_tokens
        return self.pivot_image_tokens + pivots * (max_num_trunction // pivots)

    def select(self, inputs: PruneInputs, num_keep: int) -> Picks:
        signals = inputs.signals
        valid = inputs.token_mask
        batch, n = valid.shape
        counts = inputs.keep_counts
        if counts is None:
            counts = inputs.valid_counts.clamp(max=num_keep)
        counts = counts.unsqueeze(1)  # (B, 1)

        # image pivots: the largest key norms; a sample keeping c < p_img keeps only the top c
        p_img = min(self.pivot_image_tokens, n)
        image_pivots = _top_slots(key_l1_norms(signals[IMAGE_KEYS]), valid, p_img)
        image_active = torch.arange(p_img, device=valid.device) < counts  # c <= valid tokens
        image_hidden = signals[IMAGE_HIDDEN]
        pivot_hidden = [gather_rows(image_hidden, image_pivots)]  # (B, p, D) per kind
        active = [image_active]
        positions = []
        if self.pivot_order == "set":
            positions.append(signals[IMAGE_POSITIONS].gather(1, image_pivots))
        if self.pivot_text_tokens:
            text_mask = signals[TEXT_MASK]
            p_txt = min(self.pivot_text_tokens, text_mask.shape[1])
            text_pivots = _top_slots(key_l1_norms(signals[TEXT_KEYS]), text_mask, p_txt)
            pivot_hidden.append(gather_rows(signals[TEXT_HIDDEN], text_pivots))
            active.append(
                torch.arange(p_txt, device=valid.device) < text_mask.sum(dim=1, keepdim=True)
            )
            if self.pivot_order == "set":
                positions.append(signals[TEXT_POSITIONS].gather(1, text_pivots))
        pivot_hidden = torch.cat(pivot_hidden, dim=1)  # (B, P, D): image pivots, then text
        active = torch.cat(active, dim=1)  # (B, P)
        slots = active.shape[1]
        if self.pivot_order == "set":
            visit = _set_visit_order(torch.cat(positions, dim=1), active)
        else:  # active slots first, in slot order
            visit = torch.sort((~active).to(torch.uint8), dim=1, stable=True).indices
        shares = _claim_table(
            counts - image_active.sum(dim=1, keepdim=True), active.sum(dim=1, keepdim=True), slots
        )

        picked = torch.zeros_like(valid).scatter_(1, image_pivots, image_active)
        free = valid & ~picked
        rank = torch.arange(n, device=valid.device)
        # F.cosine_similarity's own arithmetic (unit rows, then a product summed), with the
        # image tokens normalised once rather than once per pivot
        unit_hidden = unit_rows(image_hidden, eps=COSINE_SIMILARITY_EPS)
        unit_pivots = unit_rows(pivot_hidden, eps=COSINE_SIMILARITY_EPS)
        # one claim per pivot, batched over the samples; P <= pivot_image + pivot_text steps
        for j in range(slots):
            pivot = gather_rows(unit_pivots, visit[:, j : j + 1])  # (B, 1, D)
            similarity = (pivot * unit_hidden).sum(dim=-1)  # (B, N) cosines
            ranked = torch.sort(similarity.masked_fill(~free, torch.inf), dim=1, stable=True)
            # the j-th visited pivot claims its share of the least similar free tokens
            claim = rank < shares[:, j : j + 1]
            claimed = torch.zeros_like(free).scatter_(1, ranked.indices, claim)
            free &= ~claimed
            picked |= claimed
        order = torch.sort((~picked).to(torch.uint8), dim=1, stable=True).indices[:, :num_keep]
        return Picks(order=order)


def register(registry) -> None:
    registry.add_pruner(DART)
