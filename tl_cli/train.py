"""`tlcli train`: seed, build data + network from the config, fit, test, write the run directory."""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import time
import typing
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from tl_cli import speed
from tl_cli.callbacks import GracefulInterrupt, RngState, Throughput
from tl_cli.data.datamodule import TransferDataModule, resolve_data_config
from tl_cli.errors import TlcliError, choose_from
from tl_cli.features import cache_decision, cached_feature_splits
from tl_cli.network import TransferNet
from tl_cli.resume import LAST
from tl_cli.strategies import Strategy, apply_strategy, check_extension, get_strategy
from tl_cli.weights import create_backbone, save_network

log = logging.getLogger(__name__)

# `_target_` is honoured only for these packages, and only in the logger/callbacks groups.
ALLOWED_TARGETS = ("lightning.", "pytorch_lightning.", "tl_cli.")


def check_config(cfg: DictConfig) -> None:
    """Range checks the schema's types cannot express."""
    for key in ("data.batch_size", "optim.lr"):
        value = OmegaConf.select(cfg, key)
        if value is None or value <= 0:
            raise TlcliError(f"{key}={value} must be positive")
    if cfg.data.samples_per_class is not None and cfg.data.samples_per_class <= 0:
        raise TlcliError(f"data.samples_per_class={cfg.data.samples_per_class} must be positive (or null for all)")
    speed.resolve_workers(cfg.data.num_workers)  # a bad value fails here, before any backbone is built
    if (cfg.data.min_samples_per_epoch or 0) < 0:
        raise TlcliError(f"data.min_samples_per_epoch={cfg.data.min_samples_per_epoch} must be positive (or null)")
    hints = typing.get_type_hints(L.Trainer.__init__)
    valid = set(inspect.signature(L.Trainer.__init__).parameters) - {"self", "callbacks", "logger"}
    for key, value in OmegaConf.to_container(cfg.trainer, resolve=False).items():
        if key not in valid:
            raise choose_from("trainer key", key, valid)
        # interpolations resolve later; precision=auto is tlcli's own value (tl_cli/speed.py)
        unchecked = isinstance(value, str) and value.startswith("${") or (key, value) == ("precision", "auto")
        if isinstance(value, str) and not unchecked and not _accepts_string(hints.get(key, str), value):
            raise TlcliError(f"trainer.{key}={value} has the wrong type; lightning.Trainer expects {hints[key]}")


def _accepts_string(hint: Any, value: str) -> bool:
    """Whether a Trainer argument annotated `hint` takes the string `value` (str, or one of its Literals)."""
    if hint is str or hint is Any:
        return True
    if typing.get_origin(hint) is typing.Literal:
        return value in typing.get_args(hint)
    return any(_accepts_string(arg, value) for arg in typing.get_args(hint))


def instantiate_group(group: DictConfig | None, what: str) -> list[Any]:
    """Instantiate each `_target_` entry of the logger/callbacks group (restricted packages)."""
    objects = []
    for name, node in (group or {}).items():
        if node is None:
            continue
        target = node.get("_target_", "") if isinstance(node, DictConfig) else ""
        if not str(target).startswith(ALLOWED_TARGETS):
            raise TlcliError(f"{what}.{name}._target_='{target}' is not allowed; use a lightning.* class")
        objects.append(instantiate(node))
    return objects


def run_dir() -> Path:
    return Path(HydraConfig.get().runtime.output_dir)


@dataclass
class Job:
    """Everything one training run needs, built from the config (no Trainer, no run dir)."""

    strategy: Strategy
    source: str
    net: TransferNet
    module: Any
    datamodule: TransferDataModule
    auto: dict[str, Any] | None = None  # strategy=auto: what was measured and chosen (tl_cli/auto.py)


def build(cfg: DictConfig) -> Job:
    """Strategy, backbone with source weights, data, network and LightningModule, from one config."""
    check_config(cfg)
    auto = None
    if cfg.strategy.name == "auto":  # measure and choose; then build exactly what strategy=<chosen> builds
        from tl_cli.auto import choose

        cfg, auto = choose(cfg, _backbone_kwargs(cfg))
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    strategy = get_strategy(cfg.strategy.name)
    ext = cfg.strategy.extension
    check_extension(strategy, list(ext.hidden_dims))

    weights = cfg.model.weights if strategy.use_source_weights else None
    if not strategy.use_source_weights and cfg.model.weights:
        log.info("strategy=scratch: ignoring model.weights=%s (random init)", cfg.model.weights)
    if strategy.use_source_weights and weights is None:
        log.warning("strategy=%s with model.weights=null: the source network is randomly initialised", strategy.name)
    backbone, source = create_backbone(cfg.model.backbone, weights, **_backbone_kwargs(cfg))

    data_config = resolve_data_config(backbone, cfg.data, cfg.model.in_chans, cfg.model.img_size)
    datamodule = TransferDataModule(
        cfg.data, data_config, cfg.seed, str(cfg.trainer.accelerator), _processes_sharing_cores(cfg.trainer.devices)
    )
    datamodule.prepare_splits()

    net = TransferNet(backbone, datamodule.num_classes, list(ext.hidden_dims), ext.activation, ext.norm, ext.dropout)
    apply_strategy(strategy, net)
    log.info(
        "strategy=%s backbone=%s weights=%s params=%s",
        strategy.name,
        cfg.model.backbone,
        source,
        net.param_counts(),
    )

    from tl_cli.module import TransferModule

    module = TransferModule(
        net,
        datamodule.num_classes,
        dict(cfg.optim),
        cfg.strategy.backbone_lr_mult,
        backbone=cfg.model.backbone,
        config=OmegaConf.to_container(cfg, resolve=False),
    )
    return Job(strategy, source, net, module, datamodule, auto)


def train(cfg: DictConfig) -> float:
    """Fit and test one configuration; returns `metrics[cfg.optimized_metric]` (default val/acc: the value
    sweepers such as hparams_search=optuna optimise; validation, so that test stays unseen by the search).

    Rerunning into a run dir that already holds this exact config (e.g. a sweep rerun with the same
    hydra.sweep.dir) skips a finished job and resumes an unfinished one from its last.ckpt.
    """
    out = run_dir()
    config_sha = _config_sha(cfg)
    done = _finished_summary(out, config_sha)
    if done is not None and not cfg.get("resume"):
        log.info("already finished with this config, skipping: %s (delete its summary.json to rerun)", out)
        _print_result(done["metrics"], out)
        metric = cfg.get("optimized_metric", "val/acc")  # a resumed run from before the key existed lacks it
        if metric not in done["metrics"]:
            raise choose_from("optimized_metric", metric, done["metrics"])
        return float(done["metrics"][metric])
    marker = out / "checkpoints" / "config.sha"
    resume_dir = cfg.get("resume")
    if not resume_dir and (out / LAST).is_file() and marker.is_file() and marker.read_text() == config_sha:
        resume_dir = str(out)  # an interrupted job of a rerun sweep
    job = build(cfg)
    strategy, source, net, module, datamodule = job.strategy, job.source, job.net, job.module, job.datamodule
    data_config = datamodule.data_config
    params = net.param_counts()
    throughput = Throughput()
    callbacks = [*instantiate_group(cfg.callbacks, "callbacks"), throughput, RngState(), GracefulInterrupt(out)]
    loggers = instantiate_group(cfg.logger, "logger")
    trainer_args = OmegaConf.to_container(cfg.trainer, resolve=True)
    precision, channels_last, precision_reason = speed.resolve(
        trainer_args.get("precision", "auto"), cfg.model.channels_last, str(trainer_args.get("accelerator", "auto"))
    )
    trainer_args["precision"] = precision
    if (
        str(trainer_args.get("strategy", "")).startswith("ddp")
        and not str(trainer_args["strategy"]).startswith("ddp_spawn")
        and HydraConfig.get().mode == RunMode.MULTIRUN
        and not _cluster_starts_processes()
    ):
        # Lightning's ddp launcher re-runs the whole command on every extra rank: under -m, the whole sweep
        log.warning("trainer.strategy=%s under multirun: using ddp_spawn instead", trainer_args["strategy"])
        trainer_args["strategy"] = "ddp_spawn"
    if resume_dir:
        trainer_args["num_sanity_val_steps"] = 0  # it would consume random numbers the restored RNG must not
    log.info("precision=%s channels_last=%s (%s)", precision, channels_last, precision_reason)
    if channels_last:
        net.to(memory_format=torch.channels_last)
        module.channels_last = True
    trainer = L.Trainer(**trainer_args, callbacks=callbacks, logger=loggers or False)

    start = time.perf_counter()
    use_cache, why = cache_decision(cfg.data.cache_features, strategy.train_backbone, cfg.data.augment)
    log.info("feature cache %s: %s", "on" if use_cache else "off", why)
    if use_cache:
        datamodule.use_features(
            cached_feature_splits(
                net.to(trainer.strategy.root_device),
                datamodule,
                trainer.strategy.root_device,
                trainer.precision_plugin.forward_context,
                cfg.data.feature_cache_dir,
                extra={"backbone": cfg.model.backbone, "data": cfg.data.name, "root": cfg.data.root},
                channels_last=channels_last,
            )
        )
        module.inputs_are_features = True
    resume_from = str(Path(resume_dir) / LAST) if resume_dir else None
    if resume_from:
        log.info("resuming from %s", resume_from)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(config_sha)
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from)
    train_seconds = time.perf_counter() - start
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    val_metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    best_score = trainer.checkpoint_callback.best_model_score if best else None
    if best_score is not None:  # validation metrics and weights of the selected (best-val) epoch
        val_metrics["val/acc"] = float(best_score)
    if best:  # test and save the best-val weights; loaded here so ddp_spawn's child processes get them too
        module.load_state_dict(torch.load(best, map_location="cpu", weights_only=True)["state_dict"])
    test_results = trainer.test(module, datamodule=datamodule, verbose=True)
    metrics = {**val_metrics, **{k: float(v) for k, v in test_results[0].items()}}

    (out / "labels.json").write_text(json.dumps(datamodule.classes, indent=1))
    save_network(
        net,
        out / "model.safetensors",
        {
            "format": "tlcli",
            "backbone": cfg.model.backbone,
            "in_chans": cfg.model.in_chans,
            "num_classes": datamodule.num_classes,
            "strategy": strategy.name,
        },
    )
    summary = {
        "strategy": cfg.strategy.name,  # "auto" for strategy=auto; what it chose: strategy_auto.chosen
        "backbone": cfg.model.backbone,
        "weights": source,
        "dataset": cfg.data.name,
        "samples_per_class": cfg.data.samples_per_class,
        "lr": cfg.optim.lr,
        "num_classes": datamodule.num_classes,
        "split_sizes": {s: len(d) for s, d in datamodule.splits.items()},
        "split_notes": datamodule.notes,
        "params": params,
        "metrics": metrics,
        "epochs": trainer.current_epoch,
        "train_seconds": round(train_seconds, 3),
        "train_images_per_second": round(throughput.images / throughput.seconds, 2) if throughput.seconds else 0.0,
        "seed": cfg.seed,
        "config_sha": config_sha,
        "data_config": {k: list(v) if isinstance(v, tuple) else v for k, v in data_config.items()},
        "best_checkpoint": str(Path(best).relative_to(out)) if best else None,
        "device": str(trainer.strategy.root_device),
        "precision": str(trainer.precision),
        "channels_last": channels_last,
        "feature_cache": use_cache,
        "seconds_to_first_step": round(throughput.first_step_at or 0.0, 3),
        **({"strategy_auto": job.auto} if job.auto else {}),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    if trainer.is_global_zero:
        _print_result(metrics, out)
    metric = cfg.get("optimized_metric", "val/acc")  # a resumed run from before the key existed lacks it
    if metric not in metrics:
        raise choose_from("optimized_metric", metric, metrics)
    return float(metrics[metric])


def _print_result(metrics: dict, out: Path) -> None:
    print(f"test/acc: {metrics.get('test/acc', float('nan')):.4f}", flush=True)
    print(f"run_dir: {out}", flush=True)


def _config_sha(cfg: DictConfig) -> str:
    """Identity of a job's config (unresolved, so the same command gives the same hash)."""
    container = OmegaConf.to_container(cfg, resolve=False)
    container.pop("resume", None)
    return hashlib.sha256(json.dumps(container, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _finished_summary(out: Path, config_sha: str) -> dict | None:
    try:
        summary = json.loads((out / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    return summary if summary.get("config_sha") == config_sha else None


def _backbone_kwargs(cfg: DictConfig) -> dict[str, Any]:
    """timm.create_model arguments of the backbone, besides its name and weights."""
    kwargs = dict(in_chans=cfg.model.in_chans, drop_rate=cfg.model.drop_rate, **cfg.model.kwargs)
    if cfg.model.drop_path_rate is not None:
        kwargs["drop_path_rate"] = cfg.model.drop_path_rate
    if cfg.model.img_size and _fixed_input_size(cfg.model.backbone):
        kwargs["img_size"] = cfg.model.img_size
    return kwargs


def _processes_sharing_cores(devices: Any) -> int:
    """Training processes on this machine that split its cores for DataLoader workers."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    if SLURMEnvironment.detect():
        return 1  # one task per GPU: each task's CPU affinity already holds only its own cores
    if isinstance(devices, int) and devices > 0:
        return devices
    if isinstance(devices, str) and devices.strip().isdigit():
        return int(devices)
    if OmegaConf.is_list(devices) or isinstance(devices, list | tuple):
        return max(1, len(devices))
    return max(1, torch.cuda.device_count())  # -1 or "auto": every visible GPU


def _cluster_starts_processes() -> bool:
    """SLURM (e.g. hydra/launcher=submitit_slurm with one task per GPU) or torchrun start every rank
    themselves; there Lightning's ddp joins them and nothing re-launches the sweep."""
    from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    return SLURMEnvironment.detect() or TorchElasticEnvironment.detect()


def _fixed_input_size(name: str) -> bool:
    """ViT-style models bake the input size into their position embeddings: pass img_size to timm."""
    import timm

    cfg = timm.models.get_pretrained_cfg(name)
    return bool(cfg and getattr(cfg, "fixed_input_size", False))


def quiet_framework_noise() -> None:
    """Lightning logs through its own console handler; let Hydra's root handlers (console + train.log)
    carry it instead of printing every line twice. Silence warnings that tlcli triggers on purpose."""
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    for message in (
        ".*module\\(s\\) in eval mode.*",  # frozen parts are kept in eval mode deliberately
        ".*exists and is not empty.*",  # the run dir already holds Hydra's .hydra/ and train.log
        ".*LeafSpec.*",
        ".*does not have many workers.*",  # in-memory datasets are fastest without workers on 2 cores
        ".*smaller than the logging interval.*",
    ):
        warnings.filterwarnings("ignore", message=message)


def main(cfg: DictConfig) -> float:
    quiet_framework_noise()
    torch.set_float32_matmul_precision("high")
    return train(cfg)
