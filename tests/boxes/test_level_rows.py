"""split_level_rows against the autograd composite it replaces (permute, concatenate, split) and float64 gradcheck."""

from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck

from lightning_losses.boxes.level_rows import split_level_rows


def _composite(levels, split):
    rows = []
    for level in levels:
        m = level[0] if len(level) == 1 else torch.cat(level, dim=1)
        rows.append(m.permute(0, 2, 3, 1).reshape(m.shape[0], -1, m.shape[1]))
    rows = torch.cat(rows, dim=1)
    return rows[..., :split], rows[..., split:]


def _levels(dtype=torch.float32, pairs=(False, True, False)):
    gen = torch.Generator().manual_seed(0)
    levels = []
    for (h, w), pair in zip([(4, 5), (2, 3), (1, 1)], pairs, strict=True):
        m = torch.randn(2, 7, h, w, generator=gen, dtype=dtype)
        levels.append(
            (m[:, :3].clone().requires_grad_(), m[:, 3:].clone().requires_grad_()) if pair else (m.requires_grad_(),)
        )
    return levels


def test_values_and_gradients_equal_the_composite():
    levels = _levels()
    leaves = [m for level in levels for m in level]
    got = split_level_rows(levels, 3)
    want = _composite(levels, 3)
    gen = torch.Generator().manual_seed(1)
    weights = [torch.randn(t.shape, generator=gen) for t in want]
    for g, w in zip(got, want, strict=True):
        assert g.is_contiguous()
        torch.testing.assert_close(g, w)
    grad_got = torch.autograd.grad(sum((g * v).sum() for g, v in zip(got, weights, strict=True)), leaves)
    grad_want = torch.autograd.grad(sum((g * v).sum() for g, v in zip(want, weights, strict=True)), leaves)
    for a, b in zip(grad_got, grad_want, strict=True):
        torch.testing.assert_close(a, b)


def test_an_unused_output_gives_zero_gradient():
    levels = _levels()
    first, _ = split_level_rows(levels, 3)
    grads = torch.autograd.grad(first.sum(), [levels[0][0], levels[1][1]])
    assert grads[0][:, :3].eq(1).all()
    assert grads[0][:, 3:].eq(0).all()
    assert grads[1].eq(0).all()


@pytest.mark.parametrize("pairs", [(False, False, False), (True, True, False)])
def test_float64_gradcheck(pairs):
    levels = _levels(torch.float64, pairs)
    assert gradcheck(lambda *maps: split_level_rows(_regroup(maps, pairs), 3), tuple(m for lv in levels for m in lv))


def _regroup(maps, pairs):
    out, i = [], 0
    for pair in pairs:
        out.append(tuple(maps[i : i + 1 + pair]))
        i += 1 + pair
    return out
