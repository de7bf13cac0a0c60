"""Multirun + DDP: Lightning's `ddp` launcher re-runs the whole command on every extra rank, which under
`-m` would re-launch the sweep from each rank. tlcli runs DDP sweeps with ddp_spawn (gloo on CPU)."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import summary_of


def test_ddp_sweep_gives_one_run_dir_per_job(tlcli, tmp_path: Path) -> None:
    result = tlcli(
        "train", "-m", "experiment=smoke", "model=embedded", "strategy=freeze,finetune", "trainer=ddp",
        "trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp", f"hydra.sweep.dir={tmp_path}/s",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert log.count("Launching 2 jobs") == 1  # the sweep was launched once, not once per rank
    assert "using ddp_spawn instead" in log
    runs = sorted(p for p in (tmp_path / "s").iterdir() if p.is_dir())
    assert [p.name for p in runs] == ["0", "1"]
    summaries = [summary_of(p) for p in runs]
    assert [s["strategy"] for s in summaries] == ["freeze", "finetune"]
    assert summaries[0]["metrics"]["test/acc"] > 0.5  # the frozen Fashion-MNIST features separate the prototypes
    assert all((p / "model.safetensors").is_file() and (p / "checkpoints" / "best.ckpt").is_file() for p in runs)


def test_ddp_is_kept_where_the_cluster_starts_the_ranks(monkeypatch) -> None:
    """Inside a SLURM job step (one task per GPU) or torchrun, ranks exist already: no switch to ddp_spawn."""
    from tl_cli.transfer.speed import cluster_starts_processes

    for var in ("SLURM_NTASKS", "SLURM_JOB_NAME", "LOCAL_RANK", "GROUP_RANK", "RANK", "WORLD_SIZE", "MASTER_ADDR"):
        monkeypatch.delenv(var, raising=False)
    assert not cluster_starts_processes()
    monkeypatch.setenv("SLURM_NTASKS", "4")
    monkeypatch.setenv("SLURM_JOB_NAME", "tlcli-sweep")
    assert cluster_starts_processes()
