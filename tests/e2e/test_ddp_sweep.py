"""Data-parallel training on CPU with gloo, started every standard way: Lightning's own launcher
(`trainer.devices=2`, also under `-m`), torchrun on one node, and two torchrun "nodes" on 127.0.0.1. Each run has
exactly one run directory, written by global rank 0 alone (docs/scaling.md)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import TLCLI, assert_one_line_error, run_dir_of, summary_of

# every rank: one torch thread (2 ranks on 2 cores)
ONE_THREAD = {"OMP_NUM_THREADS": "1"}
# ViT without BatchNorm or dropout, fp32, no augmentation: 2 ranks at batch B/2 train exactly as 1 at batch B.
# SGD: Adam's first steps are about lr x sign(gradient), which turns the all-reduce's rounding (1e-7) into 3e-4
EQUIVALENCE = [
    "experiment=smoke", "model.backbone=test_vit", "model.img_size=32", "strategy=finetune", "data.augment=false",
    "optim=sgd",
    "trainer.precision=32-true", "trainer.max_epochs=1", "test=false", "trainer.accelerator=cpu",
]  # fmt: skip
RUN_FILES = ("summary.json", "model.safetensors", "labels.json", "metrics.csv", ".hydra/config.yaml")


def _runs(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.rglob(".hydra"))


def _assert_one_run(root: Path) -> Path:
    """Exactly one run dir under `root`, holding the run files, and no other folders."""
    runs = _runs(root)
    assert len(runs) == 1, runs
    assert all((runs[0] / f).is_file() for f in RUN_FILES), sorted(p.name for p in runs[0].iterdir())
    leaves = [p for p in root.rglob("*") if p.is_dir() and not any(p.iterdir())]
    assert not leaves, leaves  # no empty folders from the other ranks
    return runs[0]


def test_devices_2_gives_one_run_dir(tlcli, tmp_path: Path) -> None:
    """Also: optim.min_steps counts optimizer steps whatever the world size. 128 train images at 32 per device x 2
    devices give 2 steps an epoch; 20 steps over 2 epochs repeat them to 640 images an epoch, 320 per rank."""
    two = ["trainer.accelerator=cpu", "trainer.devices=2", "optim.min_steps=20", "trainer.max_epochs=2"]
    result = tlcli("train", "experiment=smoke", *two, env=ONE_THREAD)
    run = run_dir_of(result)
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 20
    assert run == _assert_one_run(tmp_path / "outputs")
    assert (run / "train_ddp_process_1.log").is_file()  # rank 1's log, in the run dir (Lightning's name)
    assert result.stdout.count("run_dir:") == 1
    summary = summary_of(run)
    assert summary["split_sizes"] == {"train": 128, "val": 32, "test": 32}
    # resume on 2 ranks: a third epoch of ceil(20 / 3) = 7 steps continues from last.ckpt, in the same run dir
    resumed = run_dir_of(tlcli("train", f"resume={run}", "trainer.max_epochs=3", env=ONE_THREAD))
    assert resumed == run == _assert_one_run(tmp_path / "outputs")
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 27
    assert summary_of(run)["epochs"] == 3


@pytest.mark.slow  # several processes, each importing torch (test_devices_2_gives_one_run_dir runs DDP by default)
def test_ddp_ranks_agree_on_resuming_and_on_their_validation_steps(tlcli, tmp_path: Path) -> None:
    """Two ways ranks used to part and hang. (1) A run dir holding another config's finished run: rank 0 starts
    afresh and writes its config.sha beside the old last.ckpt; a rank that decided for itself would then resume.
    (2) 65 val images (odd) on 2 ranks of a BatchNorm model at 32 a batch: 33 and 32 would be 2 and 1 batches,
    and DDP's forward syncs BatchNorm buffers in every step, validation too."""
    out = tmp_path / "run"
    run_dir_of(tlcli("train", "experiment=smoke", "trainer.accelerator=cpu", f"hydra.run.dir={out}", env=ONE_THREAD))
    uneven = ["data.num_classes=5", "data.samples_per_split=[16,13,4]", "data.eval_batch_size=32"]
    two = ["trainer.accelerator=cpu", "trainer.devices=2", "trainer.max_epochs=1", f"hydra.run.dir={out}"]
    run = run_dir_of(tlcli("train", "experiment=smoke", *uneven, *two, env=ONE_THREAD, timeout=300))
    summary = summary_of(run)
    assert summary["split_sizes"] == {"train": 80, "val": 65, "test": 20} and summary["epochs"] == 1
    # a fresh start: 80 images at 32 x 2 ranks is 2 steps (1 had it resumed the old run's 4 steps)
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2


@pytest.mark.slow  # several processes, each importing torch (test_devices_2_gives_one_run_dir runs DDP by default)
def test_ddp_sweep_relaunches_only_the_current_job(tlcli, tmp_path: Path) -> None:
    result = tlcli(
        "train", "-m", "experiment=smoke", "model=embedded", "strategy=freeze,finetune", "trainer=ddp",
        "trainer.accelerator=cpu", f"hydra.sweep.dir={tmp_path}/s", env=ONE_THREAD,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert (result.stdout + result.stderr).count("Launching 2 jobs") == 1  # not once per rank
    runs = _runs(tmp_path / "s")
    assert [p.name for p in runs] == ["0", "1"]
    summaries = [summary_of(p) for p in runs]
    assert [s["strategy"] for s in summaries] == ["freeze", "finetune"]
    assert summaries[0]["metrics"]["test/acc"] > 0.5  # the frozen Fashion-MNIST features separate the prototypes
    assert all((p / "train_ddp_process_1.log").is_file() for p in runs)


def _torchrun(tmp_path: Path, torchrun_args: list[str], overrides: list[str]) -> subprocess.Popen:
    env = {**os.environ, **ONE_THREAD, "TLCLI_OUTPUT_DIR": str(tmp_path / "outputs")}
    env["PATH"] = f"{TLCLI.parent}{os.pathsep}{env['PATH']}"
    command = [sys.executable, "-m", "torch.distributed.run", *torchrun_args, "--no-python", "tlcli", "train"]
    return subprocess.Popen(
        [*command, *overrides], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _finish(procs: list[subprocess.Popen]) -> list[str]:
    outs = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
        outs.append(out)
    return outs


@pytest.mark.slow  # several processes, each importing torch (test_devices_2_gives_one_run_dir runs DDP by default)
def test_torchrun_one_node(tmp_path: Path) -> None:
    proc = _torchrun(
        tmp_path, ["--nproc-per-node=2", "--master-port=29541"],
        ["experiment=smoke", "trainer.accelerator=cpu", "trainer.strategy=ddp", "trainer.devices=2"],
    )  # fmt: skip
    (out,) = _finish([proc])
    run = _assert_one_run(tmp_path / "outputs")
    assert out.count("run_dir:") == 1 and out.strip().endswith(f"run_dir: {run}")
    assert (run / "train_rank1.log").is_file()


@pytest.mark.slow  # several processes, each importing torch (test_devices_2_gives_one_run_dir runs DDP by default)
def test_two_nodes_share_one_run_dir(tmp_path: Path) -> None:
    """Two `torchrun --nnodes=2` processes on 127.0.0.1 stand in for two machines sharing an output folder."""
    nodes = [
        _torchrun(
            tmp_path,
            ["--nnodes=2", "--nproc-per-node=1", f"--node-rank={rank}", "--master-addr=127.0.0.1"]
            + ["--master-port=29542"],
            ["experiment=smoke", "trainer.accelerator=cpu", "trainer.strategy=ddp", "trainer.num_nodes=2"],
        )
        for rank in (0, 1)
    ]
    outs = _finish(nodes)
    run = _assert_one_run(tmp_path / "outputs")
    assert outs[0].strip().endswith(f"run_dir: {run}") and "run_dir:" not in outs[1]
    assert summary_of(run)["split_sizes"]["train"] == 128


@pytest.mark.slow  # several processes, each importing torch (test_devices_2_gives_one_run_dir runs DDP by default)
def test_srun_tasks_share_one_run_dir_named_after_the_job(tmp_path: Path) -> None:
    """What `srun --ntasks-per-node=2 tlcli train ...` starts: two tasks with SLURM's variables (set here by hand:
    no SLURM on this machine); Lightning's SLURM environment joins them, the job and step ids name the run."""
    slurm = {
        "SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2", "SLURM_NNODES": "1", "SLURM_NODEID": "0",
        "SLURM_JOB_ID": "4242", "SLURM_STEP_ID": "0", "SLURM_JOB_NAME": "tlcli", "SLURM_NODELIST": "127.0.0.1",
        "MASTER_PORT": "29543",
    }  # fmt: skip
    env = {**os.environ, **ONE_THREAD, **slurm, "TLCLI_OUTPUT_DIR": str(tmp_path / "outputs")}
    overrides = ["experiment=smoke", "trainer.accelerator=cpu", "trainer.strategy=ddp", "trainer.devices=2"]
    tasks = [
        subprocess.Popen(
            [str(TLCLI), "train", *overrides],
            cwd=tmp_path,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**env, "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank)},
        )  # fmt: skip
        for rank in (0, 1)
    ]
    outs = _finish(tasks)
    run = _assert_one_run(tmp_path / "outputs")
    assert run.name == "slurm-4242.0" and outs[0].strip().endswith(f"run_dir: {run}")
    assert (run / "train_rank1.log").is_file() and "run_dir:" not in outs[1]


def test_race_and_lr_find_refuse_several_devices(tlcli) -> None:
    two = ["experiment=smoke", "trainer.accelerator=cpu", "trainer.devices=2"]
    assert_one_line_error(tlcli("train", *two, "strategy=auto"), "strategy=auto", "one device")
    assert_one_line_error(tlcli("lr-find", *two, "strategy=finetune"), "lr-find", "one device")


@pytest.mark.slow  # several processes, each importing torch (test_devices_2_gives_one_run_dir runs DDP by default)
def test_two_ranks_train_as_one_process_at_the_global_batch(tlcli, tmp_path: Path) -> None:
    """data.batch_size is per device: 2 ranks at 8 each take the same optimizer steps, on the same images, as one
    process at 16 (a model without BatchNorm, fp32), so the weights agree to float rounding; one process at 8
    (other steps) does not."""
    runs = {
        name: run_dir_of(tlcli("train", *EQUIVALENCE, *args, env=ONE_THREAD))
        for name, args in {
            "one process, batch 16": ["data.batch_size=16"],
            "2 ranks, batch 8 each": ["data.batch_size=8", "trainer.devices=2"],
            "one process, batch 8": ["data.batch_size=8"],
        }.items()
    }
    weights = {name: load_file(run / "model.safetensors") for name, run in runs.items()}

    def worst(a: str, b: str) -> float:
        return max(float((weights[a][k] - weights[b][k]).abs().max()) for k in weights[a])

    assert worst("one process, batch 16", "2 ranks, batch 8 each") < 1e-5
    assert worst("one process, batch 16", "one process, batch 8") > 1e-3  # the comparison can tell runs apart
