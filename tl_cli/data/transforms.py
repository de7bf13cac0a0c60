"""Images to model input in two steps, as timm's prefetch loader splits them.

Per image (in the DataLoader): timm's `create_transform(use_prefetcher=True)`: decode, crop, resize, flip, colour
jitter, ending in a uint8 tensor. Per batch (on the device, after the transfer): float conversion, mean/std
normalization and, in training, random erasing (`BatchNormalize`). A uint8 batch is a quarter of the float32 one to
collate and move to a GPU, and one vectorized normalization replaces a float conversion and a Normalize per image
(docs/performance.md). Every path from images to the network goes through both steps: training, validation and
test, feature extraction, strategy=auto's probes, eval, predict and export's parity check.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from tl_cli.errors import TlcliError

# data.aug keys that are per-batch steps here (timm leaves random erasing out of a use_prefetcher transform)
ERASING_KEYS = {"re_prob": "probability", "re_mode": "mode", "re_count": "max_count", "re_num_splits": "num_splits"}


def eval_transform(data_config: dict[str, Any]):
    """timm's deterministic eval transform for this data config, up to a uint8 tensor."""
    from timm.data import create_transform

    return create_transform(**data_config, is_training=False, use_prefetcher=True)


def build_transforms(data_config: dict[str, Any], augment: bool, aug: dict[str, Any]):
    """(train, eval) per-image transforms from timm.data.create_transform, up to uint8 tensors."""
    from timm.data import create_transform

    eval_tf = eval_transform(data_config)
    if not augment:
        return eval_tf, eval_tf
    # tf_preprocessing: timm's TensorFlow transform, which takes image bytes, not the PIL images tlcli serves
    fixed = {"input_size", "is_training", "use_prefetcher", "tf_preprocessing"}
    valid = set(inspect.signature(create_transform).parameters) - fixed
    unknown = sorted(set(aug) - valid)
    if unknown:
        raise TlcliError(f"unknown data.aug key '{unknown[0]}'; valid: {', '.join(sorted(valid))}")
    train_cfg = {k: v for k, v in data_config.items() if k != "crop_pct"}
    train_tf = create_transform(**train_cfg, is_training=True, use_prefetcher=True, **dict(aug))
    return train_tf, eval_tf


class BatchNormalize:
    """uint8 image batches (N, C, H, W) to normalized float32 batches on their own device; with `erasing`
    (timm RandomErasing arguments), training batches also get timm's per-sample random erasing."""

    def __init__(self, mean, std, erasing: dict[str, Any] | None = None) -> None:
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        self.erasing = erasing
        self._on_device: dict[torch.device, tuple[torch.Tensor, torch.Tensor, Any]] = {}

    @classmethod
    def for_data(cls, data_config: dict[str, Any], augment: bool = False, aug: dict[str, Any] | None = None):
        """The batch step that completes `build_transforms(data_config, augment, aug)`'s per-image one."""
        from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

        aug = dict(aug or {}) if augment else {}
        erasing = {name: aug[key] for key, name in ERASING_KEYS.items() if key in aug}
        use_erasing = float(erasing.get("probability", 0.0)) > 0
        mean, std = data_config.get("mean", IMAGENET_DEFAULT_MEAN), data_config.get("std", IMAGENET_DEFAULT_STD)
        return cls(mean, std, erasing if use_erasing else None)

    def __call__(self, images: torch.Tensor, train: bool = False) -> torch.Tensor:
        if images.dtype != torch.uint8:
            raise TypeError(f"BatchNormalize expects uint8 images, got {images.dtype}")
        mean, std, erase = self._constants(images.device)
        out = images.float().sub_(mean).div_(std)
        return erase(out) if train and erase is not None else out

    def _constants(self, device: torch.device):
        if device not in self._on_device:
            from timm.data.random_erasing import RandomErasing

            erase = RandomErasing(**self.erasing, device=device) if self.erasing else None
            # as timm's PrefetchLoader: (x - 255 mean) / (255 std), one subtraction and one division per pixel
            mean, std = ([255 * v for v in stats] for stats in (self.mean, self.std))
            shape = (1, len(mean), 1, 1)
            scaled = torch.tensor(mean, device=device).view(shape), torch.tensor(std, device=device).view(shape)
            self._on_device[device] = (*scaled, erase)
        return self._on_device[device]

    def __repr__(self) -> str:  # part of the feature cache key: the per-batch half of the transform
        return f"BatchNormalize(mean={self.mean}, std={self.std}, erasing={self.erasing})"
