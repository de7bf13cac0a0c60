"""Interruption and resume: Ctrl-C finishes the step and writes last.ckpt (tl_cli/callbacks.py);
`resume=<run dir>` continues.

Checkpoint files are written atomically by Lightning itself (fsspec transaction: temp file, then rename),
so a `kill -9` never leaves a half-written .ckpt; it loses at most the work since the last epoch.
"""

from __future__ import annotations

from pathlib import Path

from tl_cli.errors import TlcliError

LAST = Path("checkpoints") / "last.ckpt"
EXIT_INTERRUPTED = 130  # the shell's code for "stopped by SIGINT"


def resume_args(args: list[str]) -> list[str]:
    """Rewrite `resume=<run dir> [overrides]` into Hydra args that reload that run's own config and
    write into the same run directory (without rewriting its .hydra/ record)."""
    value = next(a.split("=", 1)[1] for a in args if a.startswith("resume="))
    run = Path(value).expanduser().resolve()
    if not (run / ".hydra" / "config.yaml").is_file():
        raise TlcliError(f"resume={value} is not a tlcli run directory (no .hydra/config.yaml)")
    if not (run / LAST).is_file():
        raise TlcliError(f"resume={value} has no {LAST} to resume from; start a new run instead")
    rest = [a for a in args if not a.startswith("resume=")]
    return [
        "--config-path", str(run / ".hydra"), "--config-name", "config",
        f"hydra.run.dir={run}", "hydra.output_subdir=null", "hydra.job.name=train", f"++resume={run}", *rest,
    ]  # fmt: skip


class Interrupted(TlcliError):
    """Training stopped by Ctrl-C after a checkpoint was written."""

    exit_code = EXIT_INTERRUPTED

    def __init__(self, epoch: int, step: int, run_dir: Path) -> None:
        super().__init__(
            f"interrupted at epoch {epoch}, step {step}; checkpoint written to {run_dir / LAST}; "
            f"resume with: tlcli train resume={run_dir}"
        )
