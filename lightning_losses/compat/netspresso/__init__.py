"""NetsPresso Trainer 1.4.1's ``model.losses`` list as one module over its ``out`` / ``target`` dicts.

Mapping (``criterion`` → what computes it, and what it reads; ``weight`` multiplies the criterion in the
total, ``None`` meaning 1):

- ``cross_entropy`` → ``CrossEntropyLoss(ignore_index=-100, avg_non_ignore=True, label_smoothing=…)``
  on ``out["pred"]``, ``target["target"]`` (torch's ``nn.CrossEntropyLoss``).
- ``focal_loss`` → ``SigmoidFocalLoss(alpha, gamma)`` on ``out["pred"]``, ``target["target"]``.
- ``yolox_loss`` → ``YOLOXCriterion(strides=None, l1_activate_epoch=…)`` on ``out["pred"]``,
  ``target["gt"]``, with strides ``target["img_size"] // W_l``.
- ``retinanet_loss`` → ``RetinaNetCriterion(style="netspresso")`` on ``out["cls_logits"]``,
  ``out["bbox_regression"]``, ``out["anchors"]``, ``target["gt"]``.
- ``pidnet_loss`` → ``PIDNetCriterion(ohem=False, ignore_index=-100)`` on ``out["extra_p"]``, ``out["pred"]``,
  ``out["extra_d"]``, ``target["target"]``, ``target["bd_gt"]``; 0 when ``out["extra_p"]`` is None.
- ``seg_cross_entropy`` → ``CrossEntropyLoss(ignore_index=-100, avg_non_ignore=True, label_smoothing=…)`` on
  ``out["pred"]`` resized bilinearly (``align_corners=False``) to ``target["target"]``'s ``(H, W)``.
- ``yolofastest_loss`` → ``YOLOFastestCriterion(anchors, strides=None)`` on ``out["pred"]``, ``target["gt"]``, with
  strides ``target["img_size"] // W_l``; ``l1_activate_epoch`` is accepted and ignored (no L1 term, as in NetsPresso).
- ``rtmcc_loss`` → ``KLDiscretLoss(beta=10, label_softmax=True, label_beta=10)`` on ``out["pred"]`` ``(N, K, 2·W)``
  split into x and y bins, against :func:`~lightning_losses.functional.simcc_gaussian_targets` of
  ``target["keypoints"]`` ``(N, K, 3)`` (σ 5.66, split ratio 2, weight = visibility); ``W`` comes from the
  prediction (NetsPresso fixes 512 bins, a 256 × 256 input, and fails for other head sizes).
- ``yolov9_loss`` → ``YOLOv8Criterion(style="netspresso", strides=None, reg_max=…)`` on ``out["pred"]`` (or
  ``out["pred"]["outputs"]``), ``target["gt"]``, with strides ``target["img_size"][-1] // W_l`` and the class count
  ``channels - 4·reg_max``; ``l1_activate_epoch`` is accepted and ignored, as in NetsPresso.
- ``detr_loss`` → ``DETRCriterion`` on ``out["pred"]`` laid out ``[boxes (4), logits]``, ``out["aux_pred"]`` (the
  auxiliary decoder layers, then the encoder proposals: all named ``_aux_<i>``, as in NetsPresso),
  ``out["dn_aux_pred"]``, ``out["dn_meta"]``, ``target["gt"]`` normalised by ``target["img_size"]``. ``matcher``
  (``weight_dict`` costs, ``alpha``, ``gamma``, ``use_focal_loss``) builds the ``HungarianMatcher``; ``losses`` picks
  the classification term (``vfl`` → ``VarifocalLoss`` with its focal factor detached, ``focal`` →
  ``SigmoidFocalLoss``, ``labels`` → softmax cross-entropy over ``num_classes + 1`` logits, no-object weight 1e-4)
  and ``boxes`` the L1 and GIoU terms; ``weight_dict`` gives each term's ``loss_weight`` and a term it omits weighs
  0, as NetsPresso drops it; ``cardinality`` is a logged metric there and ignored here. Differences: the caller's
  targets are not normalised in place; ``focal`` runs (NetsPresso passes an integer one-hot target to
  torchvision's focal loss, which fails); ``labels`` averages its class-weight sum over DDP ranks like the other
  normalisers. The number of denoising layers is read from the first call (``aux_pred``'s length without denoising
  outputs, RT-DETR's layout).

The criteria's class count is read from the outputs on the first call. Unlike NetsPresso's own
``yolox_loss``, ``yolofastest_loss`` and ``pidnet_loss``, nothing here modifies ``out`` or ``target``.

Layout: :mod:`~.names` (``NETSPRESSO_LOSSES``, the element losses), :mod:`~.adapter` (:class:`Adapter`),
:mod:`~.detection` (``yolox_loss``, ``retinanet_loss``, ``yolofastest_loss``, ``yolov9_loss``),
:mod:`~.segmentation` (``pidnet_loss``, ``seg_cross_entropy``), :mod:`~.pose` (``rtmcc_loss``), :mod:`~.detr`
(``detr_loss``), :mod:`~.catalog` (``ADAPTERS``, ``CRITERIA``), :mod:`~.criterion` (:class:`NetsPressoCriterion`,
:class:`NetsPressoLosses`, :func:`build_losses`) and :mod:`~.dialect` (``build_loss``'s ``criterion`` dialect,
registered once, here).
"""

from __future__ import annotations

# `X as X`: a private name kept importable from here as before the split (`_Element` is NetsPressoCriterion's old
# name; `_build_from_config` the `criterion` dialect registered below).
from lightning_losses.compat.netspresso.adapter import Adapter
from lightning_losses.compat.netspresso.catalog import ADAPTERS, CRITERIA
from lightning_losses.compat.netspresso.criterion import NetsPressoCriterion, NetsPressoLosses, build_losses
from lightning_losses.compat.netspresso.criterion import _Element as _Element
from lightning_losses.compat.netspresso.detr import _detr_loss as _detr_loss
from lightning_losses.compat.netspresso.dialect import _build_from_config
from lightning_losses.compat.netspresso.names import NETSPRESSO_LOSSES
from lightning_losses.compat.netspresso.names import _cross_entropy as _cross_entropy
from lightning_losses.registry import register_dialect

__all__ = [
    "ADAPTERS",
    "CRITERIA",
    "NETSPRESSO_LOSSES",
    "Adapter",
    "NetsPressoCriterion",
    "NetsPressoLosses",
    "build_losses",
]

register_dialect("criterion", _build_from_config, NETSPRESSO_LOSSES)
