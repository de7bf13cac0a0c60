"""The feature extraction batch size rule (needs no model)."""

from __future__ import annotations

from tl_cli.data.datamodule import EXTRACT_MAX_BATCH, extraction_batch_size


def test_small_images_get_big_extraction_batches() -> None:
    assert extraction_batch_size(128, (1, 32, 32)) == EXTRACT_MAX_BATCH  # 4 KiB per image
    assert extraction_batch_size(128, (3, 64, 64)) == 1024  # 48 KiB: 1365 fit, capped


def test_large_images_keep_the_configured_batch() -> None:
    assert extraction_batch_size(128, (3, 224, 224)) == 128  # 588 KiB per image: only 111 fit in 64 MiB
    assert extraction_batch_size(16, (3, 224, 224)) == 111
    assert extraction_batch_size(2048, (1, 32, 32)) == 2048  # a larger configured batch is kept
