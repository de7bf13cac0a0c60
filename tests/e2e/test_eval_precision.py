"""`tlcli eval` and `predict` at bf16-mixed agree with fp32 on a tiny trained run (real subprocess runs).

Tolerances (bf16 keeps 8 mantissa bits): accuracy within 2 points, top-1 agreement on >= 90% of images, softmax
scores within 0.05. No exact float comparison: bf16 numerics differ between CPUs (AMX, AVX512-BF16, emulated).
"""

from __future__ import annotations

import csv
import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import USE_SHORT, USE_TRAIN, assert_one_line_error, last_line, run_dir_of, tlcli_runner

# slow: bf16 against fp32 evaluation (make test-all and CI run them)
pytestmark = pytest.mark.slow


ACC_POINTS = 0.02
TOP1_AGREEMENT = 0.9
SOFTMAX_ABS = 0.05


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("eval_precision")


@pytest.fixture(scope="module")
def cli(work: Path) -> Callable[..., subprocess.CompletedProcess]:
    return tlcli_runner(work / "outputs", work)


@pytest.fixture(scope="module")
def trained(cli) -> Path:
    """One tiny fp32 run (conftest's USE_TRAIN, as test_use_model.py's) shared by the tests here."""
    return run_dir_of(cli(*USE_TRAIN, *USE_SHORT))


def evaluate(cli, run: Path, work: Path, precision: str) -> dict:
    """metrics.json of `tlcli eval split=all` at `precision` (auto: the option left out)."""
    forced = [] if precision == "auto" else [f"precision={precision}"]
    result = cli("eval", f"ckpt={run}", "split=all", f"output_dir={work / f'eval_{precision}'}", *forced)
    return json.loads(last_line(result, "metrics").read_text())


def test_bf16_eval_agrees_with_fp32(cli, trained: Path, work: Path) -> None:
    auto, fp32, bf16 = (evaluate(cli, trained, work, p) for p in ("auto", "32", "bf16-mixed"))
    assert (auto["precision"], auto["channels_last"]) == ("32-true", False)  # the run trained at 32-true
    assert (fp32["precision"], bf16["precision"], bf16["channels_last"]) == ("32-true", "bf16-mixed", True)
    assert auto["metrics"] == fp32["metrics"]
    assert bf16["num_images"] == fp32["num_images"] == 192  # split=all of the synthetic set: enough to compare
    assert abs(bf16["metrics"]["acc"] - fp32["metrics"]["acc"]) <= ACC_POINTS
    assert bf16["metrics"]["loss"] == pytest.approx(fp32["metrics"]["loss"], abs=0.02)
    assert bf16["metrics"]["loss"] != fp32["metrics"]["loss"]  # it really ran in bf16


def predict(cli, run: Path, folder: Path, out: Path, precision: str) -> dict[str, dict[str, float]]:
    """path -> {class: softmax score} of every class (topk=all)."""
    result = cli("predict", f"ckpt={run}", f"inputs={folder}", "topk=100", f"output={out}", f"precision={precision}")
    assert last_line(result, "predictions") == out
    assert f"at precision={'32-true' if precision == '32' else precision}" in result.stdout
    with open(out) as f:
        rows = list(csv.DictReader(f))
    return {
        r["path"]: dict(zip(r["topk_labels"].split("|"), map(float, r["topk_scores"].split("|")), strict=True))
        for r in rows
    }


def test_bf16_predict_agrees_with_fp32(cli, trained: Path, work: Path) -> None:
    from sklearn.datasets import load_digits

    folder = work / "digits"
    folder.mkdir()
    for i, image in enumerate(np.clip(load_digits().images[:64] * (255 / 16), 0, 255).astype(np.uint8)):
        Image.fromarray(image).save(folder / f"{i:02d}.png")
    fp32 = predict(cli, trained, folder, work / "fp32.csv", "32")
    bf16 = predict(cli, trained, folder, work / "bf16.csv", "bf16-mixed")
    assert list(fp32) == list(bf16) and len(fp32) == 64
    top1 = [max(fp32[p], key=fp32[p].get) == max(bf16[p], key=bf16[p].get) for p in fp32]
    assert np.mean(top1) >= TOP1_AGREEMENT, top1
    diff = max(abs(fp32[p][c] - bf16[p][c]) for p in fp32 for c in fp32[p])
    assert 0 < diff < SOFTMAX_ABS  # > 0: it really ran in bf16
    assert len(fp32[next(iter(fp32))]) == 4  # every class's score was compared


def test_bad_precision_is_one_line(cli, trained: Path) -> None:
    assert_one_line_error(cli("eval", f"ckpt={trained}", "precision=fp8"), "precision=fp8", "bf16-mixed")
    result = cli("predict", f"ckpt={trained}", f"inputs={trained}", "precision=bf16")
    assert_one_line_error(result, "precision=bf16", "bf16-mixed")
    result = cli("eval", f"ckpt={trained}", "device=cpu", "precision=16-mixed")
    assert_one_line_error(result, "precision=16-mixed", "CUDA GPU", "precision=bf16-mixed")
