"""An explicit trainer.max_epochs is honoured as given (docs/configuration.md): optim.min_steps repeats a small
train set only under the default epochs, or where the command sets optim.min_steps too."""

from __future__ import annotations

import torch
import yaml

from tests.conftest import run_dir_of

# 4 classes x 32 synthetic train images at batch 32: 4 optimizer steps per pass over the data
TINY = ["model=tiny", "data=synthetic", "trainer.accelerator=cpu", "strategy=freeze", "trainer.precision=32-true"]


def _steps(run_dir) -> int:
    return int(torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["global_step"])


def test_given_max_epochs_trains_exactly_those_epochs_over_the_data(tlcli) -> None:
    run = run_dir_of(tlcli("train", *TINY, "trainer.max_epochs=2"))
    assert _steps(run) == 2 * 4  # not optim.min_steps=300's repeats
    assert "optim.min_steps=0" in yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text())
    assert yaml.safe_load((run / ".hydra" / "config.yaml").read_text())["optim"]["min_steps"] == 0


def test_min_steps_given_with_max_epochs_still_repeats_the_data(tlcli) -> None:
    run = run_dir_of(tlcli("train", *TINY, "trainer.max_epochs=1", "optim.min_steps=10"))
    assert _steps(run) == 10
