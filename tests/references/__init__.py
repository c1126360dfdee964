"""Independent, literal reference implementations the tests compare the package against.

Written from the reference systems' stated semantics (MMDetection 3.x, NetsPresso Trainer 1.4.1,
torchvision), per image and per level, with Python loops where the references have them. None of these
modules imports :mod:`lightning_losses`, and each reference exists once:

- :mod:`~tests.references.mmdet_boxes`: ``bbox_overlaps``, prior generators, box coders;
- :mod:`~tests.references.mmdet_losses`: ``weight_reduce_loss``, the IoU-family element losses, the losses as
  the heads call them;
- :mod:`~tests.references.mmdet_classification`: cross-entropy, BCE, focal, QFL, DFL and the
  ``CrossEntropyLoss`` forward;
- :mod:`~tests.references.mmdet_assigners`: max-IoU, ATSS and FCOS assignment, the pseudo sampler;
- :mod:`~tests.references.mmdet_dense_heads`: anchor-head targets and ``RetinaHead``;
- :mod:`~tests.references.mmdet_atss_gfl`: ``ATSSHead`` and ``GFLHead``;
- :mod:`~tests.references.mmdet_fcos`: ``FCOSHead``;
- :mod:`~tests.references.netspresso`: NetsPresso's ``retinanet_loss`` (torchvision matcher and coder);
- :mod:`~tests.references.netspresso_extra`: NetsPresso's ``seg_cross_entropy``, ``yolofastest_loss``, ``rtmcc_loss``;
- :mod:`~tests.references.task_aligned`: ultralytics' ``v8DetectionLoss`` and NetsPresso's ``yolov9_loss``;
- :mod:`~tests.references.detr`: varifocal loss, Hungarian costs and the DETR / RT-DETR set criterion;
- :mod:`~tests.references.scenes`: the seeded scenes and the value-and-gradient comparison (not a reference).
"""
