"""The feature extraction batch size rule (needs no model)."""

from __future__ import annotations

from tl_cli.data.datamodule import EXTRACT_MAX_BATCH, extraction_batch_size


def test_small_images_get_big_extraction_batches() -> None:
    assert extraction_batch_size(128, (1, 32, 32)) == EXTRACT_MAX_BATCH  # 4 KiB per image: 1024 fit in 4 MiB
    assert extraction_batch_size(16, (3, 64, 64)) == 85  # 48 KiB per image: 85 fit


def test_large_images_keep_the_configured_batch() -> None:
    assert extraction_batch_size(128, (3, 64, 64)) == 128
    assert extraction_batch_size(16, (3, 224, 224)) == 16  # 588 KiB per image: only 7 fit in 4 MiB
    assert extraction_batch_size(2048, (1, 32, 32)) == 2048  # a larger configured batch is kept
