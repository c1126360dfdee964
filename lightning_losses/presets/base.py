"""What the dense-detector criteria share: input checks, level flattening, loss terms, normalisers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lightning_losses.distributed import reduce_mean
from lightning_losses.losses.base import LossMetric
from lightning_losses.registry import build_loss
from lightning_losses.serialization import RecordsInit

__all__ = ["DenseCriterion", "flatten_levels", "gather_boxes", "onehot_targets"]

LossSpec = LossMetric | Mapping[str, Any] | None
_ABSENT = object()  # marks "this criterion takes no centerness maps" in flatten_outputs


def flatten_levels(maps: Sequence[Tensor], channels: int, name: str) -> Tensor:
    """Per-level maps to one ``(B, Σ_l H_l·W_l·A, channels)`` tensor, rows ``(level, y, x, a)``.

    A 4-D map ``(B, A·channels, H, W)`` is flattened by ``permute(0, 2, 3, 1)``; a 3-D map
    ``(B, N_l, channels)`` is taken as already flattened (NetsPresso's layout).
    """
    flat = []
    for level, m in enumerate(maps):
        if not isinstance(m, Tensor):
            raise TypeError(f"`{name}[{level}]` must be a tensor, got {type(m).__name__}")
        if m.ndim == 4:
            if m.shape[1] % channels:
                raise ValueError(
                    f"`{name}[{level}]` has {m.shape[1]} channels, not a multiple of {channels}: "
                    f"expected (B, A·{channels}, H, W), got {tuple(m.shape)}"
                )
            flat.append(m.permute(0, 2, 3, 1).reshape(m.shape[0], -1, channels))
        elif m.ndim == 3 and m.shape[-1] == channels:
            flat.append(m)
        else:
            raise ValueError(
                f"`{name}[{level}]` must be (B, A·{channels}, H, W) or (B, N, {channels}), got {tuple(m.shape)}"
            )
    return torch.cat(flat, dim=1)


def onehot_targets(labels: Tensor, num_classes: int, dtype: torch.dtype) -> Tensor:
    """``(..., C)`` one-hot rows for labels in ``[0, C)``; any other label (background, -1) gives zeros."""
    return (labels.unsqueeze(-1) == torch.arange(num_classes, device=labels.device)).to(dtype)


def gather_boxes(boxes: Tensor, index: Tensor) -> Tensor:
    """``boxes`` ``(B, G, D)`` gathered at ``index`` ``(B, P)`` → ``(B, P, D)`` (boxes, or any rows)."""
    return boxes.gather(1, index.unsqueeze(-1).expand(-1, -1, boxes.shape[-1]))


class DenseCriterion(RecordsInit, nn.Module):
    """Base of the dense-detector criteria.

    Subclasses declare their loss terms as ``LossMetric`` children named after the terms, take per-level
    head outputs and ``targets`` (one ``{"boxes", "labels"}`` dict per image) and return one tensor per
    term. Batch-dependent normalisers go through :meth:`average_over_ranks` once per step.
    """

    terms: tuple[str, ...] = ()

    def __init__(self, num_classes: int, strides: Sequence[int]) -> None:
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"`num_classes` must be a positive int, got {num_classes!r}")
        if not strides or any(int(s) <= 0 for s in strides):
            raise ValueError(f"`strides` must be positive, got {strides!r}")
        self.num_classes = num_classes
        self.strides = tuple(int(s) for s in strides)

    @staticmethod
    def build_term(spec: LossSpec, default: LossMetric) -> LossMetric:
        """The loss module of a term: ``spec`` built in any config dialect, or ``default`` when ``None``."""
        return default if spec is None else build_loss(spec)

    @staticmethod
    def average_over_ranks(*values: Tensor) -> list[Tensor]:
        """Average scalar normalisers over DDP ranks with a single all-reduce (identity in one process)."""
        stacked = reduce_mean(torch.stack([v.float() for v in values]))
        return list(stacked.unbind())

    def check_levels(self, **maps: Sequence[Tensor]) -> None:
        for name, value in maps.items():
            if not isinstance(value, (list, tuple)):
                raise TypeError(f"`{name}` must be a list with one map per level, got {type(value).__name__}")
            if len(value) != len(self.strides):
                raise ValueError(f"`{name}` has {len(value)} levels for {len(self.strides)} strides {self.strides}")

    def flatten_outputs(
        self,
        targets: Sequence[Any],
        cls_scores: Sequence[Tensor],
        bbox_preds: Sequence[Tensor],
        box_channels: int = 4,
        centerness: Any = _ABSENT,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Check and flatten per-level head outputs: ``(B, P, C)``, ``(B, P, box_channels)`` and ``(B, P)``.

        Raises ``ValueError`` naming the argument when the levels, channels, prior counts or the number of
        images in ``targets`` disagree.
        """
        maps = {"cls_scores": cls_scores, "bbox_preds": bbox_preds}
        if centerness is not _ABSENT:
            maps["centerness"] = centerness
        self.check_levels(**maps)
        cls = flatten_levels(cls_scores, self.num_classes, "cls_scores")
        box = flatten_levels(bbox_preds, box_channels, "bbox_preds")
        ctr = None if centerness is _ABSENT else flatten_levels(centerness, 1, "centerness").squeeze(-1)
        batch, num_priors = cls.shape[:2]
        for name, value in (("bbox_preds", box), ("centerness", ctr)):
            if value is not None and value.shape[:2] != (batch, num_priors):
                raise ValueError(
                    f"`{name}` cover {value.shape[1]} priors per image and {value.shape[0]} images, "
                    f"`cls_scores` {num_priors} and {batch}"
                )
        if len(targets) != batch:
            raise ValueError(f"`targets` has {len(targets)} images, the outputs have {batch}")
        return cls, box, ctr

    @staticmethod
    def featmap_sizes(maps: Sequence[Tensor]) -> list[tuple[int, int]]:
        return [(int(m.shape[-2]), int(m.shape[-1])) for m in maps]

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, strides={self.strides}"
