"""Functional classification losses against MMDetection 3.x, torch / torchvision and hand-worked values.

The ``mm_*`` functions are literal references written from MMDetection 3.x's formulas, in that code's own
style (``tests/references/mmdet_classification.py``).
"""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch.autograd import gradcheck

from lightning_losses.functional import (
    binary_cross_entropy,
    cross_entropy,
    distribution_focal_loss,
    expand_onehot_labels,
    mask_cross_entropy,
    quality_focal_loss,
    sigmoid_focal_loss,
)
from tests.references.mmdet_classification import (
    mm_binary_cross_entropy,
    mm_cross_entropy,
    mm_distribution_focal_loss,
    mm_mask_cross_entropy,
    mm_py_sigmoid_focal_loss,
    mm_quality_focal_loss,
    mm_quality_focal_loss_tensor_target,
)
from tests.references.mmdet_losses import weight_reduce_loss as mm_weight_reduce_loss

EPS32 = torch.finfo(torch.float32).eps
N, C = 9, 5
LOG2 = math.log(2.0)

REDUCTIONS = ("none", "mean", "sum")
AVG_FACTORS = (None, 3.5, torch.tensor(2.5))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def assert_close(actual, expected, **kwargs):
    kwargs.setdefault("rtol", 1e-5)
    kwargs.setdefault("atol", 1e-6)
    torch.testing.assert_close(actual, expected, **kwargs)


def assert_matches(ours, ref):
    """``ours(reduction, avg_factor)`` equals ``ref(reduction, avg_factor)`` for every reduction and avg_factor kind
    (None, float, scalar tensor); with an avg_factor, ``"sum"`` must raise ``ValueError`` in both."""
    for reduction in REDUCTIONS:
        for avg_factor in AVG_FACTORS:
            case = f"reduction={reduction!r}, avg_factor={avg_factor!r}"
            if avg_factor is not None and reduction == "sum":
                with pytest.raises(ValueError, match="avg_factor"):
                    ref(reduction, avg_factor)
                with pytest.raises(ValueError, match="avg_factor"):
                    ours(reduction, avg_factor)
                continue
            expected = ref(reduction, avg_factor)
            actual = ours(reduction, avg_factor)
            assert actual.shape == expected.shape, case
            assert_close(actual, expected, msg=lambda m, case=case: f"{case}: {m}")


# ------------------------------------------------------------------------------------------------
# cross_entropy (softmax)
# ------------------------------------------------------------------------------------------------

CE_IGNORE = [
    pytest.param(None, False, id="ignore=-100"),
    pytest.param(None, True, id="ignore=-100,avg_non_ignore"),
    pytest.param(2, True, id="ignore=class2,avg_non_ignore"),
    pytest.param(255, False, id="ignore=255"),
]


@pytest.mark.parametrize(("ignore_index", "avg_non_ignore"), CE_IGNORE)
@pytest.mark.parametrize("use_class_weight", [False, True], ids=["no-class_weight", "class_weight"])
@pytest.mark.parametrize("use_weight", [False, True], ids=["no-weight", "weight"])
@pytest.mark.parametrize("spatial", [False, True], ids=["(N,C)", "(N,C,d)"])
def test_cross_entropy_matches_mmdet(spatial, use_weight, use_class_weight, ignore_index, avg_non_ignore):
    """MMDetection ``cross_entropy``: every weight / class_weight / ignore / avg_factor / reduction path."""
    label_shape = (N, 3) if spatial else (N,)
    pred = torch.randn(N, C, *label_shape[1:]) * 2
    label = torch.randint(0, C, label_shape)
    label.view(-1)[::3] = -100 if ignore_index is None else ignore_index
    weight = torch.rand(label_shape) if use_weight else None
    class_weight = torch.rand(C) + 0.5 if use_class_weight else None
    args = (class_weight, ignore_index, avg_non_ignore)
    assert_matches(
        lambda r, a: cross_entropy(pred, label, weight, r, a, *args),
        lambda r, a: mm_cross_entropy(pred, label, weight, r, a, *args),
    )


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("label_smoothing", [0.1, 0.4, 1.0])
@pytest.mark.parametrize("use_class_weight", [False, True], ids=["no-class_weight", "class_weight"])
@pytest.mark.parametrize("avg_non_ignore", [False, True])
def test_cross_entropy_label_smoothing_matches_formula(avg_non_ignore, use_class_weight, label_smoothing, reduction):
    """Smoothed target (1-ε)·onehot + ε/C (torch's definition, class weights inside the sum), MMDetection averaging."""
    pred = torch.randn(N, C) * 2
    label = torch.randint(0, C, (N,))
    label[::4] = -100
    class_weight = torch.rand(C) + 0.5 if use_class_weight else None
    weight = torch.rand(N)
    args = (weight, reduction, None, class_weight, None, avg_non_ignore, label_smoothing)
    assert_close(cross_entropy(pred, label, *args), mm_cross_entropy(pred, label, *args))


@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
@pytest.mark.parametrize("use_class_weight", [False, True], ids=["no-class_weight", "class_weight"])
@pytest.mark.parametrize("spatial", [False, True], ids=["(N,C)", "(N,C,d)"])
def test_cross_entropy_soft_targets_match_reference(spatial, use_class_weight, label_smoothing):
    """Probability targets: -Σ_c w_c q_c log p_c; avg_non_ignore is a no-op (nothing to ignore)."""
    extra = (4,) if spatial else ()
    pred = torch.randn(N, C, *extra)
    target = torch.rand(N, C, *extra).softmax(dim=1)
    weight = torch.rand(N, *extra)
    class_weight = torch.rand(C) + 0.5 if use_class_weight else None
    assert_matches(
        lambda r, a: cross_entropy(pred, target, weight, r, a, class_weight, None, True, label_smoothing),
        lambda r, a: mm_cross_entropy(pred, target, weight, r, a, class_weight, -100, False, label_smoothing),
    )


def test_cross_entropy_soft_targets_with_avg_non_ignore_divide_by_sample_count():
    """Deliberate difference: MMDetection counts label.numel() (N·C) for soft targets; the package divides by N."""
    pred, target = torch.randn(N, C), torch.rand(N, C).softmax(dim=1)
    per_sample = -(target * pred.log_softmax(dim=1)).sum(dim=1)
    assert_close(cross_entropy(pred, target, avg_non_ignore=True), per_sample.mean())


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1, 0.3])
@pytest.mark.parametrize("spatial", [False, True], ids=["(N,C)", "(N,C,d)"])
def test_cross_entropy_avg_non_ignore_equals_torch(spatial, label_smoothing, reduction):
    """torch.nn.CrossEntropyLoss(ignore_index=-100, label_smoothing=ε) = avg_non_ignore=True (NetsPresso's CE)."""
    label_shape = (N, 4) if spatial else (N,)
    pred = torch.randn(N, C, *label_shape[1:]) * 3
    label = torch.randint(0, C, label_shape)
    label.view(-1)[::3] = -100
    expected = torch.nn.CrossEntropyLoss(ignore_index=-100, reduction=reduction, label_smoothing=label_smoothing)(
        pred, label
    )
    ours = cross_entropy(pred, label, reduction=reduction, avg_non_ignore=True, label_smoothing=label_smoothing)
    assert_close(ours, expected)


def test_cross_entropy_class_weight_mean_divides_by_element_count_not_weight_sum():
    """Hand-worked: mean = Σ w_{y_i}·ℓ_i / N (MMDetection), unlike torch's Σ w_{y_i}·ℓ_i / Σ w_{y_i}."""
    pred = torch.tensor([[2.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    label = torch.tensor([0, 0, 1])
    class_weight = torch.tensor([3.0, 0.5])
    nll = torch.tensor([math.log1p(math.exp(-2.0)), math.log1p(math.exp(2.0)), LOG2])
    weighted = nll * torch.tensor([3.0, 3.0, 0.5])
    ours = cross_entropy(pred, label, class_weight=class_weight)
    assert_close(ours, weighted.sum() / 3)
    torch_mean = F.cross_entropy(pred, label, weight=class_weight)
    assert_close(torch_mean, weighted.sum() / 6.5)
    assert not torch.allclose(ours, torch_mean)


@pytest.mark.parametrize("avg_factor", [0, 0.0, torch.tensor(0.0)], ids=["int", "float", "tensor"])
def test_avg_factor_zero_divides_by_float32_eps(avg_factor):
    """MMDetection's weight_reduce_loss: mean = sum / (avg_factor + eps32), finite at avg_factor = 0."""
    pred = torch.zeros(2, 2)
    label = torch.tensor([0, 1])
    out = cross_entropy(pred, label, avg_factor=avg_factor)
    assert torch.isfinite(out)
    assert_close(out, torch.tensor(2 * LOG2 / EPS32))
    assert_close(out, mm_cross_entropy(pred, label, avg_factor=avg_factor))


def test_cross_entropy_ignored_elements_count_in_the_default_mean():
    """Hand-worked: without avg_non_ignore an ignored element contributes 0 but stays in the divisor."""
    pred = torch.zeros(4, 2)
    label = torch.tensor([0, 1, -100, -100])
    assert_close(cross_entropy(pred, label), torch.tensor(2 * LOG2 / 4))
    assert_close(cross_entropy(pred, label, avg_non_ignore=True), torch.tensor(LOG2))
    assert_close(cross_entropy(pred, label, reduction="none"), torch.tensor([LOG2, LOG2, 0.0, 0.0]))


# ------------------------------------------------------------------------------------------------
# binary_cross_entropy (sigmoid)
# ------------------------------------------------------------------------------------------------

BCE_IGNORE = [
    pytest.param(None, False, id="ignore=-100"),
    pytest.param(None, True, id="ignore=-100,avg_non_ignore"),
    pytest.param(1, True, id="ignore=class1,avg_non_ignore"),
    pytest.param(255, False, id="ignore=255"),
]
BCE_WEIGHTS = ["none", "sample", "element"]


@pytest.mark.parametrize(("ignore_index", "avg_non_ignore"), BCE_IGNORE)
@pytest.mark.parametrize("use_class_weight", [False, True], ids=["no-class_weight", "class_weight"])
@pytest.mark.parametrize("weight_kind", BCE_WEIGHTS)
def test_binary_cross_entropy_class_indices_match_mmdet(weight_kind, use_class_weight, ignore_index, avg_non_ignore):
    """MMDetection ``binary_cross_entropy`` with ``_expand_onehot_labels``: labels in [0, C] (C = background),
    negative and ignored labels masked, weight (N,) repeated per class, class_weight as pos_weight."""
    pred = torch.randn(N, C) * 2
    label = torch.randint(0, C + 1, (N,))
    label[0], label[1] = C, -1
    label[2::4] = -100 if ignore_index is None else ignore_index
    weight = {"none": None, "sample": torch.rand(N), "element": torch.rand(N, C)}[weight_kind]
    class_weight = torch.rand(C) + 0.5 if use_class_weight else None
    args = (class_weight, ignore_index, avg_non_ignore)
    assert_matches(
        lambda r, a: binary_cross_entropy(pred, label, weight, r, a, *args),
        lambda r, a: mm_binary_cross_entropy(pred, label, weight, r, a, *args),
    )


@pytest.mark.parametrize("avg_non_ignore", [False, True])
@pytest.mark.parametrize("use_class_weight", [False, True], ids=["no-class_weight", "class_weight"])
@pytest.mark.parametrize("use_weight", [False, True], ids=["no-weight", "weight"])
@pytest.mark.parametrize("target_kind", ["soft", "binary"])
def test_binary_cross_entropy_same_shape_targets_match_mmdet(target_kind, use_weight, use_class_weight, avg_non_ignore):
    """MMDetection ``binary_cross_entropy`` with pred-shaped targets: -100 and negative entries masked by
    ``valid_mask = (label >= 0) & (label != ignore_index)``."""
    pred = torch.randn(N, C) * 2
    target = torch.rand(N, C) if target_kind == "soft" else (torch.rand(N, C) > 0.5).float()
    target.view(-1)[::7] = -100
    target.view(-1)[3::11] = -1.0
    weight = torch.rand(N, C) if use_weight else None
    class_weight = torch.rand(C) + 0.5 if use_class_weight else None
    args = (class_weight, None, avg_non_ignore)
    assert_matches(
        lambda r, a: binary_cross_entropy(pred, target, weight, r, a, *args),
        lambda r, a: mm_binary_cross_entropy(pred, target, weight, r, a, *args),
    )


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_binary_cross_entropy_class_weight_is_torch_pos_weight(reduction):
    """class_weight in sigmoid mode = F.binary_cross_entropy_with_logits(pos_weight=class_weight)."""
    pred = torch.randn(N, C) * 2
    target = (torch.rand(N, C) > 0.5).float()
    class_weight = torch.rand(C) * 3
    expected = F.binary_cross_entropy_with_logits(pred, target, pos_weight=class_weight, reduction=reduction)
    assert_close(binary_cross_entropy(pred, target, reduction=reduction, class_weight=class_weight), expected)
    labels = torch.randint(0, C + 1, (N,))
    onehot = F.one_hot(labels, C + 1)[:, :C].float()
    expected = F.binary_cross_entropy_with_logits(pred, onehot, pos_weight=class_weight, reduction=reduction)
    assert_close(binary_cross_entropy(pred, labels, reduction=reduction, class_weight=class_weight), expected)


def test_binary_cross_entropy_zero_logits_closed_form():
    """Hand-worked: every element at logit 0 costs log 2; ignored rows drop out of the avg_non_ignore divisor."""
    pred = torch.zeros(4, 3)
    labels = torch.tensor([0, 3, -100, 2])
    assert_close(binary_cross_entropy(pred, labels, reduction="sum"), torch.tensor(9 * LOG2))
    assert_close(binary_cross_entropy(pred, labels), torch.tensor(9 * LOG2 / 12))
    assert_close(binary_cross_entropy(pred, labels, avg_non_ignore=True), torch.tensor(LOG2))


def test_expand_onehot_labels_hand_worked():
    """Labels in [0, C) set their column; C (background) gives a zero row; negatives / ignore_index are invalid."""
    onehot, valid = expand_onehot_labels(torch.tensor([1, 3, -1, 0, 7, 2]), 3, ignore_index=2)
    expected = torch.tensor([[0.0, 1, 0], [0, 0, 0], [0, 0, 0], [1, 0, 0], [0, 0, 0], [0, 0, 0]])
    assert_close(onehot, expected)
    assert valid.tolist() == [True, True, False, True, True, False]


# ------------------------------------------------------------------------------------------------
# mask_cross_entropy
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("use_class_weight", [False, True], ids=["no-class_weight", "class_weight"])
def test_mask_cross_entropy_matches_reference(use_class_weight):
    """MMDetection ``mask_cross_entropy`` (each RoI's own channel, BCE), with every reduction and avg_factor."""
    pred = torch.randn(6, C, 4, 3)
    target = (torch.rand(6, 4, 3) > 0.5).float()
    labels = torch.randint(0, C, (6,))
    class_weight = torch.rand(C) + 0.5 if use_class_weight else None
    assert_matches(
        lambda r, a: mask_cross_entropy(pred, target, labels, r, a, class_weight),
        lambda r, a: mm_mask_cross_entropy(pred, target, labels, r, a, class_weight),
    )


def test_mask_cross_entropy_default_equals_mmdet_literal():
    """MMDetection: F.binary_cross_entropy_with_logits(pred[arange(R), labels], target, reduction='mean')[None]."""
    pred = torch.randn(5, C, 7, 7)
    target = torch.rand(5, 7, 7)
    labels = torch.randint(0, C, (5,))
    inds = torch.arange(0, 5, dtype=torch.long)
    literal = F.binary_cross_entropy_with_logits(pred[inds, labels], target, reduction="mean")[None]
    assert_close(mask_cross_entropy(pred, target, labels).reshape(1), literal)


def test_mask_cross_entropy_class_weight_scales_each_roi():
    """Hand-worked: zero logits cost log 2 per pixel; RoI r is scaled by class_weight[labels[r]]."""
    pred = torch.zeros(2, 3, 2, 2)
    labels = torch.tensor([0, 2])
    class_weight = torch.tensor([2.0, 5.0, 0.5])
    out = mask_cross_entropy(pred, torch.ones(2, 2, 2), labels, reduction="sum", class_weight=class_weight)
    assert_close(out, torch.tensor(4 * LOG2 * 2.0 + 4 * LOG2 * 0.5))


# ------------------------------------------------------------------------------------------------
# sigmoid_focal_loss
# ------------------------------------------------------------------------------------------------

FOCAL_WEIGHTS = ["none", "sample", "element", "flat"]


def _focal_weight(kind):
    return {"none": None, "sample": torch.rand(N), "element": torch.rand(N, C), "flat": torch.rand(N * C)}[kind]


@pytest.mark.parametrize("weight_kind", FOCAL_WEIGHTS)
def test_sigmoid_focal_loss_weights_and_reductions_match_mmdet(weight_kind):
    """MMDetection ``FocalLoss`` CPU path: one_hot(C+1)[:, :C], pt / focal_weight, BCE; weight (N,) → view(-1, 1)."""
    pred = torch.randn(N, C) * 2
    label = torch.randint(0, C + 1, (N,))
    label[0] = C
    weight = _focal_weight(weight_kind)
    assert_matches(
        lambda r, a: sigmoid_focal_loss(pred, label, weight, 2.0, 0.25, r, a),
        lambda r, a: mm_py_sigmoid_focal_loss(pred, label, weight, 2.0, 0.25, r, a),
    )


@pytest.mark.parametrize("reduction", ["none", "mean"])
@pytest.mark.parametrize("activated", [False, True], ids=["logits", "activated"])
@pytest.mark.parametrize("alpha", [0.25, 0.6, None])
@pytest.mark.parametrize("gamma", [0.0, 1.5, 2.0])
@pytest.mark.parametrize("target_kind", ["index", "onehot", "soft"])
def test_sigmoid_focal_loss_targets_and_parameters_match_mmdet(target_kind, gamma, alpha, activated, reduction):
    """MMDetection ``py_sigmoid_focal_loss`` / ``py_focal_loss_with_prob`` for class-index, one-hot and soft targets."""
    pred = torch.rand(N, C) * 0.9 + 0.05 if activated else torch.randn(N, C) * 2
    label = torch.randint(0, C + 1, (N,))
    target = {
        "index": label,
        "onehot": F.one_hot(label, C + 1)[:, :C].float(),
        "soft": torch.rand(N, C),
    }[target_kind]
    weight = torch.rand(N)
    args = (weight, gamma, alpha, reduction, None, activated)
    assert_close(sigmoid_focal_loss(pred, target, *args), mm_py_sigmoid_focal_loss(pred, target, *args))


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("gamma", [0.0, 2.0, 3.0])
@pytest.mark.parametrize("alpha", [0.0, 0.25, 0.75, -1.0])
@pytest.mark.parametrize("target_kind", ["binary", "soft"])
def test_sigmoid_focal_loss_equals_torchvision(target_kind, alpha, gamma, reduction):
    """torchvision.ops.sigmoid_focal_loss (alpha < 0 disables the balance ↔ alpha=None here)."""
    pred = torch.randn(N, C) * 3
    target = (torch.rand(N, C) > 0.7).float() if target_kind == "binary" else torch.rand(N, C)
    expected = torchvision.ops.sigmoid_focal_loss(pred, target, alpha=alpha, gamma=gamma, reduction=reduction)
    ours = sigmoid_focal_loss(pred, target, gamma=gamma, alpha=None if alpha < 0 else alpha, reduction=reduction)
    assert_close(ours, expected)


@pytest.mark.parametrize("alpha", [0.25, 0.5, 0.9])
def test_sigmoid_focal_loss_at_logit_zero_closed_form(alpha):
    """Hand-worked at x = 0 (p = 1/2, γ = 2): a positive costs α·¼·log 2, a negative (1-α)·¼·log 2."""
    pred = torch.zeros(1, 2)
    out = sigmoid_focal_loss(pred, torch.tensor([0]), alpha=alpha, reduction="none")
    assert_close(out, torch.tensor([[alpha * 0.25 * LOG2, (1 - alpha) * 0.25 * LOG2]]))
    background = sigmoid_focal_loss(pred, torch.tensor([2]), alpha=alpha, reduction="none")
    assert_close(background, torch.full((1, 2), (1 - alpha) * 0.25 * LOG2))


@pytest.mark.parametrize("alpha", [0.25, None])
def test_sigmoid_focal_loss_gamma_zero_is_balanced_bce(alpha):
    """γ = 0: focal loss = α_t · BCE (plain BCE when alpha is None)."""
    pred = torch.randn(N, C) * 2
    target = (torch.rand(N, C) > 0.5).float()
    bce = F.binary_cross_entropy_with_logits(pred, target, reduction="none")
    balance = 1.0 if alpha is None else alpha * target + (1 - alpha) * (1 - target)
    ours = sigmoid_focal_loss(pred, target, gamma=0.0, alpha=alpha, reduction="none")
    assert_close(ours, balance * bce)


# ------------------------------------------------------------------------------------------------
# quality_focal_loss
# ------------------------------------------------------------------------------------------------


def _qfl_inputs(target_kind, activated):
    pred = torch.rand(N, C) * 0.9 + 0.05 if activated else torch.randn(N, C) * 2
    labels = torch.randint(0, C + 1, (N,))
    labels[0], labels[1] = C, -1
    scores = torch.rand(N)
    if target_kind == "tuple":
        return pred, (labels, scores), lambda p, beta: mm_quality_focal_loss(p, (labels, scores), beta, activated)
    soft = torch.zeros(N, C)
    soft[torch.rand(N, C) > 0.6] = 0.7
    soft[2] = torch.rand(C)
    return pred, soft, lambda p, beta: mm_quality_focal_loss_tensor_target(p, soft, beta, activated)


@pytest.mark.parametrize("use_weight", [False, True], ids=["no-weight", "weight"])
@pytest.mark.parametrize("beta", [2.0, 1.0])
@pytest.mark.parametrize("activated", [False, True], ids=["logits", "activated"])
@pytest.mark.parametrize("target_kind", ["tuple", "tensor"])
def test_quality_focal_loss_matches_mmdet(target_kind, activated, beta, use_weight):
    """MMDetection QFL (tuple / tensor target, logits / probabilities): negatives everywhere, positives overwritten
    by index, summed over classes, then weight_reduce_loss."""
    pred, target, ref_elementwise = _qfl_inputs(target_kind, activated)
    weight = torch.rand(N) if use_weight else None
    assert_matches(
        lambda r, a: quality_focal_loss(pred, target, weight, beta, r, a, activated),
        lambda r, a: mm_weight_reduce_loss(ref_elementwise(pred, beta), weight, r, a),
    )


def test_quality_focal_loss_zero_positive_term_when_score_equals_probability():
    """Closed form: with score = σ(x) at the positive, |s - σ|^β = 0, so only the negatives' σ^β·BCE(x, 0) remains."""
    pred = torch.randn(N, C)
    labels = torch.randint(0, C, (N,))
    scores = pred.sigmoid()[torch.arange(N), labels]
    negatives = F.binary_cross_entropy_with_logits(pred, torch.zeros_like(pred), reduction="none") * pred.sigmoid() ** 2
    negatives[torch.arange(N), labels] = 0
    assert_close(quality_focal_loss(pred, (labels, scores), reduction="none"), negatives.sum(dim=1))


def test_quality_focal_loss_tuple_and_tensor_targets_agree():
    """The (labels, scores) pair and its (N, C) soft-target form give the same loss (non-zero scores)."""
    pred = torch.randn(N, C)
    labels = torch.randint(0, C + 1, (N,))
    scores = torch.rand(N) * 0.9 + 0.05
    soft = torch.zeros(N, C)
    fg = labels < C
    soft[fg.nonzero().squeeze(1), labels[fg]] = scores[fg]
    assert_close(
        quality_focal_loss(pred, soft, reduction="none"),
        quality_focal_loss(pred, (labels, scores), None, reduction="none"),
    )


# ------------------------------------------------------------------------------------------------
# distribution_focal_loss
# ------------------------------------------------------------------------------------------------

REG_MAX = 7


@pytest.mark.parametrize("use_weight", [False, True], ids=["no-weight", "weight"])
def test_distribution_focal_loss_matches_mmdet(use_weight):
    """MMDetection DFL: CE(pred, ⌊y⌋)·(⌊y⌋+1-y) + CE(pred, ⌊y⌋+1)·(y-⌊y⌋) (two F.cross_entropy calls)."""
    pred = torch.randn(N, REG_MAX + 1) * 2
    target = torch.rand(N) * (REG_MAX - 0.01)
    target[0] = 3.0
    weight = torch.rand(N) if use_weight else None
    assert_matches(
        lambda r, a: distribution_focal_loss(pred, target, weight, r, a),
        lambda r, a: mm_weight_reduce_loss(mm_distribution_focal_loss(pred, target), weight, r, a),
    )


def test_distribution_focal_loss_at_integer_target_is_cross_entropy():
    """Closed form: at an integer y < n the right bin has weight 0, so DFL = CE(pred, y)."""
    pred = torch.randn(6, REG_MAX + 1)
    target = torch.tensor([0, 1, 2, 4, 5, REG_MAX - 1])
    expected = F.cross_entropy(pred, target, reduction="none")
    assert_close(distribution_focal_loss(pred, target.float(), reduction="none"), expected)


def test_distribution_focal_loss_at_last_bin_does_not_index_out_of_range():
    """Closed form: y = n (the last bin) gives CE(pred, n); MMDetection's literal form indexes bin n+1 and fails."""
    pred = torch.randn(3, REG_MAX + 1, requires_grad=True)
    target = torch.full((3,), float(REG_MAX))
    out = distribution_focal_loss(pred, target, reduction="none")
    assert_close(out, F.cross_entropy(pred, target.long(), reduction="none"))
    out.sum().backward()
    assert torch.isfinite(pred.grad).all()
    with pytest.raises((IndexError, RuntimeError)):
        mm_distribution_focal_loss(pred.detach(), target)


def test_distribution_focal_loss_uniform_logits_closed_form():
    """Hand-worked: uniform logits give log(n+1) for any target (both bins cost log(n+1), weights sum to 1)."""
    pred = torch.zeros(4, REG_MAX + 1)
    out = distribution_focal_loss(pred, torch.tensor([0.0, 2.5, 6.9, 7.0]), reduction="none")
    assert_close(out, torch.full((4,), math.log(REG_MAX + 1)))


# ------------------------------------------------------------------------------------------------
# Gradients (float64 gradcheck)
# ------------------------------------------------------------------------------------------------

D64 = {"dtype": torch.float64}


def _gc_cross_entropy(reduction):
    label = torch.tensor([0, 2, -100, 1, 2])
    weight, class_weight = torch.rand(5, **D64), torch.rand(3, **D64) + 0.5
    return torch.randn(5, 3, **D64), lambda p: cross_entropy(
        p, label, weight, reduction, None, class_weight, None, True, 0.1
    )


def _gc_cross_entropy_soft_spatial(reduction):
    target = torch.rand(3, 4, 2, **D64).softmax(dim=1)
    return torch.randn(3, 4, 2, **D64), lambda p: cross_entropy(
        p, target, reduction=reduction, avg_factor=2.0 if reduction == "mean" else None
    )


def _gc_binary_cross_entropy(reduction):
    labels = torch.tensor([0, 3, -100, 2, 1])
    weight, class_weight = torch.rand(5, **D64), torch.rand(3, **D64) + 0.5
    return torch.randn(5, 3, **D64), lambda p: binary_cross_entropy(
        p, labels, weight, reduction, None, class_weight, None, True
    )


def _gc_binary_cross_entropy_soft(reduction):
    target = torch.rand(4, 3, **D64)
    return torch.randn(4, 3, **D64), lambda p: binary_cross_entropy(p, target, reduction=reduction)


def _gc_mask_cross_entropy(reduction):
    target, labels = torch.rand(3, 2, 2, **D64), torch.tensor([1, 0, 1])
    class_weight = torch.tensor([0.5, 2.0], **D64)
    return torch.randn(3, 2, 2, 2, **D64), lambda p: mask_cross_entropy(
        p, target, labels, reduction, None, class_weight
    )


def _gc_focal(reduction):
    labels = torch.tensor([0, 3, 2, 1])
    weight = torch.rand(4, **D64)
    return torch.randn(4, 3, **D64), lambda p: sigmoid_focal_loss(p, labels, weight, 2.0, 0.25, reduction)


def _gc_focal_soft_no_alpha(reduction):
    target = torch.rand(4, 3, **D64)
    return torch.randn(4, 3, **D64), lambda p: sigmoid_focal_loss(p, target, None, 1.5, None, reduction)


def _gc_focal_activated(reduction):
    labels = torch.tensor([0, 3, 2, 1])
    return torch.rand(4, 3, **D64) * 0.8 + 0.1, lambda p: sigmoid_focal_loss(
        p, labels, reduction=reduction, activated=True
    )


def _gc_qfl(reduction):
    labels, scores = torch.tensor([0, 3, 2, 1]), torch.rand(4, **D64)
    weight = torch.rand(4, **D64)
    return torch.randn(4, 3, **D64), lambda p: quality_focal_loss(p, (labels, scores), weight, 2.0, reduction)


def _gc_qfl_tensor_activated(reduction):
    target = torch.zeros(4, 3, **D64)
    target[0, 1], target[2, 0] = 0.3, 0.8
    return torch.rand(4, 3, **D64) * 0.8 + 0.1, lambda p: quality_focal_loss(
        p, target, reduction=reduction, activated=True
    )


def _gc_dfl(reduction):
    target = torch.tensor([0.3, 2.5, 4.9, 1.7], **D64)
    weight = torch.rand(4, **D64)
    return torch.randn(4, 6, **D64), lambda p: distribution_focal_loss(p, target, weight, reduction)


GRADCHECK_CASES = [
    _gc_cross_entropy,
    _gc_cross_entropy_soft_spatial,
    _gc_binary_cross_entropy,
    _gc_binary_cross_entropy_soft,
    _gc_mask_cross_entropy,
    _gc_focal,
    _gc_focal_soft_no_alpha,
    _gc_focal_activated,
    _gc_qfl,
    _gc_qfl_tensor_activated,
    _gc_dfl,
]


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("case", GRADCHECK_CASES, ids=lambda f: f.__name__[4:])
def test_gradients_match_finite_differences(case, reduction):
    """torch.autograd.gradcheck in float64 (inputs away from non-differentiable points)."""
    pred, fn = case(reduction)
    assert gradcheck(fn, (pred.requires_grad_(),), eps=1e-6, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# Empty inputs
# ------------------------------------------------------------------------------------------------

EMPTY_CASES = {
    "cross_entropy": lambda: (
        torch.zeros(0, C),
        lambda p, r: cross_entropy(p, torch.zeros(0, dtype=torch.long), reduction=r, avg_non_ignore=True),
    ),
    "cross_entropy_soft": lambda: (torch.zeros(0, C), lambda p, r: cross_entropy(p, torch.zeros(0, C), reduction=r)),
    "binary_cross_entropy": lambda: (
        torch.zeros(0, C),
        lambda p, r: binary_cross_entropy(p, torch.zeros(0, dtype=torch.long), torch.zeros(0), reduction=r),
    ),
    "mask_cross_entropy": lambda: (
        torch.zeros(0, C, 4, 4),
        lambda p, r: mask_cross_entropy(p, torch.zeros(0, 4, 4), torch.zeros(0, dtype=torch.long), reduction=r),
    ),
    "sigmoid_focal_loss": lambda: (
        torch.zeros(0, C),
        lambda p, r: sigmoid_focal_loss(p, torch.zeros(0, dtype=torch.long), torch.zeros(0), reduction=r),
    ),
    "quality_focal_loss": lambda: (
        torch.zeros(0, C),
        lambda p, r: quality_focal_loss(p, (torch.zeros(0, dtype=torch.long), torch.zeros(0)), reduction=r),
    ),
    "distribution_focal_loss": lambda: (
        torch.zeros(0, REG_MAX + 1),
        lambda p, r: distribution_focal_loss(p, torch.zeros(0), reduction=r),
    ),
}


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("name", list(EMPTY_CASES))
def test_empty_input_gives_zero_with_a_graph(name, reduction):
    """N = 0: mean / sum are 0 (not NaN, unlike MMDetection's mean of nothing) and backward gives zero grads."""
    pred, fn = EMPTY_CASES[name]()
    pred.requires_grad_()
    loss = fn(pred, reduction)
    assert loss.shape == ()
    assert loss.item() == 0.0
    assert loss.requires_grad
    loss.backward()
    assert_close(pred.grad, torch.zeros_like(pred))


@pytest.mark.parametrize("name", list(EMPTY_CASES))
def test_empty_input_with_none_reduction_is_empty(name):
    """N = 0 with reduction='none' returns the empty element-wise loss."""
    pred, fn = EMPTY_CASES[name]()
    out = fn(pred, "none")
    assert out.numel() == 0


# ------------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------------

SHAPE_MISMATCHES = {
    "cross_entropy/index": (
        lambda: cross_entropy(torch.randn(4, 3), torch.zeros(5, dtype=torch.long)),
        "(4, 3)",
        "(5,)",
    ),
    "cross_entropy/soft": (lambda: cross_entropy(torch.randn(4, 3), torch.rand(4, 2)), "(4, 3)", "(4, 2)"),
    "binary_cross_entropy/index": (
        lambda: binary_cross_entropy(torch.randn(4, 3), torch.zeros(5, dtype=torch.long)),
        "(4, 3)",
        "(5,)",
    ),
    "binary_cross_entropy/soft": (
        lambda: binary_cross_entropy(torch.randn(4, 3), torch.rand(4, 2)),
        "(4, 3)",
        "(4, 2)",
    ),
    "mask_cross_entropy/target": (
        lambda: mask_cross_entropy(torch.randn(2, 3, 4, 4), torch.rand(2, 4, 5), torch.tensor([0, 1])),
        "(2, 3, 4, 4)",
        "(2, 4, 5)",
    ),
    "sigmoid_focal_loss/index": (
        lambda: sigmoid_focal_loss(torch.randn(4, 3), torch.zeros(5, dtype=torch.long)),
        "(4, 3)",
        "(5,)",
    ),
    "sigmoid_focal_loss/soft": (lambda: sigmoid_focal_loss(torch.randn(4, 3), torch.rand(4, 2)), "(4, 3)", "(4, 2)"),
    "quality_focal_loss/tuple": (
        lambda: quality_focal_loss(torch.randn(4, 3), (torch.zeros(5, dtype=torch.long), torch.rand(5))),
        "(4, 3)",
        "(5,)",
    ),
    "quality_focal_loss/tensor": (lambda: quality_focal_loss(torch.randn(4, 3), torch.rand(4, 2)), "(4, 3)", "(4, 2)"),
    "distribution_focal_loss": (lambda: distribution_focal_loss(torch.randn(4, 8), torch.rand(5)), "(4, 8)", "(5,)"),
}


@pytest.mark.parametrize("name", list(SHAPE_MISMATCHES))
def test_shape_mismatch_raises_value_error_naming_both_shapes(name):
    """STYLE.md, errors at the boundary: a pred / target mismatch is a ValueError naming both shapes."""
    call, pred_shape, target_shape = SHAPE_MISMATCHES[name]
    with pytest.raises(ValueError, match="shape") as info:
        call()
    assert pred_shape in str(info.value)
    assert target_shape in str(info.value)


WEIGHT_MISMATCHES = [
    pytest.param(
        lambda w: cross_entropy(torch.randn(4, 3), torch.zeros(4, dtype=torch.long), w),
        (4,),
        id="cross_entropy",
    ),
    pytest.param(
        lambda w: binary_cross_entropy(torch.randn(4, 3), torch.zeros(4, dtype=torch.long), w),
        (4, 3),
        id="binary_cross_entropy/index",
    ),
    pytest.param(
        lambda w: binary_cross_entropy(torch.randn(4, 3), torch.rand(4, 3), w),
        (4, 3),
        id="binary_cross_entropy/soft",
    ),
    pytest.param(
        lambda w: sigmoid_focal_loss(torch.randn(4, 3), torch.zeros(4, dtype=torch.long), w),
        (4, 3),
        id="sigmoid_focal_loss",
    ),
    pytest.param(
        lambda w: quality_focal_loss(torch.randn(4, 3), (torch.zeros(4, dtype=torch.long), torch.rand(4)), w),
        (4,),
        id="quality_focal_loss",
    ),
    pytest.param(
        lambda w: distribution_focal_loss(torch.randn(4, 8), torch.rand(4), w),
        (4,),
        id="distribution_focal_loss",
    ),
]


@pytest.mark.parametrize(("call", "loss_shape"), WEIGHT_MISMATCHES)
def test_weight_shape_mismatch_raises_value_error_naming_both_shapes(call, loss_shape):
    """A `weight` that fits neither the loss nor its first dimension is a ValueError naming both shapes."""
    with pytest.raises(ValueError, match="weight") as info:
        call(torch.rand(7))
    assert "(7,)" in str(info.value)
    assert str(loss_shape) in str(info.value)


INTEGER_PRED = [
    pytest.param(
        lambda: cross_entropy(torch.zeros(4, 3, dtype=torch.long), torch.zeros(4, dtype=torch.long)), id="cross_entropy"
    ),
    pytest.param(
        lambda: binary_cross_entropy(torch.zeros(4, 3, dtype=torch.long), torch.zeros(4, dtype=torch.long)),
        id="binary_cross_entropy",
    ),
    pytest.param(
        lambda: mask_cross_entropy(
            torch.zeros(2, 3, 4, 4, dtype=torch.long), torch.rand(2, 4, 4), torch.tensor([0, 1])
        ),
        id="mask_cross_entropy",
    ),
    pytest.param(
        lambda: sigmoid_focal_loss(torch.zeros(4, 3, dtype=torch.long), torch.zeros(4, dtype=torch.long)),
        id="sigmoid_focal_loss",
    ),
    pytest.param(
        lambda: quality_focal_loss(
            torch.zeros(4, 3, dtype=torch.long), (torch.zeros(4, dtype=torch.long), torch.rand(4))
        ),
        id="quality_focal_loss",
    ),
    pytest.param(
        lambda: distribution_focal_loss(torch.zeros(4, 3, dtype=torch.long), torch.rand(4)),
        id="distribution_focal_loss",
    ),
]


@pytest.mark.parametrize("call", INTEGER_PRED)
def test_integer_pred_raises_type_error(call):
    """STYLE.md, errors at the boundary: integer logits are a TypeError naming `pred`."""
    with pytest.raises(TypeError, match="pred"):
        call()


def test_other_wrong_types_raise_type_error():
    """Non-tensors, float class indices, a malformed QFL pair and a non-number avg_factor are TypeErrors."""
    with pytest.raises(TypeError, match="pred"):
        cross_entropy([[0.0, 1.0]], torch.tensor([0]))
    with pytest.raises(TypeError, match="target"):
        sigmoid_focal_loss(torch.randn(2, 3), [0, 1])
    with pytest.raises(TypeError, match="integer"):
        binary_cross_entropy(torch.randn(4, 3), torch.rand(4))
    with pytest.raises(TypeError, match="target"):
        quality_focal_loss(torch.randn(4, 3), (torch.zeros(4, dtype=torch.long),))
    with pytest.raises(TypeError, match="avg_factor"):
        cross_entropy(torch.randn(4, 3), torch.zeros(4, dtype=torch.long), avg_factor="4")
    with pytest.raises(TypeError, match="avg_factor"):
        cross_entropy(torch.randn(4, 3), torch.zeros(4, dtype=torch.long), avg_factor=True)


def test_cross_entropy_int32_labels_work_or_raise_type_error():
    """Other losses accept int32 labels; cross_entropy must too (or refuse with a TypeError), not a RuntimeError."""
    pred, label = torch.randn(4, 3), torch.tensor([0, 2, 1, 1])
    with contextlib.suppress(TypeError):
        assert_close(cross_entropy(pred, label.int()), cross_entropy(pred, label))


ALL_CALLS = {
    "cross_entropy": lambda **kw: cross_entropy(torch.randn(4, 3), torch.zeros(4, dtype=torch.long), **kw),
    "binary_cross_entropy": lambda **kw: binary_cross_entropy(
        torch.randn(4, 3), torch.zeros(4, dtype=torch.long), **kw
    ),
    "mask_cross_entropy": lambda **kw: mask_cross_entropy(
        torch.randn(2, 3, 4, 4), torch.rand(2, 4, 4), torch.tensor([0, 1]), **kw
    ),
    "sigmoid_focal_loss": lambda **kw: sigmoid_focal_loss(torch.randn(4, 3), torch.zeros(4, dtype=torch.long), **kw),
    "quality_focal_loss": lambda **kw: quality_focal_loss(
        torch.randn(4, 3), (torch.zeros(4, dtype=torch.long), torch.rand(4)), **kw
    ),
    "distribution_focal_loss": lambda **kw: distribution_focal_loss(torch.randn(4, 8), torch.rand(4), **kw),
}


@pytest.mark.parametrize("name", list(ALL_CALLS))
def test_invalid_reduction_and_avg_factor_raise_value_error(name):
    """An unknown reduction, avg_factor with 'sum' (MMDetection's rule), and a negative / NaN / non-scalar
    avg_factor are ValueErrors."""
    call = ALL_CALLS[name]
    with pytest.raises(ValueError, match="reduction"):
        call(reduction="avg")
    with pytest.raises(ValueError, match="avg_factor"):
        call(reduction="sum", avg_factor=2.0)
    with pytest.raises(ValueError, match="avg_factor"):
        call(avg_factor=-1.0)
    with pytest.raises(ValueError, match="avg_factor"):
        call(avg_factor=float("nan"))
    with pytest.raises(ValueError, match="avg_factor"):
        call(avg_factor=torch.ones(2))


@pytest.mark.parametrize("label_smoothing", [-0.1, 1.5])
def test_cross_entropy_label_smoothing_out_of_range(label_smoothing):
    """torch's range for label_smoothing is [0, 1]."""
    with pytest.raises(ValueError, match="label_smoothing"):
        cross_entropy(torch.randn(4, 3), torch.zeros(4, dtype=torch.long), label_smoothing=label_smoothing)


# ------------------------------------------------------------------------------------------------
# fp16 / bf16
# ------------------------------------------------------------------------------------------------


def _dtype_cases():
    labels = torch.randint(0, C + 1, (64,))
    ce_labels = labels.clamp(max=C - 1)
    ce_labels[::5] = -100
    soft = torch.rand(64, C)
    scores = torch.rand(64)
    dfl_target = torch.rand(64) * (REG_MAX - 0.01)
    mask_target, roi_labels = torch.rand(8, 6, 6), torch.randint(0, C, (8,))
    class_weight = torch.rand(C) + 0.5
    sample_weight = torch.rand(64)
    return {
        "cross_entropy": (
            (64, C),
            lambda p: cross_entropy(p, ce_labels, class_weight=class_weight, avg_non_ignore=True, label_smoothing=0.1),
        ),
        "cross_entropy_soft": ((64, C), lambda p: cross_entropy(p, soft)),
        "binary_cross_entropy": (
            (64, C),
            lambda p: binary_cross_entropy(p, labels, sample_weight, class_weight=class_weight, avg_non_ignore=True),
        ),
        "mask_cross_entropy": ((8, C, 6, 6), lambda p: mask_cross_entropy(p, mask_target, roi_labels)),
        "sigmoid_focal_loss": ((64, C), lambda p: sigmoid_focal_loss(p, labels, avg_factor=10.0)),
        "sigmoid_focal_loss_soft": ((64, C), lambda p: sigmoid_focal_loss(p, soft, reduction="sum")),
        "quality_focal_loss": ((64, C), lambda p: quality_focal_loss(p, (labels, scores), avg_factor=10.0)),
        "distribution_focal_loss": ((64, REG_MAX + 1), lambda p: distribution_focal_loss(p, dfl_target)),
    }


@pytest.mark.parametrize("name", list(_dtype_cases()))
def test_bf16_autocast_is_finite_and_close_to_float32(name):
    """Under torch.autocast('cpu', bfloat16), on bf16 logits from a matmul: finite and near the float32 value."""
    shape, fn = _dtype_cases()[name]
    x = torch.randn(shape) * 2
    eye = torch.eye(shape[-1])
    expected = fn(x @ eye)
    x.requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pred = x @ eye
        assert pred.dtype == torch.bfloat16
        out = fn(pred)
    assert torch.isfinite(out).all()
    assert_close(out.float(), expected, rtol=3e-2, atol=3e-2)
    out.float().backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", list(_dtype_cases()))
def test_half_precision_inputs_are_finite_and_close_to_float32(name, dtype):
    """bf16 / fp16 logits (no autocast): finite and near the float32 value of the same logits."""
    shape, fn = _dtype_cases()[name]
    pred = torch.randn(shape) * 2
    expected = fn(pred)
    out = fn(pred.to(dtype).requires_grad_())
    assert torch.isfinite(out).all()
    assert_close(out.float(), expected, rtol=3e-2, atol=3e-2)


def test_binary_cross_entropy_avg_non_ignore_count_is_exact_in_float16():
    """MMDetection counts valid elements in float32 (``valid_mask.float().sum()``); 1000×80 logits at 0 → log 2."""
    pred = torch.zeros(1000, 80, dtype=torch.float16)
    labels = torch.randint(0, 81, (1000,))
    out = binary_cross_entropy(pred, labels, avg_non_ignore=True)
    assert_close(out.float(), torch.tensor(LOG2), rtol=1e-2, atol=1e-3)


def test_activated_focal_and_qfl_avoid_the_autocast_banned_op(monkeypatch):
    """CUDA autocast refuses F.binary_cross_entropy in half precision: the activated paths must not call it.
    Reference: the values F.binary_cross_entropy gives, computed before the op is banned."""
    generator = torch.Generator().manual_seed(3)
    prob = torch.rand(6, 4, generator=generator).clamp(0.02, 0.98)
    labels = torch.tensor([0, 3, 4, 1, 4, 2])
    scores = torch.rand(6, generator=generator)
    onehot = F.one_hot(labels, 5)[:, :4].float()
    ce = F.binary_cross_entropy(prob, onehot, reduction="none")
    p_t = prob * onehot + (1 - prob) * (1 - onehot)
    expected_focal = (ce * (1 - p_t) ** 2 * (0.25 * onehot + 0.75 * (1 - onehot))).mean()
    score = scores.unsqueeze(1).expand_as(prob)
    expected_qfl = (
        torch.where(
            onehot.bool(),
            F.binary_cross_entropy(prob, score, reduction="none") * (score - prob).abs() ** 2,
            F.binary_cross_entropy(prob, torch.zeros_like(prob), reduction="none") * prob**2,
        )
        .sum(1)
        .mean()
    )

    def banned(*args, **kwargs):
        raise RuntimeError("binary_cross_entropy is unsafe to autocast")

    monkeypatch.setattr(F, "binary_cross_entropy", banned)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        focal = sigmoid_focal_loss(prob, labels, activated=True)
        qfl = quality_focal_loss(prob, (labels, scores), activated=True)
    torch.testing.assert_close(focal, expected_focal)
    torch.testing.assert_close(qfl, expected_qfl)
