"""data=webdataset: tar shards streamed through the `webdataset` library (the `webdataset` extra).

A sample is `{key}.{jpg,jpeg,png,webp}` plus `{key}.cls` (a class index or name). Shards are local paths or URLs,
brace patterns allowed. The stream is shuffled through a buffer; under DDP each rank reads its own train shards
(webdataset's split_by_node), and each DataLoader worker its own (split_by_worker). Split sizes and class names
come from data.split_sizes / data.class_names, or from one counting pass over the shards at start.
A missing val or test split is held out of train by a hash of each sample's key (seeded, not stratified).
"""

from __future__ import annotations

import io
import logging
import math
import zlib
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from torch.utils.data import IterableDataset

from tl_cli.data.datasets import DECODE_ERRORS, UnreadableSplit, register_dataset
from tl_cli.data.images import IMAGE_EXTENSIONS
from tl_cli.data.tables import SPLITS, encode_labels, label_classes, normalized_label
from tl_cli.errors import TlcliError
from tl_cli.extras import WEBDATASET, require

log = logging.getLogger(__name__)

STREAMING = ("webdataset",)  # data.name of the sources served as streams (no index: no subsets, no samplers)
IMAGE_KEYS = tuple(e.lstrip(".") for e in IMAGE_EXTENSIONS)
SHARD_SHUFFLE = 100  # shards shuffled in a buffer of this many, before the samples are


class BadSample(UnreadableSplit):
    """A sample the stream cannot serve (no image, no .cls, corrupt image, unknown label): one line, even when
    raised in a DataLoader worker."""


@dataclass(frozen=True)
class KeyBuckets:
    """Keeps samples whose key hashes (seeded) into [low, high) of [0, 1), or outside it with `outside`."""

    low: float
    high: float
    seed: int
    outside: bool = False

    def __call__(self, sample: dict) -> bool:
        bucket = zlib.crc32(f"{self.seed}:{sample['__key__']}".encode()) / 2**32
        return (self.low <= bucket < self.high) != self.outside


@dataclass
class ShardSplit:
    """One split: its shards, the held-out filter when it comes from train's shards, and its sample count."""

    urls: str
    size: int
    keep: KeyBuckets | None = None


@dataclass
class StreamSplits:
    """What data=webdataset gives the datamodule instead of RawSplits."""

    classes: list[str]
    lookup: dict[str, int]  # .cls text -> class index
    splits: dict[str, ShardSplit]
    notes: dict[str, str] = field(default_factory=dict)
    counts: dict[str, np.ndarray] | None = None  # samples per class of each split, when counted


def keep_all(src, group=None):
    """Every rank reads every shard (val and test: each rank scores the whole split, so metrics stay exact)."""
    yield from src


@dataclass
class SampleDecoder:
    """A raw webdataset sample to (transformed image, model label); None for a class left out by data.classes."""

    lookup: dict[str, int]
    label_map: dict[int, int]
    mode: str
    transform: object

    def __call__(self, sample: dict):
        image_key = image_key_of(sample)
        label = self.lookup.get(normalized_label(sample["cls"].decode("utf-8", "replace")))
        if label is None:
            raise BadSample(f"{where(sample)} has label '{sample['cls'][:40]!r}', not one of the classes")
        if label not in self.label_map:
            return None
        try:
            with Image.open(io.BytesIO(sample[image_key])) as image:
                pixels = image.convert(self.mode)
        except DECODE_ERRORS as ex:
            why = type(ex).__name__
            raise BadSample(f"{where(sample)}: its .{image_key} cannot be decoded ({why}); fix or remove it") from None
        return (self.transform(pixels) if self.transform else pixels), self.label_map[label]


def where(sample: dict) -> str:
    """How messages name a sample: its key and shard."""
    return f"sample '{sample.get('__key__')}' of shard {sample.get('__url__')}"


def image_key_of(sample: dict) -> str:
    """The sample's image extension; a sample without an image or a .cls label is a BadSample."""
    image_key = next((k for k in IMAGE_KEYS if k in sample), None)
    if image_key is None or "cls" not in sample:
        what = f"a .{'/.'.join(IMAGE_KEYS)} image" if image_key is None else "a .cls label"
        found = ", ".join(k for k in sample if not k.startswith("__"))
        raise BadSample(f"{where(sample)} lacks {what} (it has: {found})")
    return image_key


def _not_none(sample) -> bool:
    return sample is not None


def stream_dataset(
    split: ShardSplit, decoder: SampleDecoder, train: bool, buffer: int, seed: int, per_worker: int | None
) -> IterableDataset:
    """The webdataset pipeline of one split. Train: shards split by node and worker, shuffled, cut to
    `per_worker` samples (repeating the shards where the epoch is longer than one pass)."""
    import webdataset as wds

    pipeline = wds.WebDataset(
        split.urls,
        shardshuffle=SHARD_SHUFFLE if train else False,
        nodesplitter=wds.split_by_node if train else keep_all,
        workersplitter=wds.split_by_worker,
        empty_check=False,  # more workers than shards: some read none
        detshuffle=True,  # seeded by seed + epoch: another order each epoch, the same in every run
        seed=seed,
    )
    if split.keep is not None:
        pipeline = pipeline.select(split.keep)
    if train and buffer > 1:
        pipeline = pipeline.compose(wds.filters.detshuffle(buffer, seed=seed))
    pipeline = pipeline.map(decoder)
    if len(set(decoder.label_map)) < len(set(decoder.lookup.values())):  # data.classes leaves some out
        pipeline = pipeline.select(_not_none)
    if train and per_worker:
        pipeline = pipeline.with_epoch(per_worker)
    return pipeline


def shard_count(urls: str) -> int:
    """Shards named by a brace pattern or '::'-joined list."""
    from webdataset.shardlists import expand_urls

    return len(expand_urls(urls))


@register_dataset("webdataset")
def webdataset_source(cfg, seed: int) -> StreamSplits:
    """The splits' shards, classes and sizes (from keys, or counted once)."""
    require(WEBDATASET)
    if not cfg.train:
        raise TlcliError(
            "data=webdataset needs data.train=<shards>, e.g. \"data.train='shards/train-{000000..000009}.tar'\""
        )
    given = {s: cfg[s] for s in SPLITS if cfg[s]}
    splits: dict[str, ShardSplit] = {}
    notes: dict[str, str] = {}
    held, low = {}, 0.0
    for split in ("test", "val"):
        if split not in given:
            fraction = cfg[f"{split}_fraction"]
            held[split] = KeyBuckets(low, low + fraction, seed)
            notes[split] = f"held out ~{fraction:.0%} of train by a hash of each sample's key (seeded, not stratified)"
            low += fraction
    for split in SPLITS:
        keep = held.get(split)
        if split == "train" and held:
            keep = KeyBuckets(0.0, low, seed, outside=True)
        splits[split] = ShardSplit(str(given.get(split, cfg.train)), 0, keep)
    classes, lookup, counts = _classes_and_sizes(cfg, splits)
    return StreamSplits(classes, lookup, splits, notes, counts)


def _classes_and_sizes(
    cfg, splits: dict[str, ShardSplit]
) -> tuple[list[str], dict[str, int], dict[str, np.ndarray] | None]:
    """From data.class_names and data.split_sizes when both are set; else one pass over the shards."""
    names = [str(c) for c in cfg.class_names] if cfg.class_names else None
    sizes = {s: n for s in SPLITS if (n := (cfg.split_sizes or {}).get(s))}
    if names and all(s in sizes for s in SPLITS):
        for split, shard_split in splits.items():
            shard_split.size = int(sizes[split])
        return names, _lookup(names), None
    labels = {split: count_labels(s) for split, s in splits.items()}
    if not names:
        names = label_classes(list(labels["train"]), f"data.train={cfg.train}")
    lookup = _lookup(names)
    for split, found in labels.items():  # unknown labels first: they say more than an empty split
        encode_labels(sorted(found), list(lookup), f"data.{split}={splits[split].urls}")
    for split, found in labels.items():
        if not found:
            held = splits[split].keep is not None and split != "train"
            raise TlcliError(
                f"no sample of data.train fell into the held-out {split} split; raise data.{split}_fraction or pass "
                f"data.{split}=<shards>"
                if held
                else f"data.{split}={splits[split].urls} holds no samples; check the shards"
            )
        splits[split].size = sum(found.values())
    counts = {split: np.zeros(len(names), dtype=np.int64) for split in labels}
    for split, found in labels.items():
        for label, n in found.items():
            counts[split][lookup[label]] += n
    log.info("data=webdataset: counted %s", ", ".join(f"{s}={x.size}" for s, x in splits.items()))
    return names, lookup, counts


def _lookup(names: list[str]) -> dict[str, int]:
    """.cls text -> class index: the index itself ('3') or the class name."""
    return {**{str(i): i for i in range(len(names))}, **{n: i for i, n in enumerate(names)}}


def count_labels(split: ShardSplit) -> Counter:
    """Label text -> samples, in one pass over the split's shards (nothing decoded); a sample without an image
    or a .cls, or an unreadable shard, is an error here rather than mid-training."""
    import webdataset as wds

    pipeline = wds.WebDataset(split.urls, shardshuffle=False, nodesplitter=None, workersplitter=None, empty_check=False)
    found: Counter = Counter()
    try:
        for sample in pipeline:
            if split.keep is not None and not split.keep(sample):
                continue
            image_key_of(sample)  # a sample without an image or a label fails here, before training
            found[normalized_label(sample["cls"].decode("utf-8", "replace"))] += 1
    except BadSample:
        raise
    except Exception as ex:  # a missing or broken shard: webdataset and tarfile raise many types
        first = " ".join(str(ex).split())[:200]
        raise TlcliError(
            f"cannot read the shards {split.urls} ({type(ex).__name__}: {first}); check the paths"
        ) from None
    return found


def epoch_share(epoch_size: int, world_size: int, workers: int) -> tuple[int, int]:
    """(samples per rank, samples per worker of that rank) for an epoch of `epoch_size` samples."""
    per_rank = math.ceil(epoch_size / max(1, world_size))
    return per_rank, math.ceil(per_rank / max(1, workers))


def check_shards(split: ShardSplit, world_size: int) -> None:
    """Each rank reads its own train shards: there must be at least one per rank."""
    shards = shard_count(split.urls)
    if shards < world_size:
        raise TlcliError(
            f"data.train={split.urls} has {shards} shard(s) for {world_size} ranks; each rank reads its own shards: "
            f"write at least {world_size} shards"
        )


def refusals(data) -> str | None:
    """Why a setting cannot work on a stream (None: it can)."""
    if data.samples_per_class:
        return "data.samples_per_class (few-shot subsets) needs indexed data, not a stream; use data=csv or data=hf"
    if data.get("sampler", "random") == "balanced":
        return "data.sampler=balanced needs indexed data, not a stream; use data.class_weights=balanced instead"
    if str(data.cache_features).lower() == "true":
        return "data.cache_features=true needs indexed data, not a stream; use data.cache_features=auto or false"
    return None
