"""Dataset registry: each builder returns raw splits of (PIL image, label) samples plus class names.

Transforms are applied later by the datamodule, from the backbone's timm data config.
"""

from __future__ import annotations

import functools
import gzip
import logging
import os
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from tl_cli.data.images import IMAGE_EXTENSIONS, first_few, is_image_file, report_non_images, visible_files
from tl_cli.errors import TlcliError

log = logging.getLogger(__name__)

FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = [
    "t-shirt_top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle_boot",
]
SPLIT_ALIASES = {
    "train": ("train", "training"),
    "val": ("val", "valid", "validation"),
    "test": ("test", "testing"),
}


class ArrayImages(Dataset):
    """In-memory uint8 images, (N, H, W) grayscale or (N, H, W, 3) RGB, served as PIL images."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.images, self.labels = images, np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        return Image.fromarray(self.images[index]), int(self.labels[index])


@dataclass
class RawSplits:
    """Splits by name ('train' required; 'val'/'test' when the dataset defines them)."""

    classes: list[str]
    datasets: dict[str, Dataset] = field(default_factory=dict)
    labels: dict[str, np.ndarray] = field(default_factory=dict)

    def add(self, split: str, dataset: Dataset, labels: np.ndarray) -> None:
        self.datasets[split], self.labels[split] = dataset, np.asarray(labels, dtype=np.int64)


DATASETS: dict[str, Callable[..., RawSplits]] = {}


def register_dataset(name: str) -> Callable:
    def wrap(fn: Callable[..., RawSplits]) -> Callable[..., RawSplits]:
        DATASETS[name] = fn
        return fn

    return wrap


@register_dataset("synthetic")
def synthetic(cfg, seed: int) -> RawSplits:
    """Seeded class prototypes plus noise: learnable in a few steps, for CI smoke runs."""
    rng = np.random.default_rng(seed)
    size, k = cfg.image_size, cfg.num_classes
    coarse = rng.uniform(0, 255, size=(k, 4, 4, 3)).astype(np.uint8)
    prototypes = np.stack([np.asarray(Image.fromarray(c).resize((size, size), Image.BILINEAR)) for c in coarse])
    splits = RawSplits(classes=[f"class_{i}" for i in range(k)])
    for split, per_class in zip(("train", "val", "test"), cfg.samples_per_split, strict=True):
        labels = np.repeat(np.arange(k), per_class)
        noise = rng.normal(0, 40, size=(len(labels), size, size, 3))
        images = np.clip(prototypes[labels].astype(np.float64) + noise, 0, 255).astype(np.uint8)
        splits.add(split, ArrayImages(images, labels), labels)
    return splits


@register_dataset("digits")
def digits(cfg, seed: int) -> RawSplits:
    """sklearn's bundled 8x8 handwritten digits (1797 images); val/test are held out by the datamodule."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.clip(bunch.images * (255.0 / 16.0), 0, 255).astype(np.uint8)
    splits = RawSplits(classes=[str(c) for c in bunch.target_names])
    splits.add("train", ArrayImages(images, bunch.target), bunch.target)
    return splits


def _read_idx(path: Path) -> np.ndarray:
    """An idx file's array (read-only). Decoded once per process: a sweep's jobs share it."""
    stat = path.stat()
    return _read_idx_cached(path.resolve(), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=8)
def _read_idx_cached(path: Path, mtime_ns: int, size: int) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


@register_dataset("fashion_mnist")
def fashion_mnist(cfg, seed: int) -> RawSplits:
    """Fashion-MNIST from its idx .gz files (Debian: apt-get install dataset-fashion-mnist)."""
    root = Path(cfg.root or FASHION_MNIST_ROOT)
    files = {
        s: (root / f"{p}-images-idx3-ubyte.gz", root / f"{p}-labels-idx1-ubyte.gz")
        for s, p in (("train", "train"), ("test", "t10k"))
    }
    missing = [str(f) for pair in files.values() for f in pair if not f.is_file()]
    if missing:
        raise TlcliError(
            f"Fashion-MNIST file {missing[0]} not found; install it with 'apt-get install -y "
            f"dataset-fashion-mnist' or set data.root to a folder with the four *-ubyte.gz files"
        )
    splits = RawSplits(classes=list(FASHION_MNIST_CLASSES))
    for split, (images, labels) in files.items():
        y = _read_idx(labels)
        splits.add(split, ArrayImages(_read_idx(images), y), y)
    return splits


@register_dataset("image_folder")
def image_folder(cfg, seed: int) -> RawSplits:
    """root/<split>/<class>/<image> (splits: train, val, test), or a flat root/<class>/<image>."""
    if not cfg.root:
        raise TlcliError(f"data=image_folder needs data.root=/path/to/images ({FOLDER_LAYOUT})")
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise TlcliError(f"data.root '{cfg.root}' does not exist; point it at {FOLDER_LAYOUT}")
    found = {
        split: next((root / a for a in aliases if (root / a).is_dir()), None)
        for split, aliases in SPLIT_ALIASES.items()
    }
    if found["train"] is None:
        found = {"train": root, "val": None, "test": None}  # flat layout: hold out val and test
    report_non_images(visible_files(root), f"data.root '{root}'")
    train = _open_folder(found["train"])
    class_to_idx = dict(train.reader.class_to_idx)
    empty = sorted(d.name for d in found["train"].iterdir() if d.is_dir() and d.name not in class_to_idx)
    if empty:
        raise TlcliError(f"class folder '{found['train'] / empty[0]}' has no images; add images or remove it")
    if len(class_to_idx) < 2:
        raise TlcliError(
            f"data.root '{found['train']}' has {len(class_to_idx)} class folder(s); need at least 2 ({FOLDER_LAYOUT})"
        )
    splits = RawSplits(classes=sorted(class_to_idx, key=class_to_idx.get))
    for split, folder in found.items():
        if folder is None:
            continue
        if split != "train":
            extra = sorted({d.name for d in folder.iterdir() if d.is_dir()} - set(class_to_idx))
            if extra:
                raise TlcliError(
                    f"class '{extra[0]}' is in '{folder}' but not in '{found['train']}'; "
                    f"every split needs the same class folders"
                )
        ds = train if split == "train" else _open_folder(folder, class_to_idx)
        if len(ds) == 0:
            raise TlcliError(f"no images found under '{folder}'; expected <class>/<image> files")
        check_classes_readable(ds, folder, splits.classes)
        splits.add(split, ds, ds.labels)
    return splits


FOLDER_LAYOUT = "root/<split>/<class>/<image> or root/<class>/<image>"


def _open_folder(folder: Path, class_map: dict | None = None) -> FolderImages:
    """The <class>/<image> files of a folder, with tlcli's errors for an empty folder and for loose images."""
    loose = sorted(p.name for p in folder.iterdir() if p.is_file() and is_image_file(p) and not p.name.startswith("."))
    if loose:
        raise TlcliError(
            f"'{folder}' has {len(loose)} image file(s) outside class folders ({first_few(loose)}); "
            f"expected {FOLDER_LAYOUT}: move each image into a folder named after its class"
        )
    try:
        return FolderImages(folder, class_map)
    except RuntimeError as ex:
        if "Found 0 images" in str(ex):
            raise TlcliError(f"no images found under '{folder}'; expected <class>/<image> files") from None
        raise


# What PIL raises for a file it cannot decode: not an image, corrupt, truncated (caught only when the pixels are
# decoded, so verify() passes it), zero bytes, or over Image.MAX_IMAGE_PIXELS.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


class UnreadableImage(Exception):
    """A file that cannot be decoded; TransformedSubset serves the next readable sample of its split instead."""


class UnreadableSplit(TlcliError):
    """No file of a split can be decoded. Raised in a DataLoader worker, it is rebuilt in the main process from
    the worker's whole traceback: keep only this error's own last line, so the user still gets one line."""

    def __init__(self, message: str) -> None:
        last = message.strip().splitlines()[-1] if message.strip() else message
        super().__init__(last.split(f"{type(self).__name__}: ", 1)[-1])


def decode(opened: Image.Image, draft: bool = False) -> Image.Image:
    """An opened image as decoded RGB pixels (a GIF's first frame). draft: JPEGs at 1/8 scale, for a readability
    check (truncation still fails: every coefficient is read)."""
    with opened as image:
        if draft:
            image.draft(None, (1, 1))
        return image.convert("RGB")


@dataclass(eq=False)
class Unreadable:
    """Which samples of one source failed to decode. The flags are in shared memory: DataLoader workers (forked or
    spawned) set them, the main process counts them; one flag per sample, so a file counts once however many
    epochs and workers meet it. Holds no reference to its dataset (the finalizer below needs that)."""

    folder: Path | str
    samples: Sequence = field(repr=False)  # (name, class index) per sample: a file path, or a row of a table
    flags: torch.Tensor = field(repr=False)
    owner: int = 0  # pid of the process that listed the samples: only it reports
    reported: bool = False

    def count(self) -> int:
        return int(self.flags.sum())

    def first(self) -> str | None:
        hits = torch.nonzero(self.flags)
        return str(self.samples[int(hits[0])][0]) if len(hits) else None

    def report_at_end(self) -> None:
        """eval and export never ask for the count: warn when the dataset is dropped (or at exit)."""
        if os.getpid() == self.owner:
            report_unreadable([self])


class DecodedImages(Dataset):
    """(RGB PIL image, label) samples decoded when served, not checked up front (start-up does not grow with the
    data); one that cannot be decoded raises UnreadableImage and is flagged in `unreadable`, so later epochs skip
    it without decoding it again. Subclasses set `samples` ((name, label) per sample) and define `_open`."""

    def __init__(self, where: Path | str, samples: Sequence, labels: np.ndarray) -> None:
        self.samples, self.labels = samples, np.asarray(labels, dtype=np.int64)
        flags = torch.zeros(len(self.labels), dtype=torch.bool).share_memory_()
        self.unreadable = Unreadable(where, samples, flags, os.getpid())
        weakref.finalize(self, self.unreadable.report_at_end)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        return self.load(index), int(self.labels[index])

    def _open(self, index: int) -> Image.Image:
        """Sample `index` as an opened (lazily decoded) PIL image."""
        raise NotImplementedError

    def load(self, index: int, draft: bool = False) -> Image.Image:
        name = self.samples[index][0]
        if self.unreadable.flags[index]:
            raise UnreadableImage(name)
        try:
            return decode(self._open(index), draft)
        except DECODE_ERRORS as ex:
            self.unreadable.flags[index] = True
            log.debug("unreadable image %s: %s", name, ex)
            raise UnreadableImage(name) from None


class FileImages(DecodedImages):
    """Image files listed as (path, class index) pairs (a CSV's rows)."""

    def __init__(self, where: Path | str, samples: list[tuple[str, int]]) -> None:
        super().__init__(where, samples, np.array([target for _, target in samples], dtype=np.int64))

    def _open(self, index: int) -> Image.Image:
        return Image.open(self.samples[index][0])


class FolderImages(FileImages):
    """root/<class>/<image> files of every format in IMAGE_EXTENSIONS, listed by timm's folder reader."""

    def __init__(self, folder: Path, class_map: dict | None = None) -> None:
        from timm.data.readers.reader_image_folder import ReaderImageFolder

        # timm's reader takes its extension list as input_key ("a;b;c") and matches it case-insensitively
        self.reader = ReaderImageFolder(str(folder), class_map=class_map or "", input_key=";".join(IMAGE_EXTENSIONS))
        super().__init__(folder, self.reader.samples)


def check_classes_readable(ds: DecodedImages, where: object, classes: list[str]) -> None:
    """Decode each class's samples in order until one reads. A class (or split) none of whose samples can be read
    fails here, in one line, instead of silently never being trained on. A healthy source costs one small
    decode per class: start-up grows with the classes, not the files. Failures found are counted as usual."""
    labels = ds.labels
    pending = set(np.unique(labels).tolist())
    for index, target in enumerate(labels.tolist()):
        if target not in pending:
            continue
        try:
            ds.load(index, draft=True)
            pending.discard(target)
        except UnreadableImage:
            pass
        if not pending:
            return
    bad = min(pending)
    members = np.flatnonzero(labels == bad)
    ds.unreadable.reported = True  # the error says it; no warning about these files at exit as well
    raise TlcliError(
        f"none of the {len(members)} image files of class '{classes[bad]}' under '{where}' can be read "
        f"(e.g. {ds.samples[int(members[0])][0]}); replace them or remove the class"
    )


def report_unreadable(found: list[Unreadable]) -> int:
    """Distinct files that failed to decode so far, in any process; the first call that finds some logs the
    one warning of the run, with the count and the first file."""
    total = sum(u.count() for u in found)
    if total and not all(u.reported for u in found):
        first = next(u.first() for u in found if u.count())
        log.warning(
            "skipped %d unreadable image file(s) (e.g. %s); each was replaced by the next readable image of its "
            "split; fix or remove them",
            total,
            first,
        )
        for u in found:
            u.reported = True
    return total
