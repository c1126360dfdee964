"""SimOTA (YOLOX) assignment, batched over images with padded boxes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import torch
from torch import Tensor

from lightning_losses.assigners.base import AssignResult, memory_budget
from lightning_losses.boxes.iou import bbox_overlaps
from lightning_losses.boxes.targets import PaddedTargets

__all__ = ["SIMOTA_STYLES", "SIMOTA_STYLE_TABLE", "SimOTAAssigner", "SimOTAStyle"]

_LOG_CLAMP = -100.0  # torch's binary_cross_entropy clamps each log term here

# Temporaries of one group's assignment, an upper bound: the peaks of its three kinds of tensors, added.
# Per (image, box, prior) triple: the candidate, unpenalised and pair masks (bool, 3 B) beside the pairwise
# IoU's float32 corners max/min (lt, rb: 8 B each), rb - lt and its clamp (8 each) and the overlap (4): 39,
# so 40 (the cost phase holds less: IoU, two gathered log terms, the cost and the masks, ~20). Per (image,
# prior, class): the float32 scores, log p, log(1 - p) and two of their temporaries, 20. Per (image, prior):
# masks, costs, int64 indices and results, 128. Measured on CPU, tracking live tensor storage: 47.6 B a
# triple at 64 boxes and 80 classes (the model: 40 + (20·80 + 128)/64 = 67); 1640 B an (image, prior) with
# one box and 80 classes (model 1768).
_BYTES_PER_TRIPLE = 40
_DEFAULT_TRIPLES = 1 << 20  # triples per group of images before budgets were read from memory
_BYTES_PER_PRIOR_CLASS = 20
_BYTES_PER_PRIOR = 128


@dataclass(frozen=True)
class SimOTAStyle:
    r"""Everything a SimOTA style chooses; :class:`SimOTAAssigner` reads these instead of its style's name.

    Attributes:
        name: the style's name.
        center_radius: default half-size of the center region around a box center, in strides.
        in_box_candidates: a prior strictly inside the box is a candidate too, and only a prior both in the
            box and in its center region escapes the penalty; ``False``: the center region alone decides both.
        penalty: cost added to a (box, prior) pair that does not escape it.
        iou_eps: :math:`\epsilon` of the IoU cost :math:`-\log(\mathrm{IoU} + \epsilon)`.
    """

    name: str
    center_radius: float
    in_box_candidates: bool
    penalty: float
    iou_eps: float


SIMOTA_STYLE_TABLE: Mapping[str, SimOTAStyle] = MappingProxyType(
    {
        "netspresso": SimOTAStyle("netspresso", center_radius=1.5, in_box_candidates=False, penalty=1e6, iou_eps=1e-8),
        "mmdet": SimOTAStyle("mmdet", center_radius=2.5, in_box_candidates=True, penalty=1e5, iou_eps=1e-7),
    }
)
SIMOTA_STYLES = tuple(SIMOTA_STYLE_TABLE)


class SimOTAAssigner:
    r"""SimOTA: each box takes its ``k`` cheapest candidate priors, ``k`` from the box's best IoUs.

    Candidates and cost depend on ``style``, whose choices are one :class:`SimOTAStyle` each:

    - ``"netspresso"`` (NetsPresso Trainer, official YOLOX): a prior is a candidate for a box when its
      center lies strictly inside the square ``box center ± center_radius · stride`` (radius 1.5); the
      cost adds ``1e6`` where the prior is not a candidate for that box; IoU cost ``-log(IoU + 1e-8)``.
    - ``"mmdet"`` (MMDetection's ``SimOTAAssigner``): a candidate lies strictly inside the box **or** within
      ``2.5 · stride`` of its center; the cost adds ``1e5`` unless the prior is both; ``-log(IoU + 1e-7)``.

    Priors that are candidates of no box are never matched. The cost of a (box, prior) pair is

    .. math::
        c = \sum_c \mathrm{BCE}\big(\sqrt{\sigma(x^{cls}_c)\,\sigma(x^{obj})}, [c = y]\big)
            + 3\,(-\log(\mathrm{IoU} + \epsilon)) + \text{penalty}

    each box takes its :math:`k = \max(1, \lfloor \sum \text{top-}\min(10, n)\ \mathrm{IoU} \rfloor)` cheapest
    candidates (:math:`n` = the image's candidates), and a prior claimed by several boxes keeps the cheapest.
    The cost is computed in float32 whatever the input dtype; images are processed in groups holding at
    most ``max_elements`` (image, box, prior) triples (one image at least); the grouping never changes the
    result.

    Args:
        style: ``"netspresso"`` or ``"mmdet"``.
        center_radius: half-size of the center region in strides (default 1.5 / 2.5 by style).
        candidate_topk: IoUs summed for the dynamic ``k``.
        iou_weight: weight of the IoU cost.
        cls_weight: weight of the classification cost.
        max_elements: (image, box, prior) triples per group of images: ``None`` (default) is 2^20, cut to what
            the memory available on the predictions' device allows
            (:func:`~lightning_losses.assigners.base.memory_budget`, 40 bytes of temporaries per triple plus
            20 per (image, prior, class) and 128 per (image, prior), shared by the image's boxes); an int is a
            fixed budget.
    """

    def __init__(
        self,
        style: str = "netspresso",
        center_radius: float | None = None,
        candidate_topk: int = 10,
        iou_weight: float = 3.0,
        cls_weight: float = 1.0,
        max_elements: int | None = None,
    ) -> None:
        if style not in SIMOTA_STYLE_TABLE:
            raise ValueError(f"`style` must be one of {SIMOTA_STYLES}, got {style!r}")
        self.style = style
        self.conventions = SIMOTA_STYLE_TABLE[style]
        self.center_radius = float(center_radius if center_radius is not None else self.conventions.center_radius)
        self.candidate_topk = int(candidate_topk)
        self.iou_weight = float(iou_weight)
        self.cls_weight = float(cls_weight)
        self.penalty = self.conventions.penalty
        self.iou_eps = self.conventions.iou_eps
        self.max_elements = None if max_elements is None else int(max_elements)

    @torch.no_grad()
    def assign(
        self,
        pred_boxes: Tensor,
        cls_logits: Tensor,
        obj_logits: Tensor,
        centers: Tensor,
        strides: Tensor,
        gts: PaddedTargets,
    ) -> AssignResult:
        """Assign priors of ``B`` images to their padded boxes.

        Args:
            pred_boxes: ``(B, P, 4)`` decoded xyxy boxes.
            cls_logits: ``(B, P, C)`` class logits.
            obj_logits: ``(B, P)`` objectness logits.
            centers: ``(P, 2)`` prior centers ``((x + 0.5)·s, (y + 0.5)·s)``.
            strides: ``(P,)`` stride of each prior.
            gts: padded boxes ``(B, G, 4)``, labels, mask.

        Returns:
            ``max_overlaps`` holds each positive's IoU with its box (0 elsewhere).
        """
        batch, num_priors = pred_boxes.shape[:2]
        num_gts = gts.mask.shape[1]
        budget = self._budget(pred_boxes.device, num_gts, cls_logits.shape[-1])
        group = max(1, budget // max(num_gts * num_priors, 1))
        parts = [
            self._assign(
                pred_boxes[s : s + group].float(),
                cls_logits[s : s + group].float(),
                obj_logits[s : s + group].float(),
                centers.float(),
                strides.float(),
                PaddedTargets(gts.boxes[s : s + group], gts.labels[s : s + group], gts.mask[s : s + group]),
            )
            for s in range(0, batch, group)
        ]
        return AssignResult(*(torch.cat(t) for t in zip(*parts, strict=True)))

    def _budget(self, device: torch.device, num_gts: int, num_classes: int) -> int:
        """Triples per group: ``max_elements``, or the memory budget with each image's per-class work shared by
        its boxes."""
        if self.max_elements is not None:
            return self.max_elements
        per_prior = _BYTES_PER_PRIOR_CLASS * num_classes + _BYTES_PER_PRIOR
        memory = memory_budget(device, _BYTES_PER_TRIPLE + per_prior / max(num_gts, 1))
        return min(memory, _DEFAULT_TRIPLES)  # the fixed default, cut where memory is scarcer

    def _candidates(self, centers: Tensor, strides: Tensor, gts: PaddedTargets) -> tuple[Tensor, Tensor]:
        """``(B, G, P)`` bools: candidate of the box, and pair that escapes the penalty."""
        boxes = gts.boxes[..., None, :]  # (B, G, 1, 4)
        x, y = centers[:, 0], centers[:, 1]
        gx = (boxes[..., 0] + boxes[..., 2]) / 2
        gy = (boxes[..., 1] + boxes[..., 3]) / 2
        radius = self.center_radius * strides
        in_center = _all_positive(x - (gx - radius), y - (gy - radius), (gx + radius) - x, (gy + radius) - y)
        in_center &= gts.mask[..., None]
        if not self.conventions.in_box_candidates:
            return in_center, in_center
        in_box = _all_positive(x - boxes[..., 0], y - boxes[..., 1], boxes[..., 2] - x, boxes[..., 3] - y)
        in_box &= gts.mask[..., None]
        return in_box | in_center, in_box & in_center

    def _assign(
        self,
        pred_boxes: Tensor,
        cls_logits: Tensor,
        obj_logits: Tensor,
        centers: Tensor,
        strides: Tensor,
        gts: PaddedTargets,
    ) -> AssignResult:
        batch, num_priors = pred_boxes.shape[:2]
        num_gts = gts.mask.shape[1]
        device = pred_boxes.device
        candidate, unpenalised = self._candidates(centers, strides, gts)
        valid = candidate.any(dim=1)  # (B, P): candidate of some box
        pair_valid = valid[:, None, :] & gts.mask[..., None]  # (B, G, P)

        ious = bbox_overlaps(gts.boxes, pred_boxes).masked_fill(~pair_valid, 0.0)  # (B, G, P)
        scores = (cls_logits.sigmoid() * obj_logits.sigmoid()[..., None]).sqrt()  # (B, P, C)
        log_p = scores.log().clamp(min=_LOG_CLAMP)
        log_not_p = torch.log1p(-scores).clamp(min=_LOG_CLAMP)
        # Σ_c BCE(p_c, onehot_c) = -Σ_c log(1 - p_c) - log p_y + log(1 - p_y)
        negatives = -log_not_p.sum(dim=-1)  # (B, P)
        labels = gts.labels.clamp(min=0)
        label_log_p = log_p.gather(2, labels[:, None, :].expand(-1, num_priors, -1)).transpose(1, 2)
        label_log_not_p = log_not_p.gather(2, labels[:, None, :].expand(-1, num_priors, -1)).transpose(1, 2)
        # In place on (B, G, P) temporaries, in the order of
        # cls_weight · cls_cost + iou_weight · -log(IoU + eps) + penalty · [penalised] (the same roundings).
        cost = (negatives[:, None, :] - label_log_p).add_(label_log_not_p).mul_(self.cls_weight)
        cost.add_(torch.log(ious + self.iou_eps).neg_().mul_(self.iou_weight))
        cost.add_(torch.where(unpenalised, 0.0, self.penalty))
        cost.masked_fill_(~pair_valid, float("inf"))

        # Dynamic k per box from its best IoUs over the image's candidates: non-candidates have IoU 0,
        # so the top-10 over all priors sums to the top-min(10, n) over the n candidates.
        topk = min(self.candidate_topk, num_priors)
        dynamic_k = ious.topk(topk, dim=2).values.sum(dim=2).int().clamp(min=1)  # (B, G)

        # Each box takes its k cheapest candidates.
        order = cost.topk(topk, dim=2, largest=False).indices  # (B, G, topk)
        take = torch.arange(topk, dtype=torch.long, device=device) < dynamic_k[..., None]
        take &= torch.isfinite(cost.gather(2, order))
        matching = torch.zeros(batch, num_gts, num_priors, dtype=torch.bool, device=device)
        matching.scatter_(2, order, take)

        # A prior claimed by several boxes keeps the cheapest box (over all boxes, first on ties).
        claimed = matching.sum(dim=1)  # (B, P)
        cheapest = cost.argmin(dim=1)  # (B, P)
        multi = claimed > 1
        matched_box = torch.where(multi, cheapest, matching.to(torch.uint8).argmax(dim=1))
        positive = claimed > 0
        gt_inds = torch.where(positive, matched_box + 1, 0)
        matched_iou = ious.gather(1, matched_box[:, None, :]).squeeze(1)
        labels_out = torch.where(positive, gts.labels.gather(1, matched_box), -1)
        return AssignResult(gt_inds, torch.where(positive, matched_iou, 0.0), labels_out)


def _all_positive(*sides: Tensor) -> Tensor:
    """``min(sides) > 0`` element-wise, without stacking the sides into one tensor."""
    low = sides[0]
    for side in sides[1:]:
        low = torch.minimum(low, side)
    return low > 0
