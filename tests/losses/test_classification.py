"""Classification loss modules against MMDetection 3.x's module logic, torch / torchvision, and their functionals.

``MMCrossEntropyLoss`` is a literal reference of MMDetection 3.x's ``CrossEntropyLoss.forward`` (reduction
override, per-call ``ignore_index``, ``class_weight`` as a new tensor, ``loss_weight`` after the reduction)
over ``cross_entropy`` / ``binary_cross_entropy`` written in that code's style
(``tests/references/mmdet_classification.py``).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision

from lightning_losses import (
    CrossEntropyLoss,
    DistributionFocalLoss,
    FocalLoss,
    QualityFocalLoss,
    SigmoidFocalLoss,
)
from lightning_losses.functional import (
    binary_cross_entropy,
    cross_entropy,
    distribution_focal_loss,
    mask_cross_entropy,
    quality_focal_loss,
    sigmoid_focal_loss,
)
from tests.references.mmdet_classification import MMCrossEntropyLoss

EPS32 = torch.finfo(torch.float32).eps
N, C = 8, 4
REG_MAX = 6
REDUCTIONS = ("none", "mean", "sum")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def assert_close(actual, expected, **kwargs):
    kwargs.setdefault("rtol", 1e-5)
    kwargs.setdefault("atol", 1e-6)
    torch.testing.assert_close(actual, expected, **kwargs)


# ------------------------------------------------------------------------------------------------
# CrossEntropyLoss
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction_override", [None, "none", "sum"])
@pytest.mark.parametrize("avg_non_ignore", [False, True])
@pytest.mark.parametrize("call_ignore_index", [None, 2], ids=["no-override", "forward-ignore=2"])
@pytest.mark.parametrize("ignore_index", [None, 255], ids=["ignore=None", "ignore=255"])
@pytest.mark.parametrize("class_weight", [None, [0.5, 2.0, 1.0, 3.0]], ids=["no-class_weight", "class_weight"])
@pytest.mark.parametrize("use_sigmoid", [False, True], ids=["softmax", "sigmoid"])
def test_cross_entropy_module_matches_mmdet(
    use_sigmoid, class_weight, ignore_index, call_ignore_index, avg_non_ignore, reduction_override
):
    """MMDetection ``CrossEntropyLoss.forward`` (softmax / sigmoid): class_weight, module and per-call ignore_index,
    avg_non_ignore, reduction_override, loss_weight, weight."""
    pred = torch.randn(N, C) * 2
    label = torch.randint(0, C + 1 if use_sigmoid else C, (N,))
    effective_ignore = call_ignore_index if call_ignore_index is not None else ignore_index
    label[0] = -100 if effective_ignore is None else effective_ignore
    label[1] = -100 if use_sigmoid else label[0]
    weight = torch.rand(N)
    kwargs = {"class_weight": class_weight, "ignore_index": ignore_index, "avg_non_ignore": avg_non_ignore}
    ours = CrossEntropyLoss(use_sigmoid=use_sigmoid, loss_weight=2.5, **kwargs)
    ref = MMCrossEntropyLoss(use_sigmoid=use_sigmoid, loss_weight=2.5, **kwargs)
    call = {"reduction_override": reduction_override, "ignore_index": call_ignore_index}
    assert_close(ours(pred, label, weight, **call), ref(pred, label, weight, **call))
    assert_close(ours(pred, label, **call), ref(pred, label, **call))
    if reduction_override == "sum":
        with pytest.raises(ValueError, match="avg_factor"):
            ours(pred, label, weight, avg_factor=3.0, **call)
    else:
        assert_close(ours(pred, label, weight, 3.0, **call), ref(pred, label, weight, 3.0, **call))


def test_cross_entropy_forward_ignore_index_applies_to_that_call_only():
    """MMDetection: forward(..., ignore_index=k) overrides the module's ignore_index for one call."""
    pred = torch.zeros(4, 3)
    label = torch.tensor([0, 1, 2, 2])
    loss = CrossEntropyLoss(ignore_index=1, avg_non_ignore=True)
    log3 = math.log(3.0)
    assert_close(loss(pred, label, ignore_index=2), torch.tensor(log3))
    assert_close(loss(pred, label, reduction_override="sum"), torch.tensor(3 * log3))
    assert_close(loss(pred, label, ignore_index=2, reduction_override="none"), torch.tensor([log3, log3, 0.0, 0.0]))


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1, 0.25])
def test_cross_entropy_avg_non_ignore_label_smoothing_equals_torch(label_smoothing):
    """NetsPresso's cross_entropy = torch.nn.CrossEntropyLoss(label_smoothing=ε, ignore_index=-100), mean over
    non-ignored targets: CrossEntropyLoss(avg_non_ignore=True, label_smoothing=ε), also on (N, C, H, W)."""
    loss = CrossEntropyLoss(avg_non_ignore=True, label_smoothing=label_smoothing)
    torch_loss = torch.nn.CrossEntropyLoss(ignore_index=-100, label_smoothing=label_smoothing)
    pred = torch.randn(N, C) * 3
    label = torch.randint(0, C, (N,))
    label[::3] = -100
    assert_close(loss(pred, label), torch_loss(pred, label))
    dense = torch.randn(2, C, 5, 6)
    dense_label = torch.randint(0, C, (2, 5, 6))
    dense_label[:, ::2] = -100
    assert_close(loss(dense, dense_label), torch_loss(dense, dense_label))


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_cross_entropy_one_hot_float_targets_equal_torch(label_smoothing):
    """NetsPresso's classification pipeline feeds one-hot / mixup float targets: torch's probability-target CE."""
    pred = torch.randn(N, C)
    onehot = F.one_hot(torch.randint(0, C, (N,)), C).float()
    mixed = 0.7 * onehot + 0.3 * onehot.roll(1, dims=0)
    loss = CrossEntropyLoss(avg_non_ignore=True, label_smoothing=label_smoothing)
    torch_loss = torch.nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    assert_close(loss(pred, onehot), torch_loss(pred, onehot))
    assert_close(loss(pred, mixed), torch_loss(pred, mixed))


def test_cross_entropy_class_weight_mean_is_not_torch_weighted_mean():
    """Hand-worked: MMDetection's mean divides Σ w_y ℓ by N; torch divides it by Σ w_y."""
    pred = torch.zeros(3, 2)
    label = torch.tensor([0, 0, 1])
    loss = CrossEntropyLoss(class_weight=[2.0, 1.0])
    assert_close(loss(pred, label), torch.tensor(5 * math.log(2.0) / 3))
    assert_close(F.cross_entropy(pred, label, weight=torch.tensor([2.0, 1.0])), torch.tensor(math.log(2.0)))


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_sigmoid_cross_entropy_class_weight_equals_torch_pos_weight(reduction):
    """CrossEntropyLoss(use_sigmoid=True, class_weight=w) = F.binary_cross_entropy_with_logits(pos_weight=w)."""
    class_weight = [0.5, 2.0, 1.5, 4.0]
    pred = torch.randn(N, C) * 2
    target = (torch.rand(N, C) > 0.5).float()
    loss = CrossEntropyLoss(use_sigmoid=True, class_weight=class_weight, reduction=reduction)
    expected = F.binary_cross_entropy_with_logits(
        pred, target, pos_weight=torch.tensor(class_weight), reduction=reduction
    )
    assert_close(loss(pred, target), expected)


def test_mask_cross_entropy_module_takes_labels_as_weight():
    """MMDetection's convention: CrossEntropyLoss(use_mask=True)(mask_pred, mask_target, labels)."""
    pred = torch.randn(5, C, 6, 6)
    target = (torch.rand(5, 6, 6) > 0.5).float()
    labels = torch.randint(0, C, (5,))
    loss = CrossEntropyLoss(use_mask=True, loss_weight=2.0, class_weight=[1.0, 2.0, 0.5, 3.0])
    expected = 2.0 * mask_cross_entropy(pred, target, labels, class_weight=torch.tensor([1.0, 2.0, 0.5, 3.0]))
    assert_close(loss(pred, target, labels), expected)
    literal = F.binary_cross_entropy_with_logits(pred[torch.arange(5), labels], target)
    assert_close(CrossEntropyLoss(use_mask=True)(pred, target, labels), literal)
    with pytest.raises(ValueError, match="labels"):
        loss(pred, target)


# ------------------------------------------------------------------------------------------------
# Focal losses
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("gamma", [0.0, 2.0])
@pytest.mark.parametrize("alpha", [0.25, 0.8, -1.0])
def test_sigmoid_focal_loss_module_equals_torchvision(alpha, gamma, reduction):
    """NetsPresso's focal_loss = torchvision.ops.sigmoid_focal_loss (alpha < 0: no balance), module reduction."""
    pred = torch.randn(N, C) * 3
    labels = torch.randint(0, C + 1, (N,))
    target = F.one_hot(labels, C + 1)[:, :C].float()
    expected = torchvision.ops.sigmoid_focal_loss(pred, target, alpha=alpha, gamma=gamma, reduction=reduction)
    loss = SigmoidFocalLoss(alpha=alpha, gamma=gamma, reduction=reduction)
    assert_close(loss(pred, target), expected)
    assert_close(loss(pred, labels), expected)
    soft = torch.rand(N, C)
    soft_expected = torchvision.ops.sigmoid_focal_loss(pred, soft, alpha=alpha, gamma=gamma, reduction=reduction)
    assert_close(loss(pred, soft), soft_expected)


def test_focal_loss_module_matches_mmdet_hand_worked():
    """MMDetection FocalLoss at logit 0: positive α·¼·log 2, negatives (1-α)·¼·log 2; weight (N,) per row;
    loss_weight after sum / (avg_factor + eps32)."""
    pred = torch.zeros(2, 3)
    labels = torch.tensor([1, 3])
    weight = torch.tensor([2.0, 1.0])
    unit = 0.25 * math.log(2.0)
    row0 = 2.0 * unit * (0.25 + 2 * 0.75)
    row1 = 1.0 * unit * 3 * 0.75
    out = FocalLoss(loss_weight=3.0)(pred, labels, weight, avg_factor=2.0)
    assert_close(out, torch.tensor(3.0 * (row0 + row1) / (2.0 + EPS32)))


# ------------------------------------------------------------------------------------------------
# Module value = loss_weight × functional, for every module and configuration
# ------------------------------------------------------------------------------------------------


def _inputs(kind):
    """(pred, target, weight) for a module kind; fresh random tensors each call."""
    if kind in {"softmax", "softmax_smooth"}:
        label = torch.randint(0, C, (N,))
        label[0] = -100
        return torch.randn(N, C), label, torch.rand(N)
    if kind == "sigmoid":
        return torch.randn(N, C), torch.randint(0, C + 1, (N,)), torch.rand(N)
    if kind == "mask":
        return torch.randn(3, C, 4, 4), torch.rand(3, 4, 4), torch.randint(0, C, (3,))
    if kind in {"focal", "sigmoid_focal", "focal_activated"}:
        pred = torch.rand(N, C) * 0.9 + 0.05 if kind == "focal_activated" else torch.randn(N, C)
        return pred, torch.randint(0, C + 1, (N,)), torch.rand(N, C)
    if kind in {"qfl", "qfl_activated"}:
        pred = torch.rand(N, C) * 0.9 + 0.05 if kind == "qfl_activated" else torch.randn(N, C)
        return pred, (torch.randint(0, C + 1, (N,)), torch.rand(N)), torch.rand(N)
    if kind == "qfl_tensor":
        return torch.randn(N, C), torch.rand(N, C) * (torch.rand(N, C) > 0.5), torch.rand(N)
    assert kind == "dfl"
    return torch.randn(N, REG_MAX + 1), torch.rand(N) * REG_MAX, torch.rand(N)


CW = [1.0, 2.0, 0.5, 3.0]
MODULES = {
    "softmax": (
        lambda **kw: CrossEntropyLoss(class_weight=CW, avg_non_ignore=True, **kw),
        lambda p, t, w, r, a: cross_entropy(p, t, w, r, a, torch.tensor(CW), None, True),
    ),
    "softmax_smooth": (
        lambda **kw: CrossEntropyLoss(label_smoothing=0.2, ignore_index=-100, **kw),
        lambda p, t, w, r, a: cross_entropy(p, t, w, r, a, label_smoothing=0.2),
    ),
    "sigmoid": (
        lambda **kw: CrossEntropyLoss(use_sigmoid=True, class_weight=CW, **kw),
        lambda p, t, w, r, a: binary_cross_entropy(p, t, w, r, a, torch.tensor(CW)),
    ),
    "mask": (
        lambda **kw: CrossEntropyLoss(use_mask=True, **kw),
        lambda p, t, w, r, a: mask_cross_entropy(p, t, w, r, a),
    ),
    "focal": (
        lambda **kw: FocalLoss(gamma=1.5, alpha=0.4, **kw),
        lambda p, t, w, r, a: sigmoid_focal_loss(p, t, w, 1.5, 0.4, r, a),
    ),
    "focal_activated": (
        lambda **kw: FocalLoss(activated=True, **kw),
        lambda p, t, w, r, a: sigmoid_focal_loss(p, t, w, 2.0, 0.25, r, a, activated=True),
    ),
    "sigmoid_focal": (
        lambda **kw: SigmoidFocalLoss(alpha=-1.0, gamma=3.0, **kw),
        lambda p, t, w, r, a: sigmoid_focal_loss(p, t, w, 3.0, None, r, a),
    ),
    "qfl": (
        lambda **kw: QualityFocalLoss(beta=1.5, **kw),
        lambda p, t, w, r, a: quality_focal_loss(p, t, w, 1.5, r, a),
    ),
    "qfl_activated": (
        lambda **kw: QualityFocalLoss(activated=True, **kw),
        lambda p, t, w, r, a: quality_focal_loss(p, t, w, 2.0, r, a, activated=True),
    ),
    "qfl_tensor": (
        lambda **kw: QualityFocalLoss(**kw),
        lambda p, t, w, r, a: quality_focal_loss(p, t, w, 2.0, r, a),
    ),
    "dfl": (
        lambda **kw: DistributionFocalLoss(**kw),
        lambda p, t, w, r, a: distribution_focal_loss(p, t, w, r, a),
    ),
}


@pytest.mark.parametrize("kind", list(MODULES))
def test_module_returns_loss_weight_times_functional(kind):
    """forward(pred, target, weight, avg_factor, reduction_override) = loss_weight × the functional loss."""
    make, functional = MODULES[kind]
    pred, target, weight = _inputs(kind)
    loss = make(loss_weight=2.5)
    mask = kind == "mask"
    for reduction in REDUCTIONS:
        for avg_factor in (None, 4.0, torch.tensor(3.0)):
            if avg_factor is not None and reduction == "sum":
                with pytest.raises(ValueError, match="avg_factor"):
                    loss(pred, target, weight, avg_factor, reduction)
                continue
            expected = 2.5 * functional(pred, target, weight, reduction, avg_factor)
            assert_close(loss(pred, target, weight, avg_factor, reduction), expected)
            if not mask:
                expected = 2.5 * functional(pred, target, None, reduction, avg_factor)
                assert_close(loss(pred, target, None, avg_factor, reduction), expected)
        assert_close(make(reduction=reduction)(pred, target, weight), functional(pred, target, weight, reduction, None))


@pytest.mark.parametrize("kind", list(MODULES))
def test_loss_weight_multiplies_and_gradients_flow(kind):
    make, _ = MODULES[kind]
    pred, target, weight = _inputs(kind)
    pred.requires_grad_()
    base = make()(pred, target, weight)
    scaled = make(loss_weight=3.0)(pred, target, weight)
    assert_close(scaled, 3.0 * base)
    (grad,) = torch.autograd.grad(scaled, pred)
    (base_grad,) = torch.autograd.grad(base, pred)
    assert_close(grad, 3.0 * base_grad)


@pytest.mark.parametrize("kind", list(MODULES))
def test_running_mean_over_calls(kind):
    """compute() = mean of the values forward returned; a reduction='none' return joins as its mean, as one call."""
    make, _ = MODULES[kind]
    loss = make(loss_weight=1.5)
    returned = []
    for _ in range(3):
        pred, target, weight = _inputs(kind)
        returned.append(loss(pred, target, weight).detach())
    pred, target, weight = _inputs(kind)
    elementwise = loss(pred, target, weight, reduction_override="none")
    assert elementwise.ndim >= 1
    returned.append(elementwise.detach().mean())
    assert_close(loss.compute(), torch.stack(returned).mean())
    assert loss.num_calls.item() == 4
    loss.reset()
    pred, target, weight = _inputs(kind)
    value = loss(pred, target, weight)
    assert_close(loss.compute(), value.detach())


# ------------------------------------------------------------------------------------------------
# Empty inputs, half precision
# ------------------------------------------------------------------------------------------------


def _empty(kind):
    pred, target, weight = _inputs(kind)
    target = (target[0][:0], target[1][:0]) if isinstance(target, tuple) else target[:0]
    return pred[:0], target, weight[:0]


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("kind", list(MODULES))
def test_empty_input_is_zero_with_a_graph(kind, reduction):
    """N = 0: the module returns 0 (not NaN) with a graph, grads are zeros, and the running mean takes a 0."""
    make, _ = MODULES[kind]
    pred, target, weight = _empty(kind)
    pred.requires_grad_()
    loss = make(reduction=reduction)
    out = loss(pred, target, weight)
    assert out.item() == 0.0
    out.backward()
    assert_close(pred.grad, torch.zeros_like(pred))
    assert loss.compute().item() == 0.0


@pytest.mark.parametrize("kind", list(MODULES))
def test_bf16_module_and_autocast_are_finite_and_close_to_float32(kind):
    """.to(bfloat16) with bf16 inputs, and float32 inputs under torch.autocast('cpu', bfloat16): near float32."""
    make, _ = MODULES[kind]
    pred, target, weight = _inputs(kind)
    expected = make()(pred, target, weight)
    module = make().to(torch.bfloat16)
    out = module(pred.bfloat16(), target, weight.bfloat16() if kind != "mask" else weight)
    assert torch.isfinite(out).all()
    assert_close(out.float(), expected, rtol=3e-2, atol=3e-2)
    assert module.loss_sum.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = make()(pred @ torch.eye(pred.shape[-1]), target, weight)
    assert torch.isfinite(out).all()
    assert_close(out.float(), expected, rtol=3e-2, atol=3e-2)


# ------------------------------------------------------------------------------------------------
# Construction and validation
# ------------------------------------------------------------------------------------------------

BAD_CONSTRUCTORS = [
    pytest.param(lambda: FocalLoss(use_sigmoid=False), "use_sigmoid", id="FocalLoss(use_sigmoid=False)"),
    pytest.param(lambda: QualityFocalLoss(use_sigmoid=False), "use_sigmoid", id="QFL(use_sigmoid=False)"),
    pytest.param(lambda: CrossEntropyLoss(use_sigmoid=True, use_mask=True), "use_mask", id="CE(sigmoid+mask)"),
    pytest.param(lambda: CrossEntropyLoss(label_smoothing=1.5), "label_smoothing", id="CE(label_smoothing=1.5)"),
    pytest.param(
        lambda: CrossEntropyLoss(use_sigmoid=True, label_smoothing=0.1),
        "label_smoothing",
        id="CE(sigmoid, label_smoothing)",
    ),
    pytest.param(lambda: FocalLoss(gamma=-1.0), "gamma", id="FocalLoss(gamma<0)"),
    pytest.param(lambda: SigmoidFocalLoss(gamma=-1.0), "gamma", id="SigmoidFocalLoss(gamma<0)"),
    pytest.param(lambda: QualityFocalLoss(beta=-1.0), "beta", id="QFL(beta<0)"),
    pytest.param(lambda: CrossEntropyLoss(reduction="avg"), "reduction", id="CE(reduction=avg)"),
    pytest.param(lambda: FocalLoss(reduction="max"), "reduction", id="FocalLoss(reduction=max)"),
    pytest.param(lambda: DistributionFocalLoss(reduction="elementwise"), "reduction", id="DFL(reduction)"),
    pytest.param(lambda: QualityFocalLoss(loss_weight=float("inf")), "loss_weight", id="QFL(loss_weight=inf)"),
]


@pytest.mark.parametrize(("build", "name"), BAD_CONSTRUCTORS)
def test_bad_constructor_arguments_raise_value_error(build, name):
    with pytest.raises(ValueError, match=name):
        build()


@pytest.mark.parametrize("kind", list(MODULES))
def test_invalid_reduction_override_raises_value_error(kind):
    make, _ = MODULES[kind]
    pred, target, weight = _inputs(kind)
    with pytest.raises(ValueError, match="reduction_override"):
        make()(pred, target, weight, reduction_override="avg")


@pytest.mark.parametrize("kind", list(MODULES))
def test_empty_reduction_override_falls_back_to_module_reduction(kind):
    """MMDetection: ``reduction_override if reduction_override else self.reduction`` ("" and None fall back)."""
    make, _ = MODULES[kind]
    pred, target, weight = _inputs(kind)
    loss = make(reduction="sum")
    expected = loss(pred, target, weight)
    assert_close(loss(pred, target, weight, reduction_override=""), expected)
    assert_close(loss(pred, target, weight, reduction_override=None), expected)


def test_loss_weight_must_be_a_number():
    with pytest.raises(TypeError, match="loss_weight"):
        FocalLoss(loss_weight="1.0")


OUT_OF_RANGE = [
    pytest.param(
        lambda: CrossEntropyLoss(validate_args=True),
        torch.randn(4, 3),
        torch.tensor([0, 3, 1, 2]),
        id="softmax-label=C",
    ),
    pytest.param(
        lambda: CrossEntropyLoss(validate_args=True),
        torch.randn(4, 3),
        torch.tensor([0, -1, 1, 2]),
        id="softmax-label=-1",
    ),
    pytest.param(
        lambda: CrossEntropyLoss(validate_args=True, ignore_index=255),
        torch.randn(4, 3),
        torch.tensor([0, -100, 1, 2]),
        id="softmax-default-ignore-not-ignored",
    ),
    pytest.param(
        lambda: CrossEntropyLoss(use_sigmoid=True, validate_args=True),
        torch.randn(4, 3),
        torch.tensor([0, 4, 1, 3]),
        id="sigmoid-label=C+1",
    ),
    pytest.param(
        lambda: CrossEntropyLoss(use_mask=True, validate_args=True),
        torch.randn(2, 3, 4, 4),
        (torch.rand(2, 4, 4), torch.tensor([0, 3])),
        id="mask-roi-label=C",
    ),
    pytest.param(
        lambda: FocalLoss(validate_args=True), torch.randn(4, 3), torch.tensor([0, 4, 1, 3]), id="focal-label=C+1"
    ),
    pytest.param(
        lambda: SigmoidFocalLoss(validate_args=True),
        torch.randn(4, 3),
        torch.tensor([0, -1, 1, 3]),
        id="sigmoid_focal-label=-1",
    ),
    pytest.param(
        lambda: QualityFocalLoss(validate_args=True),
        torch.randn(4, 3),
        (torch.tensor([0, 5, 1, 3]), torch.rand(4)),
        id="qfl-label=C+2",
    ),
    pytest.param(
        lambda: DistributionFocalLoss(validate_args=True),
        torch.randn(4, REG_MAX + 1),
        torch.tensor([0.0, 2.5, REG_MAX + 0.5, 1.0]),
        id="dfl-target>n",
    ),
    pytest.param(
        lambda: DistributionFocalLoss(validate_args=True),
        torch.randn(4, REG_MAX + 1),
        torch.tensor([0.0, -0.5, 1.0, 1.0]),
        id="dfl-target<0",
    ),
    pytest.param(
        lambda: FocalLoss(validate_args=True),
        torch.tensor([[0.0, float("nan"), 1.0]]),
        torch.tensor([0]),
        id="focal-nan-pred",
    ),
]


@pytest.mark.parametrize(("build", "pred", "target"), OUT_OF_RANGE)
def test_validate_args_rejects_out_of_range_values(build, pred, target):
    """validate_args=True reads values back and raises ValueError on labels / targets out of range or NaN."""
    loss = build()
    args = target if isinstance(target, tuple) and not isinstance(loss, QualityFocalLoss) else (target,)
    with pytest.raises(ValueError, match=r"target|weight|pred"):
        loss(pred, *args)


IN_RANGE = [
    pytest.param(
        lambda: CrossEntropyLoss(validate_args=True),
        torch.randn(4, 3),
        torch.tensor([0, -100, 1, 2]),
        id="softmax-ignore",
    ),
    pytest.param(
        lambda: CrossEntropyLoss(validate_args=True, ignore_index=255),
        torch.randn(4, 3),
        torch.tensor([0, 255, 1, 2]),
        id="softmax-ignore=255",
    ),
    pytest.param(
        lambda: CrossEntropyLoss(use_sigmoid=True, validate_args=True),
        torch.randn(4, 3),
        torch.tensor([0, 3, -100, 2]),
        id="sigmoid-background-and-ignore",
    ),
    pytest.param(
        lambda: FocalLoss(validate_args=True), torch.randn(4, 3), torch.tensor([0, 3, 1, 2]), id="focal-background"
    ),
    pytest.param(
        lambda: QualityFocalLoss(validate_args=True),
        torch.randn(4, 3),
        (torch.tensor([0, 3, 1, 2]), torch.rand(4)),
        id="qfl-background",
    ),
    pytest.param(
        lambda: DistributionFocalLoss(validate_args=True),
        torch.randn(4, REG_MAX + 1),
        torch.tensor([0.0, 2.5, float(REG_MAX), 1.0]),
        id="dfl-last-bin",
    ),
]


@pytest.mark.parametrize(("build", "pred", "target"), IN_RANGE)
def test_validate_args_accepts_valid_values(build, pred, target):
    assert torch.isfinite(build()(pred, target))


def test_class_weight_is_not_saved_in_checkpoints():
    """Like MMDetection's list attribute, class_weight is configuration, not state: the state_dict is empty."""
    loss = CrossEntropyLoss(class_weight=[1.0, 2.0])
    assert list(loss.state_dict()) == []
    assert_close(loss.class_weight, torch.tensor([1.0, 2.0]))
