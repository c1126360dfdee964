"""PIDNetCriterion: each term by hand on a tiny mask, and literal references for NetsPresso Trainer's
``pidnet_loss`` (NetsPresso's pidnet_loss) and PIDNet's OHEM training loss (NetsPresso Trainer 1.4.1)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lightning_losses import PIDNetCriterion
from lightning_losses.functional.segmentation import boundary_from_mask


# --------------------------------------------------------------------------------------------------
# Independent references
# --------------------------------------------------------------------------------------------------
def ref_weighted_bce(logit: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """PIDNet's boundary BCE written out: per-element softplus terms weighted N/(P+N) on 1s, P/(P+N) on 0s."""
    x = logit[:, 0].reshape(-1)
    t = target.reshape(-1).float()
    num_pos, num_neg = float((t == 1).sum()), float((t == 0).sum())
    w = torch.where(t == 1, num_neg / (num_pos + num_neg), torch.where(t == 0, num_pos / (num_pos + num_neg), 0.0))
    element = torch.clamp(x, min=0) - x * t + torch.log1p(torch.exp(-x.abs()))
    return (w * element).sum() / x.numel()


def ref_ce(logits: torch.Tensor, target: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """Mean of -log softmax_y over the pixels whose label is not ignore_index."""
    log_prob = F.log_softmax(logits, dim=1)
    valid = target != ignore_index
    picked = log_prob.gather(1, torch.where(valid, target, 0)[:, None])[:, 0]
    return -(picked * valid).sum() / valid.sum()


def ref_ohem(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int, thres: float, min_kept: int
) -> torch.Tensor:
    """Sort the valid pixels by p_y; τ = max(p_sorted[min(m, n - 1)], thres); mean loss of the pixels with p_y < τ."""
    log_prob = F.log_softmax(logits, dim=1)
    valid = (target != ignore_index).reshape(-1)
    picked = log_prob.gather(1, torch.where(target != ignore_index, target, 0)[:, None]).reshape(-1)[valid]
    probs, order = picked.exp().sort()
    tau = max(float(probs[min(max(min_kept, 1), probs.numel() - 1)]), thres)
    return -(picked[order][probs < tau]).mean()


def netspresso_pidnet(extra_p, pred, extra_d, target, bd_gt, ignore_index):
    """NetsPresso pidnet_loss: resize all three (bilinear, align_corners=True), then
    0.4·CE(P) + CE(I) + 20·weighted_bce(D) + CE(I | σ(D) > 0.8)."""
    size = target.shape[-2:]
    extra_p, pred, extra_d = (
        F.interpolate(x, size=size, mode="bilinear", align_corners=True) for x in (extra_p, pred, extra_d)
    )
    bd_label = torch.where(torch.sigmoid(extra_d[:, 0]) > 0.8, target, torch.full_like(target, ignore_index))
    return {
        "loss_aux": 0.4 * ref_ce(extra_p, target, ignore_index),
        "loss_sem": ref_ce(pred, target, ignore_index),
        "loss_boundary": 20 * ref_weighted_bce(extra_d, bd_gt),
        "loss_bas": ref_ce(pred, bd_label, ignore_index),
    }


def random_inputs(seed: int, classes: int = 3, ignore_index: int = 255, low: int = 16, high: int = 32):
    generator = torch.Generator().manual_seed(seed)
    aux = torch.randn(2, classes, low, low, generator=generator) * 2
    logits = torch.randn(2, classes, low, low, generator=generator) * 2
    boundary = torch.randn(2, 1, low, low, generator=generator) * 2
    target = torch.randint(0, classes, (2, high, high), generator=generator)
    target[torch.rand(2, high, high, generator=generator) < 0.15] = ignore_index
    bd_gt = (torch.rand(2, high, high, generator=generator) < 0.2).float()
    return aux, logits, boundary, target, bd_gt


# --------------------------------------------------------------------------------------------------
# Each term by hand
# --------------------------------------------------------------------------------------------------
def test_each_term_by_hand_on_a_tiny_mask():
    """Hand-worked: one image, 2 classes, 1 x 2 pixels, no resizing.

    Main logits (2, 0) and (0, 0), aux (0, 0) twice, labels (0, 1); boundary logits (3, -3) and boundary
    target (1, 0): P = N = 1, so both weights are 1/2.
    aux = 0.4·log 2; sem = (log(1 + e^-2) + log 2) / 2; boundary = 20·(½·softplus(-3) + ½·softplus(-3)) / 2;
    only pixel 0 has σ(3) = .953 > .8, so bas = log(1 + e^-2) (ohem=False).
    """
    logits = torch.tensor([[[[2.0, 0.0]], [[0.0, 0.0]]]])
    aux = torch.zeros(1, 2, 1, 2)
    boundary = torch.tensor([[[[3.0, -3.0]]]])
    target = torch.tensor([[[0, 1]]])
    bd_gt = torch.tensor([[[1.0, 0.0]]])
    got = PIDNetCriterion(2, ohem=False)(aux, logits, boundary, target, bd_gt)
    softplus = math.log1p(math.exp(-3.0))
    want = {
        "loss_aux": 0.4 * math.log(2),
        "loss_sem": (math.log1p(math.exp(-2.0)) + math.log(2)) / 2,
        "loss_boundary": 20 * softplus / 2,
        "loss_bas": math.log1p(math.exp(-2.0)),
    }
    for term, value in want.items():
        assert math.isclose(float(got[term]), value, rel_tol=1e-6), term


def test_ohem_terms_by_hand():
    """Hand-worked (ohem=True, min_kept 1, thres .9): p_y = .98 for an easy pixel is dropped from sem and bas.

    Pixels: logits (4, 0) label 0 (p = .982), (0, 0) label 0 (p = .5), (0, 1) label 1 (p = .731); all boundary
    logits 3 (σ > .8), so bas sees the same pixels as sem: both = (log 2 + log(1 + e^-1)) / 2.
    """
    logits = torch.tensor([[[[4.0, 0.0, 0.0]], [[0.0, 0.0, 1.0]]]])
    target = torch.tensor([[[0, 0, 1]]])
    got = PIDNetCriterion(2, ohem=True, ohem_min_kept=1)(
        torch.zeros(1, 2, 1, 3), logits, torch.full((1, 1, 1, 3), 3.0), target, torch.tensor([[[1.0, 0.0, 0.0]]])
    )
    want = (math.log(2) + math.log1p(math.exp(-1.0))) / 2
    assert math.isclose(float(got["loss_sem"]), want, rel_tol=1e-6)
    assert math.isclose(float(got["loss_bas"]), want, rel_tol=1e-6)


# --------------------------------------------------------------------------------------------------
# References
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("ignore_index", [255, -100])
def test_ohem_false_equals_netspresso_formula(seed, ignore_index):
    """Reference: literal NetsPresso pidnet_loss (netspresso_pidnet); each term and the gradients."""
    aux, logits, boundary, target, bd_gt = random_inputs(seed, ignore_index=ignore_index)
    inputs = [t.requires_grad_(True) for t in (aux, logits, boundary)]
    got = PIDNetCriterion(3, ignore_index=ignore_index, ohem=False)(*inputs, target, bd_gt)
    want = netspresso_pidnet(*inputs, target, bd_gt, ignore_index)
    for term in PIDNetCriterion.terms:
        torch.testing.assert_close(got[term], want[term], rtol=1e-5, atol=1e-6, msg=term)
    got_grads = torch.autograd.grad(sum(got.values()), inputs)
    want_grads = torch.autograd.grad(sum(want.values()), inputs)
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("min_kept", [1, 300, 100000])
def test_ohem_true_equals_pidnet_reference(seed, min_kept):
    """Reference: PIDNet's training loss with OHEM on the main and boundary-aware terms (sort-based ref_ohem)."""
    aux, logits, boundary, target, bd_gt = random_inputs(seed)
    got = PIDNetCriterion(3, ohem=True, ohem_min_kept=min_kept)(aux, logits, boundary, target, bd_gt)
    size = target.shape[-2:]
    up = [F.interpolate(x, size=size, mode="bilinear", align_corners=True) for x in (aux, logits, boundary)]
    bas_target = torch.where(up[2][:, 0].sigmoid() > 0.8, target, 255)
    torch.testing.assert_close(got["loss_aux"], 0.4 * ref_ce(up[0], target, 255))
    torch.testing.assert_close(got["loss_sem"], ref_ohem(up[1], target, 255, 0.9, min_kept), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got["loss_boundary"], 20 * ref_weighted_bce(up[2], bd_gt), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got["loss_bas"], ref_ohem(up[1], bas_target, 255, 0.9, min_kept), rtol=1e-5, atol=1e-6)


def test_resizes_bilinear_align_corners_true():
    """Reference: F.interpolate(..., align_corners=True) of every map to the mask size (PIDNet's default);
    align_corners=False would give different values."""
    aux, logits, boundary, target, bd_gt = random_inputs(5, low=5, high=17)
    criterion = PIDNetCriterion(3, ohem=False)
    got = criterion(aux, logits, boundary, target, bd_gt)
    for align, expect_equal in ((True, True), (False, False)):
        up = [F.interpolate(x, size=(17, 17), mode="bilinear", align_corners=align) for x in (aux, logits, boundary)]
        same = criterion(*up, target, bd_gt)
        close = all(torch.allclose(got[t], same[t], rtol=1e-5, atol=1e-6) for t in PIDNetCriterion.terms)
        assert close == expect_equal


# --------------------------------------------------------------------------------------------------
# Derived boundaries and degenerate cases
# --------------------------------------------------------------------------------------------------
def test_boundary_target_derived_from_a_two_region_mask():
    """Hand-worked: without bd_gt the boundary target is boundary_from_mask(target): on a left/right two-region
    mask, the columns next to the edge; the term equals the one given that map explicitly."""
    target = torch.zeros(1, 6, 6, dtype=torch.long)
    target[:, :, 3:] = 1
    derived = torch.zeros(1, 6, 6)
    derived[:, :, 2:4] = 1
    assert torch.equal(boundary_from_mask(target, 255, 3), derived)
    generator = torch.Generator().manual_seed(0)
    boundary = torch.randn(1, 1, 6, 6, generator=generator)
    logits = torch.randn(1, 2, 6, 6, generator=generator)
    criterion = PIDNetCriterion(2, ohem=False)
    implicit = criterion(logits, logits, boundary, target)
    explicit = criterion(logits, logits, boundary, target, derived)
    torch.testing.assert_close(implicit["loss_boundary"], explicit["loss_boundary"])
    torch.testing.assert_close(implicit["loss_boundary"], 20 * ref_weighted_bce(boundary, derived))


@pytest.mark.parametrize("ohem", [True, False])
def test_all_ignored_is_finite_zero_with_graph(ohem):
    """Reference: the references give NaN (mean over no pixel); here every term is 0, differentiable, zero gradient."""
    aux, logits, boundary, target, _ = random_inputs(1)
    inputs = [t.requires_grad_(True) for t in (aux, logits, boundary)]
    got = PIDNetCriterion(3, ohem=ohem)(*inputs, torch.full_like(target, 255))
    for term, value in got.items():
        assert value == 0, term
        assert value.requires_grad, term
    sum(got.values()).backward()
    assert all(torch.isfinite(t.grad).all() and (t.grad == 0).all() for t in inputs)


@pytest.mark.parametrize("ohem", [True, False])
def test_no_boundary_pixel_is_finite_zero_bas_with_graph(ohem):
    """Reference: σ(D) <= .8 everywhere -> NetsPresso's boundary-aware CE is NaN; here loss_bas is 0 with a graph,
    and the other terms are unchanged."""
    aux, logits, _, target, bd_gt = random_inputs(2)
    boundary = torch.full((2, 1, 16, 16), math.log(0.79 / 0.21), requires_grad=True)  # σ = .79
    logits.requires_grad_(True)
    got = PIDNetCriterion(3, ohem=ohem)(aux, logits, boundary, target, bd_gt)
    assert got["loss_bas"] == 0
    assert got["loss_bas"].requires_grad
    assert all(torch.isfinite(v) for v in got.values())
    sum(got.values()).backward()
    assert torch.isfinite(logits.grad).all()
    assert torch.isfinite(boundary.grad).all()
    if not ohem:
        want = netspresso_pidnet(aux, logits.detach(), boundary.detach(), target, bd_gt, 255)
        assert math.isnan(float(want["loss_bas"]))
        torch.testing.assert_close(got["loss_sem"].detach(), want["loss_sem"])


def test_bas_mask_gets_no_gradient_into_the_boundary_logits():
    """Reference: PIDNet computes the σ(D) > .8 mask without gradient: only the boundary BCE reaches D."""
    aux, logits, boundary, target, bd_gt = random_inputs(3)
    boundary.requires_grad_(True)
    logits.requires_grad_(True)
    got = PIDNetCriterion(3, ohem=False)(aux, logits, boundary, target, bd_gt)
    grad, _ = torch.autograd.grad(got["loss_bas"], [boundary, logits], allow_unused=True)
    assert grad is None
    (grad,) = torch.autograd.grad(got["loss_boundary"], boundary)
    assert (grad != 0).any()


def test_input_checks():
    """Errors at the boundary: mask dtype / rank, channel counts, boundary target shape."""
    aux, logits, boundary, target, bd_gt = random_inputs(4)
    criterion = PIDNetCriterion(3)
    with pytest.raises(ValueError, match="target"):
        criterion(aux, logits, boundary, target.float())
    with pytest.raises(ValueError, match="channels"):
        criterion(aux[:, :2], logits, boundary, target)
    with pytest.raises(ValueError, match="boundary_logits"):
        criterion(aux, logits, boundary.expand(-1, 2, -1, -1), target)
    with pytest.raises(ValueError, match="boundary_target"):
        criterion(aux, logits, boundary, target, bd_gt[:, :5])
    with pytest.raises(ValueError, match="class_weight"):
        PIDNetCriterion(3, class_weight=[1.0, 2.0])
