"""tlcli's ModelCheckpoint: best.ckpt exactly as Lightning's own; last.ckpt the final epoch's state, written every
epoch as timm's train.py does, and hard-linked to best.ckpt (not written twice) when that epoch improved. Real
Trainer, real files, Lightning's ModelCheckpoint run beside it as the reference."""

from __future__ import annotations

import errno
import os
import pickle
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.fabric.plugins.io import torch_io
from lightning.pytorch import callbacks as pl_callbacks
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.plugins.io import TorchCheckpointIO

from tl_cli.run.checkpoint_io import DirectCheckpointIO
from tl_cli.run.training import make_trainer
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


def _same(a: object, b: object) -> bool:
    """Equal checkpoints or parts of them: tensors bit for bit, dicts, lists and plain values."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def _assert_last_is_the_final_epoch(trainer: L.Trainer, folder: Path, final_improved: bool) -> None:
    epoch, weights = _saved(folder / "last.ckpt")
    assert epoch == trainer.current_epoch - 1 and _same(weights, trainer.lightning_module.state_dict())
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
    assert epoch == ref_epoch == schedule.index(max(schedule)) and _same(weights, ref_weights)
    _assert_last_is_the_final_epoch(trainer, ours, final_improved=schedule[-1] == max(schedule))


def test_resuming_continues_from_the_final_epoch_not_the_best(tmp_path: Path) -> None:
    interrupted = _fit(tmp_path / "run", [0.5, 0.7, 0.6], ModelCheckpoint, True)
    _assert_last_is_the_final_epoch(interrupted, tmp_path / "run", final_improved=False)
    resumed = _fit(tmp_path / "run", [0.5, 0.7, 0.6, 0.9, 0.4], ModelCheckpoint, True, tmp_path / "run" / "last.ckpt")
    uninterrupted = _fit(tmp_path / "ref", [0.5, 0.7, 0.6, 0.9, 0.4], ModelCheckpoint, True)

    assert resumed.global_step == uninterrupted.global_step
    assert _same(resumed.lightning_module.state_dict(), uninterrupted.lightning_module.state_dict())
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
    assert not _same(best, last)


def test_last_is_the_final_epoch_also_when_it_did_not_validate(tmp_path: Path) -> None:
    """check_val_every_n_epoch=2: epoch 1 validates and is the best; epoch 2 does not validate, last.ckpt holds it."""
    trainer = _fit(tmp_path, [0.5, 0.7, 0.9], ModelCheckpoint, None, val_every=2)
    assert _saved(tmp_path / "best.ckpt")[0] == 1
    _assert_last_is_the_final_epoch(trainer, tmp_path, final_improved=False)


def test_a_checkpoint_is_named_relative_to_its_run_also_through_a_symlinked_output_dir(tmp_path: Path) -> None:
    from tl_cli.rundir import BEST, RunDir

    (tmp_path / "real" / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "outputs").symlink_to(tmp_path / "real")
    run = RunDir(tmp_path / "outputs" / "run")  # the run dir as Hydra names it: through the symlink
    best = tmp_path / "real" / "run" / BEST  # as a callback may hold it: resolved
    assert run.relative(best) == str(BEST) == run.relative(run / BEST)
    assert run.relative(tmp_path / "elsewhere.ckpt") == str(tmp_path / "elsewhere.ckpt")


def _one_epoch_checkpoint(folder: Path) -> tuple[L.Trainer, dict]:
    """A real Trainer after one epoch, made by tlcli's make_trainer, and the checkpoint dict it would save."""
    args = {"accelerator": "cpu", "devices": 1, "max_epochs": 1, "limit_train_batches": 2, "limit_val_batches": 1}
    args |= {"enable_progress_bar": False}
    args |= {"enable_checkpointing": False, "enable_model_summary": False, "default_root_dir": str(folder)}
    trainer, _ = make_trainer(args, "false", callbacks=[], loggers=[])
    trainer.fit(BoringModel())
    return trainer, trainer._checkpoint_connector.dump_checkpoint()


def test_a_run_saves_through_direct_checkpoint_io_the_same_checkpoint_as_lightnings(tmp_path: Path) -> None:
    trainer, checkpoint = _one_epoch_checkpoint(tmp_path / "fit")
    assert isinstance(trainer.strategy.checkpoint_io, DirectCheckpointIO)
    trainer.save_checkpoint(tmp_path / "ours.ckpt")
    TorchCheckpointIO().save_checkpoint(checkpoint, tmp_path / "lightning.ckpt")

    ours, lightnings = (torch.load(tmp_path / f"{n}.ckpt", weights_only=False) for n in ("ours", "lightning"))
    assert ours["optimizer_states"] and _same(ours, lightnings)
    assert sorted(p.name for p in tmp_path.glob("*.ckpt*")) == ["lightning.ckpt", "ours.ckpt"]


def test_a_failed_save_keeps_the_old_checkpoint_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    _, checkpoint = _one_epoch_checkpoint(tmp_path / "fit")
    path = tmp_path / "last.ckpt"
    DirectCheckpointIO().save_checkpoint(checkpoint, path)
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):  # a lambda cannot be pickled
        DirectCheckpointIO().save_checkpoint({**checkpoint, "epoch": lambda: 0}, path)
    assert _same(torch.load(path, weights_only=False), checkpoint)
    assert [p.name for p in tmp_path.glob("*.ckpt*")] == ["last.ckpt"]


def test_saving_to_a_hard_linked_name_leaves_the_other_name_unchanged(tmp_path: Path, cross_filesystem) -> None:
    """Also where fsspec's move would copy into the existing file (Lightning's own IO then writes through)."""
    _, checkpoint = _one_epoch_checkpoint(tmp_path / "fit")
    best, last = tmp_path / "best.ckpt", tmp_path / "last.ckpt"
    DirectCheckpointIO().save_checkpoint(checkpoint, best)
    os.link(best, last)
    DirectCheckpointIO().save_checkpoint({**checkpoint, "epoch": checkpoint["epoch"] + 1}, last)

    assert not os.path.samefile(best, last)
    assert _saved(best)[0] == checkpoint["epoch"] and _saved(last)[0] == checkpoint["epoch"] + 1


def test_a_local_save_does_not_serialize_into_memory_first(tmp_path: Path, monkeypatch) -> None:
    """Lightning's TorchCheckpointIO saves through `_atomic_save` (torch.save into a BytesIO); ours never calls it."""
    _, checkpoint = _one_epoch_checkpoint(tmp_path / "fit")

    def in_memory(*args, **kwargs):
        raise AssertionError("Lightning's in-memory save was called")

    monkeypatch.setattr(torch_io, "_atomic_save", in_memory)
    with pytest.raises(AssertionError, match="in-memory"):
        TorchCheckpointIO().save_checkpoint(checkpoint, tmp_path / "lightning.ckpt")
    DirectCheckpointIO().save_checkpoint(checkpoint, tmp_path / "ours.ckpt")
    assert _same(torch.load(tmp_path / "ours.ckpt", weights_only=False), checkpoint)


def test_make_trainer_keeps_a_checkpoint_io_the_user_passed() -> None:
    own = TorchCheckpointIO()
    trainer, _ = make_trainer({"plugins": [own], "accelerator": "cpu", "devices": 1}, "false", [], [])
    assert trainer.strategy.checkpoint_io is own
