"""Datasets and the datamodule on real data: digits, Fashion-MNIST idx files, image folders."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import compose, datamodule, write_images, write_unreadable
from tl_cli.data.datamodule import TransferDataModule
from tl_cli.data.datasets import FASHION_MNIST_ROOT
from tl_cli.errors import TlcliError


def labels_of(dm: TransferDataModule, split: str) -> np.ndarray:
    return np.array([dm.splits[split][i][1] for i in range(len(dm.splits[split]))])


def test_digits_splits_are_stratified_disjoint_and_seeded() -> None:
    dm = datamodule(["data=digits"])
    sizes = {s: len(d) for s, d in dm.splits.items()}
    assert sum(sizes.values()) == 1797 and sizes["test"] == 360
    idx = {s: set(d.indices.tolist()) for s, d in dm.splits.items()}
    assert not (idx["train"] & idx["val"]) and not (idx["train"] & idx["test"]) and not (idx["val"] & idx["test"])
    assert np.bincount(labels_of(dm, "test")).min() >= 34  # every class is in the test split
    again = datamodule(["data=digits"])
    assert np.array_equal(again.splits["val"].indices, dm.splits["val"].indices)
    image, label = dm.splits["train"][0]
    assert image.shape == (1, 32, 32) and image.dtype == torch.uint8 and 0 <= label < 10  # normalized per batch
    assert dm.classes == [str(i) for i in range(10)]


def test_grayscale_gets_one_channel_normalisation() -> None:
    dm = datamodule(["data=digits"])
    assert len(dm.data_config["mean"]) == 1 and len(dm.data_config["std"]) == 1
    rgb = datamodule(["data=digits"], in_chans=3)
    assert rgb.splits["test"][0][0].shape == (3, 32, 32)


def test_few_shot_subset_is_balanced_and_seeded() -> None:
    dm = datamodule(["data=digits", "data.samples_per_class=5"])
    assert np.array_equal(np.bincount(labels_of(dm, "train")), [5] * 10)
    other_seed = datamodule(["data=digits", "data.samples_per_class=5", "seed=7"])
    assert not np.array_equal(other_seed.splits["train"].indices, dm.splits["train"].indices)
    with pytest.raises(TlcliError, match="samples_per_class=500"):
        datamodule(["data=digits", "data.samples_per_class=500"])


def test_class_filter_relabels() -> None:
    dm = datamodule(["data=digits", "data.classes=[3,5,'8']"])
    assert dm.classes == ["3", "5", "8"]
    assert set(labels_of(dm, "val")) == {0, 1, 2}


def test_augmentation_is_configurable() -> None:
    dm = datamodule(["data=digits", "data.augment=false"])
    assert dm.train_transform is dm.eval_transform
    aug = datamodule(["data=digits", "data.aug.hflip=0.5"])
    assert "RandomHorizontalFlip" in str(aug.train_transform)
    with pytest.raises(TlcliError, match="unknown data.aug key 'flip'"):
        datamodule(["data=digits", "+data.aug.flip=1"])


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_idx_reader(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 200), ("t10k", 50)):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 255, (n, 28, 28)))
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    dm = datamodule(["data=fashion_mnist", f"data.root={tmp_path}"])
    assert {s: len(d) for s, d in dm.splits.items()} == {"train": 180, "test": 50, "val": 20}
    assert dm.classes[0] == "t-shirt_top" and len(dm.classes) == 10


@pytest.mark.skipif(not Path(FASHION_MNIST_ROOT).is_dir(), reason="apt-get install dataset-fashion-mnist")
def test_fashion_mnist_debian_package() -> None:
    dm = datamodule(["data=fashion_mnist", "data.samples_per_class=3"])
    assert len(dm.splits["test"]) == 10000 and len(dm.splits["val"]) == 6000 and len(dm.splits["train"]) == 30


def test_fashion_mnist_missing_files_say_how_to_install(tmp_path: Path) -> None:
    with pytest.raises(TlcliError, match="apt-get install -y dataset-fashion-mnist"):
        datamodule(["data=fashion_mnist", f"data.root={tmp_path}"])


def test_image_folder_with_splits(tmp_path: Path) -> None:
    write_images(tmp_path / "train", {"cat": 10, "dog": 10})
    write_images(tmp_path / "test", {"cat": 3, "dog": 2})
    dm = datamodule(["data=image_folder", f"data.root={tmp_path}", "data.val_fraction=0.2"], in_chans=3)
    assert dm.classes == ["cat", "dog"]
    assert {s: len(d) for s, d in dm.splits.items()} == {"train": 16, "test": 5, "val": 4}
    assert np.array_equal(np.bincount(labels_of(dm, "val")), [2, 2])  # stratified hold-out
    assert dm.splits["train"][0][0].shape == (3, 32, 32)


def test_image_folder_flat_layout(tmp_path: Path) -> None:
    write_images(tmp_path, {"a": 10, "b": 10, "c": 10})
    dm = datamodule(["data=image_folder", f"data.root={tmp_path}"], in_chans=3)
    assert sum(len(d) for d in dm.splits.values()) == 30 and len(dm.splits["test"]) == 6


def test_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(TlcliError, match="does not exist"):
        datamodule(["data=image_folder", f"data.root={tmp_path / 'nope'}"], in_chans=3)
    write_images(tmp_path / "one" / "train", {"only": 4})
    with pytest.raises(TlcliError, match="need at least 2"):
        datamodule(["data=image_folder", f"data.root={tmp_path / 'one'}"], in_chans=3)


def test_synthetic_is_seeded() -> None:
    a, b = datamodule(["data=synthetic"]), datamodule(["data=synthetic"])
    assert torch.equal(a.splits["train"][3][0], b.splits["train"][3][0])
    assert len(a.splits["train"]) == 128 and a.num_classes == 4


@pytest.mark.parametrize(
    ("min_steps", "epochs", "accumulate", "batches"), [(40, 4, 1, 10), (41, 4, 1, 11), (40, 4, 2, 20), (0, 4, 1, 2)]
)
def test_min_steps_gives_a_small_set_enough_optimizer_steps(min_steps, epochs, accumulate, batches) -> None:
    """optim.min_steps over trainer.max_epochs: a 10-image set (2 batches of 8) repeats to >= min_steps steps."""
    from tl_cli.run.training import min_train_batches

    overrides = ["data=digits", "data.samples_per_class=1", "data.batch_size=8", f"optim.min_steps={min_steps}"]
    overrides += [f"trainer.max_epochs={epochs}", f"trainer.accumulate_grad_batches={accumulate}"]
    cfg = compose(["model=tiny", "model.in_chans=1", *overrides])
    dm = datamodule(overrides)
    dm.min_train_batches = min_train_batches(cfg)
    assert len(dm.train_dataloader()) == batches
    assert epochs * batches // accumulate >= min_steps


def test_min_samples_per_epoch_repeats_a_few_shot_set() -> None:
    """Each epoch draws at least min_samples_per_epoch samples: every image, reshuffled, several times over."""
    dm = datamodule(["data=digits", "data.samples_per_class=1", "data.min_samples_per_epoch=45", "data.batch_size=8"])
    labels = [int(y) for _, y in dm.train_dataloader().dataset]
    assert len(labels) == 10
    drawn = torch.cat([y for _, y in dm.train_dataloader()])
    assert len(drawn) == 45  # 6 batches: 5 of 8 and one of 5
    assert set(drawn.tolist()) == set(range(10)) and np.bincount(drawn.numpy()).min() >= 4
    plain = datamodule(["data=digits", "data.samples_per_class=1", "data.batch_size=8"])
    assert sum(len(y) for _, y in plain.train_dataloader()) == 10
    assert sum(len(y) for _, y in dm.val_dataloader()) == len(dm.splits["val"])  # evaluation never repeats


def test_image_folder_skips_unreadable_files_when_loading(tmp_path: Path, caplog) -> None:
    """No up-front pass: unreadable files stay listed, are replaced by the next readable image of their split
    when served (full batches), and are counted once each across worker processes and epochs."""
    from PIL import Image

    for split in ("train", "val", "test"):
        write_images(tmp_path / split, {"a": 4, "b": 4})
    garbage, truncated = write_unreadable(tmp_path / "train" / "a")
    with Image.open(truncated) as image:
        image.verify()  # what the old up-front check used: it passes a truncated JPEG
    overrides = ["data=image_folder", f"data.root={tmp_path}", "data.batch_size=4", "data.num_workers=2"]
    dm = datamodule([*overrides, "data.augment=false"], in_chans=3)
    assert len(dm.splits["train"]) == 10 and dm.unreadable_files() == 0
    loader = dm.train_dataloader()
    for _ in range(2):  # two epochs, two worker processes: each bad file still counts once
        sizes = [len(y) for _, y in loader]
        assert sizes == [4, 4, 2]
    with caplog.at_level("WARNING"):
        assert dm.unreadable_files() == 2 and dm.unreadable_files() == 2
    warnings = [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()]
    assert len(warnings) == 1 and "skipped 2 unreadable image file(s)" in warnings[0]
    assert str(garbage) in warnings[0]  # the first bad file in listing order, whichever worker met it first


def test_class_with_no_readable_file_fails_at_start(tmp_path: Path) -> None:
    write_images(tmp_path, {"a": 6})
    write_unreadable(tmp_path / "b")
    with pytest.raises(TlcliError, match="none of the 2 image files of class 'b' .* can be read"):
        datamodule(["data=image_folder", f"data.root={tmp_path}"], in_chans=3)


def test_split_with_no_readable_file_is_one_line_from_workers(tmp_path: Path) -> None:
    """Served lazily, a split none of whose files decodes is still a one-line TlcliError, even when a DataLoader
    worker raises it (the main process rebuilds it from the worker's whole traceback)."""
    from torch.utils.data import DataLoader

    from tl_cli.data.datamodule import TransformedSubset
    from tl_cli.data.datasets import FolderImages, UnreadableSplit

    write_images(tmp_path, {"a": 2})
    write_unreadable(tmp_path / "a")
    folder = FolderImages(tmp_path)
    bad = np.array(
        [i for i, (path, _) in enumerate(folder.reader.samples) if Path(path).stem in ("garbage", "truncated")]
    )
    subset = TransformedSubset(folder, bad, {0: 0}, "RGB")
    with pytest.raises(UnreadableSplit) as raised:
        next(iter(DataLoader(subset, batch_size=2, num_workers=2, collate_fn=list)))
    message = str(raised.value)
    assert message.startswith("none of the 2 image files") and "\n" not in message and "Traceback" not in message
    assert folder.unreadable.count() == 2
    folder.unreadable.reported = True  # else its warning comes at exit, after pytest's summary


def test_a_config_saved_before_min_steps_existed_trains_without_a_minimum() -> None:
    """A run saved before optim.min_steps (resume, probe_check) has no such key: it trained without a minimum."""
    from omegaconf import OmegaConf

    from tl_cli.run.training import min_train_batches

    cfg = OmegaConf.create(OmegaConf.to_container(compose(["model=tiny", "trainer.max_epochs=4"])))
    assert min_train_batches(cfg) == 75  # the default 300 over 4 epochs
    del cfg.optim["min_steps"]
    assert min_train_batches(cfg) == 0


def test_ranks_serve_interleaved_shares_of_one_seeded_epoch_order() -> None:
    """Rank r of 2 serves positions r, r + 2, ... of the order one process draws: its k-th batch and the other
    rank's make up the one process's k-th batch at twice the size. Padded by wrapping round, equal lengths."""
    from torch.utils.data import RandomSampler

    from tl_cli.data.datamodule import EpochDraws

    def draws(generator):
        return RandomSampler(range(10), num_samples=13, generator=generator)

    single = list(EpochDraws(draws, 13, seed=3, epoch=lambda: 0))
    assert single == list(EpochDraws(draws, 13, seed=3, epoch=lambda: 0))  # the same in every rank and rerun
    assert single != list(EpochDraws(draws, 13, seed=3, epoch=lambda: 1))  # each epoch draws anew
    shards = [list(EpochDraws(draws, 13, seed=3, epoch=lambda: 0, rank=r, world=2)) for r in (0, 1)]
    assert [len(s) for s in shards] == [7, 7]
    interleaved = [i for pair in zip(*shards, strict=True) for i in pair]
    assert interleaved == single + single[:1]
