"""LightningModule: steps, torchmetrics, and an optimizer over trainable parameters only."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy

from tl_cli.transfer.network import TransferNet
from tl_cli.transfer.strategies import param_groups


class TransferModule(L.LightningModule):
    def __init__(
        self,
        net: TransferNet,
        num_classes: int,
        optim: dict[str, Any],
        backbone_lr_mult: float = 1.0,
        backbone: str = "",
        config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        # plain containers only, so checkpoints load with torch.load(weights_only=True)
        self.save_hyperparameters(ignore=["net"])
        self.net = net
        self.optim = dict(optim)
        self.backbone_lr_mult = backbone_lr_mult
        self.inputs_are_features = False  # True when the datamodule serves cached backbone features
        # this epoch's train loss sum and correct predictions, kept as tensors (no host sync per step)
        self._loss_sum: torch.Tensor | None = None
        self._correct: torch.Tensor | None = None
        self._seen = 0
        self.channels_last = False  # NHWC images: faster bf16 convolutions on CPUs with native bf16 and on GPUs
        self.metrics = torch.nn.ModuleDict(
            {
                f"{split}_acc": MulticlassAccuracy(num_classes=num_classes, average="micro", validate_args=False)
                for split in ("val", "test")
            }
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _forward_loss(self, batch, split: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        images, labels = batch
        if self.channels_last and images.dim() == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        logits = self.net.forward_new_layers(images) if self.inputs_are_features else self.net(images)
        smoothing = self.optim.get("label_smoothing", 0.0) if split == "train" else 0.0
        return logits, labels, F.cross_entropy(logits, labels, label_smoothing=smoothing)

    def _eval_step(self, batch, split: str) -> None:
        logits, labels, loss = self._forward_loss(batch, split)
        acc = self.metrics[f"{split}_acc"]
        acc.update(logits, labels)
        self.log(f"{split}/loss", loss, on_epoch=True, prog_bar=split == "val", batch_size=len(labels))
        self.log(f"{split}/acc", acc, on_epoch=True, prog_bar=split == "val", batch_size=len(labels))

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        logits, labels, loss = self._forward_loss(batch, "train")
        # Train metrics are summed here and logged once per epoch: per-step self.log calls (~0.75 ms) and a
        # torchmetrics update (~0.15 ms) are a measured tax on small models (benchmarks/bench_throughput.py).
        batch_loss = loss.detach().float() * len(labels)  # float32: a float16 sum would overflow
        correct = (logits.detach().argmax(dim=-1) == labels).sum()
        first = self._loss_sum is None
        self._loss_sum = batch_loss if first else self._loss_sum + batch_loss
        self._correct = correct if first else self._correct + correct
        self._seen += len(labels)
        if batch_idx % max(1, self.trainer.log_every_n_steps) == 0:
            # host syncs (a GPU stall) only every log_every_n_steps: a nan/inf stays in the running sum
            self._stop_if_not_finite()
            self.log("loss", loss.detach(), prog_bar=True, logger=False, on_step=True, on_epoch=False)
        return loss

    def _stop_if_not_finite(self) -> None:
        if self._loss_sum is not None and not torch.isfinite(self._loss_sum):
            from tl_cli.errors import TlcliError

            raise TlcliError(
                f"training loss became {self._loss_sum.item()} by epoch {self.current_epoch}, "
                f"step {self.global_step}; lower optim.lr (now {self.optim['lr']}) or use trainer.precision=32-true"
            )

    def on_validation_start(self) -> None:
        self._stop_if_not_finite()  # before validation ends in a checkpoint of the (nan) weights

    def epoch_train_metrics(self) -> tuple[float, float] | None:
        """This epoch's mean train loss and accuracy so far (one host sync), for the per-epoch log line."""
        if not self._seen:
            return None
        return float(self._loss_sum) / self._seen, float(self._correct) / self._seen

    def on_train_epoch_end(self) -> None:
        self._stop_if_not_finite()  # runs before ModelCheckpoint's epoch-end save
        if self._seen:
            self.log("train/loss", self._loss_sum / self._seen, sync_dist=True)
            self.log("train/acc", self._correct.float() / self._seen, sync_dist=True, prog_bar=True)
        self._loss_sum, self._correct, self._seen = None, None, 0

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def configure_optimizers(self):
        from timm.optim import create_optimizer_v2

        o = self.optim
        layer_decay = o.get("layer_decay")  # .get: checkpoints from before the key existed lack it
        groups = param_groups(self.net, o["lr"], self.backbone_lr_mult, o["weight_decay"], layer_decay)
        extra = {"momentum": o["momentum"]} if o["name"].lower() in ("sgd", "momentum", "nesterov") else {}
        optimizer = create_optimizer_v2(groups, opt=o["name"], lr=o["lr"], weight_decay=o["weight_decay"], **extra)
        if o.get("scheduler", "cosine") == "constant":
            return optimizer
        epochs = max(1, int(self.trainer.max_epochs or 1))
        warmup = int(o.get("warmup_epochs", 0))

        def factor(epoch: int) -> float:  # linear warmup, then cosine to zero at max_epochs
            if epoch < warmup:
                return (epoch + 1) / (warmup + 1)
            progress = (epoch - warmup) / max(1, epochs - warmup)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
