"""Task-aligned YOLO, written out literally: ultralytics 8.4's ``v8DetectionLoss`` and NetsPresso Trainer 1.4.1's
``yolov9_loss``, from their stated semantics.

Per image, per box and per prior, with Python loops where the package has batched tensor code: the two
references' CIoU formulas (each with its own placement of ``eps``), the candidate test (ultralytics widens
sides below the second stride), the alignment metric :math:`s^\\alpha u^\\beta`, each box's top-k, conflicts
settled by IoU (over candidate boxes / over every box), the soft class targets, and the BCE, CIoU and DFL
terms with gains 0.5 / 7.5 / 1.5, normalised by the batch's target sum (at least 1).

Nothing here imports :mod:`lightning_losses`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["ciou_netspresso", "ciou_ultralytics", "task_aligned_assign", "yolov8_loss"]

EPS = 1e-7


def ciou_ultralytics(box1: Tensor, box2: Tensor, eps: float = EPS) -> Tensor:
    """ultralytics' ``bbox_iou(..., xywh=False, CIoU=True)``: ``eps`` on each height, the union and ``c²``."""
    b1x1, b1y1, b1x2, b1y2 = box1.unbind(-1)
    b2x1, b2y1, b2x2, b2y2 = box2.unbind(-1)
    w1, h1 = b1x2 - b1x1, b1y2 - b1y1 + eps
    w2, h2 = b2x2 - b2x1, b2y2 - b2y1 + eps
    inter = (torch.min(b1x2, b2x2) - torch.max(b1x1, b2x1)).clamp(min=0) * (
        torch.min(b1y2, b2y2) - torch.max(b1y1, b2y1)
    ).clamp(min=0)
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union
    cw = torch.max(b1x2, b2x2) - torch.min(b1x1, b2x1)
    ch = torch.max(b1y2, b2y2) - torch.min(b1y1, b2y1)
    c2 = cw**2 + ch**2 + eps
    rho2 = ((b2x1 + b2x2 - b1x1 - b1x2) ** 2 + (b2y1 + b2y2 - b1y1 - b1y2) ** 2) / 4
    v = (4 / math.pi**2) * (torch.atan(w2 / h2) - torch.atan(w1 / h1)) ** 2
    with torch.no_grad():
        alpha = v / (v - iou + (1 + eps))
    return iou - (rho2 / c2 + v * alpha)


def ciou_netspresso(box1: Tensor, box2: Tensor, eps: float = EPS) -> Tensor:
    """NetsPresso's ``calculate_iou(..., "ciou")``: ``eps`` on the union, ``c²`` and the heights in ``v``."""
    inter_w = (torch.min(box1[..., 2], box2[..., 2]) - torch.max(box1[..., 0], box2[..., 0])).clamp(min=0)
    inter_h = (torch.min(box1[..., 3], box2[..., 3]) - torch.max(box1[..., 1], box2[..., 1])).clamp(min=0)
    inter = inter_w * inter_h
    area1 = (box1[..., 2] - box1[..., 0]) * (box1[..., 3] - box1[..., 1])
    area2 = (box2[..., 2] - box2[..., 0]) * (box2[..., 3] - box2[..., 1])
    iou = inter / (area1 + area2 - inter + eps)
    cx1, cy1 = (box1[..., 2] + box1[..., 0]) / 2, (box1[..., 3] + box1[..., 1]) / 2
    cx2, cy2 = (box2[..., 2] + box2[..., 0]) / 2, (box2[..., 3] + box2[..., 1]) / 2
    distance = (cx1 - cx2) ** 2 + (cy1 - cy2) ** 2
    c_x = torch.max(box1[..., 2], box2[..., 2]) - torch.min(box1[..., 0], box2[..., 0])
    c_y = torch.max(box1[..., 3], box2[..., 3]) - torch.min(box1[..., 1], box2[..., 1])
    diou = iou - distance / (c_x**2 + c_y**2 + eps)
    arctan = torch.atan((box1[..., 2] - box1[..., 0]) / (box1[..., 3] - box1[..., 1] + eps)) - torch.atan(
        (box2[..., 2] - box2[..., 0]) / (box2[..., 3] - box2[..., 1] + eps)
    )
    v = (4 / math.pi**2) * arctan**2
    with torch.no_grad():
        alpha = v / (v - iou + 1 + eps)
    return diou - alpha * v


def _ciou(style: str):
    return ciou_ultralytics if style == "ultralytics" else ciou_netspresso


def task_aligned_assign(
    logits: Tensor,
    pred_boxes: Tensor,
    points: Tensor,
    boxes: Tensor,
    labels: Tensor,
    style: str,
    topk: int = 10,
    alpha: float = 0.5,
    beta: float = 6.0,
    eps: float = 1e-9,
    min_size: float | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """One image: ``(matched box (P,) or -1, soft class score (P,), IoU with the matched box (P,))``.

    ``logits`` ``(P, C)``, ``pred_boxes`` ``(P, 4)`` and ``boxes`` ``(G, 4)`` in pixels, ``points`` ``(P, 2)``.
    """
    num_priors, num_gts = points.shape[0], boxes.shape[0]
    ciou = _ciou(style)
    ious = torch.zeros(num_gts, num_priors, dtype=torch.float64)
    inside = torch.zeros(num_gts, num_priors, dtype=torch.bool)
    metric = torch.zeros(num_gts, num_priors, dtype=torch.float64)
    probs = logits.float().sigmoid().double()
    for g in range(num_gts):
        box = boxes[g]
        valid = style != "ultralytics" or float(box.sum()) > 0
        x1, y1, x2, y2 = box.tolist()
        if style == "ultralytics" and min_size is not None:
            # ultralytics' xyxy → xywh → (sides below the second stride set to it) → xyxy, in float32.
            cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
            w, h = box[2] - box[0], box[3] - box[1]
            w = torch.where(w < min_size, torch.tensor(min_size, dtype=w.dtype), w)
            h = torch.where(h < min_size, torch.tensor(min_size, dtype=h.dtype), h)
            x1, x2 = float(cx - w / 2), float(cx + w / 2)
            y1, y2 = float(cy - h / 2), float(cy + h / 2)
        row = ciou(box.expand(num_priors, 4), pred_boxes).clamp(0, 1)
        for p in range(num_priors):
            px, py = points[p].tolist()
            ious[g, p] = float(row[p])
            if style == "ultralytics":
                within = px - x1 > 1e-9 and py - y1 > 1e-9 and x2 - px > 1e-9 and y2 - py > 1e-9
            else:
                within = x1 < px < x2 and y1 < py < y2
            inside[g, p] = valid and within
            if inside[g, p]:
                metric[g, p] = float(probs[p, int(labels[g])]) ** alpha * float(row[p]) ** beta
    claims: list[list[int]] = [[] for _ in range(num_priors)]
    for g in range(num_gts):
        order = sorted(range(num_priors), key=lambda p: (-float(metric[g, p]), p))[:topk]
        for p in order:
            if metric[g, p] > 0:
                claims[p].append(g)
    matched = torch.full((num_priors,), -1, dtype=torch.long)
    for p in range(num_priors):
        if len(claims[p]) == 1:
            matched[p] = claims[p][0]
        elif len(claims[p]) > 1:
            best, best_iou = 0, -1.0
            for g in range(num_gts):
                eligible = bool(inside[g, p]) if style == "ultralytics" else True
                value = float(ious[g, p]) if eligible else 0.0
                if value > best_iou:
                    best, best_iou = g, value
            matched[p] = best
    scores = torch.zeros(num_priors, dtype=torch.float64)
    matched_iou = torch.zeros(num_priors, dtype=torch.float64)
    for g in range(num_gts):
        mine = [p for p in range(num_priors) if matched[p] == g]
        if not mine:
            continue
        top_metric = max(float(metric[g, p]) for p in mine)
        top_iou = max(float(ious[g, p]) for p in mine)
        for p in mine:
            scores[p] = float(metric[g, p]) * top_iou / (top_metric + eps)
            matched_iou[p] = ious[g, p]
    return matched, scores, matched_iou


def _flatten(maps: Sequence[Tensor], image: int) -> Tensor:
    """One image's per-level maps ``(B, ch, H, W)`` as rows ``(Σ H·W, ch)``, y-major per level."""
    return torch.cat([m[image].reshape(m.shape[1], -1).T for m in maps])


def _points(maps: Sequence[Tensor], strides: Sequence[int]) -> tuple[Tensor, Tensor]:
    points, stride = [], []
    for m, s in zip(maps, strides, strict=False):
        h, w = m.shape[-2:]
        for y in range(h):
            for x in range(w):
                points.append([x + 0.5, y + 0.5])
                stride.append(float(s))
    return torch.tensor(points), torch.tensor(stride)


def yolov8_loss(
    maps: Sequence[Tensor],
    targets: Sequence[Mapping[str, Tensor]],
    strides: Sequence[int],
    num_classes: int,
    reg_max: int,
    style: str,
    topk: int = 10,
) -> dict[str, Tensor]:
    """The three weighted terms of one batch of fused ``(B, 4·R + C, H, W)`` maps (box bins first)."""
    points, stride = _points(maps, strides)
    ciou = _ciou(style)
    min_size = float(strides[1] if len(strides) > 1 else strides[0]) if style == "ultralytics" else None
    cls_sum = box_sum = dfl_sum = 0.0
    score_sum = 0.0
    bins = torch.arange(reg_max, dtype=torch.float32)
    for image, target in enumerate(targets):
        rows = _flatten(maps, image)
        logits, bin_logits = rows[:, 4 * reg_max :], rows[:, : 4 * reg_max].reshape(-1, 4, reg_max)
        distances = (bin_logits.float().softmax(-1) * bins).sum(-1)
        pred = torch.cat([points - distances[:, :2], points + distances[:, 2:]], dim=1)  # in strides
        matched, scores, _ = task_aligned_assign(
            logits.detach(),
            (pred.detach() * stride[:, None]),
            points * stride[:, None],
            target["boxes"].float(),
            target["labels"],
            style,
            topk=topk,
            min_size=min_size,
        )
        class_target = torch.zeros(logits.shape, dtype=torch.float64)
        for p in range(points.shape[0]):
            if matched[p] >= 0:
                class_target[p, int(target["labels"][matched[p]])] = scores[p]
        cls_sum = cls_sum + F.binary_cross_entropy_with_logits(logits.double(), class_target, reduction="sum")
        score_sum += float(scores.sum())
        for p in range(points.shape[0]):
            if matched[p] < 0:
                continue
            weight = scores[p].to(torch.float32)
            box = target["boxes"][matched[p]].float() / stride[p]
            box_sum = box_sum + (1 - ciou(pred[p], box)) * weight
            sides = torch.stack(
                [points[p, 0] - box[0], points[p, 1] - box[1], box[2] - points[p, 0], box[3] - points[p, 1]]
            )
            sides = sides.clamp(0, reg_max - 1.01)
            side_losses = []
            for side in range(4):
                t = sides[side]
                left = int(torch.floor(t))
                weight_left = (left + 1) - t
                weight_right = t - left if style == "netspresso" else 1 - weight_left
                ce = -F.log_softmax(bin_logits[p, side].float(), dim=0)
                side_losses.append(ce[left] * weight_left + ce[left + 1] * weight_right)
            dfl_sum = dfl_sum + torch.stack(side_losses).mean() * weight
    norm = max(score_sum, 1.0)
    return {"loss_cls": 0.5 * cls_sum / norm, "loss_bbox": 7.5 * box_sum / norm, "loss_dfl": 1.5 * dfl_sum / norm}
