"""Frozen features computed once: for `freeze`/`extend_freeze` the backbone is a fixed function, so
with a deterministic train transform its outputs can be computed in one pass and reused every epoch.

The cache lives in memory, or on disk (`data.feature_cache_dir`, memory-mapped .npy) keyed by
backbone weights, eval transform and the exact samples of each split; any change gives a new key. On disk each
split is its own entry (`<split>.x.npy`, then `<split>.y.npy`, each renamed into place), so a caller that never
tests (strategy=auto's race) extracts train and val only, and a later run adds test to the same key.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from tl_cli.errors import TlcliError

log = logging.getLogger(__name__)

CACHE_MODES = ("auto", "true", "false")


def cache_decision(mode: object, train_backbone: bool, augment: bool, mixing: bool = False) -> tuple[bool, str]:
    """Whether to cache, and why (logged): only when the backbone is frozen and inputs are deterministic.
    `mixing`: data.mixup/data.cutmix mix train images, so the backbone sees new inputs every step (mixing cached
    features instead would be a different method)."""
    mode = str(mode).lower()
    if mode not in CACHE_MODES:
        raise TlcliError(f"data.cache_features={mode} is not one of {', '.join(CACHE_MODES)}")
    if mode == "false":
        return False, "data.cache_features=false"
    if mixing:
        if mode == "true":
            raise TlcliError(
                "data.cache_features=true cannot serve mixed images; set data.mixup=0 data.cutmix=0, "
                "or data.cache_features=auto"
            )
        return False, "data.mixup/data.cutmix mix the train images, so features differ every step"
    if train_backbone:
        if mode == "true":
            raise TlcliError("data.cache_features=true needs a frozen backbone; use strategy=freeze or extend_freeze")
        return False, "the backbone trains, its features change every step"
    if augment:
        if mode == "true":
            raise TlcliError("data.cache_features=true needs a deterministic train transform; set data.augment=false")
        return False, "train augmentation is on (data.augment=true), so features differ every epoch"
    return True, "frozen backbone and deterministic transforms: features are computed once"


class MappedFeatures(Dataset):
    """(feature, label) rows of memory-mapped arrays, for caches larger than memory."""

    def __init__(self, features: np.ndarray, labels: np.ndarray) -> None:
        self.features, self.labels = features, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):  # an int, or a list of indices for a whole batch
        return torch.from_numpy(np.asarray(self.features[i], dtype=np.float32)), torch.as_tensor(self.labels[i])


def cache_key(backbone: torch.nn.Module, transform: object, splits: dict[str, object], extra: dict) -> str:
    """sha256 over the backbone's tensors, the eval transform and every split's sample indices."""
    h = hashlib.sha256()
    for name, tensor in sorted(backbone.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    h.update(repr(transform).encode())
    h.update(json.dumps(extra, sort_keys=True, default=str).encode())
    for split, subset in sorted(splits.items()):
        h.update(split.encode())
        h.update(np.asarray(subset.indices, dtype=np.int64).tobytes())
        h.update(json.dumps(sorted(subset.label_map.items())).encode())
    return h.hexdigest()[:24]


@torch.inference_mode()
def extract(
    net, loader: DataLoader, normalize, device: torch.device, forward_context, channels_last: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """One pass of the (eval-mode) backbone over a loader of uint8 images, normalized per batch by `normalize`
    (the datamodule's BatchNormalize), in the training run's precision and memory format."""
    feats, labels = [], []
    for images, y in loader:
        images = normalize(images.to(device))
        if channels_last and images.dim() == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        with forward_context():
            feats.append(net.forward_features(images).float().cpu())
        labels.append(torch.as_tensor(y))
    return torch.cat(feats), torch.cat(labels)


def cached_feature_splits(
    net,
    datamodule,
    device,
    forward_context,
    cache_dir: str | None,
    extra: dict,
    channels_last: bool = False,
    splits: tuple[str, ...] | None = None,
) -> dict:
    """Feature datasets for `splits` (default: every split), each from the disk cache when its key holds it,
    else computed now.

    The extraction runs under a forked RNG so the training that follows draws the same random numbers
    as it would without the cache.
    """
    wanted = [s for s in datamodule.splits if splits is None or s in splits]
    transform = (datamodule.eval_transform, datamodule.normalize)  # per image, then per batch
    key = cache_key(net.backbone, transform, datamodule.splits, extra) if cache_dir else None
    folder = Path(cache_dir).expanduser() / key if key else None
    result: dict[str, Dataset] = {}
    if folder is not None:
        result = {s: _load(folder, s) for s in wanted if (folder / f"{s}.y.npy").is_file()}
    missing = [s for s in wanted if s not in result]
    if result:
        log.info("feature cache hit: %s (%s)", folder, ", ".join(result))
    if not missing:
        return result
    was_training = net.backbone.training
    net.backbone.eval()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for split in missing:
            loader = datamodule.eval_loader(split)
            x, y = extract(net, loader, datamodule.normalize, device, forward_context, channels_last)
            result[split] = TensorDataset(x, y)
    net.backbone.train(was_training)
    if folder is not None:
        _write(folder, {s: result[s] for s in missing})
    return result


def _load(folder: Path, split: str) -> MappedFeatures:
    return MappedFeatures(np.load(folder / f"{split}.x.npy", mmap_mode="r"), np.load(folder / f"{split}.y.npy"))


def _write(folder: Path, result: dict[str, TensorDataset]) -> None:
    """Each file written under a temporary name, then renamed; labels last: a killed run never leaves a split
    that looks complete."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, ds in result.items():
        for suffix, array in (("x", ds.tensors[0].numpy()), ("y", ds.tensors[1].numpy())):
            # a unique temporary name: writers on other nodes of a shared cache dir may share a pid
            handle, tmp = tempfile.mkstemp(dir=folder, prefix=f"{split}.{suffix}.", suffix=".tmp")
            try:
                with os.fdopen(handle, "wb") as f:
                    np.save(f, array)
                os.replace(tmp, folder / f"{split}.{suffix}.npy")
            finally:
                Path(tmp).unlink(missing_ok=True)
    log.info("feature cache written: %s (%s)", folder, ", ".join(result))
