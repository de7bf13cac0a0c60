"""LightningModule: steps, torchmetrics, timm Mixup/CutMix, class-weighted loss, and an optimizer over trainable
parameters only."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import lightning as L
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from tl_cli import hardware
from tl_cli.transfer.network import TransferNet
from tl_cli.transfer.strategies import param_groups

if TYPE_CHECKING:
    from timm.data import Mixup


class TransferModule(L.LightningModule):
    def __init__(
        self,
        net: TransferNet,
        num_classes: int,
        optim: dict[str, Any],
        backbone_lr_mult: float = 1.0,
        backbone: str = "",
        config: dict[str, Any] | None = None,
        class_weights: list[float] | None = None,
    ) -> None:
        super().__init__()
        # plain containers only, so checkpoints load with torch.load(weights_only=True)
        self.save_hyperparameters(ignore=["net"])
        self.net = net
        self.optim = dict(optim)
        # the head's LR (the backbone's is lr x backbone_lr_mult): configure_optimizers reads it, and Lightning's
        # LR finder (`tlcli lr-find`) finds it by this name
        self.lr = float(self.optim["lr"])
        self.backbone_lr_mult = backbone_lr_mult
        self.inputs_are_features = False  # True when the datamodule serves cached backbone features
        # this epoch's train loss sum and correct predictions, kept as tensors (no host sync per step)
        self._loss_sum: torch.Tensor | None = None
        self._correct: torch.Tensor | None = None
        self._seen = 0
        self.channels_last = False  # NHWC images: faster bf16 convolutions on CPUs with native bf16 and on GPUs
        self.compile_net = False  # model.compile: training steps run torch.compile's network (set by tlcli train)
        self._compiled: Callable[[torch.Tensor], torch.Tensor] | None = None  # that network, during fit only
        self.mixup = make_mixup((config or {}).get("data") or {}, num_classes, self.optim.get("label_smoothing", 0.0))
        # data.class_weights: the train loss's per-class weights (not saved in state_dict: the config has them)
        weights = torch.tensor(class_weights, dtype=torch.float32) if class_weights is not None else None
        self.register_buffer("class_weights", weights, persistent=False)
        self.metrics = torch.nn.ModuleDict([m for split in ("val", "test") for m in eval_metrics(split, num_classes)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _forward_loss(self, batch, split: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits, the labels accuracy counts against, loss). Train batches are mixed when data.mixup or
        data.cutmix is on: the loss is timm's SoftTargetCrossEntropy against the mixed (soft) targets, and train
        accuracy counts a prediction right when it is the mixed target's largest class."""
        images, labels = batch
        targets = None
        if split == "train" and self.mixup is not None:
            images, targets = mix_batch(self.mixup, images, labels)
        if self.channels_last and images.dim() == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        if split == "train" and self._compiled is not None:
            logits = self._compiled(images)
        else:
            logits = self.eager_logits(images)
        if targets is not None:
            return logits, targets.argmax(dim=-1), self.soft_target_loss(logits, targets)
        if split != "train":  # val/test loss unweighted: comparable across runs and with `tlcli eval`
            return logits, labels, F.cross_entropy(logits, labels)
        smoothing = self.optim.get("label_smoothing", 0.0)
        return logits, labels, F.cross_entropy(logits, labels, weight=self.class_weights, label_smoothing=smoothing)

    def eager_logits(self, inputs: torch.Tensor) -> torch.Tensor:
        """Logits of normalized images, or of cached backbone features when the datamodule serves those."""
        return self.net.forward_new_layers(inputs) if self.inputs_are_features else self.net(inputs)

    def soft_target_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """timm's SoftTargetCrossEntropy: cross-entropy against a target distribution per sample."""
        from timm.loss import SoftTargetCrossEntropy

        return SoftTargetCrossEntropy()(logits, targets)

    def _eval_step(self, batch, split: str) -> None:
        logits, labels, loss = self._forward_loss(batch, split)
        # sync_dist: under DDP every rank then selects, stops and reports on the same (all ranks') value
        bar = split == "val"
        self.log(f"{split}/loss", loss, on_epoch=True, prog_bar=bar, batch_size=len(labels), sync_dist=True)
        for name in EVAL_METRICS:
            metric = self.metrics[f"{split}_{name}"]
            metric.update(logits, labels)
            bar = name == "acc" and split == "val"
            self.log(f"{split}/{name}", metric, on_epoch=True, prog_bar=bar, batch_size=len(labels))

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

    def on_train_start(self) -> None:
        if not self.compile_net:
            return
        # a bound method, not the module: torch.compile(module) would register an OptimizedModule and add
        # `_orig_mod.` keys to state_dict. Made here, not in __init__: ddp_spawn pickles the module before fit.
        # The reset drops a sweep's earlier jobs' graphs, which would count against dynamo's recompile limit.
        torch.compiler.reset()
        self._compiled = torch.compile(self.net.forward_new_layers if self.inputs_are_features else self.net.forward)

    def on_train_end(self) -> None:
        self._compiled = None  # val/test and anything after fit run the eager network

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
        groups = param_groups(self.net, self.lr, self.backbone_lr_mult, o["weight_decay"], layer_decay)
        extra = {"momentum": o["momentum"]} if o["name"].lower() in ("sgd", "momentum", "nesterov") else {}
        if o.get("fused", True):  # .get: a checkpoint from before the key existed
            extra.update(hardware.fused_optimizer_kwargs(o["name"], next(self.net.parameters()).device))
        optimizer = create_optimizer_v2(groups, opt=o["name"], lr=self.lr, weight_decay=o["weight_decay"], **extra)
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


# logged per val/test epoch as <split>/<name>; callbacks.model_checkpoint.monitor may pick any of them (or loss)
EVAL_METRICS = ("acc", "balanced_acc", "f1_macro")


def eval_metrics(split: str, num_classes: int) -> list[tuple[str, torch.nn.Module]]:
    """torchmetrics for one split: accuracy, balanced accuracy (the mean of per-class recalls) and macro F1. The
    macro averages skip a class absent from both the labels and the predictions."""
    kwargs = {"num_classes": num_classes, "validate_args": False}
    return [
        (f"{split}_acc", MulticlassAccuracy(average="micro", **kwargs)),
        (f"{split}_balanced_acc", MulticlassAccuracy(average="macro", **kwargs)),
        (f"{split}_f1_macro", MulticlassF1Score(average="macro", **kwargs)),
    ]


def make_mixup(data: dict[str, Any], num_classes: int, label_smoothing: float) -> Mixup | None:
    """timm's Mixup for data.mixup / data.cutmix alphas (None when both are 0); label smoothing goes into its
    targets, as timm's train.py does."""
    mixup_alpha, cutmix_alpha = float(data.get("mixup") or 0.0), float(data.get("cutmix") or 0.0)
    if mixup_alpha <= 0 and cutmix_alpha <= 0:
        return None
    from timm.data import Mixup

    return Mixup(
        mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, label_smoothing=label_smoothing, num_classes=num_classes
    )


def mix_batch(mixup: Mixup, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixed images and soft targets. timm pairs sample i with sample n-1-i, so it needs an even batch: an odd
    one (the last of an epoch) trains unmixed, against the same smoothed one-hot targets mixing would give at
    lambda = 1."""
    from timm.data.mixup import mixup_target

    if len(images) % 2:
        return images, mixup_target(labels, mixup.num_classes, lam=1.0, smoothing=mixup.label_smoothing)
    return mixup(images, labels)  # mixes in place: the batch is the DataLoader's own fresh tensor
