"""A tiny YOLOX-style detector and fixed random data shared by the Lightning tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import lightning as L
import torch
from lightning.pytorch.loggers import Logger
from torch import nn
from torch.utils.data import DataLoader, Dataset

from lightning_losses import DetectionLossModule, YOLOXCriterion

NUM_CLASSES = 2


class BoxesDataset(Dataset):
    """``n`` 32×32 images, each with one box whose position depends on the index (and ``offset``)."""

    def __init__(self, n: int, offset: int = 0) -> None:
        self.n, self.offset = n, offset

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        gen = torch.Generator().manual_seed(i + 1000 * self.offset)
        xy = torch.randint(0, 16, (2,), generator=gen).float()
        box = torch.cat([xy, xy + 12]).view(1, 4)
        image = torch.rand(3, 32, 32, generator=gen)
        return image, {"boxes": box, "labels": torch.tensor([i % NUM_CLASSES])}


def collate(batch):
    images, targets = zip(*batch, strict=True)
    return torch.stack(images), list(targets)


def loader(n: int, offset: int = 0, batch_size: int = 2) -> DataLoader:
    return DataLoader(BoxesDataset(n, offset), batch_size=batch_size, collate_fn=collate)


class Recorder(Logger):
    """Keeps every ``log_metrics`` call: ``rows`` holds the metrics of each, as floats."""

    name = "recorder"
    version = 0

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict[str, float]] = []

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def log_metrics(self, metrics, step=None) -> None:
        self.rows.append({key: float(value) for key, value in metrics.items()})

    def values(self, key: str) -> list[float]:
        """Every value logged under ``key``, in order."""
        return [row[key] for row in self.rows if key in row]


def trainer(tmp_path, **kwargs) -> L.Trainer:
    """A quiet CPU trainer; pass ``logger=Recorder()`` to keep what is logged (every step)."""
    defaults = {
        "accelerator": "cpu",
        "logger": False,
        "log_every_n_steps": 1,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "default_root_dir": tmp_path,
    }
    return L.Trainer(**{**defaults, **kwargs})


@contextmanager
def returned_terms(criterion: nn.Module) -> Iterator[dict[str, float]]:
    """Collects the terms ``criterion`` returns inside the block (a forward hook, removed on exit)."""
    terms: dict[str, float] = {}

    def record(module, inputs, output):
        terms.update({term: value.item() for term, value in output.items()})

    handle = criterion.register_forward_hook(record)
    try:
        yield terms
    finally:
        handle.remove()


class TinyYOLOX(DetectionLossModule, L.LightningModule):
    """Two strides (8, 16) on 32×32 images; fused (B, 5 + C, H, W) outputs."""

    def __init__(self, criterion: nn.Module | None = None, lr: float = 1e-2) -> None:
        super().__init__(criterion=criterion if criterion is not None else YOLOXCriterion(NUM_CLASSES, strides=(8, 16)))
        self.save_hyperparameters()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=8, padding=1), nn.ReLU())
        self.down = nn.Sequential(nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU())
        self.head = nn.Conv2d(8, 5 + NUM_CLASSES, 1)
        self.returned: dict[str, list[dict[str, float]]] = {"train": [], "val": []}

    def forward(self, images):
        f8 = self.stem(images)
        return [self.head(f8), self.head(self.down(f8))]

    def _step(self, batch, stage):
        images, targets = batch
        with returned_terms(self.stage_criteria(stage)["criterion"]) as terms:
            loss = self.compute_losses((self(images),), targets)
        self.returned[stage].append({**terms, "loss": loss.item()})
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        return self._step(batch, "val")

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)
