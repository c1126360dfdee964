"""A 2-rank CPU `ddp_spawn` fit of the tiny YOLOX model where ranks see different data.

Each rank writes its per-step term values, the collectives it made during each training step and
after the last one (the epoch-end sync of the logged metrics), and, after fit, the epoch values
Lightning logged. Run from the repository root: ``python -m tests.scripts.ddp_fit OUT_DIR`` (or run the file
with the repository on ``PYTHONPATH``, as the root conftest sets it). Used by tests/lightning/test_ddp_fit.py
and benchmarks/collectives.py.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning as L
import torch
import torch.distributed as dist
from torchmetrics import Metric

from tests.lightning.tiny import TinyYOLOX, loader

COLLECTIVES = ("all_reduce", "all_gather", "all_gather_object", "broadcast", "reduce", "gather", "barrier")


def _count(calls: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for name in calls:
        counts[name] = counts.get(name, 0) + 1
    return counts


class CountingYOLOX(TinyYOLOX):
    """Counts torch.distributed collectives made between the start and the end of each training step."""

    def __init__(self, out_dir: str = "") -> None:
        super().__init__()
        self.out_dir = out_dir
        self.calls: list[str] = []
        self.per_step: list[dict[str, int]] = []
        self._originals: dict[str, object] = {}

    def train_dataloader(self):
        return loader(8, offset=self.global_rank + 1, batch_size=2)

    def on_fit_start(self) -> None:
        for name in COLLECTIVES:
            original = getattr(dist, name)
            self._originals[name] = original

            def counting(*args, _name=name, _original=original, **kwargs):
                self.calls.append(_name)
                return _original(*args, **kwargs)

            setattr(dist, name, counting)

    def on_train_batch_start(self, batch, batch_idx) -> None:
        self.calls.clear()

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        self.per_step.append(_count(self.calls))
        self.calls.clear()

    def on_train_end(self) -> None:
        for name, original in self._originals.items():
            setattr(dist, name, original)
        epoch_end = _count(self.calls)  # made after the last step: Lightning computing the logged metrics
        logged = {k: float(v) for k, v in self.trainer.callback_metrics.items() if k.startswith("train/")}
        states = sum(len(m._defaults) for m in self.trainer.lightning_module.modules() if isinstance(m, Metric))
        result = {
            "returned": self.returned["train"],
            "collectives": self.per_step,
            "epoch_end": epoch_end,
            "logged": logged,
            "metric_states": states,
        }
        Path(self.out_dir, f"rank{self.global_rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    torch.manual_seed(0)
    trainer = L.Trainer(
        strategy="ddp_spawn",
        accelerator="cpu",
        devices=2,
        max_epochs=1,
        use_distributed_sampler=False,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(CountingYOLOX(sys.argv[1]))
