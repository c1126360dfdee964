"""``SplitLoaders``: the dataloader hooks every data module here shares."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from lightning_losses.data.collate import collate_detection

__all__ = ["SplitLoaders"]


class SplitLoaders:
    """Mixin of a ``LightningDataModule`` (list it first): ``train/val/test/predict_dataloader`` over one rule.

    Only training shuffles, from a generator seeded with ``seed``; workers persist when there are any. The
    host class provides ``dataset(split)``, ``batch_size``, ``num_workers`` and ``seed``, and may set
    ``pin_memory`` or override :meth:`collate_fn` (default :func:`~lightning_losses.data.collate_detection`).
    """

    batch_size: int
    num_workers: int
    seed: int
    pin_memory: bool = False

    def dataset(self, split: str) -> Dataset:
        raise NotImplementedError

    def collate_fn(self) -> Callable[[Any], Any] | None:
        """The loaders' ``collate_fn`` (``None``: PyTorch's default collation)."""
        return collate_detection

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        generator = torch.Generator().manual_seed(int(self.seed)) if shuffle else None
        return DataLoader(
            self.dataset(split),
            batch_size=self.batch_size,
            shuffle=shuffle,
            generator=generator,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=self.pin_memory,
            collate_fn=self.collate_fn(),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict", shuffle=False)
