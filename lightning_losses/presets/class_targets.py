"""Classification targets as a criterion's ``loss_cls`` takes them: class labels, or one-hot rows.

The focal-family terms take class labels in ``[0, C]`` (``C`` = background) and never expand them, so a
dense criterion hands them ``(N,)`` labels. A configured loss that only takes a ``pred``-shaped target
(softmax cross-entropy against soft rows, quality focal, an element-wise regression loss…) gets the one-hot
rows, built here and nowhere else.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lightning_losses.losses.classification import CrossEntropyLoss, FocalLoss, SigmoidFocalLoss

__all__ = ["class_targets", "onehot_targets", "takes_class_labels"]


def takes_class_labels(loss: nn.Module) -> bool:
    """Whether ``loss`` takes ``(N,)`` class labels in ``[0, C]`` (``C`` = background) for ``(N, C)`` logits.

    True for :class:`~lightning_losses.FocalLoss`, :class:`~lightning_losses.SigmoidFocalLoss` and a sigmoid
    :class:`~lightning_losses.CrossEntropyLoss` whose ``ignore_index`` is negative (``None`` is -100): a
    non-negative one would drop a class or the background from labels but not from one-hot rows. Any other
    loss gets one-hot rows.

    Example:
        >>> takes_class_labels(FocalLoss()), takes_class_labels(CrossEntropyLoss())
        (True, False)
    """
    if isinstance(loss, (FocalLoss, SigmoidFocalLoss)):
        return True
    if not isinstance(loss, CrossEntropyLoss) or not loss.use_sigmoid:
        return False
    return loss.ignore_index is None or loss.ignore_index < 0


def onehot_targets(labels: Tensor, num_classes: int, dtype: torch.dtype) -> Tensor:
    """``(..., C)`` one-hot rows for labels in ``[0, C)``; any other label (background, -1) gives zeros.

    Example:
        >>> onehot_targets(torch.tensor([2, -1, 3]), 3, torch.float32)
        tensor([[0., 0., 1.],
                [0., 0., 0.],
                [0., 0., 0.]])
    """
    return (labels.unsqueeze(-1) == torch.arange(num_classes, dtype=torch.long, device=labels.device)).to(dtype)


def class_targets(loss: nn.Module, labels: Tensor, num_classes: int, dtype: torch.dtype) -> Tensor:
    """The flattened classification target of assigned ``labels`` (``-1`` where not positive) for ``loss``.

    ``(N,)`` int64 labels with ``num_classes`` for every non-positive prior when :func:`takes_class_labels`,
    else ``(N, C)`` one-hot rows of ``dtype`` (zero rows for non-positives); both score the same loss.
    Priors to leave out (ignored, padded) are left out by a zero weight, as before either target.

    Example:
        >>> labels = torch.tensor([[1, -1, 0]])
        >>> class_targets(FocalLoss(), labels, 2, torch.float32)
        tensor([1, 2, 0])
        >>> class_targets(CrossEntropyLoss(), labels, 2, torch.float32)
        tensor([[0., 1.],
                [0., 0.],
                [1., 0.]])
    """
    labels = labels.reshape(-1)
    if takes_class_labels(loss):
        return torch.where(labels >= 0, labels, num_classes)
    return onehot_targets(labels, num_classes, dtype)
