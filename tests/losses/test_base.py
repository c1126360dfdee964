"""LossMetric base, hand-worked: element-wise returns, bf16 sums, overrides, Lightning logging, subclasses.

The checks every registered loss passes (running mean, reset, copies, bf16 states, state_dict, configs,
loss_weight, DDP) are in test_contract.py.
"""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from torch import nn

import lightning_losses as ll
from lightning_losses import L1Loss, LossMetric, SmoothL1Loss
from lightning_losses.losses.base import zero_weight_shortcut


def test_elementwise_return_joins_as_its_mean_as_one_call():
    """A reduction='none' return (shape (N,)) joins the running mean as its own mean, counted once."""
    loss = L1Loss(reduction="none")
    a = loss(torch.tensor([1.0, 3.0]), torch.zeros(2))  # mean 2
    b = loss(torch.tensor([4.0]), torch.zeros(1), reduction_override="sum")  # 4
    assert a.shape == (2,)
    torch.testing.assert_close(loss.compute(), torch.tensor(3.0))
    torch.testing.assert_close(loss._forward_cache, b.detach())


def test_compute_before_any_call_is_zero_not_nan():
    with pytest.warns(UserWarning, match="before the ``update``"):
        assert L1Loss().compute().item() == 0.0


def test_states_stay_float32_after_bf16_cast():
    """.to(bfloat16) (precision='bf16-true') must not cast the sums: 10,000 ones sum to 256 in bf16."""
    loss = L1Loss().to(torch.bfloat16)
    assert loss.loss_sum.dtype == torch.float32
    for _ in range(10_000):
        loss.update(torch.tensor(1.0))
    assert loss.loss_sum.item() == 10_000.0
    loss.reset()
    assert loss.loss_sum.dtype == torch.float32
    loss(torch.ones(2, dtype=torch.bfloat16), torch.zeros(2, dtype=torch.bfloat16))
    assert loss.compute().dtype == torch.float32


def test_reduction_override_and_validation():
    loss = L1Loss(reduction="mean")
    pred, target = torch.tensor([1.0, 3.0]), torch.zeros(2)
    assert loss(pred, target, reduction_override="sum").item() == 4.0
    assert loss(pred, target, reduction_override=None).item() == 2.0
    with pytest.raises(ValueError, match="reduction_override"):
        loss(pred, target, reduction_override="max")
    with pytest.raises(ValueError, match="reduction"):
        L1Loss(reduction="avg")
    with pytest.raises(TypeError, match="loss_weight"):
        L1Loss(loss_weight="2")
    with pytest.raises(ValueError, match="loss_weight"):
        L1Loss(loss_weight=float("nan"))


def test_zero_weight_shortcut_is_device_side_for_scalars():
    """For a scalar loss the all-zero-weight rule picks (pred*weight).sum() without a host read."""
    pred = torch.randn(3, 4, requires_grad=True)
    loss = torch.tensor(5.0)
    out = zero_weight_shortcut(loss, pred, torch.zeros(3))
    assert out.item() == 0.0
    out.backward()
    torch.testing.assert_close(pred.grad, torch.zeros(3, 4))
    assert zero_weight_shortcut(loss, pred, torch.tensor([0.0, 1.0, 0.0])).item() == 5.0


def test_module_signature_lists_only_loss_parameters():
    """Explicit signatures: jsonargparse / --print_config see the loss's own parameters only."""
    import inspect

    params = inspect.signature(SmoothL1Loss.__init__).parameters
    assert list(params) == ["self", "beta", "reduction", "loss_weight", "validate_args"]


class _TinyRegressor(L.LightningModule):
    """One linear layer; logs its L1Loss object on step and epoch."""

    def __init__(self, targets: torch.Tensor) -> None:
        super().__init__()
        self.layer = nn.Linear(1, 1)
        self.train_loss = L1Loss()
        self.targets = targets
        self.returned: list[float] = []

    def training_step(self, batch, batch_idx):
        (x,) = batch
        loss = self.train_loss(self.layer(x), self.targets[batch_idx].expand(x.shape[0], 1))
        self.returned.append(loss.item())
        self.log("train/loss_bbox", self.train_loss, on_step=True, on_epoch=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def test_lightning_logs_step_and_epoch_values(tmp_path):
    """Logging the metric object: *_step is the last call's value, *_epoch the mean of the epoch's calls."""
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    model = _TinyRegressor(torch.tensor([[1.0], [5.0], [-3.0], [8.0]]))
    data = DataLoader(TensorDataset(torch.randn(8, 1)), batch_size=2)
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, data)
    metrics = trainer.callback_metrics
    assert metrics["train/loss_bbox_step"].item() == pytest.approx(model.returned[-1], rel=1e-6)
    assert metrics["train/loss_bbox_epoch"].item() == pytest.approx(sum(model.returned) / 4, rel=1e-6)


def test_subclass_contract():
    """A user-defined LossMetric needs only _loss (without loss_weight); forward scales by loss_weight and tracks it."""

    class Double(LossMetric):
        def __init__(self, reduction: str = "mean", loss_weight: float = 1.0) -> None:
            super().__init__(reduction=reduction, loss_weight=loss_weight)

        def _loss(self, pred, target, weight, avg_factor, reduction):
            return 2 * (pred - target).abs().mean()

    loss = Double(loss_weight=3.0)
    assert loss(torch.ones(2), torch.zeros(2)).item() == 6.0
    assert loss.compute().item() == 6.0


def test_unpickled_states_are_private_not_shared_memory():
    """ddp_spawn pickles the model with torch.multiprocessing: states must not stay shared across ranks."""
    import io
    import pickle
    from multiprocessing.reduction import ForkingPickler

    import torch.multiprocessing  # registers the shared-memory tensor reductions

    loss = L1Loss()
    loss(torch.ones(2), torch.zeros(2))
    buffer = io.BytesIO()
    ForkingPickler(buffer).dump(loss)
    copy = pickle.loads(buffer.getvalue())
    assert not copy.loss_sum.is_shared()
    assert not copy._defaults["loss_sum"].is_shared()
    copy(torch.full((2,), 5.0), torch.zeros(2))
    assert loss.loss_sum.item() == 1.0
    assert copy.loss_sum.item() == 6.0
    assert copy.compute().item() == 3.0


@pytest.mark.parametrize("bad", [-5.0, float("nan"), float("inf")])
def test_validate_args_checks_a_tensor_avg_factor(bad):
    """A tensor avg_factor stays on its device by default; with validate_args=True a bad value raises."""
    pred, target = torch.ones(3), torch.zeros(3)
    with pytest.raises(ValueError, match=r"`avg_factor` must be finite and >= 0"):
        L1Loss(validate_args=True)(pred, target, avg_factor=torch.tensor(bad))
    good = L1Loss(validate_args=True)(pred, target, avg_factor=torch.tensor(2.0))
    torch.testing.assert_close(good, torch.tensor(1.5))


def test_loss_weight_is_applied_once_by_the_base():
    """Reference: the same loss at loss_weight 1, times 2.5; every registered loss goes through scaled_loss."""
    pred, target = torch.tensor([[0.2, -1.0], [1.5, 0.3]]), torch.tensor([1, 0])
    for cls in (ll.CrossEntropyLoss, ll.FocalLoss):
        one, scaled = cls(), cls(loss_weight=2.5)
        assert scaled(pred, target).item() == pytest.approx(2.5 * one(pred, target).item(), rel=1e-6)


def test_cross_entropy_gets_the_base_checks():
    """CrossEntropyLoss no longer overrides forward: avg_factor validation and unknown keywords reach it too."""
    loss = ll.CrossEntropyLoss(validate_args=True)
    pred, target = torch.zeros(2, 3), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="avg_factor"):
        loss(pred, target, avg_factor=torch.tensor(float("nan")))
    with pytest.raises(TypeError, match="ignore_idx"):
        loss(pred, target, ignore_idx=1)
    # the per-call ignore_index still works: label 1 ignored leaves -log(1/3) over the one kept element / 2
    value = ll.CrossEntropyLoss()(pred, target, ignore_index=1)
    assert value.item() == pytest.approx(math.log(3) / 2, rel=1e-6)
