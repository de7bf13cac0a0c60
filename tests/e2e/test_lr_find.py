"""`tlcli lr-find`: Lightning's Tuner.lr_find on train's job, as real subprocess runs on the tiny smoke config."""

from __future__ import annotations

import json
import re

import pytest

from tests.conftest import SMOKE, assert_one_line_error, compose, run_dir_of

EMBEDDED = [*SMOKE, "model=embedded"]
SWEEP = {"min_lr": 1e-5, "max_lr": 0.5, "num_training": 30}
SWEEP_ARGS = [f"lr_find.{k}={v}" for k, v in SWEEP.items()]


@pytest.mark.parametrize("strategy", ["freeze", "finetune"])  # head only (feature cache on); every layer
def test_lr_find_prints_a_suggestion_and_writes_plot_and_json(tlcli, strategy: str) -> None:
    # smoke's 2 epochs of 2 batches are far fewer than num_training: the sweep still takes all its steps
    result = tlcli("lr-find", *EMBEDDED, f"strategy={strategy}", *SWEEP_ARGS)
    run_dir = run_dir_of(result)
    assert run_dir.parent.parent.name == "lr_find"  # outputs/lr_find/runs/<time>, beside train's runs
    match = re.search(r"^suggested optim\.lr=(\S+)$", result.stdout, re.MULTILINE)
    assert match, result.stdout[-2000:]
    suggested = float(match.group(1))
    assert SWEEP["min_lr"] <= suggested <= SWEEP["max_lr"]

    found = json.loads((run_dir / "lr_find.json").read_text())
    lrs, losses = found["lrs"], found["losses"]
    assert 20 <= len(lrs) == len(losses) <= SWEEP["num_training"]  # fewer only if the loss diverged
    assert lrs == sorted(lrs) and lrs[0] == pytest.approx(SWEEP["min_lr"])
    assert found["suggestion"] in lrs and float(f"{found['suggestion']:.3g}") == suggested
    assert (run_dir / "lr_find.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(run_dir.glob(".lr_find_*.ckpt")), "Lightning's temporary checkpoint is removed"

    # the printed line pastes into `tlcli train` as it is
    pasted = compose([*EMBEDDED, f"strategy={strategy}", match.group(0).removeprefix("suggested ")])
    assert pasted.optim.lr == suggested


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["strategy=auto"], ["strategy=auto", "concrete strategy"]),
        (["lr_find.num_training=5"], ["lr_find.num_training=5", "at least 20"]),
        (["lr_find.min_lr=0.1", "lr_find.max_lr=0.01"], ["lr_find.min_lr=0.1", "lr_find.max_lr=0.01"]),
        (["lr_find.maxlr=1"], ["lr_find.maxlr"]),
    ],
)
def test_lr_find_bad_values_are_one_line(tlcli, args: list[str], needles: list[str]) -> None:
    result = tlcli("lr-find", *EMBEDDED, *args)
    assert_one_line_error(result, *needles)
    assert "tl_cli.data" not in result.stderr + result.stdout, "refused before any data is built"


def test_lr_find_keeps_the_train_config_it_reuses() -> None:
    """configs/lr_find.yaml composes train's config and adds lr_find: a group's value (smoke's optim.min_steps=0)
    survives the added schema, whose defaults would otherwise reset it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from tl_cli.config.commands import register_command_schemas
    from tl_cli.config.paths import config_dir

    compose([])  # registers train's schema and the resolvers
    register_command_schemas()
    overrides = ["experiment=smoke", "strategy=freeze", "optim.lr=0.003", "lr_find.num_training=40"]
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = hydra_compose(config_name="lr_find", overrides=overrides)
    train = compose(overrides[:3])
    assert cfg.lr_find.num_training == 40 and cfg.task_name == "lr_find"
    for key in ("strategy", "model", "data", "optim", "trainer", "logger", "callbacks"):
        assert cfg[key] == train[key], key
    assert cfg.optim.min_steps == 0 and cfg.optim.lr == 0.003


def test_lr_find_is_a_command(tlcli) -> None:
    result = tlcli("--help")
    assert re.search(r"^  lr-find\s+Lightning's LR range test", result.stdout, re.MULTILINE), result.stdout
