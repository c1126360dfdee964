"""Pure-torch loss functions: no state, no dependency beyond torch.

Each function returns the element-wise loss weighted and reduced by :func:`weight_reduce_loss`, the
package's single reduction rule. The modules in :mod:`lightning_losses.losses` are thin stateful
shells over these functions.
"""

from lightning_losses.functional.classification import (
    binary_cross_entropy,
    cross_entropy,
    distribution_focal_loss,
    expand_onehot_labels,
    mask_cross_entropy,
    quality_focal_loss,
    sigmoid_focal_loss,
)
from lightning_losses.functional.iou import bbox_overlaps, ciou_loss, diou_loss, giou_loss, iou_loss
from lightning_losses.functional.pose import kl_discret_loss, simcc_gaussian_targets
from lightning_losses.functional.reduction import reduce_loss, weight_reduce_loss
from lightning_losses.functional.regression import balanced_l1_loss, l1_loss, mse_loss, smooth_l1_loss
from lightning_losses.functional.varifocal import varifocal_loss

__all__ = [
    "balanced_l1_loss",
    "bbox_overlaps",
    "binary_cross_entropy",
    "ciou_loss",
    "cross_entropy",
    "diou_loss",
    "distribution_focal_loss",
    "expand_onehot_labels",
    "giou_loss",
    "iou_loss",
    "kl_discret_loss",
    "l1_loss",
    "mask_cross_entropy",
    "mse_loss",
    "quality_focal_loss",
    "reduce_loss",
    "sigmoid_focal_loss",
    "simcc_gaussian_targets",
    "smooth_l1_loss",
    "varifocal_loss",
    "weight_reduce_loss",
]
