"""Structured-config schemas of `tlcli eval`, `predict` and `export`: typos and wrong types fail at composition.

Kept import-light (no torch) so `tlcli eval --help` and `--cfg job` stay fast.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from tl_cli.config.schema import DataConfig


@dataclass
class EvalConfig:
    task_name: str = "eval"
    ckpt: str = MISSING  # tlcli run dir, its checkpoints/*.ckpt, or an exported model.safetensors
    split: str = "test"  # test | val | train | all
    data: DataConfig | None = None  # null: the run's own dataset, from its .hydra/config.yaml
    seed: int | None = None  # null: the run's seed, so held-out splits are the ones training held out
    batch_size: int = 256
    device: str = "auto"  # auto | cpu | cuda | cuda:<i>
    output_dir: str | None = None  # null: <run_dir>/eval


@dataclass
class PredictConfig:
    task_name: str = "predict"
    ckpt: str = MISSING
    inputs: Any = MISSING  # an image file, a folder (searched recursively), a glob, or a list of those
    topk: int = 5
    output: str = "predictions.csv"
    batch_size: int = 64
    num_workers: str = "auto"  # image decoding workers: auto (tl_cli/transfer/speed.py resolve_workers) or N
    device: str = "auto"


@dataclass
class ExportConfig:
    task_name: str = "export"
    ckpt: str = MISSING
    format: str = "onnx"  # onnx | torchscript | safetensors
    output_dir: str | None = None  # null: <run_dir>/export
    opset: int = 17  # ONNX opset
    check_images: int = 16  # test-split images the parity check runs through both models


def register_command_schemas() -> None:
    """Make `defaults: [<command>_schema, ...]` in configs/{eval,predict,export}.yaml resolvable."""
    store = ConfigStore.instance()
    store.store(name="eval_schema", node=EvalConfig)
    store.store(name="predict_schema", node=PredictConfig)
    store.store(name="export_schema", node=ExportConfig)
