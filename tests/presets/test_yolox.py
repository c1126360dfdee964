"""YOLOXCriterion against a literal per-image NetsPresso Trainer ``yolox_loss`` reference (NetsPresso Trainer 1.4.1).

``reference_yolox`` decodes the fused maps per level with the cell grid, converts the boxes to cxcywh,
assigns each image on its own (center prior 1.5·stride, cost ``BCE(sqrt(σcls·σobj)) + 3·(-log(IoU + 1e-8))
+ 1e6``, dynamic k, conflicts by cost argmin) and sums the four terms over the batch divided by
``max(#positives, 1)``; the IoU term is ``5·Σ(1 - IoU²)`` with the union + 1e-7.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from lightning_losses import YOLOXCriterion

pytestmark = pytest.mark.usefixtures("single_intra_op_thread")

STRIDES = (8, 16, 32)
IMAGE = 128


# --------------------------------------------------------------------------------------------------
# Independent reference
# --------------------------------------------------------------------------------------------------
def cxcywh_iou_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(len(a), len(b)) IoU of cxcywh boxes, no eps (bboxes_iou(xyxy=False))."""
    tl = torch.max(a[:, None, :2] - a[:, None, 2:] / 2, b[None, :, :2] - b[None, :, 2:] / 2)
    br = torch.min(a[:, None, :2] + a[:, None, 2:] / 2, b[None, :, :2] + b[None, :, 2:] / 2)
    inside = (tl < br).all(dim=-1).float()
    inter = (br - tl).prod(dim=-1) * inside
    return inter / (a[:, None, 2:].prod(-1) + b[None, :, 2:].prod(-1) - inter)


def cxcywh_iou_aligned(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise IoU of cxcywh boxes with 1e-7 added to the union (calculate_iou)."""
    tl = torch.max(a[:, :2] - a[:, 2:] / 2, b[:, :2] - b[:, 2:] / 2)
    br = torch.min(a[:, :2] + a[:, 2:] / 2, b[:, :2] + b[:, 2:] / 2)
    inter = (br - tl).prod(-1) * (tl < br).all(-1).float()
    return inter / (a[:, 2:].prod(-1) + b[:, 2:].prod(-1) - inter + 1e-7)


def reference_assign(pred_cxcywh, cls, obj, shifts, strides, gt_cxcywh, gt_labels, num_classes):
    """NetsPresso get_assignments + simota_matching for one image: (fg (P,) bool, matched gt (n,), IoU (n,))."""
    num_gt = gt_cxcywh.shape[0]
    centers = (shifts + 0.5) * strides[:, None]
    radius = 1.5 * strides
    in_centers = torch.zeros(num_gt, centers.shape[0], dtype=torch.bool)
    for g in range(num_gt):
        cx, cy = gt_cxcywh[g, 0], gt_cxcywh[g, 1]
        deltas = torch.stack(
            [
                centers[:, 0] - (cx - radius),
                (cx + radius) - centers[:, 0],
                centers[:, 1] - (cy - radius),
                (cy + radius) - centers[:, 1],
            ]
        )
        in_centers[g] = deltas.min(dim=0).values > 0
    fg = in_centers.any(dim=0)
    geometry = in_centers[:, fg]
    m = int(fg.sum())
    ious = cxcywh_iou_matrix(gt_cxcywh, pred_cxcywh[fg])
    p = (cls[fg].float().sigmoid() * obj[fg].float().sigmoid()[:, None]).sqrt()
    onehot = F.one_hot(gt_labels, num_classes).float()
    cls_cost = F.binary_cross_entropy(
        p[None].expand(num_gt, -1, -1), onehot[:, None].expand(-1, m, -1), reduction="none"
    )
    cost = cls_cost.sum(-1) + 3.0 * -torch.log(ious + 1e-8) + 1e6 * (~geometry).float()
    dynamic_k = torch.clamp(ious.topk(min(10, m), dim=1).values.sum(1).int(), min=1)
    matching = torch.zeros(num_gt, m, dtype=torch.uint8)
    for g in range(num_gt):
        matching[g, cost[g].topk(int(dynamic_k[g]), largest=False).indices] = 1
    claims = matching.sum(0)
    for j in torch.nonzero(claims > 1).flatten().tolist():
        matching[:, j] = 0
        matching[cost[:, j].argmin(), j] = 1
    chosen = claims > 0
    fg_full = fg.clone()
    fg_full[fg.clone()] = chosen
    matched = matching[:, chosen].argmax(0)
    matched_iou = (matching * ious).sum(0)[chosen]
    return fg_full, matched, matched_iou


def reference_yolox(outputs, targets, num_classes, strides=STRIDES, use_l1=True):
    """NetsPresso yolox_loss, returning the terms as {loss_bbox (5·IoU term), loss_obj, loss_cls, loss_l1}."""
    raws, shifts, level_strides = [], [], []
    for out, s in zip(outputs, strides, strict=True):
        b, ch, h, w = out.shape
        raws.append(out.permute(0, 2, 3, 1).reshape(b, h * w, ch))
        ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        shifts.append(torch.stack([xs, ys], -1).reshape(-1, 2).float())
        level_strides.append(torch.full((h * w,), float(s)))
    raw = torch.cat(raws, 1)
    shift = torch.cat(shifts)
    stride = torch.cat(level_strides)
    pred = torch.cat([(raw[..., :2] + shift) * stride[:, None], raw[..., 2:4].exp() * stride[:, None]], -1)
    obj, cls = raw[..., 4], raw[..., 5:]

    iou_sum = obj_sum = cls_sum = l1_sum = 0.0
    num_fg = 0
    for i, target in enumerate(targets):
        xyxy = target["boxes"]
        gt = torch.cat([(xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]], 1)
        obj_target = torch.zeros(raw.shape[1])
        if gt.shape[0]:
            with torch.no_grad():
                fg, matched, matched_iou = reference_assign(
                    pred[i].detach(), cls[i].detach(), obj[i].detach(), shift, stride, gt, target["labels"], num_classes
                )
            obj_target[fg] = 1.0
            num_fg += int(fg.sum())
            reg_target = gt[matched]
            iou_sum = iou_sum + (1 - cxcywh_iou_aligned(pred[i][fg], reg_target) ** 2).sum()
            cls_target = F.one_hot(target["labels"][matched], num_classes).float() * matched_iou[:, None]
            cls_sum = cls_sum + F.binary_cross_entropy_with_logits(cls[i][fg], cls_target, reduction="sum")
            if use_l1:
                s = stride[fg]
                l1_target = torch.stack(
                    [
                        reg_target[:, 0] / s - shift[fg, 0],
                        reg_target[:, 1] / s - shift[fg, 1],
                        torch.log(reg_target[:, 2] / s + 1e-8),
                        torch.log(reg_target[:, 3] / s + 1e-8),
                    ],
                    1,
                )
                l1_sum = l1_sum + (raw[i][fg, :4] - l1_target).abs().sum()
        obj_sum = obj_sum + F.binary_cross_entropy_with_logits(obj[i], obj_target, reduction="sum")
    n = max(num_fg, 1)
    zero = raw.sum() * 0
    return {
        "loss_bbox": 5.0 * (iou_sum + zero) / n,
        "loss_obj": (obj_sum + zero) / n,
        "loss_cls": (cls_sum + zero) / n,
        "loss_l1": (l1_sum + zero) / n,
        "num_fg": num_fg,
    }


# --------------------------------------------------------------------------------------------------
# Scenes
# --------------------------------------------------------------------------------------------------
def random_targets(generator, batch, num_classes, max_boxes=6, empty=(1,)):
    targets = []
    for b in range(batch):
        n = 0 if b in empty else int(torch.randint(1, max_boxes + 1, (1,), generator=generator))
        xy = torch.rand(n, 2, generator=generator) * (IMAGE - 30)
        wh = 4 + torch.rand(n, 2, generator=generator) * 40
        targets.append(
            {"boxes": torch.cat([xy, xy + wh], 1), "labels": torch.randint(0, num_classes, (n,), generator=generator)}
        )
    return targets


def maps_near_targets(generator, targets, num_classes, noise=0.3):
    """Fused maps whose decoded boxes sit near the closest box (so IoUs are high and k > 1)."""
    batch = len(targets)
    outputs = []
    for s in STRIDES:
        h = w = IMAGE // s
        out = torch.randn(batch, 5 + num_classes, h, w, generator=generator) * noise
        out[:, 2:4] += math.log(16 / s)
        ys, xs = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
        for b, target in enumerate(targets):
            boxes = target["boxes"]
            if not len(boxes):
                continue
            center = (boxes[:, :2] + boxes[:, 2:]) / 2
            size = boxes[:, 2:] - boxes[:, :2]
            px, py = (xs + 0.5) * s, (ys + 0.5) * s
            nearest = ((px[..., None] - center[:, 0]) ** 2 + (py[..., None] - center[:, 1]) ** 2).argmin(-1)
            out[b, 0] += center[nearest, 0] / s - xs
            out[b, 1] += center[nearest, 1] / s - ys
            out[b, 2] += torch.log(size[nearest, 0] / s) - math.log(16 / s)
            out[b, 3] += torch.log(size[nearest, 1] / s) - math.log(16 / s)
        outputs.append(out)
    return outputs


def scene(seed, num_classes=4, batch=3):
    generator = torch.Generator().manual_seed(seed)
    targets = random_targets(generator, batch, num_classes)
    return maps_near_targets(generator, targets, num_classes), targets


def total(terms):
    return sum(v for k, v in terms.items() if k != "num_fg")


# --------------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------------
def test_perfect_prediction_gives_zero_iou_and_l1_terms():
    """Hand-worked: raw maps decode every prior to the box exactly -> IoU loss 0, L1 ≈ 0, k = 10 positives.

    For a prior at cell (g_x, g_y) of stride s: t_xy = c/s - g, t_wh = log(wh/s). Every candidate has IoU 1,
    so k = int(Σ top-10 IoU) = 10; with objectness logits 0 each prior's BCE is log 2 whatever its target,
    hence loss_obj = P·log 2 / 10.
    """
    box = torch.tensor([[40.0, 30.0, 88.0, 70.0]])
    center = (box[0, :2] + box[0, 2:]) / 2
    size = box[0, 2:] - box[0, :2]
    outputs = []
    for s in STRIDES:
        h = w = IMAGE // s
        out = torch.zeros(1, 5 + 3, h, w)
        ys, xs = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
        out[0, 0] = center[0] / s - xs
        out[0, 1] = center[1] / s - ys
        out[0, 2] = torch.log(size[0] / s)
        out[0, 3] = torch.log(size[1] / s)
        outputs.append(out.requires_grad_(True))
    terms = YOLOXCriterion(3)(outputs, [{"boxes": box, "labels": torch.tensor([2])}])
    assert terms["loss_bbox"].abs() < 1e-6
    assert terms["loss_l1"].abs() < 1e-5
    num_priors = sum((IMAGE // s) ** 2 for s in STRIDES)
    torch.testing.assert_close(terms["loss_obj"], torch.tensor(num_priors * math.log(2) / 10))
    # the class target is the one-hot x IoU 1: BCE(0, 1) + 2·BCE(0, 0) per positive, averaged over the 10
    torch.testing.assert_close(terms["loss_cls"], torch.tensor(3 * math.log(2)))


@pytest.mark.parametrize("seed", range(5))
def test_terms_equal_netspresso_reference(seed):
    """Reference: literal per-image NetsPresso yolox_loss (reference_yolox); each term and the gradients."""
    outputs, targets = scene(seed)
    outputs = [o.requires_grad_(True) for o in outputs]
    got = YOLOXCriterion(4)(outputs, targets)
    want = reference_yolox(outputs, targets, 4)
    assert want["num_fg"] > len(targets)  # several positives, some boxes with k > 1
    for term in YOLOXCriterion.terms:
        torch.testing.assert_close(got[term], want[term], rtol=1e-5, atol=1e-5, msg=term)
    got_grads = torch.autograd.grad(sum(got.values()), outputs)
    want_grads = torch.autograd.grad(total(want), outputs)
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)


def test_random_maps_and_derived_strides_equal_reference():
    """Reference: reference_yolox on plain random maps; strides=None derives image_size[-1] // W_l as NetsPresso."""
    generator = torch.Generator().manual_seed(11)
    targets = random_targets(generator, 3, 5, empty=(2,))
    outputs = [torch.randn(3, 10, IMAGE // s, IMAGE // s, generator=generator) * 0.7 for s in STRIDES]
    want = reference_yolox(outputs, targets, 5)
    for criterion, size in [(YOLOXCriterion(5), None), (YOLOXCriterion(5, strides=None), (IMAGE, IMAGE))]:
        got = criterion(outputs, targets, image_size=size)
        for term in YOLOXCriterion.terms:
            torch.testing.assert_close(got[term], want[term], rtol=1e-5, atol=1e-5, msg=term)
    # integer division of the width: 140 // (16, 8, 4) = (8, 17, 35)
    want = reference_yolox(outputs, targets, 5, strides=(8, 17, 35))
    got = YOLOXCriterion(5, strides=None)(outputs, targets, image_size=(IMAGE, 140))
    for term in YOLOXCriterion.terms:
        torch.testing.assert_close(got[term], want[term], rtol=1e-5, atol=1e-5, msg=term)


def test_batch_without_boxes_is_the_objectness_sum():
    """Reference: NetsPresso's yolox_loss edge case: no box anywhere -> num_fg = 1, only Σ BCE(obj, 0) remains."""
    generator = torch.Generator().manual_seed(3)
    outputs = [torch.randn(2, 8, IMAGE // s, IMAGE // s, generator=generator, requires_grad=True) for s in STRIDES]
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}] * 2
    got = YOLOXCriterion(3)(outputs, empty)
    objectness = torch.cat([o[:, 4].reshape(-1) for o in outputs])
    torch.testing.assert_close(
        got["loss_obj"], F.binary_cross_entropy_with_logits(objectness, torch.zeros_like(objectness), reduction="sum")
    )
    for term in ("loss_bbox", "loss_cls", "loss_l1"):
        assert got[term] == 0
        assert got[term].requires_grad
    sum(got.values()).backward()
    assert all(torch.isfinite(o.grad).all() for o in outputs)


def test_does_not_modify_outputs_or_targets():
    """Reference: NetsPresso's yolox_loss (NetsPresso rewrites target boxes to cxcywh); here nothing is mutated."""
    outputs, targets = scene(4)
    outputs_before, targets_before = copy.deepcopy(outputs), copy.deepcopy(targets)
    YOLOXCriterion(4)(outputs, targets)
    for a, b in zip(outputs, outputs_before, strict=True):
        assert torch.equal(a, b)
    for a, b in zip(targets, targets_before, strict=True):
        assert a.keys() == b.keys()
        assert torch.equal(a["boxes"], b["boxes"])
        assert torch.equal(a["labels"], b["labels"])


def test_fused_and_triple_inputs_agree():
    """Reference: the fused map [tx, ty, tw, th, obj, cls…] split into MMDetection's (cls, bbox, obj) triple."""
    outputs, targets = scene(5)
    triples = [(o[:, 5:], o[:, :4], o[:, 4:5]) for o in outputs]
    criterion = YOLOXCriterion(4)
    fused = criterion(outputs, targets)
    split = criterion(triples, targets)
    for term in YOLOXCriterion.terms:
        torch.testing.assert_close(fused[term], split[term], rtol=0, atol=0, msg=term)


def test_l1_activate_epoch_switch():
    """Reference: NetsPresso's yolox_loss: L1 on iff epoch is None or epoch >= l1_activate_epoch (1-based)."""
    outputs, targets = scene(6)
    outputs = [o.requires_grad_(True) for o in outputs]
    criterion = YOLOXCriterion(4, l1_activate_epoch=3)
    want_on = reference_yolox(outputs, targets, 4)

    for epoch in (1, 2):
        criterion.set_epoch(epoch)
        terms = criterion(outputs, targets)
        assert terms["loss_l1"] == 0
        assert terms["loss_l1"].requires_grad
        torch.testing.assert_close(
            total(terms), total(reference_yolox(outputs, targets, 4, use_l1=False)), rtol=1e-5, atol=1e-5
        )
    assert criterion.loss_l1.compute() == 0  # reported as 0 before activation
    assert criterion.loss_bbox.compute() > 0

    for epoch in (3, 10, None):
        criterion.loss_l1.reset()
        criterion.set_epoch(epoch)
        terms = criterion(outputs, targets)
        assert terms["loss_l1"] > 0
        torch.testing.assert_close(terms["loss_l1"], want_on["loss_l1"], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(criterion.loss_l1.compute(), want_on["loss_l1"].detach(), rtol=1e-5, atol=1e-6)


def test_bf16_autocast_cost_in_float32_finite():
    """Reference: NetsPresso's yolox_loss (class cost in float32, autocast off): bf16 maps with saturated logits give
    finite terms and gradients, and the same positives as the float32 maps of the same values."""
    outputs, targets = scene(7)
    low = []
    for o in outputs:
        o = o.clone()
        o[:, 5:] *= 20  # σ = 1 or 0 in bf16: log(1 - p) = -inf without the clamp
        o[:, 4] = 30.0
        low.append(o.bfloat16().requires_grad_(True))
    criterion = YOLOXCriterion(4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        terms = criterion(low, targets)
    assert all(torch.isfinite(v) for v in terms.values())
    sum(terms.values()).float().backward()
    assert all(torch.isfinite(o.grad).all() for o in low)
    reference = reference_yolox([o.detach().float() for o in low], targets, 4)
    # every image has objectness 30, so loss_obj ≈ 30 · (#negatives) / #positives tells the positive count
    torch.testing.assert_close(terms["loss_obj"].float(), reference["loss_obj"], rtol=2e-2, atol=0)


def test_overflowing_box_of_a_negative_prior_keeps_terms_finite():
    """Reference: NetsPresso's yolox_loss (the IoU term runs over the positives only): a negative prior whose
    exp(t_wh) overflows (fp16 training, divergence) leaves every term finite and equal to the reference."""
    outputs, targets = scene(8, batch=2)
    outputs[0][0, 2, 0, 15] = 100.0  # top-right cell of stride 8: far from every box, never a candidate
    want = reference_yolox(outputs, targets, 4)
    assert all(math.isfinite(float(want[t])) for t in YOLOXCriterion.terms)
    got = YOLOXCriterion(4)(outputs, targets)
    for term in YOLOXCriterion.terms:
        torch.testing.assert_close(got[term], want[term], rtol=1e-5, atol=1e-5, msg=term)


def test_many_boxes_large_batch_runs():
    """Memory: batch 8 x 8400 priors (640 px, strides 8/16/32) x 500 boxes per image x 80 classes."""
    generator = torch.Generator().manual_seed(0)
    batch, classes = 8, 80
    outputs = [torch.randn(batch, 5 + classes, 640 // s, 640 // s, generator=generator) * 0.5 for s in STRIDES]
    targets = []
    for _ in range(batch):
        xy = torch.rand(500, 2, generator=generator) * 600
        wh = 4 + torch.rand(500, 2, generator=generator) * 100
        targets.append(
            {"boxes": torch.cat([xy, xy + wh], 1), "labels": torch.randint(0, classes, (500,), generator=generator)}
        )
    with torch.no_grad():
        terms = YOLOXCriterion(classes)(outputs, targets)
    assert all(torch.isfinite(v) for v in terms.values())
    assert terms["loss_bbox"] > 0


def test_input_checks():
    """Errors at the boundary: channel count, level count, image count, image_size with strides=None."""
    outputs, targets = scene(9)
    with pytest.raises(ValueError, match="5 \\+ 3"):
        YOLOXCriterion(3)(outputs, targets)
    with pytest.raises(ValueError, match="levels"):
        YOLOXCriterion(4)(outputs[:2], targets)
    with pytest.raises(ValueError, match="images"):
        YOLOXCriterion(4)(outputs, targets[:2])
    with pytest.raises(ValueError, match="image_size"):
        YOLOXCriterion(4, strides=None)(outputs, targets)
    with pytest.raises(TypeError):
        YOLOXCriterion(4)(outputs[0], targets)
