"""TransferNet on real timm backbones, through timm's generic head API."""

from __future__ import annotations

import pytest
import timm
import torch

from tests.conftest import BACKBONES
from tl_cli.transfer.network import TransferNet, build_extension, feature_dim


@pytest.mark.parametrize("name", BACKBONES)
@pytest.mark.parametrize("in_chans", [1, 3])
def test_any_backbone_with_new_head(name: str, in_chans: int) -> None:
    kwargs = {"img_size": 32} if "vit" in name else {}
    backbone = timm.create_model(name, num_classes=0, in_chans=in_chans, **kwargs)
    net = TransferNet(backbone, num_classes=7, hidden_dims=[32, 16], norm="batchnorm").eval()
    x = torch.randn(3, in_chans, 32, 32)
    assert net.forward_features(x).shape == (3, feature_dim(backbone))
    assert net(x).shape == (3, 7)
    keys = net.state_dict().keys()
    assert {k.split(".")[0] for k in keys} == {"backbone", "extension", "head"}
    # the backbone part is exactly timm's own state dict
    assert {k.removeprefix("backbone.") for k in keys if k.startswith("backbone.")} == set(backbone.state_dict())


def test_extension_shape_is_configurable() -> None:
    ext = build_extension(64, [128, 32], activation="relu", norm="layernorm", dropout=0.2)
    kinds = [type(m).__name__ for m in ext]
    assert kinds == ["Linear", "LayerNorm", "ReLU", "Dropout", "Linear", "LayerNorm", "ReLU", "Dropout"]
    assert ext[0].in_features == 64 and ext[-4].out_features == 32
    assert len(build_extension(64, [])) == 0


def test_bad_extension_settings_are_named() -> None:
    from tl_cli.errors import TlcliError

    with pytest.raises(TlcliError, match="norm 'groupnorm'"):
        build_extension(8, [4], norm="groupnorm")


def test_frozen_part_stays_in_eval_mode() -> None:
    net = TransferNet(timm.create_model("test_resnet", num_classes=0), 3)
    net.freeze("backbone")
    net.train()
    assert not net.backbone.training and all(not m.training for m in net.backbone.modules())
    assert net.head.training
    assert not any(p.requires_grad for p in net.backbone.parameters())
