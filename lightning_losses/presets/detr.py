"""DETR-family set criterion: Hungarian matching per decoder layer, a classification term, L1 and GIoU terms."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from lightning_losses.assigners.hungarian import (
    HungarianMatcher,
    SetMatch,
    cxcywh_to_xyxy,
    denoising_match,
    xyxy_to_cxcywh,
)
from lightning_losses.boxes.cache import device_constant
from lightning_losses.boxes.targets import PaddedTargets, gather_boxes, pad_targets
from lightning_losses.functional.iou import bbox_overlaps
from lightning_losses.losses.base import LossMetric
from lightning_losses.losses.classification import CrossEntropyLoss, FocalLoss
from lightning_losses.losses.iou import GIoULoss
from lightning_losses.losses.regression import L1Loss
from lightning_losses.losses.varifocal import VarifocalLoss
from lightning_losses.presets.base import Criterion
from lightning_losses.presets.class_targets import class_targets
from lightning_losses.registry import build_loss

__all__ = ["CLASSIFICATIONS", "DETRCriterion"]

CLASSIFICATIONS = ("vfl", "focal", "ce")
LossSpec = LossMetric | Mapping[str, Any] | None
Layer = tuple[Tensor, Tensor] | Mapping[str, Tensor]
ImageSize = int | Sequence[int] | Tensor | None


class DETRCriterion(Criterion):
    r"""The loss of a DETR-style detector (DETR, Deformable DETR, DINO, RT-DETR), equal to NetsPresso Trainer
    1.4.1's ``detr_loss`` on the same inputs.

    Each set of predictions — the final decoder layer, every auxiliary decoder layer and the encoder proposals —
    is matched one-to-one to the boxes by :class:`~lightning_losses.assigners.HungarianMatcher` (all sets solved
    from one host copy of their cost blocks); the denoising queries are matched by construction (query
    ``dn_positive_idx[b][g·n_b + j]`` reconstructs box ``j`` in group ``g``). With :math:`n` the number of boxes
    averaged over DDP ranks and clamped to at least 1 (:math:`n\,G` for the :math:`G` denoising groups):

    .. math::
        \mathcal L_{bbox} = \tfrac{5}{n}\textstyle\sum_{matched} \lVert b_q - b_j \rVert_1, \quad
        \mathcal L_{giou} = \tfrac{2}{n}\textstyle\sum_{matched} \big(1 - \mathrm{GIoU}(b_q, b_j)\big), \quad
        \mathcal L_{vfl} = \tfrac{1}{n}\textstyle\sum_{q, c} \mathrm{VFL}(x_{qc}, \mathrm{IoU}_q [c = y_q])

    on normalised ``cxcywh`` boxes (GIoU on their corners). The classification term is one of

    - ``"vfl"`` (RT-DETR): :class:`~lightning_losses.VarifocalLoss` (``alpha=0.75``, ``gamma=2``, focal factor
      detached) against the detached IoU of each matched query on its box's class; a matched query whose IoU is 0
      contributes nothing on that column (RT-DETR's weight there is its target score, 0);
    - ``"focal"`` (Deformable DETR, DINO): :class:`~lightning_losses.FocalLoss` against one-hot classes, over ``n``;
    - ``"ce"`` (DETR): softmax :class:`~lightning_losses.CrossEntropyLoss` over ``C + 1`` logits, the last one
      "no object" weighted ``eos_coef``, divided by the summed class weights of the queries (DETR's weighted mean;
      the matched count in it averaged over ranks).

    Terms are ``loss_{classification}``, ``loss_bbox``, ``loss_giou``, then ``<term>_aux_<i>`` for each auxiliary
    layer, ``<term>_enc`` for the encoder proposals and ``<term>_dn_<i>`` for each denoising layer, in that order:
    :attr:`terms` lists them all from the constructor's counts. A configured set missing from a call (evaluation,
    a batch without boxes and so without denoising groups) gives graph-connected zeros, so the keys never change;
    a set of another size raises ``ValueError``. Auxiliary terms use the same loss modules (and weights) as the
    main ones, through :meth:`~lightning_losses.LossMetric.scaled_loss`: each module's running mean is its main
    term's. Targets are never modified; boxes are normalised into new tensors.

    Args:
        num_classes: ``C``.
        classification: ``"vfl"``, ``"focal"`` or ``"ce"``.
        matcher: a :class:`HungarianMatcher` or its arguments; default RT-DETR's (class 2, bbox 5, GIoU 2, focal
            cost with ``alpha=0.25``), or DETR's (1, 5, 2, softmax) for ``"ce"``.
        loss_cls: the classification term's loss (any config dialect); defaults above, ``loss_weight=1``.
        loss_bbox: default ``L1Loss(loss_weight=5.0)``.
        loss_giou: default ``GIoULoss(loss_weight=2.0)``.
        num_aux_layers: auxiliary decoder layers given as ``aux_outputs``.
        encoder: encoder proposals are given as ``enc_outputs``.
        num_dn_layers: denoising layers given as ``dn_outputs``.
        eos_coef: weight of the "no object" class for ``"ce"``.

    Shape:
        - ``pred_logits``: ``(B, Q, C)`` (``(B, Q, C + 1)`` for ``"ce"``); ``pred_boxes``: ``(B, Q, 4)`` normalised
          ``cxcywh``. ``aux_outputs``: a list of such pairs (tuples, or dicts with ``pred_logits`` /
          ``pred_boxes``); ``enc_outputs``: one pair; ``dn_outputs``: a list of pairs over the denoising queries.
        - ``dn_meta``: ``{"dn_positive_idx": [(n_b·G,) int64 per image], "dn_num_group": G}`` (RT-DETR's).
        - ``targets``: one ``{"boxes": (M, 4) pixel xyxy, "labels": (M,)}`` per image; ``image_size``: ``(H, W)``,
          an int for square images, or a ``(B, 2)`` tensor of per-image ``(H, W)``.

    Targets: absolute-pixel ``xyxy`` boxes (normalised here by ``image_size``) and 0-based labels in ``[0, C)``;
    "no object" is implicit (never a label).

    Example:
        >>> criterion = DETRCriterion(num_classes=2)
        >>> target = [{"boxes": torch.tensor([[8.0, 8.0, 40.0, 32.0]]), "labels": torch.tensor([1])}]
        >>> boxes = torch.tensor([[[0.375, 0.3125, 0.5, 0.375]] * 3])  # the target's box as normalised cxcywh
        >>> terms = criterion(torch.zeros(1, 3, 2), boxes, target, image_size=64)
        >>> sorted(terms), terms["loss_bbox"].item(), terms["loss_giou"].item()
        (['loss_bbox', 'loss_giou', 'loss_vfl'], 0.0, 0.0)

    Reference: Carion et al., arXiv:2005.12872 (DETR); Zhang et al., arXiv:2203.03605 (DINO, denoising);
    Zhao et al., arXiv:2304.08069 (RT-DETR).
    """

    def __init__(
        self,
        num_classes: int,
        classification: str = "vfl",
        matcher: HungarianMatcher | Mapping[str, Any] | None = None,
        loss_cls: LossSpec = None,
        loss_bbox: LossSpec = None,
        loss_giou: LossSpec = None,
        num_aux_layers: int = 0,
        encoder: bool = False,
        num_dn_layers: int = 0,
        eos_coef: float = 0.1,
    ) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"`num_classes` must be a positive int, got {num_classes!r}")
        if classification not in CLASSIFICATIONS:
            raise ValueError(f"`classification` must be one of {CLASSIFICATIONS}, got {classification!r}")
        for name, count in (("num_aux_layers", num_aux_layers), ("num_dn_layers", num_dn_layers)):
            if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                raise ValueError(f"`{name}` must be an int >= 0, got {count!r}")
        if not 0.0 <= eos_coef <= 1.0:
            raise ValueError(f"`eos_coef` must lie in [0, 1], got {eos_coef!r}")
        self.num_classes = num_classes
        self.classification = classification
        self.num_aux_layers = num_aux_layers
        self.encoder = bool(encoder)
        self.num_dn_layers = num_dn_layers
        self.eos_coef = float(eos_coef)
        if matcher is None:
            matcher = HungarianMatcher(1.0, 5.0, 2.0, "softmax") if classification == "ce" else HungarianMatcher()
        elif isinstance(matcher, Mapping):
            matcher = HungarianMatcher(**matcher)
        if not isinstance(matcher, HungarianMatcher):
            raise TypeError(f"`matcher` must be a HungarianMatcher or its arguments, got {type(matcher).__name__}")
        self.matcher = matcher
        self.cls_term = f"loss_{classification}"
        defaults = {
            "vfl": lambda: VarifocalLoss(alpha=0.75, gamma=2.0, detach_focal_weight=True),
            "focal": lambda: FocalLoss(alpha=0.25, gamma=2.0),
            "ce": lambda: CrossEntropyLoss(class_weight=[1.0] * num_classes + [self.eos_coef]),
        }
        self.add_module(self.cls_term, _term(loss_cls, defaults[classification]))
        self.loss_bbox = _term(loss_bbox, lambda: L1Loss(loss_weight=5.0))
        self.loss_giou = _term(loss_giou, lambda: GIoULoss(loss_weight=2.0))
        base = (self.cls_term, "loss_bbox", "loss_giou")
        suffixes = [f"_aux_{i}" for i in range(num_aux_layers)] + ["_enc"] * self.encoder
        suffixes += [f"_dn_{i}" for i in range(num_dn_layers)]
        self.terms = base + tuple(term + suffix for suffix in suffixes for term in base)

    @property
    def num_logits(self) -> int:
        """Logit columns a query has: ``C``, or ``C + 1`` (the "no object" column) for ``"ce"``."""
        return self.num_classes + (self.classification == "ce")

    def forward(
        self,
        pred_logits: Tensor,
        pred_boxes: Tensor,
        targets: Sequence[Mapping[str, Tensor]],
        image_size: ImageSize = None,
        aux_outputs: Sequence[Layer] | None = None,
        enc_outputs: Layer | None = None,
        dn_outputs: Sequence[Layer] | None = None,
        dn_meta: Mapping[str, Any] | None = None,
    ) -> dict[str, Tensor]:
        """Return every term of :attr:`terms` for one batch."""
        final = _check_layers([(pred_logits, pred_boxes)], "pred", self.num_logits)[0]
        batch, num_queries = final[0].shape[:2]
        aux = self._optional(aux_outputs, "aux_outputs", self.num_aux_layers, batch, num_queries)
        enc_list = None if enc_outputs is None else [enc_outputs]
        enc = self._optional(enc_list, "enc_outputs", int(self.encoder), batch, num_queries)
        dn = self._optional(dn_outputs, "dn_outputs", self.num_dn_layers, batch)
        if not isinstance(targets, Sequence) or len(targets) != batch:
            size = len(targets) if isinstance(targets, Sequence) else type(targets).__name__
            raise ValueError(f"`targets` must hold one dict per image ({batch}), got {size}")
        matched_sets = [final, *aux, *enc]
        gts = pad_targets(targets, final[0].device)
        counts = [int(t["boxes"].shape[0]) for t in targets]
        corners = gts.boxes / _scale(image_size, batch, final[0].device)
        centers = xyxy_to_cxcywh(corners)
        for image, count in enumerate(counts):
            if count > num_queries:
                raise ValueError(
                    f"`targets[{image}]` has {count} boxes, more than the {num_queries} queries: "
                    f"one-to-one matching needs at most as many boxes as queries"
                )
        costs = [self.matcher.cost(logits, boxes, centers, gts.labels) for logits, boxes in matched_sets]
        queries = self.matcher.solve(torch.stack(costs), counts)  # (L, B, M)
        (num_boxes,) = self.average_over_ranks(gts.mask.sum(dtype=torch.float32))
        normaliser = num_boxes.clamp(min=1.0)
        box_index = torch.arange(gts.mask.shape[1], dtype=torch.long, device=gts.mask.device).expand_as(gts.mask)
        names = ["", *(f"_aux_{i}" for i in range(len(aux))), *(["_enc"] if enc else [])]
        result: dict[str, Tensor] = {}
        for layer, (suffix, (logits, boxes)) in enumerate(zip(names, matched_sets, strict=True)):
            match = SetMatch(queries[layer], box_index, gts.mask, 1)
            terms = self._layer(logits, boxes, match, gts, corners, centers, num_boxes, normaliser, track=not suffix)
            result.update({term + suffix: value for term, value in terms.items()})
        if dn:
            match = _denoising(dn_meta, counts, gts.mask)
            for i, (logits, boxes) in enumerate(dn):
                terms = self._layer(logits, boxes, match, gts, corners, centers, num_boxes, normaliser, False)
                result.update({f"{term}_dn_{i}": value for term, value in terms.items()})
        # A configured set this call did not get (evaluation, no denoising groups) scores a graph-connected 0.
        zero = final[0].float().sum() * 0.0
        return {term: result.get(term, zero) for term in self.terms}

    def _optional(
        self, layers: Sequence[Layer] | None, name: str, expected: int, batch: int, queries: int | None = None
    ) -> list[tuple[Tensor, Tensor]]:
        """Checked pairs of an optional argument: ``expected`` of them, ``batch`` images (``queries`` each)."""
        if layers is None:
            return []
        if not isinstance(layers, Sequence) or len(layers) != expected:
            size = len(layers) if isinstance(layers, Sequence) else type(layers).__name__
            raise ValueError(f"`{name}` must hold {expected} sets of predictions as configured, got {size}")
        pairs = _check_layers(layers, name, self.num_logits)
        for i, (logits, _) in enumerate(pairs):
            if logits.shape[0] != batch or (queries is not None and logits.shape[1] != queries):
                expect = f"({batch}, {queries}, …)" if queries is not None else f"{batch} images"
                raise ValueError(f"`{name}[{i}]` has logits of shape {tuple(logits.shape)}, expected {expect}")
        return pairs

    def _layer(
        self,
        logits: Tensor,
        boxes: Tensor,
        match: SetMatch,
        gts: PaddedTargets,
        corners: Tensor,
        centers: Tensor,
        num_boxes: Tensor,
        normaliser: Tensor,
        track: bool,
    ) -> dict[str, Tensor]:
        """The three terms of one set of predictions: ``match`` pairs queries with padded boxes."""
        batch, num_queries, columns = logits.shape
        normaliser = normaliser * match.groups
        valid = match.valid
        boxes, logits = _upcast(boxes), _upcast(logits)
        weight = valid.to(boxes.dtype)
        target_centers = gather_boxes(centers, match.boxes).to(boxes.dtype)
        target_corners = gather_boxes(corners, match.boxes).to(boxes.dtype)
        # Padding rows score the target against itself: finite whatever the query there, and no gradient.
        pred = torch.where(valid[..., None], gather_boxes(boxes, match.queries), target_centers)
        pred_corners = cxcywh_to_xyxy(pred)
        labels = torch.where(valid, gts.labels.gather(1, match.boxes), -1)
        # Labels per query (-1: unmatched); padding rows write into a spare column Q that is dropped.
        spare = torch.where(valid, match.queries, num_queries)
        query_labels = torch.full((batch, num_queries + 1), -1, dtype=torch.long, device=logits.device)
        query_labels = query_labels.scatter(1, spare, labels)[:, :num_queries]
        cls_loss = self.get_submodule(self.cls_term)
        if self.classification == "vfl":
            with torch.no_grad():
                ious = (bbox_overlaps(pred_corners, target_corners, is_aligned=True) * weight).to(logits.dtype)
                flat = spare * columns + labels.clamp(min=0)
                scores = logits.new_zeros(batch, (num_queries + 1) * columns).scatter(1, flat, ious)
                scores = scores.view(batch, num_queries + 1, columns)[:, :num_queries]
                # RT-DETR weighs a matched class by its IoU even when that is 0: such an entry scores nothing.
                keep = logits.new_ones(batch, (num_queries + 1) * columns).scatter(1, flat, (ious > 0).to(logits.dtype))
                keep = keep.view(batch, num_queries + 1, columns)[:, :num_queries]
            cls_args = (logits, scores, keep, normaliser)
        elif self.classification == "focal":
            cls_args = (logits.reshape(-1, columns), class_targets(cls_loss, query_labels, columns, logits.dtype))
            cls_args = (*cls_args, None, normaliser)
        else:
            ce_labels = torch.where(query_labels < 0, self.num_classes, query_labels).reshape(-1)
            matched = num_boxes * match.groups
            divisor = matched + (batch * num_queries - matched) * self.eos_coef
            cls_args = (logits.reshape(-1, columns), ce_labels, None, divisor)
        terms = {
            self.cls_term: (cls_loss, *cls_args),
            "loss_bbox": (self.loss_bbox, pred, target_centers, weight[..., None].expand_as(pred), normaliser),
            "loss_giou": (
                self.loss_giou,
                pred_corners.reshape(-1, 4),
                target_corners.reshape(-1, 4),
                weight.reshape(-1),
                normaliser,
            ),
        }
        return {term: _call(module, track, *args) for term, (module, *args) in terms.items()}

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, classification={self.classification!r}, matcher={self.matcher}, "
            f"num_aux_layers={self.num_aux_layers}, encoder={self.encoder}, num_dn_layers={self.num_dn_layers}"
        )


def _term(spec: LossSpec, default: Any) -> LossMetric:
    return default() if spec is None else build_loss(spec)


def _upcast(x: Tensor) -> Tensor:
    """Half-precision predictions are scored in float32 (sums and counts stay float32); others as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _call(module: LossMetric, track: bool, pred: Tensor, target: Tensor, weight: Tensor | None, avg: Tensor) -> Tensor:
    """The main set's term through ``forward`` (tracked by the module); other sets' through ``scaled_loss``."""
    if track:
        return module(pred, target, weight=weight, avg_factor=avg)
    return module.scaled_loss(pred, target, weight, avg, module.reduction)


def _check_layers(layers: Sequence[Layer], name: str, columns: int) -> list[tuple[Tensor, Tensor]]:
    """``(logits (B, Q, columns), boxes (B, Q, 4))`` pairs from tuples or ``pred_logits`` / ``pred_boxes`` dicts."""
    pairs = []
    for i, layer in enumerate(layers):
        where = name if name == "pred" else f"{name}[{i}]"
        if isinstance(layer, Mapping):
            if "pred_logits" not in layer or "pred_boxes" not in layer:
                raise ValueError(f"`{where}` must have 'pred_logits' and 'pred_boxes', got keys {sorted(layer)}")
            layer = (layer["pred_logits"], layer["pred_boxes"])
        if not isinstance(layer, (tuple, list)) or len(layer) != 2:
            raise TypeError(f"`{where}` must be a (pred_logits, pred_boxes) pair or a dict of them")
        logits, boxes = layer
        label = "pred_logits" if name == "pred" else f"{where} logits"
        if not isinstance(logits, Tensor) or logits.ndim != 3 or logits.shape[-1] != columns:
            shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
            raise ValueError(f"`{label}` must be (B, Q, {columns}), got {shape}")
        if not logits.is_floating_point():
            raise TypeError(f"`{label}` must be a floating-point tensor, got {logits.dtype}")
        if not isinstance(boxes, Tensor) or boxes.shape != (*logits.shape[:2], 4):
            shape = tuple(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__
            label = "pred_boxes" if name == "pred" else f"{where} boxes"
            raise ValueError(f"`{label}` must be (B, Q, 4) = {(*logits.shape[:2], 4)} normalised cxcywh, got {shape}")
        pairs.append((logits, boxes))
    return pairs


def _scale(image_size: ImageSize, batch: int, device: torch.device) -> Tensor:
    """``(B | 1, 1, 4)`` divisor ``(W, H, W, H)`` from ``(H, W)``, a square side, or per-image ``(B, 2)`` sizes."""
    if image_size is None:
        raise ValueError("`image_size` is needed to normalise the pixel boxes of `targets`: give (H, W)")
    if isinstance(image_size, Tensor):
        size = image_size.to(device=device, dtype=torch.float32)
    else:  # host numbers: on the device from a cache, not copied every step
        size = device_constant(image_size, device)
    if size.ndim == 0:
        size = size.expand(2)
    if size.shape not in ((2,), (batch, 2)):
        raise ValueError(f"`image_size` must be (H, W), an int or a ({batch}, 2) tensor, got shape {tuple(size.shape)}")
    height, width = size.reshape(-1, 2).unbind(-1)
    return torch.stack([width, height, width, height], -1)[:, None, :]


def _denoising(dn_meta: Mapping[str, Any] | None, counts: Sequence[int], mask: Tensor) -> SetMatch:
    if not isinstance(dn_meta, Mapping) or "dn_positive_idx" not in dn_meta or "dn_num_group" not in dn_meta:
        got = sorted(dn_meta) if isinstance(dn_meta, Mapping) else type(dn_meta).__name__
        raise ValueError(
            f"`dn_meta` must be a dict with 'dn_positive_idx' and 'dn_num_group' for `dn_outputs`, got {got}"
        )
    return denoising_match(dn_meta["dn_positive_idx"], dn_meta["dn_num_group"], mask, counts)
