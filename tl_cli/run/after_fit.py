"""What `tlcli train` adds to a run dir from the fitted run itself (global rank 0 only): curves.png from its
metrics.csv, and the temperature fitted on its val split (calibration.json)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch
from omegaconf import DictConfig

from tl_cli.rundir import RunDir
from tl_cli.transfer.calibration import TEMPERATURE_RANGE, calibrate, write_calibration

if TYPE_CHECKING:
    import lightning as L

    from tl_cli.data.datamodule import TransferDataModule
    from tl_cli.transfer.module import TransferModule

log = logging.getLogger(__name__)


def see_run(
    run: RunDir, cfg: DictConfig, trainer: L.Trainer, module: TransferModule, datamodule: TransferDataModule
) -> None:
    """(calibrate=true, the default) the temperature of the tested weights on val."""
    if not trainer.is_global_zero:
        return
    if cfg.get("calibrate", True):  # .get: a resumed run's config may predate the key
        fit_run_temperature(run, trainer, module, datamodule)


def fit_run_temperature(
    run: RunDir, trainer: L.Trainer, module: TransferModule, datamodule: TransferDataModule
) -> None:
    """One temperature on the val split's logits, cached once (LBFGS on them costs milliseconds)."""
    if len(datamodule.splits.get("val") or []) == 0:
        log.info("no val split: no temperature fitted (predict and export print uncalibrated probabilities)")
        return
    logits, targets = val_logits(trainer, module, datamodule)
    calibration = calibrate(logits, targets, "val")
    path = write_calibration(run.path, calibration)
    if calibration.temperature in TEMPERATURE_RANGE:
        log.warning(
            "temperature %.4g is at its bound %s: the val split gives no finite optimum (e.g. every val image "
            "right); more val images give a meaningful one, calibrate=false keeps the raw softmax",
            calibration.temperature,
            TEMPERATURE_RANGE,
        )
    log.info(
        "temperature %.4g fitted on %d val images: ECE %.4f -> %.4f, NLL %.4f -> %.4f (%s)",
        calibration.temperature,
        calibration.images,
        calibration.ece,
        calibration.ece_calibrated,
        calibration.nll,
        calibration.nll_calibrated,
        path.name,
    )


@torch.no_grad()
def val_logits(
    trainer: L.Trainer, module: TransferModule, datamodule: TransferDataModule
) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 logits of the module's (tested) weights on the whole val split, as validation computes them."""
    device = trainer.strategy.root_device
    module.to(device).eval()
    logits, targets = [], []
    with trainer.precision_plugin.forward_context():
        for images, labels in datamodule.val_dataloader():  # the plain loader: every val image, in order
            inputs, labels = datamodule.on_after_batch_transfer((images.to(device), labels.to(device)), 0)
            if module.channels_last and inputs.dim() == 4:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            logits.append(module.eager_logits(inputs).float().cpu())
            targets.append(labels.cpu())
    return torch.cat(logits), torch.cat(targets).long()
