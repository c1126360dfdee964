"""Every registered loss through the same LossMetric checks (DESIGN.md's loss-module contract).

Parametrised over :func:`~lightning_losses.registry.list_losses` (the package's names; NetsPresso's
``focal_loss`` / ``cross_entropy`` run as the loss they build), with inputs from the contract table
``tests/losses/loss_cases.py``. References are the loss's own returned values: the running mean is their
plain mean, copies and configs in every dialect give the same value, ``loss_weight`` scales it linearly,
and under 2 real DDP ranks ``compute()`` is the mean over every call of both ranks.
"""

from __future__ import annotations

import copy
import inspect
import pickle

import pytest
import torch

import lightning_losses
from lightning_losses.compat.netspresso import NETSPRESSO_LOSSES
from lightning_losses.registry import LOSSES, build_loss
from lightning_losses.serialization import init_config
from tests.losses.loss_cases import CASES, TorchDraw, loss_class, registered_names

NAMES = registered_names()
CLASS_NAMES = sorted({loss_class(name).__name__ for name in NAMES})


def _case(name: str):
    return CASES[loss_class(name).__name__]


def _build(name: str, **kwargs):
    case = _case(name)
    return LOSSES[name](**case.init, **kwargs)


def _inputs(name: str, seed: int = 0, requires_grad: bool = False):
    pred, target, weight = _case(name).inputs(TorchDraw(seed))
    if requires_grad:
        pred = tuple(p.requires_grad_() for p in pred) if isinstance(pred, tuple) else pred.requires_grad_()
    return pred, target, weight


def _leaves(pred) -> list[torch.Tensor]:
    return list(pred) if isinstance(pred, tuple) else [pred]


def _pickled(obj):
    return pickle.loads(pickle.dumps(obj))


def _states(loss) -> tuple[float, float]:
    return float(loss.loss_sum), float(loss.num_calls)


def test_the_table_covers_every_registered_loss():
    """A loss registered without an entry in the contract table fails here; so does a stale entry."""
    assert set(CLASS_NAMES) == set(CASES)
    assert {"focal_loss", "cross_entropy"} <= set(NAMES)  # NetsPresso's names run through the same checks


@pytest.mark.parametrize("cls_name", CLASS_NAMES)
def test_signature_is_explicit(cls_name):
    """No ``*args`` / ``**kwargs`` (jsonargparse and ``--print_config`` see the loss's own parameters only)."""
    params = inspect.signature(getattr(lightning_losses, cls_name).__init__).parameters.values()
    assert all(p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params)
    assert {"loss_weight", "validate_args"} <= {p.name for p in params}


@pytest.mark.parametrize("name", NAMES)
def test_compute_is_the_mean_of_the_returned_values(name):
    """Reference: the plain mean of what four calls on different inputs returned; states hold no graph."""
    loss = _build(name)
    returned = []
    for seed in range(4):
        pred, target, weight = _inputs(name, seed, requires_grad=True)
        value = loss(pred, target, weight)
        assert value.requires_grad
        returned.append(value.detach())
    torch.testing.assert_close(loss.compute(), torch.stack(returned).mean())
    assert int(loss.num_calls) == 4
    assert not loss.loss_sum.requires_grad
    assert not loss._forward_cache.requires_grad


@pytest.mark.parametrize("name", NAMES)
def test_reset_clears_the_running_mean(name):
    loss = _build(name)
    for seed in range(2):
        loss(*_inputs(name, seed))
    loss.reset()
    assert _states(loss) == (0.0, 0.0)
    value = loss(*_inputs(name, 7))
    torch.testing.assert_close(loss.compute(), value)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("make_copy", [_pickled, copy.deepcopy], ids=["pickle", "deepcopy"])
def test_pickle_and_deepcopy_keep_value_and_state(name, make_copy):
    """A copy made after two calls holds the same running state and gives the same value on the same inputs."""
    loss = _build(name)
    for seed in range(2):
        loss(*_inputs(name, seed))
    twin = make_copy(loss)
    assert type(twin) is type(loss)
    assert repr(twin) == repr(loss)
    assert _states(twin) == _states(loss)
    torch.testing.assert_close(twin.compute(), loss.compute())
    torch.testing.assert_close(twin(*_inputs(name, 5)), loss(*_inputs(name, 5)))
    assert _states(twin) == _states(loss)
    twin(*_inputs(name, 6))  # the copy's states are its own
    assert _states(twin) != _states(loss)


@pytest.mark.parametrize("name", NAMES)
def test_bfloat16_cast_keeps_float32_running_states(name):
    """``.to(torch.bfloat16)`` (precision='bf16-true') leaves ``loss_sum`` and ``num_calls`` float32."""
    loss = _build(name).to(torch.bfloat16)
    assert loss.loss_sum.dtype == loss.num_calls.dtype == torch.float32
    returned = [loss(*_inputs(name, seed)).detach() for seed in range(3)]
    assert loss.loss_sum.dtype == loss.num_calls.dtype == torch.float32
    assert loss.compute().dtype == torch.float32
    torch.testing.assert_close(loss.compute(), torch.stack(returned).float().mean())
    loss.reset()
    assert loss.loss_sum.dtype == loss.num_calls.dtype == torch.float32


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_holds_no_running_state(name):
    """Running sums are not checkpointed: a used loss's state_dict is empty and loads into a fresh one."""
    loss = _build(name)
    loss(*_inputs(name))
    assert dict(loss.state_dict()) == {}
    fresh = _build(name)
    fresh.load_state_dict(loss.state_dict())
    assert _states(fresh) == (0.0, 0.0)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("loss_weight", [0.0, 0.5, 3.0])
def test_loss_weight_scales_value_and_gradient_linearly(name, loss_weight):
    """Reference: ``loss_weight`` × the value at 1.0, and the same for the gradient (all weights here are > 0,
    so MMDetection's zero-weight rule does not apply)."""
    pred, target, weight = _inputs(name, 3, requires_grad=True)
    one = _build(name)(pred, target, weight)
    scaled = _build(name, loss_weight=loss_weight)(pred, target, weight)
    torch.testing.assert_close(scaled, loss_weight * one)
    grads_one = torch.autograd.grad(one, _leaves(pred))
    grads_scaled = torch.autograd.grad(scaled, _leaves(pred))
    for g_scaled, g_one in zip(grads_scaled, grads_one, strict=True):
        torch.testing.assert_close(g_scaled, loss_weight * g_one)


@pytest.mark.parametrize("name", NAMES)
def test_type_config_builds_the_same_loss(name):
    """MMDetection / visdet dialect: ``{"type": name, ...}``."""
    inputs = _inputs(name)
    built = build_loss({"type": name, **_case(name).init, "loss_weight": 2.0})
    torch.testing.assert_close(built(*inputs), _build(name, loss_weight=2.0)(*inputs))


@pytest.mark.parametrize("name", NAMES)
def test_class_path_config_builds_the_same_loss(name):
    """jsonargparse dialect: ``lightning_losses.<Class>`` with the init args, and the recorded init_config."""
    inputs = _inputs(name)
    direct = _build(name, loss_weight=2.0)
    want = direct(*inputs)
    if isinstance(LOSSES[name], type):
        init_args = {**_case(name).init, "loss_weight": 2.0}
        spelled = {"class_path": f"lightning_losses.{loss_class(name).__name__}", "init_args": init_args}
        torch.testing.assert_close(build_loss(spelled)(*inputs), want)
    class_path, init_args = init_config(direct)
    rebuilt = build_loss({"class_path": class_path, "init_args": init_args})
    assert repr(rebuilt) == repr(direct)
    torch.testing.assert_close(rebuilt(*inputs), want)


@pytest.mark.parametrize("name", sorted(NETSPRESSO_LOSSES))
@pytest.mark.parametrize("weight", [None, 2.0])
def test_netspresso_criterion_config_builds_the_same_loss(name, weight):
    """NetsPresso dialect: ``{"criterion": name, ..., "weight": w}``, ``w`` the multiplier (None meaning 1)."""
    inputs = _inputs(name)
    built = build_loss({"criterion": name, **_case(name).init, "weight": weight})
    want = _build(name, loss_weight=1.0 if weight is None else weight)(*inputs)
    torch.testing.assert_close(built(*inputs), want)


# --------------------------------------------------------------------------------------------------
# DDP: one 2-rank gloo run (tests/scripts/ddp_loss_metric.py) for every loss


@pytest.mark.parametrize("name", NAMES)
def test_ddp_compute_is_the_exact_mean_over_every_call_of_both_ranks(ddp_loss_ranks, name):
    """Reference: the plain mean of every value both ranks returned (2 calls on rank 0, 5 on rank 1, so the
    mean of the two rank means would differ); after compute() each rank keeps its own local sums."""
    ranks = [result["losses"][name] for result in ddp_loss_ranks]
    values = ranks[0]["values"] + ranks[1]["values"]
    assert len(ranks[0]["values"]) != len(ranks[1]["values"])
    expected = sum(values) / len(values)
    for rank in ranks:
        assert rank["compute"] == pytest.approx(expected, rel=1e-6, abs=1e-7)
        assert rank["local_after_compute"] == rank["local_before_compute"]
        assert rank["local_before_compute"][1] == len(rank["values"])
        assert rank["local_before_compute"][0] == pytest.approx(sum(rank["values"]), rel=1e-6, abs=1e-7)
