"""tlcli's ModelCheckpoint: best.ckpt exactly as Lightning's own; last.ckpt the final epoch's state, written every
epoch as timm's train.py does, and hard-linked to best.ckpt (not written twice) when that epoch improved. Real
Trainer, real files, Lightning's ModelCheckpoint run beside it as the reference."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch import callbacks as pl_callbacks
from lightning.pytorch.demos.boring_classes import BoringModel

from tl_cli.transfer.callbacks import ModelCheckpoint, save_checkpoint_unshared


class ScheduledVal(BoringModel):
    """A model whose val/acc follows a fixed schedule, so which epochs improve does not depend on the machine."""

    def __init__(self, schedule: list[float]) -> None:
        super().__init__()
        self.schedule = schedule

    def on_validation_epoch_end(self) -> None:
        self.log("val/acc", self.schedule[self.current_epoch])


@pytest.fixture
def cross_filesystem(monkeypatch) -> None:
    """fsspec writes a checkpoint to a temporary file in TMPDIR and moves it; where TMPDIR is another filesystem
    than the outputs (a local /tmp, outputs on NFS) the rename fails with EXDEV and shutil.move copies into the
    existing file instead, through any hard link it has. Make every rename fail that way."""

    def rename(src, dst, *args, **kwargs):
        raise OSError(errno.EXDEV, "Invalid cross-device link", src)

    monkeypatch.setattr(os, "rename", rename)


def _fit(
    folder: Path,
    schedule: list[float],
    checkpoint_class: type,
    on_train_epoch_end: bool | None,
    resume: Path | None = None,
    val_every: int = 1,
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
        check_val_every_n_epoch=val_every,
    )
    trainer.fit(ScheduledVal(schedule), ckpt_path=resume)
    return trainer


def _saved(path: Path) -> tuple[int, dict[str, torch.Tensor]]:
    checkpoint = torch.load(path, weights_only=False)
    return checkpoint["epoch"], checkpoint["state_dict"]


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _assert_last_is_the_final_epoch(trainer: L.Trainer, folder: Path, final_improved: bool) -> None:
    epoch, weights = _saved(folder / "last.ckpt")
    assert epoch == trainer.current_epoch - 1 and _equal(weights, trainer.lightning_module.state_dict())
    assert os.path.samefile(folder / "best.ckpt", folder / "last.ckpt") == final_improved


@pytest.mark.parametrize("on_train_epoch_end", [True, False])
@pytest.mark.parametrize("schedule", [[0.5, 0.7, 0.6, 0.8, 0.3, 0.4], [0.5, 0.7, 0.6, 0.8, 0.9]])
def test_best_as_lightnings_and_last_the_final_epoch_linked_when_it_improved(
    tmp_path: Path, schedule: list[float], on_train_epoch_end: bool, cross_filesystem
) -> None:
    ours, lightnings = tmp_path / "ours", tmp_path / "lightning"
    trainer = _fit(ours, schedule, ModelCheckpoint, on_train_epoch_end)
    _fit(lightnings, schedule, pl_callbacks.ModelCheckpoint, on_train_epoch_end)

    assert sorted(p.name for p in ours.iterdir()) == ["best.ckpt", "last.ckpt"]
    (epoch, weights), (ref_epoch, ref_weights) = _saved(ours / "best.ckpt"), _saved(lightnings / "best.ckpt")
    assert epoch == ref_epoch == schedule.index(max(schedule)) and _equal(weights, ref_weights)
    _assert_last_is_the_final_epoch(trainer, ours, final_improved=schedule[-1] == max(schedule))


def test_resuming_continues_from_the_final_epoch_not_the_best(tmp_path: Path) -> None:
    interrupted = _fit(tmp_path / "run", [0.5, 0.7, 0.6], ModelCheckpoint, True)
    _assert_last_is_the_final_epoch(interrupted, tmp_path / "run", final_improved=False)
    resumed = _fit(tmp_path / "run", [0.5, 0.7, 0.6, 0.9, 0.4], ModelCheckpoint, True, tmp_path / "run" / "last.ckpt")
    uninterrupted = _fit(tmp_path / "ref", [0.5, 0.7, 0.6, 0.9, 0.4], ModelCheckpoint, True)

    assert resumed.global_step == uninterrupted.global_step
    assert _equal(resumed.lightning_module.state_dict(), uninterrupted.lightning_module.state_dict())
    assert _saved(tmp_path / "run" / "best.ckpt")[0] == 3
    _assert_last_is_the_final_epoch(resumed, tmp_path / "run", final_improved=False)


def test_writing_a_linked_last_checkpoint_leaves_best_unchanged(tmp_path: Path, cross_filesystem) -> None:
    """Ctrl-C writes last.ckpt with save_checkpoint_unshared (GracefulInterrupt): best.ckpt must keep its epoch."""
    trainer = _fit(tmp_path, [0.5, 0.7], ModelCheckpoint, True)
    assert os.path.samefile(tmp_path / "best.ckpt", tmp_path / "last.ckpt")
    with torch.no_grad():
        next(trainer.lightning_module.parameters()).add_(1.0)
    save_checkpoint_unshared(trainer, tmp_path / "last.ckpt")

    (best_epoch, best), (_, last) = _saved(tmp_path / "best.ckpt"), _saved(tmp_path / "last.ckpt")
    assert best_epoch == 1 and not os.path.samefile(tmp_path / "best.ckpt", tmp_path / "last.ckpt")
    assert not _equal(best, last)


def test_last_is_the_final_epoch_also_when_it_did_not_validate(tmp_path: Path) -> None:
    """check_val_every_n_epoch=2: epoch 1 validates and is the best; epoch 2 does not validate, last.ckpt holds it."""
    trainer = _fit(tmp_path, [0.5, 0.7, 0.9], ModelCheckpoint, None, val_every=2)
    assert _saved(tmp_path / "best.ckpt")[0] == 1
    _assert_last_is_the_final_epoch(trainer, tmp_path, final_improved=False)


def test_a_checkpoint_is_named_relative_to_its_run_also_through_a_symlinked_output_dir(tmp_path: Path) -> None:
    from tl_cli.run.rundir import BEST, RunDir

    (tmp_path / "real" / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "outputs").symlink_to(tmp_path / "real")
    run = RunDir(tmp_path / "outputs" / "run")  # the run dir as Hydra names it: through the symlink
    best = tmp_path / "real" / "run" / BEST  # as a callback may hold it: resolved
    assert run.relative(best) == str(BEST) == run.relative(run / BEST)
    assert run.relative(tmp_path / "elsewhere.ckpt") == str(tmp_path / "elsewhere.ckpt")
