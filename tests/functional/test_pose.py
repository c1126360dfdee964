"""functional.pose: SimCC Gaussian labels and the discrete KL loss, against hand-worked cases, the literal
per-keypoint NetsPresso Trainer 1.4.1 encoding (``tests.references.netspresso_extra``), an unfused KL, and
float64 gradcheck."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_losses.functional.pose import kl_discret_loss, simcc_gaussian_targets
from tests.references.netspresso_extra import simcc_label


def keypoints(seed: int, n: int = 3, k: int = 7, low: float = -30.0, high: float = 290.0):
    generator = torch.Generator().manual_seed(seed)
    xy = low + torch.rand(n, k, 2, generator=generator) * (high - low)
    visible = torch.randint(0, 3, (n, k), generator=generator).float()
    return xy, visible


# --------------------------------------------------------------------------------------------------
# simcc_gaussian_targets
# --------------------------------------------------------------------------------------------------
def test_targets_hand_worked_gaussian():
    """x = 1.2 → bin round(2.4) = 2 of 8; σ = 1: exp(-(j - 2)² / 2)."""
    tx, ty, w = simcc_gaussian_targets(torch.tensor([[[1.2, 3.0]]]), torch.ones(1, 1), 4, 2.0, 1.0)
    want_x = torch.tensor([math.exp(-((j - 2) ** 2) / 2) for j in range(8)])
    want_y = torch.tensor([math.exp(-((j - 6) ** 2) / 2) for j in range(8)])
    torch.testing.assert_close(tx[0, 0], want_x)
    torch.testing.assert_close(ty[0, 0], want_y)
    assert w.tolist() == [[1.0]]


def test_targets_round_half_to_even():
    """1.25 · 2 = 2.5 rounds to 2, 1.75 · 2 = 3.5 rounds to 4 (torch.round, as NetsPresso)."""
    tx, _, _ = simcc_gaussian_targets(torch.tensor([[[1.25, 0.0], [1.75, 0.0]]]), torch.ones(1, 2), 8, 2.0, 1.0)
    assert tx[0].argmax(-1).tolist() == [2, 4]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_targets_match_literal_per_keypoint_encoding(seed):
    xy, visible = keypoints(seed)
    xy[0, 0] = torch.tensor([-9.0, 10.0])  # bin -18: -18 + 16.98 + 1 < 0 → out of range, weight 0
    xy[0, 1] = torch.tensor([-8.5, 10.0])  # bin -17: still covers bin 0
    xy[0, 2] = torch.tensor([264.5, 10.0])  # bin 529: 529 - 16.98 >= 512 → out of range
    xy[0, 3] = torch.tensor([264.0, 10.0])  # bin 528: in range
    visible[0, :4] = 1.0
    xy[1, :3] = 100.0
    visible[1, :3] = torch.tensor([0.3, 0.7, 2.0])  # weight = visibility as given, zero labels below 0.5
    tx, ty, w = simcc_gaussian_targets(xy, visible)
    for n in range(xy.shape[0]):
        for k in range(xy.shape[1]):
            want_x, want_y, want_w = simcc_label(float(xy[n, k, 0]), float(xy[n, k, 1]), float(visible[n, k]))
            torch.testing.assert_close(tx[n, k], want_x, rtol=1e-6, atol=1e-7)
            torch.testing.assert_close(ty[n, k], want_y, rtol=1e-6, atol=1e-7)
            assert math.isclose(float(w[n, k]), want_w, rel_tol=1e-6)
    assert w[0, :4].tolist() == [0.0, 1.0, 0.0, 1.0]
    assert tx[0, 0].abs().sum() == 0
    assert tx[0, 1, 0] > 0
    assert w[1, :3].tolist() == pytest.approx([0.3, 0.7, 2.0])
    assert tx[1, 0].abs().sum() == 0


def test_targets_normalize_divides_by_sigma_sqrt_2pi():
    tx, _, _ = simcc_gaussian_targets(torch.tensor([[[2.0, 2.0]]]), torch.ones(1, 1), 8, 1.0, 2.0, normalize=True)
    assert float(tx[0, 0, 2]) == pytest.approx(1 / (2 * math.sqrt(2 * math.pi)))


def test_targets_rectangular_input_and_empty():
    tx, ty, w = simcc_gaussian_targets(torch.zeros(2, 0, 2), torch.zeros(2, 0), (192, 256), 2.0)
    assert tx.shape == (2, 0, 384)
    assert ty.shape == (2, 0, 512)
    assert w.shape == (2, 0)


def test_targets_do_not_modify_inputs():
    xy, visible = keypoints(4)
    xy_copy, vis_copy = xy.clone(), visible.clone()
    simcc_gaussian_targets(xy, visible)
    assert torch.equal(xy, xy_copy)
    assert torch.equal(visible, vis_copy)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((torch.zeros(2, 3), torch.ones(2, 3)), "keypoints"),
        ((torch.zeros(2, 3, 3), torch.ones(2, 3)), "keypoints"),
        ((torch.zeros(2, 3, 2), torch.ones(2, 4)), "visible"),
        ((torch.zeros(2, 3, 2), torch.ones(2, 3), (0, 256)), "input_size"),
        ((torch.zeros(2, 3, 2), torch.ones(2, 3), 256, 2.0, (1.0, 2.0, 3.0)), "sigma"),
        ((torch.zeros(2, 3, 2), torch.ones(2, 3), 256, 0.0), "split_ratio"),
    ],
)
def test_targets_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        simcc_gaussian_targets(*args)


# --------------------------------------------------------------------------------------------------
# kl_discret_loss
# --------------------------------------------------------------------------------------------------
def unfused_kl(pred, target, weight, beta, label_softmax, label_beta):
    """Σ_axes mean_j q (log q - log p) per keypoint, with 0·log 0 = 0: the (N, K) element loss."""
    total = 0
    for p, t in zip(pred, target, strict=True):
        log_p = torch.log_softmax(p.double() * beta, -1)
        q = torch.softmax(t.double() * label_beta, -1) if label_softmax else t.double()
        kl = torch.where(q > 0, q * torch.log(torch.where(q > 0, q, 1.0)), 0.0) - q * log_p
        total = total + kl.mean(-1)
    return total if weight is None else total * weight.double()


def simcc_inputs(seed: int, n: int = 2, k: int = 5, bins: tuple[int, int] = (12, 9)):
    generator = torch.Generator().manual_seed(seed)
    pred = tuple(torch.randn(n, k, b, generator=generator) for b in bins)
    target = tuple(torch.rand(n, k, b, generator=generator) for b in bins)
    weight = torch.rand(n, k, generator=generator)
    return pred, target, weight


def test_kl_hand_worked():
    """Uniform p over 4 bins, q one-hot: KL = log 4, mean over bins log(4)/4; 2 keypoints, weights 1 and 0.5:
    sum (1 + 0.5)·log(4)/4 over K = 2."""
    pred = torch.zeros(1, 2, 4)
    target = torch.tensor([[[0.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]]])
    got = kl_discret_loss(pred, target, torch.tensor([[1.0, 0.5]]))
    assert float(got) == pytest.approx(1.5 * math.log(4) / 4 / 2, rel=1e-6)


@pytest.mark.parametrize("label_softmax", [False, True])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_kl_matches_unfused(label_softmax, reduction):
    pred, target, weight = simcc_inputs(0)
    element = unfused_kl(pred, target, weight, 10.0, label_softmax, 10.0)
    want = {"none": element, "sum": element.sum(), "mean": element.sum() / pred[0].shape[1]}[reduction]
    got = kl_discret_loss(pred, target, weight, 10.0, label_softmax, 10.0, reduction=reduction)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-7)


def test_kl_avg_factor_replaces_k():
    pred, target, weight = simcc_inputs(1)
    element = unfused_kl(pred, target, weight, 1.0, False, 10.0)
    got = kl_discret_loss(pred, target, weight, avg_factor=7.0)
    torch.testing.assert_close(got.double(), element.sum() / 7.0, rtol=1e-5, atol=1e-7)


def test_kl_zero_labels_are_not_nan():
    """Zero labels (no softmax): 0·log 0 = 0, the loss is -0 exactly and its gradient 0."""
    pred = torch.randn(2, 3, 6, requires_grad=True)
    loss = kl_discret_loss(pred, torch.zeros(2, 3, 6))
    loss.backward()
    assert float(loss.detach()) == 0.0
    assert torch.isfinite(pred.grad).all()
    assert pred.grad.abs().sum() == 0


def test_kl_gradcheck_float64():
    pred, target, weight = simcc_inputs(2, n=2, k=3, bins=(5, 4))
    pred = tuple(p.double().requires_grad_() for p in pred)
    target = tuple(t.double().requires_grad_() for t in target)
    assert torch.autograd.gradcheck(
        lambda px, py, tx, ty: kl_discret_loss((px, py), (tx, ty), weight.double(), 10.0, True, 10.0),
        (*pred, *target),
    )
    assert torch.autograd.gradcheck(
        lambda px, py: kl_discret_loss((px, py), target, weight.double(), 2.0, False, reduction="none"), pred
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_kl_half_precision_finite_and_close(dtype):
    """Half inputs are computed in float32: large logits (β·x up to ±300) stay finite."""
    pred, target, weight = simcc_inputs(3, bins=(256, 256))
    pred = tuple((p * 30).to(dtype) for p in pred)
    got = kl_discret_loss(pred, target, weight, 10.0, True, 10.0)
    want = unfused_kl(pred, target, weight, 10.0, True, 10.0).sum() / 5
    assert got.dtype == torch.float32
    assert torch.isfinite(got)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)


def test_kl_no_keypoints():
    pred = (torch.zeros(2, 0, 8, requires_grad=True), torch.zeros(2, 0, 8))
    got = kl_discret_loss(pred, (torch.zeros(2, 0, 8), torch.zeros(2, 0, 8)), torch.zeros(2, 0))
    assert float(got.detach()) == 0.0
    got.backward()


@pytest.mark.parametrize(
    ("pred", "target", "weight", "exc", "match"),
    [
        (torch.zeros(2, 3), torch.zeros(2, 3), None, ValueError, r"pred\[0\]"),
        ((torch.zeros(2, 3, 4),), (torch.zeros(2, 3, 5),), None, ValueError, r"target\[0\]"),
        ((torch.zeros(2, 3, 4), torch.zeros(2, 3, 4)), (torch.zeros(2, 3, 4),), None, ValueError, "axes"),
        ((torch.zeros(2, 3, 4), torch.zeros(2, 2, 4)), (torch.zeros(2, 3, 4), torch.zeros(2, 2, 4)), None, ValueError,
         r"pred\[1\]"),
        (torch.zeros(2, 3, 4), torch.zeros(2, 3, 4), torch.ones(3, 2), ValueError, "weight"),
        (torch.zeros(2, 3, 4, dtype=torch.long), torch.zeros(2, 3, 4), None, TypeError, "floating"),
        ([], [], None, TypeError, "pred"),
    ],
)  # fmt: skip
def test_kl_bad_input(pred, target, weight, exc, match):
    with pytest.raises(exc, match=match):
        kl_discret_loss(pred, target, weight)
