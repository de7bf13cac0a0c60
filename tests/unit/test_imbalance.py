"""Class imbalance (issue 15) on a real imbalanced image folder and the real job `tlcli train` builds:
data.sampler=balanced draws the classes evenly at the normal epoch size, from images or cached features alike;
data.class_weights=balanced weights the train loss with sklearn's balanced weights; balanced accuracy and macro F1
are sklearn's; callbacks' monitor and mode are checked up front."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import balanced_accuracy_score, f1_score
from sklearn.utils.class_weight import compute_class_weight

from tests.conftest import compose, write_images
from tl_cli.config.checks import check_config
from tl_cli.data.features import cached_feature_splits
from tl_cli.errors import TlcliError
from tl_cli.run.training import TransferJob, build_job
from tl_cli.transfer.module import eval_metrics

MANY, FEW = 40, 4


def _job(root: Path, *overrides: str) -> TransferJob:
    """The job `tlcli train` builds on an image folder with 40 train images of one class and 4 of another."""
    splits = {"train": {"many": MANY, "few": FEW}, "val": {"many": 4, "few": 4}, "test": {"many": 4, "few": 4}}
    for split, counts in splits.items():
        if not (root / split).exists():
            write_images(root / split, counts)
    cfg = compose(
        ["experiment=smoke", "data=image_folder", f"data.root={root}", "data.augment=false", "data.batch_size=8",
         "model.in_chans=3", *overrides]
    )  # fmt: skip
    return build_job(cfg)


def _drawn_labels(job: TransferJob, seed: int = 0) -> list[int]:
    """The labels one train epoch serves, in order."""
    torch.manual_seed(seed)
    return [int(y) for _, labels in job.datamodule.train_dataloader() for y in labels]


def test_the_balanced_sampler_draws_the_classes_evenly_at_the_normal_epoch_size(tmp_path: Path) -> None:
    # optim.min_steps repeats the 44 images to 50 batches of 8 per epoch, whichever sampler draws them
    options = ["optim.min_steps=100", "trainer.max_epochs=2"]
    balanced, plain = _job(tmp_path, "data.sampler=balanced", *options), _job(tmp_path, *options)
    assert balanced.datamodule.train_epoch_size(8) == plain.datamodule.train_epoch_size(8) == 400
    drawn, plain_drawn = _drawn_labels(balanced), _drawn_labels(plain)
    assert len(drawn) == len(plain_drawn) == 400
    few = balanced.datamodule.classes.index("few")
    assert 0.4 < drawn.count(few) / len(drawn) < 0.6  # 1/2 expected; the margin is 4 standard deviations
    assert plain_drawn.count(few) / len(plain_drawn) < 0.2  # 4/44 expected
    assert _drawn_labels(balanced, seed=1) == drawn  # the draws follow the run's seed, not the global RNG
    sampler = balanced.datamodule.train_dataloader().sampler
    epoch_0 = list(sampler)
    sampler.epoch = lambda: 1  # what the Trainer's current epoch gives in the second epoch
    assert list(sampler) != epoch_0  # each epoch draws anew


def test_the_feature_cache_serves_the_same_balanced_draws_as_the_images(tmp_path: Path) -> None:
    job = _job(tmp_path, "strategy=freeze", "data.sampler=balanced")
    from_images = _drawn_labels(job)
    cpu = torch.device("cpu")
    features = cached_feature_splits(job.net, job.datamodule, cpu, contextlib.nullcontext, None, extra={})
    job.datamodule.use_features(features)
    assert _drawn_labels(job) == from_images


def test_balanced_class_weights_are_sklearns_and_weight_the_train_loss_only(tmp_path: Path) -> None:
    job = _job(tmp_path, "data.class_weights=balanced")
    labels = job.datamodule.train_labels
    assert np.bincount(labels).tolist() == sorted([MANY, FEW])  # the train folder as written: classes few, many
    expected = compute_class_weight("balanced", classes=np.arange(2), y=labels)
    assert job.module.class_weights.tolist() == pytest.approx(expected.tolist(), rel=1e-6)
    few = job.datamodule.classes.index("few")
    assert job.module.class_weights[few] == pytest.approx((MANY + FEW) / (2 * FEW))  # 5.5; many: 0.55
    images, y = torch.randn(6, 3, 32, 32), torch.tensor([0, 1, 1, 1, 1, 1])
    logits, _, loss = job.module._forward_loss((images, y), "train")
    weights = job.module.class_weights[y]
    nll = -torch.log_softmax(logits, dim=-1)[torch.arange(6), y]
    assert loss.item() == pytest.approx(((weights * nll).sum() / weights.sum()).item(), rel=1e-5)
    val_logits, _, val_loss = job.module._forward_loss((images, y), "val")
    assert val_loss.item() == pytest.approx(F.cross_entropy(val_logits, y).item(), rel=1e-6)
    assert _job(tmp_path).module.class_weights is None  # null: unweighted


def test_balanced_accuracy_and_macro_f1_are_sklearns() -> None:
    generator = torch.Generator().manual_seed(0)
    labels = torch.cat([torch.zeros(50), torch.ones(10), torch.full((5,), 2)]).long()  # imbalanced, all present
    logits = torch.randn(len(labels), 3, generator=generator) + 0.8 * F.one_hot(labels, 3)
    metrics = dict(eval_metrics("val", 3))
    for metric in metrics.values():
        metric.update(logits, labels)
    predicted = logits.argmax(dim=-1).numpy()
    assert metrics["val_balanced_acc"].compute().item() == pytest.approx(balanced_accuracy_score(labels, predicted))
    assert metrics["val_f1_macro"].compute().item() == pytest.approx(f1_score(labels, predicted, average="macro"))
    assert metrics["val_acc"].compute().item() == pytest.approx(float((predicted == labels.numpy()).mean()))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["data.sampler=balanced", "data.class_weights=balanced"], None),
        (["callbacks.model_checkpoint.monitor=val/balanced_acc"], None),
        (["callbacks=early_stopping", "callbacks.early_stopping.monitor=val/f1_macro"], None),
        (["callbacks.model_checkpoint.monitor=val/loss", "callbacks.model_checkpoint.mode=min"], None),
        (["data.sampler=weighted"], "unknown data.sampler 'weighted'; choose one of: balanced, random"),
        (["data.class_weights=inverse"], "unknown data.class_weights 'inverse'; choose one of: balanced, null"),
        (["data.class_weights=balanced", "data.mixup=0.8"], "use data.sampler=balanced instead"),
        (
            ["callbacks.model_checkpoint.monitor=val/balanced"],
            "unknown callbacks.model_checkpoint.monitor 'val/balanced' (did you mean 'val/balanced_acc'?); "
            "choose one of: val/acc, val/balanced_acc, val/f1_macro, val/loss",
        ),
        (["callbacks.model_checkpoint.monitor=val/loss"], "set callbacks.model_checkpoint.mode=min"),
        (["callbacks=early_stopping", "callbacks.early_stopping.mode=min"], "set callbacks.early_stopping.mode=max"),
    ],
)
def test_imbalance_options_and_monitors(overrides: list[str], message: str | None) -> None:
    cfg = compose(overrides)
    if message is None:
        check_config(cfg)
    else:
        with pytest.raises(TlcliError) as error:
            check_config(cfg)
        assert message in str(error.value)


def test_the_disk_cache_holds_each_split_on_its_own(tmp_path: Path) -> None:
    """A fit that is never tested (the race's candidates) extracts train and val only; a later run under the same
    key reads those back and adds test, with the features it would have computed in one go."""
    job = _job(tmp_path / "data", "strategy=freeze")
    cpu, cache = torch.device("cpu"), tmp_path / "cache"
    args = (job.net, job.datamodule, cpu, contextlib.nullcontext, str(cache))
    first = cached_feature_splits(*args, extra={}, splits=("train", "val"))
    (entry,) = cache.iterdir()
    assert set(first) == {"train", "val"} and sorted(p.name for p in entry.iterdir()) == [
        "train.x.npy", "train.y.npy", "val.x.npy", "val.y.npy"]  # fmt: skip
    second = cached_feature_splits(*args, extra={})
    assert set(second) == {"train", "val", "test"} and (entry / "test.y.npy").is_file()
    assert not isinstance(second["test"], type(second["val"]))  # val read from disk, test computed now
    in_one_go = cached_feature_splits(job.net, job.datamodule, cpu, contextlib.nullcontext, None, extra={})
    for split in in_one_go:
        x, y = next(iter(torch.utils.data.DataLoader(second[split], batch_size=100)))
        x1, y1 = in_one_go[split].tensors
        assert torch.equal(y, y1) and torch.allclose(x, x1)
