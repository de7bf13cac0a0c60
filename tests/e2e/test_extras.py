"""A feature used without its pip extra stops with one line naming the extra (tl_cli/extras.py), before any work.

Absence is real, not mocked: tlcli runs on a copy of this venv's site-packages (symlinks) that leaves out the extra's
distributions, modules and metadata both, so Python, Hydra's plugin scan and importlib.metadata all miss them."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import sysconfig
from pathlib import Path, PurePath

import pytest

from tests.conftest import REPO, SMOKE, assert_one_line_error

NAMESPACES = ("hydra_plugins",)  # shared by several distributions: leave out only the distribution's part


def _hidden_paths(distributions: tuple[str, ...]) -> set[str]:
    hidden = set()
    for name in distributions:
        for file in importlib.metadata.distribution(name).files or []:
            parts = PurePath(file).parts
            if parts[0] != "..":  # console scripts live outside site-packages
                hidden.add("/".join(parts[:2] if parts[0] in NAMESPACES else parts[:1]))
    return hidden


def site_without(root: Path, *distributions: str) -> Path:
    """This venv's site-packages, as symlinks under `root`, without the given distributions."""
    hidden = _hidden_paths(distributions)
    root.mkdir(parents=True)
    for folder in {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}:
        for entry in Path(folder).resolve().iterdir():
            if entry.name in hidden or (root / entry.name).exists():
                continue
            if entry.name in NAMESPACES:
                (root / entry.name).mkdir()
                for part in entry.iterdir():
                    if f"{entry.name}/{part.name}" not in hidden:
                        (root / entry.name / part.name).symlink_to(part)
            else:
                (root / entry.name).symlink_to(entry)
    return root


def tlcli_without(tmp_path: Path, distributions: tuple[str, ...], *args: str) -> subprocess.CompletedProcess:
    """`tlcli <args>` (as `python -S -m tl_cli`: no site-packages but the filtered copy) without `distributions`."""
    site = site_without(tmp_path / "site", *distributions)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(site)]), "PYTHONNOUSERSITE": "1"}
    env["TLCLI_OUTPUT_DIR"] = str(tmp_path / "outputs")
    env.pop("TLCLI_DEBUG", None)
    command = [sys.executable, "-S", "-m", "tl_cli", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)


CASES = {
    "export": (
        ("onnx", "onnxruntime"),
        ("export", "ckpt=<tmp>/no_run"),
        "tlcli export format=onnx needs onnx and onnxruntime; pip install 'tlcli[export]'",
    ),
    "optuna": (
        ("hydra-optuna-sweeper", "optuna"),
        ("train", "hparams_search=optuna", *SMOKE),
        "hparams_search=optuna needs hydra-optuna-sweeper; pip install 'tlcli[optuna]'",
    ),
    "joblib": (
        ("hydra-joblib-launcher",),
        ("train", "-m", "hydra/launcher=joblib", *SMOKE),
        "hydra/launcher=joblib needs hydra-joblib-launcher; pip install 'tlcli[launchers]'",
    ),
    "submitit": (
        ("hydra-submitit-launcher", "submitit"),
        ("train", "-m", "hydra/launcher=submitit_local", *SMOKE),
        "hydra/launcher=submitit_local needs hydra-submitit-launcher; pip install 'tlcli[launchers]'",
    ),
    "tensorboard": (
        ("tensorboard",),
        ("train", "logger=tensorboard", *SMOKE),
        "logger=tensorboard needs tensorboard; pip install 'tlcli[tensorboard]'",
    ),
    "mlflow": (
        ("mlflow-skinny",),
        ("train", "logger=mlflow", *SMOKE),
        "logger=mlflow needs mlflow-skinny; pip install 'tlcli[trackers]'",
    ),
    "hf": (
        ("datasets",),
        ("train", "data=hf", "data.dataset=someone/data", *SMOKE),
        "data=hf needs datasets; pip install 'tlcli[hf]'",
    ),
    "webdataset": (
        ("webdataset",),
        ("train", "data=webdataset", "data.train=shards.tar", *SMOKE),
        "data=webdataset needs webdataset; pip install 'tlcli[webdataset]'",
    ),
    "wandb": (
        ("wandb",),
        ("train", "logger=wandb", *SMOKE),
        "logger=wandb needs wandb; pip install 'tlcli[trackers]'",
    ),
    "explain": (
        ("grad-cam",),
        ("explain", "ckpt=<tmp>/no_run", "images=<tmp>/no_run"),
        "tlcli explain needs grad-cam (pytorch-grad-cam); pip install 'tlcli[explain]'",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_missing_extra_is_one_line_naming_it(tmp_path: Path, case: str) -> None:
    distributions, args, message = CASES[case]
    args = tuple(a.replace("<tmp>", str(tmp_path)) for a in args)
    result = tlcli_without(tmp_path, distributions, *args)
    assert result.returncode == 2, result.stderr[-3000:]
    assert assert_one_line_error(result) == f"tlcli: error: {message}"
    assert "tl_cli.data" not in result.stderr, "the check runs before any data is built"


def test_the_same_runs_work_with_the_extra(tmp_path: Path) -> None:
    """Control: the filtered copy itself is sound; hiding nothing, the optuna preset composes."""
    result = tlcli_without(tmp_path, (), "train", "hparams_search=optuna", *SMOKE, "--cfg", "job")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "optim" in result.stdout


def test_core_alone_trains_and_exports_without_onnx(tmp_path: Path) -> None:
    """train and export format=torchscript need no extra: every optional distribution is left out."""
    optional = ("onnx", "onnxruntime", "tensorboard", "hydra-optuna-sweeper", "optuna", "hydra-joblib-launcher")
    optional += ("hydra-submitit-launcher", "submitit", "SQLAlchemy", "alembic", "mlflow-skinny", "wandb")
    optional += ("datasets", "webdataset", "grad-cam")
    result = tlcli_without(tmp_path, optional, "train", *SMOKE, "trainer.max_epochs=1")
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = result.stdout.strip().splitlines()[-1].removeprefix("run_dir: ")
    exported = tlcli_without(tmp_path / "again", optional, "export", f"ckpt={run_dir}", "format=torchscript")
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert (Path(run_dir) / "export" / "model.torchscript.pt").is_file()
