"""DART (Wen et al., EMNLP 2025, arXiv 2502.11494, "Stop Looking for Important Tokens in
Multimodal Language Models: Duplication Matters More").

Inside the language model, after decoder layer ``K``: a few pivot tokens (image and
text tokens with the largest key L1 norm at layer ``K-1``) each claim the image tokens
least similar to them, so the kept set covers the image with little duplication.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch

from prunekit.core.errors import check_choice
from prunekit.core.inputs import PruneInputs
from prunekit.core.pruner import Picks, TokenPruner

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


def top_rows(values: torch.Tensor, k: int) -> list[int]:
    """The ``k`` largest of a 1-D tensor, largest first; ties towards the lowest index."""
    return torch.sort(values, descending=True, stable=True).indices[:k].tolist()


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
      image tokens of a sample together under one per-sample budget.
    """

    name = "dart"
    pruning_points: ClassVar[frozenset[str] | None] = frozenset({"in_llm"})

    def __init__(
        self,
        pivot_image_tokens: int = 4,
        pivot_text_tokens: int = 4,
        pivot_order: PivotOrder = "set",
    ) -> None:
        for label, value, low in (
            ("pivot_image_tokens", pivot_image_tokens, 1),
            ("pivot_text_tokens", pivot_text_tokens, 0),
        ):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{label} must be an int, got {type(value).__name__}")
            if value < low:
                raise ValueError(f"{label} must be >= {low}, got {value}")
        self.pivot_image_tokens = pivot_image_tokens
        self.pivot_text_tokens = pivot_text_tokens
        self.pivot_order = check_choice("pivot_order", pivot_order, PIVOT_ORDERS)
        required = {IMAGE_KEYS, IMAGE_HIDDEN}
        if pivot_text_tokens:
            required |= {TEXT_KEYS, TEXT_HIDDEN, TEXT_MASK}
        if self.pivot_order == "set":
            required.add(IMAGE_POSITIONS)
            if pivot_text_tokens:
                required.add(TEXT_POSITIONS)
        self.required_signals = frozenset(required)

    def official_budget(self, max_num_trunction: int = 128) -> int:
        """Tokens the official code keeps for its ``max_num_trunction`` (``B``): 132 for 128."""
        pivots = self.pivot_image_tokens + self.pivot_text_tokens
        return self.pivot_image_tokens + pivots * (max_num_trunction // pivots)

    def select(self, inputs: PruneInputs, num_keep: int) -> Picks:
        counts = inputs.keep_counts
        if counts is None:
            counts = inputs.valid_counts.clamp(max=num_keep)
        order = torch.zeros(inputs.batch_size, num_keep, dtype=torch.int64)
        for b, count in enumerate(counts.tolist()):
            picks = self._select_sample(inputs, b, count)
            order[b, :count] = torch.tensor(picks, dtype=torch.int64)
        return Picks(order=order.to(inputs.tokens.device))

    def _select_sample(self, inputs: PruneInputs, b: int, count: int) -> list[int]:
        """The ``count`` image tokens sample ``b`` keeps (indices into its N tokens)."""
        signals = inputs.signals
        columns = inputs.token_mask[b].nonzero()[:, 0]  # the sample's valid tokens, ascending
        image_keys = key_l1_norms(signals[IMAGE_KEYS][b, columns])
        image_hidden = signals[IMAGE_HIDDEN][b, columns]
        image_pivots = top_rows(image_keys, min(self.pivot_image_tokens, count))
        # pivots as (hidden state, absolute position or None), image pivots first
        hidden = [image_hidden[i] for i in image_pivots]
        positions: list[int] = []
        if self.pivot_order == "set":
            positions = signals[IMAGE_POSITIONS][b, columns[image_pivots]].tolist()
        if self.pivot_text_tokens:
            rows = signals[TEXT_MASK][b].nonzero()[:, 0]
            text_pivots = top_rows(
                key_l1_norms(signals[TEXT_KEYS][b, rows]), min(self.pivot_text_tokens, len(rows))
            )
            hidden += [signals[TEXT_HIDDEN][b, rows[t]] for t in text_pivots]
            if self.pivot_order == "set":
                positions += signals[TEXT_POSITIONS][b, rows[text_pivots]].tolist()
        visit = set_iteration_order(positions) if self.pivot_order == "set" else range(len(hidden))

        kept = list(image_pivots)
        free = torch.ones(len(columns), dtype=torch.bool, device=columns.device)
        free[image_pivots] = False
        for pivot, share in zip(visit, claim_counts(count - len(image_pivots), len(hidden))):
            if share == 0:
                continue
            similarity = torch.nn.functional.cosine_similarity(
                hidden[pivot].unsqueeze(0), image_hidden, dim=-1
            )
            similarity = similarity.masked_fill(~free, float("inf"))
            claimed = torch.sort(similarity, stable=True).indices[:share]
            free[claimed] = False
            kept += claimed.tolist()
        return columns[kept].tolist()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(pivot_image_tokens={self.pivot_image_tokens}, "
            f"pivot_text_tokens={self.pivot_text_tokens}, pivot_order={self.pivot_order!r})"
        )


def register(registry) -> None:
    registry.add_pruner("dart", DART)
