"""Checks of a composed train config that its schema's types cannot express, and the restricted
instantiation of the logger/callbacks groups."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from tl_cli import hardware
from tl_cli.config.keys import trainer_arguments
from tl_cli.config.strategies import get_strategy, is_auto
from tl_cli.errors import TlcliError, choose_from
from tl_cli.extras import DATA_SOURCES, require

# `_target_` is honoured only for these packages, and only in the logger/callbacks groups.
ALLOWED_TARGETS = ("lightning.", "pytorch_lightning.", "tl_cli.")
SAMPLERS = ("random", "balanced")
CLIP_ALGORITHMS = ("norm", "value")  # trainer.gradient_clip_algorithm: Lightning's
# what validation logs (tl_cli/transfer/module.py EVAL_METRICS, and the loss), with the mode of its best value
MONITORS = {"val/acc": "max", "val/balanced_acc": "max", "val/f1_macro": "max", "val/loss": "min"}


def check_config(cfg: DictConfig) -> None:
    """Range checks the schema's types cannot express; trainer keys against lightning.Trainer itself."""
    for key in ("data.batch_size", "optim.lr"):
        value = OmegaConf.select(cfg, key)
        if value is None or value <= 0:
            raise TlcliError(f"{key}={value} must be positive")
    if cfg.data.samples_per_class is not None and cfg.data.samples_per_class <= 0:
        raise TlcliError(f"data.samples_per_class={cfg.data.samples_per_class} must be positive (or null for all)")
    hardware.resolve_workers(cfg.data.num_workers)  # a bad value fails here, before any backbone is built
    if (cfg.data.min_samples_per_epoch or 0) < 0:
        raise TlcliError(f"data.min_samples_per_epoch={cfg.data.min_samples_per_epoch} must be positive (or null)")
    if (cfg.optim.get("min_steps") or 0) < 0:
        raise TlcliError(f"optim.min_steps={cfg.optim.min_steps} must be >= 0 (0 = no minimum)")
    metric = str(cfg.get("optimized_metric", "val/acc"))
    if metric.startswith("test/") and not cfg.get("test", True):
        raise TlcliError(f"optimized_metric={metric} needs the test pass; set test=true, or optimize a val/ metric")
    check_finetune_options(cfg)
    if is_auto(cfg):
        check_auto(cfg)
    else:
        check_freeze_epochs(cfg)
    check_imbalance_options(cfg.data)
    if cfg.data.name in DATA_SOURCES:  # before any backbone or data is built
        require(DATA_SOURCES[cfg.data.name])
    check_streaming(cfg)
    check_monitors(cfg.callbacks)
    check_optimizer(cfg.optim.name)
    check_data_source(cfg.data)
    check_trainer_keys(cfg.trainer)
    check_step_options(cfg.trainer)


def check_optimizer(name: str) -> None:
    """optim.name is one of timm's optimizers (timm.optim.create_optimizer_v2's names, `lookahead_` prefix
    allowed), checked here rather than when the Trainer first configures it, after the model is built."""
    from timm.optim import get_optimizer_info, list_optimizers

    parts = str(name).lower().split("_")
    if len(parts) > 2 or (len(parts) == 2 and parts[0] != "lookahead"):
        raise choose_from("optim.name", name, list_optimizers())
    try:
        get_optimizer_info(parts[-1])
    except ValueError:
        raise choose_from("optim.name", name, list_optimizers()) from None


def check_data_source(data: DictConfig) -> None:
    """The dataset's name is registered and a given data.root exists: the first checks its builder would make,
    made before any backbone or data is built (the builder checks the root's contents)."""
    from tl_cli.data.datasets import DATASETS

    if data.name not in DATASETS:
        raise choose_from("dataset", data.name, DATASETS)
    root = data.get("root")
    if root and not Path(str(root)).expanduser().exists():
        raise TlcliError(f"data.root '{root}' does not exist; point data.root at the dataset's folder")


def check_finetune_options(cfg: DictConfig) -> None:
    """optim.layer_decay, optim.ema_decay, data.mixup and data.cutmix (`.get`: a resumed run's config may
    predate them)."""
    layer_decay, ema_decay = cfg.optim.get("layer_decay"), cfg.optim.get("ema_decay")
    if layer_decay is not None and not 0 < layer_decay <= 1:
        raise TlcliError(f"optim.layer_decay={layer_decay} must be in (0, 1], e.g. 0.75 (null = off)")
    # auto decides later; layer decay then applies if it picks a strategy that trains the backbone
    if layer_decay is not None and not is_auto(cfg) and not get_strategy(cfg.strategy.name).train_backbone:
        raise TlcliError(
            f"optim.layer_decay={layer_decay} has no effect with strategy={cfg.strategy.name}: the backbone is frozen; "
            f"use strategy=finetune or extend_finetune, or optim.layer_decay=null"
        )
    if ema_decay is not None and not 0 < ema_decay < 1:
        raise TlcliError(f"optim.ema_decay={ema_decay} must be in (0, 1), e.g. 0.999 (null = off)")
    for key in ("mixup", "cutmix"):
        alpha = cfg.data.get(key) or 0.0
        if alpha < 0:
            raise TlcliError(f"data.{key}={alpha} must be >= 0: the Beta(alpha, alpha) mixing parameter, 0 = off")


def check_auto(cfg: DictConfig) -> None:
    """What strategy=auto cannot run with, refused before it measures anything (its settings' ranges:
    tl_cli/transfer/auto.py's check_settings)."""
    from tl_cli.data.stream import STREAMING

    epochs = cfg.strategy.get("freeze_epochs") or 0
    if epochs:
        raise TlcliError(
            f"strategy.freeze_epochs={epochs} applies to strategy=finetune or extend_finetune; strategy=auto trains "
            f"its pick with that strategy's preset; use strategy.freeze_epochs=0, or pick the strategy yourself"
        )
    if cfg.data.name in STREAMING:
        raise TlcliError(
            f"data={cfg.data.name}: strategy=auto subsamples indexed splits, not a stream; pick a strategy, or use "
            f"data=csv or data=hf"
        )


def check_freeze_epochs(cfg: DictConfig) -> None:
    """strategy.freeze_epochs (LP-FT): >= 0, on the strategies that train a source backbone, and fewer than
    trainer.max_epochs, so the backbone does train (`.get`: a resumed run's config may predate the key)."""
    epochs = cfg.strategy.get("freeze_epochs") or 0
    if epochs < 0:
        raise TlcliError(f"strategy.freeze_epochs={epochs} must be >= 0 (0 = off)")
    if not epochs:
        return
    name = cfg.strategy.name
    strategy = get_strategy(name)
    if not (strategy.train_backbone and strategy.use_source_weights):
        raise TlcliError(
            f"strategy.freeze_epochs={epochs} applies to strategy=finetune or extend_finetune (new layers first, "
            f"then the source backbone too), not strategy={name}; use one of those, or strategy.freeze_epochs=0"
        )
    max_epochs = cfg.trainer.get("max_epochs")
    if isinstance(max_epochs, int) and 0 <= max_epochs <= epochs:  # -1: no epoch limit
        raise TlcliError(
            f"strategy.freeze_epochs={epochs} must be below trainer.max_epochs={max_epochs}, or the backbone never "
            f"trains; lower it or raise trainer.max_epochs"
        )
    # DDP expects a gradient for every parameter it wrapped; the backbone has none while frozen
    launch = str(cfg.trainer.get("strategy", "auto"))
    if launch.startswith("ddp") and "find_unused_parameters_true" not in launch:
        spawn = "_spawn" if launch.startswith("ddp_spawn") else ""
        raise TlcliError(
            f"strategy.freeze_epochs={epochs} with trainer.strategy={launch}: DDP must expect the frozen backbone's "
            f"missing gradients; set trainer.strategy=ddp{spawn}_find_unused_parameters_true"
        )


def check_imbalance_options(data: DictConfig) -> None:
    """data.sampler and data.class_weights (`.get`: a resumed run's config may predate them)."""
    if data.get("sampler", "random") not in SAMPLERS:
        raise choose_from("data.sampler", data.sampler, SAMPLERS)
    weights = data.get("class_weights")
    if weights is not None and weights != "balanced":
        raise choose_from("data.class_weights", weights, ["balanced", "null"])
    if weights is not None and (data.get("mixup") or data.get("cutmix")):
        raise TlcliError(
            "data.class_weights=balanced does not apply to data.mixup/data.cutmix's soft targets; "
            "use data.sampler=balanced instead, or data.mixup=0 data.cutmix=0"
        )


def check_streaming(cfg: DictConfig) -> None:
    """What cannot work on a stream of shards (data=webdataset), refused before any work."""
    from tl_cli.data.stream import STREAMING, refusals

    if cfg.data.name not in STREAMING:
        return
    why = refusals(cfg.data)
    if why:
        raise TlcliError(f"data={cfg.data.name}: {why}")
    devices, nodes = cfg.trainer.get("devices", 1), cfg.trainer.get("num_nodes", 1)
    if str(cfg.trainer.get("strategy", "auto")).startswith("ddp") and isinstance(devices, int) and cfg.data.train:
        from tl_cli.data.stream import ShardSplit, check_shards

        check_shards(ShardSplit(str(cfg.data.train), 0), devices * (nodes if isinstance(nodes, int) else 1))


def check_monitors(callbacks: DictConfig | None) -> None:
    """A ModelCheckpoint's or EarlyStopping's `monitor` is a metric validation logs, with the mode that
    selects its best value: a typo would otherwise fail only after the first epoch, a wrong mode never."""
    for name, node in (callbacks or {}).items():
        if not isinstance(node, DictConfig) or node.get("monitor") is None:
            continue
        monitor = node.monitor
        if monitor not in MONITORS:
            raise choose_from(f"callbacks.{name}.monitor", monitor, MONITORS)
        mode = node.get("mode", "min")  # Lightning's default
        if mode != MONITORS[monitor]:
            raise TlcliError(
                f"callbacks.{name}.mode={mode} would select the worst {monitor}; "
                f"set callbacks.{name}.mode={MONITORS[monitor]}"
            )


def check_trainer_keys(trainer: DictConfig) -> None:
    """Every trainer.* key is a lightning.Trainer argument, and string values fit its annotation."""
    import lightning as L

    hints = typing.get_type_hints(L.Trainer.__init__)
    valid = trainer_arguments()
    for key, value in OmegaConf.to_container(trainer, resolve=False).items():
        if key not in valid:
            raise choose_from("trainer key", key, valid)
        # interpolations resolve later; precision=auto is tlcli's own value (tl_cli/hardware.py)
        unchecked = isinstance(value, str) and value.startswith("${") or (key, value) == ("precision", "auto")
        if isinstance(value, str) and not unchecked and not _accepts_string(hints.get(key, str), value):
            choices = _string_choices(hints[key])
            if key == "precision":
                choices.append("auto")
            if choices:
                raise choose_from(f"trainer.{key}", value, choices, limit=len(choices))
            raise TlcliError(f"trainer.{key}={value} has the wrong type; lightning.Trainer expects {hints[key]}")


def check_step_options(trainer: DictConfig) -> None:
    """trainer.accumulate_grad_batches and trainer.gradient_clip_val/_algorithm, which Lightning would take as
    they are (a negative clip value flips the gradients) or refuse only with a traceback."""
    accumulate = trainer.get("accumulate_grad_batches", 1)
    if isinstance(accumulate, bool) or not isinstance(accumulate, int) or accumulate < 1:
        raise TlcliError(
            f"trainer.accumulate_grad_batches={accumulate} must be an integer >= 1 (1: an optimizer step per batch)"
        )
    clip = trainer.get("gradient_clip_val")
    if clip is not None and (isinstance(clip, bool) or not isinstance(clip, int | float) or clip < 0):
        raise TlcliError(f"trainer.gradient_clip_val={clip} must be >= 0, e.g. 1.0 (null or 0: no clipping)")
    algorithm = trainer.get("gradient_clip_algorithm")
    if algorithm is not None and algorithm not in CLIP_ALGORITHMS:
        raise choose_from("trainer.gradient_clip_algorithm", algorithm, CLIP_ALGORITHMS)


def _accepts_string(hint: Any, value: str) -> bool:
    """Whether a Trainer argument annotated `hint` takes the string `value` (str, or one of its Literals)."""
    if hint is str or hint is Any:
        return True
    if typing.get_origin(hint) is typing.Literal:
        return value in typing.get_args(hint)
    return any(_accepts_string(arg, value) for arg in typing.get_args(hint))


def _string_choices(hint: Any) -> list[str]:
    """The string Literals anywhere in a Trainer argument's annotation (precision: '16-mixed', 'bf16-mixed', ...)."""
    if typing.get_origin(hint) is typing.Literal:
        return [str(arg) for arg in typing.get_args(hint) if isinstance(arg, str)]
    return [choice for arg in typing.get_args(hint) for choice in _string_choices(arg)]


def instantiate_group(group: DictConfig | None, what: str) -> list[Any]:
    """Instantiate each `_target_` entry of the logger/callbacks group (restricted packages)."""
    from hydra.utils import instantiate

    objects = []
    for name, node in (group or {}).items():
        if node is None:
            continue
        target = node.get("_target_", "") if isinstance(node, DictConfig) else ""
        if not str(target).startswith(ALLOWED_TARGETS):
            raise TlcliError(f"{what}.{name}._target_='{target}' is not allowed; use a lightning.* class")
        objects.append(instantiate(node))
    return objects
