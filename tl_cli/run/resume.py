"""Interruption and resume: Ctrl-C finishes the step and writes last.ckpt (tl_cli/transfer/callbacks.py);
`resume=<run dir>` continues.

Checkpoint files are written atomically by Lightning itself (fsspec transaction: temp file, then rename),
so a `kill -9` never leaves a half-written .ckpt; it loses at most the work since the last epoch.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tl_cli.errors import TlcliError
from tl_cli.ranks import RESUME_ENV
from tl_cli.rundir import CONFIG, CONFIG_SHA, LAST, RunDir


def resume_args(args: list[str]) -> list[str]:
    """Rewrite `resume=<run dir> [overrides]` into Hydra args that reload that run's own config and
    write into the same run directory (without rewriting its .hydra/ record)."""
    value = next(a.split("=", 1)[1] for a in args if a.startswith("resume="))
    run = Path(value).expanduser().resolve()
    if not (run / CONFIG).is_file():
        raise TlcliError(f"resume={value} is not a tlcli run directory (no {CONFIG})")
    if not (run / LAST).is_file():
        raise TlcliError(f"resume={value} has no {LAST} to resume from; start a new run instead")
    rest = [a for a in args if not a.startswith("resume=")]
    return [
        "--config-path", str(run / CONFIG.parent), "--config-name", "config",
        f"hydra.run.dir={run}", "hydra.output_subdir=null", "hydra.job.name=train", f"++resume={run}", *rest,
    ]  # fmt: skip


@dataclass(frozen=True)
class ResumeState:
    """What a run dir already holds for this exact config: a finished run (skip it), or an unfinished
    one to resume (explicit `resume=<run dir>`, or the interrupted job of a rerun sweep)."""

    config_sha: str
    finished: dict[str, Any] | None
    resume_dir: str | None

    @property
    def checkpoint(self) -> str | None:
        return str(Path(self.resume_dir) / LAST) if self.resume_dir else None


def config_sha(cfg: Any) -> str:
    """Identity of a job's config (unresolved, so the same command gives the same hash)."""
    from omegaconf import OmegaConf

    container = OmegaConf.to_container(cfg, resolve=False)
    container.pop("resume", None)
    return hashlib.sha256(json.dumps(container, sort_keys=True, default=str).encode()).hexdigest()[:16]


def resume_state(cfg: Any, run: RunDir) -> ResumeState:
    """What to do in this run dir; the extra ranks Lightning's launcher starts take rank 0's decision."""
    sha = config_sha(cfg)
    inherited = os.environ.get(RESUME_ENV)
    if inherited is not None:
        return ResumeState(sha, None, inherited or None)
    if cfg.get("resume"):  # `tlcli train resume=<run dir>`: continue it, whatever it holds
        return ResumeState(sha, None, str(cfg.resume))
    summary = run.read_summary()
    if summary is not None and summary.get("config_sha") == sha:
        return ResumeState(sha, summary, None)
    marker = run / CONFIG_SHA
    started_here = marker.is_file() and marker.read_text() == sha
    return ResumeState(sha, None, str(run.path) if started_here and (run / LAST).is_file() else None)


def hand_down(state: ResumeState) -> None:
    """Rank 0's decision, for the ranks Lightning's launcher will start (restored after the job: ranks.job_scope)."""
    os.environ[RESUME_ENV] = state.resume_dir or ""


def mark_started(run: RunDir, sha: str) -> None:
    """Record the config a run started with, so a rerun of the same sweep can resume it."""
    marker = run / CONFIG_SHA
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(sha)
