"""Hungarian matching of set predictions to boxes (DETR family): batched costs, an exact assignment per image."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from lightning_losses.functional.iou import bbox_overlaps
from lightning_losses.serialization import RecordsInit

__all__ = ["CLASS_COSTS", "HungarianMatcher", "SetMatch", "cxcywh_to_xyxy", "denoising_match", "xyxy_to_cxcywh"]

CLASS_COSTS = ("focal", "softmax")
NONFINITE_COST = 1e8
"""What a NaN or infinite cost entry becomes: such a pair is matched only where nothing else is possible."""


def cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """``(..., 4)`` boxes ``(cx, cy, w, h)`` → ``(x1, y1, x2, y2)``.

    Example:
        >>> cxcywh_to_xyxy(torch.tensor([0.5, 0.5, 0.2, 0.4]))
        tensor([0.4000, 0.3000, 0.6000, 0.7000])
    """
    center, size = boxes[..., :2], boxes[..., 2:]
    return torch.cat([center - size / 2, center + size / 2], dim=-1)


def xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """``(..., 4)`` boxes ``(x1, y1, x2, y2)`` → ``(cx, cy, w, h)``.

    Example:
        >>> xyxy_to_cxcywh(torch.tensor([0.4, 0.3, 0.6, 0.7]))
        tensor([0.5000, 0.5000, 0.2000, 0.4000])
    """
    low, high = boxes[..., :2], boxes[..., 2:]
    return torch.cat([(low + high) / 2, high - low], dim=-1)


class SetMatch(NamedTuple):
    """Matched (query, box) pairs of one set of predictions, ``(B, K)`` each, padded.

    Attributes:
        queries: query index of each pair (0 on padding).
        boxes: index of the pair's box in the padded targets.
        valid: which pairs are real.
        groups: how many times each box is matched (the denoising groups; 1 for a Hungarian match).
    """

    queries: Tensor
    boxes: Tensor
    valid: Tensor
    groups: int


def denoising_match(
    positive_idx: Sequence[Tensor], num_groups: int, mask: Tensor, counts: Sequence[int] | None = None
) -> SetMatch:
    """The pairs of denoising queries (DINO, RT-DETR) and the boxes they reconstruct: a match by construction.

    ``positive_idx[b]`` holds the ``n_b·G`` positive denoising queries of image ``b``, group-major: entry
    ``g·n_b + j`` reconstructs box ``j`` in group ``g`` (RT-DETR's ``dn_positive_idx``). The pairs are laid out
    ``(B, G·M)`` over the padded targets' ``mask`` ``(B, M)`` with tensor ops only (no host sync). ``counts``, the
    boxes per image known on the host, lets the length of each ``positive_idx[b]`` be checked.

    Example:
        >>> mask = torch.tensor([[True, True], [True, False]])
        >>> match = denoising_match([torch.tensor([0, 1, 4, 5]), torch.tensor([0, 4])], 2, mask)
        >>> match.queries, match.valid
        (tensor([[0, 1, 4, 5],
                [0, 0, 4, 0]]), tensor([[ True,  True,  True,  True],
                [ True, False,  True, False]]))
    """
    batch, width = mask.shape
    if not isinstance(positive_idx, Sequence) or len(positive_idx) != batch:
        size = len(positive_idx) if isinstance(positive_idx, Sequence) else type(positive_idx).__name__
        raise ValueError(f"`dn_positive_idx` must hold one tensor per image ({batch}), got {size}")
    if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 1:
        raise ValueError(f"`dn_num_group` must be a positive int, got {num_groups!r}")
    for image, index in enumerate(positive_idx):
        if not isinstance(index, Tensor) or index.ndim != 1 or index.is_floating_point():
            what = f"shape {tuple(index.shape)}, {index.dtype}" if isinstance(index, Tensor) else type(index).__name__
            raise ValueError(f"`dn_positive_idx[{image}]` must be a 1-D integer tensor, got {what}")
        if counts is not None and index.numel() != counts[image] * num_groups:
            raise ValueError(
                f"`dn_positive_idx[{image}]` holds {index.numel()} queries for {counts[image]} boxes in "
                f"{num_groups} groups (expected {counts[image] * num_groups})"
            )
    device = mask.device
    flat = torch.cat([index.to(device=device, dtype=torch.long) for index in positive_idx])
    counts = mask.sum(1)[:, None, None]
    group = torch.arange(num_groups, dtype=torch.long, device=device)[None, :, None]
    box = torch.arange(width, dtype=torch.long, device=device)[None, None, :].expand(batch, num_groups, width)
    valid = box < counts
    per_image = counts * num_groups
    position = (torch.cumsum(per_image, 0) - per_image) + group * counts + box
    if flat.numel():
        queries = torch.where(valid, flat[position.clamp(max=flat.numel() - 1)], 0)
    else:
        queries = torch.zeros_like(box)
    shape = (batch, num_groups * width)
    return SetMatch(queries.reshape(shape), box.reshape(shape), valid.reshape(shape), num_groups)


class HungarianMatcher(RecordsInit):
    r"""One-to-one matching of ``Q`` queries to an image's ``M ≤ Q`` boxes at the least total cost.

    The cost of query :math:`q` and box :math:`j` (built for every image of the batch at once, on the device,
    in float32 and without gradient):

    .. math::
        C_{qj} = w_{cls}\, c_{cls}(q, y_j) + w_{bbox}\, \lVert b_q - b_j \rVert_1 - w_{giou}\,\mathrm{GIoU}(b_q, b_j)

    with boxes as normalised ``cxcywh`` (the L1 term) and their ``xyxy`` corners (the GIoU term). The class
    cost is :math:`-\mathrm{softmax}(x_q)_{y}` (``"softmax"``, DETR) or the focal form of Deformable DETR /
    RT-DETR (``"focal"``), :math:`p = \sigma(x_{q,y})`:

    .. math::
        c_{cls} = \alpha (1-p)^\gamma\,(-\log(p + \epsilon)) - (1-\alpha)\, p^\gamma\,(-\log(1 - p + \epsilon))

    The assignment is exact: scipy's ``linear_sum_assignment`` (the Jonker–Volgenant algorithm) on one host
    copy of every cost block of the call — the one host synchronisation of a DETR criterion, which no
    exact matching avoids. scipy is imported on the first :meth:`solve`, not with this module.

    Non-finite costs (a NaN or infinite predicted box or logit) become :data:`NONFINITE_COST`, so matching
    never fails on them; the loss terms of such a query stay non-finite, as they should. An image with more
    boxes than queries raises ``ValueError``; an image without boxes matches nothing.

    Args:
        cost_class: weight :math:`w_{cls}` of the class cost.
        cost_bbox: weight :math:`w_{bbox}` of the L1 cost.
        cost_giou: weight :math:`w_{giou}` of the GIoU cost.
        class_cost: ``"focal"`` (sigmoid logits ``(B, Q, C)``) or ``"softmax"`` (logits over classes, a
            trailing no-object column allowed).
        alpha: :math:`\alpha` of the focal class cost.
        gamma: :math:`\gamma` of the focal class cost.
        eps: :math:`\epsilon` inside the focal cost's logarithms (RT-DETR's 1e-8).

    Example:
        >>> logits = torch.tensor([[[4.0, -4.0], [-4.0, 4.0]]])
        >>> boxes = torch.tensor([[[0.3, 0.3, 0.2, 0.2], [0.7, 0.7, 0.2, 0.2]]])
        >>> gt = torch.tensor([[[0.7, 0.7, 0.2, 0.2]]])
        >>> HungarianMatcher()(logits, boxes, gt, torch.tensor([[1]]), torch.tensor([[True]]))
        tensor([[1]])

    References: Carion et al., *End-to-End Object Detection with Transformers*, arXiv:2005.12872; Zhu et al.,
    *Deformable DETR*, arXiv:2010.04159; Zhao et al., *DETRs Beat YOLOs on Real-time Object Detection*
    (RT-DETR), arXiv:2304.08069.
    """

    def __init__(
        self,
        cost_class: float = 2.0,
        cost_bbox: float = 5.0,
        cost_giou: float = 2.0,
        class_cost: str = "focal",
        alpha: float = 0.25,
        gamma: float = 2.0,
        eps: float = 1e-8,
    ) -> None:
        weights = {"cost_class": cost_class, "cost_bbox": cost_bbox, "cost_giou": cost_giou}
        for name, value in {**weights, "alpha": alpha, "gamma": gamma, "eps": eps}.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"`{name}` must be a finite number >= 0, got {value!r}")
        if not any(weights.values()):
            raise ValueError(f"at least one of the cost weights must be positive, got {weights}")
        if class_cost not in CLASS_COSTS:
            raise ValueError(f"`class_cost` must be one of {CLASS_COSTS}, got {class_cost!r}")
        self.cost_class = float(cost_class)
        self.cost_bbox = float(cost_bbox)
        self.cost_giou = float(cost_giou)
        self.class_cost = class_cost
        self.alpha = float(alpha)
        self.gamma = float(gamma)
        self.eps = float(eps)

    @torch.no_grad()
    def cost(self, pred_logits: Tensor, pred_boxes: Tensor, gt_boxes: Tensor, gt_labels: Tensor) -> Tensor:
        """The ``(B, Q, M)`` cost of every query and box of each image (float32, no gradient).

        Args:
            pred_logits: ``(B, Q, C)`` class logits.
            pred_boxes: ``(B, Q, 4)`` normalised ``cxcywh``.
            gt_boxes: ``(B, M, 4)`` normalised ``cxcywh`` (padding rows any finite value).
            gt_labels: ``(B, M)`` int64 labels (padding rows any value; they are clamped into range).
        """
        _check_inputs(pred_logits, pred_boxes, gt_boxes, gt_labels)
        logits = pred_logits.float()
        boxes = pred_boxes.float()
        gts = gt_boxes.float()
        batch, queries, classes = logits.shape
        index = gt_labels.long().clamp(0, classes - 1)[:, None, :].expand(batch, queries, -1)
        cost = torch.zeros(batch, queries, gts.shape[1], dtype=torch.float32, device=logits.device)
        if self.cost_class:
            if self.class_cost == "softmax":
                cost -= self.cost_class * logits.softmax(-1).gather(-1, index)
            else:
                prob = logits.sigmoid().gather(-1, index)
                pos = self.alpha * (1 - prob).pow(self.gamma) * -(prob + self.eps).log()
                neg = (1 - self.alpha) * prob.pow(self.gamma) * -(1 - prob + self.eps).log()
                cost += self.cost_class * (pos - neg)
        if self.cost_bbox:
            cost += self.cost_bbox * torch.cdist(boxes, gts, p=1)
        if self.cost_giou:
            cost -= self.cost_giou * bbox_overlaps(cxcywh_to_xyxy(boxes), cxcywh_to_xyxy(gts), mode="giou")
        return torch.nan_to_num(cost, nan=NONFINITE_COST, posinf=NONFINITE_COST, neginf=-NONFINITE_COST)

    @staticmethod
    def solve(cost: Tensor, counts: Sequence[int]) -> Tensor:
        """The least-cost one-to-one assignment of each cost block: ``(..., B, Q, M)`` → ``(..., B, M)``.

        Entry ``[..., b, j]`` is the query matched to box ``j`` of image ``b`` for ``j < counts[b]`` and 0 for
        padding columns. All blocks travel to the host in one copy and the result comes back in one.

        Args:
            cost: ``(..., B, Q, M)`` costs; any number of leading dimensions (decoder layers).
            counts: the number of real boxes of each image (the first ``counts[b]`` columns are real).
        """
        try:
            from scipy.optimize import linear_sum_assignment
        except ImportError as error:  # pragma: no cover - scipy is a dependency of the package
            raise ImportError("HungarianMatcher needs scipy: pip install scipy") from error
        import numpy as np

        *lead, batch, queries, width = cost.shape
        counts = [int(n) for n in counts]
        if len(counts) != batch:
            raise ValueError(f"`counts` has {len(counts)} entries for {batch} images")
        for image, n in enumerate(counts):
            if n > queries:
                raise ValueError(
                    f"image {image} has {n} boxes but the predictions have only {queries} queries: "
                    f"one-to-one matching needs at most as many boxes as queries"
                )
            if n > width:
                raise ValueError(f"`counts[{image}]` = {n} exceeds the {width} box columns of `cost`")
        blocks = cost.detach().reshape(-1, batch, queries, width).cpu().numpy()
        matched = np.zeros((blocks.shape[0], batch, width), dtype=np.int64)
        for layer in range(blocks.shape[0]):
            for image, n in enumerate(counts):
                if n:
                    rows, cols = linear_sum_assignment(blocks[layer, image, :, :n])
                    matched[layer, image, cols] = rows
        return torch.from_numpy(matched).reshape(*lead, batch, width).to(cost.device)

    def __call__(
        self, pred_logits: Tensor, pred_boxes: Tensor, gt_boxes: Tensor, gt_labels: Tensor, gt_mask: Tensor
    ) -> Tensor:
        """Match one set of predictions: ``(B, M)`` query index of each box (0 where ``gt_mask`` is False).

        ``gt_mask`` ``(B, M)`` marks the real boxes, which come first in each row (see
        :func:`~lightning_losses.boxes.pad_targets`); its counts are read on the host with the costs.
        """
        if gt_mask.shape != gt_labels.shape:
            raise ValueError(
                f"`gt_mask` must have the shape of `gt_labels` {tuple(gt_labels.shape)}, got {tuple(gt_mask.shape)}"
            )
        cost = self.cost(pred_logits, pred_boxes, gt_boxes, gt_labels)
        return self.solve(cost, gt_mask.sum(-1).tolist())

    def __repr__(self) -> str:
        return (
            f"HungarianMatcher(cost_class={self.cost_class}, cost_bbox={self.cost_bbox}, "
            f"cost_giou={self.cost_giou}, class_cost={self.class_cost!r}, alpha={self.alpha}, gamma={self.gamma})"
        )


def _check_inputs(pred_logits: Tensor, pred_boxes: Tensor, gt_boxes: Tensor, gt_labels: Tensor) -> None:
    for name, value in (
        ("pred_logits", pred_logits),
        ("pred_boxes", pred_boxes),
        ("gt_boxes", gt_boxes),
        ("gt_labels", gt_labels),
    ):
        if not isinstance(value, Tensor):
            raise TypeError(f"`{name}` must be a tensor, got {type(value).__name__}")
    if pred_logits.ndim != 3 or pred_logits.shape[-1] < 1:
        raise ValueError(f"`pred_logits` must be (B, Q, C), got {tuple(pred_logits.shape)}")
    if pred_boxes.shape != (*pred_logits.shape[:2], 4):
        raise ValueError(
            f"`pred_boxes` must be (B, Q, 4) = {(*pred_logits.shape[:2], 4)} like `pred_logits`, "
            f"got {tuple(pred_boxes.shape)}"
        )
    if gt_boxes.ndim != 3 or gt_boxes.shape[0] != pred_logits.shape[0] or gt_boxes.shape[-1] != 4:
        raise ValueError(f"`gt_boxes` must be (B, M, 4) with B = {pred_logits.shape[0]}, got {tuple(gt_boxes.shape)}")
    if gt_labels.shape != gt_boxes.shape[:2]:
        raise ValueError(f"`gt_labels` must be (B, M) = {tuple(gt_boxes.shape[:2])}, got {tuple(gt_labels.shape)}")
    if gt_labels.is_floating_point():
        raise TypeError(f"`gt_labels` must be an integer tensor, got {gt_labels.dtype}")
