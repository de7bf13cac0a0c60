"""The parts behind curves, calibration and TTA, on real objects: Lightning's CSV logger, torchmetrics ECE, LBFGS
temperature fitting, a real timm model under TTA."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from tl_cli.errors import TlcliError
from tl_cli.reporting.curves import plot_curves
from tl_cli.reporting.diagnostics import most_confused
from tl_cli.run.tta import combine, view_logits, views_of
from tl_cli.rundir import read_epochs
from tl_cli.transfer.calibration import TEMPERATURE_RANGE, calibrate, ece, fit_temperature
from tl_cli.transfer.metrics_log import CSVLogger


def overconfident(n: int = 4000, classes: int = 5, sharpen: float = 4.0, seed: int = 0):
    """A deliberately over-confident model: labels are drawn from softmax(z), the model outputs sharpen x z."""
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(n, classes, generator=generator) * 1.5
    labels = torch.multinomial(z.softmax(dim=1), 1, generator=generator).squeeze(1)
    return z * sharpen, labels


def test_temperature_scaling_lowers_ece_of_an_overconfident_model() -> None:
    logits, labels = overconfident()
    before = ece(logits.softmax(dim=1), labels)
    temperature = fit_temperature(logits, labels)
    after = ece((logits / temperature).softmax(dim=1), labels)
    assert 0 <= after < before <= 1
    assert before > 0.1 and after < 0.5 * before
    assert temperature == pytest.approx(4.0, rel=0.15)  # it undoes the sharpening
    # held-out: a temperature fitted on one draw calibrates another draw of the same model
    held_logits, held_labels = overconfident(seed=1)
    assert ece((held_logits / temperature).softmax(dim=1), held_labels) < ece(held_logits.softmax(dim=1), held_labels)


def test_a_calibrated_model_keeps_a_temperature_near_one_and_a_separable_one_is_bounded() -> None:
    logits, labels = overconfident(sharpen=1.0)
    assert fit_temperature(logits, labels) == pytest.approx(1.0, abs=0.15)
    separable = torch.eye(3).repeat(10, 1) * 0.5  # every image right, at low confidence
    found = calibrate(separable, torch.arange(3).repeat(10), "val")
    assert found.temperature == TEMPERATURE_RANGE[0] and found.nll_calibrated < found.nll
    assert 0 <= found.ece_calibrated <= found.ece <= 1


def test_csv_logger_keeps_earlier_rows_when_a_run_resumes(tmp_path: Path) -> None:
    first = CSVLogger(tmp_path, name="", version="")
    first.log_metrics({"epoch": 0, "val/acc": 0.5}, step=3)
    first.save()
    resumed = CSVLogger(tmp_path, name="", version="")  # Lightning's own would delete metrics.csv here
    resumed.log_metrics({"epoch": 1, "val/acc": 0.75, "val/loss": 0.4}, step=7)  # a new column too
    resumed.save()
    with open(tmp_path / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["epoch"], r["val/acc"], r["val/loss"]) for r in rows] == [("0", "0.5", ""), ("1", "0.75", "0.4")]


def test_read_epochs_gives_each_lr_to_the_epoch_it_starts_and_later_rows_win(tmp_path: Path) -> None:
    path = tmp_path / "metrics.csv"
    path.write_text(
        "epoch,lr-AdamW/head,lr-AdamW/head_no_wd,step,train/acc,val/acc\n"
        ",0.01,0.01,0,,\n0,,,3,,0.5\n0,,,3,0.4,\n"
        ",0.005,0.005,4,,\n1,,,7,,0.6\n"
        "1,,,7,,0.7\n"  # epoch 1 logged again after a resume: the later value wins
    )
    log = read_epochs(path)
    assert log.epochs == [0, 1]
    assert log.lrs["AdamW/head"] == {0: 0.01, 1: 0.005}
    assert log.metrics["val/acc"] == {0: 0.5, 1: 0.7} and log.metrics["train/acc"] == {0: 0.4}
    assert plot_curves(path, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "empty.csv").write_text("epoch,step\n")
    assert not plot_curves(tmp_path / "empty.csv", tmp_path / "none.png")


def test_tta_averages_the_softmax_of_the_views_of_a_real_model() -> None:
    import timm

    net = timm.create_model("test_resnet", num_classes=3).eval()
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():

        def logits_of(batch: torch.Tensor) -> torch.Tensor:
            return net(batch.float() / 255)

        views = view_logits(logits_of, images, views_of(True, ["identity", "hflip"]))
        expected = (logits_of(images).softmax(1) + logits_of(images.flip(-1)).softmax(1)) / 2
    assert torch.allclose(combine(views).exp(), expected, atol=1e-6)
    assert torch.allclose(combine(views[:1]).softmax(1), views[0].softmax(1), atol=1e-6)  # one view: plain
    assert views_of(False, ["hflip"]) == ("identity",)
    with pytest.raises(TlcliError, match="unknown tta_views 'rot'"):
        views_of(True, ["rot"])


def test_most_confused_lists_off_diagonal_counts_most_frequent_first() -> None:
    matrix = torch.tensor([[5, 2, 0], [1, 4, 3], [0, 2, 6]])
    assert most_confused(matrix, ["a", "b", "c"]) == [["b", "c", 3], ["a", "b", 2], ["c", "b", 2], ["b", "a", 1]]
