"""`tlcli train`: build the job from the config, fit, test, write the run directory (steps: tl_cli/run/training.py)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from omegaconf import DictConfig

from tl_cli.config.checks import instantiate_group
from tl_cli.errors import choose_from
from tl_cli.extras import require_targets
from tl_cli.run.command import quiet_framework_noise, run_dir
from tl_cli.run.resume import mark_started, resume_state
from tl_cli.run.rundir import RunDir
from tl_cli.run.training import (
    attach_feature_cache,
    build_job,
    compile_network,
    compile_seconds,
    fit_and_test,
    make_trainer,
    run_callbacks,
    to_channels_last,
    write_run,
)

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> float:
    """Fit and test one configuration; returns `metrics[cfg.optimized_metric]` (default val/acc: the value
    sweepers such as hparams_search=optuna optimise; validation, so that test stays unseen by the search).

    Rerunning into a run dir that already holds this exact config (e.g. a sweep rerun with the same
    hydra.sweep.dir) skips a finished job and resumes an unfinished one from its last.ckpt.
    """
    run = RunDir(run_dir())
    state = resume_state(cfg, run)
    if state.finished is not None:
        log.info("already finished with this config, skipping: %s (delete its summary.json to rerun)", run.path)
        _print_result(state.finished["metrics"], run.path)
        return _optimized(cfg, state.finished["metrics"])
    job = build_job(cfg)
    callbacks, throughput = run_callbacks(cfg, run.path)
    loggers = instantiate_group(cfg.logger, "logger")
    resuming = state.checkpoint is not None
    trainer, channels_last = make_trainer(cfg.trainer, cfg.model.channels_last, callbacks, loggers, resuming)
    if channels_last:
        to_channels_last(job)
    compile_check = compile_network(cfg, job, trainer)
    use_cache = attach_feature_cache(cfg, job, trainer, channels_last)
    if resuming:
        log.info("resuming from %s", state.checkpoint)
    mark_started(run, state.config_sha)
    result = fit_and_test(trainer, job, state.checkpoint)
    facts = {
        "train_images_per_second": round(throughput.images / throughput.seconds, 2) if throughput.seconds else 0.0,
        "config_sha": state.config_sha,
        "channels_last": channels_last,
        "feature_cache": use_cache,
        "seconds_to_first_step": round(throughput.first_step_at or 0.0, 3),
        "compile_seconds": compile_seconds(compile_check, throughput),
    }
    write_run(run, cfg, job, trainer, result, facts)
    if trainer.is_global_zero:
        _print_result(result.metrics, run.path)
    return _optimized(cfg, result.metrics)


def _optimized(cfg: DictConfig, metrics: dict) -> float:
    metric = cfg.get("optimized_metric", "val/acc")  # a resumed run from before the key existed lacks it
    if metric not in metrics:
        raise choose_from("optimized_metric", metric, metrics)
    return float(metrics[metric])


def _print_result(metrics: dict, out: Path) -> None:
    print(f"test/acc: {metrics.get('test/acc', float('nan')):.4f}", flush=True)
    print(f"run_dir: {out}", flush=True)


def main(cfg: DictConfig) -> float:
    require_targets(cfg.logger)  # logger=tensorboard without its extra: one line before any work
    quiet_framework_noise()
    torch.set_float32_matmul_precision("high")
    return train(cfg)
