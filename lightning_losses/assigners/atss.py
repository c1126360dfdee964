"""ATSS: adaptive training sample selection, batched over images, and the padded targets ATSS and GFL share."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from lightning_losses.assigners.base import AssignResult, chunk_budget
from lightning_losses.boxes.iou import bbox_overlaps
from lightning_losses.boxes.priors import AnchorGenerator, image_valid_flags
from lightning_losses.boxes.targets import PaddedTargets, gather_boxes, pad_targets
from lightning_losses.functional.kernels.runtime import run_kernel

__all__ = ["ATSSAssigner", "ATSSTargets", "atss_targets"]

# Temporaries alive at once per (image, prior, box) triple of a level's distance chunk, float32: dx, dy, their
# squares and their sum (20 B; the square root and the mask come after the squares are freed); 24 with room
# for top-k's working copy on a GPU. Measured on CPU, tracking live tensor storage: 20.2 B.
_BYTES_PER_TRIPLE = 24
_COMPILE_MIN_PAIRS = 1 << 18  # (image, box, prior) pairs from which the distance kernel is compiled


class ATSSAssigner:
    r"""Pick positives per box by a statistic of its closest priors' IoUs (Zhang et al., CVPR 2020).

    For each box: on every level take the :math:`\min(k, n_l)` priors whose centers are closest to
    the box center (Euclidean); over these candidates compute the IoU threshold
    :math:`t = \mu + \sigma` (mean plus unbiased standard deviation); a candidate is positive when its
    IoU is :math:`\ge t` and its center lies inside the box by more than 0.01. A prior positive for
    several boxes takes the one of highest IoU (the first on ties). An image without boxes is all negative.

    Args:
        topk: candidates per level :math:`k`.
        max_elements: budget of the (image, prior, box) distance work of one level, chunked over boxes:
            ``None`` (default) is 2^24 elements (3 per triple), cut to what the memory available on the priors'
            device allows (:func:`~lightning_losses.assigners.base.chunk_budget`, 24 bytes of temporaries per
            triple); an int is a fixed budget of elements. The chunking never changes the result.

    Example:
        >>> from lightning_losses.boxes.targets import pad_targets
        >>> priors = torch.tensor([[0.0, 0, 8, 8], [8, 0, 16, 8], [40, 40, 48, 48]])
        >>> gts = pad_targets([{"boxes": torch.tensor([[0.0, 0, 9, 8]]), "labels": torch.tensor([1])}])
        >>> ATSSAssigner(topk=3).assign(priors, [3], gts).gt_inds  # IoUs .89, .06, 0: threshold .81
        tensor([[1, 0, 0]])
    """

    def __init__(self, topk: int = 9, max_elements: int | None = None) -> None:
        if topk < 1:
            raise ValueError(f"`topk` must be >= 1, got {topk}")
        self.topk = int(topk)
        self.max_elements = None if max_elements is None else int(max_elements)

    def _candidates(
        self,
        prior_centers: Tensor,
        gt_centers: Tensor,
        num_level_priors: Sequence[int],
        prior_mask: Tensor | None,
    ) -> Tensor:
        """``(B, K, G)`` indices of the closest priors of every level, for every box (invalid priors last)."""
        batch, num_gts = gt_centers.shape[:2]
        pairs = batch * num_gts * sum(num_level_priors)  # the whole problem decides compilation for every level
        out = []
        start = 0
        budget = chunk_budget(self.max_elements, prior_centers.device, _BYTES_PER_TRIPLE, per_pair=3)
        for count in num_level_priors:
            k = min(self.topk, count)
            stop = start + count
            centers = prior_centers[start:stop]
            mask = None if prior_mask is None else prior_mask[:, start:stop]
            step = max(1, min(num_gts, budget // max(batch * count, 1)))
            level = []
            for g0 in range(0, num_gts, step):
                chunk = gt_centers[:, g0 : g0 + step]
                args = (chunk, centers, k) if mask is None else (chunk, centers, k, mask)
                level.append(run_kernel(_closest, pairs, *args, min_elements=_COMPILE_MIN_PAIRS) + start)
            out.append(torch.cat(level, dim=2))
            start = stop
        return torch.cat(out, dim=1)

    @torch.no_grad()
    def assign(
        self,
        priors: Tensor,
        num_level_priors: Sequence[int],
        gts: PaddedTargets,
        prior_mask: Tensor | None = None,
    ) -> AssignResult:
        """Assign ``(P, 4)`` priors (levels concatenated, ``num_level_priors`` each) to padded boxes.

        ``prior_mask`` ``(B, P)`` marks each image's valid priors (MMDetection's valid flags): the others
        are neither candidates nor positive, and a level's ``k`` is capped by its valid count.
        """
        priors = priors.float()
        batch, num_gts = gts.mask.shape
        num_priors = priors.shape[0]
        device = priors.device
        if sum(num_level_priors) != num_priors:
            raise ValueError(f"`num_level_priors` {list(num_level_priors)} does not add up to {num_priors} priors")
        if num_gts == 0 or num_priors == 0:
            zeros = torch.zeros(batch, num_priors, dtype=torch.long, device=device)
            return AssignResult(zeros, priors.new_zeros(batch, num_priors), zeros - 1)
        prior_centers = (priors[:, :2] + priors[:, 2:]) / 2
        gt_centers = (gts.boxes[..., :2] + gts.boxes[..., 2:]) / 2
        cand = self._candidates(prior_centers, gt_centers, num_level_priors, prior_mask)  # (B, K, G)
        cand_boxes = priors[cand]  # (B, K, G, 4)
        gt_boxes = gts.boxes[:, None].expand_as(cand_boxes)
        cand_ious = bbox_overlaps(cand_boxes, gt_boxes, is_aligned=True)  # (B, K, G)
        if prior_mask is None:
            cand_valid = None
            threshold = cand_ious.mean(dim=1, keepdim=True) + cand_ious.std(dim=1, keepdim=True)
        else:
            cand_valid = prior_mask.gather(1, cand.reshape(batch, -1)).reshape(cand.shape)
            count = cand_valid.sum(dim=1, keepdim=True)
            mean = (cand_ious * cand_valid).sum(dim=1, keepdim=True) / count
            var = ((cand_ious - mean).pow(2) * cand_valid).sum(dim=1, keepdim=True) / (count - 1)
            threshold = mean + var.sqrt()
        cx, cy = prior_centers[cand, 0], prior_centers[cand, 1]
        margin = torch.stack(
            [cx - gt_boxes[..., 0], cy - gt_boxes[..., 1], gt_boxes[..., 2] - cx, gt_boxes[..., 3] - cy]
        ).amin(dim=0)
        is_pos = (cand_ious >= threshold) & (margin > 0.01) & gts.mask[:, None, :]
        if cand_valid is not None:
            is_pos &= cand_valid

        # A prior positive for several boxes keeps the highest IoU, then the lowest box index.
        flat = cand.reshape(batch, -1)
        values = cand_ious.masked_fill(~is_pos, float("-inf")).reshape(batch, -1)
        best = priors.new_full((batch, num_priors), float("-inf"))
        best.scatter_reduce_(1, flat, values, reduce="amax")
        box_index = torch.arange(num_gts, dtype=torch.long, device=device).expand_as(cand).reshape(batch, -1)
        winner = is_pos.reshape(batch, -1) & (values == best.gather(1, flat))
        first = torch.full((batch, num_priors), num_gts, dtype=torch.long, device=device)
        first.scatter_reduce_(1, flat, box_index.masked_fill(~winner, num_gts), reduce="amin")
        positive = first < num_gts
        gt_inds = torch.where(positive, first + 1, 0)
        labels = torch.where(positive, gts.labels.gather(1, first.clamp(max=num_gts - 1)), -1)
        return AssignResult(gt_inds, best.masked_fill(~positive, 0.0), labels)


class ATSSTargets:
    """Assignment shared by ATSS and GFL: anchors, positives, labels, matched boxes (``(B, P, …)``) and the
    classification weight (0 on anchors outside an image's valid area)."""

    def __init__(
        self,
        anchors: Tensor,
        positive: Tensor,
        labels: Tensor,
        boxes: Tensor,
        num_pos_images: Tensor,
        label_weight: Tensor | None,
    ) -> None:
        self.label_weight = label_weight
        self.anchors = anchors
        self.positive = positive
        self.labels = labels
        self.boxes = boxes
        self.num_pos_images = num_pos_images

    def avg_factor(self) -> Tensor:
        """``Σ_img max(n_pos_img, 1)`` (before averaging over ranks)."""
        return self.num_pos_images.clamp(min=1).sum()


def atss_targets(
    generator: AnchorGenerator,
    assigner: ATSSAssigner,
    cls_scores: Sequence[Tensor],
    targets: Sequence[Mapping[str, Tensor]],
    priors: Tensor | None,
    image_size: Sequence[int] | Tensor | None = None,
) -> ATSSTargets:
    """Generate anchors (or take ``priors``), assign them with ATSS and gather each positive's box.

    ``cls_scores`` (per-level ``(B, ·, H_l, W_l)`` maps) give the batch and the grid sizes. With
    ``image_size`` (``(H, W)`` or per-image ``(B, 2)`` padded shapes) anchors on cells beyond an image's
    shape are left out of the assignment and of the classification loss, as MMDetection's valid flags do.
    ``labels`` are ``-1`` where not positive; negatives get their own anchor as box.
    """
    device = cls_scores[0].device
    sizes = [(int(m.shape[-2]), int(m.shape[-1])) for m in cls_scores]
    per_cell = generator.num_base_priors
    counts = [h * w * per_cell for h, w in sizes]
    if priors is None:
        priors = generator.priors(sizes, device)
    if priors.shape != (sum(counts), 4):
        raise ValueError(f"`priors` must have shape ({sum(counts)}, 4) for these outputs, got {tuple(priors.shape)}")
    priors = priors.float()
    gts: PaddedTargets = pad_targets(targets, device)
    prior_mask = None
    if image_size is not None:
        batch = cls_scores[0].shape[0]
        prior_mask = image_valid_flags(sizes, generator.strides, per_cell, image_size, batch, device)
    assign = assigner.assign(priors, counts, gts, prior_mask)
    positive = assign.positive
    matched = gather_boxes(gts.boxes, assign.matched)
    # Negatives get their own anchor as box, so every (zero-weight) quantity derived from it is finite.
    matched = torch.where(positive[..., None], matched, priors.expand_as(matched))
    label_weight = None if prior_mask is None else prior_mask.float()
    return ATSSTargets(priors, positive, assign.labels, matched, positive.sum(dim=1), label_weight)


def _closest(gt_centers: Tensor, centers: Tensor, k: int, mask: Tensor | None = None) -> Tensor:
    """``(B, k, g)`` indices of the ``k`` priors (``(n, 2)`` centres of one level) closest to each of the ``(B, g, 2)``
    box centres; priors off ``mask`` ``(B, n)`` are last. Through ``torch.compile`` (large problems) the distances
    are one loop before the top-k."""
    # x and y apart: a sum over a trailing dimension of 2 is a slow reduction; the values are the same
    dx = gt_centers[:, None, :, 0] - centers[None, :, None, 0]
    dy = gt_centers[:, None, :, 1] - centers[None, :, None, 1]
    distances = (dx * dx + dy * dy).sqrt()  # (B, n, g)
    if mask is not None:
        distances = distances.masked_fill(~mask[..., None], float("inf"))
    return distances.topk(k, dim=1, largest=False).indices
