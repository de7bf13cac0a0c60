"""Shared fixtures: composed configs, real `tlcli` subprocess runs, small real weight/data files."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
TLCLI = Path(sys.executable).with_name("tlcli")
# timm test models: tiny, one per architecture family
BACKBONES = ["test_resnet", "test_efficientnet", "test_convnext", "test_vit"]
# The one smoke config of the tests (configs/experiment/smoke.yaml): a random tiny timm model on synthetic data,
# 2 epochs on the CPU, no step minimum; seconds per run on 2 cores. Tests add what they vary to it.
SMOKE = ["experiment=smoke"]
# One short run of the embedded source in float32 (eval must reproduce its own test metrics): eval, predict, export
USE_TRAIN = ["train", *SMOKE, "model=embedded", "strategy=extend_freeze"]
USE_SHORT = ["trainer.max_epochs=1", "trainer.precision=32-true"]
# A resumable run of the embedded source (BatchNorm throughout), 4 epochs, and an extra Lightning callback that
# keeps every epoch's checkpoint: "killed after epoch k" = resume from epoch k's
RESUMABLE = [*SMOKE, "model=embedded", "strategy=extend_finetune", "data.augment=true", "trainer.max_epochs=4"]
KEEP_EPOCHS = [
    "+callbacks.every_epoch._target_=lightning.pytorch.callbacks.ModelCheckpoint",
    "+callbacks.every_epoch.dirpath=${paths.output_dir}/epochs",
    "+callbacks.every_epoch.save_top_k=-1",
    "+callbacks.every_epoch.filename='e{epoch}'",
    "+callbacks.every_epoch.auto_insert_metric_name=false",
]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--precision",
        default=None,
        help="replace what trainer.precision=auto picks for this session, e.g. --precision 32-true to run without "
        "bf16 (sets TLCLI_PRECISION, tl_cli/hardware.py; tlcli subprocesses inherit it)",
    )


def pytest_configure(config: pytest.Config) -> None:
    precision = config.getoption("--precision")
    if precision:
        os.environ["TLCLI_PRECISION"] = precision


def pytest_report_header(config: pytest.Config) -> str:
    return f"TLCLI_PRECISION={os.environ.get('TLCLI_PRECISION') or '(unset: trainer.precision=auto by hardware)'}"


def compose(overrides: list[str]):
    """The train config exactly as `tlcli train <overrides>` composes it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from tl_cli.config.paths import config_dir, register_resolvers
    from tl_cli.config.schema import register_schemas

    register_schemas()
    register_resolvers()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return hydra_compose(config_name="train", overrides=overrides)


def tlcli_runner(outputs: Path, default_cwd: Path):
    """run(*args, env=None, timeout=600, cwd=None): the installed `tlcli` as a subprocess writing under `outputs`
    (TLCLI_OUTPUT_DIR); returns the CompletedProcess. The `tlcli` fixture's, and that of module-scoped fixtures
    which share one trained run among their tests."""

    def run(*args: str, env: dict | None = None, timeout: float = 600, cwd: Path | None = None):
        full_env = {**os.environ, "TLCLI_OUTPUT_DIR": str(outputs), **(env or {})}
        full_env.pop("TLCLI_DEBUG", None)
        return subprocess.run(
            [str(TLCLI), *args], capture_output=True, text=True, env=full_env, timeout=timeout, cwd=cwd or default_cwd
        )

    return run


@pytest.fixture
def tlcli(tmp_path):
    """Run the installed `tlcli` command; returns the CompletedProcess."""
    return tlcli_runner(tmp_path / "outputs", tmp_path)


def last_line(result, key: str) -> Path:
    """The path a successful command printed on its last stdout line as `<key>: <path>`."""
    assert result.returncode == 0, result.stderr[-3000:]
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith(f"{key}: "), last
    return Path(last.removeprefix(f"{key}: "))


def run_dir_of(result) -> Path:
    """The run directory printed on the last stdout line (`run_dir: <path>`)."""
    return last_line(result, "run_dir")


def summary_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def write_images(root: Path, classes: dict[str, int], size: int = 12) -> None:
    """Real PNG files in root/<class>/<i>.png, seeded."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for name, count in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / name / f"{i}.png")


def write_unreadable(folder: Path) -> list[Path]:
    """Two real files PIL cannot decode in `folder`: garbage bytes named .png, and a real JPEG cut in half
    (its header parses and Image.verify() passes; decoding its pixels fails)."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    garbage, truncated = folder / "garbage.png", folder / "truncated.jpg"
    garbage.write_bytes(b"this is not an image")
    pixels = np.random.default_rng(1).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(truncated, quality=95)
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    return [garbage, truncated]


def assert_one_line_error(result, *needles: str) -> str:
    """Non-zero exit, exactly one non-empty stderr line naming the bad value, no traceback."""
    assert result.returncode != 0, result.stdout[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout, result.stderr
    errors = [line for line in lines if line.startswith("tlcli: error:")]
    assert len(errors) == 1, result.stderr[-3000:]
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


# Data sources' files, written by the tests that read them (tests/unit/test_sources.py, tests/e2e/test_data_sources.py)
def datamodule(overrides: list[str], in_chans: int = 1, img_size: int = 32):
    """A prepared TransferDataModule of the composed train config (test_resnet's data config)."""
    import timm

    from tl_cli.data.datamodule import TransferDataModule, resolve_data_config

    cfg = compose(["model=tiny", f"model.in_chans={in_chans}", *overrides])
    backbone = timm.create_model("test_resnet", num_classes=0, in_chans=in_chans)
    dm = TransferDataModule(cfg.data, resolve_data_config(backbone, cfg.data, in_chans, img_size), cfg.seed)
    dm.prepare_splits()
    return dm


# one file per format, the suffix case mixed: what a user's folder holds
FORMATS = {"png": ".png", "jpeg": ".JPG", "webp": ".webp", "bmp": ".bmp", "tiff": ".tif", "gif": ".gif"}


def pixels(label: int, index: int, size: int = 10) -> np.ndarray:
    """A small RGB image whose brightness tells its class apart."""
    rng = np.random.default_rng(100 * label + index)
    return np.clip(rng.normal(60 + 130 * label, 20, (size, size, 3)), 0, 255).astype(np.uint8)


def write_mixed(folder: Path, per_class: int, classes: tuple[str, ...] = ("cat", "dog")) -> list[tuple[str, str]]:
    """folder/<class>/<i>.<format>, cycling through FORMATS; returns (path relative to folder, class) rows."""
    rows = []
    for label, name in enumerate(classes):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            fmt, suffix = list(FORMATS.items())[i % len(FORMATS)]
            path = folder / name / f"{i}{suffix}"
            Image.fromarray(pixels(label, i)).save(path, format=fmt)
            rows.append((str(path.relative_to(folder)), name))
    return rows


def write_csv(path: Path, rows: list[tuple[str, str]], header: tuple[str, str] = ("path", "label")) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def hf_tables(tmp_path: Path, image_column: str = "image", label_column: str = "label"):
    """A DatasetDict of real PNG bytes with a ClassLabel, train and test."""
    datasets = pytest.importorskip("datasets")
    features = datasets.Features(
        {
            image_column: datasets.Image(),
            label_column: datasets.ClassLabel(names=["cat", "dog"]),
            "id": datasets.Value("int32"),
        }
    )

    def table(per_class: int, offset: int):
        labels = [c for c in (0, 1) for _ in range(per_class)]
        images = [Image.fromarray(pixels(c, offset + i)) for i, c in enumerate(labels)]
        data = {image_column: images, label_column: labels, "id": list(range(len(labels)))}
        return datasets.Dataset.from_dict(data, features=features)

    return datasets.DatasetDict({"train": table(10, 0), "test": table(3, 50)})


def write_shards(folder: Path, name: str, samples: list[tuple[str, dict[str, bytes]]], per_shard: int) -> str:
    """Real tar shards name-000000.tar, ... of (key, {ext: bytes}) samples; returns their brace pattern."""
    folder.mkdir(parents=True, exist_ok=True)
    count = 0
    for start in range(0, len(samples), per_shard):
        with tarfile.open(folder / f"{name}-{count:06d}.tar", "w") as tar:
            for key, files in samples[start : start + per_shard]:
                for ext, data in files.items():
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        count += 1
    return str(folder / f"{name}-{{000000..{count - 1:06d}}}.tar")


def encoded(label: int, index: int, fmt: str = "png") -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels(label, index)).save(out, format=fmt)
    return out.getvalue()


def shard_samples(per_class: int, offset: int = 0, cls=lambda c: str(c)) -> list[tuple[str, dict[str, bytes]]]:
    fmts = ("png", "jpeg", "webp")
    return [
        (f"s{offset + i:05d}", {fmts[i % 3].replace("jpeg", "jpg"): encoded(c, i, fmts[i % 3]), "cls": cls(c).encode()})
        for i, c in enumerate(c for c in (0, 1) for _ in range(per_class))
    ]
