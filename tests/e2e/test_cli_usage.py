"""The command line itself: help, Hydra flags, startup without torch, one-line errors."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, assert_one_line_error


def test_help_lists_commands(tlcli) -> None:
    result = tlcli("--help")
    assert result.returncode == 0 and "train" in result.stdout


def test_hydra_flags_work(tlcli) -> None:
    job = tlcli("train", "--cfg", "job", "strategy=freeze", "model.backbone=test_vit", "+trainer.max_steps=5")
    assert job.returncode == 0, job.stderr
    assert "name: freeze" in job.stdout and "backbone: test_vit" in job.stdout and "max_steps: 5" in job.stdout
    assert "strategy: extend_finetune" not in job.stdout
    removed = tlcli("train", "--cfg", "job", "~logger")
    assert removed.returncode == 0 and "CSVLogger" not in removed.stdout
    helped = tlcli("train", "--help")
    assert helped.returncode == 0 and "strategy: auto, extend_finetune, extend_freeze, finetune, freeze, scratch" in (
        helped.stdout
    )


def test_user_config_dir(tlcli, tmp_path: Path) -> None:
    (tmp_path / "mine" / "experiment").mkdir(parents=True)
    (tmp_path / "mine" / "experiment" / "pets.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /strategy: freeze\ndata:\n  batch_size: 7\n"
    )
    result = tlcli("train", "--config-dir", str(tmp_path / "mine"), "experiment=pets", "--cfg", "job")
    assert result.returncode == 0, result.stderr
    assert "batch_size: 7" in result.stdout and "name: freeze" in result.stdout


def test_startup_does_not_import_torch() -> None:
    code = (
        "import sys; from tl_cli.cli import main; rc = main(['train', '--cfg', 'job']); "
        "assert rc == 0; assert 'torch' not in sys.modules and 'lightning' not in sys.modules, 'heavy import'"
    )
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    print(f"tlcli train --cfg job in-process: {time.perf_counter() - start:.2f}s")


def test_command_import_freezes_what_it_imports() -> None:
    """torch, timm and Lightning are imported with no collection running and then frozen out of all later ones
    (shorter import and exit); the collector is on again for what the run creates, and a later command in the same
    process freezes nothing more (it would take a finished job's uncollected objects)."""
    code = """
import gc, sys
from tl_cli.cli import _import_command
collections = []
gc.callbacks.append(lambda phase, info: collections.append(phase))
before = gc.get_freeze_count()
module = _import_command("train")
frozen = gc.get_freeze_count()
assert "torch" in sys.modules and frozen - before > 100_000, (before, frozen)
assert collections == [], f"{len(collections) // 2} collections ran during the import"
assert gc.isenabled()
assert _import_command("eval").__name__ == "tl_cli.commands.evaluate" and gc.get_freeze_count() == frozen
assert _import_command("train") is module
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["strategy=frezze"], ["unknown strategy 'frezze'", "did you mean 'freeze'"]),
        (["data=mnist"], ["unknown dataset 'mnist'", "digits"]),
        (["model.backbone=resnet19"], ["unknown timm backbone 'resnet19'", "resnet18"]),
        (["model.backbon=resnet18"], ["unknown config key 'model.backbon'", "model.backbone"]),
        (["trainer.max_epochs=abc"], ["trainer.max_epochs", "abc"]),
        (["data.batch_size=abc"], ["data.batch_size", "abc"]),
        (["data.batch_size=0"], ["data.batch_size=0 must be positive"]),
        (["data.num_workers=many"], ["data.num_workers=many", "use auto or an integer"]),
        (["optim.lr=-1"], ["optim.lr=-1"]),
        (["data=image_folder", "data.root=/nonexistent/pets"], ["/nonexistent/pets", "does not exist"]),
        (["+trainer.max_epoch=3"], ["unknown trainer key 'max_epoch'", "max_epochs"]),
        (["trainer.max_epoch=3"], ["unknown config key 'trainer.max_epoch'", "did you mean 'trainer.max_epochs'"]),
        (["trainer.enable_progress_bar=false"], ["'+trainer.enable_progress_bar=<value>'"]),  # a Trainer argument
        (["optim.name=adamww"], ["unknown optim.name 'adamww'", "did you mean 'adamw'"]),
        (["trainer.precision=bf17"], ["unknown trainer.precision 'bf17'", "bf16-mixed", "32-true", "auto"]),
        (["data=synthetic", "data.root=/nonexistent/x"], ["/nonexistent/x", "does not exist"]),
        (["strategy=freeze", "strategy.extension.hidden_dims=[8]"], ["strategy=extend_freeze"]),
        (["model.weights=/nonexistent/w.safetensors"], ["/nonexistent/w.safetensors"]),
    ],
)
def test_bad_input_is_one_line(tlcli, tmp_path: Path, args: list[str], needles: list[str]) -> None:
    """Checked before any backbone or data is built (no log line of building them), and the run dir Hydra made
    for the failed command is gone."""
    result = tlcli("train", "experiment=smoke", *args)
    assert_one_line_error(result, *needles)
    assert "backbone=" not in result.stdout + result.stderr and "data synthetic:" not in result.stdout
    runs = tmp_path / "outputs" / "train" / "runs"
    assert not runs.is_dir() or not any(runs.iterdir()), list(runs.iterdir())


def test_unknown_command(tlcli) -> None:
    assert_one_line_error(tlcli("trian"), "unknown command 'trian'", "did you mean 'train'")


def test_hub_unreachable_is_quick_and_clear(tlcli) -> None:
    start = time.perf_counter()
    result = tlcli(
        "train",
        "experiment=smoke",
        "strategy=freeze",
        "model.weights=hub",
        env={"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_CACHE": "/nonexistent-cache"},
    )
    assert_one_line_error(result, "model.weights=hub", "model.weights=/path/to/weights.safetensors")
    assert time.perf_counter() - start < 60  # includes interpreter + torch import on a busy 2-core box
