"""Strategies on real Lightning training steps: what is frozen stays bit-for-bit unchanged."""

from __future__ import annotations

import lightning as L
import pytest
import torch
import yaml

from tests.conftest import compose
from tl_cli.config.paths import config_dir
from tl_cli.errors import TlcliError
from tl_cli.run.training import build_job as build
from tl_cli.transfer.strategies import STRATEGIES, check_extension, get_strategy, transfer_strategy


def fit_steps(overrides: list[str], steps: int = 4):
    """Build the job exactly as `tlcli train` does, then run `steps` real optimizer steps."""
    cfg = compose(["experiment=smoke", "data.augment=false", "optim.lr=0.05", *overrides])
    job = build(cfg)
    before = {k: v.clone() for k, v in job.net.state_dict().items()}
    trainer = L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=1,
        limit_val_batches=1,
        val_check_interval=2,
    )
    job.module.train()  # a generic .train() (older Lightning, user code) must not unfreeze BatchNorm
    trainer.fit(job.module, datamodule=job.datamodule)
    return job, before, trainer


def changed(before: dict, after: dict, prefix: str) -> list[str]:
    return [k for k in before if k.startswith(prefix) and not torch.equal(before[k], after[k])]


@pytest.mark.parametrize("backbone", ["test_resnet", "test_vit"])
@pytest.mark.parametrize("strategy", ["freeze", "extend_freeze"])
def test_frozen_backbone_is_bit_for_bit_unchanged(strategy: str, backbone: str) -> None:
    job, before, trainer = fit_steps([f"strategy={strategy}", f"model.backbone={backbone}"])
    after = job.net.state_dict()
    assert changed(before, after, "backbone.") == []  # weights AND BatchNorm running stats / counters
    if backbone == "test_resnet":
        assert any("running_mean" in k for k in before if k.startswith("backbone."))
    assert changed(before, after, "head.")
    if strategy == "extend_freeze":
        assert changed(before, after, "extension.")
    # the optimizer holds exactly the trainable parameters
    in_optimizer = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    trainable = {id(p) for p in job.net.parameters() if p.requires_grad}
    assert in_optimizer == trainable
    assert not any(id(p) in in_optimizer for p in job.net.backbone.parameters())
    assert job.net.param_counts()["trainable"] == sum(p.numel() for p in job.net.parameters() if p.requires_grad)


@pytest.mark.parametrize("strategy", ["finetune", "extend_finetune", "scratch"])
def test_finetune_strategies_train_everything(strategy: str) -> None:
    job, before, trainer = fit_steps([f"strategy={strategy}"])
    after = job.net.state_dict()
    assert changed(before, after, "backbone.")
    assert any("running_mean" in k for k in changed(before, after, "backbone."))
    assert changed(before, after, "head.")
    assert job.net.param_counts()["frozen"] == 0
    lrs = {g["name"].split("_")[0]: g["lr"] for g in trainer.optimizers[0].param_groups}
    mult = job.module.backbone_lr_mult
    assert lrs["backbone"] == pytest.approx(lrs["head"] * mult)


def test_backbone_lr_multiplier_is_configurable() -> None:
    job, _, trainer = fit_steps(["strategy=finetune", "strategy.backbone_lr_mult=0.25", "optim.scheduler=constant"], 1)
    groups = {g["name"]: g for g in trainer.optimizers[0].param_groups}
    assert groups["backbone"]["lr"] == pytest.approx(0.05 * 0.25)
    assert groups["head"]["lr"] == pytest.approx(0.05)
    assert groups["backbone_no_wd"]["weight_decay"] == 0.0  # timm keeps decay off norms and biases


def test_registry_and_extension_rules() -> None:
    assert set(STRATEGIES) == {"freeze", "finetune", "extend_freeze", "extend_finetune", "scratch"}
    with pytest.raises(TlcliError, match="did you mean 'freeze'"):
        get_strategy("frezze")
    with pytest.raises(TlcliError, match="extend_freeze"):
        check_extension(STRATEGIES["freeze"], [64])
    with pytest.raises(TlcliError, match="hidden_dims is empty"):
        check_extension(STRATEGIES["extend_finetune"], [])
    check_extension(STRATEGIES["scratch"], [64])


def test_presets_match_the_registry() -> None:
    """configs/strategy/<name>.yaml (auto.yaml aside) exist exactly for STRATEGIES, and each preset's extension
    obeys its strategy's rule; frozen strategies set no backbone_lr_mult (nothing of the backbone trains)."""
    presets = {p.stem: yaml.safe_load(p.read_text()) for p in (config_dir() / "strategy").glob("*.yaml")}
    assert set(presets) - {"auto"} == set(STRATEGIES)
    for name, preset in presets.items():
        assert preset["name"] == name
        if name == "auto":
            continue
        strategy = STRATEGIES[name]
        hidden_dims = preset["extension"]["hidden_dims"]
        check_extension(strategy, hidden_dims)  # raises where they disagree
        assert bool(hidden_dims) == (strategy.extension == "required"), name  # optional: scratch, kept plain
        assert ("backbone_lr_mult" in preset) == strategy.train_backbone, name


def test_the_transfer_table_is_derived_from_the_registry() -> None:
    """strategy=auto's table (tl_cli/transfer/auto.py) picks by properties: data size -> train the backbone,
    a dissimilar
    task -> new hidden layers."""
    from tl_cli.transfer.auto import TABLE

    assert transfer_strategy(train_backbone=False, extend=False).name == "freeze"
    assert transfer_strategy(train_backbone=True, extend=False).name == "finetune"
    assert transfer_strategy(train_backbone=False, extend=True).name == "extend_freeze"
    assert transfer_strategy(train_backbone=True, extend=True).name == "extend_finetune"
    for (large, similar), name in TABLE.items():
        strategy = STRATEGIES[name]
        assert strategy.use_source_weights and strategy.train_backbone == large
        assert (strategy.extension == "required") == (not similar)


def test_scratch_ignores_source_weights(tmp_path) -> None:
    job, _, _ = fit_steps(["strategy=scratch", "model=embedded"], steps=1)
    assert job.source == "random init"
