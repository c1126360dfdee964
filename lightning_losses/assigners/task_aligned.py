"""Task-aligned assignment (TOOD, YOLOv8 / YOLOv9), batched over images with padded boxes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import NamedTuple

import torch
from torch import Tensor

from lightning_losses.assigners.base import AssignResult, chunk_budget
from lightning_losses.boxes.targets import PaddedTargets
from lightning_losses.functional.iou import aspect_arctan, broadcast_overlaps
from lightning_losses.functional.kernels.runtime import run_kernel

__all__ = [
    "TASK_ALIGNED_STYLES",
    "TASK_ALIGNED_STYLE_TABLE",
    "TaskAlignedAssigner",
    "TaskAlignedResult",
    "TaskAlignedStyle",
]

_CIOU_EPS = 1e-7  # both references' CIoU guard
_COMPILE_MIN_PAIRS = 1 << 18  # a chunk's ~40 element-wise pair operations fuse into one loop from here
# Temporaries alive at once per (image, box, prior) triple of a chunk, eager (a compiled chunk holds far less),
# float32: inside the pairwise CIoU the corners max/min (lt, rb: 8 B each), wh (8), the overlap (4) and the
# enclosing box's max, min and difference (8 each): 52 B, beside the candidate mask (1) and the previous
# chunk's metric and IoU (8: they are replaced only when this chunk returns): 61; 68 with the per-prior
# running maxima shared by the chunk's boxes. Measured on CPU, tracking live tensor storage: 64.1 B a triple
# at 16 boxes a chunk.
_BYTES_PER_TRIPLE = 68


@dataclass(frozen=True)
class TaskAlignedStyle:
    """Everything a task-aligned style chooses; :class:`TaskAlignedAssigner` reads these, never the style's name.

    Attributes:
        name: the style's name.
        widens_small_boxes: the candidate test widens box sides below the detector's second stride to it
            (the criterion passes that stride as ``min_size``).
        conflicts_among_candidates: a prior claimed by several boxes goes to the box it overlaps most among
            the boxes it is a candidate of; ``False``: among every box of the image.
        nonpositive_sum_is_padding: a box whose coordinates sum to 0 or less is ignored.
    """

    name: str
    widens_small_boxes: bool
    conflicts_among_candidates: bool
    nonpositive_sum_is_padding: bool


TASK_ALIGNED_STYLE_TABLE: Mapping[str, TaskAlignedStyle] = MappingProxyType(
    {
        "ultralytics": TaskAlignedStyle("ultralytics", True, True, True),
        "netspresso": TaskAlignedStyle("netspresso", False, False, False),
    }
)
TASK_ALIGNED_STYLES = tuple(TASK_ALIGNED_STYLE_TABLE)


class TaskAlignedResult(NamedTuple):
    """Batched task-aligned assignment.

    Attributes:
        gt_inds: ``(B, P)`` int64: ``0`` negative, ``i + 1`` positive for box ``i``.
        max_overlaps: ``(B, P)`` the clamped CIoU of each positive with its box (0 elsewhere).
        labels: ``(B, P)`` int64 class of the matched box, ``-1`` where not positive.
        scores: ``(B, P)`` the soft class target of each positive (0 elsewhere): its alignment metric over its
            box's largest, times its box's largest IoU.
    """

    gt_inds: Tensor
    max_overlaps: Tensor
    labels: Tensor
    scores: Tensor

    positive = AssignResult.positive  # one definition of "positive" and "matched" for every assignment
    matched = AssignResult.matched


class TaskAlignedAssigner:
    r"""Task-aligned assignment: each box takes the ``topk`` priors that best combine its class score and IoU.

    For a box :math:`g` of class :math:`c` and a prior :math:`p` whose point lies strictly inside the box, the
    alignment metric is

    .. math::
        t_{gp} = s_{pc}^{\alpha}\, u_{gp}^{\beta}

    with :math:`s` the predicted probability (sigmoid of the logit) and :math:`u` the CIoU of the box with the
    prior's detached decoded box, clamped to :math:`[0, 1]` (metric 0 for priors outside the box). Each box's
    ``topk`` priors of largest metric are positive when their metric is above 0. A prior claimed by several
    boxes goes to the box it overlaps most (largest :math:`u`, the first on ties). The soft class target of a
    positive matched to :math:`g` is

    .. math::
        \hat s_p = \frac{t_{gp}}{\max_{q \in pos(g)} t_{gq} + \epsilon}\, \max_{q \in pos(g)} u_{gq}

    on its box's class (0 on the others), maxima over the positives finally matched to :math:`g`.

    Styles, where the two references differ (one :class:`TaskAlignedStyle` each):

    - ``"ultralytics"`` (ultralytics 8.4, ``TaskAlignedAssigner`` as ``v8DetectionLoss`` builds it): the
      candidate test uses the box with each side below ``min_size`` widened to ``min_size`` about its center
      (the criterion passes its second stride); a prior claimed twice goes to the largest :math:`u` among the
      boxes it is a candidate of; a box whose coordinates sum to 0 or less counts as padding (ultralytics
      takes such rows for padding).
    - ``"netspresso"`` (NetsPresso Trainer 1.4.1, the ``BoxMatcher`` of ``yolov9_loss``): the candidate test
      uses the box as given; a prior claimed twice goes to the largest :math:`u` over every box of the image,
      candidate or not (the box's class target is then 0 where the prior is not its candidate).

    ultralytics takes its ``topk`` over every prior, so where a box has fewer than ``topk`` candidates of
    positive metric its choice among metric-0 priors follows ``torch.topk``'s tie order; here a positive
    needs a metric above 0 (a metric-0 positive gets a class target and box weight of 0 in both).

    Memory: the (image, box, prior) work runs in chunks of boxes holding at most ``max_elements`` pairs
    (by default as many as the memory available allows; the chunking never changes the result);
    what crosses chunks is ``O(B·G·topk + B·P)``, so 1,000 boxes per image never allocate a boxes × priors
    tensor, let alone one over classes. Everything is computed in float32 whatever the input dtype.

    Args:
        topk: positives per box, at most.
        alpha: exponent of the class score.
        beta: exponent of the IoU.
        eps: added to each box's largest metric in the soft target.
        style: ``"ultralytics"`` or ``"netspresso"``.
        min_size: box sides below it are widened to it for the candidate test (``None``: none are).
        max_elements: (image, box, prior) pairs per chunk: ``None`` (default) is 2^21, cut to what the memory
            available on the predictions' device allows (:func:`~lightning_losses.assigners.base.chunk_budget`,
            68 bytes of temporaries per pair); an int >= 1 is a fixed budget.

    Example:
        >>> from lightning_losses.boxes.targets import pad_targets
        >>> points = torch.tensor([[4.0, 4.0], [12.0, 4.0], [20.0, 4.0]])
        >>> pred = torch.tensor([[[0.0, 0, 8, 8], [4, 0, 16, 8], [16, 0, 24, 8]]])
        >>> gts = pad_targets([{"boxes": torch.tensor([[0.0, 0, 16, 8]]), "labels": torch.tensor([1])}])
        >>> out = TaskAlignedAssigner(topk=2, style="netspresso").assign(torch.zeros(1, 3, 2), pred, points, gts)
        >>> out.gt_inds.tolist(), [round(s, 3) for s in out.scores[0].tolist()]  # CIoU .447, .737; 3rd outside
        ([[1, 1, 0]], [0.036, 0.737, 0.0])

    Reference: Feng et al., *TOOD: Task-aligned One-stage Object Detection*, ICCV 2021, arXiv:2108.07755.
    """

    def __init__(
        self,
        topk: int = 10,
        alpha: float = 0.5,
        beta: float = 6.0,
        eps: float = 1e-9,
        style: str = "ultralytics",
        min_size: float | None = None,
        max_elements: int | None = None,
    ) -> None:
        if style not in TASK_ALIGNED_STYLE_TABLE:
            raise ValueError(f"`style` must be one of {TASK_ALIGNED_STYLES}, got {style!r}")
        if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
            raise ValueError(f"`topk` must be a positive int, got {topk!r}")
        if not alpha >= 0 or not beta >= 0:
            raise ValueError(f"`alpha` and `beta` must be >= 0, got {alpha} and {beta}")
        if not eps >= 0:
            raise ValueError(f"`eps` must be >= 0, got {eps}")
        if min_size is not None and not min_size >= 0:
            raise ValueError(f"`min_size` must be None or >= 0, got {min_size!r}")
        if max_elements is not None and max_elements < 1:
            raise ValueError(f"`max_elements` must be None or >= 1, got {max_elements}")
        self.topk = topk
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.eps = float(eps)
        self.style = style
        self.conventions = TASK_ALIGNED_STYLE_TABLE[style]
        self.min_size = None if min_size is None else float(min_size)
        self.max_elements = None if max_elements is None else int(max_elements)

    @torch.no_grad()
    def assign(
        self,
        cls_logits: Tensor,
        pred_boxes: Tensor,
        points: Tensor,
        gts: PaddedTargets,
        min_size: float | None = None,
    ) -> TaskAlignedResult:
        """Assign the priors of ``B`` images to their padded boxes.

        Args:
            cls_logits: ``(B, P, C)`` class logits.
            pred_boxes: ``(B, P, 4)`` decoded ``xyxy`` boxes, in the boxes' coordinates.
            points: ``(P, 2)`` prior points ``(x, y)``.
            gts: padded boxes ``(B, G, 4)``, labels ``(B, G)`` in ``[0, C)``, mask ``(B, G)``.
            min_size: this call's ``min_size`` instead of the assigner's.
        """
        batch, num_priors = pred_boxes.shape[:2]
        if cls_logits.ndim != 3 or cls_logits.shape[:2] != (batch, num_priors):
            raise ValueError(f"`cls_logits` must be ({batch}, {num_priors}, C), got {tuple(cls_logits.shape)}")
        if pred_boxes.ndim != 3 or pred_boxes.shape[-1] != 4:
            raise ValueError(f"`pred_boxes` must be (B, P, 4), got {tuple(pred_boxes.shape)}")
        if points.shape != (num_priors, 2):
            raise ValueError(f"`points` must be ({num_priors}, 2), got {tuple(points.shape)}")
        if gts.boxes.shape[0] != batch:
            raise ValueError(f"`gts` holds {gts.boxes.shape[0]} images, the predictions {batch}")
        device = pred_boxes.device
        boxes, labels = gts.boxes.float(), gts.labels
        valid = gts.mask & (boxes.sum(-1) > 0) if self.conventions.nonpositive_sum_is_padding else gts.mask
        num_gts = boxes.shape[1]
        topk = min(self.topk, num_priors)
        pred = pred_boxes.float()
        region = _widened(boxes, self.min_size if min_size is None else min_size)
        budget = chunk_budget(self.max_elements, device, _BYTES_PER_TRIPLE, default=1 << 21)
        chunk = max(1, min(num_gts, budget // max(batch * num_priors, 1)))

        # Per box: its top-k priors with their metric and IoU. Per prior: the box it overlaps most so far.
        top_index, top_metric, top_iou = [], [], []
        best_iou = torch.full((batch, num_priors), -1.0, dtype=torch.float32, device=device)
        best_box = torch.zeros(batch, num_priors, dtype=torch.long, device=device)
        best_metric = torch.zeros(batch, num_priors, dtype=torch.float32, device=device)
        for start in range(0, num_gts, chunk):
            part = slice(start, start + chunk)
            metric, domain = run_kernel(
                _pair_terms,
                batch * num_gts * num_priors,  # the whole problem decides: every chunk takes the same path
                boxes[:, part],
                region[:, part],
                valid[:, part],
                labels[:, part],
                cls_logits,
                pred,
                points,
                self.alpha,
                self.beta,
                self.conventions.conflicts_among_candidates,
                min_elements=_COMPILE_MIN_PAIRS,
            )
            values, index = metric.topk(topk, dim=2)
            top_index.append(index)
            top_metric.append(values)
            top_iou.append(domain.gather(2, index))  # a claim is a candidate of a real box: its IoU is there
            chunk_iou, chunk_box = domain.max(dim=1)
            better = chunk_iou > best_iou
            best_iou = torch.where(better, chunk_iou, best_iou)
            best_box = torch.where(better, chunk_box + start, best_box)
            best_metric = torch.where(better, metric.gather(1, chunk_box[:, None]).squeeze(1), best_metric)

        index, metric, ious = (torch.cat(t, dim=1).flatten(1) for t in (top_index, top_metric, top_iou))
        claimed = metric > 0
        # Non-claims write into a spare column P; where a prior has one claim these scatters are exact.
        column = torch.where(claimed, index, num_priors)
        box_of = torch.arange(num_gts, dtype=torch.long, device=device).repeat_interleave(topk).expand(batch, -1)
        claims = torch.zeros(batch, num_priors + 1, dtype=torch.int32, device=device)
        claims.scatter_add_(1, column, torch.ones_like(column, dtype=torch.int32))
        claims = claims[:, :num_priors]
        one_box = torch.zeros(batch, num_priors + 1, dtype=torch.long, device=device).scatter_(1, column, box_of)
        one_metric = torch.zeros(batch, num_priors + 1, dtype=torch.float32, device=device).scatter_(1, column, metric)
        one_iou = torch.zeros(batch, num_priors + 1, dtype=torch.float32, device=device).scatter_(1, column, ious)
        several = claims > 1
        positive = claims > 0
        matched = torch.where(several, best_box, one_box[:, :num_priors])
        matched_metric = torch.where(several, best_metric, one_metric[:, :num_priors]) * positive
        matched_iou = torch.where(several, best_iou, one_iou[:, :num_priors]) * positive

        # Each box's largest metric and IoU over the positives finally matched to it (spare column G: negatives).
        slot = torch.where(positive, matched, num_gts)
        box_metric = torch.zeros(batch, num_gts + 1, dtype=torch.float32, device=device)
        box_metric = box_metric.scatter_reduce_(1, slot, matched_metric, "amax")
        box_iou = torch.zeros(batch, num_gts + 1, dtype=torch.float32, device=device)
        box_iou = box_iou.scatter_reduce_(1, slot, matched_iou, "amax")
        target = matched_metric * box_iou.gather(1, slot) / (box_metric.gather(1, slot) + self.eps)
        return TaskAlignedResult(
            torch.where(positive, matched + 1, 0),
            matched_iou,
            torch.where(positive, labels.gather(1, matched), -1),
            target,
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(topk={self.topk}, alpha={self.alpha}, beta={self.beta}, eps={self.eps}, "
            f"style={self.style!r}, min_size={self.min_size})"
        )


def _widened(boxes: Tensor, min_size: float | None) -> Tensor:
    """The boxes of the candidate test: as given, or with each side below ``min_size`` widened to it."""
    if min_size is None:
        return boxes
    # Through (center, size) and back, as ultralytics computes it: the same float operations, the same edges.
    center = (boxes[..., :2] + boxes[..., 2:]) / 2
    size = boxes[..., 2:] - boxes[..., :2]
    size = torch.where(size < min_size, torch.full_like(size, min_size), size) / 2
    return torch.cat([center - size, center + size], dim=-1)


def _pair_terms(
    boxes: Tensor,
    region: Tensor,
    valid: Tensor,
    labels: Tensor,
    cls_logits: Tensor,
    pred: Tensor,
    points: Tensor,
    alpha: float,
    beta: float,
    among_candidates: bool,
) -> tuple[Tensor, Tensor]:
    """``(B, g, P)`` alignment metric (0 off the candidates) and the IoU over which claims are settled.

    One pass over the (image, box, prior) pairs: through ``torch.compile`` (large chunks) it is a single loop
    that reads per-box and per-prior values and writes the two results. Per-box work (the arctangents of
    the aspect ratios) is done before the pairs, and the powers are products where they can be.
    """
    inside = _inside(points, region) & valid[..., None]
    ious = _pairwise_ciou(boxes, pred).clamp(0.0, 1.0)
    index = labels.clamp(min=0)[:, None, :].expand(-1, pred.shape[1], -1)
    scores = cls_logits.gather(2, index).float().sigmoid().transpose(1, 2)
    metric = _power(scores, alpha) * _power(ious, beta) * inside
    return metric, ious * (inside if among_candidates else valid[..., None])


def _pairwise_ciou(boxes: Tensor, pred: Tensor, eps: float = _CIOU_EPS) -> Tensor:
    """:func:`~lightning_losses.boxes.bbox_overlaps` ``mode="ciou"`` of ``(B, g, 4)`` × ``(B, P, 4)`` boxes, with each
    box's arctangent of its aspect ratio taken once per box rather than once per pair."""
    aspects = (aspect_arctan(boxes, eps)[:, :, None], aspect_arctan(pred, eps)[:, None, :])
    return broadcast_overlaps(boxes[:, :, None, :], pred[:, None, :, :], "ciou", eps, aspects)


def _power(x: Tensor, exponent: float) -> Tensor:
    """``x ** exponent``, as products for small whole exponents and a square root for 0.5 (no exp/log per pair)."""
    if exponent == 0.5:
        return x.sqrt()
    if exponent == int(exponent) and 0 <= exponent <= 8:
        result, base, n = torch.ones_like(x), x, int(exponent)
        while n:
            if n & 1:
                result = result * base
            base, n = base * base, n >> 1
        return result
    return x.pow(exponent)


def _inside(points: Tensor, boxes: Tensor) -> Tensor:
    """``(B, G, P)``: the point lies strictly inside the box."""
    x, y = points[:, 0], points[:, 1]
    box = boxes[..., None, :]
    low = torch.minimum(x - box[..., 0], y - box[..., 1])
    low = torch.minimum(low, torch.minimum(box[..., 2] - x, box[..., 3] - y))
    return low > 0
