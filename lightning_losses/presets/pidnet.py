"""PIDNet criterion: auxiliary CE, (OHEM) semantic CE, class-balanced boundary BCE, boundary-aware CE."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_losses.functional.segmentation import boundary_from_mask
from lightning_losses.losses.base import LossMetric
from lightning_losses.losses.classification import CrossEntropyLoss
from lightning_losses.losses.segmentation import BoundaryLoss, OhemCrossEntropyLoss
from lightning_losses.presets.base import Criterion
from lightning_losses.registry import build_loss

__all__ = ["PIDNetCriterion"]


class PIDNetCriterion(Criterion):
    r"""PIDNet's four loss terms from its three heads.

    Every logit map is resized bilinearly (``align_corners=True``) to the target size, then

    .. math::
        \mathcal L_{aux} = 0.4\,\mathrm{CE}(P), \quad \mathcal L_{sem} = \mathrm{CE}_{ohem}(I), \quad
        \mathcal L_{boundary} = 20\,\mathrm{BCE}_{bal}(D, b), \quad
        \mathcal L_{bas} = \mathrm{CE}_{ohem}(I \mid \sigma(D) > 0.8)

    with :math:`P`, :math:`I`, :math:`D` the auxiliary (P branch), main and boundary (D branch) logits
    and :math:`b` the boundary target (derived from the mask when not given: valid pixels with another
    valid class in their ``boundary_kernel``² neighbourhood). The boundary-aware term ignores every pixel
    where :math:`\sigma(D) \le 0.8`. OHEM (``ohem=True``, the paper's training code) applies to the main
    and boundary-aware terms; ``ohem=False`` gives plain cross-entropy (mean over non-ignored pixels)
    everywhere, as NetsPresso Trainer's ``pidnet_loss``. Where no pixel passes 0.8, or every pixel is
    ignored, the terms are 0 with a graph (the reference returns NaN).

    Args:
        num_classes: ``K``.
        ignore_index: label excluded from the loss.
        ohem: OHEM cross-entropy for the main and boundary-aware terms.
        ohem_thres: OHEM probability threshold.
        ohem_min_kept: OHEM minimum kept pixels.
        class_weight: optional per-class weights of the cross-entropies.
        aux_weight: weight of ``loss_aux``.
        sem_weight: weight of ``loss_sem``.
        boundary_weight: weight of ``loss_boundary``.
        bas_weight: weight of ``loss_bas``.
        bas_threshold: boundary probability above which a pixel enters ``loss_bas``.
        boundary_kernel: neighbourhood size for derived boundaries.
        loss_aux, loss_sem, loss_boundary, loss_bas: replace a term's module (its ``loss_weight`` then rules).

    Shape:
        ``aux_logits``, ``logits`` ``(B, K, h, w)``; ``boundary_logits`` ``(B, 1, h, w)``; ``target``
        ``(B, H, W)`` int64; ``boundary_target`` optional ``(B, H, W)`` in ``{0, 1}``.

    Targets: ``target`` holds 0-based class indices in ``[0, K)`` per pixel, ``ignore_index`` where unlabelled.

    Example:
        >>> criterion = PIDNetCriterion(num_classes=2, ohem=False)
        >>> mask = torch.zeros(1, 8, 8, dtype=torch.long)
        >>> mask[:, 2:6, 2:6] = 1
        >>> terms = criterion(torch.zeros(1, 2, 8, 8), torch.zeros(1, 2, 8, 8), torch.zeros(1, 1, 8, 8), mask)
        >>> sorted(terms), round(terms["loss_sem"].item(), 4)  # CE of zero logits over 2 classes: log 2
        (['loss_aux', 'loss_bas', 'loss_boundary', 'loss_sem'], 0.6931)

    Reference: Xu et al., *PIDNet: A Real-time Semantic Segmentation Network Inspired by PID Controllers*, CVPR 2023.
    """

    terms = ("loss_aux", "loss_sem", "loss_boundary", "loss_bas")

    def __init__(
        self,
        num_classes: int,
        ignore_index: int = 255,
        ohem: bool = True,
        ohem_thres: float = 0.9,
        ohem_min_kept: int = 131072,
        class_weight: list[float] | None = None,
        aux_weight: float = 0.4,
        sem_weight: float = 1.0,
        boundary_weight: float = 20.0,
        bas_weight: float = 1.0,
        bas_threshold: float = 0.8,
        boundary_kernel: int = 3,
        loss_aux: LossMetric | Mapping[str, Any] | None = None,
        loss_sem: LossMetric | Mapping[str, Any] | None = None,
        loss_boundary: LossMetric | Mapping[str, Any] | None = None,
        loss_bas: LossMetric | Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"`num_classes` must be a positive int, got {num_classes!r}")
        if class_weight is not None and len(class_weight) != num_classes:
            raise ValueError(f"`class_weight` needs {num_classes} values, got {len(class_weight)}")
        self.num_classes = num_classes
        self.ignore_index = int(ignore_index)
        self.ohem = ohem
        self.bas_threshold = float(bas_threshold)
        self.boundary_kernel = int(boundary_kernel)

        def plain(weight: float) -> LossMetric:
            return CrossEntropyLoss(
                ignore_index=self.ignore_index, avg_non_ignore=True, class_weight=class_weight, loss_weight=weight
            )

        def semantic(weight: float) -> LossMetric:
            if not ohem:
                return plain(weight)
            return OhemCrossEntropyLoss(ohem_thres, ohem_min_kept, self.ignore_index, class_weight, loss_weight=weight)

        self.loss_aux = plain(aux_weight) if loss_aux is None else build_loss(loss_aux)
        self.loss_sem = semantic(sem_weight) if loss_sem is None else build_loss(loss_sem)
        self.loss_boundary = BoundaryLoss(boundary_weight) if loss_boundary is None else build_loss(loss_boundary)
        self.loss_bas = semantic(bas_weight) if loss_bas is None else build_loss(loss_bas)

    def _resize(self, logits: Tensor, size: torch.Size, name: str, channels: int | None) -> Tensor:
        if not isinstance(logits, Tensor) or logits.ndim != 4:
            shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
            raise ValueError(f"`{name}` must be (B, C, h, w) logits, got {shape}")
        if channels is not None and logits.shape[1] != channels:
            raise ValueError(f"`{name}` must have {channels} channels, got shape {tuple(logits.shape)}")
        if logits.shape[-2:] == size:
            return logits
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=True)

    def forward(
        self,
        aux_logits: Tensor,
        logits: Tensor,
        boundary_logits: Tensor,
        target: Tensor,
        boundary_target: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Return ``loss_aux``, ``loss_sem``, ``loss_boundary`` and ``loss_bas``."""
        if not isinstance(target, Tensor) or target.ndim != 3 or target.is_floating_point():
            shape = tuple(target.shape) if isinstance(target, Tensor) else type(target).__name__
            raise ValueError(f"`target` must be an int64 (B, H, W) mask, got {shape}")
        size = target.shape[-2:]
        aux_logits = self._resize(aux_logits, size, "aux_logits", self.num_classes)
        logits = self._resize(logits, size, "logits", self.num_classes)
        boundary_logits = self._resize(boundary_logits, size, "boundary_logits", 1)
        if boundary_target is None:
            boundary_target = boundary_from_mask(target, self.ignore_index, self.boundary_kernel)
        elif boundary_target.shape != target.shape:
            raise ValueError(
                f"`boundary_target` must have `target`'s shape {tuple(target.shape)}, "
                f"got {tuple(boundary_target.shape)}"
            )
        with torch.no_grad():
            on_boundary = boundary_logits[:, 0].sigmoid() > self.bas_threshold
        bas_target = torch.where(on_boundary, target, self.ignore_index)
        return {
            "loss_aux": self.loss_aux(aux_logits, target),
            "loss_sem": self.loss_sem(logits, target),
            "loss_boundary": self.loss_boundary(boundary_logits, boundary_target),
            "loss_bas": self.loss_bas(logits, bas_target),
        }

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, ignore_index={self.ignore_index}, ohem={self.ohem}"
