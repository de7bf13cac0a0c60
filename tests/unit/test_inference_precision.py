"""eval's and predict's `precision=`: the run's precision re-resolved by train's rule (tl_cli/run/trained.py)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from tl_cli import hardware
from tl_cli.errors import TlcliError
from tl_cli.run.trained import TrainedModel, inference_for

CPU = torch.device("cpu")


def trained(precision: str | None, channels_last: str = "auto", run_dir: Path | None = None) -> TrainedModel:
    """A TrainedModel whose run trained at `precision` (None: an exported model, no config)."""
    config = None
    if precision is not None:
        config = OmegaConf.create({"trainer": {"precision": precision}, "model": {"channels_last": channels_last}})
    data_config = {"input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.25,) * 3}
    return TrainedModel(torch.nn.Identity(), ["a"], data_config, {}, config, run_dir, Path("model.safetensors"))


@pytest.fixture
def bf16_cpu(monkeypatch):
    """Set whether this CPU has native bf16; TLCLI_PRECISION (pytest --precision) would replace `auto`."""
    monkeypatch.delenv(hardware.PRECISION_ENV, raising=False)

    def set_native(native: bool) -> None:
        monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: native)

    return set_native


def test_a_bf16_run_follows_trains_auto_rule_on_this_cpu(bf16_cpu, caplog) -> None:
    bf16_cpu(True)
    run = inference_for("auto", trained("bf16-mixed"), CPU)
    assert (run.precision, run.channels_last) == ("bf16-mixed", True)
    bf16_cpu(False)
    with caplog.at_level(logging.INFO, logger="tl_cli.run.trained"):
        run = inference_for("auto", trained("bf16-mixed"), CPU)
    assert (run.precision, run.channels_last) == ("32-true", False)  # as trainer.precision=auto would here
    assert (run.precision, run.channels_last) == hardware.resolve("auto", "auto", "cpu")[:2]
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("precision=")]
    assert len(said) == 1 and "trained at bf16-mixed" in said[0] and "without native bf16" in said[0], said


def test_fp32_and_exported_models_stay_fp32(bf16_cpu) -> None:
    bf16_cpu(True)
    assert inference_for("auto", trained("32-true"), CPU).precision == "32-true"
    exported = inference_for("auto", trained(None), CPU)
    assert (exported.precision, exported.channels_last) == ("32-true", False)
    assert "exported" in exported.reason


def test_summary_precision_wins_over_the_config(bf16_cpu, tmp_path: Path) -> None:
    bf16_cpu(True)
    (tmp_path / "summary.json").write_text(json.dumps({"precision": "32-true"}))
    assert inference_for("auto", trained("auto", run_dir=tmp_path), CPU).precision == "32-true"
    (tmp_path / "summary.json").write_text(json.dumps({"precision": "bf16-mixed"}))
    assert inference_for("auto", trained("32-true", run_dir=tmp_path), CPU).precision == "bf16-mixed"


def test_forced_precision_keeps_the_runs_memory_format_setting(bf16_cpu) -> None:
    bf16_cpu(False)
    forced = inference_for("bf16-mixed", trained("32-true"), CPU)
    assert (forced.precision, forced.channels_last) == ("bf16-mixed", True)
    assert inference_for("bf16-mixed", trained("32-true", channels_last="false"), CPU).channels_last is False
    assert inference_for("32", trained("bf16-mixed"), CPU).precision == "32-true"


@pytest.mark.parametrize(
    ("value", "needle"), [("bf16", "precision=bf16 is not valid"), ("16-mixed", "needs a CUDA GPU")]
)
def test_bad_precision_names_value_and_fix(value: str, needle: str) -> None:
    with pytest.raises(TlcliError, match=needle) as error:
        inference_for(value, trained("32-true"), CPU)
    assert "bf16-mixed" in str(error.value) and "\n" not in str(error.value)


def test_bf16_logits_are_fp32_and_close_to_fp32() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(16, 5),
    )
    images = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8)  # as eval's and predict's DataLoaders give
    fp32 = inference_for("32", trained("32-true"), CPU)
    bf16 = inference_for("bf16-mixed", trained("32-true"), CPU)
    with torch.inference_mode():
        reference = fp32.logits(fp32.prepare(net), images)
        low = bf16.logits(bf16.prepare(net), images)
    assert low.dtype == torch.float32 and low.shape == reference.shape
    assert not torch.equal(low, reference)  # autocast really ran in bf16
    # bf16 keeps 8 mantissa bits: ~0.4% relative error per op
    assert (low.softmax(1) - reference.softmax(1)).abs().max() < 0.02
