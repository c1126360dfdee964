"""Registry: every dialect (visdet `type=`, NetsPresso `criterion:`, jsonargparse class_path) builds the same object."""

from __future__ import annotations

import pytest
import torch

import lightning_losses as ll
from lightning_losses.registry import LOSSES, build_loss, list_losses, register_loss

REFERENCE_LOSSES = [
    "CrossEntropyLoss",
    "FocalLoss",
    "QualityFocalLoss",
    "L1Loss",
    "SmoothL1Loss",
    "MSELoss",
    "BalancedL1Loss",
    "IoULoss",
    "GIoULoss",
    "DistributionFocalLoss",
    "SigmoidFocalLoss",
]


def _same(a: torch.nn.Module, b: torch.nn.Module) -> None:
    assert type(a) is type(b)
    keys = ("reduction", "loss_weight", "gamma", "alpha", "beta", "mode", "eps", "use_sigmoid", "ignore_index")
    for key in keys:
        assert getattr(a, key, None) == getattr(b, key, None), key
    assert getattr(a, "avg_non_ignore", None) == getattr(b, "avg_non_ignore", None)


@pytest.mark.parametrize("name", REFERENCE_LOSSES)
def test_every_seed_loss_is_registered_and_exported(name):
    assert name in LOSSES
    assert getattr(ll, name) is LOSSES[name]
    assert name in list_losses()


def test_list_losses_is_sorted_and_complete():
    names = list_losses()
    assert names == sorted(names)
    assert {"focal_loss", "cross_entropy", "DIoULoss", "CIoULoss"} <= set(names)


@pytest.mark.parametrize(
    ("cfg", "direct"),
    [
        ({"type": "FocalLoss", "gamma": 2.0, "alpha": 0.25, "loss_weight": 1.0}, ll.FocalLoss()),
        ({"type": "SmoothL1Loss", "beta": 1.0, "loss_weight": 1.0}, ll.SmoothL1Loss()),
        ({"type": "GIoULoss", "loss_weight": 2.0}, ll.GIoULoss(loss_weight=2.0)),
        ({"type": "IoULoss", "mode": "log", "loss_weight": 1.0}, ll.IoULoss(mode="log")),
        ({"type": "CrossEntropyLoss", "use_sigmoid": True}, ll.CrossEntropyLoss(use_sigmoid=True)),
        ({"type": "DistributionFocalLoss", "loss_weight": 0.25}, ll.DistributionFocalLoss(loss_weight=0.25)),
        (
            {"type": "BalancedL1Loss", "alpha": 0.5, "gamma": 1.5, "beta": 1.0},
            ll.BalancedL1Loss(alpha=0.5, gamma=1.5, beta=1.0),
        ),
        ({"type": "QualityFocalLoss", "beta": 2.0, "use_sigmoid": True}, ll.QualityFocalLoss()),
    ],
)
def test_visdet_dialect_equals_direct_construction(cfg, direct):
    _same(build_loss(cfg), direct)


def test_netspresso_focal_loss_maps_weight_to_loss_weight():
    built = build_loss({"criterion": "focal_loss", "alpha": 0.25, "gamma": 2.0, "weight": 0.5})
    _same(built, ll.SigmoidFocalLoss(alpha=0.25, gamma=2.0, loss_weight=0.5))
    assert build_loss({"criterion": "focal_loss", "alpha": 0.25, "gamma": 2.0, "weight": None}).loss_weight == 1.0


def test_netspresso_cross_entropy_has_torch_semantics():
    """NetsPresso's cross_entropy is torch.nn.CrossEntropyLoss: mean over non-ignored, ignore_index -100."""
    built = build_loss({"criterion": "cross_entropy", "label_smoothing": 0.1, "weight": None})
    assert isinstance(built, ll.CrossEntropyLoss)
    assert built.avg_non_ignore
    assert built.ignore_index == -100
    torch.manual_seed(0)
    pred, target = torch.randn(6, 4), torch.tensor([0, 1, -100, 3, -100, 2])
    expected = torch.nn.CrossEntropyLoss(label_smoothing=0.1)(pred, target)
    torch.testing.assert_close(built(pred, target), expected)


@pytest.mark.parametrize("class_path", ["lightning_losses.FocalLoss", "lightning_losses.losses.FocalLoss", "FocalLoss"])
def test_class_path_dialect_equals_direct_construction(class_path):
    built = build_loss({"class_path": class_path, "init_args": {"gamma": 1.5}})
    _same(built, ll.FocalLoss(gamma=1.5))


def test_three_dialects_agree_on_values():
    torch.manual_seed(1)
    pred, target = torch.randn(5, 3), torch.rand(5, 3).round()
    a = build_loss({"type": "SigmoidFocalLoss", "alpha": 0.3, "gamma": 1.0})
    b = build_loss({"criterion": "focal_loss", "alpha": 0.3, "gamma": 1.0, "weight": None})
    c = build_loss({"class_path": "lightning_losses.SigmoidFocalLoss", "init_args": {"alpha": 0.3, "gamma": 1.0}})
    torch.testing.assert_close(a(pred, target), b(pred, target))
    torch.testing.assert_close(a(pred, target), c(pred, target))


def test_unknown_name_lists_close_names():
    with pytest.raises(KeyError, match="FocalLoss"):
        build_loss({"type": "FocalLos"})
    with pytest.raises(KeyError, match="focal_loss"):
        build_loss({"criterion": "focal_los"})


def test_names_never_import_arbitrary_code():
    with pytest.raises(KeyError):
        build_loss({"type": "os.system"})
    with pytest.raises(KeyError):
        build_loss({"criterion": "builtins.eval"})


def test_class_path_must_name_a_loss_metric():
    with pytest.raises(TypeError, match="LossMetric"):
        build_loss({"class_path": "torch.nn.L1Loss"})


def test_malformed_configs_raise():
    with pytest.raises(ValueError, match="exactly one"):
        build_loss({"gamma": 2.0})
    with pytest.raises(ValueError, match="exactly one"):
        build_loss({"type": "FocalLoss", "criterion": "focal_loss"})
    with pytest.raises(TypeError, match="mapping"):
        build_loss("FocalLoss")
    with pytest.raises(ValueError, match="init_args"):
        build_loss({"class_path": "lightning_losses.FocalLoss", "gamma": 2.0})


def test_built_loss_passes_through():
    loss = ll.L1Loss()
    assert build_loss(loss) is loss


def test_register_loss():
    class MyLoss(ll.L1Loss):
        pass

    try:
        register_loss("MyLoss", MyLoss)
        assert isinstance(build_loss({"type": "MyLoss"}), MyLoss)
        with pytest.raises(KeyError, match="already registered"):
            register_loss("MyLoss", ll.L1Loss)
        with pytest.raises(TypeError):
            register_loss("NotALoss", torch.nn.L1Loss)
    finally:
        LOSSES.pop("MyLoss", None)


def test_register_loss_decorator_forms_derive_names_and_configs():
    """One declaration: `@register_loss` or `@register_loss("Name")` feeds `type` configs and list_losses."""
    try:

        @register_loss
        class Twice(ll.LossMetric):
            def _loss(self, pred, target, weight, avg_factor, reduction):
                return 2 * (pred - target).abs().sum()

        @register_loss("Thrice")
        class _Thrice(ll.LossMetric):
            def _loss(self, pred, target, weight, avg_factor, reduction):
                return 3 * (pred - target).abs().sum()

        assert {"Twice", "Thrice"} <= set(list_losses())
        # |1 - 0| summed over 2 elements, times 2 (the loss) times 0.5 (loss_weight, applied by the base)
        assert build_loss({"type": "Twice", "loss_weight": 0.5})(torch.ones(2), torch.zeros(2)).item() == 2.0
        assert build_loss({"type": "Thrice"})(torch.ones(2), torch.zeros(2)).item() == 6.0
    finally:
        LOSSES.pop("Twice", None)
        LOSSES.pop("Thrice", None)


def test_exports_are_derived_from_the_registry():
    """Every registered class of the package is exported at the top level and from `losses`, and nothing else is."""
    classes = {name for name, cls in LOSSES.items() if isinstance(cls, type) and cls.__name__ == name}
    assert classes <= set(ll.__all__)
    assert classes == set(ll.losses.__all__) - {"LossMetric"}
    for name in classes:
        assert getattr(ll, name) is LOSSES[name]


def test_dialect_names_live_in_compat():
    """NetsPresso's names come from compat.netspresso (registered as a dialect); the old registry name still works."""
    from lightning_losses.compat import netspresso

    assert set(netspresso.NETSPRESSO_LOSSES) <= set(list_losses())
    with pytest.warns(DeprecationWarning, match="compat.netspresso"):
        from lightning_losses.registry import NETSPRESSO_LOSSES
    assert NETSPRESSO_LOSSES is netspresso.NETSPRESSO_LOSSES


def test_criterion_dialect_builds_detector_criteria():
    """`build_loss({"criterion": "yolox_loss"})` builds NetsPresso's criterion as build_losses does."""
    from lightning_losses.compat.netspresso import NetsPressoLosses

    built = build_loss({"criterion": "yolox_loss", "weight": 2.0, "l1_activate_epoch": 3})
    assert isinstance(built, NetsPressoLosses)
    assert built.weights == [2.0]
    with pytest.raises(TypeError, match="unknown parameters"):
        build_loss({"criterion": "yolox_loss", "no_such": 1})


def test_class_path_loader_errors_name_the_path():
    from lightning_losses.serialization import import_class_path

    with pytest.raises(KeyError, match="no attribute 'Nope'"):
        build_loss({"class_path": "lightning_losses.Nope"})
    with pytest.raises(TypeError, match="LossMetric subclass"):
        build_loss({"class_path": "torch.nn.L1Loss"})
    with pytest.raises(KeyError, match="not a dotted path"):
        import_class_path("Nope")


def test_config_module_is_a_deprecated_alias():
    import importlib
    import sys

    sys.modules.pop("lightning_losses.config", None)
    with pytest.warns(DeprecationWarning, match="serialization"):
        config = importlib.import_module("lightning_losses.config")
    from lightning_losses import serialization

    assert config.to_config is serialization.to_config
    assert config.RecordsInit is serialization.RecordsInit
