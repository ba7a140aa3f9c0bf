"""gather_rows: the one row gather of prunekit, checked against hand-worked values."""

from __future__ import annotations

import pytest
import torch

from prunekit.core.result import PAD_INDEX, PruneResult
from prunekit.core.tensor_ops import gather_rows

# sample 0 rows: [0, 1], [10, 11], [20, 21]; sample 1 rows: [100, 101], [110, 111], [120, 121]
VALUES = torch.tensor(
    [[[0.0, 1.0], [10.0, 11.0], [20.0, 21.0]], [[100.0, 101.0], [110.0, 111.0], [120.0, 121.0]]]
)


def test_rows_by_hand():
    index = torch.tensor([[2, 0], [1, 1]])
    expected = torch.tensor([[[20.0, 21.0], [0.0, 1.0]], [[110.0, 111.0], [110.0, 111.0]]])
    assert torch.equal(gather_rows(VALUES, index), expected)


def test_no_trailing_dims_and_several_trailing_dims():
    flat = torch.tensor([[5, 6, 7], [8, 9, 10]])
    assert torch.equal(gather_rows(flat, torch.tensor([[2], [0]])), torch.tensor([[7], [8]]))
    # (B, L, 2, 2): each row is a 2 x 2 block, carried whole
    blocks = torch.arange(2 * 3 * 4).view(2, 3, 2, 2)
    out = gather_rows(blocks, torch.tensor([[1, 2], [0, 0]]))
    assert out.shape == (2, 2, 2, 2)
    assert torch.equal(out[0, 0], torch.tensor([[4, 5], [6, 7]]))
    assert torch.equal(out[0, 1], torch.tensor([[8, 9], [10, 11]]))
    assert torch.equal(out[1, 1], torch.tensor([[12, 13], [14, 15]]))


def test_padding_slots_hold_the_fill_value():
    index = torch.tensor([[1, PAD_INDEX], [PAD_INDEX, PAD_INDEX]])
    out = gather_rows(VALUES, index, fill_value=-7.0)
    expected = torch.tensor([[[10.0, 11.0], [-7.0, -7.0]], [[-7.0, -7.0], [-7.0, -7.0]]])
    assert torch.equal(out, expected)
    # integer values too; real slots untouched by a fill of 0
    ints = torch.tensor([[3, 4, 5], [6, 7, 8]])
    out = gather_rows(ints, torch.tensor([[2, -1], [0, 1]]), fill_value=0)
    assert torch.equal(out, torch.tensor([[5, 0], [6, 7]]))


def test_without_fill_value_a_padding_index_is_an_error():
    with pytest.raises((IndexError, RuntimeError)):
        gather_rows(VALUES, torch.tensor([[0, PAD_INDEX], [1, 2]]))


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match="values"):
        gather_rows(torch.zeros(3), torch.zeros(1, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="index"):
        gather_rows(VALUES, torch.zeros(3, 1, dtype=torch.long))  # batch 3 != 2
    with pytest.raises(ValueError, match="index"):
        gather_rows(VALUES, torch.zeros(2, dtype=torch.long))
    with pytest.raises(TypeError, match="index"):
        gather_rows(VALUES, torch.zeros(2, 1))


def test_prune_result_gather_fills_ragged_slots():
    result = PruneResult(
        indices=torch.tensor([[0, 2], [1, PAD_INDEX]]),
        mask=torch.tensor([[True, False, True], [False, True, False]]),
        counts=torch.tensor([2, 1]),
        valid_counts=torch.tensor([3, 3]),
    )
    out = result.gather(VALUES, fill_value=0.5)
    expected = torch.tensor([[[0.0, 1.0], [20.0, 21.0]], [[110.0, 111.0], [0.5, 0.5]]])
    assert torch.equal(out, expected)
