"""Layer-wise LR decay and weight EMA (issue 15) on real timm models and real optimizer groups: per-layer LRs and
the EMA update rule."""

from __future__ import annotations

import pytest
import timm
import torch
from timm.models import group_parameters

from tl_cli.errors import TlcliError
from tl_cli.transfer.callbacks import _ema_update
from tl_cli.transfer.module import TransferModule
from tl_cli.transfer.network import TransferNet

LR, MULT, DECAY = 1e-2, 0.1, 0.75
OPTIM = {"name": "adamw", "lr": LR, "weight_decay": 0.05, "momentum": 0.9, "scheduler": "constant"}


def _optimizer(net: TransferNet, layer_decay: float | None) -> torch.optim.Optimizer:
    module = TransferModule(net, 3, {**OPTIM, "layer_decay": layer_decay}, backbone_lr_mult=MULT)
    return module.configure_optimizers()  # scheduler=constant: the optimizer alone


def _lr_of(optimizer: torch.optim.Optimizer) -> dict[int, float]:
    """id(parameter) -> its learning rate; each parameter in exactly one group."""
    lrs = [(id(p), g["lr"]) for g in optimizer.param_groups for p in g["params"]]
    assert len(lrs) == len(dict(lrs)), "a parameter is in two groups"
    return dict(lrs)


@pytest.mark.parametrize("backbone", ["test_vit", "test_resnet"])
def test_layer_decay_gives_each_timm_layer_its_lr_and_the_new_layers_the_full_lr(backbone: str) -> None:
    net = TransferNet(timm.create_model(backbone, num_classes=0), 3, hidden_dims=[8])
    lr_of = _lr_of(_optimizer(net, DECAY))
    # the layers timm's own layer decay uses: the backbone's group_matcher, stem = 0
    layer_of = group_parameters(net.backbone, net.backbone.group_matcher(coarse=False), reverse=True)
    last = max(layer_of.values())
    assert last >= 4  # several layers: the test means something
    per_layer: dict[int, set[float]] = {}
    for name, p in net.backbone.named_parameters():
        assert lr_of[id(p)] == pytest.approx(LR * MULT * DECAY ** (last - layer_of[name]), rel=1e-12), name
        per_layer.setdefault(layer_of[name], set()).add(lr_of[id(p)])
    lrs = [per_layer[i].pop() for i in sorted(per_layer)]  # one LR per layer, first (stem) to last
    assert all(a < b for a, b in zip(lrs, lrs[1:], strict=False)), lrs  # strictly rising towards the head
    assert lrs[-1] == pytest.approx(LR * MULT)
    for p in [*net.extension.parameters(), *net.head.parameters()]:
        assert lr_of[id(p)] == LR


def test_layer_decay_off_keeps_one_backbone_lr() -> None:
    net = TransferNet(timm.create_model("test_vit", num_classes=0), 3)
    lr_of = _lr_of(_optimizer(net, None))
    assert {lr_of[id(p)] for p in net.backbone.parameters()} == {LR * MULT}
    assert {lr_of[id(p)] for p in net.head.parameters()} == {LR}


def test_layer_decay_groups_hold_only_trainable_parameters_with_unique_names() -> None:
    net = TransferNet(timm.create_model("test_vit", num_classes=0), 3)
    for p in [*net.backbone.patch_embed.parameters(), *net.backbone.blocks[0].parameters()]:
        p.requires_grad_(False)
    optimizer = _optimizer(net, DECAY)
    in_optimizer = set(_lr_of(optimizer))
    assert in_optimizer == {id(p) for p in net.parameters() if p.requires_grad}
    names = [g["name"] for g in optimizer.param_groups]  # Lightning's LearningRateMonitor needs unique names
    assert len(names) == len(set(names))
    assert not any(g["weight_decay"] for g in optimizer.param_groups if g["name"].endswith("_no_wd"))


def test_layer_decay_one_is_the_plain_groups() -> None:
    net = TransferNet(timm.create_model("test_resnet", num_classes=0), 3)
    assert _lr_of(_optimizer(net, 1.0)) == _lr_of(_optimizer(net, None))


def test_ema_update_lerps_floats_keeps_constants_bit_identical_and_copies_integer_buffers() -> None:
    torch.manual_seed(0)
    frozen = torch.randn(1000)
    ema, current = [frozen.clone(), torch.zeros(3)], [frozen, torch.ones(3)]
    for _ in range(50):  # EMA of a constant: exactly the constant, every step
        _ema_update(ema, current, torch.tensor(1), decay=0.999)
    assert torch.equal(ema[0], frozen)
    assert torch.allclose(ema[1], torch.full((3,), 1 - 0.999**50))
    counts = [torch.tensor(5)]  # BatchNorm's num_batches_tracked: copied, as timm's ModelEmaV3 does
    _ema_update(counts, [torch.tensor(9)], torch.tensor(1), decay=0.999)
    assert counts[0].item() == 9


@pytest.mark.parametrize("strategy", ["finetune", "extend_finetune", "scratch", "auto", "extend_freeze"])
def test_layer_decay_is_refused_only_where_the_backbone_is_frozen(strategy: str) -> None:
    from tests.conftest import compose
    from tl_cli.config.checks import check_config

    cfg = compose([f"strategy={strategy}", "optim.layer_decay=0.75", "optim.ema_decay=0.999"])
    if strategy == "extend_freeze":  # auto decides later: layer decay applies if it picks a training backbone
        with pytest.raises(TlcliError, match="no effect with strategy=extend_freeze"):
            check_config(cfg)
    else:
        check_config(cfg)
