"""tlcli's ModelCheckpoint keeps the files Lightning's would write, but an epoch that saves the best checkpoint
hard-links last.ckpt to it instead of writing the same state twice. Real Trainer, real files, Lightning's own
ModelCheckpoint run beside it as the reference."""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch import callbacks as pl_callbacks
from lightning.pytorch.demos.boring_classes import BoringModel

from tl_cli.transfer.callbacks import ModelCheckpoint


class ScheduledVal(BoringModel):
    """A model whose val/acc follows a fixed schedule, so which epochs improve does not depend on the machine."""

    def __init__(self, schedule: list[float]) -> None:
        super().__init__()
        self.schedule = schedule

    def on_validation_epoch_end(self) -> None:
        self.log("val/acc", self.schedule[self.current_epoch])


def _fit(
    folder: Path, schedule: list[float], checkpoint_class: type, on_train_epoch_end: bool, resume=None
) -> L.Trainer:
    L.seed_everything(0)
    checkpoint = checkpoint_class(
        dirpath=folder,
        filename="best",
        monitor="val/acc",
        mode="max",
        save_last=True,
        enable_version_counter=False,
        save_on_train_epoch_end=on_train_epoch_end,
    )
    trainer = L.Trainer(
        max_epochs=len(schedule),
        limit_train_batches=2,
        limit_val_batches=1,
        callbacks=[checkpoint],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(ScheduledVal(schedule), ckpt_path=resume)
    return trainer


def _saved(path: Path) -> tuple[int, dict[str, torch.Tensor]]:
    checkpoint = torch.load(path, weights_only=False)
    return checkpoint["epoch"], checkpoint["state_dict"]


def _assert_same_checkpoints(ours: Path, lightnings: Path) -> None:
    assert sorted(p.name for p in ours.iterdir()) == sorted(p.name for p in lightnings.iterdir())
    for name in sorted(p.name for p in ours.iterdir()):
        (epoch, weights), (ref_epoch, ref_weights) = _saved(ours / name), _saved(lightnings / name)
        assert epoch == ref_epoch, name
        assert weights.keys() == ref_weights.keys() and all(torch.equal(weights[k], ref_weights[k]) for k in weights)


@pytest.mark.parametrize("on_train_epoch_end", [True, False])
@pytest.mark.parametrize("schedule", [[0.5, 0.7, 0.6, 0.8, 0.3], [0.5, 0.7, 0.6, 0.8, 0.9]])
def test_same_checkpoints_as_lightnings_with_last_linked_when_the_state_is_the_same(
    tmp_path: Path, schedule: list[float], on_train_epoch_end: bool
) -> None:
    ours, lightnings = tmp_path / "ours", tmp_path / "lightning"
    _fit(ours, schedule, ModelCheckpoint, on_train_epoch_end)
    _fit(lightnings, schedule, pl_callbacks.ModelCheckpoint, on_train_epoch_end)

    _assert_same_checkpoints(ours, lightnings)
    # Lightning writes last.ckpt only when a top-k checkpoint was saved in the same step: the same state, linked
    assert not os.path.samefile(lightnings / "best.ckpt", lightnings / "last.ckpt")
    assert os.path.samefile(ours / "best.ckpt", ours / "last.ckpt")


def test_resuming_from_a_linked_last_checkpoint_continues_as_lightnings(tmp_path: Path) -> None:
    ours, lightnings = tmp_path / "ours", tmp_path / "lightning"
    for folder, cls in ((ours, ModelCheckpoint), (lightnings, pl_callbacks.ModelCheckpoint)):
        _fit(folder, [0.5, 0.7], cls, False)
    assert os.path.samefile(ours / "best.ckpt", ours / "last.ckpt")
    for folder, cls in ((ours, ModelCheckpoint), (lightnings, pl_callbacks.ModelCheckpoint)):
        _fit(folder, [0.5, 0.7, 0.9, 0.4], cls, False, resume=folder / "last.ckpt")

    _assert_same_checkpoints(ours, lightnings)
    assert _saved(ours / "best.ckpt")[0] == 2 and os.path.samefile(ours / "best.ckpt", ours / "last.ckpt")


def test_last_is_written_in_full_where_no_checkpoint_was_saved_in_the_step(tmp_path: Path) -> None:
    """every_n_epochs=0 saves no top-k checkpoint: on_train_end writes last.ckpt alone, in full, as Lightning."""
    checkpoint = ModelCheckpoint(dirpath=tmp_path, every_n_epochs=0, save_last=True, enable_version_counter=False)
    trainer = L.Trainer(
        max_epochs=2,
        limit_train_batches=2,
        limit_val_batches=1,
        callbacks=[checkpoint],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(ScheduledVal([0.5, 0.7]))
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"] and os.stat(tmp_path / "last.ckpt").st_nlink == 1


def test_writing_a_linked_last_checkpoint_leaves_best_unchanged(tmp_path: Path) -> None:
    """Ctrl-C writes last.ckpt with trainer.save_checkpoint (GracefulInterrupt): best.ckpt must keep its epoch."""
    trainer = _fit(tmp_path, [0.5, 0.7, 0.6], ModelCheckpoint, True)
    assert os.path.samefile(tmp_path / "best.ckpt", tmp_path / "last.ckpt")
    with torch.no_grad():
        next(trainer.lightning_module.parameters()).add_(1.0)
    trainer.save_checkpoint(tmp_path / "last.ckpt")

    (best_epoch, best), (_, last) = _saved(tmp_path / "best.ckpt"), _saved(tmp_path / "last.ckpt")
    assert best_epoch == 1 and not os.path.samefile(tmp_path / "best.ckpt", tmp_path / "last.ckpt")
    assert any(not torch.equal(best[k], last[k]) for k in best)
