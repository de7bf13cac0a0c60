"""Test-time augmentation: the softmax averaged over views of each image (eval and predict, tta=true).

A view is a deterministic flip of the eval-transformed uint8 batch, as timm's validation TTA uses: the image and
its horizontal flip by default (tta_views=[identity,hflip]); vflip for data without an up (e.g. microscopy).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from tl_cli.errors import TlcliError, choose_from

VIEWS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "identity": lambda x: x,
    "hflip": lambda x: x.flip(-1),
    "vflip": lambda x: x.flip(-2),
    "hvflip": lambda x: x.flip(-1, -2),
}
PLAIN = ("identity",)


def views_of(tta: bool, views: Sequence[str]) -> tuple[str, ...]:
    """The views to run: just the image without tta, else the checked tta_views."""
    if not tta:
        return PLAIN
    names = tuple(str(v) for v in views)
    if not names:
        raise TlcliError("tta_views=[] is empty; use e.g. tta_views=[identity,hflip]")
    for name in names:
        if name not in VIEWS:
            raise choose_from("tta_views", name, VIEWS)
    return names


def view_logits(
    logits_of: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, views: Sequence[str]
) -> torch.Tensor:
    """(views, batch, classes) logits of one uint8 batch, one forward pass per view."""
    return torch.stack([logits_of(VIEWS[name](images)) for name in views])


def combine(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """(views, batch, classes) -> (batch, classes) scores whose softmax is the mean of the views' softmax at this
    temperature: log(mean_v softmax(logits_v / T)), log-probabilities (cross-entropy and argmax take them as
    logits)."""
    log_probs = (logits.float() / temperature).log_softmax(dim=-1)
    return torch.logsumexp(log_probs, dim=0) - math.log(len(logits))
