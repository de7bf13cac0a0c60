"""One run, one directory, however many processes take part (docs/scaling.md).

Three things start the ranks of a data-parallel run, and each needs the same run directory in every rank:
- Lightning's own launcher (`trainer.devices=N`): it re-runs `sys.argv` for each extra rank and hands it rank 0's
  `hydra.run.dir`. `rerun_command` puts the real command line there (the job's own, under `-m`).
- torchrun: every rank starts at once. Rank 0 names the run and publishes the name in torchrun's own TCP store;
  the other ranks wait for it (`run_name`).
- SLURM's srun (one task per device): the name comes from the job and step ids, the same in every task.

Ranks other than 0 write no Hydra record (`.hydra/`) and log to `<run dir>/<task>_rank<N>.log`
(`other_rank_overrides`). Only global rank 0 writes the run's files (tl_cli/commands/train.py). `run_name` is
the `${tlcli_run_name:}` resolver of configs/hydra/default.yaml (registered in tl_cli/config/paths.py).
Kept light: torch is imported only under torchrun.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta

from tl_cli.errors import TlcliError

TIME_FORMAT = "%Y-%m-%d_%H-%M-%S-%f"  # a run dir's name where one process names it
STORE_TIMEOUT = timedelta(minutes=10)  # how long ranks > 0 wait for rank 0's name
_name: str | None = None  # this process's run name, once decided (one per tlcli command)


def launcher() -> str | None:
    """Who started this process as one rank of several: 'torchrun', 'slurm', or None (a single process, or
    Lightning's launcher, whose children get their run dir on the command line)."""
    if os.environ.get("TORCHELASTIC_RUN_ID") is not None and "RANK" in os.environ:
        return "torchrun"
    if _slurm_tasks() > 1:
        return "slurm"
    return None


def _slurm_tasks() -> int:
    """srun's task count, where Lightning's SLURM environment applies (not an interactive allocation)."""
    if os.environ.get("SLURM_JOB_NAME") in ("bash", "interactive"):  # Lightning's own rule (SLURMEnvironment)
        return 1
    try:
        return int(os.environ.get("SLURM_NTASKS", "1"))
    except ValueError:
        return 1


def global_rank() -> int:
    """This process's global rank as its launcher set it (0 for a single process and for Lightning's rank 0)."""
    for var in ("RANK", "SLURM_PROCID"):
        if launcher() and var in os.environ:
            return int(os.environ[var])
    return 0


def reset() -> None:
    """A new command in this process gets a new run name (tests run several commands in one process)."""
    global _name
    _name = None


def run_name() -> str:
    """`${tlcli_run_name:}`: the run (or sweep) folder's name, the same in every rank of the run."""
    global _name
    if _name is None:
        kind = launcher()
        if kind == "slurm":
            _name = _slurm_name()
        elif kind == "torchrun":
            _name = _torchrun_name()
        else:
            _name = datetime.now().strftime(TIME_FORMAT)
    return _name


def _slurm_name() -> str:
    job = os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID", "job")
    task = os.environ.get("SLURM_ARRAY_TASK_ID")
    step = os.environ.get("SLURM_STEP_ID")
    return "slurm-" + job + (f"_{task}" if task else "") + (f".{step}" if step else "")


def _torchrun_name() -> str:
    """Rank 0's clock, shared through the store torchrun's agent hosts at MASTER_ADDR:MASTER_PORT."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        raise TlcliError(
            "torchrun without its agent store (TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1?): the ranks cannot agree on "
            "a run directory; set hydra.run.dir=<one shared path> on the command line"
        )
    from torch.distributed import TCPStore

    store = TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False, timeout=STORE_TIMEOUT)
    key = f"tlcli/run_name/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
    if global_rank() == 0:
        store.set(key, datetime.now().strftime(TIME_FORMAT))
    return store.get(key).decode()


def other_rank_overrides(task_name: str) -> list[str]:
    """Hydra overrides for ranks > 0 of a launcher-started run: no .hydra/ record, a log file of their own in
    the shared run dir."""
    rank = global_rank()
    if rank == 0:
        return []
    return ["hydra.output_subdir=null", f"hydra.job.name={task_name}_rank{rank}"]


_CONFIG_FLAGS = ("--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd")


def rerun_command(command: str, args: list[str], argv0: str) -> None:
    """Set `sys.argv` to what re-runs this job as another rank: Lightning's launcher runs
    `python <argv[0]> <argv[1:]> hydra.run.dir=<HydraConfig run.dir> ...` for each extra rank.

    Under `-m` that is this job alone (its own overrides, never the sweep), and the job's folder becomes the
    run.dir Lightning passes on. Call inside the Hydra task, before any Trainer exists.
    """
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import read_write

    hydra = HydraConfig.get()
    flags: list[str] = []
    for i, arg in enumerate(args):  # the config source flags (resume's --config-path/--config-name) stay
        if arg in _CONFIG_FLAGS and i + 1 < len(args):
            flags += [arg, args[i + 1]]
        elif arg.split("=", 1)[0] in _CONFIG_FLAGS:
            flags.append(arg)
    overrides = [o for o in hydra.overrides.hydra if not o.startswith("hydra.mode=")]
    with read_write(hydra.run):
        hydra.run.dir = hydra.runtime.output_dir
    sys.argv = [os.path.abspath(argv0), command, *flags, *overrides, *hydra.overrides.task]


def several_processes(trainer_cfg) -> bool:
    """Whether this Trainer config trains data-parallel: a launcher started ranks, or it asks for several devices
    or nodes."""
    if launcher() is not None or int(trainer_cfg.get("num_nodes") or 1) > 1:
        return True
    from tl_cli.hardware import devices_requested

    return devices_requested(trainer_cfg.get("devices", 1), str(trainer_cfg.get("accelerator", "auto"))) > 1


# rank 0's resume decision (a checkpoint, or "" for a fresh start), handed to the ranks Lightning's launcher starts
# (they inherit its environment): a rank that looked at the run dir itself could see rank 0's new config.sha
# beside an older run's last.ckpt and resume alone
RESUME_ENV = "TLCLI_RESUME_FROM"
# what Lightning's launcher sets in the launching process; left set, the next job would take them for ranks
# started by someone else and start none of its own
LAUNCH_VARS = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE", RESUME_ENV)


@contextmanager
def job_scope() -> Iterator[None]:
    """One training job. Where Lightning's launcher started its extra ranks, they exit with it: afterwards the
    process group is destroyed and the launch variables restored, so the next job of a sweep in this process
    starts ranks and a group of its own (Lightning reuses an initialized group). Ranks that torchrun or srun
    started stay together for every job, and keep theirs."""
    external = launcher() is not None
    restore = (RESUME_ENV,) if external else LAUNCH_VARS
    saved = {var: os.environ.get(var) for var in restore}
    try:
        yield
    finally:
        if not external:
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                dist.destroy_process_group()
        for var, value in saved.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value
