"""model.compile, trainer.accumulate_grad_batches and trainer.gradient_clip_val (issue 15): a compiled `tlcli
train` saves the same weights an eager one would (no `_orig_mod.` keys, a frozen backbone bit-identical, `tlcli
eval` reproduces its test metrics) and reports its compile time; accumulation and clipping change what the
optimizer steps with, seen from a real Trainer built by tlcli's own steps; bad values are one-line errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import lightning as L
import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import SMOKE, assert_one_line_error, compose, run_dir_of, summary_of

ASSETS = Path(__file__).resolve().parents[2] / "tl_cli" / "assets"


@pytest.mark.parametrize(
    "overrides, needles",
    [
        (["trainer.accumulate_grad_batches=0"], ["trainer.accumulate_grad_batches=0", ">= 1"]),
        (["trainer.accumulate_grad_batches=1.5"], ["trainer.accumulate_grad_batches=1.5", "integer"]),
        (["trainer.gradient_clip_val=-1"], ["trainer.gradient_clip_val=-1", ">= 0"]),
        (["trainer.gradient_clip_algorithm=norm2"], ["norm2", "norm, value"]),
        (["model.compile=maybe"], ["model.compile"]),
    ],
)
def test_bad_values_are_one_line_errors(tlcli, overrides: list[str], needles: list[str]) -> None:
    assert_one_line_error(tlcli("train", *SMOKE, *overrides), *needles)


def test_compile_where_the_backend_cannot_build_is_one_line(tlcli, tmp_path: Path) -> None:
    # inductor on a CPU compiles C++: with no working compiler (and no cached kernel) it cannot
    env = {"CXX": str(tmp_path / "no-such-c++"), "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    result = tlcli("train", *SMOKE, "model.compile=true", env=env)
    assert_one_line_error(result, "model.compile=true", "C++ compiler", "set model.compile=false")
    assert not list((tmp_path / "outputs").rglob("summary.json"))


@pytest.mark.slow  # torch.compile builds C++ kernels on the CPU
def test_compiled_training_saves_eager_weights_keeps_the_frozen_backbone_and_reports_its_compile_time(
    tlcli, tmp_path: Path
) -> None:
    # the whole network compiled (feature cache off), its frozen backbone in eval mode; fp32, so `tlcli eval`
    # (eager, fp32) reproduces the run's test metrics
    overrides = ["model=embedded", "strategy=freeze", "data.cache_features=false", "trainer.precision=32-true"]
    run = run_dir_of(tlcli("train", *SMOKE, *overrides, "model.compile=true"))
    summary = summary_of(run)
    assert summary["compile_seconds"] > 0 and not summary["feature_cache"]
    assert "model.compile: " in (run / "train.log").read_text()

    saved = load_file(run / "model.safetensors")
    source = load_file(ASSETS / "fashion_mnist_test_resnet.safetensors")
    backbone = [k for k in source if k.startswith("backbone.")]
    assert {k.split(".")[0] for k in saved} == {"backbone", "head"}
    assert sorted(k for k in saved if k.startswith("backbone.")) == sorted(backbone)  # no `_orig_mod.` keys
    assert backbone and all(torch.equal(saved[k], source[k]) for k in backbone)  # weights and BN statistics
    ckpt = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)
    assert {f"net.{k}" for k in saved} == {k for k in ckpt["state_dict"] if k.startswith("net.")}

    result = tlcli("eval", f"ckpt={run}", f"output_dir={tmp_path / 'eval'}")
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((tmp_path / "eval" / "metrics.json").read_text())["metrics"]
    assert report["acc"] == pytest.approx(summary["metrics"]["test/acc"], abs=1e-6)
    assert report["loss"] == pytest.approx(summary["metrics"]["test/loss"], abs=1e-4)


@pytest.mark.parametrize("seconds, extra", [([], 0.0), ([3.0], 3.0), ([5.0, 1.0, 1.2, 0.8], 4.0), ([1, 2, 3], 0.0)])
def test_first_step_extra_is_the_first_steps_time_over_the_median_of_the_next(seconds, extra) -> None:
    from tl_cli.transfer.callbacks import Throughput

    throughput = Throughput()
    throughput.step_seconds = seconds
    assert throughput.first_step_extra() == pytest.approx(extra)


def _grad_norm(module: L.LightningModule, kind: str) -> float:
    """The gradients' total 2-norm ('norm') or largest absolute element ('value')."""
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if kind == "value":
        return max(g.abs().max().item() for g in grads)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item()


class _Steps(L.Callback):
    """Batches, optimizer steps, and the gradients before clipping (Lightning calls on_before_optimizer_step
    before it clips) and as the optimizer stepped with them (a post-hook on the optimizer's step: Lightning runs
    forward and backward inside optimizer.step, so a pre-hook would see no gradients yet)."""

    def __init__(self, kind: str = "norm") -> None:
        self.kind, self.batches, self.before, self.stepped = kind, 0, [], []

    def on_train_start(self, trainer, pl_module) -> None:
        record = lambda optimizer, args, kwargs: self.stepped.append(_grad_norm(pl_module, self.kind))  # noqa: E731
        trainer.optimizers[0].register_step_post_hook(record)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.before.append(_grad_norm(pl_module, self.kind))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.batches += 1


def _fit(tmp_path: Path, overrides: list[str], recorder: _Steps) -> L.Trainer:
    """A real fit of the composed `tlcli train` config through tlcli's own steps (build_job, make_trainer)."""
    from tl_cli.run.training import build_job, make_trainer

    cfg = compose([
        *SMOKE, "strategy=finetune", "trainer.precision=32-true", f"trainer.default_root_dir={tmp_path}",
        "+trainer.enable_checkpointing=false", "+trainer.enable_progress_bar=false", "+trainer.limit_val_batches=0",
        *overrides,
    ])  # fmt: skip
    job = build_job(cfg)
    trainer, _ = make_trainer(cfg.trainer, "false", [recorder], [])
    trainer.fit(job.module, datamodule=job.datamodule)
    return trainer


@pytest.mark.slow  # trains twice
@pytest.mark.parametrize("accumulate", [1, 2])
def test_accumulate_grad_batches_steps_the_optimizer_every_n_batches_and_min_steps_counts_steps(
    tmp_path: Path, accumulate: int
) -> None:
    steps = _Steps()
    overrides = [f"trainer.accumulate_grad_batches={accumulate}", "optim.min_steps=20", "trainer.max_epochs=2"]
    trainer = _fit(tmp_path, overrides, steps)
    # optim.min_steps=20 over 2 epochs: the train set repeats to 10 x accumulate batches per epoch
    assert steps.batches == 20 * accumulate
    assert trainer.global_step == len(steps.stepped) == len(steps.before) == 20


@pytest.mark.slow  # trains twice
@pytest.mark.parametrize("kind, clip", [("norm", 0.05), ("value", 0.002)])
def test_gradient_clip_val_clips_what_the_optimizer_steps_with(tmp_path: Path, kind: str, clip: float) -> None:
    steps = _Steps(kind)
    overrides = [f"trainer.gradient_clip_val={clip}", f"trainer.gradient_clip_algorithm={kind}"]
    _fit(tmp_path, [*overrides, "trainer.max_epochs=1", "optim.min_steps=6"], steps)
    assert len(steps.before) == len(steps.stepped) >= 6
    assert max(steps.before) > 2 * clip  # clipping had work to do
    for before, stepped in zip(steps.before, steps.stepped, strict=True):
        if kind == "norm":  # scaled to the clip norm (Lightning's clip_grad_norm_ adds 1e-6 to the divisor)
            assert stepped == pytest.approx(min(before, clip), rel=1e-3)
        else:  # elements clamped to +-clip
            assert stepped == pytest.approx(min(before, clip), rel=1e-6)


@pytest.mark.slow
def test_without_clipping_the_optimizer_steps_with_the_raw_gradients(tmp_path: Path) -> None:
    steps = _Steps()
    _fit(tmp_path, ["trainer.max_epochs=1", "optim.min_steps=6"], steps)
    assert steps.stepped == steps.before and all(math.isfinite(n) and n > 0 for n in steps.stepped)
