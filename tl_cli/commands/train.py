"""`tlcli train`: build the job from the config, fit, test (unless test=false), write the run directory
(steps: tl_cli/run/training.py)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from omegaconf import DictConfig

from tl_cli.config.strategies import is_auto
from tl_cli.errors import choose_from
from tl_cli.extras import require_targets
from tl_cli.ranks import job_scope
from tl_cli.reporting.curves import draw_run_curves
from tl_cli.run import auto
from tl_cli.run.command import quiet_framework_noise, run_dir
from tl_cli.run.resume import hand_down, resume_state
from tl_cli.run.training import fit_run, load_best, score_on_test, write_run
from tl_cli.rundir import RunDir

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
    hand_down(state)
    if is_auto(cfg):  # measure and choose, then fit the choice in this run dir (tl_cli/run/auto.py)
        fitted = auto.fit(cfg, run, state.config_sha, state.checkpoint)
    else:
        fitted = fit_run(cfg, run, state.config_sha, state.checkpoint)
    trainer = fitted.trainer
    load_best(fitted.job, fitted.result)  # tested (unless test=false) and saved as model.safetensors
    tested = cfg.get("test", True)  # .get: a resumed run's config may predate the key
    result = score_on_test(trainer, fitted.job, fitted.result) if tested else fitted.result
    if trainer.is_global_zero:  # the other ranks of a data-parallel run write nothing
        write_run(run, cfg, fitted.job, trainer, result, fitted.facts)
        draw_run_curves(run, f"{cfg.strategy.name} / {cfg.model.backbone} / {cfg.data.name}")
        auto.tidy(cfg, run)
        _print_result(result.metrics, run.path)
    return _optimized(cfg, result.metrics)


def _optimized(cfg: DictConfig, metrics: dict) -> float:
    metric = cfg.get("optimized_metric", "val/acc")  # a resumed run from before the key existed lacks it
    if metric not in metrics:
        raise choose_from("optimized_metric", metric, metrics)
    return float(metrics[metric])


def _print_result(metrics: dict, out: Path) -> None:
    if "test/acc" in metrics:
        print(f"test/acc: {metrics['test/acc']:.4f}", flush=True)
    else:  # test=false
        print(f"val/acc: {metrics.get('val/acc', float('nan')):.4f} (not tested: test=false)", flush=True)
    print(f"run_dir: {out}", flush=True)


def main(cfg: DictConfig) -> float:
    require_targets(cfg.logger)  # logger=tensorboard without its extra: one line before any work
    quiet_framework_noise()
    torch.set_float32_matmul_precision("high")
    with job_scope():
        return train(cfg)
