"""Structured-config schema for `tlcli train`: typos and wrong types fail at composition time.

Groups that hand their settings to third-party objects (trainer, logger, callbacks) stay untyped;
tlcli checks trainer keys against `lightning.Trainer` itself before building it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class ExtensionConfig:
    """New hidden layers between the backbone and the head (empty = no extension)."""

    hidden_dims: list[int] = field(default_factory=list)
    activation: str = "gelu"  # any timm activation name (relu, gelu, silu, ...)
    norm: str | None = "layernorm"  # layernorm | batchnorm | null
    dropout: float = 0.0


@dataclass
class AutoConfig:
    """strategy=auto: the race (tl_cli/run/race.py) or the rule (tl_cli/transfer/auto.py); defaults and their
    reasons: README."""

    method: str = "race"  # race: measure the strategies on val | rule: the classic table on a linear probe
    # race: trainable candidates first train this share of trainer.max_epochs (race v3.1: chosen on val curves only,
    # docs/study/auto_v31/replay.md, as are confirm_fraction, frozen_at, tie_se and prior)
    race_fraction: float = 0.1
    scratch_min_per_class: int = 1  # race: scratch races only when the smallest train class has this many
    scratch_lr_mult: float = 1.0  # race: scratch trains at optim.lr x this
    min_val_per_class: int = 5  # race: fewer val images in the smallest class -> no race, the prior
    prior: str = "finetune"  # race: the choice for tiny val sets, and the first pick among val ties
    tie_se: float = 2.0  # race: within this many standard errors of the best val acc counts as a tie
    # race: a frozen candidate's val acc over its first race epochs (race, as the trainable ones) or all (full)
    frozen_at: str = "race"
    # race: a frozen pick gets a second look: the best trainable candidate trains on to this share of the epochs
    # and the pick is made again (0: none)
    confirm_fraction: float = 0.2
    large_min_per_class: int = 100  # large data: the smallest class has at least this many train samples
    min_gain: float = 0.02  # probe accuracy of source minus random features below this: scratch
    similar_min_score: float = 0.8  # similar task: chance-corrected probe accuracy of source features >= this
    probe_max_train: int = 2000  # the probe uses at most this many train samples (stratified, seeded) ...
    probe_max_val: int = 1000  # ... and val samples


@dataclass
class StrategyConfig:
    name: str = MISSING  # freeze | finetune | extend_freeze | extend_finetune | scratch | auto
    backbone_lr_mult: float = 1.0  # backbone LR = optim.lr * this (finetune strategies)
    # LP-FT (finetune, extend_finetune): the first freeze_epochs epochs train the new layers alone, the backbone
    # frozen as strategy=freeze freezes it; then everything trains, the backbone at its scheduled LR. 0 = off
    freeze_epochs: int = 0
    extension: ExtensionConfig = field(default_factory=ExtensionConfig)
    auto: AutoConfig | None = None  # set by strategy=auto only (configs/strategy/auto.yaml)


@dataclass
class ModelConfig:
    backbone: str = MISSING  # any timm model name
    weights: str | None = None  # hub | path (.safetensors/.pth/.ckpt) | tlcli run dir | null
    in_chans: int = 3
    img_size: int | None = None  # input resolution; null = the backbone's pretrained default
    channels_last: str = "auto"  # auto | true | false (auto: on with 16-bit precision)
    compile: bool = False  # torch.compile the network for training steps (val, test and saved weights: eager)
    drop_rate: float = 0.0
    drop_path_rate: float | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)  # extra timm.create_model kwargs


@dataclass
class SplitSizes:
    """data=webdataset: samples per split, known beforehand (null: counted at start)."""

    train: int | None = None
    val: int | None = None
    test: int | None = None


@dataclass
class DataConfig:
    name: str = MISSING  # synthetic | digits | fashion_mnist | image_folder | csv | hf | webdataset | custom
    root: str | None = None  # image_folder: the folder; csv: base of relative paths (else each CSV's folder)
    # csv: CSV files; webdataset: tar shards (paths or URLs, brace patterns); val/test optional (held out of train)
    train: str | None = None
    val: str | None = None
    test: str | None = None
    path_column: str = "path"  # csv: the column of image paths
    image_column: str = "image"  # hf: the Image column (else the table's only Image feature)
    label_column: str = "label"  # csv, hf: the label column (hf: else the table's only ClassLabel feature)
    dataset: str | None = None  # hf: a Hub id (from the local cache offline), a save_to_disk folder or a parquet folder
    shuffle_buffer: int = 1000  # webdataset: samples shuffled in a buffer of this many
    # webdataset: the sizes of train/val/test and the class names; with both set, the shards are not counted at start
    split_sizes: SplitSizes = field(default_factory=lambda: SplitSizes())
    class_names: list[str] | None = None
    factory: str | None = None  # custom: module:function returning RawSplits (tl_cli/data/custom.py)
    batch_size: int = 64
    eval_batch_size: int | None = None
    num_workers: str = "auto"  # auto | N: DataLoader worker processes (auto: tl_cli/hardware.py resolve_workers)
    samples_per_class: int | None = None  # seeded, class-balanced few-shot train subset
    min_samples_per_epoch: int | None = None  # a smaller train set is reshuffled and repeated up to this per epoch
    classes: list[Any] | None = None  # keep only these classes (names or indices)
    val_fraction: float = 0.1  # held out of train when there is no val split
    test_fraction: float = 0.2  # held out when the dataset has no test split
    augment: bool = True  # false: train uses the deterministic eval transform
    aug: dict[str, Any] = field(default_factory=dict)  # timm create_transform(is_training=True) kwargs
    crop_pct: float | None = None  # eval center-crop fraction; null = backbone default
    mean: list[float] | None = None
    std: list[float] | None = None
    interpolation: str | None = None
    cache_features: str = "auto"  # auto | true | false: frozen-backbone features computed once
    feature_cache_dir: str | None = None  # persist the feature cache here (memory-mapped); null = memory only
    # timm Mixup/CutMix on train batches (Beta(alpha, alpha) mixing; 0 = off): soft targets, feature cache off
    mixup: float = 0.0  # mixup alpha, e.g. 0.8
    cutmix: float = 0.0  # cutmix alpha, e.g. 1.0; with both on, each batch uses one of the two (50/50)
    # class imbalance: random | balanced (a WeightedRandomSampler: every class equally likely per draw, with
    # replacement, the same number of draws per epoch)
    sampler: str = "random"
    # null | balanced: the train loss weights class c by n_samples / (n_classes x count_c) of the train split
    class_weights: str | None = None
    # synthetic data only
    num_classes: int = 4
    image_size: int = 32
    samples_per_split: list[int] = field(default_factory=lambda: [32, 8, 8])  # per class: train, val, test


@dataclass
class OptimConfig:
    name: str = "adamw"  # any timm optimizer name
    lr: float = 1e-2
    weight_decay: float = 0.05
    momentum: float = 0.9
    scheduler: str = "cosine"  # cosine | constant
    warmup_epochs: int = 0
    label_smoothing: float = 0.0
    # at least this many optimizer steps per run: a small train set is reshuffled and repeated within each
    # epoch until max_epochs x steps per epoch reaches it (0 = off); few-shot runs otherwise stop at ~30 steps
    min_steps: int = 300
    # layer-wise LR decay (timm's param_groups_layer_decay, layers from the backbone's group_matcher): backbone
    # layer i trains at lr x strategy.backbone_lr_mult x layer_decay^(last - i); in (0, 1], null = off.
    # Backbone-training strategies only (finetune, extend_finetune, scratch).
    layer_decay: float | None = None
    # EMA of the weights, updated every optimizer step (lerp as timm's ModelEmaV3); val, test, the checkpoints'
    # state_dict and model.safetensors use the average; in (0, 1), e.g. 0.999; null = off
    ema_decay: float | None = None
    # timm's EMA decay warmup (ModelEmaV3 use_warmup): decay 1 - (1 + step)^(-2/3) until it reaches ema_decay
    ema_warmup: bool = True
    # torch's fused optimizer kernel where the optimizer (adam, adamw, sgd) and device (CPU, CUDA) have one
    fused: bool = True


@dataclass
class TrainConfig:
    task_name: str = "train"
    seed: int = 42
    resume: str | None = None  # a run dir: continue it (set by `tlcli train resume=<run dir>`)
    optimized_metric: str = "val/acc"  # what `train` returns: the value sweepers (hparams_search=optuna) optimise
    test: bool = True  # test the best-val checkpoint after fit; false skips it (summary.json: val metrics only)
    calibrate: bool = True  # fit a softmax temperature on val after fit (calibration.json); predict/export use it
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: dict[str, Any] = field(default_factory=dict)
    logger: dict[str, Any] | None = field(default_factory=dict)
    callbacks: dict[str, Any] | None = field(default_factory=dict)
    paths: dict[str, Any] = field(default_factory=dict)


def register_schemas() -> None:
    """Make the schema available to `defaults: [train_schema, ...]` in configs/train.yaml."""
    ConfigStore.instance().store(name="train_schema", node=TrainConfig)
