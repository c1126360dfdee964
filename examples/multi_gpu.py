"""Multi-GPU and multi-node training with Lightning DDP, and what the losses do under it.

Launch. Nothing in the model changes: set the trainer's ``devices``, ``num_nodes`` and ``strategy``::

    L.Trainer(accelerator="gpu", devices=4, num_nodes=2, strategy="ddp")
    lightning-losses fit --config configs/retinanet.yaml --trainer.accelerator=gpu \\
        --trainer.devices=4 --trainer.num_nodes=2 --trainer.strategy=ddp

On one machine that is all. On several, start the same command on every node with
``MASTER_ADDR=<node 0's address> MASTER_PORT=29500 NODE_RANK=<0..num_nodes-1>`` set, or let SLURM
(``srun``, ``--ntasks-per-node=4``) or ``torchrun --nnodes=2 --nproc_per_node=4 ...`` start the
processes; Lightning reads their environment.

What the losses do under DDP:

- Logged values. Each term is a ``LossMetric`` whose running mean lives in two ``sum``-reduced states
  (loss sum, call count). Lightning syncs them once per epoch when it logs the epoch value, so
  ``train/loss_cls_epoch`` is the exact mean over every step of every rank; logging makes no collective
  per step (unlike ``self.log(tensor, sync_dist=True)``). Step values are the local rank's.
- Gradients. Criteria average their batch-dependent normalisers (``num_pos`` and friends) over ranks,
  stacked into one all-reduce per training step, so every rank divides by the same global count,
  as one large batch would.
- Data. With ``use_distributed_sampler=True`` (the default) Lightning wraps the dataloaders in a
  ``DistributedSampler``: each rank reads its own shard (the training shards reshuffled each epoch), and
  the effective batch is ``batch_size × devices × num_nodes``; a validation set that does not divide
  evenly is padded with repeated images. Set it to ``False`` only if your data module shards by rank itself.

Run ``python examples/multi_gpu.py``: with two or more GPUs it trains with ``strategy="ddp"`` on all of
them; otherwise it runs the same fit in 2 CPU processes (``ddp`` over gloo) for a few steps and prints
each rank's local means beside the synced epoch values.

Prefer ``strategy="ddp"`` to ``"ddp_spawn"`` on CPU: ``ddp_spawn`` pickles the model into its workers
through shared memory and un-shares only parameters and buffers, so before the first ``reset()`` the
ranks' metric states are one tensor written by both processes.
"""

from __future__ import annotations

import lightning as L
import torch

from lightning_losses.demo import RetinaNetDetector, SyntheticShapesDataModule

TERMS = ("loss_cls", "loss_bbox")


class ShowRankMeans(L.Callback):
    """At epoch end, print every rank's local running means, gathered from their metric states."""

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = [getattr(pl_module.criterion, t) for t in TERMS]  # the training copy's LossMetric terms
        states = torch.stack([torch.stack([m.loss_sum, m.num_calls]) for m in metrics])  # local, not yet synced
        gathered = pl_module.all_gather(states)  # (world, terms, 2); a collective for this demo only
        if trainer.is_global_zero:
            for i, term in enumerate(TERMS):
                ranks = ", ".join(
                    f"rank {r} {s / n:.4f} ({n:.0f} steps)" for r, (s, n) in enumerate(gathered[:, i].tolist())
                )
                total, calls = gathered[:, i].sum(0).tolist()
                print(f"train/{term}: {ranks} -> global mean {total / calls:.4f}")


def trainer_kwargs() -> dict:
    if torch.cuda.device_count() >= 2:
        return {"accelerator": "gpu", "devices": torch.cuda.device_count(), "num_nodes": 1, "strategy": "ddp"}
    return {"accelerator": "cpu", "devices": 2, "num_nodes": 1, "strategy": "ddp"}  # re-launches this script


def main() -> None:
    L.seed_everything(0, verbose=False)
    kwargs = trainer_kwargs()
    trainer = L.Trainer(
        **kwargs,
        max_epochs=1,
        limit_train_batches=2,  # per rank
        limit_val_batches=1,
        use_distributed_sampler=True,  # the default: each rank reads a distinct shard
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[ShowRankMeans()],
    )
    model = RetinaNetDetector(num_classes=3, channels=16)
    data = SyntheticShapesDataModule(image_size=64, num_train=16, num_val=8, batch_size=4)
    trainer.fit(model, data)
    if trainer.is_global_zero:
        world = kwargs["devices"] * kwargs["num_nodes"]
        print(f"{world} processes ({kwargs['strategy']}, {kwargs['accelerator']}); synced epoch values:")
        for key in (*(f"train/{t}_epoch" for t in TERMS), "train/loss_epoch", "val/loss_cls", "val/loss"):
            print(f"  {key} = {float(trainer.callback_metrics[key]):.4f}")


if __name__ == "__main__":
    main()
