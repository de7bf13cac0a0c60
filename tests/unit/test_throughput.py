"""summary.json's train images/s: the training loop's time only, validation left out (a real Trainer)."""

from __future__ import annotations

import time

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from tl_cli.transfer.callbacks import Throughput

VAL_SLEEP = 0.2  # seconds per validation batch


class SlowValidation(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 2)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.cross_entropy(self.layer(x), y)

    def validation_step(self, batch, batch_idx) -> None:
        time.sleep(VAL_SLEEP)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def loader() -> DataLoader:
    data = TensorDataset(torch.randn(32, 4), torch.randint(0, 2, (32,)))
    return DataLoader(data, batch_size=8)


def test_train_seconds_leave_out_validation() -> None:
    throughput = Throughput()
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=2,
        val_check_interval=2,  # validation in the middle of each epoch and at its end
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[throughput],
    )
    start = time.perf_counter()
    trainer.fit(SlowValidation(), train_dataloaders=loader(), val_dataloaders=loader())
    wall = time.perf_counter() - start
    slept = 2 * 2 * 4 * VAL_SLEEP  # 2 epochs x 2 validations x 4 batches
    assert throughput.images == 2 * 32
    assert 0 < throughput.seconds <= wall - slept
