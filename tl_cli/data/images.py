"""Which files are images: one extension set for the folder reader, CSV lists, eval and predict.

Light on purpose (no torch, no timm): `tlcli predict` imports it to pick the files of a folder.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger(__name__)

# every format tlcli serves, in lower case (names are matched case-insensitively); GIFs give their first frame
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")
SHOWN = 3  # how many names a message lists


def is_image_file(path: str | Path) -> bool:
    """Whether the name has one of IMAGE_EXTENSIONS (in any case)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def first_few(names: Iterable[object], count: int | None = None) -> str:
    """'a, b, c, ...' of the first SHOWN names (with '...' when there are more)."""
    names = [str(n) for n in names]
    total = len(names) if count is None else count
    return ", ".join(names[:SHOWN]) + (", ..." if total > SHOWN else "")


def visible_files(folder: Path) -> list[Path]:
    """Files under `folder`, recursively and sorted, hidden entries (.DS_Store, .git/) left out."""
    return [
        p
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    ]


def report_non_images(files: Iterable[Path], where: object) -> list[Path]:
    """The image files of `files`; the others are reported in one warning (count and first names), never
    dropped without a word."""
    images, others = [], []
    for f in files:
        (images if is_image_file(f) else others).append(f)
    if others:
        log.warning(
            "ignored %d file(s) under %s that are not images (%s): %s",
            len(others),
            where,
            " ".join(IMAGE_EXTENSIONS),
            first_few(others),
        )
    return images
