r"""torchvision's RetinaNet and FCOS trained by this package's criteria.

:class:`TorchvisionDenseDetector` runs a ``torchvision.models.detection.RetinaNet`` or ``FCOS`` up to its head
and hands the head outputs, in the per-level layout of :class:`~lightning_losses.RetinaNetCriterion` /
:class:`~lightning_losses.FCOSCriterion`, and torchvision's own anchors to the criterion.
:meth:`~TorchvisionDenseDetector.default_criterion` builds the criterion that reproduces torchvision's loss:

- RetinaNet: ``RetinaNetCriterion(style="netspresso", priors=<torchvision's anchors>)`` equals
  ``RetinaNet.compute_loss`` (focal and L1 on ``BoxCoder`` deltas, per-image normaliser, ``Matcher(0.5, 0.4)``
  with low-quality matches). ``retinanet_resnet50_fpn_v2`` scores its boxes by GIoU on decoded boxes
  instead; the criterion keeps L1 on deltas (v1's box term), so only v2's ``loss_cls`` equals torchvision's.
- FCOS (torchvision 0.29's ``FCOS.compute_loss``): anchor centres as points, center sampling of radius 1.5
  anchor sizes, regression ranges :math:`(4 s, 8 s)` compared strictly (the ranges here are moved by one
  float32 step, as this package's assigner compares inclusively), the smallest box wins, distances in anchor
  sizes (``norm_on_bbox``), focal and centerness BCE normalised by :math:`\max(1, n^{pos})`: ``loss_cls``
  and ``loss_centerness`` equal torchvision's. The box term differs: torchvision averages the GIoU loss over
  positives, :class:`~lightning_losses.FCOSCriterion` weights it by the centerness target (MMDetection 3.x),
  :math:`\sum c^* \ell_{GIoU} / \sum c^*`. Where several boxes hold a point, torchvision ranks them by
  :math:`10^8 - \text{area}` in float32 (ties below 8 px² of area difference), this package by area.

Images are normalised with the model's ``image_mean`` / ``image_std``; they are not resized (torchvision's
``GeneralizedRCNNTransform`` would resize them to ``min_size``): the data module sets the size, and targets
stay in the batch's pixels.

Reference: torchvision 0.29 ``torchvision.models.detection`` (``retinanet.py``, ``fcos.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from lightning_losses.losses.iou import GIoULoss
from lightning_losses.presets.fcos import FCOSCriterion
from lightning_losses.presets.retinanet import RetinaNetCriterion

__all__ = ["DenseHeadOutputs", "TorchvisionDenseDetector", "torchvision_fcos_ranges"]


def torchvision_fcos_ranges(strides: Sequence[int]) -> list[tuple[float, float]]:
    r"""FCOS regression ranges :math:`(4 s, 8 s)` per level (first from 0, last to :math:`\infty`), each end
    moved one float32 step inwards so that the inclusive test of
    :class:`~lightning_losses.assigners.PointAssigner` is torchvision's strict one.

    Example:
        >>> torchvision_fcos_ranges([8, 16])[1]
        (64.00000762939453, inf)
    """
    ranges = []
    for level, stride in enumerate(strides):
        low = -1.0 if level == 0 else _step(4.0 * stride, float("inf"))
        high = float("inf") if level == len(strides) - 1 else _step(8.0 * stride, 0.0)
        ranges.append((low, high))
    return ranges


def _step(value: float, toward: float) -> float:
    return float(torch.nextafter(torch.tensor(value), torch.tensor(toward)))


@dataclass
class DenseHeadOutputs:
    """What :class:`TorchvisionDenseDetector` returns for a batch.

    Attributes:
        head: torchvision's head outputs, ``(B, Σ_l H_l·W_l·A, ·)`` per key.
        anchors: ``(P, 4)`` torchvision's anchors (the same for every image of the batch).
        sizes: ``(H_l, W_l)`` of each level.
        image_size: ``(H, W)`` of the batch.
    """

    head: dict[str, Tensor]
    anchors: Tensor
    sizes: list[tuple[int, int]]
    image_size: tuple[int, int]


class TorchvisionDenseDetector(nn.Module):
    """A torchvision ``RetinaNet`` or ``FCOS`` run up to its head, for this package's criteria.

    Args:
        model: ``torchvision.models.detection.RetinaNet`` or ``FCOS`` (e.g. ``retinanet_resnet50_fpn(weights=None,
            weights_backbone=None, num_classes=C)``), whose labels are this package's ``0 … C − 1``.

    Shape:
        - ``forward``: ``(B, 3, H, W)`` images in ``[0, 1]`` → :class:`DenseHeadOutputs`.
        - :meth:`criterion_inputs`: ``cls_scores[l]`` ``(B, A·C, H_l, W_l)``, ``bbox_preds[l]`` ``(B, A·4, H_l, W_l)``
          and for FCOS ``centerness[l]`` ``(B, 1, H_l, W_l)``.

    Example:
        >>> from torchvision.models.detection import fcos_resnet50_fpn
        >>> detector = TorchvisionDenseDetector(fcos_resnet50_fpn(weights=None, weights_backbone=None, num_classes=2))
        >>> outputs = detector(torch.rand(1, 3, 64, 64))
        >>> criterion = detector.default_criterion()
        >>> targets = [{"boxes": torch.tensor([[8.0, 8.0, 40.0, 48.0]]), "labels": torch.tensor([1])}]
        >>> sorted(criterion(*detector.criterion_inputs(outputs), targets, **detector.criterion_kwargs(outputs)))
        ['loss_bbox', 'loss_centerness', 'loss_cls']
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        from torchvision.models.detection import FCOS, RetinaNet

        if isinstance(model, RetinaNet):
            self.kind = "retinanet"
        elif isinstance(model, FCOS):
            self.kind = "fcos"
        else:
            raise TypeError(f"`model` must be a torchvision RetinaNet or FCOS, got {type(model).__name__}")
        self.model = model
        self.num_classes = int(model.head.classification_head.num_classes)
        self.num_anchors = int(model.head.classification_head.num_anchors)
        # torchvision's FCOS uses each level's anchor size as its stride; RetinaNet's smallest anchor is 4 strides.
        sizes = [int(level[0]) for level in model.anchor_generator.sizes]
        self.strides = tuple(sizes if self.kind == "fcos" else [s // 4 for s in sizes])

    def forward(self, images: Tensor) -> DenseHeadOutputs:
        from torchvision.models.detection.image_list import ImageList

        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"`images` must be (B, 3, H, W), got {tuple(images.shape)}")
        transform = self.model.transform
        mean = images.new_tensor(transform.image_mean).view(1, 3, 1, 1)
        std = images.new_tensor(transform.image_std).view(1, 3, 1, 1)
        batch = (images - mean) / std
        height, width = int(images.shape[-2]), int(images.shape[-1])
        features = list(self.model.backbone(batch).values())
        head = self.model.head(features)
        anchors = self.model.anchor_generator(ImageList(batch, [(height, width)] * len(batch)), features)
        sizes = [(int(f.shape[-2]), int(f.shape[-1])) for f in features]
        return DenseHeadOutputs(head=head, anchors=anchors[0], sizes=sizes, image_size=(height, width))

    def _maps(self, flat: Tensor, sizes: Sequence[tuple[int, int]]) -> list[Tensor]:
        """``(B, Σ H_l·W_l·A, K)`` rows ``(level, y, x, a)`` → per-level ``(B, A·K, H_l, W_l)``, channel ``a·K + k``."""
        counts = [h * w * self.num_anchors for h, w in sizes]
        return [
            chunk.reshape(chunk.shape[0], h, w, -1).permute(0, 3, 1, 2)
            for chunk, (h, w) in zip(flat.split(counts, dim=1), sizes, strict=True)
        ]

    def criterion_inputs(self, outputs: DenseHeadOutputs) -> tuple[list[Tensor], ...]:
        """The criterion's positional inputs before ``targets``: ``(cls_scores, bbox_preds[, centerness])``."""
        head = outputs.head
        maps = [self._maps(head["cls_logits"], outputs.sizes), self._maps(head["bbox_regression"], outputs.sizes)]
        if self.kind == "fcos":
            maps.append(self._maps(head["bbox_ctrness"], outputs.sizes))
        return tuple(maps)

    def criterion_kwargs(self, outputs: DenseHeadOutputs) -> dict[str, Any]:
        """``priors``: torchvision's anchors (RetinaNet) or their centres (FCOS); and the ``image_size``."""
        anchors = outputs.anchors
        priors = anchors if self.kind == "retinanet" else (anchors[:, :2] + anchors[:, 2:]) / 2
        return {"priors": priors, "image_size": outputs.image_size}

    def default_criterion(self) -> RetinaNetCriterion | FCOSCriterion:
        """The criterion reproducing torchvision's loss (see the module's notes for what differs)."""
        if self.kind == "retinanet":
            return RetinaNetCriterion(self.num_classes, strides=self.strides, style="netspresso")
        return FCOSCriterion(
            self.num_classes,
            strides=self.strides,
            regress_ranges=torchvision_fcos_ranges(self.strides),
            center_sampling=True,
            center_sample_radius=float(self.model.center_sampling_radius),
            norm_on_bbox=True,
            loss_bbox=GIoULoss(),
        )

    def postprocess(self, outputs: DenseHeadOutputs) -> list[dict[str, Tensor]]:
        """Detections per image by torchvision's own ``postprocess_detections`` (score threshold, top-k, NMS).

        Returns:
            One ``{"boxes": (D, 4) xyxy pixels of the batch, "scores": (D,), "labels": (D,) int64}`` per image.
        """
        counts = [h * w * self.num_anchors for h, w in outputs.sizes]
        split = {key: list(value.split(counts, dim=1)) for key, value in outputs.head.items()}
        batch = next(iter(outputs.head.values())).shape[0]
        anchors = [list(outputs.anchors.split(counts))] * batch
        return self.model.postprocess_detections(split, anchors, [outputs.image_size] * batch)

    def torchvision_loss(self, outputs: DenseHeadOutputs, targets: Sequence[Mapping[str, Tensor]]) -> dict[str, Tensor]:
        """torchvision's own ``compute_loss`` on the same head outputs (for comparisons)."""
        anchors = [outputs.anchors] * len(targets)
        targets = [dict(t) for t in targets]
        if self.kind == "retinanet":
            return self.model.compute_loss(targets, outputs.head, anchors)
        counts = [h * w for h, w in outputs.sizes]
        return self.model.compute_loss(targets, outputs.head, anchors, counts)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, num_classes={self.num_classes}, strides={self.strides}"
