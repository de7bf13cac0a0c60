"""Images to model input in two steps (uint8 per image, normalized per batch), against timm's one-step transform."""

from __future__ import annotations

import random

import lightning as L
import numpy as np
import pytest
import timm
import torch
from PIL import Image
from timm.data import create_transform

from tests.conftest import compose
from tl_cli.data.datamodule import TransferDataModule, resolve_data_config
from tl_cli.data.transforms import BatchNormalize, build_transforms


def photos(count: int, size: int = 40) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (size, size + 7, 3), dtype=np.uint8)) for _ in range(count)]


def rgb_datamodule(overrides: list[str]) -> TransferDataModule:
    cfg = compose(["model=tiny", "model.in_chans=3", *overrides])
    backbone = timm.create_model("test_resnet", num_classes=0)
    dm = TransferDataModule(cfg.data, resolve_data_config(backbone, cfg.data, 3, 32), cfg.seed)
    dm.prepare_splits()
    return dm


def test_two_steps_equal_timms_one_step_eval_transform() -> None:
    data_config = {"input_size": (3, 32, 32), "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
    data_config.update(interpolation="bicubic", crop_pct=0.875)
    one_step = create_transform(**data_config, is_training=False)  # ToTensor + Normalize per image
    per_image, _ = build_transforms(data_config, augment=False, aug={})
    images = photos(4)
    uint8 = torch.stack([per_image(im) for im in images])
    assert uint8.dtype == torch.uint8 and uint8.shape == (4, 3, 32, 32)
    expected = torch.stack([one_step(im) for im in images])
    torch.testing.assert_close(BatchNormalize.for_data(data_config)(uint8), expected, rtol=0, atol=1e-5)


def test_grayscale_batches_get_one_channel_stats() -> None:
    normalize = BatchNormalize((0.5,), (0.25,))
    batch = torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1)
    assert normalize(batch).flatten().tolist() == pytest.approx([-2.0, 2.0])
    with pytest.raises(TypeError, match="uint8"):
        normalize(batch.float())


def test_the_datamodule_normalizes_after_the_transfer_and_erases_only_in_training() -> None:
    dm = rgb_datamodule(["data=digits", "data.augment=true", "+data.aug.re_prob=1.0"])
    assert "RandomErasing" not in str(dm.train_transform)  # a per-batch step, as with timm's prefetcher
    images = torch.stack([dm.splits["train"][i][0] for i in range(8)])
    labels = torch.arange(8)

    dm.trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False)
    dm.trainer.validating = True
    random.seed(0)
    evaluated, same_labels = dm.on_after_batch_transfer((images, labels), 0)
    assert same_labels is labels
    torch.testing.assert_close(evaluated, dm.normalize(images))  # no erasing outside training
    dm.trainer.training = True
    trained, _ = dm.on_after_batch_transfer((images, labels), 0)
    assert trained.dtype == torch.float32
    erased = (trained != evaluated).flatten(1).any(dim=1)
    assert erased.all()  # re_prob=1: every training sample has an erased box
    features = torch.randn(8, 16)
    assert dm.on_after_batch_transfer((features, labels), 0)[0] is features  # cached features pass through


def test_normalization_is_part_of_the_feature_cache_key() -> None:
    a = BatchNormalize((0.5,), (0.25,))
    assert repr(a) == repr(BatchNormalize((0.5,), (0.25,)))
    assert repr(a) != repr(BatchNormalize((0.5,), (0.3,)))


def test_true_precision_trainers_get_inputs_in_their_dtype() -> None:
    """trainer.precision=bf16-true converts float batches before the transfer hooks; uint8 ones are converted
    after normalizing, or a bf16 network would get float32 input."""
    dm = rgb_datamodule(["data=digits", "data.augment=false"])
    images = torch.stack([dm.splits["train"][i][0] for i in range(4)])
    dm.trainer = L.Trainer(accelerator="cpu", precision="bf16-true", logger=False, enable_checkpointing=False)
    dm.trainer.training = True
    converted, _ = dm.on_after_batch_transfer((images, torch.arange(4)), 0)
    assert converted.dtype == torch.bfloat16
    torch.testing.assert_close(converted, dm.normalize(images).to(torch.bfloat16))
