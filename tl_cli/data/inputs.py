"""Image files named on the command line (predict's and explain's `inputs`/`images`): found, then read one by one,
an unreadable file a result rather than an exception."""

from __future__ import annotations

import glob
from collections.abc import Iterable
from pathlib import Path

import torch
from omegaconf import ListConfig
from torch.utils.data import Dataset

from tl_cli.data.images import report_non_images, visible_files
from tl_cli.errors import TlcliError


def collect_inputs(inputs: str | Iterable[str], key: str = "inputs") -> list[str]:
    """Files named by `inputs` (config key `key`): files, folders (recursive, hidden entries skipped), globs, or a
    list of those. Folders and globs give their image files, the others reported once; a file named on its own is
    always tried."""
    items = [str(i) for i in inputs] if isinstance(inputs, (list, tuple, ListConfig)) else [str(inputs)]
    found: dict[str, None] = {}  # ordered set
    for item in items:
        path = Path(item).expanduser()
        if path.is_file():
            matches = [str(path)]
        elif path.is_dir():  # its image files, as training reads them (tl_cli/data/images.py); the others reported
            matches = [str(p) for p in report_non_images(visible_files(path), f"{key}={item}")]
        elif glob.has_magic(item):
            files = [Path(p) for p in sorted(glob.glob(str(path), recursive=True)) if Path(p).is_file()]
            matches = [str(p) for p in report_non_images(files, f"{key}={item}")]
        else:
            raise TlcliError(f"{key}={item} does not exist; pass an image file, a folder or a glob like 'photos/*.jpg'")
        found.update(dict.fromkeys(matches))
    if not found:
        raise TlcliError(f"{key}={shown(inputs)} matches no files; pass an image file, a folder or a glob")
    return list(found)


class ImageFiles(Dataset):
    """(index, image tensor or None, why not) per file: a bad file is a result, not an exception."""

    def __init__(self, paths: list[str], transform, mode: str) -> None:
        self.paths, self.transform, self.mode = paths, transform, mode

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, str]:
        from PIL import Image

        try:
            with Image.open(self.paths[index]) as image:
                return index, self.transform(image.convert(self.mode)), ""
        except Exception as ex:  # any decoder failure (corrupt, truncated, not an image) skips just this file
            return index, None, " ".join(f"{type(ex).__name__}: {ex}".split())[:200]


def collate(items: list[tuple[int, torch.Tensor | None, str]]):
    """(indices of good files, their stacked images or None, [(index, reason)] of bad files)."""
    good = [(i, image) for i, image, _ in items if image is not None]
    bad = [(i, reason) for i, image, reason in items if image is None]
    images = torch.stack([image for _, image in good]) if good else None
    return [i for i, _ in good], images, bad


def shown(inputs: object) -> str:
    return ",".join(str(i) for i in inputs) if isinstance(inputs, (list, tuple, ListConfig)) else str(inputs)
