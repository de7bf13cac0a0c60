"""What needs a CUDA GPU: run by `make gpu-check` on a GPU machine (docs/scaling.md); skipped everywhere else."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import SMOKE, run_dir_of, summary_of

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (make gpu-check)"),
]
GPU_SMOKE = [*SMOKE, "trainer.accelerator=gpu"]


def test_precision_auto_is_bf16_mixed_on_a_bf16_gpu() -> None:
    from tl_cli.hardware import resolve

    precision, channels_last, _ = resolve("auto", "auto", "gpu")
    assert precision == ("bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed")
    assert channels_last  # 16-bit precision turns channels_last on


def test_train_on_the_gpu_with_channels_last_and_compile(tlcli) -> None:
    run = run_dir_of(tlcli("train", *GPU_SMOKE, "model.compile=true", "strategy=finetune"))
    summary = summary_of(run)
    assert summary["device"].startswith("cuda")
    assert summary["precision"] in ("bf16-mixed", "16-mixed") and summary["channels_last"] is True
    assert summary["compile_seconds"] > 0


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_ddp_with_nccl_on_two_gpus(tlcli, tmp_path) -> None:
    run = run_dir_of(tlcli("train", *GPU_SMOKE, "trainer.devices=2", "trainer.strategy=ddp"))
    assert [p for p in (tmp_path / "outputs").rglob(".hydra")] == [run / ".hydra"]
    assert summary_of(run)["device"].startswith("cuda")
