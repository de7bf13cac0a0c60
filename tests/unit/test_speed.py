"""The documented fast-defaults rule (tl_cli/hardware.py)."""

from __future__ import annotations

import pytest
import torch

from tl_cli import hardware
from tl_cli.errors import TlcliError


def test_explicit_settings_win() -> None:
    assert hardware.resolve("32-true", "auto", "cpu") == ("32-true", False, "set in config")
    assert hardware.resolve("bf16-mixed", "auto", "cpu")[:2] == ("bf16-mixed", True)
    assert hardware.resolve("bf16-mixed", "false", "cpu")[:2] == ("bf16-mixed", False)


def test_auto_follows_the_hardware(monkeypatch) -> None:
    monkeypatch.delenv("TLCLI_PRECISION", raising=False)  # pytest --precision sets it for the session
    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: True)
    assert hardware.resolve("auto", "auto", "cpu")[:2] == ("bf16-mixed", True)
    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: False)
    precision, channels_last, reason = hardware.resolve("auto", "auto", "cpu")
    assert (precision, channels_last) == ("32-true", False) and "without native bf16" in reason


def test_workers_auto_is_sized_for_the_device(monkeypatch) -> None:
    assert hardware.resolve_workers("3", "cpu") == 3
    assert hardware.resolve_workers(0, "gpu") == 0
    assert hardware.resolve_workers("auto", "cpu") == 0  # the model's compute already uses every core
    monkeypatch.setattr(hardware.os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert hardware.resolve_workers("auto", "gpu") == 8  # capped
    assert hardware.resolve_workers("auto", "gpu", devices=4) == 3  # 16 cores / 4 GPUs, one left for the main process
    monkeypatch.setattr(hardware.os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert hardware.resolve_workers("auto", "gpu") == 1


def test_bad_worker_counts_are_refused() -> None:
    for bad in ("-1", "many", "1.5"):
        with pytest.raises(TlcliError, match=f"data.num_workers={bad} is not valid"):
            hardware.resolve_workers(bad)


def test_env_replaces_auto_only(monkeypatch) -> None:
    monkeypatch.setenv("TLCLI_PRECISION", "32-true")
    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: True)
    assert hardware.resolve("auto", "auto", "cpu")[:2] == ("32-true", False)
    assert hardware.resolve("bf16-mixed", "auto", "cpu")[:2] == ("bf16-mixed", True)


def test_torch_optimizers_get_their_fused_kernel_on_cpu_and_timm_ones_do_not() -> None:
    import torch

    cpu = torch.device("cpu")
    assert hardware.fused_optimizer_kwargs("adamw", cpu) == {"fused": True}
    assert hardware.fused_optimizer_kwargs("sgd", cpu) == {"fused": True}
    assert hardware.fused_optimizer_kwargs("lamb", cpu) == {}  # timm's own class: no fused kernel
    assert hardware.fused_optimizer_kwargs("adamw", torch.device("meta")) == {}


@pytest.mark.parametrize("fused", [True, False])
def test_the_module_builds_a_fused_optimizer_unless_told_not_to_and_it_trains_the_same(fused: bool) -> None:
    """optim.fused: the AdamW step lands within float rounding of torch's per-tensor loop; frozen weights get
    no gradient and stay bit-identical either way."""
    import lightning as L
    import timm
    import torch

    from tl_cli.transfer.module import TransferModule
    from tl_cli.transfer.network import TransferNet

    optim = {"name": "adamw", "lr": 0.01, "weight_decay": 0.05, "scheduler": "constant", "fused": fused}
    results = []
    for use_fused in (fused, False):
        torch.manual_seed(0)
        net = TransferNet(timm.create_model("test_resnet", num_classes=0), 3)
        net.freeze("backbone")
        module = TransferModule(net, 3, {**optim, "fused": use_fused})
        module.trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
        optimizer = module.configure_optimizers()
        assert optimizer.defaults.get("fused") is (True if use_fused else None)
        frozen = {k: v.clone() for k, v in net.backbone.state_dict().items()}
        torch.manual_seed(1)
        loss = module.net(torch.randn(4, 3, 32, 32)).logsumexp(dim=1).mean()
        loss.backward()
        optimizer.step()
        assert all(torch.equal(v, net.backbone.state_dict()[k]) for k, v in frozen.items())
        results.append(torch.cat([p.detach().flatten() for p in net.parameters() if p.requires_grad]))
    assert torch.allclose(results[0], results[1], atol=1e-6)


def test_devices_requested_reads_trainer_devices_as_lightning_does() -> None:
    """One reading of `trainer.devices`: the workers' core split and the data-parallel refusals both use it."""
    from omegaconf import OmegaConf

    from tl_cli.hardware import devices_requested
    from tl_cli.ranks import several_processes

    gpus = max(1, torch.cuda.device_count())
    assert [devices_requested(d) for d in (1, 4, "2", [0, 1, 2])] == [1, 4, 2, 3]
    assert devices_requested(-1) == devices_requested("auto") == devices_requested("-1", "gpu") == gpus
    assert devices_requested("auto", "cpu") == devices_requested(-1, "cpu") == 1
    assert not several_processes(OmegaConf.create({"devices": "auto", "accelerator": "cpu"}))
    assert several_processes(OmegaConf.create({"devices": 2, "accelerator": "cpu"}))
    assert several_processes(OmegaConf.create({"devices": 1, "num_nodes": 2}))
