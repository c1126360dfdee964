"""NetsPresso Trainer 1.4.1 ``seg_cross_entropy``, ``yolofastest_loss`` and ``rtmcc_loss``, written out literally.

- ``seg_cross_entropy``: the logits resized bilinearly to the mask (``align_corners=False``: source coordinate
  ``(i + 0.5)·in/out - 0.5`` clamped at 0, the upper neighbour clamped to the last row), then torch's
  ``nn.CrossEntropyLoss(ignore_index=-100, label_smoothing=ε)``: ``(1 - ε)·(-log p_y) + ε·mean_c(-log p_c)``
  averaged over the pixels that are not ignored.
- ``yolofastest_loss``: per level ``A`` anchors of ``5 + C`` channels, rows ``(anchor, y, x)``; center
  ``(σ(t) + g)·s``, size ``2·(tanh(t/2 - 0.549306) + 1)·anchor``; per image SimOTA with the fixed center
  prior (cell center within ``1.5·s`` of the box center), cost ``BCE(sqrt(σcls·σobj)) + 3·(-log(IoU + 1e-8))
  + 1e6·[not in that box's center region]``, dynamic ``k`` from the top ``min(10, n)`` IoUs, a prior claimed
  twice kept by the cheaper box; ``5·Σ(1 - GIoU)``, objectness BCE over every prior and class BCE against
  one-hot × IoU, each summed over the batch and divided by ``max(#positives, 1)``. GIoU on cxcywh boxes with
  ``1e-7`` added to the union and the enclosing area clamped at ``1e-7``.
- ``rtmcc_loss``: keypoints ``(x, y, v)`` to SimCC labels one by one (bin ``round(2·p)``, half to even; a
  keypoint with ``v < 0.5`` keeps zero labels and weight ``v``; one whose ``±3σ`` range misses the 512 bins
  gets weight 0), then per axis ``mean_j KL(softmax(10·t) ‖ softmax(10·x))`` times the weight, summed over
  keypoints, images and axes, divided by ``K``.

Nothing here imports :mod:`lightning_losses`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "bilinear_resize",
    "netspresso_rtmcc",
    "netspresso_seg_cross_entropy",
    "netspresso_yolofastest",
    "simcc_label",
    "yolofastest_assign",
]


# --------------------------------------------------------------------------------------------------
# seg_cross_entropy
# --------------------------------------------------------------------------------------------------
def _source_index(out_size: int, in_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """Lower / upper source rows and the upper row's weight of each output row (align_corners=False)."""
    scale = in_size / out_size
    src = ((torch.arange(out_size, dtype=torch.float64) + 0.5) * scale - 0.5).clamp(min=0.0)
    low = src.floor().long().clamp(max=in_size - 1)
    high = (low + 1).clamp(max=in_size - 1)
    return low, high, src - low


def bilinear_resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    """``(B, K, h, w)`` to ``(B, K, H, W)`` by the bilinear rule above, one axis after the other."""
    y0, y1, wy = _source_index(size[0], x.shape[-2])
    x0, x1, wx = _source_index(size[1], x.shape[-1])
    wy = wy.to(x.dtype)[:, None]
    wx = wx.to(x.dtype)
    rows = x[..., y0, :] * (1 - wy) + x[..., y1, :] * wy
    return rows[..., x0] * (1 - wx) + rows[..., x1] * wx


def netspresso_seg_cross_entropy(
    pred: Tensor, mask: Tensor, ignore_index: int = -100, label_smoothing: float = 0.0
) -> Tensor:
    logits = bilinear_resize(pred, tuple(mask.shape[-2:]))
    log_p = torch.log_softmax(logits, dim=1).permute(0, 2, 3, 1).reshape(-1, pred.shape[1])
    labels = mask.reshape(-1)
    total = pred.sum() * 0
    count = 0
    for i in range(labels.shape[0]):
        label = int(labels[i])
        if label == ignore_index:
            continue
        total = total + (1 - label_smoothing) * -log_p[i, label] + label_smoothing * -log_p[i].mean()
        count += 1
    return total / count


# --------------------------------------------------------------------------------------------------
# yolofastest_loss
# --------------------------------------------------------------------------------------------------
def _cxcywh_iou_matrix(a: Tensor, b: Tensor) -> Tensor:
    """``(len(a), len(b))`` IoU of cxcywh boxes, no eps."""
    tl = torch.max(a[:, None, :2] - a[:, None, 2:] / 2, b[None, :, :2] - b[None, :, 2:] / 2)
    br = torch.min(a[:, None, :2] + a[:, None, 2:] / 2, b[None, :, :2] + b[None, :, 2:] / 2)
    inter = (br - tl).prod(-1) * (tl < br).all(-1).float()
    return inter / (a[:, None, 2:].prod(-1) + b[None, :, 2:].prod(-1) - inter)


def _cxcywh_giou(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise GIoU of cxcywh boxes, eps 1e-7 on the union, enclosing area clamped at 1e-7."""
    a_lt, a_rb = a[:, :2] - a[:, 2:] / 2, a[:, :2] + a[:, 2:] / 2
    b_lt, b_rb = b[:, :2] - b[:, 2:] / 2, b[:, :2] + b[:, 2:] / 2
    tl, br = torch.max(a_lt, b_lt), torch.min(a_rb, b_rb)
    inter = (br - tl).prod(-1) * (tl < br).all(-1).float()
    union = a[:, 2:].prod(-1) + b[:, 2:].prod(-1) - inter
    iou = inter / (union + 1e-7)
    enclose = (torch.max(a_rb, b_rb) - torch.min(a_lt, b_lt)).prod(-1)
    return iou - (enclose - union) / enclose.clamp(min=1e-7)


def yolofastest_assign(
    pred: Tensor, cls: Tensor, obj: Tensor, cells: Tensor, strides: Tensor, gt: Tensor, labels: Tensor, num_classes: int
) -> tuple[Tensor, Tensor, Tensor]:
    """One image: positives ``(P,)`` bool, matched box ``(n,)`` and its IoU ``(n,)`` (boxes in cxcywh)."""
    num_gt = gt.shape[0]
    centers = (cells + 0.5) * strides[:, None]
    in_region = torch.zeros(num_gt, centers.shape[0], dtype=torch.bool)
    for g in range(num_gt):
        radius = 1.5 * strides
        left = centers[:, 0] - (gt[g, 0] - radius)
        right = (gt[g, 0] + radius) - centers[:, 0]
        top = centers[:, 1] - (gt[g, 1] - radius)
        bottom = (gt[g, 1] + radius) - centers[:, 1]
        in_region[g] = torch.stack([left, top, right, bottom]).min(dim=0).values > 0
    candidate = in_region.any(dim=0)
    m = int(candidate.sum())
    ious = _cxcywh_iou_matrix(gt, pred[candidate])
    p = (cls[candidate].float().sigmoid() * obj[candidate].float().sigmoid()[:, None]).sqrt()
    onehot = F.one_hot(labels, num_classes).float()
    cls_cost = F.binary_cross_entropy(
        p[None].expand(num_gt, -1, -1), onehot[:, None].expand(-1, m, -1), reduction="none"
    )
    cost = cls_cost.sum(-1) + 3.0 * -torch.log(ious + 1e-8) + 1e6 * (~in_region[:, candidate]).float()
    dynamic_k = torch.clamp(ious.topk(min(10, m), dim=1).values.sum(1).int(), min=1)
    matching = torch.zeros(num_gt, m, dtype=torch.uint8)
    for g in range(num_gt):
        matching[g, cost[g].topk(int(dynamic_k[g]), largest=False).indices] = 1
    claims = matching.sum(0)
    for j in range(m):
        if claims[j] > 1:
            matching[:, j] = 0
            matching[cost[:, j].argmin(), j] = 1
    chosen = claims > 0
    positive = candidate.clone()
    positive[candidate.clone()] = chosen
    return positive, matching[:, chosen].argmax(0), (matching * ious).sum(0)[chosen]


def _decode(outputs: Sequence[Tensor], anchors: Sequence[Sequence[float]], img_size: int) -> tuple[Tensor, ...]:
    """Rows ``(level, anchor, y, x)``: raw ``(B, P, 5 + C)``, cxcywh boxes, cells ``(P, 2)``, strides ``(P,)``."""
    raws, boxes, cells, strides = [], [], [], []
    for out, level_anchors in zip(outputs, anchors, strict=True):
        sizes = torch.tensor(level_anchors, dtype=torch.float32).reshape(-1, 2)
        num_anchors = sizes.shape[0]
        batch, _, h, w = out.shape
        stride = img_size // w
        for a in range(num_anchors):
            block = out.reshape(batch, num_anchors, -1, h, w)[:, a]  # (B, 5 + C, H, W)
            raw = block.permute(0, 2, 3, 1).reshape(batch, h * w, -1)
            ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
            cell = torch.stack([xs, ys], -1).reshape(-1, 2).float()
            center = (raw[..., :2].sigmoid() + cell) * stride
            size = 2.0 * (torch.tanh(raw[..., 2:4] / 2 - 0.549306) + 1.0) * sizes[a]
            raws.append(raw)
            boxes.append(torch.cat([center, size], -1))
            cells.append(cell)
            strides.append(torch.full((h * w,), float(stride)))
    return torch.cat(raws, 1), torch.cat(boxes, 1), torch.cat(cells), torch.cat(strides)


def netspresso_yolofastest(
    outputs: Sequence[Tensor],
    targets: Sequence[dict[str, Tensor]],
    anchors: Sequence[Sequence[float]],
    img_size: int,
    num_classes: int,
) -> dict[str, Tensor]:
    """``{loss_bbox (5·GIoU term), loss_obj, loss_cls, num_fg}``; their sum is NetsPresso's value."""
    raw, pred, cells, strides = _decode(outputs, anchors, img_size)
    obj, cls = raw[..., 4], raw[..., 5:]
    giou_sum = obj_sum = cls_sum = raw.sum() * 0
    num_fg = 0
    for i, target in enumerate(targets):
        xyxy = target["boxes"]
        gt = torch.cat([(xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]], 1)
        obj_target = torch.zeros(raw.shape[1])
        if gt.shape[0]:
            with torch.no_grad():
                positive, matched, matched_iou = yolofastest_assign(
                    pred[i].detach(),
                    cls[i].detach(),
                    obj[i].detach(),
                    cells,
                    strides,
                    gt,
                    target["labels"],
                    num_classes,
                )
            obj_target[positive] = 1.0
            num_fg += int(positive.sum())
            giou_sum = giou_sum + (1 - _cxcywh_giou(pred[i][positive], gt[matched]).clamp(-1.0, 1.0)).sum()
            cls_target = F.one_hot(target["labels"][matched], num_classes).float() * matched_iou[:, None]
            cls_sum = cls_sum + F.binary_cross_entropy_with_logits(cls[i][positive], cls_target, reduction="sum")
        obj_sum = obj_sum + F.binary_cross_entropy_with_logits(obj[i], obj_target, reduction="sum")
    n = max(num_fg, 1)
    return {"loss_bbox": 5.0 * giou_sum / n, "loss_obj": obj_sum / n, "loss_cls": cls_sum / n, "num_fg": num_fg}


# --------------------------------------------------------------------------------------------------
# rtmcc_loss
# --------------------------------------------------------------------------------------------------
def simcc_label(
    x: float, y: float, v: float, bins: tuple[int, int] = (512, 512), ratio: float = 2.0, sigma: float = 5.66
) -> tuple[Tensor, Tensor, float]:
    """One keypoint's x labels, y labels and weight. ``x``, ``y`` are float32 values read into Python."""
    target_x, target_y = torch.zeros(bins[0]), torch.zeros(bins[1])
    if v < 0.5:
        return target_x, target_y, v
    mu_x = round(float(torch.tensor(x, dtype=torch.float32) * ratio))  # Python's round: half to even
    mu_y = round(float(torch.tensor(y, dtype=torch.float32) * ratio))
    radius = 3 * sigma
    if mu_x - radius >= bins[0] or mu_y - radius >= bins[1] or mu_x + radius + 1 < 0 or mu_y + radius + 1 < 0:
        return target_x, target_y, 0.0
    for j in range(bins[0]):
        target_x[j] = math.exp(-((j - mu_x) ** 2) / (2 * sigma**2))
    for j in range(bins[1]):
        target_y[j] = math.exp(-((j - mu_y) ** 2) / (2 * sigma**2))
    return target_x, target_y, v


def netspresso_rtmcc(pred: Tensor, keypoints: Tensor, beta: float = 10.0, label_beta: float = 10.0) -> Tensor:
    """``pred`` ``(N, K, 2·W)``, ``keypoints`` ``(N, K, 3)``; NetsPresso's bins are ``W = 512``."""
    num, joints, width = pred.shape
    bins = (width // 2, width // 2)
    total = pred.sum() * 0
    for n in range(num):
        for k in range(joints):
            x, y, v = (float(c) for c in keypoints[n, k])
            target_x, target_y, weight = simcc_label(x, y, v, bins)
            for logits, labels in ((pred[n, k, : bins[0]], target_x), (pred[n, k, bins[0] :], target_y)):
                log_p = torch.log_softmax(logits.float() * beta, dim=0)
                q = torch.softmax(labels * label_beta, dim=0)
                kl = torch.where(q > 0, q * (torch.log(q) - log_p), 0.0).mean()
                total = total + weight * kl
    return total / joints
