"""Style choices defined once (``presets.styles``), and the names that moved below the presets still import.

References: MMDetection 3.x ``RetinaHead`` (``MaxIoUAssigner`` claims for the box, ``SmoothL1Loss(beta=1)``,
batch ``avg_factor``) and NetsPresso Trainer 1.4.1 ``retinanet_loss`` (torchvision ``Matcher``, ``L1Loss``,
per-image normaliser), as the README's preset table states them.
"""

from __future__ import annotations

import dataclasses
import importlib

import pytest

from lightning_losses import L1Loss, RetinaNetCriterion, SmoothL1Loss
from lightning_losses.presets.retinanet import STYLES
from lightning_losses.presets.styles import RETINANET_STYLES

C = 3


def test_retinanet_styles_table():
    mmdet, netspresso = RETINANET_STYLES["mmdet"], RETINANET_STYLES["netspresso"]
    assert (mmdet.name, mmdet.low_quality_match, mmdet.per_image_normaliser) == ("mmdet", "box", False)
    assert (netspresso.name, netspresso.low_quality_match, netspresso.per_image_normaliser) == (
        "netspresso",
        "best",
        True,
    )
    assert STYLES == ("mmdet", "netspresso")
    with pytest.raises(dataclasses.FrozenInstanceError):
        mmdet.per_image_normaliser = True
    with pytest.raises(TypeError):
        RETINANET_STYLES["other"] = mmdet


@pytest.mark.parametrize("style", ["mmdet", "netspresso"])
def test_retinanet_criterion_reads_its_style(style):
    criterion = RetinaNetCriterion(C, style=style)
    conventions = RETINANET_STYLES[style]
    assert criterion.conventions is conventions
    assert criterion.assigner.low_quality_match == conventions.low_quality_match
    box = criterion.loss_bbox
    if style == "mmdet":
        assert type(box) is SmoothL1Loss
        assert box.beta == 1.0
    else:
        assert type(box) is L1Loss
    assert f"style={style!r}" in repr(criterion)


def test_unknown_style_names_the_argument_and_the_choices():
    with pytest.raises(ValueError, match=r"`style` must be one of \('mmdet', 'netspresso'\), got 'torchvision'"):
        RetinaNetCriterion(C, style="torchvision")


@pytest.mark.parametrize(
    ("old_module", "name", "new_module"),
    [
        ("lightning_losses.presets.fcos", "centerness_target", "lightning_losses.boxes.targets"),
        ("lightning_losses.presets.atss", "atss_targets", "lightning_losses.assigners.atss"),
        ("lightning_losses.presets.atss", "ATSSTargets", "lightning_losses.assigners.atss"),
        ("lightning_losses.presets.base", "gather_boxes", "lightning_losses.boxes.targets"),
        ("lightning_losses.presets.base", "flatten_levels", "lightning_losses.boxes.priors"),
        ("lightning_losses.presets.base", "onehot_targets", "lightning_losses.presets.class_targets"),
    ],
)
def test_moved_names_stay_importable_from_their_old_modules(old_module, name, new_module):
    old, new = importlib.import_module(old_module), importlib.import_module(new_module)
    assert getattr(old, name) is getattr(new, name)
    assert name in new.__all__
