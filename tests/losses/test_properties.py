"""Properties of every registered loss on adversarial finite inputs (hypothesis), through the contract table.

Inputs come from the table's factories (``tests/losses/loss_cases.py``) with values drawn by hypothesis:
logits and regression values anywhere in [-1e4, 1e4], scores in [0, 1], weights in [0, 10] (zero
included, so MMDetection's zero-weight rule is exercised), and boxes with corners in [-1e3, 1e3] whose
width and height may be exactly 0 (zero-area boxes and points). For every such input the loss value and
its gradient with respect to every prediction tensor are finite, and the value is not negative (each
loss here is a non-negative divergence or distance). Example counts come from the hypothesis profile
in ``tests/conftest.py`` (25, derandomized, by default).
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor

from lightning_losses.registry import LOSSES
from tests.losses.loss_cases import CASES, loss_class, registered_names

LIMIT = 1e4
BOX_LIMIT = 1e3


class HypothesisDraw:
    """The :class:`~tests.losses.loss_cases.Draw` of the property tests: every element drawn by hypothesis."""

    def __init__(self, data: st.DataObject) -> None:
        self.data = data

    def _tensor(self, shape: tuple[int, ...], elements: st.SearchStrategy, dtype: torch.dtype) -> Tensor:
        n = math.prod(shape)
        values = self.data.draw(st.lists(elements, min_size=n, max_size=n))
        return torch.tensor(values, dtype=dtype).reshape(shape)

    def _floats(self, shape: tuple[int, ...], low: float, high: float) -> Tensor:
        # the ends and 0 are drawn often: saturated sigmoids, exact zeros
        elements = st.one_of(st.sampled_from([low, 0.0, high]), st.floats(low, high, width=32))
        return self._tensor(shape, elements, torch.float32)

    def logits(self, *shape: int) -> Tensor:
        return self._floats(shape, -LIMIT, LIMIT)

    def values(self, *shape: int) -> Tensor:
        return self._floats(shape, -LIMIT, LIMIT)

    def unit(self, *shape: int) -> Tensor:
        return self._floats(shape, 0.0, 1.0)

    def labels(self, high: int, *shape: int) -> Tensor:
        return self._tensor(shape, st.integers(0, high - 1), torch.int64)

    def weights(self, *shape: int) -> Tensor:
        return self._floats(shape, 0.0, 10.0)

    def boxes(self, n: int) -> Tensor:
        xy = self._floats((n, 2), -BOX_LIMIT, BOX_LIMIT)
        wh = self._floats((n, 2), 0.0, BOX_LIMIT)  # 0 is one of the ends drawn often
        return torch.cat([xy, xy + wh], dim=1)


def _leaves(pred) -> list[Tensor]:
    return list(pred) if isinstance(pred, tuple) else [pred]


def _call(name: str, data: st.DataObject) -> tuple[Tensor, list[Tensor]]:
    case = CASES[loss_class(name).__name__]
    pred, target, weight = case.inputs(HypothesisDraw(data))
    leaves = [p.requires_grad_() for p in _leaves(pred)]
    pred = tuple(leaves) if isinstance(pred, tuple) else leaves[0]
    value = LOSSES[name](**case.init)(pred, target, weight)
    grads = torch.autograd.grad(value, leaves, allow_unused=True)
    return value.detach(), [torch.zeros_like(x) if g is None else g for g, x in zip(grads, leaves, strict=True)]


@pytest.mark.parametrize("name", registered_names())
@given(data=st.data())
def test_finite_non_negative_value_and_finite_gradients(name, data):
    value, grads = _call(name, data)
    assert bool(torch.isfinite(value).all()), f"{name}: value {value}"
    assert bool((value >= -1e-6 * (1 + value.abs())).all()), f"{name}: negative value {value}"
    for i, grad in enumerate(grads):
        assert bool(torch.isfinite(grad).all()), f"{name}: non-finite gradient of pred[{i}]: {grad}"
