"""What each criterion style chooses, defined once: a criterion reads its style's choices, never its name.

``RetinaNetCriterion(style=...)`` looks its choices up in :data:`RETINANET_STYLES`. ``YOLOXCriterion``'s
styles differ only in their SimOTA assignment, so their choices are the assigner's
:class:`~lightning_losses.assigners.simota.SimOTAStyle` (:data:`~lightning_losses.assigners.simota.SIMOTA_STYLE_TABLE`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from types import MappingProxyType

from lightning_losses.losses.base import LossMetric
from lightning_losses.losses.regression import L1Loss, SmoothL1Loss

__all__ = ["RETINANET_STYLES", "RetinaNetStyle"]


@dataclass(frozen=True)
class RetinaNetStyle:
    r"""How a RetinaNet style differs from the others.

    Attributes:
        name: the style's name.
        low_quality_match: whom an anchor claimed in the low-quality step is matched to
            (:class:`~lightning_losses.assigners.MaxIoUAssigner`'s ``low_quality_match``): ``"box"``, the box
            that claims it (MMDetection 3.x), or ``"best"``, the anchor's own best box (torchvision's
            ``Matcher``, NetsPresso Trainer 1.4.1).
        per_image_normaliser: each image's sums are divided by that image's :math:`\max(1, n^{pos})` and
            averaged over the images (NetsPresso; per image, so not averaged over ranks); else both terms
            are divided by :math:`\mathrm{mean}_{ranks}\sum_{img}\max(n^{pos}_{img}, 1)` (MMDetection).
        default_loss_bbox: builds the box term used when none is configured.
    """

    name: str
    low_quality_match: str
    per_image_normaliser: bool
    default_loss_bbox: Callable[[], LossMetric]


RETINANET_STYLES: Mapping[str, RetinaNetStyle] = MappingProxyType(
    {
        "mmdet": RetinaNetStyle(
            "mmdet",
            low_quality_match="box",
            per_image_normaliser=False,
            default_loss_bbox=partial(SmoothL1Loss, beta=1.0),
        ),
        "netspresso": RetinaNetStyle(
            "netspresso", low_quality_match="best", per_image_normaliser=True, default_loss_bbox=L1Loss
        ),
    }
)
