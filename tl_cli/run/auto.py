"""`strategy=auto`, dispatched in one place: `tlcli train` fits through `fit`, the other commands rebuild the
network an auto run trained through `trained_config`. The config checks ask `config.strategies.is_auto`.

- method=race (default, tl_cli/run/race.py): measure the strategies on val, then train the pick.
- method=rule (tl_cli/transfer/auto.py): the classic table on a linear probe, then train its choice.
Either way the run trains exactly what `strategy=<choice>` trains and records how it chose in summary.json's
`strategy_auto`.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from tl_cli.config.checks import check_config
from tl_cli.config.strategies import is_auto
from tl_cli.errors import TlcliError
from tl_cli.ranks import several_processes
from tl_cli.run.training import Fitted, backbone_kwargs, fit_run
from tl_cli.rundir import RunDir
from tl_cli.transfer.auto import check_settings, choose, settings_of


def fit(cfg: DictConfig, run: RunDir, config_sha: str, resume_from: str | None) -> Fitted:
    """Choose a strategy (race or rule) and fit it in the run dir; summary's strategy_auto says how."""
    check_config(cfg)  # before anything is measured: the refusals of strategy=auto included
    settings = settings_of(cfg)
    check_settings(settings)
    if settings.method == "rule":
        chosen, record = choose(cfg, backbone_kwargs(cfg))
        fitted = fit_run(chosen, run, config_sha, resume_from)
        fitted.job.auto = record
        return fitted
    if several_processes(cfg.trainer):
        raise TlcliError(
            "strategy=auto's race trains its candidates one after another in one process; run it on one device "
            "(drop trainer.devices/num_nodes, or torchrun/srun), then train the strategy it picks data-parallel"
        )
    from tl_cli.run import race

    return race.race_and_fit(cfg, run, config_sha, resume_from)


def tidy(cfg: DictConfig, run: RunDir) -> None:
    """After a finished auto run: the race's candidate checkpoints and feature cache go (their curves stay)."""
    if is_auto(cfg) and settings_of(cfg).method == "race":
        from tl_cli.run import race

        race.tidy(run)


def trained_config(config: DictConfig, run_dir: Path | None) -> DictConfig:
    """A run's saved config with the strategy that actually trained: for strategy=auto, its summary.json's."""
    if run_dir is None or not is_auto(config):
        return config
    try:
        chosen = RunDir(run_dir).read_summary()["strategy_auto"]["preset"]
    except (KeyError, TypeError):  # no summary (None), or one without strategy_auto
        raise TlcliError(
            f"{run_dir} is a strategy=auto run without a finished summary.json naming the strategy it chose; "
            f"pass one of its checkpoints/*.ckpt instead"
        ) from None
    return OmegaConf.merge(config, {"strategy": chosen})
