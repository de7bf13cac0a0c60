"""`tlcli report <multirun dir>` on a real 4-job sweep (2 strategies x 2 seeds) plus one unfinished job."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import TLCLI, assert_one_line_error


def _tlcli(*args: str, out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "TLCLI_OUTPUT_DIR": str(out)}
    env.pop("TLCLI_DEBUG", None)
    return subprocess.run([str(TLCLI), *args], capture_output=True, text=True, env=env, timeout=600, cwd=out)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """A finished sweep, then job 4 = a copy of job 3 that 'died' (no summary.json), then the report."""
    out = tmp_path_factory.mktemp("report")
    args = ["-m", "experiment=smoke", "trainer.max_epochs=2", "strategy=freeze,finetune", "seed=1,2"]
    trained = _tlcli("train", *args, f"hydra.sweep.dir={out}/sweep", out=out)
    assert trained.returncode == 0, trained.stderr[-3000:]
    shutil.copytree(out / "sweep" / "3", out / "sweep" / "4")
    (out / "sweep" / "4" / "summary.json").unlink()
    return out / "sweep", trained


@pytest.fixture(scope="module")
def reported(sweep) -> subprocess.CompletedProcess:
    result = _tlcli("report", str(sweep[0]), out=sweep[0].parent)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_sweep_names_the_report_command(sweep) -> None:
    folder, trained = sweep
    assert trained.stdout.strip().splitlines()[-1] == f"report: tlcli report {folder}"


def test_report_markdown_groups_seeds_and_lists_unfinished(sweep, reported) -> None:
    folder = sweep[0]
    assert reported.stdout.strip().splitlines()[-1] == f"report: {folder / 'report.md'}"
    text = (folder / "report.md").read_text()
    table, failed = text.split("## Failed or unfinished runs")
    rows = [line for line in table.splitlines() if line.startswith("| ") and "test_resnet" in line]
    assert len(rows) == 2 and {r.split(" | ")[1] for r in rows} == {"freeze", "finetune"}
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split(" | ")]
        assert cells[6] == "2 (1, 2)" and "±" in cells[7] and "±" in cells[8], row
        assert float(cells[5]) > 0  # the learning rate: runs at another LR would be another group
    assert rows[0].startswith("| best |")
    means = [float(r.split(" | ")[8].split(" ± ")[0]) for r in rows]
    assert means == sorted(means, reverse=True)
    assert "tie with best" in table and "pooled std" in table  # the rule is written down
    assert str(folder / "4") in failed and "strategy=finetune" in failed and "seed=2" in failed


def test_report_csv_has_every_job_with_status(sweep, reported) -> None:
    with open(sweep[0] / "report.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["job"] for r in rows] == ["0", "1", "2", "3", "4"]
    assert [r["status"] for r in rows] == ["ok"] * 4 + ["unfinished"]
    assert [r["strategy"] for r in rows] == ["freeze", "freeze", "finetune", "finetune", "finetune"]
    assert all(0 <= float(r["test_acc"]) <= 1 for r in rows[:4]) and rows[4]["test_acc"] == ""
    assert int(rows[0]["trainable_params"]) < int(rows[2]["trainable_params"]) == int(rows[2]["total_params"])


def test_report_png_is_a_real_image(sweep, reported) -> None:
    png = sweep[0] / "report.png"
    assert png.stat().st_size > 20_000
    with Image.open(png) as image:
        image.verify()
    with Image.open(png) as image:
        assert image.format == "PNG" and image.width > 600 and image.height > 300


def test_report_bad_folders(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    assert_one_line_error(_tlcli("report", str(missing), out=tmp_path), str(missing), "tlcli report")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(_tlcli("report", str(tmp_path / "empty"), out=tmp_path), "no runs in", "tlcli train -m")
    assert_one_line_error(_tlcli("report", out=tmp_path), "tlcli report <multirun dir>")
