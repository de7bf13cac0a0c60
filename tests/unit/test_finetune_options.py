"""Layer-wise LR decay, weight EMA, Mixup/CutMix and LP-FT (issue 15) on real timm models and real optimizer
groups: per-layer LRs, the EMA update rule, the soft targets a training step trains against, and a real Trainer
fit with strategy.freeze_epochs (frozen backbone and BatchNorm statistics, then all trains, one cosine schedule)."""

from __future__ import annotations

import itertools
import math

import lightning as L
import numpy as np
import pytest
import timm
import torch
from timm.models import group_parameters

from tl_cli.data.features import cache_decision
from tl_cli.errors import TlcliError
from tl_cli.transfer.callbacks import _ema_decay_at, _ema_update
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
        _ema_update(ema, current, torch.tensor(1), decay=0.999, warmup=False)
    assert torch.equal(ema[0], frozen)
    assert torch.allclose(ema[1], torch.full((3,), 1 - 0.999**50))
    counts = [torch.tensor(5)]  # BatchNorm's num_batches_tracked: copied, as timm's ModelEmaV3 does
    _ema_update(counts, [torch.tensor(9)], torch.tensor(1), decay=0.999, warmup=False)
    assert counts[0].item() == 9


def test_ema_warmup_ramps_the_decay_up_to_its_cap_and_weights_a_short_run_towards_its_late_steps() -> None:
    decays = [_ema_decay_at(n, 0.999, warmup=True) for n in range(1, 2000)]
    assert all(a <= b for a, b in itertools.pairwise(decays)) and decays[0] < 0.5 < decays[-1] < 0.999
    assert _ema_decay_at(10**6, 0.999, warmup=True) == 0.999  # capped
    assert 0.95 < _ema_decay_at(299, 0.999, warmup=True) < 0.99  # 300 steps: a horizon of tens of steps
    assert _ema_decay_at(1, 0.999, warmup=False) == 0.999
    # the weight the average keeps on the initial value after 300 updates: all of it stays without warmup
    start = {w: torch.ones(1) for w in (True, False)}
    for warmup, ema in start.items():
        for n in range(1, 300):
            _ema_update([ema], [torch.zeros(1)], torch.tensor(n), decay=0.999, warmup=warmup)
    assert start[True].item() < 0.01 < 0.7 < start[False].item()


def _module_with_mixup(num_classes: int = 4, smoothing: float = 0.1) -> TransferModule:
    net = TransferNet(timm.create_model("test_resnet", num_classes=0), num_classes)
    config = {"data": {"mixup": 0.8, "cutmix": 1.0}}
    module = TransferModule(net, num_classes, {**OPTIM, "label_smoothing": smoothing}, config=config)
    module.trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    return module


def _train_step(module: TransferModule, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, list]:
    """One real training_step (batch_idx 1: no self.log outside a loop); returns its loss and what the soft-target
    loss and the network were called with."""
    seen: list = []
    soft_loss = module.soft_target_loss

    def record(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        loss = soft_loss(logits, targets)
        seen.append((logits, targets, loss))
        return loss

    module.soft_target_loss = record
    inputs: list = []
    hook = module.net.register_forward_pre_hook(lambda _m, args: inputs.append(args[0].clone()))
    try:
        loss = module.training_step((images.clone(), labels), 1)
    finally:
        hook.remove()
    return loss, [*seen, inputs[0]]


def test_mixup_cutmix_training_step_trains_on_mixed_images_against_soft_targets() -> None:
    np.random.seed(0)  # timm's Mixup draws lambda and the CutMix box from numpy's global RNG
    torch.manual_seed(0)
    module = _module_with_mixup()
    images, labels = torch.randn(8, 3, 32, 32), torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    loss, ((logits, targets, soft_loss), seen_images) = _train_step(module, images, labels)
    assert loss is soft_loss and torch.isfinite(loss)
    assert targets.shape == (8, 4) and targets.dtype.is_floating_point
    assert torch.allclose(targets.sum(dim=-1), torch.ones(8))
    one_hot_max = 1 - 0.1 + 0.1 / 4  # label smoothing 0.1 alone would give this
    assert (targets.max(dim=-1).values < one_hot_max - 1e-3).all()  # every row mixes two classes
    expected = torch.sum(-targets * torch.log_softmax(logits, dim=-1), dim=-1).mean()  # SoftTargetCrossEntropy
    assert torch.allclose(loss, expected)
    assert not torch.equal(seen_images, images)  # the network saw mixed images
    # train accuracy: right when the prediction is the mixed target's largest class
    assert module._correct.item() == (logits.argmax(dim=-1) == targets.argmax(dim=-1)).sum().item()


def test_an_odd_batch_trains_unmixed_against_smoothed_one_hot_targets() -> None:
    module = _module_with_mixup()
    images, labels = torch.randn(7, 3, 32, 32), torch.tensor([0, 1, 2, 3, 0, 1, 2])
    loss, ((_, targets, _), seen_images) = _train_step(module, images, labels)
    assert torch.isfinite(loss) and torch.equal(seen_images, images)
    expected = torch.full((7, 4), 0.1 / 4)
    expected[torch.arange(7), labels] = 1 - 0.1 + 0.1 / 4
    assert torch.allclose(targets, expected)


def test_validation_never_mixes() -> None:
    module = _module_with_mixup()
    images, labels = torch.randn(8, 3, 32, 32), torch.arange(8) % 4
    logits, used_labels, _ = module._forward_loss((images, labels), "val")
    assert torch.equal(used_labels, labels)


def test_mixup_turns_the_feature_cache_off_and_says_why() -> None:
    use, why = cache_decision("auto", train_backbone=False, augment=False, mixing=True)
    assert not use and "data.mixup" in why
    with pytest.raises(TlcliError, match="data.mixup=0"):
        cache_decision("true", train_backbone=False, augment=False, mixing=True)
    assert cache_decision("auto", train_backbone=False, augment=False, mixing=False)[0]


@pytest.mark.parametrize("strategy", ["finetune", "extend_finetune", "scratch", "auto", "extend_freeze"])
def test_layer_decay_is_refused_only_where_the_backbone_is_frozen(strategy: str) -> None:
    from tests.conftest import compose
    from tl_cli.config.checks import check_config

    cfg = compose([f"strategy={strategy}", "optim.layer_decay=0.75", "optim.ema_decay=0.999", "data.mixup=0.8"])
    if strategy == "extend_freeze":  # auto decides later: layer decay applies if it picks a training backbone
        with pytest.raises(TlcliError, match="no effect with strategy=extend_freeze"):
            check_config(cfg)
    else:
        check_config(cfg)


class _Phases(L.Callback):
    """What each epoch trained with, by epoch: backbone state and head weight at its end, the backbone's and its
    BatchNorms' mode during its batches, every group's LR factor, whether the backbone has optimizer state."""

    def __init__(self) -> None:
        self.ends: dict[int, dict] = {}
        self.modes: dict[int, set[bool]] = {}
        self.lrs: dict[int, list[float]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        bns = [m for m in pl_module.net.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        modes = self.modes.setdefault(trainer.current_epoch, set())
        modes |= {pl_module.net.backbone.training, *(m.training for m in bns)}
        groups = trainer.optimizers[0].param_groups
        self.lrs[trainer.current_epoch] = [g["lr"] / g["initial_lr"] for g in groups]

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        optimizer = trainer.optimizers[0]
        self.ends[trainer.current_epoch] = {
            "backbone": {k: v.clone() for k, v in pl_module.net.backbone.state_dict().items()},
            "head": pl_module.net.head.weight.detach().clone(),
            "backbone_has_optimizer_state": any(optimizer.state[p] for p in pl_module.net.backbone.parameters()),
        }


def _fit_lp_ft(optim_name: str, freeze_epochs: int = 2, max_epochs: int = 4, callbacks=(), ckpt=None):
    """A real Trainer fit of test_resnet (BatchNorm throughout) with strategy.freeze_epochs' callback."""
    from torch.utils.data import DataLoader, TensorDataset

    from tl_cli.transfer.callbacks import FreezeBackboneEpochs

    torch.manual_seed(0)
    net = TransferNet(timm.create_model("test_resnet", num_classes=0), 3)
    source = {k: v.clone() for k, v in net.backbone.state_dict().items()}
    optim = {**OPTIM, "name": optim_name, "scheduler": "cosine", "layer_decay": DECAY}
    module = TransferModule(net, 3, optim, backbone_lr_mult=MULT)
    phases = _Phases()
    trainer = L.Trainer(
        max_epochs=max_epochs, callbacks=[FreezeBackboneEpochs(freeze_epochs), phases, *callbacks], accelerator="cpu",
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0,
    )  # fmt: skip
    data = TensorDataset(torch.randn(48, 3, 32, 32), torch.arange(48) % 3)
    trainer.fit(module, DataLoader(data, batch_size=8, shuffle=True), ckpt_path=ckpt)
    return source, phases, trainer


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("optim_name", ["adamw", "sgd"])
def test_freeze_epochs_keeps_the_backbone_and_its_batchnorm_statistics_bit_identical_then_trains_it(
    optim_name: str,
) -> None:
    source, phases, trainer = _fit_lp_ft(optim_name)
    frozen, trained = [phases.ends[e] for e in (0, 1)], [phases.ends[e] for e in (2, 3)]
    # phase 1: weights and BatchNorm running statistics exactly the source's, eval mode, no optimizer state
    # (no gradient: the optimizer skipped them, weight decay included)
    assert all(_same(end["backbone"], source) for end in frozen)
    assert [phases.modes[e] for e in range(4)] == [{False}, {False}, {True}, {True}]
    assert not any(end["backbone_has_optimizer_state"] for end in frozen)
    # phase 2: it trains (a parameter may keep a zero gradient: timm zero-inits each block's last BatchNorm scale)
    assert all(end["backbone_has_optimizer_state"] for end in trained)
    changed = {k for k, v in trained[0]["backbone"].items() if not torch.equal(v, source[k])}
    statistics = {k for k in source if k.endswith(("running_mean", "running_var", "num_batches_tracked"))}
    assert statistics and statistics <= changed
    params = source.keys() - statistics
    assert "conv1.0.weight" in changed and len(changed & params) > len(params) / 2
    assert not _same(trained[1]["backbone"], trained[0]["backbone"])
    # the head trains throughout
    heads = [phases.ends[e]["head"] for e in range(4)]
    assert all(not torch.equal(a, b) for a, b in zip(heads, heads[1:], strict=False))
    # one cosine schedule over every group by epoch: at unfreezing the backbone trains at the LR plain finetune
    # has at that epoch (initial_lr: lr x backbone_lr_mult x its layer-decay scale)
    for epoch, factors in phases.lrs.items():
        assert factors == pytest.approx([0.5 * (1 + math.cos(math.pi * epoch / 4))] * len(factors))
    groups = trainer.optimizers[0].param_groups
    assert {g["initial_lr"] for g in groups if g["name"].startswith("head")} == {LR}
    assert max(g["initial_lr"] for g in groups if g["name"].startswith("backbone")) == pytest.approx(LR * MULT)


class _StopMidEpoch(L.Callback):
    """Save a checkpoint after batch 2 of epoch 0 and stop, as tlcli's Ctrl-C does."""

    def __init__(self, path) -> None:
        self.path = path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.current_epoch == 0 and batch_idx == 2:
            trainer.save_checkpoint(self.path)
            raise RuntimeError("stopped mid-epoch")


def test_a_resume_in_the_middle_of_a_frozen_epoch_keeps_the_backbone_frozen(tmp_path) -> None:
    # a mid-epoch restart gets no on_train_epoch_start: the phase must be set at the start of fit as well
    ckpt = tmp_path / "mid.ckpt"
    with pytest.raises(RuntimeError, match="stopped mid-epoch"):
        _fit_lp_ft("adamw", callbacks=[_StopMidEpoch(ckpt)])
    source, phases, _ = _fit_lp_ft("adamw", ckpt=str(ckpt))
    assert phases.modes[0] == phases.modes[1] == {False}  # the rest of epoch 0 ...
    assert _same(phases.ends[0]["backbone"], source) and _same(phases.ends[1]["backbone"], source)
    assert not _same(phases.ends[2]["backbone"], source)  # ... and epoch 1 frozen, epoch 2 trains


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["strategy=finetune", "strategy.freeze_epochs=2"], None),
        (["strategy=extend_finetune", "strategy.freeze_epochs=9", "trainer.max_epochs=10"], None),
        (["strategy=finetune", "strategy.freeze_epochs=-1"], ">= 0"),
        (["strategy=freeze", "strategy.freeze_epochs=1"], "not strategy=freeze"),
        (["strategy=extend_freeze", "strategy.freeze_epochs=1"], "not strategy=extend_freeze"),
        (["strategy=scratch", "strategy.freeze_epochs=1"], "not strategy=scratch"),
        (["strategy=auto", "strategy.freeze_epochs=1"], "strategy=auto trains its pick with that strategy's preset"),
        (["strategy=finetune", "strategy.freeze_epochs=10"], "below trainer.max_epochs=10"),
        (["strategy=finetune", "strategy.freeze_epochs=1", "trainer=ddp"], "ddp_find_unused_parameters_true"),
        (["strategy=finetune", "strategy.freeze_epochs=1", "trainer.strategy=ddp_find_unused_parameters_true"], None),
    ],
)
def test_freeze_epochs_values(overrides: list[str], message: str | None) -> None:
    from tests.conftest import compose
    from tl_cli.config.checks import check_config

    cfg = compose(overrides)
    if message is None:
        check_config(cfg)
    else:
        with pytest.raises(TlcliError, match=message.replace("(", r"\(")):
            check_config(cfg)
