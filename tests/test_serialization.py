"""serialization.init_config / to_config: a user's criterion without RecordsInit is described only when a rebuilt
copy provably equals it (reference: the constructor arguments written by hand in each case)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_losses import FocalLoss, RetinaNetCriterion
from lightning_losses.serialization import from_config, init_config, to_config


class Wrapper(nn.Module):
    """A user's criterion: a preset plus a regulariser weight, arguments kept as attributes."""

    def __init__(self, inner: nn.Module, reg: float = 0.1, name: str = "wrap") -> None:
        super().__init__()
        self.inner = inner
        self.reg = reg
        self._name = name


class Renamed(nn.Module):
    """Stores its argument under another name: the default would be a wrong guess."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.factor = scale


class WithBuffer(nn.Module):
    def __init__(self, weights: list[float] | None = None) -> None:
        super().__init__()
        self.register_buffer("class_weight", torch.tensor(weights or [1.0, 1.0]))


class Kwargs(nn.Module):
    def __init__(self, **kwargs: float) -> None:
        super().__init__()
        self.kwargs = kwargs


def test_user_criterion_arguments_are_read_back():
    inner = RetinaNetCriterion(num_classes=3)
    path, args = init_config(Wrapper(inner, reg=0.5, name="x"))
    assert path.endswith("Wrapper")
    assert args == {"inner": inner, "reg": 0.5, "name": "x"}
    config = to_config({"criterion": Wrapper(inner, reg=0.5)})["criterion"]
    assert config["init_args"]["inner"]["class_path"] == "lightning_losses.presets.retinanet.RetinaNetCriterion"
    assert config["init_args"]["inner"]["init_args"]["num_classes"] == 3


def test_a_wrong_guess_is_refused():
    """`Renamed(2.0)` keeps 2.0 as `factor`: rebuilding with the default 1.0 would differ, so no config."""
    assert init_config(Renamed(2.0)) is None
    assert init_config(Renamed()) is not None  # the default is the truth here: the copy equals it


def test_buffers_must_match():
    assert init_config(WithBuffer([1.0, 2.0])) is None  # `weights` is not an attribute; the default differs
    assert init_config(WithBuffer()) == (f"{WithBuffer.__module__}.WithBuffer", {})


def test_var_keyword_and_local_classes_are_not_guessed():
    assert init_config(Kwargs(a=1.0)) is None

    class Local(nn.Module):
        pass

    assert init_config(Local()) is None


def test_recorded_objects_round_trip():
    loss = FocalLoss(gamma=1.5, loss_weight=2.0)
    rebuilt = from_config(to_config(loss))
    assert isinstance(rebuilt, FocalLoss)
    assert (rebuilt.gamma, rebuilt.loss_weight) == (1.5, 2.0)
    with pytest.raises(TypeError, match=r"nn\.Module subclass"):
        from_config({"class_path": "builtins.dict"})
