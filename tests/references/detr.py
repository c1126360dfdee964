"""Literal references of the DETR family: MMDetection 3.x's varifocal loss, the Hungarian cost of one (query, box)
pair, brute-force matching, and RT-DETR's / DETR's set criterion one image, query and class at a time.

Written from the stated semantics (MMDetection 3.x ``varifocal_loss``; RT-DETR's criterion as NetsPresso Trainer
1.4.1's ``detr_loss`` computes it; DETR's weighted cross-entropy) with Python scalars and loops; nothing here
imports :mod:`lightning_losses`.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F

EPS32 = torch.finfo(torch.float32).eps


def mm_reduce(loss, weight, reduction, avg_factor):
    """MMDetection 3.x's ``weight_reduce_loss``."""
    if weight is not None:
        loss = loss * weight
    if avg_factor is None:
        return {"none": loss, "mean": loss.mean(), "sum": loss.sum()}[reduction]
    if reduction == "mean":
        return loss.sum() / (avg_factor + EPS32)
    if reduction == "none":
        return loss
    raise ValueError("avg_factor can not be used with reduction='sum'")


def mm_varifocal(
    pred, target, weight=None, alpha=0.75, gamma=2.0, iou_weighted=True, reduction="mean", avg_factor=None
):
    """MMDetection 3.x's ``varifocal_loss``: 0/1 masks multiplied in, BCE written out with ``logsigmoid``."""
    pred_sigmoid = pred.sigmoid()
    pos = (target > 0.0).to(pred.dtype)
    neg = (target <= 0.0).to(pred.dtype)
    scale = target * pos if iou_weighted else pos
    focal_weight = scale + alpha * (pred_sigmoid - target).abs().pow(gamma) * neg
    bce = -(target * F.logsigmoid(pred) + (1 - target) * F.logsigmoid(-pred))
    return mm_reduce(bce * focal_weight, weight, reduction, avg_factor)


def soft_targets(n, c, dtype=torch.float32):
    """IoU-aware targets: one class per row holds an IoU in (0, 1), a third of the rows are negatives."""
    target = torch.zeros(n, c, dtype=dtype)
    rows = torch.arange(n)
    target[rows, torch.randint(0, c, (n,))] = torch.rand(n, dtype=dtype) * 0.9 + 0.05
    target[rows % 3 == 0] = 0.0
    return target


def corners(box):
    """``(cx, cy, w, h)`` → ``(x1, y1, x2, y2)`` of Python floats."""
    return box[0] - box[2] / 2, box[1] - box[3] / 2, box[0] + box[2] / 2, box[1] + box[3] / 2


def iou_giou(a, b):
    """IoU and GIoU of two ``cxcywh`` boxes from their definitions."""
    ax1, ay1, ax2, ay2 = corners(a)
    bx1, by1, bx2, by2 = corners(b)
    inter = max(0.0, min(ax2, bx2) - max(ax1, bx1)) * max(0.0, min(ay2, by2) - max(ay1, by1))
    union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
    hull = (max(ax2, bx2) - min(ax1, bx1)) * (max(ay2, by2) - min(ay1, by1))
    return inter / union, inter / union - (hull - union) / hull


def pair_cost(row, box, gt, label, weights=(2.0, 5.0, 2.0), class_cost="focal", alpha=0.25, gamma=2.0):
    """The matching cost of one query (logits ``row``, ``cxcywh`` ``box``) and one box ``gt`` of class ``label``."""
    w_cls, w_bbox, w_giou = weights
    if class_cost == "softmax":
        c = -math.exp(row[label]) / sum(math.exp(v) for v in row)
    else:
        p = 1 / (1 + math.exp(-row[label]))
        c = alpha * (1 - p) ** gamma * -math.log(p + 1e-8) - (1 - alpha) * p**gamma * -math.log(1 - p + 1e-8)
    l1 = sum(abs(u - v) for u, v in zip(box, gt, strict=True))
    return w_cls * c + w_bbox * l1 - w_giou * iou_giou(box, gt)[1]


def cost_matrix(logits, boxes, gts, labels, **kwargs):
    """``(Q, M)`` float64 cost of one image, one pair at a time."""
    rows, qboxes, gboxes = logits.double().tolist(), boxes.double().tolist(), gts.double().tolist()
    out = torch.zeros(len(rows), len(gboxes), dtype=torch.float64)
    for q, (row, box) in enumerate(zip(rows, qboxes, strict=True)):
        for j, (gt, label) in enumerate(zip(gboxes, labels.tolist(), strict=True)):
            out[q, j] = pair_cost(row, box, gt, label, **kwargs)
    return out


def brute_force(cost):
    """Least total cost over every injective map box → query of a ``(Q, n)`` cost: (total, query of each box)."""
    queries, n = cost.shape
    best, best_perm = math.inf, None
    for perm in itertools.permutations(range(queries), n):
        total = sum(float(cost[q, j]) for j, q in enumerate(perm))
        if total < best:
            best, best_perm = total, perm
    return best, list(best_perm)


def _sigmoid_bce(x, t):
    return max(x, 0.0) - x * t + math.log1p(math.exp(-abs(x)))


def set_terms(logits, boxes, gts, labels, pairs, normaliser, classification, alpha, gamma, eos_coef):
    """Classification, L1 and GIoU sums of one set of predictions over all images, divided as the criterion does.

    ``pairs[b]`` maps box ``j`` of image ``b`` to its query. Returns unweighted ``(cls, bbox, giou)`` floats.
    """
    cls = bbox = giou = 0.0
    ce_weights = 0.0
    for b, (rows, qboxes) in enumerate(zip(logits.double().tolist(), boxes.double().tolist(), strict=True)):
        owner = {q: j for j, q in pairs[b]}
        for q, row in enumerate(rows):
            j = owner.get(q)
            label = labels[b][j] if j is not None else None
            if classification == "ce":
                target = label if label is not None else len(row) - 1
                weight = 1.0 if label is not None else eos_coef
                lse = math.log(sum(math.exp(v) for v in row))
                cls += weight * (lse - row[target])
                ce_weights += weight
                continue
            iou = iou_giou(qboxes[q], gts[b][j])[0] if j is not None else 0.0
            for c, x in enumerate(row):
                p = 1 / (1 + math.exp(-x))
                hit = label == c
                if classification == "vfl":
                    t = iou if hit else 0.0
                    w = t if hit else alpha * p**gamma  # RT-DETR: a matched class weighs its IoU, even 0
                    cls += w * _sigmoid_bce(x, t)
                else:
                    t = 1.0 if hit else 0.0
                    p_t = p * t + (1 - p) * (1 - t)
                    a_t = alpha * t + (1 - alpha) * (1 - t)
                    cls += a_t * (1 - p_t) ** gamma * _sigmoid_bce(x, t)
        for j, q in pairs[b]:
            bbox += sum(abs(u - v) for u, v in zip(qboxes[q], gts[b][j], strict=True))
            giou += 1 - iou_giou(qboxes[q], gts[b][j])[1]
    if classification == "ce":
        return cls / ce_weights, bbox / normaliser, giou / normaliser
    return cls / normaliser, bbox / normaliser, giou / normaliser


def detr_terms(
    sets,
    dn_sets,
    dn_positive_idx,
    num_groups,
    targets,
    image_size,
    classification="vfl",
    weights=(1.0, 5.0, 2.0),
    alpha=0.75,
    gamma=2.0,
    eos_coef=0.1,
    matcher_kwargs=None,
):
    """RT-DETR's / DETR's criterion: ``sets`` is ``[(suffix, logits, boxes)]`` matched by brute force one image at a
    time; ``dn_sets`` ``[(suffix, logits, boxes)]`` use ``dn_positive_idx``. Returns ``{term + suffix: float}``."""
    height, width = image_size
    gts = [
        [
            [(x1 + x2) / 2 / width, (y1 + y2) / 2 / height, (x2 - x1) / width, (y2 - y1) / height]
            for x1, y1, x2, y2 in t["boxes"].double().tolist()
        ]
        for t in targets
    ]
    labels = [t["labels"].tolist() for t in targets]
    normaliser = max(sum(len(g) for g in gts), 1)
    name = f"loss_{classification}"
    out = {}
    for suffix, logits, boxes in sets:
        pairs = []
        for b in range(len(targets)):
            if not gts[b]:
                pairs.append([])
                continue
            cost = cost_matrix(
                logits[b], boxes[b], torch.tensor(gts[b]), torch.tensor(labels[b]), **(matcher_kwargs or {})
            )
            pairs.append(list(enumerate(brute_force(cost)[1])))
        values = set_terms(logits, boxes, gts, labels, pairs, normaliser, classification, alpha, gamma, eos_coef)
        out.update(
            {
                f"{term}{suffix}": w * v
                for term, w, v in zip((name, "loss_bbox", "loss_giou"), weights, values, strict=True)
            }
        )
    for suffix, logits, boxes in dn_sets:
        pairs = []
        for b, index in enumerate(dn_positive_idx):
            n = len(gts[b])
            pairs.append([(k % n, q) for k, q in enumerate(index.tolist())] if n else [])
        values = set_terms(
            logits, boxes, gts, labels, pairs, normaliser * num_groups, classification, alpha, gamma, eos_coef
        )
        out.update(
            {
                f"{term}{suffix}": w * v
                for term, w, v in zip((name, "loss_bbox", "loss_giou"), weights, values, strict=True)
            }
        )
    return out
