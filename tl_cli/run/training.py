"""The named steps of one training run: build the job, make the Trainer, cache features, fit and test, write
the run directory. `tlcli train` chains them; strategy=auto and the benchmarks reuse them instead of copying."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from omegaconf import DictConfig, OmegaConf

from tl_cli import hardware
from tl_cli.config.checks import check_config, instantiate_group
from tl_cli.data.datamodule import TransferDataModule, make_datamodule, resolve_data_config
from tl_cli.data.features import cache_decision, cached_feature_splits
from tl_cli.data.stream import STREAMING
from tl_cli.run.after_fit import see_run
from tl_cli.run.checkpoint_io import DirectCheckpointIO
from tl_cli.run.resume import mark_started
from tl_cli.rundir import MODEL, RunDir, Summary
from tl_cli.transfer.callbacks import FreezeBackboneEpochs, GracefulInterrupt, RngState, Throughput, WeightEma
from tl_cli.transfer.network import TransferNet
from tl_cli.transfer.strategies import Strategy, apply_strategy, check_extension, get_strategy
from tl_cli.transfer.weights import create_backbone, save_network

log = logging.getLogger(__name__)


@dataclass
class TransferJob:
    """Everything one training run needs, built from the config (no Trainer, no run dir)."""

    strategy: Strategy
    source: str
    net: TransferNet
    module: Any  # TransferModule
    datamodule: TransferDataModule
    auto: dict[str, Any] | None = None  # strategy=auto: what was measured and chosen (set by tl_cli/run/auto.py)


@dataclass
class FitResult:
    metrics: dict[str, float]  # val/* of the selected (best-val) epoch and test/*
    best_checkpoint: str  # "" without validation
    train_seconds: float


@dataclass
class Fitted:
    """A job fitted in its run dir, ready to be tested and written (fit_run)."""

    job: TransferJob
    trainer: L.Trainer
    result: FitResult
    facts: dict[str, Any]  # run facts for summary.json: throughput, cache, compile, config_sha


def backbone_kwargs(cfg: DictConfig) -> dict[str, Any]:
    """timm.create_model arguments of the backbone, besides its name and weights. `img_size` always goes along:
    create_backbone passes it to timm where the parameters depend on it, and checks the model runs at it."""
    kwargs = dict(in_chans=cfg.model.in_chans, drop_rate=cfg.model.drop_rate, **cfg.model.kwargs)
    if cfg.model.drop_path_rate is not None:
        kwargs["drop_path_rate"] = cfg.model.drop_path_rate
    if cfg.model.img_size:
        kwargs["img_size"] = cfg.model.img_size
    return kwargs


def build_job(cfg: DictConfig) -> TransferJob:
    """Strategy, backbone with source weights, data, network and LightningModule, from one config."""
    check_config(cfg)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    strategy = get_strategy(cfg.strategy.name)
    ext = cfg.strategy.extension
    check_extension(strategy, list(ext.hidden_dims))
    backbone, source = create_backbone(cfg.model.backbone, _source_weights(cfg, strategy), **backbone_kwargs(cfg))
    data_config = resolve_data_config(backbone, cfg.data, cfg.model.in_chans, cfg.model.img_size)
    datamodule = make_datamodule(cfg.data, data_config, cfg.seed, cfg.trainer)
    datamodule.min_train_batches = min_train_batches(cfg)
    _log_repeats(datamodule, cfg)
    net = TransferNet(backbone, datamodule.num_classes, list(ext.hidden_dims), ext.activation, ext.norm, ext.dropout)
    apply_strategy(strategy, net)
    params = net.param_counts()
    log.info("strategy=%s backbone=%s weights=%s params=%s", strategy.name, cfg.model.backbone, source, params)
    from tl_cli.transfer.module import TransferModule

    module = TransferModule(
        net,
        datamodule.num_classes,
        dict(cfg.optim),
        cfg.strategy.backbone_lr_mult,
        backbone=cfg.model.backbone,
        config=OmegaConf.to_container(cfg, resolve=False),
        class_weights=_class_weights(cfg, datamodule),
    )
    return TransferJob(strategy, source, net, module, datamodule)


def _class_weights(cfg: DictConfig, datamodule: TransferDataModule) -> list[float] | None:
    """data.class_weights=balanced: the train split's balanced weights, logged (null: an unweighted loss)."""
    if cfg.data.get("class_weights") != "balanced":  # .get: a resumed run's config may predate the key
        return None
    weights = datamodule.balanced_class_weights()
    named = zip(datamodule.classes, weights, strict=True)
    log.info("data.class_weights=balanced (train loss): %s", ", ".join(f"{c} {w:.4g}" for c, w in named))
    return weights


def min_train_batches(cfg: DictConfig) -> int:
    """Batches per epoch that give optim.min_steps optimizer steps over trainer.max_epochs (0: no minimum)."""
    epochs, min_steps = cfg.trainer.get("max_epochs") or 0, cfg.optim.get("min_steps") or 0  # .get: a resumed
    if not min_steps or epochs <= 0:  # run's config may predate the key; it trained without a minimum
        return 0
    return math.ceil(min_steps / epochs) * int(cfg.trainer.get("accumulate_grad_batches") or 1)


def _log_repeats(datamodule: TransferDataModule, cfg: DictConfig) -> None:
    size, epoch = len(datamodule.splits["train"]), datamodule.train_epoch_size(cfg.data.batch_size)
    if epoch > size:
        log.info(
            "train set: %d images, repeated to %d per epoch (optim.min_steps=%d over %d epochs, "
            "data.min_samples_per_epoch=%s)",
            size,
            epoch,
            cfg.optim.get("min_steps"),
            cfg.trainer.max_epochs,
            cfg.data.min_samples_per_epoch,
        )


def _source_weights(cfg: DictConfig, strategy: Strategy) -> str | None:
    """model.weights for the transfer strategies; None (random init) for scratch."""
    if not strategy.use_source_weights:
        if cfg.model.weights:
            log.info("strategy=scratch: ignoring model.weights=%s (random init)", cfg.model.weights)
        return None
    if cfg.model.weights is None:
        log.warning("strategy=%s with model.weights=null: the source network is randomly initialised", strategy.name)
    return cfg.model.weights


def run_callbacks(cfg: DictConfig, out: Path) -> tuple[list[L.Callback], Throughput]:
    """The configured callbacks plus tlcli's own (throughput, RNG state, weight EMA, LP-FT's frozen first epochs,
    graceful Ctrl-C)."""
    throughput = Throughput()
    ema_decay = cfg.optim.get("ema_decay")  # .get: a resumed run's config may predate the key
    # the EMA before GracefulInterrupt: Ctrl-C's last.ckpt is written after this step's EMA update
    ema = [WeightEma(ema_decay, bool(cfg.optim.get("ema_warmup")))] if ema_decay is not None else []
    freeze_epochs = cfg.strategy.get("freeze_epochs") or 0  # strategy=auto refuses it (check_config)
    lp_ft = [FreezeBackboneEpochs(freeze_epochs)] if freeze_epochs else []
    own = [throughput, RngState(), *lp_ft, *ema, GracefulInterrupt(out)]
    callbacks = [*instantiate_group(cfg.callbacks, "callbacks"), *own]
    return callbacks, throughput


def make_trainer(
    trainer_cfg: DictConfig | dict[str, Any],
    channels_last: str | bool,
    callbacks: list[L.Callback],
    loggers: list[Any],
    resuming: bool = False,
) -> tuple[L.Trainer, bool]:
    """A Lightning Trainer from the trainer group, with tlcli's precision rule (tl_cli/hardware.py), saving
    checkpoints through DirectCheckpointIO; returns it and whether inputs go channels_last."""
    args = dict(OmegaConf.to_container(trainer_cfg, resolve=True) if OmegaConf.is_config(trainer_cfg) else trainer_cfg)
    precision, use_channels_last, why = hardware.resolve(
        args.get("precision", "auto"), channels_last, str(args.get("accelerator", "auto"))
    )
    args["precision"] = precision
    # tlcli shards its own samplers across ranks (tl_cli/data/datamodule.py): Lightning's would replace the train
    # sampler, and with it the epoch length that optim.min_steps sets
    args["use_distributed_sampler"] = False
    if resuming:
        args["num_sanity_val_steps"] = 0  # it would consume random numbers the restored RNG must not
    log.info("precision=%s channels_last=%s (%s)", precision, use_channels_last, why)
    trainer = L.Trainer(**args, callbacks=callbacks, logger=loggers or False)
    # Lightning's default IO only: a CheckpointIO in +trainer.plugins, or a strategy's own (XLA's), stays
    if "plugins" not in args and type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
        trainer.strategy.checkpoint_io = DirectCheckpointIO()
    return trainer, use_channels_last


def to_channels_last(job: TransferJob) -> None:
    job.net.to(memory_format=torch.channels_last)
    job.module.channels_last = True


def compile_network(cfg: DictConfig, job: TransferJob, trainer: L.Trainer) -> float | None:
    """model.compile=true: check that torch.compile builds for the training device, then let the training steps
    run the compiled network (tl_cli/transfer/module.py); returns the check's seconds, None when off."""
    if not cfg.model.get("compile"):  # .get: a resumed run's config may predate the key
        return None
    start = time.perf_counter()
    hardware.check_compile(trainer.strategy.root_device.type)
    job.module.compile_net = True
    return time.perf_counter() - start


def compile_seconds(check_seconds: float | None, throughput: Throughput) -> float | None:
    """What model.compile cost, logged: the backend check plus the first training step's extra time (torch.compile
    compiles lazily, in that step's forward and backward). None when off."""
    if check_seconds is None:
        return None
    extra = throughput.first_step_extra()
    log.info(
        "model.compile: %.1f s compiling (backend check %.1f s, first training step %.1f s over the next ones)",
        check_seconds + extra,
        check_seconds,
        extra,
    )
    return round(check_seconds + extra, 3)


def feature_cache_extra(cfg: DictConfig) -> dict[str, Any]:
    """What the feature cache key holds besides the backbone's tensors, the transform and the samples."""
    return {"backbone": cfg.model.backbone, "data": cfg.data.name, "root": cfg.data.root}


def attach_feature_cache(
    cfg: DictConfig, job: TransferJob, trainer: L.Trainer, channels_last: bool, splits: tuple[str, ...] | None = None
) -> bool:
    """For a frozen backbone with deterministic inputs, serve its features computed once (tl_cli/data/features.py);
    `splits`: only these (a fit that never tests needs no test features)."""
    mixing = bool(cfg.data.get("mixup") or cfg.data.get("cutmix"))
    use_cache, why = cache_decision(cfg.data.cache_features, job.strategy.train_backbone, cfg.data.augment, mixing)
    if use_cache and cfg.data.name in STREAMING:  # data.cache_features=true on a stream is refused by check_config
        use_cache, why = False, f"data={cfg.data.name} streams its samples; there is no index to cache features by"
    log.info("feature cache %s: %s", "on" if use_cache else "off", why)
    if not use_cache:
        return False
    device = trainer.strategy.root_device
    features = cached_feature_splits(
        job.net.to(device),
        job.datamodule,
        device,
        trainer.precision_plugin.forward_context,
        cfg.data.feature_cache_dir,
        extra=feature_cache_extra(cfg),
        channels_last=channels_last,
        splits=splits,
    )
    job.datamodule.use_features(features)
    job.module.inputs_are_features = True
    return True


def fit(trainer: L.Trainer, job: TransferJob, resume_from: str | None = None) -> FitResult:
    """Fit; the val metrics are those of the selected (best-val) epoch."""
    start = time.perf_counter()
    trainer.fit(job.module, datamodule=job.datamodule, ckpt_path=resume_from)
    train_seconds = time.perf_counter() - start
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    val_metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    best_score = trainer.checkpoint_callback.best_model_score if best else None
    if best_score is not None:  # the selected epoch's value of the metric it was selected by
        val_metrics[trainer.checkpoint_callback.monitor] = float(best_score)
    return FitResult(val_metrics, best, train_seconds)


def fit_run(cfg: DictConfig, run: RunDir, config_sha: str, resume_from: str | None = None) -> Fitted:
    """Build the job and its Trainer (the configured callbacks and loggers, writing into the run dir) and fit it,
    resuming from a checkpoint when given."""
    job = build_job(cfg)
    callbacks, throughput = run_callbacks(cfg, run.path)
    loggers = instantiate_group(cfg.logger, "logger")
    resuming = resume_from is not None
    trainer, channels_last = make_trainer(cfg.trainer, cfg.model.channels_last, callbacks, loggers, resuming)
    if channels_last:
        to_channels_last(job)
    compile_check = compile_network(cfg, job, trainer)
    splits = None if cfg.get("test", True) else ("train", "val")  # test=false: never extract the test split
    use_cache = attach_feature_cache(cfg, job, trainer, channels_last, splits)
    if resuming:
        log.info("resuming from %s", resume_from)
    if trainer.is_global_zero:
        mark_started(run, config_sha)
    result = fit(trainer, job, resume_from)
    # rank 0 counts its own images; every rank trains as many, in the same time (DDP steps in lockstep)
    images = throughput.images * trainer.world_size
    facts = {
        "train_images_per_second": round(images / throughput.seconds, 2) if throughput.seconds else 0.0,
        "config_sha": config_sha,
        "channels_last": channels_last,
        "feature_cache": use_cache,
        "seconds_to_first_step": round(throughput.first_step_at or 0.0, 3),
        "compile_seconds": compile_seconds(compile_check, throughput),
    }
    return Fitted(job, trainer, result, facts)


def load_best(job: TransferJob, fitted: FitResult) -> None:
    """The selected (best-val) epoch's weights into the module: what is tested and saved as model.safetensors.
    Loaded here (not via trainer.test's ckpt_path) so ddp_spawn's child processes test them too."""
    if fitted.best_checkpoint:
        state = torch.load(fitted.best_checkpoint, map_location="cpu", weights_only=True)["state_dict"]
        job.module.load_state_dict(state)


def score_on_test(trainer: L.Trainer, job: TransferJob, fitted: FitResult) -> FitResult:
    """Test the module's weights (load_best's) on the test split."""
    test_results = trainer.test(job.module, datamodule=job.datamodule, verbose=True)
    metrics = {**fitted.metrics, **{k: float(v) for k, v in test_results[0].items()}}
    return FitResult(metrics, fitted.best_checkpoint, fitted.train_seconds)


def write_run(
    run: RunDir, cfg: DictConfig, job: TransferJob, trainer: L.Trainer, result: FitResult, extra: dict[str, Any]
) -> Summary:
    """labels.json, model.safetensors (the tested weights), summary.json, curves.png and calibration.json; `extra`
    adds run facts (throughput, precision, cache, config_sha)."""
    dm = job.datamodule
    run.write_labels(dm.classes)
    meta = {"format": "tlcli", "backbone": cfg.model.backbone, "in_chans": cfg.model.in_chans}
    save_network(job.net, run / MODEL, {**meta, "num_classes": dm.num_classes, "strategy": job.strategy.name})
    best = result.best_checkpoint
    summary = Summary(
        strategy=cfg.strategy.name,
        backbone=cfg.model.backbone,
        weights=job.source,
        dataset=cfg.data.name,
        samples_per_class=cfg.data.samples_per_class,
        lr=cfg.optim.lr,
        num_classes=dm.num_classes,
        split_sizes={s: len(d) for s, d in dm.splits.items()},
        split_notes=dm.notes,
        params=job.net.param_counts(),
        metrics=result.metrics,
        epochs=trainer.current_epoch,
        train_seconds=round(result.train_seconds, 3),
        seed=cfg.seed,
        data_config={k: list(v) if isinstance(v, tuple) else v for k, v in dm.data_config.items()},
        best_checkpoint=run.relative(best) if best else None,
        device=str(trainer.strategy.root_device),
        precision=str(trainer.precision),
        strategy_auto=job.auto,
        unreadable_files=dm.unreadable_files(),
        **extra,
    )
    run.write_summary(summary)
    see_run(run, cfg, trainer, job.module, job.datamodule)  # curves.png, calibration.json (global rank 0)
    return summary
