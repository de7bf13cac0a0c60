"""LightningDataModule: splits, class filters, few-shot subsets, and timm transforms in two steps (uint8 per
image, normalized per batch on the device: tl_cli/data/transforms.py)."""

from __future__ import annotations

import bisect
import logging
import math
from collections.abc import Callable, Iterator
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import (
    BatchSampler,
    ChainDataset,
    ConcatDataset,
    DataLoader,
    Dataset,
    DistributedSampler,
    IterableDataset,
    RandomSampler,
    Sampler,
    SequentialSampler,
    WeightedRandomSampler,
)

from tl_cli.data.datasets import (
    DecodedImages,
    FileImages,
    RawSplits,
    UnreadableImage,
    UnreadableSplit,
    report_unreadable,
)
from tl_cli.data.sources import build_dataset
from tl_cli.data.stream import SampleDecoder, StreamSplits, check_shards, epoch_share, refusals, stream_dataset
from tl_cli.data.transforms import BatchNormalize, build_transforms
from tl_cli.errors import TlcliError

log = logging.getLogger(__name__)

# in-order image passes (feature extraction) hold up to this many input bytes per batch: small images get big
# batches (fewer per-batch overheads; 32 px Fashion-MNIST extracts ~1.2x faster at 1024 than at 128), larger ones
# stay near 64 (EfficientNet-Lite0 at 64 px RGB, 1 CPU thread: 6.4 ms/image at 64, 9.6 ms/image at 256)
EXTRACT_BATCH_BYTES = 4 * 2**20
EXTRACT_MAX_BATCH = 1024


def resolve_data_config(backbone: torch.nn.Module, cfg, in_chans: int, img_size: int | None) -> dict[str, Any]:
    """timm's preprocessing for this backbone, with tlcli's overrides (size, crop, mean/std, channels)."""
    from timm.data import resolve_data_config as timm_resolve

    args: dict[str, Any] = {k: cfg[k] for k in ("crop_pct", "mean", "std", "interpolation") if cfg[k] is not None}
    if img_size:
        args["input_size"] = (in_chans, img_size, img_size)
    data_config = timm_resolve(args, model=backbone)
    data_config["input_size"] = (in_chans, *data_config["input_size"][1:])
    for key in ("mean", "std"):  # grayscale: one value per channel, not ImageNet's three
        values = tuple(float(v) for v in data_config[key])
        if len(values) != in_chans:
            values = (float(np.mean(values)),) * in_chans if in_chans == 1 or len(values) == 1 else values
        data_config[key] = values
    return data_config


def extraction_batch_size(batch_size: int, input_size: tuple[int, int, int]) -> int:
    """`batch_size`, raised for small images up to EXTRACT_BATCH_BYTES of float32 input."""
    per_image = 4 * input_size[0] * input_size[1] * input_size[2]
    return max(batch_size, min(EXTRACT_MAX_BATCH, EXTRACT_BATCH_BYTES // per_image))


def make_datamodule(cfg, data_config: dict[str, Any], seed: int, trainer_cfg=None) -> TransferDataModule:
    """The one way tlcli builds its data: splits prepared, workers sized for the trainer's devices
    (train, strategy=auto's probe, eval, predict and export all come here)."""
    from tl_cli.hardware import processes_sharing_cores

    trainer_cfg = trainer_cfg or {}
    devices = processes_sharing_cores(trainer_cfg.get("devices", 1))
    datamodule = TransferDataModule(cfg, data_config, seed, str(trainer_cfg.get("accelerator", "auto")), devices)
    datamodule.prepare_splits()
    return datamodule


class EpochDraws(Sampler[int]):
    """A train epoch's sample order, drawn by `draws` from a generator seeded by (seed, epoch): the same in every
    rank and in a resumed run. Rank r of `world` serves positions r, r + world, r + 2 world, ...: its k-th batch
    and the other ranks' make up the k-th batch one process would draw at `world` times the batch size. Padded by
    wrapping round to a multiple of `world`, so that every rank runs the same number of steps."""

    def __init__(
        self,
        draws: Callable[[torch.Generator], Sampler],
        size: int,
        seed: int,
        epoch: Callable[[], int],
        rank: int = 0,
        world: int = 1,
    ) -> None:
        self.draws, self.size, self.seed, self.epoch, self.rank, self.world = draws, size, seed, epoch, rank, world

    def __len__(self) -> int:
        return math.ceil(self.size / self.world)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator()
        generator.manual_seed(self.seed * 100_003 + self.epoch())
        order = list(self.draws(generator))
        order += order[: len(self) * self.world - len(order)]
        return iter(order[self.rank :: self.world])


class TransformedSubset(Dataset):
    """Selected samples of a raw dataset, relabelled, converted to the model's image mode, transformed."""

    def __init__(self, base: Dataset, indices: np.ndarray, label_map: dict[int, int], mode: str, transform=None):
        self.base, self.indices, self.label_map, self.mode, self.transform = (
            base,
            indices,
            label_map,
            mode,
            transform,
        )

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        image, label = self._readable(i)
        image = image.convert(self.mode)
        return (self.transform(image) if self.transform else image), self.label_map[int(label)]

    def path(self, i: int) -> str | None:
        """The file sample i was read from; None for sources without files (digits, Fashion-MNIST, synthetic, hf)."""
        if not isinstance(self.base, FileImages):  # folders and CSV lists; HF tables and arrays have no files
            return None
        return str(self.base.samples[int(self.indices[i])][0])

    def _readable(self, i: int):
        """Sample i; when its file cannot be decoded, the next readable sample of this split (wrapping round):
        batches keep their size, and the stand-in never comes from another split. DecodedImages counts the file."""
        i, first = range(len(self.indices))[i], None  # IndexError past the end: it ends `for x in subset`
        for step in range(len(self.indices)):
            try:
                return self.base[int(self.indices[(i + step) % len(self.indices)])]
            except UnreadableImage as ex:
                first = first or ex.args[0]
        raise UnreadableSplit(
            f"none of the {len(self.indices)} image files of a data split can be read (e.g. {first}); "
            f"replace or remove the unreadable files"
        )


class StreamSplit:
    """A split of shard streams: its size (split_sizes) now, its webdataset pipeline when a loader is made."""

    def __init__(self, raw: StreamSplits, split: str, size: int) -> None:
        self.raw, self.split, self.size = raw, split, size

    def __len__(self) -> int:
        return self.size


def stratified_split(indices: np.ndarray, labels: np.ndarray, fraction: float, seed: int):
    """Seeded, class-stratified (keep, held_out) split of `indices`."""
    from sklearn.model_selection import train_test_split

    try:
        keep, held = train_test_split(indices, test_size=fraction, stratify=labels, random_state=seed)
    except ValueError as ex:
        raise TlcliError(f"cannot hold out {fraction:.0%} per class: {ex}") from None
    return np.sort(keep), np.sort(held)


def few_shot(indices: np.ndarray, labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """`per_class` seeded samples of every class."""
    rng = np.random.default_rng(seed)
    picked = []
    for c in np.unique(labels):
        members = indices[labels == c]
        if per_class > len(members):
            raise TlcliError(
                f"data.samples_per_class={per_class} but class {c} has only {len(members)} train samples; "
                f"use data.samples_per_class<={int(min(np.bincount(labels)[np.unique(labels)]))}"
            )
        picked.append(rng.choice(members, size=per_class, replace=False))
    return np.sort(np.concatenate(picked))


def sample_path(dataset: Dataset, index: int) -> str | None:
    """The file behind sample `index` of a split (or a ConcatDataset of splits), None where there is no file."""
    if isinstance(dataset, ConcatDataset):
        part = bisect.bisect_right(dataset.cumulative_sizes, index)
        offset = dataset.cumulative_sizes[part - 1] if part else 0
        return sample_path(dataset.datasets[part], index - offset)
    return dataset.path(index) if isinstance(dataset, TransformedSubset) else None


def samples_at(dataset: Dataset, indices: list[int]) -> list:
    """The images at these positions of a split: indexed, or for a stream one pass in its (stable) order."""
    if not isinstance(dataset, IterableDataset):
        return [dataset[i][0] for i in indices]
    wanted, found = set(indices), {}
    for position, (image, _) in enumerate(dataset):
        if position in wanted:
            found[position] = image
            if len(found) == len(wanted):
                break
    return [found[i] for i in indices]


class TransferDataModule(L.LightningDataModule):
    """Builds train/val/test from a registered dataset; `prepare_splits()` runs once, before the model."""

    def __init__(
        self, cfg, data_config: dict[str, Any], seed: int, accelerator: str = "auto", devices: int = 1
    ) -> None:
        from tl_cli.hardware import resolve_workers

        super().__init__()
        self.cfg, self.data_config, self.seed = cfg, data_config, seed
        self.num_workers = resolve_workers(cfg.num_workers, accelerator, devices)
        self.mode = "L" if data_config["input_size"][0] == 1 else "RGB"
        self.train_transform, self.eval_transform = build_transforms(data_config, cfg.augment, cfg.aug)
        # the per-batch half of both: images leave the DataLoader as uint8
        self.normalize = BatchNormalize.for_data(data_config, cfg.augment, cfg.aug)
        self.classes: list[str] = []
        self.splits: dict[str, TransformedSubset] = {}
        self.features: dict[str, Dataset] = {}  # set by use_features(): cached backbone outputs per split
        self.notes: dict[str, str] = {}
        self.min_train_batches = 0  # set by the training run: optim.min_steps spread over its epochs
        self.train_labels = np.zeros(0, dtype=np.int64)  # class of each train sample, in split order
        self.stream_label_map: dict[int, int] = {}  # data=webdataset: dataset class -> output index

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def prepare_splits(self) -> None:
        if self.splits:
            return
        raw = build_dataset(self.cfg, self.seed)
        if isinstance(raw, StreamSplits):
            self._prepare_streams(raw)
            return
        keep_classes = self._selected_classes(raw)
        label_map = {old: new for new, old in enumerate(keep_classes)}
        self.classes = [raw.classes[c] for c in keep_classes]
        chosen = {}
        for split, labels in raw.labels.items():
            idx = np.flatnonzero(np.isin(labels, keep_classes))
            chosen[split] = (idx, labels[idx])
        idx, y = chosen["train"]
        if "test" not in chosen:
            idx, test_idx = stratified_split(idx, y, self.cfg.test_fraction, self.seed)
            chosen["test"] = (test_idx, raw.labels["train"][test_idx])
            self.notes["test"] = f"held out {self.cfg.test_fraction:.0%} of train (stratified, seeded)"
            y = raw.labels["train"][idx]
        if "val" not in chosen:
            idx, val_idx = stratified_split(idx, y, self.cfg.val_fraction, self.seed)
            chosen["val"] = (val_idx, raw.labels["train"][val_idx])
            self.notes["val"] = f"held out {self.cfg.val_fraction:.0%} of train (stratified, seeded)"
            y = raw.labels["train"][idx]
        if self.cfg.samples_per_class:
            idx = few_shot(idx, y, self.cfg.samples_per_class, self.seed)
        chosen["train"] = (idx, raw.labels["train"][idx])
        self.train_labels = np.array([label_map[int(c)] for c in chosen["train"][1]], dtype=np.int64)
        for split, (indices, _) in chosen.items():
            base = raw.datasets.get(split, raw.datasets["train"])  # held-out splits index into train
            transform = self.train_transform if split == "train" else self.eval_transform
            self.splits[split] = TransformedSubset(base, indices, label_map, self.mode, transform)
        sizes = ", ".join(f"{s}={len(d)}" for s, d in self.splits.items())
        log.info("data %s: %d classes, %s", self.cfg.name, self.num_classes, sizes)

    def _prepare_streams(self, raw: StreamSplits) -> None:
        """data=webdataset: no indices to subset or sample; sizes and train labels from the counts."""
        why = refusals(self.cfg)
        if why:
            raise TlcliError(why)
        keep_classes = self._selected_classes(raw)
        if raw.counts is None and len(keep_classes) < len(raw.classes):
            raise TlcliError("data.classes on shards needs the split sizes counted: unset data.split_sizes")
        if raw.counts is None and self.cfg.get("class_weights") == "balanced":
            raise TlcliError("data.class_weights=balanced on shards needs the classes counted: unset data.split_sizes")
        self.stream_label_map = {old: new for new, old in enumerate(keep_classes)}
        self.classes = [raw.classes[c] for c in keep_classes]
        for split, shards in raw.splits.items():
            size = int(raw.counts[split][keep_classes].sum()) if raw.counts else shards.size
            if size == 0:
                raise TlcliError(f"split {split} of data.{split}={shards.urls} has no samples of the chosen classes")
            self.splits[split] = StreamSplit(raw, split, size)
        if raw.counts is not None:
            kept = raw.counts["train"][keep_classes]
            self.train_labels = np.repeat(np.arange(len(keep_classes)), kept)
        self.notes.update(raw.notes)
        sizes = ", ".join(f"{s}={len(d)}" for s, d in self.splits.items())
        log.info("data %s (streamed): %d classes, %s", self.cfg.name, self.num_classes, sizes)

    def _selected_classes(self, raw: RawSplits | StreamSplits) -> list[int]:
        if not self.cfg.classes:
            return list(range(len(raw.classes)))
        selected = []
        for c in self.cfg.classes:
            if isinstance(c, int) and 0 <= c < len(raw.classes):
                selected.append(c)
            elif str(c) in raw.classes:
                selected.append(raw.classes.index(str(c)))
            else:
                raise TlcliError(f"data.classes: unknown class '{c}'; choose from {raw.classes}")
        if len(set(selected)) < 2:
            raise TlcliError("data.classes must keep at least 2 classes")
        return sorted(set(selected))

    def setup(self, stage: str | None = None) -> None:
        self.prepare_splits()

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """uint8 image batches normalized on the device (random erasing in training); cached features pass."""
        images, labels = batch
        if images.dtype != torch.uint8:
            return images, labels
        images = self.normalize(images, train=self.trainer.training)
        # trainer.precision=bf16-true/16-true/64-true convert float inputs before this hook, not uint8 ones
        return self.trainer.precision_plugin.convert_input(images), labels

    def unreadable_files(self) -> int:
        """Distinct image files that failed to decode so far (in this process or its DataLoader workers);
        the first call that finds some logs the run's one warning about them."""
        bases = {
            id(b): b for b in (getattr(s, "base", None) for s in self.splits.values()) if isinstance(b, DecodedImages)
        }
        return report_unreadable([b.unreadable for b in bases.values()])

    def use_features(self, features: dict[str, Dataset]) -> None:
        """Serve cached (feature, label) pairs instead of images from now on."""
        self.features = features

    def eval_loader(self, split: str) -> DataLoader:
        """A split's images in order (no shuffling, nothing dropped), e.g. for feature extraction."""
        return self._loader(split, train=False, images=True)

    def dataset(self, split: str) -> Dataset:
        """A split's images through the eval transform, in order (eval); 'all': every split."""
        if split == "all":
            parts = [self.dataset(s) for s in self.splits]
            return ChainDataset(parts) if isinstance(self.splits["train"], StreamSplit) else ConcatDataset(parts)
        found = self.splits[split]
        return self._stream(split, train=False) if isinstance(found, StreamSplit) else found

    def _stream(self, split: str, train: bool, epoch_size: int = 0):
        """The webdataset pipeline of a split: train shards split over ranks and workers, cut to `epoch_size`."""
        found = self.splits[split]
        world = self._rank_and_world(images=False)[1]
        if train:
            check_shards(found.raw.splits[split], world)
        per_rank, per_worker = epoch_share(epoch_size or len(found), world, self.num_workers)
        transform = self.train_transform if train else self.eval_transform
        decoder = SampleDecoder(found.raw.lookup, self.stream_label_map, self.mode, transform)
        shards = found.raw.splits[split]
        pipeline = stream_dataset(shards, decoder, train, self.cfg.shuffle_buffer, self.seed, per_worker)
        return pipeline.with_length(per_rank if train else len(found), silent=True)

    def _loader(self, split: str, train: bool, images: bool = False) -> DataLoader:
        if isinstance(self.splits[split], StreamSplit):
            return self._stream_loader(split, train)
        cached = split in self.features and not images
        dataset = self.features[split] if cached else self.splits[split]
        batch_size = self.cfg.batch_size if train else (self.cfg.eval_batch_size or self.cfg.batch_size)
        # batch size does not change these passes' results, so they take bigger batches unless one is set
        if cached and not train and not self.cfg.eval_batch_size:
            batch_size = max(batch_size, 1024)  # evaluation on features
        if images and not self.cfg.eval_batch_size:
            batch_size = extraction_batch_size(batch_size, self.data_config["input_size"])
        rank, world = self._rank_and_world(images)
        if train:
            sampler: Sampler = self._train_sampler(dataset, self.train_epoch_size(batch_size, world), rank, world)
        elif world > 1:
            # each rank evaluates its share, padded by repeating up to world - 1 images: every rank must run as many
            # steps, since DDP's forward syncs BatchNorm buffers in evaluation too
            sampler = DistributedSampler(dataset, world, rank, shuffle=False)
        else:
            sampler = SequentialSampler(dataset)
        # a last batch of one sample breaks BatchNorm in training; drop only that case (the same on every rank)
        drop_last = train and len(sampler) % batch_size == 1
        if cached:  # index whole batches of the feature tensors at once (no per-sample collate)
            return DataLoader(dataset, sampler=BatchSampler(sampler, batch_size, drop_last), batch_size=None)
        workers = self.num_workers
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            drop_last=drop_last,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def _stream_loader(self, split: str, train: bool) -> DataLoader:
        """A loader over a shard stream: the stream shuffles and splits itself; no sampler."""
        batch_size = self.cfg.batch_size if train else (self.cfg.eval_batch_size or self.cfg.batch_size)
        world = self._rank_and_world(images=False)[1]
        epoch_size = self.train_epoch_size(batch_size, world) if train else 0  # over all ranks
        dataset = self._stream(split, train, epoch_size)
        per_worker = epoch_share(epoch_size, world, self.num_workers)[1]
        return DataLoader(
            dataset,
            batch_size=batch_size,
            drop_last=train and per_worker % batch_size == 1,  # a last batch of one sample breaks BatchNorm
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def _rank_and_world(self, images: bool) -> tuple[int, int]:
        """This process's share of the data under data-parallel training. tlcli shards its own samplers (the
        Trainer runs with use_distributed_sampler=False): Lightning would replace the train sampler, and with it
        the epoch size that optim.min_steps sets. In-order image passes (feature extraction) read everything."""
        trainer = self._trainer
        if images or trainer is None or trainer.world_size <= 1:
            return 0, 1
        return trainer.global_rank, trainer.world_size

    def _train_sampler(self, dataset: Dataset, epoch_size: int, rank: int = 0, world: int = 1) -> Sampler:
        """`epoch_size` draws: a random order, or with data.sampler=balanced every class equally likely (with
        replacement: a small class repeats within the epoch, a large one is subsampled). The same draws in every
        rank, of which each serves its share."""
        if self.cfg.get("sampler", "random") == "balanced":  # .get: a resumed run's config may predate the key
            counts = np.bincount(self.train_labels, minlength=self.num_classes)
            weights = torch.as_tensor(1.0 / counts[self.train_labels], dtype=torch.float64)

            def draws(generator: torch.Generator) -> Sampler:
                return WeightedRandomSampler(weights, epoch_size, replacement=True, generator=generator)
        else:

            def draws(generator: torch.Generator) -> Sampler:
                return RandomSampler(dataset, num_samples=epoch_size, generator=generator)

        return EpochDraws(draws, epoch_size, self.seed, self._current_epoch, rank, world)

    def _current_epoch(self) -> int:
        return self._trainer.current_epoch if self._trainer is not None else 0

    @property
    def _trainer(self):
        return getattr(self, "trainer", None)

    def balanced_class_weights(self) -> list[float]:
        """data.class_weights=balanced: n_samples / (n_classes * count_c) per class of the train split, as
        sklearn's compute_class_weight("balanced") gives them (a class as frequent as the mean weighs 1)."""
        counts = np.bincount(self.train_labels, minlength=self.num_classes)
        if not counts.all():
            missing = [self.classes[c] for c in np.flatnonzero(counts == 0)]
            raise TlcliError(f"data.class_weights=balanced: class {missing[0]!r} has no train samples")
        return (len(self.train_labels) / (self.num_classes * counts)).tolist()

    def train_epoch_size(self, batch_size: int, world: int = 1) -> int:
        """Samples drawn per training epoch, over all ranks. Few-shot sets repeat (each pass reshuffled) up to
        data.min_samples_per_epoch and to `min_train_batches` global batches (`batch_size` per device x `world`
        devices), so a run gets a real number of optimizer steps whatever the number of devices."""
        size = len(self.splits["train"])
        return max(size, self.cfg.min_samples_per_epoch or 0, self.min_train_batches * batch_size * world)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)
