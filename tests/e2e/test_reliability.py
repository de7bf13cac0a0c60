"""Interruption, resume and determinism, on real `tlcli` runs."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import KEEP_EPOCHS, RESUMABLE, TLCLI, assert_one_line_error, run_dir_of, summary_of

# slow: resume and determinism, each trained twice (make test-all and CI run them)
pytestmark = pytest.mark.slow


RUN = RESUMABLE


def test_resume_after_a_kill_equals_an_uninterrupted_run(tlcli, tmp_path: Path) -> None:
    full = run_dir_of(tlcli("train", *RUN, *KEEP_EPOCHS, f"hydra.run.dir={tmp_path / 'full'}"))
    # the state a kill -9 right after epoch 1 leaves behind: the run's config and that epoch's last.ckpt
    killed = tmp_path / "killed"
    (killed / "checkpoints").mkdir(parents=True)
    shutil.copytree(full / ".hydra", killed / ".hydra")
    shutil.copy(full / "epochs" / "e1.ckpt", killed / "checkpoints" / "last.ckpt")
    resumed = tlcli("train", f"resume={killed}")
    assert run_dir_of(resumed) == killed
    a = torch.load(full / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(killed / "checkpoints" / "last.ckpt", weights_only=True)
    assert (a["epoch"], a["global_step"]) == (b["epoch"], b["global_step"])
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    assert summary_of(full)["metrics"] == summary_of(killed)["metrics"]


def test_ctrl_c_writes_last_ckpt_and_names_the_resume_command(tmp_path: Path) -> None:
    run = tmp_path / "run"
    env = {**os.environ, "TLCLI_OUTPUT_DIR": str(tmp_path)}
    proc = subprocess.Popen(
        [str(TLCLI), "train", "experiment=smoke", "trainer.max_epochs=500", f"hydra.run.dir={run}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    deadline = time.time() + 120
    while not (run / "checkpoints" / "last.ckpt").exists() and time.time() < deadline:
        time.sleep(0.2)  # training is under way once the first epoch's checkpoint exists
    first = (run / "checkpoints" / "last.ckpt").stat().st_mtime_ns
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    result = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    assert proc.returncode == 130
    assert_one_line_error(result, "interrupted at epoch", f"resume with: tlcli train resume={run}")
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert (run / "checkpoints" / "last.ckpt").stat().st_mtime_ns > first and state["global_step"] > 0
    resumed = subprocess.run(
        [str(TLCLI), "train", f"resume={run}", "trainer.max_epochs=" + str(state["epoch"] + 2)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert run_dir_of(resumed) == run
    assert summary_of(run)["epochs"] == state["epoch"] + 2


def test_same_seed_same_results(tlcli) -> None:
    a = run_dir_of(tlcli("train", *RUN))
    b = run_dir_of(tlcli("train", *RUN))
    assert summary_of(a)["metrics"] == summary_of(b)["metrics"]
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_resume_needs_a_run_dir(tlcli, tmp_path: Path) -> None:
    assert_one_line_error(tlcli("train", f"resume={tmp_path}"), f"resume={tmp_path}", "not a tlcli run directory")


def test_rerun_sweep_skips_finished_jobs_and_resumes_the_rest(tlcli, tmp_path: Path) -> None:
    sweep = [
        "-m",
        "experiment=smoke",
        "trainer.max_epochs=2",
        "strategy=freeze,finetune",
        f"hydra.sweep.dir={tmp_path}/s",
    ]
    assert tlcli("train", *sweep).returncode == 0
    finished, interrupted = tmp_path / "s" / "0", tmp_path / "s" / "1"
    kept = (finished / "model.safetensors").stat().st_mtime_ns
    (interrupted / "summary.json").unlink()  # job 1 "died" after its last checkpoint
    again = tlcli("train", *sweep)
    assert again.returncode == 0, again.stderr[-2000:]
    log = again.stdout + again.stderr
    assert "already finished with this config, skipping" in log and "resuming from" in log
    assert (finished / "model.safetensors").stat().st_mtime_ns == kept
    assert summary_of(interrupted)["strategy"] == "finetune" and summary_of(interrupted)["epochs"] == 2
