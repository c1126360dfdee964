"""MMDetection 3.x dense-head machinery and ``RetinaHead.loss_by_feat``, per image and per level, literally.

The machinery (``multi_apply``, ``images_to_levels``, ``unmap``, ``AnchorHead.get_targets`` with the
pseudo sampler and ``allowed_border = -1``) is shared with the ATSS / GFL heads
(:mod:`tests.references.mmdet_atss_gfl`). Defaults are RetinaNet's config, single process
(``reduce_mean`` is the identity). Each head returns ``{term: [per-level scalars]}``, which :func:`total`
turns into the value mmengine's ``parse_losses`` would log.

Nothing here imports :mod:`lightning_losses`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import torch
from torch import Tensor

from tests.references.mmdet_assigners import mmdet_max_iou_assign, pseudo_sample
from tests.references.mmdet_boxes import anchor_valid_flags, delta_encode, grid_anchors
from tests.references.mmdet_losses import focal_loss, l1_loss, smooth_l1_loss

__all__ = [
    "RETINA_ANCHORS",
    "STRIDES",
    "anchor_get_targets",
    "featmap_sizes_of",
    "images_to_levels",
    "multi_apply",
    "retinanet_assign",
    "retinanet_loss_by_feat",
    "retinanet_targets",
    "total",
    "unmap",
]

STRIDES = (8, 16, 32, 64, 128)


def multi_apply(func: Callable, *args, **kwargs) -> tuple[list, ...]:
    results = map(partial(func, **kwargs), *args)
    return tuple(map(list, zip(*results, strict=True)))


def images_to_levels(target: list[Tensor], num_levels: list[int]) -> list[Tensor]:
    target = torch.stack(target, 0)
    level_targets = []
    start = 0
    for n in num_levels:
        end = start + n
        level_targets.append(target[:, start:end])
        start = end
    return level_targets


def unmap(data: Tensor, count: int, inds: Tensor, fill: float = 0) -> Tensor:
    if data.dim() == 1:
        ret = data.new_full((count,), fill)
        ret[inds.type(torch.bool)] = data
    else:
        ret = data.new_full((count, *data.size()[1:]), fill)
        ret[inds.type(torch.bool), :] = data
    return ret


# ------------------------------------------------------------------------------------------------
# AnchorHead.get_targets (RetinaNet, ATSS, GFL)


def _anchor_targets_single(
    flat_anchors: Tensor,
    valid_flags: Tensor,
    num_level_anchors: list[int],
    gt_bboxes: Tensor,
    gt_labels: Tensor,
    num_classes: int,
    assign: Callable[[Tensor, list[int], Tensor, Tensor], tuple[Tensor, Tensor]],
    encode: Callable[[Tensor, Tensor], Tensor] | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, int]:
    """One image: (anchors, labels, label_weights, bbox_targets, bbox_weights, num_pos), unmapped."""
    inside_flags = valid_flags  # allowed_border = -1
    anchors = flat_anchors[inside_flags, :]
    split = torch.split(inside_flags, num_level_anchors)
    num_level_inside = [int(flags.sum()) for flags in split]
    gt_inds, assigned_labels = assign(anchors, num_level_inside, gt_bboxes, gt_labels)
    pos_inds, neg_inds = pseudo_sample(gt_inds)
    num_valid = anchors.shape[0]
    bbox_targets = torch.zeros_like(anchors)
    bbox_weights = torch.zeros_like(anchors)
    labels = anchors.new_full((num_valid,), num_classes, dtype=torch.long)
    label_weights = anchors.new_zeros(num_valid, dtype=torch.float)
    if len(pos_inds) > 0:
        pos_gt_bboxes = gt_bboxes[gt_inds[pos_inds] - 1]
        pos_bbox_targets = pos_gt_bboxes if encode is None else encode(anchors[pos_inds], pos_gt_bboxes)
        bbox_targets[pos_inds, :] = pos_bbox_targets
        bbox_weights[pos_inds, :] = 1.0
        labels[pos_inds] = assigned_labels[pos_inds]
        label_weights[pos_inds] = 1.0
    if len(neg_inds) > 0:
        label_weights[neg_inds] = 1.0
    num_total = flat_anchors.size(0)
    anchors = unmap(anchors, num_total, inside_flags)
    labels = unmap(labels, num_total, inside_flags, fill=num_classes)
    label_weights = unmap(label_weights, num_total, inside_flags)
    bbox_targets = unmap(bbox_targets, num_total, inside_flags)
    bbox_weights = unmap(bbox_weights, num_total, inside_flags)
    return anchors, labels, label_weights, bbox_targets, bbox_weights, len(pos_inds)


def anchor_get_targets(
    anchor_list: list[list[Tensor]],
    valid_flag_list: list[list[Tensor]],
    targets: Sequence[dict],
    num_classes: int,
    assign: Callable,
    encode: Callable | None,
) -> tuple[list[Tensor], ...]:
    """Per level: anchors, labels, label_weights, bbox_targets, bbox_weights (B, n_l, ...); avg_factor."""
    num_level_anchors = [a.size(0) for a in anchor_list[0]]
    concat_anchors = [torch.cat(a) for a in anchor_list]
    concat_flags = [torch.cat(f) for f in valid_flag_list]
    results = multi_apply(
        _anchor_targets_single,
        concat_anchors,
        concat_flags,
        [num_level_anchors] * len(targets),
        [t["boxes"].float() for t in targets],
        [t["labels"].long() for t in targets],
        num_classes=num_classes,
        assign=assign,
        encode=encode,
    )
    all_anchors, all_labels, all_label_weights, all_bbox_targets, all_bbox_weights, num_pos = results
    avg_factor = sum(max(n, 1) for n in num_pos)
    return (
        images_to_levels(all_anchors, num_level_anchors),
        images_to_levels(all_labels, num_level_anchors),
        images_to_levels(all_label_weights, num_level_anchors),
        images_to_levels(all_bbox_targets, num_level_anchors),
        images_to_levels(all_bbox_weights, num_level_anchors),
        avg_factor,
    )


def featmap_sizes_of(maps: Sequence[Tensor]) -> list[tuple[int, int]]:
    return [(int(m.shape[-2]), int(m.shape[-1])) for m in maps]


def total(losses: dict) -> dict[str, Tensor]:
    """mmengine's parse_losses: a list of per-level scalars is summed, a scalar kept."""
    return {k: (sum(v) if isinstance(v, list) else v) for k, v in losses.items()}


# ------------------------------------------------------------------------------------------------
# RetinaHead


RETINA_ANCHORS = {"octave_base_scale": 4, "scales_per_octave": 3, "ratios": (0.5, 1.0, 2.0)}


def retinanet_assign(priors: Tensor, gt_bboxes: Tensor, gt_labels: Tensor) -> tuple[Tensor, Tensor]:
    """RetinaNet's ``MaxIoUAssigner(0.5, 0.4, min_pos_iou=0)`` as MMDetection runs it: ``(gt_inds, labels)``."""
    gt_inds, _, labels = mmdet_max_iou_assign(
        priors,
        gt_bboxes,
        gt_labels,
        pos_iou_thr=0.5,
        neg_iou_thr=0.4,
        min_pos_iou=0.0,
        skip_boxes_overlapping_nothing=False,
    )
    return gt_inds, labels


def retinanet_targets(
    cls_scores: Sequence[Tensor],
    targets: Sequence[dict],
    num_classes: int,
    strides: Sequence[int] = STRIDES,
    pad_shapes: Sequence[tuple[int, int]] | None = None,
    anchors: list[Tensor] | None = None,
) -> tuple[list[Tensor], ...]:
    """``anchors`` (one tensor per level) replace the generated ones (then ``pad_shapes`` must be None)."""
    sizes = featmap_sizes_of(cls_scores)
    batch = cls_scores[0].shape[0]
    if anchors is None:
        anchors = grid_anchors(sizes, strides, **RETINA_ANCHORS)
    num_base = len(RETINA_ANCHORS["ratios"]) * RETINA_ANCHORS["scales_per_octave"]
    anchor_list = [anchors for _ in range(batch)]
    if pad_shapes is None:
        valid_flag_list = [[torch.ones(a.shape[0], dtype=torch.bool) for a in anchors] for _ in range(batch)]
    else:
        valid_flag_list = [anchor_valid_flags(sizes, strides, num_base, pad) for pad in pad_shapes]

    def assign(priors, _num_level, gt_bboxes, gt_labels):
        return retinanet_assign(priors, gt_bboxes, gt_labels)

    def encode(p, g):
        return delta_encode(p, g, (0.0,) * 4, (1.0,) * 4)

    return anchor_get_targets(anchor_list, valid_flag_list, targets, num_classes, assign, encode)


def retinanet_loss_by_feat(
    cls_scores: Sequence[Tensor],
    bbox_preds: Sequence[Tensor],
    targets: Sequence[dict],
    num_classes: int,
    strides: Sequence[int] = STRIDES,
    pad_shapes: Sequence[tuple[int, int]] | None = None,
    loss_bbox: str = "smooth_l1",
    beta: float = 1.0,
    anchors: list[Tensor] | None = None,
) -> dict[str, list[Tensor]]:
    """AnchorHead.loss_by_feat with the RetinaNet config (box loss: SmoothL1(beta) or L1)."""
    _, labels_list, label_weights_list, bbox_targets_list, bbox_weights_list, avg_factor = retinanet_targets(
        cls_scores, targets, num_classes, strides, pad_shapes, anchors
    )

    def single(cls_score, bbox_pred, labels, label_weights, bbox_targets, bbox_weights):
        labels = labels.reshape(-1)
        label_weights = label_weights.reshape(-1)
        cls_score = cls_score.permute(0, 2, 3, 1).reshape(-1, num_classes)
        loss_cls = focal_loss(cls_score, labels, label_weights, avg_factor=avg_factor)
        bbox_targets = bbox_targets.reshape(-1, 4)
        bbox_weights = bbox_weights.reshape(-1, 4)
        bbox_pred = bbox_pred.permute(0, 2, 3, 1).reshape(-1, 4)
        if loss_bbox == "l1":
            loss_box = l1_loss(bbox_pred, bbox_targets, bbox_weights, avg_factor)
        else:
            loss_box = smooth_l1_loss(bbox_pred, bbox_targets, bbox_weights, avg_factor, beta=beta)
        return loss_cls, loss_box

    losses_cls, losses_bbox = multi_apply(
        single, cls_scores, bbox_preds, labels_list, label_weights_list, bbox_targets_list, bbox_weights_list
    )
    return {"loss_cls": losses_cls, "loss_bbox": losses_bbox}
