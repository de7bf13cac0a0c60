"""Grad-CAM heat maps of a trained TransferNet with pytorch-grad-cam, for CNNs and ViTs, and their overlays.

The layer: for a ViT, the last block's norm1 (its tokens, reshaped to the patch grid; pytorch-grad-cam's advice:
after the last block only the class token reaches the head); for a CNN, the deepest timm feature stage whose map
is still at least MIN_SIDE x MIN_SIDE at the model's input size (a 1 x 1 map at 32 px cannot show where).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from tl_cli.errors import TlcliError

MIN_SIDE = 4


def is_vit(backbone: torch.nn.Module) -> bool:
    """A timm transformer whose tokens are a prefix (class, register tokens) then the patch grid."""
    return hasattr(backbone, "num_prefix_tokens") and isinstance(getattr(backbone, "blocks", None), torch.nn.Sequential)


def target_layer(
    backbone: torch.nn.Module, input_size: tuple[int, ...], name: str | None
) -> tuple[str, torch.nn.Module]:
    """(name, module) of the layer Grad-CAM reads: `name` when given, else the default above."""
    if name is None:
        name = _default_layer(backbone, input_size)
    try:
        return name, backbone.get_submodule(name)
    except AttributeError:
        stages = ", ".join(str(f["module"]) for f in getattr(backbone, "feature_info", []))
        raise TlcliError(
            f"layer={name} is not a module of the backbone; pass one of its modules, e.g. {stages or 'a stage'}"
        ) from None


def _default_layer(backbone: torch.nn.Module, input_size: tuple[int, ...]) -> str:
    if is_vit(backbone):
        return f"blocks.{len(backbone.blocks) - 1}.norm1"
    stages = list(getattr(backbone, "feature_info", []))
    if not stages:
        raise TlcliError("this backbone has no timm feature_info; name the layer to explain with layer=<module>")
    side = min(int(s) for s in input_size[1:])
    wide = [s for s in stages if side // int(s["reduction"]) >= MIN_SIDE]
    return str((wide[-1] if wide else stages[0])["module"])


def token_reshape(backbone: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """(batch, tokens, channels) -> (batch, channels, rows, columns) without the prefix tokens; maps pass."""
    prefix = int(getattr(backbone, "num_prefix_tokens", 0))
    grid = getattr(getattr(backbone, "patch_embed", None), "grid_size", None)

    def reshape(tokens: torch.Tensor) -> torch.Tensor:
        if tokens.dim() != 3:
            return tokens
        patches = tokens[:, prefix:]
        rows, columns = tuple(grid) if grid and math.prod(grid) == patches.shape[1] else (0, 0)
        if not rows:
            rows = columns = math.isqrt(patches.shape[1])
            if rows * columns != patches.shape[1]:
                raise TlcliError(f"cannot lay {patches.shape[1]} tokens out on a grid; pass layer=<a module>")
        return patches.reshape(len(tokens), rows, columns, -1).permute(0, 3, 1, 2)

    return reshape


def heatmaps(net: torch.nn.Module, layer: torch.nn.Module, inputs: torch.Tensor, classes: list[int]) -> np.ndarray:
    """Grad-CAM maps (batch, height, width) in [0, 1] at the input's size, each for its class index."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    backbone = getattr(net, "backbone", net)
    with GradCAM(model=net, target_layers=[layer], reshape_transform=token_reshape(backbone)) as cam:
        return cam(input_tensor=inputs, targets=[ClassifierOutputTarget(c) for c in classes])


def plot_overlay(image: torch.Tensor, cam: np.ndarray, path: Path, title: str) -> None:
    """The image (uint8 CHW, as the model saw it) beside it with the heat map laid over it."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    from tl_cli.reporting.diagnostics import pyplot

    rgb = image.permute(1, 2, 0).numpy().astype(np.float32) / 255.0
    rgb = np.repeat(rgb, 3, axis=2) if rgb.shape[2] == 1 else rgb[..., :3]
    overlay = show_cam_on_image(rgb, cam, use_rgb=True, image_weight=0.5)
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(7, 3.9))
    for ax, pixels, name in ((left, rgb, "image"), (right, overlay, "Grad-CAM")):
        ax.imshow(pixels, interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
