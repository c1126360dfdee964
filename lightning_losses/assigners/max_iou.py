"""Max-IoU assignment (RetinaNet), batched over images and chunked over priors."""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_losses.assigners.base import AssignResult, chunk_budget, chunk_size
from lightning_losses.boxes.iou import bbox_overlaps
from lightning_losses.boxes.targets import PaddedTargets

__all__ = ["MaxIoUAssigner"]

# Temporaries alive at once per (image, box, prior) triple, at the peak of a chunk: inside the pairwise IoU the
# float32 corners max/min (lt, rb: 8 B each), rb - lt and its clamp (wh: 8 each) and the overlap (4): 36 B;
# 40 with the per-prior running maxima shared by the boxes (the low-quality pass needs less: IoU, two bool
# masks and int64 box ids, 14 B). Measured on CPU, tracking live tensor storage: 36.6 B at 64 boxes.
_BYTES_PER_TRIPLE = 40


class MaxIoUAssigner:
    """Assign each prior to the box it overlaps most, by IoU thresholds, with low-quality matches.

    A prior is negative when ``0 <= max IoU < neg_iou_thr``, positive for its best box when
    ``max IoU >= pos_iou_thr``, ignored in between. With ``match_low_quality``, each box then claims
    the priors it overlaps most (every prior tied at that box's max IoU with ``gt_max_assign_all``,
    else the first), boxes in order so a later box overwrites an earlier one, provided the box's max
    IoU is ``>= min_pos_iou`` **and > 0**: a box that overlaps no prior assigns nothing.
    (MMDetection with ``min_pos_iou=0`` and torchvision's ``Matcher`` make every zero-IoU prior
    positive for such a box; that is a bug, not copied.) An image without boxes is all negative.

    The ``(B, G, P)`` IoU work is done in chunks of priors, in two passes (best box per prior and per box,
    then the low-quality step), so memory stays bounded; the chunking never changes the result.

    Args:
        pos_iou_thr: IoU at or above which a prior is positive.
        neg_iou_thr: IoU below which a prior is negative.
        min_pos_iou: lowest max-IoU with which a box may claim its low-quality matches.
        match_low_quality: run the low-quality step.
        gt_max_assign_all: the low-quality step claims every prior tied at the box's max IoU.
        low_quality_match: whom a claimed prior is matched to: ``"box"``, the box that claims it
            (MMDetection), or ``"best"``, the prior's own best box (torchvision's ``Matcher``, NetsPresso).
        max_elements: chunk budget: ``None`` (default) is 2^24 elements (4 per (image, box, prior) triple), cut
            to what the memory available on the priors' device allows
            (:func:`~lightning_losses.assigners.base.chunk_budget`, 40 bytes of temporaries per triple); an int
            is a fixed budget of elements.

    Example:
        >>> from lightning_losses.boxes.targets import pad_targets
        >>> priors = torch.tensor([[0.0, 0, 10, 10], [5, 5, 15, 15], [20, 20, 30, 30]])
        >>> gts = pad_targets([{"boxes": torch.tensor([[0.0, 0, 10, 12]]), "labels": torch.tensor([3])}])
        >>> MaxIoUAssigner().assign(priors, gts).gt_inds
        tensor([[1, 0, 0]])
    """

    def __init__(
        self,
        pos_iou_thr: float = 0.5,
        neg_iou_thr: float = 0.4,
        min_pos_iou: float = 0.0,
        match_low_quality: bool = True,
        gt_max_assign_all: bool = True,
        low_quality_match: str = "box",
        max_elements: int | None = None,
    ) -> None:
        if low_quality_match not in ("box", "best"):
            raise ValueError(f"`low_quality_match` must be 'box' or 'best', got {low_quality_match!r}")
        if neg_iou_thr > pos_iou_thr:
            raise ValueError(f"`neg_iou_thr` ({neg_iou_thr}) must not exceed `pos_iou_thr` ({pos_iou_thr})")
        self.pos_iou_thr = pos_iou_thr
        self.neg_iou_thr = neg_iou_thr
        self.min_pos_iou = min_pos_iou
        self.match_low_quality = match_low_quality
        self.gt_max_assign_all = gt_max_assign_all
        self.low_quality_match = low_quality_match
        self.max_elements = None if max_elements is None else int(max_elements)

    def _overlaps(self, gts: PaddedTargets, priors: Tensor, prior_mask: Tensor | None, start: int, stop: int) -> Tensor:
        # Padding boxes get IoU 0, which never beats a real box (ties go to the first, real, index);
        # priors outside `prior_mask` get -1, so they are neither matched nor anyone's best prior.
        overlaps = bbox_overlaps(gts.boxes, priors[start:stop]).masked_fill(~gts.mask[..., None], 0.0)
        if prior_mask is not None:
            overlaps = overlaps.masked_fill(~prior_mask[:, None, start:stop], -1.0)
        return overlaps

    @torch.no_grad()
    def assign(self, priors: Tensor, gts: PaddedTargets, prior_mask: Tensor | None = None) -> AssignResult:
        """Assign ``(P, 4)`` priors to the padded boxes of each image.

        Args:
            priors: ``(P, 4)`` xyxy, shared by the images.
            gts: padded boxes ``(B, G, 4)``, labels, mask.
            prior_mask: optional ``(B, P)`` bool of valid priors; the others are ignored (``gt_inds = -1``)
                and take no part in the matching.
        """
        priors = priors.float()  # IoUs are float32; half-precision states would round thresholds
        batch, num_gts = gts.mask.shape
        num_priors = priors.shape[0]
        device = priors.device
        max_ov = priors.new_zeros(batch, num_priors)
        if prior_mask is not None:
            max_ov = max_ov.masked_fill(~prior_mask, -1.0)
        argmax = torch.zeros(batch, num_priors, dtype=torch.long, device=device)
        gt_max = priors.new_full((batch, num_gts), -1.0)
        gt_argmax = torch.zeros(batch, num_gts, dtype=torch.long, device=device)
        budget = chunk_budget(self.max_elements, device, _BYTES_PER_TRIPLE, per_pair=4)
        step = chunk_size(batch, num_gts, num_priors, budget)
        chunks = [(start, min(start + step, num_priors)) for start in range(0, num_priors, step)]
        if num_gts:
            for start, stop in chunks:
                overlaps = self._overlaps(gts, priors, prior_mask, start, stop)
                max_ov[:, start:stop], argmax[:, start:stop] = overlaps.max(dim=1)
                chunk_max, chunk_arg = overlaps.max(dim=2)
                better = chunk_max > gt_max  # strict: the first prior holding the max stays
                gt_argmax = torch.where(better, chunk_arg + start, gt_argmax)
                gt_max = torch.where(better, chunk_max, gt_max)

        gt_inds = torch.full((batch, num_priors), -1, dtype=torch.long, device=device)
        gt_inds.masked_fill_((max_ov >= 0) & (max_ov < self.neg_iou_thr), 0)
        gt_inds = torch.where(max_ov >= self.pos_iou_thr, argmax + 1, gt_inds)

        if self.match_low_quality and num_gts:
            claims = gts.mask & (gt_max >= self.min_pos_iou) & (gt_max > 0)
            box_ids = torch.arange(1, num_gts + 1, dtype=torch.long, device=device).expand(batch, num_gts)
            # The last box (in order) that claims a prior wins, as if boxes overwrote one another.
            claimed = torch.zeros(batch, num_priors, dtype=torch.long, device=device)
            if self.gt_max_assign_all:
                for start, stop in chunks:
                    tied = (self._overlaps(gts, priors, prior_mask, start, stop) == gt_max[..., None]) & claims[
                        ..., None
                    ]
                    claimed[:, start:stop] = (tied * box_ids[..., None]).amax(dim=1)
            else:
                claimed.scatter_reduce_(1, gt_argmax, box_ids * claims, reduce="amax")
            matched = claimed if self.low_quality_match == "box" else argmax + 1
            gt_inds = torch.where(claimed > 0, matched, gt_inds)

        labels = torch.where(gt_inds > 0, gts.labels.gather(1, (gt_inds - 1).clamp(min=0)), -1)
        return AssignResult(gt_inds, max_ov, labels)
