"""Every data source, registered: the built-in ones (tl_cli/data/datasets.py) and those in their own modules."""

from __future__ import annotations

from tl_cli.data import custom, hf, stream, tables  # noqa: F401  (each registers its source on import)
from tl_cli.data.datasets import DATASETS, RawSplits
from tl_cli.data.stream import StreamSplits
from tl_cli.errors import choose_from


def build_dataset(cfg, seed: int) -> RawSplits | StreamSplits:
    """Look up `cfg.name` in the registry and build its splits (indexed, or shard streams)."""
    if cfg.name not in DATASETS:
        raise choose_from("dataset", cfg.name, DATASETS)
    return DATASETS[cfg.name](cfg, seed)
