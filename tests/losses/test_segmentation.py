"""OhemCrossEntropyLoss and BoundaryLoss modules: thin shells over the functionals (references: hand-worked
values, the unfused functional, PIDNet's constants), registry names, running mean, argument checks."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_losses import BoundaryLoss, OhemCrossEntropyLoss, build_loss
from lightning_losses.functional.segmentation import balanced_boundary_bce, ohem_cross_entropy


def _scene(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    pred = torch.randn(2, 3, 5, 5, generator=generator) * 2
    target = torch.randint(0, 3, (2, 5, 5), generator=generator)
    target[0, 0] = 255
    return pred, target


def test_ohem_module_hand_worked():
    """Hand-worked: p_y = .98 and .5 with min_kept 1 keeps the second pixel only: log 2 (× loss_weight 2)."""
    pred = torch.tensor([[[[4.0, 0.0]], [[0.0, 0.0]]]])
    target = torch.tensor([[[0, 0]]])
    assert math.isclose(float(OhemCrossEntropyLoss(min_kept=1)(pred, target)), math.log(2), rel_tol=1e-6)
    assert math.isclose(
        float(OhemCrossEntropyLoss(min_kept=1, loss_weight=2.0)(pred, target)), 2 * math.log(2), rel_tol=1e-6
    )


@pytest.mark.parametrize("class_weight", [None, [0.5, 1.0, 2.0]])
def test_ohem_module_equals_functional(class_weight):
    """Reference: the unfused ohem_cross_entropy with the same thres / min_kept / ignore_index / class weights."""
    pred, target = _scene()
    module = OhemCrossEntropyLoss(thres=0.7, min_kept=10, ignore_index=255, class_weight=class_weight, loss_weight=0.5)
    weight = None if class_weight is None else torch.tensor(class_weight)
    want = 0.5 * ohem_cross_entropy(pred, target, 0.7, 10, 255, weight)
    torch.testing.assert_close(module(pred, target), want)


def test_ohem_defaults_are_pidnets_configs():
    """Reference: PIDNet-S cityscapes / camvid configs (NetsPresso 1.4.1): thres 0.9, min_kept 131072, ignore 255."""
    module = OhemCrossEntropyLoss()
    assert (module.thres, module.min_kept, module.ignore_index) == (0.9, 131072, 255)


def test_boundary_module_equals_functional_times_weight():
    """Reference: balanced_boundary_bce × loss_weight (PIDNet's 20)."""
    generator = torch.Generator().manual_seed(1)
    pred = torch.randn(2, 1, 4, 4, generator=generator)
    target = (torch.rand(2, 4, 4, generator=generator) < 0.3).float()
    torch.testing.assert_close(BoundaryLoss(loss_weight=20.0)(pred, target), 20 * balanced_boundary_bce(pred, target))
    assert math.isclose(
        float(BoundaryLoss()(torch.zeros(1, 1, 1, 4), torch.tensor([[[1, 0, 0, 0]]]))),
        1.5 / 4 * math.log(2),
        rel_tol=1e-6,
    )


def test_running_mean_over_calls():
    """Reference: the LossMetric contract: compute() is the mean of the returned values; reset() clears it."""
    pred, target = _scene()
    module = OhemCrossEntropyLoss(min_kept=5)
    values = [module(pred * s, target) for s in (0.5, 1.0, 3.0)]
    torch.testing.assert_close(module.compute(), torch.stack(values).mean())
    module.reset()
    boundary = BoundaryLoss()
    b = [boundary(pred[:, :1] * s, (target == 1).float()) for s in (1.0, 2.0)]
    torch.testing.assert_close(boundary.compute(), torch.stack(b).mean())


@pytest.mark.parametrize("module", [OhemCrossEntropyLoss(), BoundaryLoss()])
def test_weight_avg_factor_and_reduction_override_are_rejected(module):
    """Both are means over selected pixels: weight, avg_factor and other reductions do not apply."""
    pred = torch.randn(1, 2, 3, 3) if isinstance(module, OhemCrossEntropyLoss) else torch.randn(1, 1, 3, 3)
    target = torch.zeros(1, 3, 3, dtype=torch.long)
    for kwargs in ({"weight": torch.ones(1, 3, 3)}, {"avg_factor": 2.0}, {"reduction_override": "sum"}):
        with pytest.raises(ValueError, match="mean over selected pixels"):
            module(pred, target, **kwargs)


def test_argument_checks():
    """Errors at the boundary: thres outside [0, 1]; labels out of range with validate_args."""
    with pytest.raises(ValueError, match="thres"):
        OhemCrossEntropyLoss(thres=1.5)
    pred = torch.randn(1, 2, 2, 2)
    with pytest.raises(ValueError, match="labels must lie in"):
        OhemCrossEntropyLoss(validate_args=True)(pred, torch.full((1, 2, 2), 3))
    OhemCrossEntropyLoss(validate_args=True)(pred, torch.tensor([[[0, 1], [255, 1]]]))  # 255 is ignored


def test_class_weight_follows_the_module_device_and_dtype():
    """The class weights are a non-persistent buffer: cast with the module, absent from the state dict."""
    module = OhemCrossEntropyLoss(class_weight=[1.0, 2.0]).to(torch.float64)
    assert module.class_weight.dtype == torch.float64
    assert "class_weight" not in module.state_dict()
    pred = torch.randn(1, 2, 2, 2, dtype=torch.float64)
    assert module(pred, torch.zeros(1, 2, 2, dtype=torch.long)).dtype == torch.float64


def test_registry_names():
    """Reference: the registry dialects: type= and class_path build the same modules."""
    ohem = build_loss({"type": "OhemCrossEntropyLoss", "min_kept": 7, "loss_weight": 0.5})
    assert isinstance(ohem, OhemCrossEntropyLoss)
    assert ohem.min_kept == 7
    assert ohem.loss_weight == 0.5
    boundary = build_loss({"class_path": "lightning_losses.BoundaryLoss", "init_args": {"loss_weight": 20.0}})
    assert isinstance(boundary, BoundaryLoss)
    assert boundary.loss_weight == 20.0
