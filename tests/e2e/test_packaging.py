"""A regular (non-editable) install finds its configs and the embedded source model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


def test_wheel_ships_configs_and_assets(tmp_path: Path) -> None:
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(REPO)],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    wheel = next((tmp_path / "dist").glob("tlcli-*.whl"))
    subprocess.run(
        [*pip, "install", "--no-deps", "--target", str(tmp_path / "site"), str(wheel)], check=True, capture_output=True
    )
    site = tmp_path / "site"
    assert (site / "tl_cli" / "configs" / "train.yaml").is_file()
    assert (site / "tl_cli" / "configs" / "strategy" / "freeze.yaml").is_file()
    assert (site / "tl_cli" / "assets" / "fashion_mnist_test_resnet.safetensors").is_file()
    # the study's tools stay in the repo (study/), not in the product
    assert not (site / "study").exists() and (site / "tl_cli" / "reporting" / "report.py").is_file()
    assert not list(site.rglob("extend_grid.py")) and not list(site.rglob("study_doc.py"))
    env = {**os.environ, "PYTHONPATH": str(site)}
    code = (
        "import tl_cli, sys; from tl_cli.config.paths import config_dir; "
        "from tl_cli.cli import main; print(tl_cli.__file__); print(config_dir()); "
        "sys.exit(main(['train', '--cfg', 'job']))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(str(site)) and lines[1] == str(site / "tl_cli" / "configs")
    assert "name: extend_finetune" in result.stdout
