"""Pose estimation loss modules: SimCC's discrete KL divergence over coordinate bins."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from lightning_losses.functional.pose import kl_discret_loss
from lightning_losses.functional.validation import check_finite
from lightning_losses.losses.base import LossMetric
from lightning_losses.registry import register_loss

__all__ = ["KLDiscretLoss"]


@register_loss
class KLDiscretLoss(LossMetric):
    r"""Discrete KL divergence of SimCC: Gaussian-smoothed keypoint labels against per-axis bin softmaxes.

    .. math::
        \ell_{nk} = \sum_{a \in \{x, y\}} \frac{1}{W_a} \sum_j q_j (\log q_j - \log \mathrm{softmax}(\beta x)_j),
        \qquad \mathcal L = \frac{1}{K} \sum_{n,k} w_{nk}\, \ell_{nk}

    with :math:`q` the labels, softmaxed with temperature ``label_beta`` when ``label_softmax``; see
    :func:`~lightning_losses.functional.kl_discret_loss`. ``mean`` divides by ``avg_factor``, by default
    ``K`` as MMPose 1.x's ``KLDiscretLoss`` does (the loss sums over the batch). Defaults are MMPose's;
    RTMPose (and NetsPresso Trainer's ``rtmcc_loss``) use ``beta=10``, ``label_softmax=True``. Labels come
    ready-made, e.g. from :func:`~lightning_losses.functional.simcc_gaussian_targets`.

    Args:
        beta: temperature of the predicted softmax.
        label_softmax: softmax the labels (temperature ``label_beta``).
        label_beta: temperature of the label softmax.
        use_target_weight: multiply each keypoint by ``weight`` (the target weight); without it ``weight``
            is ignored, as in MMPose.
        reduction: ``"none"`` (``(N, K)``), ``"mean"`` or ``"sum"``.
        loss_weight: multiplier of the loss.
        validate_args: check finiteness (host sync).

    Shape:
        ``pred``, ``target``: ``(pred_x, pred_y)`` pairs of ``(N, K, W)`` and ``(N, K, H)`` (a single tensor is
        one axis); ``weight``: ``(N, K)``.

    Example:
        >>> loss = KLDiscretLoss(beta=10.0, label_softmax=True)
        >>> pred = (torch.zeros(1, 1, 4), torch.zeros(1, 1, 2))  # uniform predictions
        >>> loss(pred, (torch.zeros(1, 1, 4), torch.zeros(1, 1, 2)))  # uniform labels: no divergence
        tensor(0.)

    Reference: Li et al., *SimCC*, arXiv:2107.03332; Jiang et al., *RTMPose*, arXiv:2303.07399.
    """

    def __init__(
        self,
        beta: float = 1.0,
        label_softmax: bool = False,
        label_beta: float = 10.0,
        use_target_weight: bool = True,
        reduction: str = "mean",
        loss_weight: float = 1.0,
        validate_args: bool = False,
    ) -> None:
        super().__init__(reduction=reduction, loss_weight=loss_weight, validate_args=validate_args)
        self.beta = float(beta)
        self.label_softmax = bool(label_softmax)
        self.label_beta = float(label_beta)
        self.use_target_weight = bool(use_target_weight)

    def _loss(
        self,
        pred: Tensor | Sequence[Tensor],
        target: Tensor | Sequence[Tensor],
        weight: Tensor | None,
        avg_factor: float | Tensor | None,
        reduction: str,
    ) -> Tensor:
        if self.validate_args:
            for i, p in enumerate([pred] if isinstance(pred, Tensor) else pred):
                check_finite(p, f"pred[{i}]")
        return kl_discret_loss(
            pred,
            target,
            weight if self.use_target_weight else None,
            self.beta,
            self.label_softmax,
            self.label_beta,
            reduction,
            avg_factor,
        )

    def extra_repr(self) -> str:
        return (
            f"beta={self.beta}, label_softmax={self.label_softmax}, label_beta={self.label_beta}, "
            f"use_target_weight={self.use_target_weight}, {super().extra_repr()}"
        )
