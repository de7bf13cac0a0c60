"""Structured-config schemas of `tlcli eval`, `predict`, `export`, `explain` and `lr-find`: typos and wrong types
fail at composition.

Kept import-light (no torch) so `tlcli eval --help` and `--cfg job` stay fast.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from tl_cli.config.schema import DataConfig, TrainConfig


@dataclass
class EvalConfig:
    task_name: str = "eval"
    ckpt: str = MISSING  # tlcli run dir, its checkpoints/*.ckpt, or an exported model.safetensors
    split: str = "test"  # test | val | train | all
    data: DataConfig | None = None  # null: the run's own dataset, from its .hydra/config.yaml
    seed: int | None = None  # null: the run's seed, so held-out splits are the ones training held out
    batch_size: int = 256
    device: str = "auto"  # auto | cpu | cuda | cuda:<i>
    # auto: the run's precision and memory format, re-resolved for this device (tl_cli/hardware.py);
    # 32 | bf16-mixed | 16-mixed force one (tl_cli/run/trained.py inference_for)
    precision: str = "auto"
    output_dir: str | None = None  # null: <run_dir>/eval
    top_losses: int = 16  # images with the highest loss drawn in top_losses.png (and listed in metrics.json)
    calibrate: bool = True  # also report ECE at the run's fitted temperature (ece_calibrated)
    tta: bool = False  # average the softmax over tta_views of each image (tl_cli/run/tta.py)
    tta_views: list[str] = field(default_factory=lambda: ["identity", "hflip"])  # identity|hflip|vflip|hvflip


@dataclass
class PredictConfig:
    task_name: str = "predict"
    ckpt: str = MISSING
    inputs: Any = MISSING  # an image file, a folder (searched recursively), a glob, or a list of those
    topk: int = 5
    output: str = "predictions.csv"
    batch_size: int = 64
    num_workers: str = "auto"  # image decoding workers: auto (tl_cli/hardware.py resolve_workers) or N
    device: str = "auto"
    precision: str = "auto"  # as eval's: auto (the run's, re-resolved for this device) | 32 | bf16-mixed | 16-mixed
    calibrate: bool = True  # probabilities at the run's fitted temperature (calibration.json), when it has one
    tta: bool = False  # average the softmax over tta_views of each image
    tta_views: list[str] = field(default_factory=lambda: ["identity", "hflip"])


@dataclass
class ExportConfig:
    task_name: str = "export"
    ckpt: str = MISSING
    format: str = "onnx"  # onnx | torchscript | safetensors
    output_dir: str | None = None  # null: <run_dir>/export
    opset: int = 17  # ONNX opset
    check_images: int = 16  # test-split images the parity check runs through both models
    calibrate: bool = True  # embed the run's fitted temperature in the model's metadata and preprocess.json


@dataclass
class ExplainConfig:
    task_name: str = "explain"
    ckpt: str = MISSING
    images: Any = MISSING  # an image file, a folder (searched recursively), a glob, or a list of those
    target: Any = None  # a class name (or index) to explain instead of each image's predicted class
    layer: str | None = None  # a backbone module name; null: the ViT's last norm1, or a CNN's deepest >= 4x4 stage
    output_dir: str | None = None  # null: <run_dir>/explain
    batch_size: int = 16
    device: str = "auto"
    calibrate: bool = True  # titles show probabilities at the run's fitted temperature


@dataclass
class LrFindSettings:
    """Lightning's Tuner.lr_find arguments: an exponential sweep from min_lr to max_lr over num_training steps."""

    min_lr: float = 1e-6
    max_lr: float = 1.0
    num_training: int = 100


@dataclass
class LrFindConfig(TrainConfig):
    task_name: str = "lr_find"
    lr_find: LrFindSettings = field(default_factory=LrFindSettings)


def _added_keys(schema: type, base: type) -> DictConfig:
    """`schema` (a subclass of `base`) with every key of `base` left ???: merged after `base`'s config, it adds
    its own keys and types without resetting the values the config groups set (??? never overrides a value)."""
    node = OmegaConf.structured(schema)
    for f in dataclasses.fields(base):
        node[f.name] = MISSING
    return node


def register_command_schemas() -> None:
    """Make `defaults: [<command>_schema, ...]` in configs/{eval,predict,export,explain,lr_find}.yaml resolvable."""
    store = ConfigStore.instance()
    store.store(name="eval_schema", node=EvalConfig)
    store.store(name="predict_schema", node=PredictConfig)
    store.store(name="export_schema", node=ExportConfig)
    store.store(name="explain_schema", node=ExplainConfig)
    store.store(name="lr_find_schema", node=_added_keys(LrFindConfig, TrainConfig))  # after `train` (lr_find.yaml)
